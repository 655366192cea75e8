"""Latency-constrained evolutionary search of a sparse backbone's setting (SparseViT's search).

Searches SparseViT window ratios (``mmsparse.SparseSwinTransformer``) or DynamicViT keep ratios
(``mmsparse.DynamicVisionTransformer``, dense or composed on a compact model) for the best score
of the config's evaluator among the candidates whose measured latency lies in [--min-latency,
--max-latency] ms (or search_cfg.min_latency / max_latency). With search_cfg.structures (a list of
composed DynamicViT models, CHECKPOINT none) it searches which model and its keep ratios
together. Writes to the work
dir: the log (one JSON line per candidate; rerunning the same command resumes from it), the best
candidate (JSON) and ``search_best_*.py``, a config for fine-tuning with the best setting.
One search at a time writes a log (a second one on the same log refuses), and the ranks of a
distributed search stop when their launcher is gone. The search itself is
``mmsparse.search.run`` (callable from Python with these flags as keyword arguments); this tool
only parses the flags.

    torchpack dist-run -np 8 python tools/search.py CONFIG CKPT --max-latency 42 --min-latency 37
    python tools/search.py CONFIG none --max-latency 40 --img-size 224     # one process
    python tools/search.py configs/compose/dynamicvit-compose_search_fashion-mnist.py none
"""
import argparse
import json

from mmsparse.utils import run_cli
from mmsparse.utils.cli import add_config_args, parse_tool_args


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog='Search settings come from the config\'s search_cfg = dict(population_size=100, '
               'parents=25, mutation_prob=0.1, max_draws=10000, iterations=None, '
               "selection='population', mutation='sample', seed=0, candidates=None, "
               'max_latency=None, min_latency=None, structures=None, ...): SparseViT\'s '
               'searcher; the flags below override them. structures=[dict(name=..., '
               'compact_checkpoint=..., checkpoint=...), ...]: composed DynamicViT models to '
               'choose among (one more, categorical gene).')
    parser.add_argument('config', help='config file path (its model.backbone is searched)')
    parser.add_argument('checkpoint', help="weights to evaluate (e.g. the SAA checkpoint), or "
                        "'none' to use the config's initial weights (scores are then only "
                        'useful to test the tool); none with search_cfg.structures (each entry '
                        'names its checkpoint)')
    win = parser.add_argument_group('latency window')
    win.add_argument('--max-latency', type=float, default=None,
                     help='ms, upper end (default: search_cfg.max_latency; one is required)')
    win.add_argument('--min-latency', type=float, default=None,
                     help='ms, lower end (default: search_cfg.min_latency, else 0)')
    win.add_argument('--part', choices=['backbone', 'model'], default='backbone',
                     help='what is timed (default: backbone, as SparseViT)')
    win.add_argument('--img-size', type=int, nargs='+', default=None,
                     help='H [W] of the timed input (default: search_cfg.img_size, else 672 '
                     'for detectors / segmentors as SparseViT, else the backbone img_size)')
    win.add_argument('--batch-size', type=int, default=4, help='timed batch (default 4)')
    win.add_argument('--warmup', type=int, default=None,
                     help='untimed calls per candidate (default: 200 on a GPU, as SparseViT; 5 '
                     'on a CPU)')
    win.add_argument('--runs', type=int, default=None,
                     help='timed calls per candidate (default: 300 on a GPU, as SparseViT; 20 '
                     'on a CPU)')
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
    evo.add_argument('--iterations', type=int, help='generations after the random one (at most)')
    evo.add_argument('--max-draws', type=int,
                     help='candidates drawn in all, random phase, infeasible draws and repeats '
                     'included (SparseViT: 10000)')
    evo.add_argument('--seed', type=int)
    evo.add_argument('--candidates', type=float, nargs='+',
                     help='ratios a gene may take (default: the SAA hook\'s, else 0, 0.1, .., 0.8;'
                     ' keep ratios: 1, 0.9, .., 0.3)')
    evo.add_argument('--max-evaluations', type=int, default=None,
                     help='stop after this many new candidates (rerun to resume)')
    parser.add_argument('--work-dir', help='default: ./work_dirs/<config name>_search')
    add_config_args(parser, launcher=True)
    return parse_tool_args(parser, argv)


def main() -> int:
    """Parse the flags and run :func:`mmsparse.search.run` with them."""
    from mmsparse.search import run

    args = vars(parse_args())
    args.pop('local_rank', None)  # read by MMEngine from LOCAL_RANK (parse_tool_args)
    out = run(**args)
    if out.stopped:
        print(f'search stopped (rank {out.rank}/{out.world_size}): {out.stopped}; log: '
              f'{out.log_path}', flush=True)
        return 0
    best = out.best
    structure = f' ({out.structure.checkpoint})' if out.structure is not None else ''
    print(f'search best (rank {out.rank}/{out.world_size}): {out.space}='
          f'{json.dumps(best.config)}{structure} latency {best.latency_ms:.3f} ms {out.metric} '
          f'{best.score:.6f} key {best.key[:16]} (new {out.report["evaluated_this_run"]}, '
          f'from log {out.resumed_from})', flush=True)
    return 0


if __name__ == '__main__':
    run_cli(main)
