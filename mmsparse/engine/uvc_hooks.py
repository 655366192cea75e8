"""UVC hooks: per-epoch FLOPs / architecture logging, and compaction at the end of training.

- :class:`UVCHook`: after every training epoch logs the expected (soft gates) and the real
  (hard) FLOPs fraction of the current architecture, the budget dual, and a per-block table
  (block runs?, heads, value dims per head, neurons); the two fractions also go to the
  visualizer (``vis_data/scalars.json``) as ``uvc/flops_expected`` and ``uvc/flops_real``.
- :class:`UVCCompactHook`: at the end of training writes the physically smaller model
  (``<work_dir>/<name>.py`` + ``.pth``, see :mod:`mmsparse.compaction.uvc`), checks it against
  the masked model, and optionally puts it in the runner's place, so that a following
  ``runner.test()`` (``make demo``) evaluates and profiles the compact model.
- :class:`UVCClosestEpochHook` (stage 2): starts from the stage-1 epoch checkpoint whose real
  FLOPs (as :class:`UVCHook` recorded them in it) are closest to the budget, preferably not
  above it (:func:`stage1_epoch_flops`, :func:`pick_closest_epoch`), instead of ``load_from``.
"""
import glob
import os.path as osp
import re
from typing import Dict, Optional, Tuple

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmsparse.errors import ConfigError
from mmsparse.models.utils import unwrap_model
from mmsparse.registry import HOOKS
from mmsparse.validation import Keys

__all__ = ['UVCHook', 'UVCCompactHook', 'UVCClosestEpochHook', 'format_architecture',
           'stage1_epoch_flops', 'pick_closest_epoch']

# the runtime-info key (saved in every checkpoint's message hub) of UVCHook's real FLOPs
REAL_FLOPS_KEY = 'uvc/flops_real'


def _uvc(runner):
    model = unwrap_model(runner.model)
    from mmsparse.models.uvc_classifier import UVCClassifier
    if not isinstance(model, UVCClassifier):
        raise ConfigError(f'UVC hooks need a mmsparse.UVCClassifier model, got '
                          f'{type(model).__name__}')
    return model


def format_architecture(rows) -> str:
    """A text table of :meth:`UVCVisionTransformer.arch_summary` rows."""
    lines = ['block | runs | heads | value dims per head | neurons']
    for r in rows:
        lines.append(f"{r['block']:5d} | {'yes' if r['runs'] else 'no ':>4} | {r['heads']:5d} | "
                     f"{','.join(map(str, r['v_dims'])):>19} | {r['neurons']}")
    return '\n'.join(lines)


@HOOKS.register_module()
class UVCHook(Hook):
    """Log UVC's expected and real FLOPs fraction (and the architecture) every epoch.

    Args:
        log_architecture: also log the per-block table.
        project_at_end: at the end of the last search epoch (before its checkpoint is saved),
            if the real FLOPs exceed the budget, remove the cheapest groups until they do not
            (:meth:`UVCClassifier.project_to_budget`, i.e. :func:`mmsparse.ops.uvc_budget.
            project_to_budget`; not in the original, whose iterates end where the primal-dual
            dynamics leave them).
        round_to: with ``project_at_end``, also round kept neurons and value dims down to a
            multiple of this (1: off; 8 gives GEMM-friendly sizes, see
            :meth:`UVCClassifier.project_to_budget`).
    """
    priority = 'LOW'  # before the CheckpointHook (VERY_LOW) of the same epoch

    def __init__(self, log_architecture: bool = True, project_at_end: bool = True,
                 round_to: int = 1) -> None:
        Keys('custom_hooks[UVCHook]').number('round_to', round_to, 1, integer=True)
        self.log_architecture = log_architecture
        self.project_at_end = project_at_end
        self.round_to = round_to

    def after_train_epoch(self, runner) -> None:
        model = _uvc(runner)
        bb = model.uvc_backbone
        bb.refresh_masks()
        if (self.project_at_end and bb.mode == 'search'
                and runner.epoch + 1 >= runner.max_epochs):
            before = model.flops_fraction(hard=True)
            n = model.project_to_budget(self.round_to)
            if n:
                runner.logger.info(
                    f'UVC end of search: real FLOPs {before * 100:.2f} % (budget '
                    f'{model.budget * 100:.1f} %): removed {n} more lowest-score groups'
                    + (f' (kept sizes rounded to multiples of {self.round_to})'
                       if self.round_to > 1 else '')
                    + f' -> {model.flops_fraction(hard=True) * 100:.2f} %')
        expected = model.flops_fraction(hard=False)
        real = model.flops_fraction(hard=True)
        runner.logger.info(
            f'UVC epoch {runner.epoch}: FLOPs expected {expected * 100:.2f} %, real '
            f'{real * 100:.2f} % of dense (budget {model.budget * 100:.1f} %), '
            f'dual z {float(model.dual_flops):.4g}' + (' [warm-up]' if bb.warmup else ''))
        if self.log_architecture:
            runner.logger.info('UVC architecture:\n' + format_architecture(bb.arch_summary()))
        runner.message_hub.update_info('uvc/flops_expected', expected)
        runner.message_hub.update_info(REAL_FLOPS_KEY, real)  # -> this epoch's checkpoint
        runner.visualizer.add_scalars(
            {'uvc/flops_expected': expected, 'uvc/flops_real': real,
             'uvc/dual_flops': float(model.dual_flops)}, step=runner.epoch)


