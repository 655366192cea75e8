"""Hooks of DynamicViT's training recipe.

- :class:`DynamicViTOptimHook`: the backbone (every parameter whose name holds none of
  ``trainable_keys``, i.e. all but the predictors) learns at ``backbone_lr_scale`` x the
  scheduled lr, and not at all during the first ``freeze_backbone`` epochs (or iterations).
- :class:`RNGStateHook`: torch's random state (the Gumbel noise of DynamicViT's decisions,
  DropPath, samplers) and numpy's / Python's (data augmentation) are saved in checkpoints and
  restored on resume, and validation does not advance torch's, so that an interrupted and
  resumed run draws the same noise as an uninterrupted one.
"""
import random
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine import dist
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import IterBasedTrainLoop

from mmsparse.errors import ConfigError
from mmsparse.models.utils import unwrap_model
from mmsparse.registry import HOOKS
from mmsparse.validation import Keys

__all__ = ['DynamicViTOptimHook', 'RNGStateHook']


@HOOKS.register_module()
class DynamicViTOptimHook(Hook):
    """Backbone lr = ``backbone_lr_scale`` x scheduled lr, and 0 while the backbone is frozen.

    DynamicViT's optimisation (original ``main.py``): the predictors learn at the full lr, the
    rest of the model (backbone and head) at ``lr_scale`` (0.01) x lr, and at lr 0 for the first
    5 epochs. The optimizer's param groups keep the scheduler's values: this hook scales the
    backbone groups just for the optimizer step of each iteration (before_train_iter) and puts
    the scheduled values back afterwards (after_train_iter, before ``ParamSchedulerHook``), so
    any MMEngine lr schedule composes with it and checkpoints hold the unscaled values. The
    backbone lr actually used is logged as ``backbone_lr``.

    Each param group must hold only predictor or only backbone parameters: MMEngine's default
    optimizer constructor makes one group per parameter whenever ``optim_wrapper.paramwise_cfg``
    is set (e.g. ``dict(norm_decay_mult=0.0, bias_decay_mult=0.0)``).

    Args:
        backbone_lr_scale: lr multiplier of the backbone groups after the frozen period.
        freeze_backbone: epochs (``by_epoch=True``) or iterations during which the backbone lr
            is 0.
        by_epoch: count ``freeze_backbone`` in epochs or iterations.
        trainable_keys: a parameter whose name contains one of these is a predictor parameter
            and keeps the full lr.

    A composed model (``DynamicViTClassifier(compact_checkpoint=...)``) also gets its structure
    saved as ``meta['compact_structure']`` of every checkpoint, so that the composed checkpoint
    itself can be named as ``model.compact_checkpoint`` to test, measure or export it (without
    the compact file it started from).
    """
    priority = 'NORMAL'  # after_train_iter must restore the lr before ParamSchedulerHook (LOW)

    def __init__(self, backbone_lr_scale: float = 0.01, freeze_backbone: int = 5,
                 by_epoch: bool = True, trainable_keys: Sequence[str] = ('predictor', )) -> None:
        keys = Keys('custom_hooks[DynamicViTOptimHook]')
        keys.number('backbone_lr_scale', backbone_lr_scale, low=0)
        keys.number('freeze_backbone', freeze_backbone, low=0, integer=True)
        keys.boolean('by_epoch', by_epoch)
        keys.require('trainable_keys', not isinstance(trainable_keys, str) and bool(trainable_keys),
                     f'must be a non-empty list of name parts, got {trainable_keys!r}')
        self.backbone_lr_scale = float(backbone_lr_scale)
        self.freeze_backbone = freeze_backbone
        self.by_epoch = by_epoch
        self.trainable_keys = tuple(trainable_keys)
        self._groups: List[dict] = []
        self._saved: List[float] = []

    def before_train(self, runner) -> None:
        model = unwrap_model(runner.model)
        names = {id(p): n for n, p in model.named_parameters()}
        optimizer = runner.optim_wrapper.optimizer
        self._groups = []
        num_trainable = 0
        for i, group in enumerate(optimizer.param_groups):
            kinds = {any(k in names.get(id(p), '') for k in self.trainable_keys)
                     for p in group['params']}
            if len(kinds) > 1:
                raise ConfigError(
                    f'DynamicViTOptimHook: optimizer param group {i} mixes parameters matching '
                    f'trainable_keys={list(self.trainable_keys)} with backbone parameters; set '
                    f'optim_wrapper.paramwise_cfg (e.g. dict(norm_decay_mult=0.0)) so that '
                    f'MMEngine makes one group per parameter')
            if kinds == {True}:
                num_trainable += 1
            elif kinds == {False}:
                self._groups.append(group)
        if num_trainable == 0:  # e.g. the random-dropping baseline, which has no predictors
            print_log(f'DynamicViTOptimHook: no optimized parameter name contains any of '
                      f'trainable_keys={list(self.trainable_keys)}; every group is a backbone '
                      f'group', logger='current', level=30)
        print_log(f'DynamicViTOptimHook: {num_trainable} predictor param groups at the full lr, '
                  f'{len(self._groups)} backbone groups at x{self.backbone_lr_scale} (x0 for the '
                  f'first {self.freeze_backbone} {"epochs" if self.by_epoch else "iterations"})',
                  logger='current')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        model = unwrap_model(runner.model)
        if getattr(model, 'compact_checkpoint', None) is not None:
            from mmsparse.models.layers.compact_vit import compact_structure
            checkpoint.setdefault('meta', {})['compact_structure'] = \
                compact_structure(model.backbone)

    def frozen(self, runner) -> bool:
        """Whether the backbone lr is 0 at the current iteration."""
        step = runner.epoch if self.by_epoch else runner.iter
        return step < self.freeze_backbone

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        scale = 0.0 if self.frozen(runner) else self.backbone_lr_scale
        self._saved = [g['lr'] for g in self._groups]
        for g in self._groups:
            g['lr'] = g['lr'] * scale
        if self._groups:
            runner.message_hub.update_scalar('train/backbone_lr', self._groups[0]['lr'])

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        for g, lr in zip(self._groups, self._saved):
            g['lr'] = lr
        self._saved = []


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Keep torch's random stream of training exact across checkpoints and validation.

    Saves the CPU (and CUDA) random state of every rank in each checkpoint
    (``checkpoint['rng_state']``), restores it when a run is resumed (the train loop's iteration
    > 0 at ``before_train``), and restores the state it had before each validation afterwards,
    so that validation draws do not shift training's noise. With ``num_workers=0`` (or
    deterministic pipelines) a resumed run then reproduces an uninterrupted one exactly.
    """
    # before CheckpointHook ('VERY_LOW'), whose after_train_iter / after_train_epoch save
    priority = 'LOW'

    def __init__(self) -> None:
        self._loaded: Optional[list] = None
        self._before_val: Optional[Dict[str, object]] = None
        self._gathered: Optional[list] = None

    @staticmethod
    def _state() -> Dict[str, object]:
        state = {'torch': torch.get_rng_state(), 'numpy': np.random.get_state(),
                 'python': random.getstate()}
        if torch.cuda.is_available():
            state['cuda'] = torch.cuda.get_rng_state_all()
        return state

    @staticmethod
    def _set_state(state: Dict[str, object]) -> None:
        torch.set_rng_state(state['torch'])
        if 'cuda' in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['cuda'])

    def _gather(self) -> None:
        # Only rank 0 writes checkpoints (before_save_checkpoint runs there alone), so every
        # rank's state is gathered where all ranks are: after each training iteration and epoch.
        if dist.get_world_size() > 1:
            self._gathered = dist.all_gather_object(self._state())

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._gather()

    def after_train_epoch(self, runner) -> None:
        self._gather()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # a checkpoint written during validation (save_best) gets the training stream's state
        if self._gathered is not None:
            checkpoint['rng_state'] = self._gathered
            return
        state = self._before_val if self._before_val is not None else self._state()
        checkpoint['rng_state'] = [state]

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._loaded = checkpoint.get('rng_state')

    def before_train(self, runner) -> None:
        states, self._loaded = self._loaded, None
        if not states or runner.iter == 0:
            return
        if len(states) != dist.get_world_size():
            print_log(f'RNGStateHook: the checkpoint holds the random state of {len(states)} '
                      f'ranks, this run has {dist.get_world_size()}; not restored',
                      logger='current', level=30)
            return
        state = states[dist.get_rank()]
        self._set_state(state)
        # the data pipeline's streams (e.g. mmcv's RandomFlip draws from numpy's): an
        # iteration-based loop replays the consumed batches after this hook, which redraws them
        # from the seed; an epoch-based one does not, so it gets the saved state
        if 'numpy' in state and not isinstance(runner.train_loop, IterBasedTrainLoop):
            np.random.set_state(state['numpy'])
            random.setstate(state['python'])

    def before_val(self, runner) -> None:
        self._before_val = self._state()

    def after_val(self, runner) -> None:
        if self._before_val is not None:
            self._set_state(self._before_val)
            self._before_val = None
