"""The search's host side: config, Runner, latency and fitness of candidates, ranks agreeing.

This is the only module of :mod:`mmsparse.search` that imports torch / mmengine. It turns a
config into what :class:`~mmsparse.search.evolution.EvolutionSearch` needs:

- the search settings (``search_cfg`` of the config, overridden by the command line) and the
  candidate set (for window ratios, by default the config's ``SparsityAwareAdaptationHook``
  candidates, else the hook's defaults: one candidate set for training and search);
- ``latency_fn``: the same code as ``tools/analysis_tools/measure_latency.py``
  (``measure_latency`` of ``part_callable`` on ``make_images``), trimmed mean per rank, median
  over ranks;
- ``score_fn``: the config's evaluator on its val (or test) set through the Runner's dataloader
  and evaluator, every rank evaluating its shard (the distributed sampler) and MMEngine's
  evaluator collecting them. No hooks run, so e.g. the SAA hook cannot reset the ratios and no
  checkpoint is saved per candidate;
- agreement: every value the search decides on is broadcast from rank 0.
"""
import os
import statistics
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from mmengine.config import Config
from mmengine.dist import all_gather_object, broadcast_object_list, get_dist_info

from mmsparse.models.utils import unwrap_model
from mmsparse.ops.windows import RATIO_GROUP_SIZE
from mmsparse.utils.cli import UserError
from .evolution import Candidate, Genome
from .latency_table import LatencyTable, build_latency_table, probe_genomes
from .log import SearchLogLock, SearchLogWriter, header_mismatch, read_log
from .spaces import SearchSpace

__all__ = ['DEFAULT_METRICS', 'window_defaults', 'choose_split', 'prepare_eval_config',
           'default_metric', 'agree', 'median_over_ranks', 'unwrap_model', 'type_name',
           'is_saa_hook',
           'CandidateRunner', 'load_or_measure_table', 'open_search_log', 'finetune_updates']

# the metric a search maximises, by evaluator type (else: the first key the evaluator returns)
DEFAULT_METRICS = {'CocoMetric': 'coco/bbox_mAP', 'IoUMetric': 'mIoU', 'Accuracy': 'accuracy/top1',
                   'SingleLabelMetric': 'single-label/f1-score'}


def type_name(d: Any) -> str:
    """The class name a config dict's ``type`` names ('mmsparse.X' -> 'X').

    For evaluator metrics of other libraries (``CocoMetric``, ``IoUMetric`` ...), which the
    search must recognise without importing mmdet / mmseg; mmsparse's own hooks are recognised
    by class (:func:`is_saa_hook`).
    """
    t = d.get('type', '') if isinstance(d, dict) else ''
    return t.split('.')[-1] if isinstance(t, str) else getattr(t, '__name__', '')


def is_saa_hook(hook_cfg: Any) -> bool:
    """Whether a ``custom_hooks`` entry builds a :class:`SparsityAwareAdaptationHook` (by class,
    as the Runner resolves its ``type``; a subclass counts)."""
    from mmsparse.engine.sparsevit_hooks import SparsityAwareAdaptationHook
    from mmsparse.utils.config import is_config_of
    return is_config_of(hook_cfg, SparsityAwareAdaptationHook)


def window_defaults(cfg: Config) -> Tuple[Tuple[float, ...], int]:
    """Candidate window ratios and group size: the config's SAA hook's, else the hook defaults."""
    from mmsparse.engine.sparsevit_hooks import DEFAULT_CANDIDATES
    for hook in cfg.get('custom_hooks') or []:
        if is_saa_hook(hook):
            return (tuple(hook.get('candidates', DEFAULT_CANDIDATES)),
                    int(hook.get('group_size', RATIO_GROUP_SIZE)))
    return tuple(DEFAULT_CANDIDATES), RATIO_GROUP_SIZE


