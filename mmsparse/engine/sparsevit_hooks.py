"""SparseViT's sparsity-aware adaptation (SAA): train one model under many window-ratio settings.

Every training iteration, :class:`SparsityAwareAdaptationHook` draws new per-block window ratios
for the backbone (:class:`mmsparse.models.SparseSwinTransformer`) from a candidate set: per stage,
one candidate per group of ``group_size`` consecutive blocks (a W-MSA / SW-MSA pair), drawn
uniformly and sorted ascending so ratios never decrease within a stage (SparseViT's rule; for
Swin-T's stage 3, groups 2_1 <= 2_2 <= 2_3).

Agreement across ranks without communication: the draw of iteration ``i`` comes from
``numpy.random.default_rng([seed, i])``, where ``seed`` is the hook's ``seed`` or else the
Runner's (MMEngine makes the Runner's seed identical on every rank, broadcasting rank 0's when the
config sets none, and restores it on ``--resume``). So every rank draws the same ratios, and a
resumed run draws what the uninterrupted run would have drawn.

Validation, testing and the end of training use fixed ratios: ``val_ratios``, or by default the
backbone's configured ``window_ratios``.
"""
from typing import List, Optional, Sequence

import numpy as np
from mmengine.hooks import Hook

from mmsparse.models.sparsevit import normalize_window_ratios
from mmsparse.models.utils import unwrap_model
from mmsparse.ops.windows import RATIO_GROUP_SIZE, expand_group_ratios, num_ratio_groups
from mmsparse.registry import HOOKS
from mmsparse.validation import Keys

__all__ = ['SparsityAwareAdaptationHook', 'sample_window_ratios', 'DEFAULT_CANDIDATES']

DEFAULT_CANDIDATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)

KEYS = Keys('custom_hooks[SparsityAwareAdaptationHook]')


def sample_window_ratios(depths: Sequence[int], candidates: Sequence[float],
                         rng: np.random.Generator,
                         group_size: int = RATIO_GROUP_SIZE) -> List[List[float]]:
    """Draw per-block window ratios: per stage, one sorted candidate per group of blocks.

    The grouping is :func:`mmsparse.ops.windows.num_ratio_groups` /
    :func:`~mmsparse.ops.windows.expand_group_ratios`, the rule of the backbone and the search;
    sorting the draws of a stage keeps its ratios non-decreasing.

    Args:
        depths: blocks per stage, each a multiple of ``group_size``.
        candidates: allowed ratios, ascending.
        rng: the random generator (e.g. ``np.random.default_rng([seed, iteration])``).
        group_size: consecutive blocks sharing one ratio (2: a W-MSA / SW-MSA pair).

    Returns:
        One list per stage, one ratio per block, non-decreasing within each stage.
    """
    out = []
    for depth in depths:  # one draw per stage, in stage order (the stream a resume replays)
        picks = np.sort(rng.integers(0, len(candidates),
                                     size=num_ratio_groups(depth, group_size)))
        out.append(expand_group_ratios([candidates[p] for p in picks], group_size))
    return out


@HOOKS.register_module()
class SparsityAwareAdaptationHook(Hook):
    """Sample window ratios of a SparseViT backbone before every training iteration.

    Args:
        candidates: the ratios to draw from, each in [0, 1). Default {0, 0.1, ..., 0.8}.
        group_size: consecutive blocks sharing one ratio (2 = W-MSA/SW-MSA pairs, as SparseViT).
        seed: seed of the draws; ``None`` = the Runner's seed (the same on every rank).
        val_ratios: ratios for validation / testing / after training; ``None`` = the backbone's
            configured ``window_ratios``.
        log: put the mean sampled ratio in the training log (``train/window_ratio``).
    """

    priority = 'NORMAL'

    def __init__(self, candidates: Sequence[float] = DEFAULT_CANDIDATES,
                 group_size: int = RATIO_GROUP_SIZE,
                 seed: Optional[int] = None, val_ratios=None, log: bool = True) -> None:
        KEYS.numbers('candidates', candidates, 0, 1, high_open=True)
        KEYS.require('candidates', list(candidates) == sorted(candidates),
                     f'must be ascending, got {list(candidates)}')
        KEYS.number('group_size', group_size, 1, integer=True)
        if seed is not None:
            KEYS.number('seed', seed, 0, integer=True)
        KEYS.boolean('log', log)
        self.candidates = tuple(float(c) for c in candidates)
        self.group_size = group_size
        self.seed = seed
        self.val_ratios = val_ratios
        self.log = log
        self._fixed = None

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def backbone(runner):
        """The SparseViT backbone of the runner's model (unwrapping DDP and friends)."""
        model = unwrap_model(runner.model)
        backbone = getattr(model, 'backbone', model)
        if not hasattr(backbone, 'window_ratios') or not hasattr(backbone, 'depths'):
            raise TypeError(f'SparsityAwareAdaptationHook needs a backbone with window_ratios '
                            f'(mmsparse.SparseSwinTransformer), got {type(backbone).__name__}; '
                            f"set model.backbone.type='mmsparse.SparseSwinTransformer'")
        return backbone

    def ratios_for(self, iteration: int, seed: int, depths: Sequence[int]) -> List[List[float]]:
        """The ratios drawn at ``iteration`` (a pure function of seed and iteration)."""
        rng = np.random.default_rng([int(seed), int(iteration)])
        return sample_window_ratios(depths, self.candidates, rng, self.group_size)

    def _seed(self, runner) -> int:
        seed = self.seed if self.seed is not None else runner.seed
        return int(seed) % (2**63)

    def _set_fixed(self, runner) -> None:
        if self._fixed is not None:
            self.backbone(runner).window_ratios = self._fixed

    # ------------------------------------------------------------------ hook points
    def before_run(self, runner) -> None:
        backbone = self.backbone(runner)
        KEYS.require('group_size', all(d % self.group_size == 0 for d in backbone.depths),
                     f'{self.group_size} must divide every stage depth {tuple(backbone.depths)}')
        self._fixed = (backbone.window_ratios if self.val_ratios is None else
                       normalize_window_ratios(self.val_ratios, backbone.depths,
                                               KEYS.key('val_ratios')))

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        backbone = self.backbone(runner)
        ratios = self.ratios_for(runner.iter, self._seed(runner), backbone.depths)
        backbone.window_ratios = ratios
        if self.log:
            flat = [r for stage in ratios for r in stage]
            runner.message_hub.update_scalar('train/window_ratio', sum(flat) / len(flat))

    def after_train(self, runner) -> None:
        self._set_fixed(runner)

    def before_val_epoch(self, runner) -> None:
        self._set_fixed(runner)

    def before_test_epoch(self, runner) -> None:
        self._set_fixed(runner)
