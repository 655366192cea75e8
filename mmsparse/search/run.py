"""The search as a library call: ``mmsparse.search.run(config, checkpoint, max_latency=...)``.

Does everything ``tools/search.py`` does (the tool only parses its flags into these keyword
arguments): loads the config with its ``search_cfg``, builds the Runner (distributed under a
launcher), picks the search space of the backbone, logs the header, opens (and resumes) the
search log under its lock, measures or loads the latency table, runs
:class:`~mmsparse.search.evolution.EvolutionSearch` with the Runner's evaluator as fitness, and
writes the report (``search_<tag>_best.json``) and a fine-tuning config
(``search_best_<config>_<tag>.py``, through :func:`mmsparse.utils.write_derived_config`).

    >>> from mmsparse.search import run
    >>> out = run('configs/dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py', None,
    ...           max_latency=40, img_size=[28], work_dir='work_dirs/s')
    >>> out.best.config, out.report['metric'], out.config_path

Why a function and not a registered MMEngine loop (as mmrazor's ``EvolutionSearchLoop``): a
search is not a phase of a training run but a measurement *of* a trained checkpoint under a
latency window that varies per call (the window, the timed part and input are what one runs
several of on one config); a loop would have to live in the config's ``train_cfg`` and be
started by ``runner.train()``, so every window would need its own config, and the Runner would
build an optimizer, a train dataloader and hooks (the SAA hook resets the ratios each
iteration) that a search must not run. The function builds the Runner only for what the search
uses (the model with its weights, the val / test loop's dataloader and evaluator, the
distributed setup), and keeps the searcher itself pure and testable.

Joint search (``search_cfg.structures``, :mod:`mmsparse.search.structures`): a classifier's
search may choose among several composed DynamicViT models; the genome gets a categorical gene
(which entry) in front of the keep-ratio genes. The Runner's model is entry 0's, one more model
is built per further entry (:func:`mmsparse.search.host.structure_models`), each loaded strictly
from its composed checkpoint (CHECKPOINT must be ``none``). Latency is measured on the chosen
model, candidate by candidate; with ``--latency-table`` there is one table per structure
(:class:`~mmsparse.search.latency_table.StructureLatencyTable`, why in its module). The log
header records the entries, so a resume under a changed list refuses; the log lines, the report
and the fine-tuning config name the chosen entry (its ``model.compact_checkpoint`` and
``load_from``).

The window may come from the config (``search_cfg.max_latency`` / ``min_latency``) instead of the
flags; the flags win.

Errors the user can fix raise :class:`~mmsparse.utils.UserError` (or
:class:`~mmsparse.errors.ConfigError`), which the tools print as one ``error:`` line.
"""
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from mmsparse.utils.cli import UserError
from mmsparse.validation import Keys
from .evolution import (Candidate, EvaluationBudgetReached, EvolutionSearch,
                        NoFeasibleCandidateError, SearchSettings, rank_candidates)
from .latency_table import prediction_errors
from .structures import StructureEntry, parse_structures

__all__ = ['TIMING_DEFAULTS', 'SearchOptions', 'SearchOutcome', 'run', 'search_config',
           'check_launcher', 'SPACE_KEYS', 'OVERRIDES', 'BUDGET_KEYS']

# search_cfg keys that are not SearchSettings fields
SPACE_KEYS = ('candidates', 'group_size', 'img_size', 'metric', 'structures', 'max_latency',
              'min_latency')
# options that override the config's search_cfg
OVERRIDES = ('population_size', 'parents', 'mutation_prob', 'iterations', 'max_draws', 'seed',
             'candidates', 'metric')
# settings that only bound the search's length: a longer search replays a shorter one's draws
# first, so a log resumes under other values of these
BUDGET_KEYS = ('iterations', 'max_draws')


#: Untimed / timed calls per candidate by device. SparseViT's search times every candidate with
#: 200 / 300 calls and ``cudnn.benchmark`` on (its ``tools/search.py``), which on a GPU costs
#: about a second per candidate; on a CPU (~0.5 s a call for Swin-T at 672) it would cost minutes,
#: so CPU runs default to 5 / 20. ``--warmup 200 --runs 300`` gives the original's protocol
#: anywhere.
TIMING_DEFAULTS = {'cuda': (200, 300), 'cpu': (5, 20)}