@HOOKS.register_module()
class UVCCompactHook(Hook):
    """At the end of training, write the compact model and check it.

    Args:
        name: file name (without extension) in the work dir.
        swap_model: replace ``runner.model`` by the compact model afterwards (single process
            only), so that ``runner.test()`` evaluates it.
        check_atol: largest allowed logit difference between the masked and the compact model
            on random inputs (a larger one raises).
    """
    priority = 'LOWEST'

    def __init__(self, name: str = 'uvc_compact', swap_model: bool = False,
                 check_atol: float = 1e-4) -> None:
        self.name = name
        self.swap_model = swap_model
        self.check_atol = check_atol
        self.paths: Optional[tuple] = None

    def after_train(self, runner) -> None:
        from mmsparse.compaction.uvc import export_uvc_compact, max_output_diff
        model = _uvc(runner)
        prefix = osp.join(runner.work_dir, self.name)
        if runner.rank != 0 and not self.swap_model:
            return
        cfg_path, ckpt_path, compact = export_uvc_compact(runner.cfg, model, prefix)
        self.paths = (cfg_path, ckpt_path)
        bb = model.uvc_backbone
        size = bb.img_size
        gen = torch.Generator().manual_seed(0)
        images = torch.randn(4, bb.patch_embed.projection.in_channels, *size, generator=gen)
        images = images.to(next(model.parameters()).device)
        was_training = model.training
        diff = max_output_diff(model, compact, images)
        model.train(was_training)
        runner.logger.info(f'UVC compact model written: {cfg_path}, {ckpt_path} (FLOPs '
                           f'{model.fixed_flops_fraction() * 100:.2f} % of dense, max logit '
                           f'difference to the masked model {diff:.2e})')
        if diff > self.check_atol:
            raise RuntimeError(f'UVC compaction check failed: max logit difference {diff:.3e} '
                               f'> {self.check_atol}')
        if self.swap_model:
            if is_model_wrapper(runner.model):
                raise ConfigError('UVCCompactHook(swap_model=True) works in single-process runs '
                                  'only')
            runner.model = compact


