"""Latency-constrained evolutionary search of a sparse backbone's setting (SparseViT's search).

Searches SparseViT window ratios (``mmsparse.SparseSwinTransformer``) or DynamicViT keep ratios
(``mmsparse.DynamicVisionTransformer``) for the best score of the config's evaluator among the
candidates whose measured latency lies in [--min-latency, --max-latency] ms. Writes to the work
dir: the log (one JSON line per candidate; rerunning the same command resumes from it), the best
candidate (JSON) and ``search_best_*.py``, a config for fine-tuning with the best setting.

    torchpack dist-run -np 8 python tools/search.py CONFIG CKPT --max-latency 42 --min-latency 37
    python tools/search.py CONFIG none --max-latency 40 --img-size 224     # one process
"""
import argparse
import json
import os
import time
from typing import Any, Dict

from mmsparse.utils import UserError, load_config, run_cli
from mmsparse.utils.cli import add_config_args, check_checkpoint, input_size, parse_tool_args

# search_cfg keys that are not SearchSettings fields
SPACE_KEYS = ('candidates', 'group_size', 'img_size', 'metric')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog='Search settings come from the config\'s search_cfg = dict(population_size=100, '
               'parents=25, mutation_prob=0.1, iterations=100, seed=0, candidates=None, ...); '
               'the flags below override them.')
    parser.add_argument('config', help='config file path (its model.backbone is searched)')
    parser.add_argument('checkpoint', help="weights to evaluate (e.g. the SAA checkpoint), or "
                        "'none' to use the config's initial weights (scores are then only "
                        'useful to test the tool)')
    win = parser.add_argument_group('latency window')
    win.add_argument('--max-latency', type=float, required=True, help='ms, upper end')
    win.add_argument('--min-latency', type=float, default=0.0, help='ms, lower end (default 0)')
    win.add_argument('--part', choices=['backbone', 'model'], default='backbone',
                     help='what is timed (default: backbone, as SparseViT)')
    win.add_argument('--img-size', type=int, nargs='+', default=None,
                     help='H [W] of the timed input (default: search_cfg.img_size, else 672 '
                     'for detectors / segmentors as SparseViT, else the backbone img_size)')
    win.add_argument('--batch-size', type=int, default=4, help='timed batch (default 4)')
    win.add_argument('--warmup', type=int, default=5, help='untimed calls per candidate')
    win.add_argument('--runs', type=int, default=20, help='timed calls per candidate')
    win.add_argument('--latency-table', nargs='?', const='', default=None, metavar='PATH',
                     help='measure per-gene costs once (or load them from PATH, default '
                     '<work-dir>/latency_table.json) and skip candidates predicted more than '
                     '--table-margin outside the window; logs its error against measurement')
    win.add_argument('--table-margin', type=float, default=0.1,
                     help='relative margin around the window for the table (default 0.1)')
    win.add_argument('--latency-source', choices=['measure', 'table'], default='measure',
                     help="'table': take the table's prediction as the latency (fast, "
                     'deterministic given the table; implies --latency-table)')
    fit = parser.add_argument_group('fitness')
    fit.add_argument('--eval-split', choices=['auto', 'val', 'test'], default='auto',
                     help='auto: val_dataloader / val_evaluator, else the test ones')
    fit.add_argument('--val-subset', type=int, default=None, metavar='N',
                     help='score on the first N images of that split')
    fit.add_argument('--metric', default=None, help='metric key to maximise (default: '
                     'search_cfg.metric, else coco/bbox_mAP, mIoU or accuracy/top1 by evaluator)')
    evo = parser.add_argument_group('search (override search_cfg)')
    evo.add_argument('--population-size', type=int)
    evo.add_argument('--parents', type=int)
    evo.add_argument('--mutation-prob', type=float)
    evo.add_argument('--iterations', type=int, help='generations after the random one')
    evo.add_argument('--seed', type=int)
    evo.add_argument('--candidates', type=float, nargs='+',
                     help='ratios a gene may take (default: the SAA hook\'s, else 0, 0.1, .., 0.8;'
                     ' keep ratios: 1, 0.9, .., 0.3)')
    evo.add_argument('--max-evaluations', type=int, default=None,
                     help='stop after this many new candidates (rerun to resume)')
    parser.add_argument('--work-dir', help='default: ./work_dirs/<config name>_search')
    add_config_args(parser, launcher=True)
    return parse_tool_args(parser, argv)