@dataclass
class SearchOptions:
    """What one search call varies (the flags of ``tools/search.py``, same names and defaults).

    Args:
        config: config file (its ``model.backbone`` is searched, ``search_cfg`` its settings).
        checkpoint: weights to score, or None / ``'none'`` for the config's initial weights.
        max_latency / min_latency: the latency window, ms (None: ``search_cfg.max_latency`` /
            ``min_latency``; min default 0).
        part: what is timed, ``'backbone'`` or ``'model'``.
        img_size: ``[H]`` or ``[H, W]`` of the timed input (default: ``search_cfg.img_size``,
            else 672 for detectors / segmentors, else the backbone's ``img_size``).
        batch_size / warmup / runs: the timed batch, untimed and timed calls per candidate
            (warmup / runs None: :data:`TIMING_DEFAULTS` for the device).
        latency_table: None (no table), ``''`` (``<work_dir>/latency_table.json``) or a path.
        table_margin: relative margin around the window within which the table keeps candidates.
        latency_source: ``'measure'`` or ``'table'`` (the table's prediction is the latency).
        eval_split: ``'auto'``, ``'val'`` or ``'test'``; val_subset: score on the first N images.
        metric, population_size, parents, mutation_prob, iterations, max_draws, seed,
            candidates: override ``search_cfg`` (None: keep the config's).
        max_evaluations: stop after this many new candidates (rerun to resume).
        work_dir: default ``./work_dirs/<config name>_search``.
        launcher: ``'none'``, ``'pytorch'``, ``'slurm'`` or ``'mpi'``.
        cfg_options: config overrides (``--cfg-options``).
    """
    config: str
    checkpoint: Optional[str]
    max_latency: Optional[float] = None
    min_latency: Optional[float] = None
    part: str = 'backbone'
    img_size: Optional[Sequence[int]] = None
    batch_size: int = 4
    warmup: Optional[int] = None
    runs: Optional[int] = None
    latency_table: Optional[str] = None
    table_margin: float = 0.1
    latency_source: str = 'measure'
    eval_split: str = 'auto'
    val_subset: Optional[int] = None
    metric: Optional[str] = None
    population_size: Optional[int] = None
    parents: Optional[int] = None
    mutation_prob: Optional[float] = None
    iterations: Optional[int] = None
    max_draws: Optional[int] = None
    seed: Optional[int] = None
    candidates: Optional[Sequence[float]] = None
    max_evaluations: Optional[int] = None
    work_dir: Optional[str] = None
    launcher: str = 'none'
    cfg_options: Optional[Dict[str, Any]] = None

    def check(self) -> None:
        """Fill the device's timing defaults, then refuse values no search can run with (one
        line each, naming the flag)."""
        import torch
        cuda = torch.cuda.is_available()
        default_warmup, default_runs = TIMING_DEFAULTS['cuda' if cuda else 'cpu']
        self.warmup = default_warmup if self.warmup is None else self.warmup
        self.runs = default_runs if self.runs is None else self.runs
        if cuda:  # as SparseViT's search: the fastest kernels for the fixed input shape
            torch.backends.cudnn.benchmark = True
        if self.max_latency is not None:  # else checked once the config gave it
            self.check_window()
        for flag, v in (('--batch-size', self.batch_size), ('--runs', self.runs)):
            if v < 1:
                raise UserError(f'{flag} must be >= 1, got {v}')
        if self.warmup < 0 or self.table_margin < 0:
            raise UserError('--warmup and --table-margin must be >= 0')
        if self.max_evaluations is not None and self.max_evaluations < 1:
            raise UserError(f'--max-evaluations must be >= 1, got {self.max_evaluations}')
        for name, value, choices in (('part', self.part, ('backbone', 'model')),
                                     ('latency_source', self.latency_source, ('measure', 'table')),
                                     ('eval_split', self.eval_split, ('auto', 'val', 'test'))):
            if value not in choices:
                raise UserError(f'--{name.replace("_", "-")} must be one of '
                                f'{", ".join(choices)}, got {value!r}')

    def check_window(self, source: str = '') -> None:
        """Refuse a window no latency can fall in (``source``: where the values came from)."""
        low = 0.0 if self.min_latency is None else self.min_latency
        for flag, v in (('--min-latency', low), ('--max-latency', self.max_latency)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserError(f'{flag}{source} must be a number of ms, got {v!r}')
        if low < 0 or self.max_latency <= 0:
            raise UserError(f'--min-latency must be >= 0 and --max-latency > 0 (ms){source}, '
                            f'got {low:g} and {self.max_latency:g}')
        if low > self.max_latency:
            raise UserError(f'--min-latency {low:g} is above --max-latency '
                            f'{self.max_latency:g}{source}: the window is empty')

    def resolve_window(self, scfg: Dict[str, Any]) -> None:
        """Fill a window the flags left open from ``search_cfg.max_latency`` / ``min_latency``."""
        from_cfg = []
        if self.max_latency is None:
            if scfg.get('max_latency') is None:
                raise UserError('--max-latency is required (ms, the upper end of the latency '
                                'window), or set search_cfg.max_latency in the config')
            self.max_latency, _ = scfg['max_latency'], from_cfg.append('max_latency')
        if self.min_latency is None:
            self.min_latency = scfg.get('min_latency') or 0.0
            if scfg.get('min_latency') is not None:
                from_cfg.append('min_latency')
        if from_cfg:
            self.check_window(f' (from search_cfg.{" / search_cfg.".join(from_cfg)})')
        self.max_latency, self.min_latency = float(self.max_latency), float(self.min_latency)

    @property
    def use_table(self) -> bool:
        return self.latency_table is not None or self.latency_source == 'table'

    @property
    def tag(self) -> str:
        """What names this window's files: ``max<ms>_min<ms>``."""
        return f'max{self.max_latency:g}_min{self.min_latency:g}'


@dataclass
class SearchOutcome:
    """What a search call returns (every rank gets the same values).

    Args:
        log_path: the search log (JSON lines; a rerun resumes from it).
        rank / world_size: this process's rank and the number of ranks.
        space: the searched backbone attribute (``window_ratios``, ``keep_ratios``).
        metric: the maximised metric key.
        resumed_from: candidates read from the log at the start.
        best: the best feasible candidate; None when ``stopped``.
        report: what ``search_<tag>_best.json`` holds; None when ``stopped``.
        report_path / config_path: the report and the fine-tuning config (written by rank 0).
        stopped: why the search stopped early (``max_evaluations``), else None.
        structure: the chosen ``search_cfg.structures`` entry (joint search), else None.
    """
    log_path: str
    rank: int
    world_size: int
    space: str
    metric: Optional[str]
    resumed_from: int
    best: Optional[Candidate] = None
    report: Optional[Dict[str, Any]] = None
    report_path: Optional[str] = None
    config_path: Optional[str] = None
    stopped: Optional[str] = None
    structure: Optional[StructureEntry] = None


def check_launcher(launcher: str) -> None:
    """An MPI launch needs mpi4py and a process started by mpirun / torchpack dist-run."""
    if launcher != 'mpi':
        return
    try:
        import mpi4py  # noqa: F401  (torchpack dist-run's runtime needs it too)
    except ImportError as e:
        raise UserError(
            f"--launcher mpi needs MPI: mpi4py cannot be imported ({e}); pip install "
            f"'mmsparse[mpi]' (Open MPI 4, mpi4py, torchpack), or use --launcher pytorch with "
            f"torchrun (tools/dist_run.sh search.py N ...)") from None
    if 'OMPI_COMM_WORLD_RANK' not in os.environ:
        raise UserError('--launcher mpi: not started by an MPI launcher (OMPI_COMM_WORLD_RANK '
                        'unset); run under `torchpack dist-run -np N` or `mpirun -np N`')


def search_config(cfg: Any, opts: SearchOptions) -> Dict[str, Any]:
    """The config's ``search_cfg`` with the options' overrides (:data:`OVERRIDES`)."""
    raw = cfg.get('search_cfg') or {}
    if not hasattr(raw, 'items'):
        Keys().fail('search_cfg', f'must be a dict of search settings, got {raw!r}')
    out = dict(raw)
    for key in OVERRIDES:
        value = getattr(opts, key)
        if value is not None:
            out[key] = value
    return out


def run(config: str, checkpoint: Optional[str] = None, **options: Any) -> SearchOutcome:
    """Run (or resume) a latency-constrained search; see the module docstring.

    Args:
        config: config file.
        checkpoint: weights to score (None or ``'none'``: the config's initial weights).
        **options: the other fields of :class:`SearchOptions` (``max_latency`` is required
            unless the config has ``search_cfg.max_latency``).

    Returns:
        A :class:`SearchOutcome`.

    Raises:
        UserError / ConfigError: a bad option or config value, a log of another search, a log
            another search holds (its lock), no feasible candidate.
    """
    opts = SearchOptions(config=config, checkpoint=checkpoint, **options)
    opts.check()
    check_launcher(opts.launcher)
    return SearchJob(opts).run()


class SearchJob:
    """One search call: the config and Runner, the log, the table, the searcher, the outputs.

    Each step is a method in the order :meth:`run` calls them; state lives on the object.
    """

    def __init__(self, opts: SearchOptions) -> None:
        self.opts = opts

    @staticmethod
    def log(msg: str) -> None:
        from mmengine.logging import print_log
        print_log(f'[search] {msg}', logger='current')

    def run(self) -> SearchOutcome:
        self.load_config()
        self.build()
        cache, writer = self.open_log()
        try:
            self.table = self.latency_table() if self.opts.use_table else None
            return self.search(cache, writer)
        finally:
            if writer is not None:
                writer.close()  # the log's lock

    def load_config(self) -> None:
        """The config, ready for scoring: settings, weights, split, seed, work dir, metric."""
        from mmsparse.utils import check_checkpoint, load_config
        from . import host
        opts = self.opts
        cfg = load_config(opts.config, opts.cfg_options)
        self.scfg = search_config(cfg, opts)
        self.settings = SearchSettings.from_dict(self.scfg, ignore=SPACE_KEYS)
        opts.resolve_window(self.scfg)
        ckpt = opts.checkpoint
        self.structures = self.load_structures(cfg, ckpt)
        ckpt = None if ckpt is None or ckpt.lower() == 'none' else check_checkpoint(ckpt)
        self.checkpoint = os.path.abspath(ckpt) if ckpt and '://' not in ckpt else ckpt
        self.split = host.choose_split(cfg, opts.eval_split)
        host.prepare_eval_config(cfg, self.split, opts.val_subset)
        cfg.load_from, cfg.resume = self.checkpoint, False
        if (cfg.get('randomness') or {}).get('seed') is None:
            # a resumed search must score with the same weights (CHECKPOINT none: the initial)
            cfg.randomness = dict(cfg.get('randomness') or {}, seed=self.settings.seed)
        self.stem = os.path.splitext(os.path.basename(opts.config))[0]
        cfg.work_dir = os.path.abspath(opts.work_dir
                                       or os.path.join('work_dirs', f'{self.stem}_search'))
        self.metric = self.scfg.get('metric') or host.default_metric(cfg, self.split)
        self.cfg = cfg

    def load_structures(self, cfg: Any, checkpoint: Optional[str]) -> Sequence[StructureEntry]:
        """The checked ``search_cfg.structures`` entries (none: a one-model search); the
        Runner's model becomes entry 0's."""
        from . import host
        if self.scfg.get('structures') is None:
            return ()
        host.check_structures_model(cfg)
        entries = parse_structures(self.scfg['structures'])
        if checkpoint is not None and checkpoint.lower() != 'none':
            raise UserError(f'CHECKPOINT {checkpoint}: with search_cfg.structures every entry '
                            f'names its own checkpoint; pass none')
        cfg.model.compact_checkpoint = entries[0].compact_checkpoint
        return entries

    def build(self) -> None:
        """The Runner (weights loaded), the search space, the timed input, the candidate runner."""
        from mmengine.dist import get_dist_info

        from mmsparse.analysis import model_kind
        from mmsparse.errors import ConfigError
        from mmsparse.models.dynamicvit import DynamicVisionTransformer
        from mmsparse.models.sparsevit import SparseSwinTransformer
        from mmsparse.models.utils import unwrap_model
        from mmsparse.utils.cli import build_runner
        from . import host
        from .spaces import check_keep_candidates, joint_space, space_for_backbone
        opts, cfg, scfg = self.opts, self.cfg, self.scfg
        try:
            self.runner = build_runner(cfg, opts.launcher)
        except ConfigError as e:
            # the Runner's model is entry 0's: a model error (its structure, e.g. a pruning_loc
            # beyond its layers) is that entry's
            if self.structures and str(e).startswith('model.'):
                entry = self.structures[0]
                raise ConfigError(f'{entry.key} ({entry.name}): {e}') from None
            raise
        self.rank, self.world = get_dist_info()
        models = None
        if self.structures:
            models = host.structure_models(self.runner, cfg, self.structures, self.log)
        else:
            self.runner.load_or_resume()
        model = unwrap_model(self.runner.model)
        if isinstance(model.backbone, SparseSwinTransformer):
            # one candidate set for training (the SAA hook's) and search
            cands, group = host.window_defaults(cfg)
            scfg.setdefault('candidates', cands)
            scfg['group_size'] = scfg.get('group_size') or group
        space = space_for_backbone(model.backbone, scfg.get('candidates'),
                                   scfg.get('group_size'))
        self.img_size = self.timed_size(model_kind(model) in ('detector', 'segmentor'))
        channels = cfg.model.get('backbone', {}).get('in_channels', 3)
        if isinstance(model.backbone, DynamicVisionTransformer):
            # the timed input may have another patch grid than the evaluated images
            n = host.timed_num_patches(model.backbone, self.img_size, channels)
            if n != model.backbone.num_patches:
                check_keep_candidates(space.candidates, n, where=f' of the timed '
                                      f'{self.img_size[0]}x{self.img_size[1]} input (--img-size)')
        if self.structures:
            space = joint_space([e.name for e in self.structures], space)
        self.space = space
        self.cand = host.CandidateRunner(self.runner, self.space, self.split, self.metric,
                                         opts.part, self.img_size, opts.batch_size, channels,
                                         opts.warmup, opts.runs, models=models)
        split = self.split
        self.log(f'{space.name}: {space.genome_space.num_genes} genes {list(space.gene_names)}, '
                 f'candidates {list(space.candidates)}, groups {list(space.genome_space.groups)}'
                 + (f', structures {list(space.structures)}' if space.structures else ''))
        subset = f', first {opts.val_subset} images' if opts.val_subset else ''
        self.log(f'fitness: {self.metric or "first metric"} of the {split} set ({split}_dataloader'
                 f' / {split}_evaluator{subset}), {self.world} rank(s); latency: {opts.part} at '
                 f'batch {opts.batch_size}, {self.img_size[0]}x{self.img_size[1]}, window '
                 f'[{opts.min_latency:g}, {opts.max_latency:g}] ms')

    def timed_size(self, dense_task: bool) -> Tuple[int, int]:
        """(H, W) of the timed input: the option, ``search_cfg.img_size``, 672 or the backbone's."""
        from mmsparse.utils.cli import input_size
        size = self.scfg.get('img_size')
        if self.opts.img_size:
            return input_size(self.cfg, self.opts.img_size, '--img-size')
        if size:
            return input_size(self.cfg, [size] if isinstance(size, int) else size,
                              'search_cfg.img_size')
        if dense_task:
            return (672, 672)  # SparseViT's latency input for detectors / segmentors
        return input_size(self.cfg, None, '--img-size')

    def open_log(self) -> tuple:
        """Lock and read the log of this window (what a rerun resumes from)."""
        from . import host
        opts, space = self.opts, self.space
        self.log_path = os.path.join(self.cfg.work_dir, f'search_{opts.tag}.jsonl')
        header = dict(
            config=os.path.abspath(opts.config), checkpoint=self.checkpoint,
            min_latency=opts.min_latency, max_latency=opts.max_latency, part=opts.part,
            img_size=list(self.img_size), batch_size=opts.batch_size, space=space.name,
            candidates=list(space.candidates), genes=list(space.gene_names),
            settings={k: v for k, v in self.settings.to_dict().items()
                      if k not in BUDGET_KEYS},
            # (the key log.header_mismatch lets differ between runs of one search)
            iterations={k: getattr(self.settings, k) for k in BUDGET_KEYS},
            metric=self.metric, split=self.split,
            val_subset=opts.val_subset, latency_source=opts.latency_source,
            latency_table=opts.use_table,
            table_margin=opts.table_margin if opts.use_table else None,
            # a joint search's models (None otherwise: logs of one model resume unchanged)
            structures=[e.to_dict() for e in self.structures] or None)
        return host.open_search_log(self.log_path, header, self.log)

    def latency_table(self) -> Any:
        """The per-gene latency table (a joint space: one per structure), loaded if measured for
        the same settings, else measured."""
        from . import host
        opts, space = self.opts, self.space
        path = opts.latency_table or os.path.join(self.cfg.work_dir, 'latency_table.json')
        meta = dict(method='per-gene, interleaved with all-zero', part=opts.part,
                    img_size=list(self.img_size), batch_size=opts.batch_size, space=space.name,
                    candidates=list(space.candidates), genes=list(space.gene_names),
                    config=os.path.abspath(opts.config), warmup=opts.warmup, runs=opts.runs,
                    world_size=self.world, device=str(self.cand.images.device))
        if self.structures:
            meta.update(method='per structure: per-gene, interleaved with all-zero',
                        structures=[e.to_dict() for e in self.structures])
        t0 = time.perf_counter()
        table = host.load_or_measure_table(path, meta, lambda: self.cand.latency_table(self.log),
                                           self.log)
        bases = (', '.join(f'{e.name} {t.base:.3f}' for e, t in zip(self.structures,
                                                                      table.tables))
                 if self.structures else f'{table.base:.3f}')
        self.log(f'latency table ready ({time.perf_counter() - t0:.1f} s): base {bases} ms')
        return table

    def on_candidate(self, writer: Any) -> Callable[[Candidate], None]:
        """Log (and, on rank 0, write to the log) each assessed candidate."""
        def note(c: Candidate) -> None:
            if writer is not None:
                writer.candidate(c)
            lat = 'skipped by table' if c.skipped else f'{c.latency_ms:.3f} ms'
            pred = f' (table {c.predicted_ms:.3f})' if c.predicted_ms is not None else ''
            score = f', {self.cand.metric} {c.score:.4f}' if c.score is not None else ''
            self.log(f'#{c.index} {c.phase} g{c.generation} {self.space.describe(c.config)}: '
                     f'{lat}{pred}, {"feasible" if c.feasible else "infeasible"}{score}')
        return note

    def on_iteration(self, h: Dict[str, Any]) -> None:
        its, draws = self.settings.iterations, self.settings.max_draws
        budget = (f'/{its}' if its is not None else '') + \
            (f' ({h["trials"]}/{draws} draws)' if draws is not None else '')
        self.log(f'iteration {h["generation"]}{budget}: best '
                 f'{self.cand.metric} {h["best_score"]:.4f} at {h["best_latency_ms"]:.3f} ms, '
                 f'{self.space.describe(h["best_config"])} (population {h["population"]}, new '
                 f'{h["evaluated"]}, cached {h["cache_hits"]}, skipped {h["skipped_by_table"]})')

    def search(self, cache: Dict[str, Candidate], writer: Any) -> SearchOutcome:
        """Run the searcher; then the table's error, the report and the fine-tuning config."""
        opts, table = self.opts, self.table
        by_table = opts.latency_source == 'table'
        search = EvolutionSearch(
            self.space.genome_space, self.settings, decode=self.space.decode,
            latency_fn=table.predict if by_table else self.cand.latency,
            score_fn=self.cand.score, min_latency=opts.min_latency, max_latency=opts.max_latency,
            predict_fn=table.predict if table is not None and not by_table else None,
            table_margin=opts.table_margin, cache=cache, on_candidate=self.on_candidate(writer),
            on_iteration=self.on_iteration, max_evaluations=opts.max_evaluations)
        outcome = SearchOutcome(self.log_path, self.rank, self.world, self.space.name,
                                self.cand.metric, len(cache))
        try:
            result = search.run()
        except NoFeasibleCandidateError as e:
            raise UserError(str(e)) from None
        except EvaluationBudgetReached as e:
            outcome.stopped = str(e)
            return outcome
        outcome.best = result.best
        outcome.structure = self.chosen_structure(result.best)
        outcome.report = self.report(search, result, len(cache))
        self.write_outputs(outcome)
        return outcome

    def chosen_structure(self, cand: Candidate) -> Optional[StructureEntry]:
        """The ``search_cfg.structures`` entry of a joint candidate (None: one model)."""
        if not self.structures:
            return None
        return self.structures[self.space.split(cand.genome)[0]]

    def table_error(self, search: EvolutionSearch) -> Optional[Dict[str, float]]:
        """The table's error against direct measurement, over every candidate measured."""
        if self.table is None or self.opts.latency_source != 'measure':
            return None
        pairs = [(self.table.predict(c.genome), c.latency_ms) for c in search.cache.values()
                 if c.latency_ms is not None]
        err = prediction_errors(pairs)
        if err:
            self.log(f'latency table vs measurement over {err["n"]} candidates: mean relative '
                     f'error {100 * err["mean_rel_error"]:.1f} %, max '
                     f'{100 * err["max_rel_error"]:.1f} % (signed mean '
                     f'{100 * err["mean_signed_rel_error"]:+.1f} %)')
        return err

    def report(self, search: EvolutionSearch, result: Any, resumed_from: int) -> Dict[str, Any]:
        """What ``search_<tag>_best.json`` holds."""
        opts, best = self.opts, result.best
        table_error = self.table_error(search)
        all_best = rank_candidates(list(search.cache.values()))[0]
        structure = self.chosen_structure(best)
        return dict(best=best.to_dict(), metric=self.cand.metric, split=self.split,
                    structure=structure.to_dict() if structure is not None else None,
                    window_ms=[opts.min_latency, opts.max_latency], part=opts.part,
                    img_size=list(self.img_size), batch_size=opts.batch_size,
                    world_size=self.world, evaluated_this_run=result.evaluated,
                    cache_hits=result.cache_hits, skipped_by_table=result.skipped_by_table,
                    candidates_in_log=len(search.cache), resumed_from=resumed_from,
                    table_error=table_error, history=result.history,
                    best_is_best_in_log=all_best.key == best.key)

    def write_outputs(self, outcome: SearchOutcome) -> None:
        """Rank 0 writes the report and the fine-tuning config (paths on every rank)."""
        from mmsparse.utils import write_derived_config
        from . import host
        opts, best, work_dir = self.opts, outcome.best, self.cfg.work_dir
        outcome.report_path = os.path.join(work_dir, f'search_{opts.tag}_best.json')
        outcome.config_path = os.path.join(work_dir, f'search_best_{self.stem}_{opts.tag}.py')
        if self.rank != 0:
            return
        with open(outcome.report_path, 'w') as f:
            json.dump(outcome.report, f, indent=1)
        value = best.config[self.space.attribute] if outcome.structure else best.config
        updates, note = host.finetune_updates(self.cfg, self.space.attribute, value,
                                              self.checkpoint, outcome.structure)
        header = (f'Written by tools/search.py: the best {self.space.name} of {opts.config} for '
                  f'{opts.part} latency in [{opts.min_latency:g}, {opts.max_latency:g}] ms\n'
                  f'(batch {opts.batch_size}, {self.img_size[0]}x{self.img_size[1]}): '
                  f'{self.space.describe(best.config)}, {best.latency_ms:.3f} ms, '
                  f'{self.cand.metric} {best.score:.4f} '
                  f'on the {self.split} set. Fine-tune with tools/train.py.{note}')
        write_derived_config(opts.config, outcome.config_path, updates, header)
        self.log(f'best: {outcome.config_path}')
