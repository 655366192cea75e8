"""What SViTE's two sparse-training hooks share: schedule, gradient capture, checkpoint, sync.

Why hooks and not an optimizer wrapper: the masks must follow the *whole* iteration (applied
after the optimizer step, updated from the step's gradients every ``update_interval``
iterations, saved with the checkpoint, restored on ``--resume``, logged), which is what an
MMEngine hook sees; the optimizer wrapper stays whatever the config chooses (``OptimWrapper``,
``AmpOptimWrapper``, gradient accumulation, clipping). The one thing a hook cannot see, the
dense gradient (the wrapper zeroes it right after ``step``), is read through torch's public
``Optimizer.register_step_pre_hook`` on the update iterations only: at that point the
gradients are all-reduced (DDP) and unscaled (AMP), exactly the ones the step uses.

Distributed: every rank computes the same masks (init from a CPU generator seeded with the
hook's ``seed`` or the Runner's seed, which MMEngine makes identical on every rank; updates
from DDP's all-reduced gradients, identical weights, and head scores all-reduced across
ranks). With ``sync='broadcast'`` (default) rank 0's masks are also broadcast after the init
and after every update (bit-packed, one collective per update, not per step); with
``verify_sync=True`` (default) a fingerprint of the masks is all-gathered at the same times and a
mismatch raises. Both are no-ops on one process (:meth:`MaskState.synchronise`).

State: the hook's :class:`~.mask_state.MaskState` goes into ``checkpoint['svite']`` and comes
back on ``--resume`` (or ``load_from`` of a SViTE checkpoint), so a resumed run continues with
bit-identical masks. The schedule position is the Runner's iteration, which the checkpoint
restores.
"""
import math
from typing import Dict, List, Optional, Type

import torch
from mmengine.hooks import Hook
from torch import Tensor, nn

from mmsparse.ops import dst
from mmsparse.validation import Keys
from .mask_state import CHECKPOINT_KEY, MaskState, read_mask_state, saved_kind

__all__ = ['DSTHook', 'optimizers_of']


def optimizers_of(optim_wrapper) -> List[torch.optim.Optimizer]:
    """The torch optimizers inside an ``OptimWrapper`` or an ``OptimWrapperDict``."""
    from mmengine.optim import OptimWrapperDict
    if isinstance(optim_wrapper, OptimWrapperDict):
        return [w.optimizer for w in optim_wrapper.values()]
    return [optim_wrapper.optimizer]


