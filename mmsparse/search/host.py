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
- agreement: every value the search decides on is broadcast from rank 0;
- a joint search (``search_cfg.structures``): one model per entry (:func:`structure_models`,
  the Runner's model being entry 0's), each loaded strictly from its composed checkpoint; the
  candidate's categorical gene picks the model that is timed and evaluated.
"""
import os
import statistics
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config
from mmengine.dist import all_gather_object, broadcast_object_list, get_dist_info

from mmsparse.models.utils import unwrap_model
from mmsparse.ops.windows import RATIO_GROUP_SIZE
from mmsparse.utils.cli import UserError
from .evolution import Candidate, Genome
from .evolution import SearchSettingsError
from .latency_table import (LatencyTable, StructureLatencyTable, build_latency_table,
                            probe_genomes, table_from_dict)
from .log import SearchLogLock, SearchLogWriter, header_mismatch, read_log
from .spaces import AnySpace, JointSearchSpace
from .structures import StructureEntry

__all__ = ['DEFAULT_METRICS', 'window_defaults', 'choose_split', 'prepare_eval_config',
           'default_metric', 'agree', 'median_over_ranks', 'unwrap_model', 'type_name',
           'is_saa_hook',
           'CandidateRunner', 'load_or_measure_table', 'open_search_log', 'finetune_updates',
           'check_structures_model', 'structure_models', 'load_composed_weights',
           'timed_num_patches', 'HEADER_SOURCES']

# where a search log header's key comes from, for the message refusing a resume under a change
HEADER_SOURCES = {'structures': 'search_cfg.structures', 'candidates': 'search_cfg.candidates',
                  'checkpoint': 'CHECKPOINT', 'settings': 'search_cfg'}

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

    With a joint space (:class:`~mmsparse.search.spaces.JointSearchSpace`) it holds one model per
    structure (``models``, entry 0 the Runner's) and a candidate's gene 0 picks the model whose
    backbone takes the candidate's setting and which is then timed and evaluated; the others
    stay untouched.

    Args:
        runner: an MMEngine Runner built from the config (weights loaded).
        space: the search space (sets ``backbone.<space.attribute>``).
        split: 'val' or 'test'.
        metric: key of the evaluator's metrics to maximise (None: the first key returned).
        part: 'backbone' or 'model', what latency is measured of.
        img_size: (H, W) of the latency input.
        batch_size: latency batch size.
        channels: image channels of the latency input.
        warmup: untimed calls before timing.
        runs: timed calls.
        models: the structures' models, unwrapped, in the space's structure order, the first
            being the Runner's (default: the Runner's model alone).
    """

    def __init__(self, runner: Any, space: AnySpace, split: str, metric: Optional[str],
                 part: str, img_size: Tuple[int, int], batch_size: int, channels: int = 3,
                 warmup: int = 5, runs: int = 20,
                 models: Optional[Sequence[torch.nn.Module]] = None) -> None:
        from mmsparse.analysis import make_images, part_callable
        self.runner = runner
        self.space = space
        self.metric = metric
        self.models = list(models) if models else [unwrap_model(runner.model)]
        if len(self.models) != max(1, len(space.structures)):
            raise ValueError(f'{len(self.models)} models for the {len(space.structures)} '
                             f'structures of the space')
        self.model = self.models[0]
        self.backbone = self.model.backbone
        # evaluation runs the Runner's model (its wrapper's val_step) for entry 0; the other
        # structures are plain modules (a wrapper's val_step only calls the module's)
        self._eval_models = [runner.model] + self.models[1:]
        self.active = 0
        loop = runner.val_loop if split == 'val' else runner.test_loop
        self.dataloader, self.evaluator = loop.dataloader, loop.evaluator
        self.fp16 = bool(getattr(loop, 'fp16', False))
        _coco_on_dataset_only(self.evaluator, self.dataloader.dataset)
        self.warmup, self.runs = warmup, runs
        device = next(self.model.parameters()).device
        self.images = make_images(batch_size, img_size, channels, device=str(device))
        self._calls = [part_callable(m, part, self.images) for m in self.models]
        self._call = self._calls[0]
        self.metrics_seen: Dict[str, float] = {}

    def set(self, genome: Genome) -> Any:
        """Make the candidate's model the active one and put its setting on its backbone."""
        index, value = self.space.setting(genome)
        self.active = index
        setattr(self.models[index].backbone, self.space.attribute, value)
        return value

    def latency(self, genome: Genome) -> float:
        """Trimmed-mean latency (ms) on this rank, median over ranks, agreed from rank 0."""
        from mmsparse.analysis import measure_latency
        self.set(genome)
        self.models[self.active].eval()
        res = measure_latency({'c': self._calls[self.active]}, warmup=self.warmup,
                              runs=self.runs)['c']
        return agree(median_over_ranks(res.trimmed_mean_ms))

    def evaluate(self, genome: Genome) -> Dict[str, float]:
        """The evaluator's metrics of the candidate (all ranks share the dataset)."""
        self.set(genome)
        model = self._eval_models[self.active]
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
        index, value = self.space.setting(genome)
        backbone, call = self.models[index].backbone, self._calls[index]
        name = self.space.attribute

        def run() -> Any:
            setattr(backbone, name, value)  # cheap; lets two settings alternate
            return call()
        return run

    def _measure_table(self, prefix: Genome, inner: Any, log: Optional[Callable[[str], None]],
                       what: str) -> LatencyTable:
        """The per-gene table of the ``inner`` genome space, each genome timed as
        ``prefix + genome`` (a joint genome for one structure, or the genome itself)."""
        from mmsparse.analysis import measure_latency
        probes = probe_genomes(inner)
        zero, base_fn = probes[0], self._with(prefix + probes[0])
        bases, diffs = [], {}
        for i, genome in enumerate(probes[1:]):
            res = measure_latency({'base': base_fn, 'probe': self._with(prefix + genome)},
                                  warmup=self.warmup, runs=self.runs)
            base = median_over_ranks(res['base'].trimmed_mean_ms)
            diffs[genome] = median_over_ranks(res['probe'].trimmed_mean_ms) - base
            bases.append(base)
            if log is not None and (i + 1) % 10 == 0:
                log(f'latency table{what}: {i + 1}/{len(probes) - 1} probes measured')
        base = statistics.median(bases) if bases else self.latency(prefix + zero)
        measured = agree({zero: base, **{g: base + d for g, d in diffs.items()}})
        return build_latency_table(inner, measured)

    def latency_table(self, log: Optional[Callable[[str], None]] = None) -> Any:
        """Measure the probe genomes once and build the per-gene table (a joint space: one table
        per structure, :class:`~mmsparse.search.latency_table.StructureLatencyTable`).

        Each probe is timed interleaved with the all-zero genome and enters the table as the
        difference, added to the median of all the all-zero timings: a shared machine's drift
        during the many probes then cancels instead of landing in the deltas.
        """
        for m in self.models:
            m.eval()
        if not isinstance(self.space, JointSearchSpace):
            return self._measure_table((), self.space.genome_space, log, '')
        inner = self.space.inner.genome_space
        return StructureLatencyTable([
            self._measure_table((i, ), inner, log, f' ({name})')
            for i, name in enumerate(self.space.structures)])