def stage1_epoch_flops(work_dir: str) -> Dict[int, Tuple[str, float]]:
    """The real FLOPs fraction of every epoch checkpoint of a stage-1 work dir.

    Reads ``<work_dir>/epoch_<n>.pth`` and the value :class:`UVCHook` logged at the end of
    epoch n (it is in the checkpoint's message hub, ``runtime_info['uvc/flops_real']``: the
    hook runs before the CheckpointHook of the same epoch).

    Returns:
        ``{n: (path, real FLOPs fraction)}``.

    Raises:
        ConfigError: no epoch checkpoint there, or one without the recorded FLOPs.
    """
    from mmsparse.checkpoint import load_checkpoint_file
    found = {}
    for path in glob.glob(osp.join(work_dir, 'epoch_*.pth')):
        m = re.fullmatch(r'epoch_(\d+)\.pth', osp.basename(path))
        if m:
            found[int(m.group(1))] = path
    if not found:
        raise ConfigError(f'custom_hooks[UVCClosestEpochHook].stage1_work_dir: no epoch_<n>.pth '
                          f'checkpoints in {work_dir!r} (run stage 1 there first)')
    out = {}
    for epoch in sorted(found):
        info = load_checkpoint_file(found[epoch], map_location='cpu').get(
            'message_hub', {}).get('runtime_info', {})
        if REAL_FLOPS_KEY not in info:
            raise ConfigError(f'{found[epoch]} holds no {REAL_FLOPS_KEY!r} (written by a stage-1 '
                              f'run without UVCHook); give load_from instead')
        out[epoch] = (found[epoch], float(info[REAL_FLOPS_KEY]))
    return out


def pick_closest_epoch(flops: Dict[int, float], budget: float) -> int:
    """The epoch whose FLOPs are closest to ``budget``, preferring those not above it.

    Among the epochs at or below the budget, the one with the most FLOPs; if every epoch is
    above it, the one with the fewest. Ties go to the later epoch (the longer search).

    Args:
        flops: ``{epoch: real FLOPs fraction}``, not empty.
        budget: the FLOPs budget (a fraction).
    """
    if not flops:
        raise ValueError('pick_closest_epoch: no epochs given')
    below = [e for e, f in flops.items() if f <= budget]
    if below:
        return max(below, key=lambda e: (flops[e], e))
    return min(flops, key=lambda e: (flops[e], -e))


@HOOKS.register_module()
class UVCClosestEpochHook(Hook):
    """Stage 2: start from the stage-1 epoch whose real FLOPs are closest to the budget.

    The original's post-training starts from a stage-1 epoch picked by hand whose FLOPs
    matched the budget (``run_post_train.sh`` loads epoch 9 of a budget-0.5 search). This hook
    picks it from the stage-1 work dir: :func:`pick_closest_epoch` over
    :func:`stage1_epoch_flops`, with the model's ``budget``, and loads it before the first
    iteration (``runner.load_checkpoint``: weights, masks, gates, the teacher). A resumed
    stage 2 (past its first iteration) keeps what it resumed. Use it with ``load_from=None``.

    Args:
        stage1_work_dir: the stage-1 run's work dir (its ``epoch_<n>.pth`` checkpoints; keep
            them all, ``default_hooks.checkpoint.max_keep_ckpts`` unset).
    """
    priority = 'VERY_HIGH'  # before any other before_train hook reads the weights

    def __init__(self, stage1_work_dir: str) -> None:
        Keys('custom_hooks[UVCClosestEpochHook]').require(
            'stage1_work_dir', isinstance(stage1_work_dir, str) and bool(stage1_work_dir),
            f'must be the stage-1 work dir (a path), got {stage1_work_dir!r}')
        self.stage1_work_dir = stage1_work_dir
        self.picked: Optional[Tuple[int, str, float]] = None

    def before_run(self, runner) -> None:
        cfg = runner.cfg
        if cfg.get('load_from') and not cfg.get('resume'):
            raise ConfigError(f"load_from must be None with UVCClosestEpochHook (it picks the "
                              f"stage-1 checkpoint of {self.stage1_work_dir!r}), got "
                              f"{cfg.get('load_from')!r}")

    def before_train(self, runner) -> None:
        if runner.iter > 0:
            return  # resumed: its checkpoint holds the stage-2 state
        model = _uvc(runner)
        epochs = stage1_epoch_flops(self.stage1_work_dir)
        epoch = pick_closest_epoch({e: f for e, (_, f) in epochs.items()}, model.budget)
        path, real = epochs[epoch]
        runner.logger.info(
            'UVC stage-1 epochs, real FLOPs: '
            + ', '.join(f'{e}: {f * 100:.2f} %' for e, (_, f) in epochs.items())
            + f'; budget {model.budget * 100:.1f} %: starting from epoch {epoch} ({path}'
            + (', above the budget: no epoch is at or below it' if real > model.budget else '')
            + ')')
        runner.load_checkpoint(path)
        self.picked = (epoch, path, real)