def choose_split(cfg: Config, split: str = 'auto') -> str:
    """'val' or 'test': the split whose dataloader and evaluator score candidates.

    ``auto``: val if the config has ``val_dataloader`` and ``val_evaluator``, else test.
    """
    def has(s: str) -> bool:
        return bool(cfg.get(f'{s}_dataloader')) and bool(cfg.get(f'{s}_evaluator'))

    if split not in ('auto', 'val', 'test'):
        raise UserError(f"--eval-split must be auto, val or test, got {split!r}")
    if split == 'auto':
        split = 'test' if has('test') and not has('val') else 'val'
    if not has(split):
        other = ' (nor test_dataloader / test_evaluator)' if not has('test') else \
            ' (it has a test set: use --eval-split test or auto)'
        raise UserError(f'the config has no {split}_dataloader / {split}_evaluator to score '
                        f'candidates with{other}; add them to the config')
    return split


def prepare_eval_config(cfg: Config, split: str, subset: Optional[int]) -> None:
    """Make ``split`` buildable and, with ``subset``, evaluate its first ``subset`` images."""
    if cfg.get(f'{split}_cfg') is None:
        cfg[f'{split}_cfg'] = dict()
    if subset is not None:
        if subset < 1:
            raise UserError(f'--val-subset must be >= 1, got {subset}')
        cfg[f'{split}_dataloader'].dataset.indices = int(subset)
    if split == 'test' and not (cfg.get('val_dataloader') and cfg.get('val_evaluator')
                                and cfg.get('val_cfg') is not None):
        # a partial val setup would stop the Runner from building; the search does not use it
        cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None


def default_metric(cfg: Config, split: str) -> Optional[str]:
    """The metric key to maximise for the split's evaluator (None: the first key returned)."""
    evaluator = cfg.get(f'{split}_evaluator')
    first = evaluator[0] if isinstance(evaluator, (list, tuple)) and evaluator else evaluator
    return DEFAULT_METRICS.get(type_name(first)) if isinstance(first, dict) else None