def timed_num_patches(backbone: torch.nn.Module, img_size: Tuple[int, int],
                      channels: int) -> int:
    """Patch tokens of a ViT backbone for an ``img_size`` input (its patch embedding run once)."""
    device = next(backbone.parameters()).device
    with torch.no_grad():
        _, grid = backbone.patch_embed(torch.zeros(1, channels, *img_size, device=device))
    return int(grid[0] * grid[1])


def check_structures_model(cfg: Config) -> None:
    """``search_cfg.structures`` needs a ``DynamicViTClassifier`` with a
    ``DynamicVisionTransformer`` backbone (the model that takes ``compact_checkpoint``)."""
    from mmsparse.models.dynamicvit import DynamicViTClassifier, DynamicVisionTransformer
    from mmsparse.registry import MODELS
    from mmsparse.utils.cli import setup_scope
    from mmsparse.utils.config import is_config_of
    setup_scope(cfg)
    model = cfg.get('model') or {}
    backbone = model.get('backbone') if hasattr(model, 'get') else None
    if not (is_config_of(model, DynamicViTClassifier, MODELS)
            and is_config_of(backbone or {}, DynamicVisionTransformer, MODELS)):
        got = f"model.type={model.get('type')!r}, model.backbone.type=" \
              f"{(backbone or {}).get('type')!r}"
        raise SearchSettingsError(
            f'search_cfg.structures: chooses among composed DynamicViT models, so the config\'s '
            f"model must be type='mmsparse.DynamicViTClassifier' with backbone "
            f"type='mmsparse.DynamicVisionTransformer', got {got}; remove search_cfg.structures "
            f'to search this model\'s own setting')