def check_launcher(launcher: str) -> None:
    """An MPI launch needs mpi4py and a process started by mpirun / torchpack dist-run."""
    if launcher != 'mpi':
        return
    try:
        import mpi4py  # noqa: F401  (torchpack dist-run's runtime needs it too)
    except ImportError as e:
        raise UserError(f"--launcher mpi needs MPI: mpi4py cannot be imported ({e}); "
                        f"pip install 'mmsparse[mpi]' (Open MPI 4, mpi4py, torchpack), or use "
                        f"--launcher pytorch with torchrun (tools/dist_run.sh search.py N ...)") from None
    if 'OMPI_COMM_WORLD_RANK' not in os.environ:
        raise UserError('--launcher mpi: not started by an MPI launcher (OMPI_COMM_WORLD_RANK '
                        'unset); run under `torchpack dist-run -np N` or `mpirun -np N`')


def search_config(cfg, args) -> Dict[str, Any]:
    """The config's ``search_cfg`` with the command line's overrides."""
    out = dict(cfg.get('search_cfg') or {})
    for key in ('population_size', 'parents', 'mutation_prob', 'iterations', 'seed',
                'candidates', 'metric'):
        value = getattr(args, key)
        if value is not None:
            out[key] = value
    return out


def main() -> int:  # noqa: C901  (one linear script)
    args = parse_args()
    if args.min_latency < 0 or args.max_latency <= 0:
        raise UserError(f'--min-latency must be >= 0 and --max-latency > 0 (ms), got '
                        f'{args.min_latency:g} and {args.max_latency:g}')
    if args.min_latency > args.max_latency:
        raise UserError(f'--min-latency {args.min_latency:g} is above --max-latency '
                        f'{args.max_latency:g}: the window is empty')
    for flag, v in (('--batch-size', args.batch_size), ('--runs', args.runs)):
        if v < 1:
            raise UserError(f'{flag} must be >= 1, got {v}')
    if args.warmup < 0 or args.table_margin < 0:
        raise UserError('--warmup and --table-margin must be >= 0')
    if args.max_evaluations is not None and args.max_evaluations < 1:
        raise UserError(f'--max-evaluations must be >= 1, got {args.max_evaluations}')
    check_launcher(args.launcher)

    from mmsparse.search import (EvaluationBudgetReached, EvolutionSearch,
                                 NoFeasibleCandidateError, SearchSettings, SearchSettingsError,
                                 prediction_errors, rank_candidates, space_for_backbone)
    from mmsparse.search import host

    cfg = load_config(args.config, args.cfg_options)
    scfg = search_config(cfg, args)
    try:
        settings = SearchSettings.from_dict(scfg, ignore=SPACE_KEYS)
    except SearchSettingsError as e:
        raise UserError(str(e)) from None
    checkpoint = None if args.checkpoint.lower() == 'none' else check_checkpoint(args.checkpoint)
    checkpoint = os.path.abspath(checkpoint) if checkpoint and '://' not in checkpoint \
        else checkpoint
    split = host.choose_split(cfg, args.eval_split)
    host.prepare_eval_config(cfg, split, args.val_subset)
    cfg.load_from, cfg.resume = checkpoint, False
    if (cfg.get('randomness') or {}).get('seed') is None:
        # a resumed search must score with the same weights (CHECKPOINT none: the initial ones)
        cfg.randomness = dict(cfg.get('randomness') or {}, seed=settings.seed)
    stem = os.path.splitext(os.path.basename(args.config))[0]
    cfg.work_dir = os.path.abspath(args.work_dir or os.path.join('work_dirs', f'{stem}_search'))
    metric = scfg.get('metric') or host.default_metric(cfg, split)

    from mmengine.dist import get_dist_info
    from mmengine.logging import print_log

    from mmsparse.analysis import model_kind
    from mmsparse.utils.cli import build_runner
    runner = build_runner(cfg, args.launcher)
    runner.load_or_resume()
    rank, world = get_dist_info()

    def log(msg: str) -> None:
        print_log(f'[search] {msg}', logger='current')

    model = host.unwrap_model(runner.model)
    if type(model.backbone).__name__ == 'SparseSwinTransformer':
        # one candidate set for training (the SAA hook's) and search
        cands, group = host.window_defaults(cfg)
        scfg.setdefault('candidates', cands)
        scfg['group_size'] = scfg.get('group_size') or group
    try:
        space = space_for_backbone(model.backbone, scfg.get('candidates'), scfg.get('group_size'))
    except SearchSettingsError as e:
        raise UserError(str(e)) from None
    if args.img_size:
        img_size = input_size(cfg, args.img_size, '--img-size')
    elif scfg.get('img_size'):
        img_size = input_size(cfg, [scfg['img_size']] if isinstance(scfg['img_size'], int)
                              else scfg['img_size'], 'search_cfg.img_size')
    elif model_kind(model) in ('detector', 'segmentor'):
        img_size = (672, 672)  # SparseViT's latency input
    else:
        img_size = input_size(cfg, None, '--img-size')
    channels = cfg.model.get('backbone', {}).get('in_channels', 3)
    cand_runner = host.CandidateRunner(runner, space, split, metric, args.part, img_size,
                                       args.batch_size, channels, args.warmup, args.runs)
    log(f'{space.name}: {space.genome_space.num_genes} genes {list(space.gene_names)}, '
        f'candidates {list(space.candidates)}, groups {list(space.genome_space.groups)}')
    log(f'fitness: {metric or "first metric"} of the {split} set ({split}_dataloader / '
        f'{split}_evaluator{f", first {args.val_subset} images" if args.val_subset else ""}), '
        f'{world} rank(s); latency: {args.part} at batch {args.batch_size}, {img_size[0]}x'
        f'{img_size[1]}, window [{args.min_latency:g}, {args.max_latency:g}] ms')

    # ---- the log: what a rerun resumes from
    tag = f'max{args.max_latency:g}_min{args.min_latency:g}'
    log_path = os.path.join(cfg.work_dir, f'search_{tag}.jsonl')
    use_table = args.latency_table is not None or args.latency_source == 'table'
    header = dict(config=os.path.abspath(args.config), checkpoint=checkpoint,
                  min_latency=args.min_latency, max_latency=args.max_latency, part=args.part,
                  img_size=list(img_size), batch_size=args.batch_size, space=space.name,
                  candidates=list(space.candidates), genes=list(space.gene_names),
                  settings={k: v for k, v in settings.to_dict().items() if k != 'iterations'},
                  iterations=settings.iterations, metric=metric, split=split,
                  val_subset=args.val_subset, latency_source=args.latency_source,
                  latency_table=use_table, table_margin=args.table_margin if use_table else None)
    cache, writer = host.open_search_log(log_path, header, log)

    # ---- optional latency table
    table = None
    if use_table:
        table_path = args.latency_table or os.path.join(cfg.work_dir, 'latency_table.json')
        meta = dict(method='per-gene, interleaved with all-zero', part=args.part,
                    img_size=list(img_size), batch_size=args.batch_size, space=space.name,
                    candidates=list(space.candidates), genes=list(space.gene_names),
                    config=os.path.abspath(args.config),
                    warmup=args.warmup, runs=args.runs, world_size=world,
                    device=str(cand_runner.images.device))
        t0 = time.perf_counter()
        table = host.load_or_measure_table(table_path, meta,
                                           lambda: cand_runner.latency_table(log), log)
        log(f'latency table ready ({time.perf_counter() - t0:.1f} s): base '
            f'{table.base:.3f} ms')

    def latency_fn(genome):
        if args.latency_source == 'table':
            return table.predict(genome)
        return cand_runner.latency(genome)

    def on_candidate(c) -> None:
        if writer is not None:
            writer.candidate(c)
        lat = 'skipped by table' if c.skipped else f'{c.latency_ms:.3f} ms'
        pred = f' (table {c.predicted_ms:.3f})' if c.predicted_ms is not None else ''
        score = f', {cand_runner.metric} {c.score:.4f}' if c.score is not None else ''
        log(f'#{c.index} {c.phase} g{c.generation} {space.name}={c.config}: {lat}{pred}, '
            f'{"feasible" if c.feasible else "infeasible"}{score}')

    def on_iteration(h) -> None:
        log(f'iteration {h["generation"]}/{settings.iterations}: best {cand_runner.metric} '
            f'{h["best_score"]:.4f} at {h["best_latency_ms"]:.3f} ms, {space.name}='
            f'{h["best_config"]} (population {h["population"]}, new {h["evaluated"]}, '
            f'cached {h["cache_hits"]}, skipped {h["skipped_by_table"]})')

    search = EvolutionSearch(
        space.genome_space, settings, decode=space.decode, latency_fn=latency_fn,
        score_fn=cand_runner.score, min_latency=args.min_latency, max_latency=args.max_latency,
        predict_fn=(table.predict if table is not None and args.latency_source == 'measure'
                    else None),
        table_margin=args.table_margin, cache=cache, on_candidate=on_candidate,
        on_iteration=on_iteration, max_evaluations=args.max_evaluations)
    try:
        result = search.run()
    except NoFeasibleCandidateError as e:
        raise UserError(str(e)) from None
    except EvaluationBudgetReached as e:
        print(f'search stopped (rank {rank}/{world}): {e}; log: {log_path}', flush=True)
        return 0

    # ---- the table's error against direct measurement, over every candidate measured
    table_error = None
    if table is not None and args.latency_source == 'measure':
        pairs = [(table.predict(c.genome), c.latency_ms) for c in search.cache.values()
                 if c.latency_ms is not None]
        table_error = prediction_errors(pairs)
        if table_error:
            log(f'latency table vs measurement over {table_error["n"]} candidates: mean '
                f'relative error {100 * table_error["mean_rel_error"]:.1f} %, max '
                f'{100 * table_error["max_rel_error"]:.1f} % (signed mean '
                f'{100 * table_error["mean_signed_rel_error"]:+.1f} %)')

    best = result.best
    all_best = rank_candidates(list(search.cache.values()))[0]
    report = dict(best=best.to_dict(), metric=cand_runner.metric, split=split,
                  window_ms=[args.min_latency, args.max_latency], part=args.part,
                  img_size=list(img_size), batch_size=args.batch_size, world_size=world,
                  evaluated_this_run=result.evaluated, cache_hits=result.cache_hits,
                  skipped_by_table=result.skipped_by_table, candidates_in_log=len(search.cache),
                  resumed_from=len(cache), table_error=table_error, history=result.history,
                  best_is_best_in_log=all_best.key == best.key)
    cfg_path = os.path.join(cfg.work_dir, f'search_best_{stem}_{tag}.py')
    if rank == 0:
        with open(os.path.join(cfg.work_dir, f'search_{tag}_best.json'), 'w') as f:
            json.dump(report, f, indent=1)
        comment = (f'Written by tools/search.py: the best {space.name} of {args.config} for '
                   f'{args.part} latency in [{args.min_latency:g}, {args.max_latency:g}] ms\n'
                   f'(batch {args.batch_size}, {img_size[0]}x{img_size[1]}): '
                   f'{best.latency_ms:.3f} ms, {cand_runner.metric} {best.score:.4f} '
                   f'on the {split} set. Fine-tune with tools/train.py.')
        with open(cfg_path, 'w') as f:
            f.write(host.finetune_config_text(cfg, os.path.abspath(args.config), space.name,
                                              best.config, checkpoint, comment))
        log(f'best: {cfg_path}')
    print(f'search best (rank {rank}/{world}): {space.name}={json.dumps(best.config)} '
          f'latency {best.latency_ms:.3f} ms {cand_runner.metric} {best.score:.6f} '
          f'key {best.key[:16]} (new {result.evaluated}, from log {len(cache)})', flush=True)
    return 0


if __name__ == '__main__':
    run_cli(main)