def agree(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (identity when not distributed)."""
    _, world = get_dist_info()
    if world == 1:
        return value
    box = [value]
    broadcast_object_list(box, src=0)
    return box[0]


def median_over_ranks(value: float) -> float:
    """The median of one float per rank (every rank gets the same result)."""
    return float(statistics.median(all_gather_object(float(value))))


def _coco_on_dataset_only(evaluator: Any, dataset: Any) -> None:
    """Make mmdet's CocoMetric score the images of ``dataset`` only (e.g. ``--val-subset``).

    With an ``ann_file`` it otherwise counts every annotated image, evaluated or not; it takes
    its image ids from ``img_ids`` when they are set.
    """
    for metric in getattr(evaluator, 'metrics', []):
        # by name: importing mmdet to check the class would burden every other search
        if type(metric).__name__ == 'CocoMetric' and getattr(metric, 'img_ids', 0) is None:
            metric.img_ids = [dataset.get_data_info(i)['img_id'] for i in range(len(dataset))]


class CandidateRunner:
    """Measures and evaluates candidates of one search space on a built Runner.

    Args:
        runner: an MMEngine Runner built from the config (weights loaded).
        space: the search space (sets ``backbone.<space.name>``).
        split: 'val' or 'test'.
        metric: key of the evaluator's metrics to maximise (None: the first key returned).
        part: 'backbone' or 'model', what latency is measured of.
        img_size: (H, W) of the latency input.
        batch_size: latency batch size.
        channels: image channels of the latency input.
        warmup: untimed calls before timing.
        runs: timed calls.
    """

    def __init__(self, runner: Any, space: SearchSpace, split: str, metric: Optional[str],
                 part: str, img_size: Tuple[int, int], batch_size: int, channels: int = 3,
                 warmup: int = 5, runs: int = 20) -> None:
        from mmsparse.analysis import make_images, part_callable
        self.runner = runner
        self.space = space
        self.metric = metric
        self.model = unwrap_model(runner.model)
        self.backbone = self.model.backbone
        loop = runner.val_loop if split == 'val' else runner.test_loop
        self.dataloader, self.evaluator = loop.dataloader, loop.evaluator
        self.fp16 = bool(getattr(loop, 'fp16', False))
        _coco_on_dataset_only(self.evaluator, self.dataloader.dataset)
        self.warmup, self.runs = warmup, runs
        device = next(self.model.parameters()).device
        self.images = make_images(batch_size, img_size, channels, device=str(device))
        self._call = part_callable(self.model, part, self.images)
        self.metrics_seen: Dict[str, float] = {}

    def set(self, genome: Genome) -> Any:
        """Put the candidate's setting on the backbone."""
        return self.space.apply(self.backbone, genome)

    def latency(self, genome: Genome) -> float:
        """Trimmed-mean latency (ms) on this rank, median over ranks, agreed from rank 0."""
        from mmsparse.analysis import measure_latency
        self.set(genome)
        self.model.eval()
        res = measure_latency({'c': self._call}, warmup=self.warmup, runs=self.runs)['c']
        return agree(median_over_ranks(res.trimmed_mean_ms))

    def evaluate(self, genome: Genome) -> Dict[str, float]:
        """The evaluator's metrics of the candidate (all ranks share the dataset)."""
        self.set(genome)
        model = self.runner.model
        model.eval()
        with torch.no_grad():
            for batch in self.dataloader:
                with torch.autocast(device_type=self.images.device.type, enabled=self.fp16):
                    outputs = model.val_step(batch)
                self.evaluator.process(data_samples=outputs, data_batch=batch)
        metrics = self.evaluator.evaluate(len(self.dataloader.dataset))
        return agree({k: float(v) for k, v in metrics.items()
                      if isinstance(v, (int, float)) or torch.is_tensor(v)})

    def score(self, genome: Genome) -> float:
        """The value of ``metric`` (checked against what the evaluator returns)."""
        metrics = self.evaluate(genome)
        if self.metric is None:
            self.metric = next(iter(metrics))
        if self.metric not in metrics:
            raise UserError(f'--metric {self.metric}: the evaluator returned '
                            f'{", ".join(sorted(metrics))}; pick one of these')
        self.metrics_seen = metrics
        return metrics[self.metric]

    def _with(self, genome: Genome) -> Callable[[], Any]:
        value = self.space.decode(genome)

        def run() -> Any:
            setattr(self.backbone, self.space.name, value)  # cheap; lets two settings alternate
            return self._call()
        return run

    def latency_table(self, log: Optional[Callable[[str], None]] = None) -> LatencyTable:
        """Measure the probe genomes once and build the per-gene table.

        Each probe is timed interleaved with the all-zero genome and enters the table as the
        difference, added to the median of all the all-zero timings: a shared machine's drift
        during the many probes then cancels instead of landing in the deltas.
        """
        from mmsparse.analysis import measure_latency
        probes = probe_genomes(self.space.genome_space)
        zero, base_fn = probes[0], self._with(probes[0])
        self.model.eval()
        bases, diffs = [], {}
        for i, genome in enumerate(probes[1:]):
            res = measure_latency({'base': base_fn, 'probe': self._with(genome)},
                                  warmup=self.warmup, runs=self.runs)
            base = median_over_ranks(res['base'].trimmed_mean_ms)
            diffs[genome] = median_over_ranks(res['probe'].trimmed_mean_ms) - base
            bases.append(base)
            if log is not None and (i + 1) % 10 == 0:
                log(f'latency table: {i + 1}/{len(probes) - 1} probes measured')
        base = statistics.median(bases) if bases else self.latency(zero)
        measured = agree({zero: base, **{g: base + d for g, d in diffs.items()}})
        return build_latency_table(self.space.genome_space, measured)


def load_or_measure_table(path: str, meta: Dict[str, Any], measure: Callable[[], LatencyTable],
                          log: Callable[[str], None]) -> LatencyTable:
    """A table saved at ``path`` for the same ``meta``, else a fresh one (saved by rank 0)."""
    import json
    rank, _ = get_dist_info()
    saved = None
    if rank == 0 and os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
    saved = agree(saved)
    if saved is not None and saved.get('meta') == json.loads(json.dumps(meta)):
        log(f'latency table: reusing {path}')
        return LatencyTable.from_dict(saved['table'])
    if saved is not None:
        log(f'latency table: {path} was measured for other settings; measuring again')
    table = measure()
    if rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f'{path}.{os.getpid()}.tmp'  # a search killed mid-write leaves no partial table
        with open(tmp, 'w') as f:
            json.dump(dict(meta=meta, table=table.to_dict()), f, indent=1)
        os.replace(tmp, path)
    return table


def open_search_log(path: str, header: Dict[str, Any], log: Callable[[str], None]
                    ) -> Tuple[Dict[str, Candidate], Optional[SearchLogWriter]]:
    """Read what a previous run of the same search logged (rank 0, shared with every rank).

    Args:
        path: the JSON-lines log.
        header: what the results depend on; a log written for another header is refused.
        log: where to say that the search resumes.

    Rank 0 first takes the log's lock (:class:`~mmsparse.search.log.SearchLogLock`), which the
    writer holds until :meth:`~mmsparse.search.log.SearchLogWriter.close`.

    Returns:
        ``(cache, writer)``: key -> logged candidate, and the log writer (rank 0; else None).

    Raises:
        UserError: the log belongs to another search, or another search holds its lock.
    """
    rank, _ = get_dist_info()
    state, lock = None, None
    if rank == 0:
        lock = SearchLogLock(path)
        state = dict(error=lock.acquire())
        if state['error'] is None:
            state = _read_for_resume(path, header)
    state = agree(state)
    if state['error']:
        if lock is not None:
            lock.release()
        raise UserError(state['error'])
    cache = {c['key']: Candidate.from_dict(c) for c in state['cands']}
    if cache:
        log(f'resuming: {len(cache)} candidates read from {path}'
            + (f' ({state["dropped"]} partial line dropped)' if state['dropped'] else ''))
    writer = SearchLogWriter(path, lock) if rank == 0 else None
    if writer is not None and not state['has_header']:
        writer.header(header)
    return cache, writer


def _read_for_resume(path: str, header: Dict[str, Any]) -> Dict[str, Any]:
    """What rank 0 read from the log, to share: an error, the candidates, the partial lines."""
    old, cands, dropped = read_log(path)
    key = header_mismatch(old, header) if old is not None else None
    error = None if key is None else (
        f'{path} was written with a different {key!r} ({old.get(key)!r}, now '
        f'{header.get(key)!r}); use another --work-dir or delete the log')
    return dict(error=error, cands=[c.to_dict() for c in cands], dropped=dropped,
                has_header=old is not None)


def finetune_updates(cfg: Config, name: str, value: Any, checkpoint: Optional[str]
                     ) -> Tuple[Dict[str, Any], str]:
    """What a fine-tuning config changes in the searched one: ``model.backbone.<name> = value``,
    random-ratio training (the SAA hook) removed, ``load_from`` the searched checkpoint.

    Returns:
        ``(updates for write_derived_config, a note for its header)``.
    """
    updates: Dict[str, Any] = dict(model=dict(backbone={name: value}))
    note = ''
    hooks = list(cfg.get('custom_hooks') or [])
    if any(is_saa_hook(h) for h in hooks):
        updates['custom_hooks'] = [h.to_dict() if hasattr(h, 'to_dict') else dict(h)
                                   for h in hooks if not is_saa_hook(h)]
        note = ('\nFine-tuning keeps the searched ratios fixed: no SparsityAwareAdaptationHook '
                'in custom_hooks.')
    if checkpoint:
        updates['load_from'] = checkpoint
    return updates, note