class DSTHook(Hook):
    """Base of :class:`~mmsparse.engine.SparseTrainingHook` and
    :class:`~mmsparse.engine.StructuredSparseTrainingHook` (see the module docstring).

    Per iteration: ``before_train_iter`` decides whether the update is due (and arms the
    gradient capture), ``after_train_iter`` applies the masks and runs the update. A subclass
    sets ``STATE`` and implements :meth:`apply_masks`, :meth:`update_masks`,
    :meth:`_grad_params` and :meth:`_refresh_factors`.

    Args:
        update_interval: iterations between mask updates.
        stop_ratio: no update once ``iter >= stop_ratio * schedule length``.
        death_rate: fraction of the active units pruned per update, at iteration 0.
        death_rate_min: the floor of the cosine decay (<= ``death_rate``).
        death_rate_decay: 'cosine' or 'constant'.
        seed: seed of the mask draws (None: the Runner's seed, the same on every rank).
        sync: 'broadcast' (rank 0's masks after the init and every update) or 'none'.
        verify_sync: all-gather a fingerprint after the init and every update, raise on a
            mismatch.
        schedule_iters: length of the schedule; None: the run's ``max_iters``.
    """

    priority = 'HIGH'  # masks applied before EMA, logging and checkpoint hooks see the weights
    STATE: Type[MaskState] = MaskState
    DECAYS = ('cosine', 'constant')
    SYNCS = ('broadcast', 'none')

    def __init__(self, update_interval: int, stop_ratio: float, death_rate: float,
                 death_rate_min: float, death_rate_decay: str, seed: Optional[int], sync: str,
                 verify_sync: bool, schedule_iters: Optional[int] = None) -> None:
        self.keys = Keys(f'custom_hooks[{type(self).__name__}]')
        keys = self.keys
        self.update_interval = keys.number('update_interval', update_interval, 1, integer=True)
        self.stop_ratio = float(keys.number('stop_ratio', stop_ratio, 0.0, 1.0))
        self.death_rate = float(keys.number('death_rate', death_rate, 0.0, 1.0))
        self.death_rate_min = float(keys.number('death_rate_min', death_rate_min, 0.0,
                                                death_rate))
        self.death_rate_decay = keys.choice('death_rate_decay', death_rate_decay, self.DECAYS)
        self.sync = keys.choice('sync', sync, self.SYNCS)
        self.verify_sync = keys.boolean('verify_sync', verify_sync)
        self.seed = seed if seed is None else keys.number('seed', seed, integer=True)
        self.schedule_iters = schedule_iters if schedule_iters is None else \
            keys.number('schedule_iters', schedule_iters, 1, integer=True)
        self.state = self.STATE()
        self._restored: Optional[MaskState] = None
        self._handles: list = []
        self._due = False
        self._grads: Optional[Dict[str, Tensor]] = None

    # ---- the run's state, as attributes ---------------------------------------------------
    @property
    def generator(self) -> Optional[torch.Generator]:
        return self.state.generator

    @property
    def num_updates(self) -> int:
        return self.state.num_updates

    @property
    def history(self) -> List[dict]:
        return self.state.history

    @property
    def name(self) -> str:
        return type(self).__name__

    # ---- schedule -------------------------------------------------------------------------
    def total_iters(self, runner) -> int:
        """Length of the schedule: ``schedule_iters`` or the run's ``max_iters``."""
        return self.schedule_iters or runner.max_iters

    def is_update_step(self, step: int, max_iters: int) -> bool:
        """Whether the mask update runs after training step ``step`` (1-based)."""
        return step % self.update_interval == 0 and step < self.stop_ratio * max_iters

    def last_update_iter(self, runner) -> int:
        """The iteration after which no update runs (for the log)."""
        return math.ceil(self.stop_ratio * self.total_iters(runner))

    def death_rate_at(self, step: int, max_iters: int) -> float:
        """The death rate of an update after step ``step``."""
        if self.death_rate_decay == 'constant':
            return self.death_rate
        return dst.cosine_death_rate(step, max(max_iters, 1), self.death_rate,
                                     self.death_rate_min)

    # ---- gradient capture -----------------------------------------------------------------
    def _grad_params(self) -> Dict[str, nn.Parameter]:
        """Parameters whose dense gradients an update needs."""
        raise NotImplementedError

    def _register_capture(self, runner) -> None:
        self._remove_capture()
        for opt in optimizers_of(runner.optim_wrapper):
            self._handles.append(opt.register_step_pre_hook(self._capture_grads))

    def _remove_capture(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _capture_grads(self, optimizer, args, kwargs) -> None:
        if not self._due:  # gradients are kept only for a mask update
            return
        self._grads = {name: (p.grad.detach().clone() if p.grad is not None
                              else torch.zeros_like(p.detach()))
                       for name, p in self._grad_params().items()}

    # ---- state ----------------------------------------------------------------------------
    def _start_state(self, runner) -> Optional[MaskState]:
        """A fresh state with the run's generator, or the restored one (then returned)."""
        restored, self._restored = self._restored, None
        if restored is not None:
            self.state = restored
            return restored
        seed = self.seed if self.seed is not None else (runner.seed or 0)
        self.state = self.STATE(torch.Generator().manual_seed(int(seed)))
        return None

    def _synchronise(self, runner, when: str) -> None:
        self.state.synchronise(self.sync, self.verify_sync, self.name, when, runner.logger)
        self._refresh_factors()

    def _refresh_factors(self) -> None:
        raise NotImplementedError

    def stats(self) -> dict:
        """The realised densities of the masks (what is logged)."""
        return self.state.stats()

    def _finish_update(self, runner, step: int, **counts) -> dict:
        """After an update drew new masks: count it, make the ranks agree, zero the pruned
        weights, record ``dict(iter, **counts, **stats)`` in the history and log it."""
        self.state.num_updates += 1
        self._synchronise(runner, f'update {self.num_updates}')
        self.apply_masks()
        record = dict(iter=step, **counts, **self.stats())
        self.history.append(record)
        self._log_scalars(runner, dict(record, iter=None))
        return record

    def _log_scalars(self, runner, stats: dict) -> None:
        for k, v in stats.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                runner.message_hub.update_scalar(f'train/sparse_{k}', v)

    # ---- hook points ----------------------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        kind = saved_kind(checkpoint)
        self._restored = None
        if kind is None:
            return
        if kind != self.STATE.KIND:
            runner.logger.warning(f'{self.name}: the checkpoint holds {kind!r} SViTE masks, '
                                  f'not {self.STATE.KIND!r}: they are ignored and new masks '
                                  f'are drawn')
            return
        self._restored = read_mask_state(checkpoint)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.state.has_masks():
            checkpoint[CHECKPOINT_KEY] = self.state.pack()

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        step = runner.iter + 1
        self._due = self.state.pending or self.is_update_step(step, self.total_iters(runner))
        self._before_step(runner, step)

    def _before_step(self, runner, step: int) -> None:
        pass

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.apply_masks()
        if self._due:
            step = runner.iter + 1
            if self._grads is None:
                if not self.state.pending:
                    runner.logger.warning(f'{self.name}: no optimizer step at iteration '
                                          f'{step} (gradient accumulation or a skipped AMP '
                                          f'step): the mask update waits for the next step')
                self.state.pending = True
            else:
                self.update_masks(runner, step)
                self.state.pending = False
        self._grads = None
        self._due = False

    def after_train(self, runner) -> None:
        self._remove_capture()
        self._after_train(runner)

    def _after_train(self, runner) -> None:
        pass

    # ---- to implement ---------------------------------------------------------------------
    def apply_masks(self) -> None:
        """Zero the pruned weights (after every optimizer step)."""
        raise NotImplementedError

    def update_masks(self, runner, step: int) -> None:
        """One prune-and-regrow update after training step ``step``."""
        raise NotImplementedError