def load_composed_weights(model: torch.nn.Module, path: str, key: str) -> int:
    """Load a composed checkpoint into ``model``, every weight present with its shape.

    Stricter than the Runner's ``load_from`` (which loads what fits and warns): a structure
    scored with weights that do not all fit would be scored partly at random. ``teacher.*``
    (the training teacher) and ``data_preprocessor.*`` are not compared.

    Returns:
        the number of weights loaded.

    Raises:
        ConfigError: naming ``key``, a missing / unreadable file or weights that do not fit.
    """
    from mmsparse.models.compose import check_compact_weights, read_checkpoint_weights
    _, sd = read_checkpoint_weights(path, key)
    sd = check_compact_weights(model, sd, (), key)
    model.load_state_dict(sd, strict=False)
    return len(sd)


def structure_models(runner: Any, cfg: Config, entries: Sequence[StructureEntry],
                     log: Callable[[str], None]) -> List[torch.nn.Module]:
    """One model per entry: the Runner's (built with entry 0's ``compact_checkpoint``) and one
    built per further entry; each loaded from the entry's composed checkpoint.

    Returns:
        the unwrapped models, in entry order, in eval mode on the Runner model's device.

    Raises:
        ConfigError: naming the entry's key (a structure the config's model cannot take, weights
            that do not fit it).
    """
    import copy

    from mmsparse.errors import ConfigError
    first = unwrap_model(runner.model)
    device = next(first.parameters()).device
    models = []
    for entry in entries:
        if entry.index == 0:
            model = first
        else:
            model_cfg = copy.deepcopy(cfg.model)
            model_cfg['compact_checkpoint'] = entry.compact_checkpoint
            model_cfg['distill'] = False  # a search only evaluates: no teacher to carry
            try:
                model = runner.build_model(model_cfg)
            except ConfigError as e:
                raise ConfigError(f'{entry.key} ({entry.name}): {e}') from None
            model.to(device)
        n = load_composed_weights(model, entry.checkpoint, f'{entry.key}.checkpoint')
        model.eval()
        params = sum(p.numel() for p in model.parameters())
        log(f'structure {entry.index} {entry.name!r}: '
            f'{entry.compact_checkpoint or "dense (no compact_checkpoint)"}, {params} '
            f'parameters, {n} weights from {entry.checkpoint}')
        models.append(model)
    return models


def load_or_measure_table(path: str, meta: Dict[str, Any], measure: Callable[[], Any],
                          log: Callable[[str], None]) -> Any:
    """A table saved at ``path`` for the same ``meta``, else a fresh one (saved by rank 0): a
    :class:`LatencyTable`, or a :class:`StructureLatencyTable` for a joint space."""
    import json
    rank, _ = get_dist_info()
    saved = None
    if rank == 0 and os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
    saved = agree(saved)
    if saved is not None and saved.get('meta') == json.loads(json.dumps(meta)):
        log(f'latency table: reusing {path}')
        return table_from_dict(saved['table'])
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
    source = f' ({HEADER_SOURCES[key]})' if key in HEADER_SOURCES else ''
    error = None if key is None else (
        f'{path} was written with a different {key!r}{source} ({old.get(key)!r}, now '
        f'{header.get(key)!r}); use another --work-dir or delete the log')
    return dict(error=error, cands=[c.to_dict() for c in cands], dropped=dropped,
                has_header=old is not None)


def finetune_updates(cfg: Config, name: str, value: Any, checkpoint: Optional[str],
                     structure: Optional[StructureEntry] = None) -> Tuple[Dict[str, Any], str]:
    """What a fine-tuning config changes in the searched one: ``model.backbone.<name> = value``,
    random-ratio training (the SAA hook) removed, ``load_from`` the searched checkpoint. With a
    chosen ``structure`` (a joint search): its ``model.compact_checkpoint`` and its composed
    checkpoint as ``load_from``.

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
    if structure is not None:
        updates['model']['compact_checkpoint'] = structure.compact_checkpoint
        checkpoint = structure.checkpoint
        note += (f'\nStructure {structure.name!r} ({structure.key}): model.compact_checkpoint '
                 f'and load_from are its.')
    if checkpoint:
        updates['load_from'] = checkpoint
    return updates, note
