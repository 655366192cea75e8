"""SViTE's training hooks: unstructured and structured dynamic sparse training, token temperature.

Why hooks and not an optimizer wrapper: the masks must follow the *whole* iteration (applied
after the optimizer step, updated from the step's gradients every ``update_interval``
iterations, saved with the checkpoint, restored on ``--resume``, logged), which is what an
MMEngine hook sees; the optimizer wrapper stays whatever the config chooses (``OptimWrapper``,
``AmpOptimWrapper``, gradient accumulation, clipping). The one thing a hook cannot see, the
dense gradient (the wrapper zeroes it right after ``step``), is read through torch's public
``Optimizer.register_step_pre_hook`` on the update iterations only: at that point the
gradients are all-reduced (DDP) and unscaled (AMP), exactly the ones the step uses.

- :class:`SparseTrainingHook` (SViTE): masks of the patch-embed conv, every qkv / proj / fc1 /
  fc2 and the classifier head (regexes, configurable); init ``fixed_ERK`` / ``ERK`` /
  ``uniform`` at ``density``; masks applied after every iteration's optimizer step; every
  ``update_interval`` iterations while ``iter < stop_ratio * max_iters``: magnitude death at a
  cosine-decayed rate, then gradient (RigL), momentum or random growth of as many weights.
- :class:`StructuredSparseTrainingHook` (S²ViTE): heads (qkv rows) and MLP neurons (fc1 rows,
  fc2 columns); heads are pruned by first-order Taylor scores recorded by
  :class:`~mmsparse.models.SViTEVisionTransformer`'s attention and regrown by gradient L1;
  neurons pruned by weight L1 and regrown by gradient L1; same schedule.
- :class:`TokenSelectorTemperatureHook` (SViTE+): the Gumbel temperature, linearly 10 -> 0.1.

Distributed: every rank computes the same masks (init from a CPU generator seeded with the
hook's ``seed`` or the Runner's seed, which MMEngine makes identical on every rank; updates
from DDP's all-reduced gradients, identical weights, and head scores all-reduced across
ranks). With ``sync='broadcast'`` (default) rank 0's masks are also broadcast after the init
and after every update (bit-packed, one collective per update, not per step); with
``verify_sync=True`` (default) a fingerprint of the masks is all-gathered at the same times and a
mismatch raises. Both are no-ops on one process.

State: masks (bit-packed), exploration masks, the generator state, the update count and
history go into ``checkpoint['svite']`` and come back on ``--resume`` (or ``load_from`` of a
SViTE checkpoint), so a resumed run continues with bit-identical masks. The schedule position
is the Runner's iteration, which the checkpoint restores.

Deliberate differences from the original: exact counts (top-k) instead of thresholds in every
prune/grow rule (ties cannot change a layer's density); random growth picks exactly ``n``
entries (the original draws Bernoulli(n / #zeros)); ``ERK`` (not in the original) is the ERK
density with exactly ``round(d * n)`` weights per layer, ``fixed_ERK`` / ``uniform`` are the
original's Bernoulli draws; masks are broadcast only when they change (the original broadcasts
every mask every step).
"""
import math
import re
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.dist import all_gather, all_reduce, broadcast, get_world_size
from mmengine.hooks import Hook
from torch import Tensor, nn

from mmsparse.errors import ConfigError
from mmsparse.ops import dst
from mmsparse.registry import HOOKS
from .utils import unwrap_model

__all__ = ['SparseTrainingHook', 'StructuredSparseTrainingHook', 'TokenSelectorTemperatureHook',
           'DEFAULT_LAYERS', 'CHECKPOINT_KEY']

CHECKPOINT_KEY = 'svite'

# parameter names (regexes, full match) of an mmpretrain ImageClassifier + VisionTransformer
DEFAULT_LAYERS = (
    r'backbone\.patch_embed\.projection\.weight',
    r'backbone\.layers\.\d+\.attn\.qkv\.weight',
    r'backbone\.layers\.\d+\.attn\.proj\.weight',
    r'backbone\.layers\.\d+\.ffn\.layers\.0\.0\.weight',
    r'backbone\.layers\.\d+\.ffn\.layers\.1\.weight',
    r'head\.layers\.head\.weight',
)


def _optimizers(optim_wrapper) -> list:
    from mmengine.optim import OptimWrapperDict
    if isinstance(optim_wrapper, OptimWrapperDict):
        return [w.optimizer for w in optim_wrapper.values()]
    return [optim_wrapper.optimizer]


def _short(name: str) -> str:
    return name.replace('backbone.', '').replace('.weight', '')


def _check_number(key: str, value, low: float, high: float, low_open: bool = True,
                  allowed: str = '') -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        rng = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ConfigError(f'{key} must be a number in {rng}{allowed}, got {value!r}')


class _DSTHook(Hook):
    """What both sparse-training hooks share: schedule, gradient capture, sync, checkpoint."""

    priority = 'HIGH'  # masks applied before EMA, logging and checkpoint hooks see the weights
    KIND = ''
    DECAYS = ('cosine', 'constant')
    SYNCS = ('broadcast', 'none')

    def __init__(self, update_interval: int, stop_ratio: float, death_rate: float,
                 death_rate_min: float, death_rate_decay: str, seed: Optional[int], sync: str,
                 verify_sync: bool, schedule_iters: Optional[int] = None) -> None:
        key = f'custom_hooks.{type(self).__name__}'
        self._key = key
        if isinstance(update_interval, bool) or not isinstance(update_interval, int) \
                or update_interval <= 0:
            raise ConfigError(f'{key}.update_interval must be an int >= 1 (iterations between '
                              f'mask updates), got {update_interval!r}')
        _check_number(f'{key}.stop_ratio', stop_ratio, 0.0, 1.0, low_open=False,
                      allowed=' (fraction of training after which masks stop changing)')
        _check_number(f'{key}.death_rate', death_rate, 0.0, 1.0, low_open=False)
        _check_number(f'{key}.death_rate_min', death_rate_min, 0.0, death_rate, low_open=False,
                      allowed=' (<= death_rate)')
        if death_rate_decay not in self.DECAYS:
            raise ConfigError(f'{key}.death_rate_decay must be one of {self.DECAYS}, got '
                              f'{death_rate_decay!r}')
        if sync not in self.SYNCS:
            raise ConfigError(f'{key}.sync must be one of {self.SYNCS}, got {sync!r}')
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f'{key}.seed must be an int or None, got {seed!r}')
        if schedule_iters is not None and (isinstance(schedule_iters, bool)
                                           or not isinstance(schedule_iters, int)
                                           or schedule_iters <= 0):
            raise ConfigError(f'{key}.schedule_iters must be None (the run\'s max_iters) or an '
                              f'int >= 1, got {schedule_iters!r}')
        self.schedule_iters = schedule_iters
        self.update_interval = update_interval
        self.stop_ratio = float(stop_ratio)
        self.death_rate = float(death_rate)
        self.death_rate_min = float(death_rate_min)
        self.death_rate_decay = death_rate_decay
        self.seed = seed
        self.sync = sync
        self.verify_sync = verify_sync
        self.generator: Optional[torch.Generator] = None
        self.num_updates = 0
        self.history: List[dict] = []
        self._restored: Optional[dict] = None
        self._handles: list = []
        self._capture = False
        self._due = False
        self._pending = False
        self._grads: Optional[Dict[str, Tensor]] = None

    # ---- schedule -----------------------------------------------------------------------
    def total_iters(self, runner) -> int:
        """Length of the schedule: ``schedule_iters`` or the run's ``max_iters``."""
        return self.schedule_iters or runner.max_iters

    def is_update_step(self, step: int, max_iters: int) -> bool:
        """Whether the mask update runs after training step ``step`` (1-based)."""
        return step % self.update_interval == 0 and step < self.stop_ratio * max_iters

    def death_rate_at(self, step: int, max_iters: int) -> float:
        if self.death_rate_decay == 'constant':
            return self.death_rate
        return dst.cosine_death_rate(step, max(max_iters, 1), self.death_rate,
                                     self.death_rate_min)

    # ---- gradient capture ------------------------------------------------------------------
    def _grad_params(self) -> Dict[str, nn.Parameter]:
        """Parameters whose dense gradients an update needs."""
        raise NotImplementedError

    def _register_capture(self, runner) -> None:
        self._remove_capture()
        for opt in _optimizers(runner.optim_wrapper):
            self._handles.append(opt.register_step_pre_hook(self._capture_grads))

    def _remove_capture(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _capture_grads(self, optimizer, args, kwargs) -> None:
        if not self._capture:
            return
        grads = {}
        for name, p in self._grad_params().items():
            grads[name] = (p.grad.detach().clone() if p.grad is not None
                           else torch.zeros_like(p.detach()))
        self._grads = grads

    # ---- hook points ----------------------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            self._restored = None
            return
        if state.get('kind') != self.KIND:
            runner.logger.warning(f'{type(self).__name__}: the checkpoint holds '
                                  f"{state.get('kind')!r} SViTE masks, not {self.KIND!r}: "
                                  f'they are ignored and new masks are drawn')
            self._restored = None
            return
        self._restored = state

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        step = runner.iter + 1
        self._due = self._pending or self.is_update_step(step, self.total_iters(runner))
        self._capture = self._due
        self._before_step(runner, step)

    def _before_step(self, runner, step: int) -> None:
        pass

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.apply_masks()
        if self._due:
            step = runner.iter + 1
            if self._grads is None:
                if not self._pending:
                    runner.logger.warning(f'{type(self).__name__}: no optimizer step at '
                                          f'iteration {step} (gradient accumulation or a '
                                          f'skipped AMP step): the mask update waits for the '
                                          f'next step')
                self._pending = True
            else:
                self.update_masks(runner, step)
                self._pending = False
        self._grads = None
        self._capture = False
        self._due = False

    def after_train(self, runner) -> None:
        self._remove_capture()
        self._after_train(runner)

    def _after_train(self, runner) -> None:
        pass

    # ---- to implement --------------------------------------------------------------------
    def apply_masks(self) -> None:
        raise NotImplementedError

    def update_masks(self, runner, step: int) -> None:
        raise NotImplementedError

    def _mask_list(self) -> List[Tensor]:
        raise NotImplementedError

    def _set_mask_list(self, masks: List[Tensor]) -> None:
        raise NotImplementedError

    # ---- shared helpers ----------------------------------------------------------------------
    def _make_generator(self, runner) -> torch.Generator:
        seed = self.seed if self.seed is not None else (runner.seed or 0)
        return torch.Generator().manual_seed(int(seed))

    def _synchronise(self, runner, when: str) -> None:
        """Broadcast rank 0's masks (``sync='broadcast'``) and check all ranks agree."""
        world = get_world_size()
        if world == 1:
            return
        masks = self._mask_list()
        if self.sync == 'broadcast':
            packed = [dst.pack_mask(m) for m in masks]
            flat = torch.cat(packed)
            broadcast(flat, src=0)
            out, start = [], 0
            for m, p in zip(masks, packed):
                out.append(dst.unpack_mask(flat[start:start + p.numel()], m.shape).to(m.device))
                start += p.numel()
            self._set_mask_list(out)
            masks = out
        if self.verify_sync:
            fp = torch.tensor([v for m in masks for v in dst.mask_fingerprint(m)],
                              dtype=torch.float64)
            gathered = all_gather(fp)
            if any(not torch.equal(g.cpu(), gathered[0].cpu()) for g in gathered):
                raise RuntimeError(f'{type(self).__name__}: the masks differ between ranks '
                                   f'after {when} (sync={self.sync!r}); use '
                                   f"sync='broadcast'")
            runner.logger.info(f'{type(self).__name__}: masks identical on {world} ranks '
                               f'after {when} (sync={self.sync})')

    def _log_scalars(self, runner, stats: dict) -> None:
        for k, v in stats.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                runner.message_hub.update_scalar(f'train/sparse_{k}', v)


@HOOKS.register_module()
class SparseTrainingHook(_DSTHook):
    """Unstructured dynamic sparse training (SViTE): masks, prune and regrow, every N iterations.

    Args:
        density: overall fraction of the masked weights that are kept, in (0, 1].
        sparse_init: per-layer densities and the initial draw: 'fixed_ERK' (ERK densities,
            Bernoulli masks: the original), 'ERK' (ERK densities, exactly round(d * n) weights
            per layer) or 'uniform' (``density`` everywhere, Bernoulli).
        init_by: 'random' (the original) or 'magnitude' (keep the largest weights of the
            initial / loaded model: one-shot magnitude pruning, e.g. to fine-tune a dense model).
        layers: regexes (full match) of the parameter names to mask; each must match at least
            one parameter of 2 or more dims. Default: patch-embed conv, every qkv, proj, fc1,
            fc2, and the head of an mmpretrain ViT classifier.
        growth: 'gradient' (RigL: largest dense-gradient magnitude of the update step's
            mini-batch), 'momentum' (largest optimizer momentum: Adam's ``m / (sqrt(v) + eps)``
            or SGD's momentum buffer, a gradient averaged over many steps; the masked weights'
            moments keep accumulating because their gradients are dense) or 'random'.
        update_interval: iterations between mask updates (original: 15000 DeiT-S, 7000 DeiT-B).
        stop_ratio: no update once ``iter >= stop_ratio * max_iters`` (original ``t_end`` 0.8).
        death_rate: fraction of each layer's active weights pruned per update, at iteration 0.
        death_rate_min: the floor of the cosine decay (original 0.005).
        death_rate_decay: 'cosine' (original default) or 'constant'.
        erk_power_scale: exponent of the ERK raw score (1 = ERK).
        seed: seed of the mask draws (default: the Runner's seed, the same on every rank).
        sync: 'broadcast' (rank 0's masks are broadcast after the init and every update) or
            'none' (every rank computes its own, identical masks).
        verify_sync: all-gather a fingerprint of the masks after the init and every update and
            raise if the ranks disagree.
        log_layers: log the realised density of every layer at the init and every update.
        schedule_iters: length of the schedule (death-rate decay, ``stop_ratio``); default the
            run's ``max_iters``.
    """
    KIND = 'unstructured'
    INITS = ('fixed_ERK', 'ERK', 'uniform')
    INIT_BY = ('random', 'magnitude')
    GROWTHS = ('gradient', 'momentum', 'random')

    def __init__(self, density: float = 0.5, sparse_init: str = 'fixed_ERK',
                 init_by: str = 'random', layers: Sequence[str] = DEFAULT_LAYERS,
                 growth: str = 'gradient', update_interval: int = 15000,
                 stop_ratio: float = 0.8, death_rate: float = 0.5, death_rate_min: float = 0.005,
                 death_rate_decay: str = 'cosine', erk_power_scale: float = 1.0,
                 seed: Optional[int] = None, sync: str = 'broadcast', verify_sync: bool = True,
                 log_layers: bool = True, schedule_iters: Optional[int] = None) -> None:
        super().__init__(update_interval, stop_ratio, death_rate, death_rate_min,
                         death_rate_decay, seed, sync, verify_sync, schedule_iters)
        key = self._key
        _check_number(f'{key}.density', density, 0.0, 1.0,
                      allowed=' (fraction of the masked weights kept)')
        if sparse_init not in self.INITS:
            raise ConfigError(f'{key}.sparse_init must be one of {self.INITS}, got '
                              f'{sparse_init!r}')
        if init_by not in self.INIT_BY:
            raise ConfigError(f'{key}.init_by must be one of {self.INIT_BY}, got {init_by!r}')
        if growth not in self.GROWTHS:
            raise ConfigError(f'{key}.growth must be one of {self.GROWTHS}, got {growth!r}')
        if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
            raise ConfigError(f'{key}.layers must be a non-empty list of regexes of parameter '
                              f'names, got {layers!r}')
        self.patterns = []
        for p in layers:
            try:
                self.patterns.append(re.compile(p))
            except (re.error, TypeError) as e:
                raise ConfigError(f'{key}.layers: {p!r} is not a valid regex ({e})') from None
        _check_number(f'{key}.erk_power_scale', erk_power_scale, 0.0, 10.0)
        self.density = float(density)
        self.sparse_init = sparse_init
        self.init_by = init_by
        self.growth = growth
        self.erk_power_scale = float(erk_power_scale)
        self.log_layers = log_layers
        self.params: Dict[str, nn.Parameter] = {}
        self.masks: Dict[str, Tensor] = {}
        self.fired: Dict[str, Tensor] = {}
        self.densities: Dict[str, float] = {}
        self._factors: List[Tensor] = []
        self._weights: List[Tensor] = []

    # ---- layers -------------------------------------------------------------------------------
    def resolve_layers(self, model: nn.Module) -> Dict[str, nn.Parameter]:
        """The masked parameters of ``model`` (unwrapped), by name, in model order.

        Raises:
            ConfigError: if a pattern matches no parameter, or matches one with < 2 dims.
        """
        named = dict(model.named_parameters())
        chosen: Dict[str, nn.Parameter] = {}
        for pat in self.patterns:
            hits = [n for n in named if pat.fullmatch(n)]
            if not hits:
                candidates = [n for n, p in named.items() if p.dim() >= 2]
                shown = ', '.join(candidates[:8]) + (f', ... ({len(candidates) - 8} more)'
                                                     if len(candidates) > 8 else '')
                raise ConfigError(f'{self._key}.layers: the pattern {pat.pattern!r} matches no '
                                  f'parameter of the model; parameters that can be masked '
                                  f'(>= 2 dims): {shown}')
            for n in hits:
                if named[n].dim() < 2:
                    raise ConfigError(f'{self._key}.layers: {pat.pattern!r} matches {n!r}, '
                                      f'which has {named[n].dim()} dim(s); only weights with '
                                      f'>= 2 dims (linear, conv) can be masked')
                chosen[n] = named[n]
        return {n: chosen[n] for n in named if n in chosen}

    def _grad_params(self) -> Dict[str, nn.Parameter]:
        return self.params

    def _mask_list(self) -> List[Tensor]:
        return [self.masks[n] for n in self.params]

    def _set_mask_list(self, masks: List[Tensor]) -> None:
        for n, m in zip(self.params, masks):
            self.masks[n] = m
            self.fired[n] = self.fired[n] | m if n in self.fired else m.clone()
        self._refresh_factors()

    def _refresh_factors(self) -> None:
        """The masks as 0/1 tensors of the weights' dtype: what :meth:`apply_masks`
        multiplies by (one fused multiply per step; a bool mask would be converted every
        time)."""
        self._factors = [self.masks[n].to(p.dtype) for n, p in self.params.items()]
        self._weights = list(self.params.values())

    # ---- hook points -------------------------------------------------------------------------
    def before_run(self, runner) -> None:
        self.params = self.resolve_layers(unwrap_model(runner.model))

    def before_train(self, runner) -> None:
        self.params = self.resolve_layers(unwrap_model(runner.model))
        self.generator = self._make_generator(runner)
        if self.growth == 'momentum':
            self._check_momentum_optimizers(runner, self._key)
        shapes = {n: tuple(p.shape) for n, p in self.params.items()}
        if self.sparse_init == 'uniform':
            self.densities = dst.uniform_densities(shapes, self.density)
        else:
            self.densities = dst.erk_densities(shapes, self.density, self.erk_power_scale)
        if self._restored is not None:
            self._restore(self._restored)
            what = f'resume (update {self.num_updates})'
        else:
            self._init_masks()
            what = f'init ({self.sparse_init}, {self.init_by})'
        self._restored = None
        self._refresh_factors()
        self._synchronise(runner, what)
        self.apply_masks()
        self._register_capture(runner)
        stats = self.stats()
        runner.logger.info(f'SparseTrainingHook: {len(self.params)} masked tensors, target '
                           f'density {self.density}, realised {stats["density"]:.4f} after '
                           f'{what}; updates every {self.update_interval} iterations until '
                           f'iteration {math.ceil(self.stop_ratio * self.total_iters(runner))}, '
                           f'growth {self.growth}')
        if self.log_layers:
            runner.logger.info('SparseTrainingHook: density per layer: '
                               + self._layer_densities())
        self._log_scalars(runner, dict(density=stats['density'],
                                       exploration=stats['exploration']))

    def _init_masks(self) -> None:
        self.masks, self.fired = {}, {}
        for n, p in self.params.items():
            d = self.densities[n]
            if self.init_by == 'magnitude':
                m = dst.magnitude_mask(p.detach(), d)
            else:
                m = dst.random_mask(p.shape, d, self.generator,
                                    exact=self.sparse_init == 'ERK').to(p.device)
            self.masks[n] = m
            self.fired[n] = m.clone()
        self.num_updates, self.history = 0, []

    def _restore(self, state: dict) -> None:
        names = list(state['shapes'])
        if names != list(self.params):
            missing = sorted(set(self.params) - set(names))
            extra = sorted(set(names) - set(self.params))
            raise ConfigError(f'{self._key}: the checkpoint\'s masks are for other layers '
                              f'(missing: {missing[:4]}, unexpected: {extra[:4]}); check '
                              f'{self._key}.layers')
        self.masks, self.fired = {}, {}
        for n, p in self.params.items():
            shape = tuple(state['shapes'][n])
            if shape != tuple(p.shape):
                raise ConfigError(f'{self._key}: the checkpoint\'s mask of {n} has shape '
                                  f'{shape}, the model\'s weight {tuple(p.shape)}')
            self.masks[n] = dst.unpack_mask(state['masks'][n], shape).to(p.device)
            self.fired[n] = dst.unpack_mask(state['fired'][n], shape).to(p.device)
        self.generator.set_state(state['generator'])
        self.num_updates = int(state['num_updates'])
        self.history = list(state.get('history', []))
        self._pending = bool(state.get('pending', False))

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if not self.masks:
            return
        checkpoint[CHECKPOINT_KEY] = dict(
            kind=self.KIND, version=1,
            shapes={n: list(m.shape) for n, m in self.masks.items()},
            masks={n: dst.pack_mask(m) for n, m in self.masks.items()},
            fired={n: dst.pack_mask(m) for n, m in self.fired.items()},
            densities=dict(self.densities), density=self.density,
            generator=self.generator.get_state(), num_updates=self.num_updates,
            history=list(self.history), pending=self._pending)

    # ---- masks ----------------------------------------------------------------------------
    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the pruned weights (after the optimizer step)."""
        if hasattr(torch, '_foreach_mul_'):
            torch._foreach_mul_(self._weights, self._factors)
        else:
            for p, f in zip(self._weights, self._factors):
                p.mul_(f)

    @torch.no_grad()
    def update_masks(self, runner, step: int) -> None:
        """Magnitude death then gradient / random growth of as many weights, every layer."""
        rate = self.death_rate_at(step, self.total_iters(runner))
        pruned = regrown = changed = 0
        for n, p in self.params.items():
            old = self.masks[n]
            after_death = dst.magnitude_death(p, old, rate)
            n_removed = int(old.sum()) - int(after_death.sum())
            if self.growth == 'gradient':
                new = dst.gradient_growth(after_death, self._grads[n], n_removed)
            elif self.growth == 'momentum':
                new = dst.gradient_growth(after_death, self._momentum(runner, p), n_removed)
            else:
                new = dst.random_growth(after_death, n_removed, self.generator)
            pruned += n_removed
            regrown += int(new.sum()) - int(after_death.sum())
            changed += int((new & ~old).sum())
            self.masks[n] = new
            self.fired[n] |= new
        self.num_updates += 1
        self._refresh_factors()
        self._synchronise(runner, f'update {self.num_updates}')
        self.apply_masks()
        stats = self.stats()
        record = dict(iter=step, death_rate=rate, pruned=pruned, regrown=regrown,
                      new_connections=changed, density=stats['density'],
                      exploration=stats['exploration'])
        self.history.append(record)
        self._log_scalars(runner, dict(record, iter=None))
        runner.logger.info(
            f'SparseTrainingHook: update {self.num_updates} at iteration {step}: death rate '
            f'{rate:.4f}, pruned {pruned}, regrown {regrown} ({changed} new connections), '
            f'density {stats["density"]:.4f}, exploration {stats["exploration"]:.4f}')
        if self.log_layers:
            runner.logger.info('SparseTrainingHook: density per layer: '
                               + self._layer_densities())

    @staticmethod
    def _check_momentum_optimizers(runner, key: str) -> None:
        for opt in _optimizers(runner.optim_wrapper):
            d = opt.defaults
            if not ('betas' in d or d.get('momentum', 0) > 0):
                raise ConfigError(f"{key}.growth='momentum' needs an optimizer with a first "
                                  f'moment (Adam, AdamW, or SGD with momentum > 0), got '
                                  f'{type(opt).__name__}({d})')

    @staticmethod
    def _momentum(runner, p: nn.Parameter) -> Tensor:
        """(...) the optimizer's momentum of ``p``: ``m / (sqrt(v) + eps)`` for Adam(W), the
        momentum buffer for SGD."""
        for opt in _optimizers(runner.optim_wrapper):
            state = opt.state.get(p)
            if not state:
                continue
            if 'exp_avg' in state:
                return state['exp_avg'] / (state['exp_avg_sq'].sqrt() + opt.defaults['eps'])
            if state.get('momentum_buffer') is not None:
                return state['momentum_buffer']
        raise RuntimeError(f"SparseTrainingHook: growth='momentum' found no optimizer moment "
                           f'for a masked weight of shape {tuple(p.shape)}')

    def stats(self) -> dict:
        """Realised overall density and exploration ratio (fraction ever active)."""
        total = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        fired = sum(int(m.sum()) for m in self.fired.values())
        return dict(density=kept / max(total, 1), exploration=fired / max(total, 1))

    def layer_densities(self) -> Dict[str, float]:
        """Realised density of each masked tensor."""
        return {n: float(m.float().mean()) for n, m in self.masks.items()}

    def _layer_densities(self) -> str:
        return ', '.join(f'{_short(n)} {d:.3f}' for n, d in self.layer_densities().items())


@HOOKS.register_module()
class StructuredSparseTrainingHook(_DSTHook):
    """Structured dynamic sparse training (S²ViTE): attention heads and MLP neurons.

    Needs a backbone whose attention layers record head scores,
    :class:`~mmsparse.models.SViTEVisionTransformer` (``model.backbone.type=
    'mmsparse.SViTEVisionTransformer'``).

    Masks per layer: ``int(H * head_density)`` heads (rows of Q, K and V in ``qkv.weight``) and
    ``int(F * mlp_density)`` MLP neurons (``fc1`` rows and ``fc2`` columns), drawn at random.
    Biases, ``proj``, the patch embedding and the head stay dense, as in the original: a removed
    head therefore still adds the constant ``proj(attention @ b_v) = W_proj[:, h] b_v``, which
    compaction folds into ``proj.bias`` (exact, see :mod:`mmsparse.compaction.svite`).

    Update (every ``update_interval`` iterations, same trigger and death-rate schedule as
    :class:`SparseTrainingHook`), per layer, with ``n = ceil(rate * active)``:
    heads: drop the n active heads of smallest Taylor score ``mean_b |sum dL/dO * O|``, enable
    the n inactive heads of largest gradient L1 ``mean_b sum |dL/dO|`` (scores averaged over the
    last ``score_iters`` iterations and over ranks); neurons: drop the n active neurons of
    smallest ``|fc1 row|_1 + |fc2 col|_1``, enable the n inactive ones of largest gradient L1.

    Args:
        head_density: fraction of heads kept per layer, in (0, 1] (``--atten_density``).
        mlp_density: fraction of MLP neurons kept per layer, in (0, 1] (``--other_density``).
        score_iters: iterations whose head scores are averaged for an update (original: 1).
        neuron_growth: 'gradient' (the original: gradient L1 of the fc1 row + fc2 column) or
            'random'. With 'gradient' a neuron that has been inactive for a while has a zero
            gradient (its fc1 row and fc2 column are both zero), so the neurons just pruned,
            whose gradients are not zero, are the ones regrown and the MLP masks barely move;
            'random' regrows uniformly among the inactive neurons (exploration).
        others: as :class:`SparseTrainingHook`.
    """
    KIND = 'structured'

    def __init__(self, head_density: float = 0.7, mlp_density: float = 0.6,
                 update_interval: int = 15000, stop_ratio: float = 0.8, death_rate: float = 0.5,
                 death_rate_min: float = 0.005, death_rate_decay: str = 'cosine',
                 score_iters: int = 1, neuron_growth: str = 'gradient',
                 seed: Optional[int] = None, sync: str = 'broadcast',
                 verify_sync: bool = True, log_layers: bool = True,
                 schedule_iters: Optional[int] = None) -> None:
        super().__init__(update_interval, stop_ratio, death_rate, death_rate_min,
                         death_rate_decay, seed, sync, verify_sync, schedule_iters)
        key = self._key
        _check_number(f'{key}.head_density', head_density, 0.0, 1.0,
                      allowed=' (fraction of attention heads kept per layer)')
        _check_number(f'{key}.mlp_density', mlp_density, 0.0, 1.0,
                      allowed=' (fraction of MLP hidden neurons kept per layer)')
        if isinstance(score_iters, bool) or not isinstance(score_iters, int) \
                or not 1 <= score_iters <= update_interval:
            raise ConfigError(f'{key}.score_iters must be an int in [1, update_interval='
                              f'{update_interval}], got {score_iters!r}')
        if neuron_growth not in ('gradient', 'random'):
            raise ConfigError(f"{key}.neuron_growth must be 'gradient' or 'random', got "
                              f'{neuron_growth!r}')
        self.neuron_growth = neuron_growth
        self.head_density = float(head_density)
        self.mlp_density = float(mlp_density)
        self.score_iters = score_iters
        self.log_layers = log_layers
        self.blocks: List[nn.Module] = []
        self._factors: list = []
        self.head_masks: List[Tensor] = []
        self.neuron_masks: List[Tensor] = []

    # ---- model parts ------------------------------------------------------------------------
    def resolve_blocks(self, model: nn.Module) -> List[nn.Module]:
        """The encoder layers whose heads and neurons are masked.

        Raises:
            ConfigError: if the backbone's attention does not record head scores, or a
                density keeps no head / neuron.
        """
        from mmsparse.models.compact_vit import CompactAttention
        backbone = getattr(model, 'backbone', None)
        layers = getattr(backbone, 'layers', None)
        blocks = [b for b in (layers or []) if isinstance(getattr(b, 'attn', None),
                                                          CompactAttention)]
        if not blocks:
            raise ConfigError(f"{self._key} needs model.backbone.type="
                              f"'mmsparse.SViTEVisionTransformer' (its attention records the "
                              f"head scores), got {type(backbone).__name__}")
        for b in blocks:
            h, f = b.attn.num_heads, b.ffn.layers[0][0].out_features
            if int(h * self.head_density) < 1:
                raise ConfigError(f'{self._key}.head_density={self.head_density} keeps '
                                  f'int({h} * {self.head_density}) = 0 of {h} heads; use '
                                  f'>= {1 / h:.3g}')
            if int(f * self.mlp_density) < 1:
                raise ConfigError(f'{self._key}.mlp_density={self.mlp_density} keeps no MLP '
                                  f'neuron of {f}')
        return blocks

    @staticmethod
    def _fc(block) -> tuple:
        return block.ffn.layers[0][0], block.ffn.layers[1]

    def _grad_params(self) -> Dict[str, nn.Parameter]:
        out = {}
        for i, b in enumerate(self.blocks):
            fc1, fc2 = self._fc(b)
            out[f'{i}.fc1'], out[f'{i}.fc2'] = fc1.weight, fc2.weight
        return out

    def _mask_list(self) -> List[Tensor]:
        return list(self.head_masks) + list(self.neuron_masks)

    def _set_mask_list(self, masks: List[Tensor]) -> None:
        n = len(self.head_masks)
        self.head_masks, self.neuron_masks = list(masks[:n]), list(masks[n:])
        self._refresh_factors()

    def _refresh_factors(self) -> None:
        """Per block, 0/1 factors of the weights' dtype: qkv rows (3C', 1), fc1 rows (F, 1),
        fc2 columns (1, F)."""
        self._factors = []
        for b, hm, nm in zip(self.blocks, self.head_masks, self.neuron_masks):
            dt = b.attn.qkv.weight.dtype
            rows = dst.head_rows_mask(hm, b.attn.head_dims).to(dt).unsqueeze(1)
            self._factors.append((rows, nm.to(dt).unsqueeze(1), nm.to(dt).unsqueeze(0)))

    # ---- hook points ------------------------------------------------------------------------
    def before_run(self, runner) -> None:
        self.blocks = self.resolve_blocks(unwrap_model(runner.model))

    def before_train(self, runner) -> None:
        self.blocks = self.resolve_blocks(unwrap_model(runner.model))
        self.generator = self._make_generator(runner)
        if self._restored is not None:
            self._restore(self._restored)
            what = f'resume (update {self.num_updates})'
        else:
            self.head_masks, self.neuron_masks = [], []
            for b in self.blocks:
                dev = b.attn.qkv.weight.device
                self.head_masks.append(dst.init_structured_mask(
                    b.attn.num_heads, self.head_density, self.generator).to(dev))
                self.neuron_masks.append(dst.init_structured_mask(
                    self._fc(b)[0].out_features, self.mlp_density, self.generator).to(dev))
            self.num_updates, self.history = 0, []
            what = 'init'
        self._restored = None
        self._refresh_factors()
        self._synchronise(runner, what)
        self.apply_masks()
        self._register_capture(runner)
        runner.logger.info(
            f'StructuredSparseTrainingHook: heads {self.head_density}, MLP {self.mlp_density} '
            f'after {what}: {self._layer_summary()}; updates every {self.update_interval} '
            f'iterations until iteration {math.ceil(self.stop_ratio * self.total_iters(runner))}')
        self._log_scalars(runner, self.stats())

    def _restore(self, state: dict) -> None:
        heads = [m.to(torch.bool) for m in state['head_masks']]
        neurons = [m.to(torch.bool) for m in state['neuron_masks']]
        if len(heads) != len(self.blocks) or any(
                h.numel() != b.attn.num_heads or n.numel() != self._fc(b)[0].out_features
                for h, n, b in zip(heads, neurons, self.blocks)):
            raise ConfigError(f'{self._key}: the checkpoint\'s head / neuron masks do not fit '
                              f'this model\'s layers')
        self.head_masks = [h.to(b.attn.qkv.weight.device) for h, b in zip(heads, self.blocks)]
        self.neuron_masks = [n.to(b.attn.qkv.weight.device)
                             for n, b in zip(neurons, self.blocks)]
        self.generator.set_state(state['generator'])
        self.num_updates = int(state['num_updates'])
        self.history = list(state.get('history', []))
        self._pending = bool(state.get('pending', False))

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if not self.head_masks:
            return
        checkpoint[CHECKPOINT_KEY] = dict(
            kind=self.KIND, version=1, head_masks=[m.cpu() for m in self.head_masks],
            neuron_masks=[m.cpu() for m in self.neuron_masks],
            head_dims=[b.attn.head_dims for b in self.blocks],
            head_density=self.head_density, mlp_density=self.mlp_density,
            generator=self.generator.get_state(), num_updates=self.num_updates,
            history=list(self.history), pending=self._pending)

    def _before_step(self, runner, step: int) -> None:
        # record head scores in the score_iters iterations that end at an update
        nxt = step + (-step) % self.update_interval
        record = self._pending or (self.is_update_step(nxt, self.total_iters(runner))
                                   and nxt - step < self.score_iters)
        for b in self.blocks:
            b.attn.record_head_scores = record

    def _after_train(self, runner) -> None:
        for b in self.blocks:
            b.attn.record_head_scores = False
            b.attn.reset_head_scores()

    # ---- masks ----------------------------------------------------------------------------
    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the qkv rows of removed heads and the fc1 rows / fc2 columns of removed
        neurons."""
        for b, (rows, fc1_rows, fc2_cols) in zip(self.blocks, self._factors):
            b.attn.qkv.weight.mul_(rows)
            fc1, fc2 = self._fc(b)
            fc1.weight.mul_(fc1_rows)
            fc2.weight.mul_(fc2_cols)

    @torch.no_grad()
    def update_masks(self, runner, step: int) -> None:
        rate = self.death_rate_at(step, self.total_iters(runner))
        heads_changed = neurons_changed = 0
        skipped_heads = False
        for i, b in enumerate(self.blocks):
            scores = b.attn.head_scores()
            if scores is None:
                skipped_heads = True
            else:
                taylor, gnorm = (s.clone() for s in scores)
                all_reduce(taylor, op='mean')
                all_reduce(gnorm, op='mean')
                new, n = dst.structured_prune_regrow(self.head_masks[i], taylor.to(
                    self.head_masks[i].device), gnorm.to(self.head_masks[i].device), rate)
                heads_changed += int((new & ~self.head_masks[i]).sum())
                self.head_masks[i] = new
            b.attn.reset_head_scores()
            fc1, fc2 = self._fc(b)
            prune = dst.neuron_l1_scores(fc1.weight, fc2.weight)
            if self.neuron_growth == 'random':
                grow = torch.rand(prune.numel(), generator=self.generator).to(prune.device)
            else:
                grow = dst.neuron_l1_scores(self._grads[f'{i}.fc1'], self._grads[f'{i}.fc2'])
            new, n = dst.structured_prune_regrow(self.neuron_masks[i], prune, grow, rate)
            neurons_changed += int((new & ~self.neuron_masks[i]).sum())
            self.neuron_masks[i] = new
        self._refresh_factors()
        if skipped_heads:
            runner.logger.warning('StructuredSparseTrainingHook: no head scores were recorded '
                                  f'before update {self.num_updates + 1}: heads unchanged')
        self.num_updates += 1
        self._synchronise(runner, f'update {self.num_updates}')
        self.apply_masks()
        record = dict(iter=step, death_rate=rate, new_heads=heads_changed,
                      new_neurons=neurons_changed, **self.stats())
        self.history.append(record)
        self._log_scalars(runner, dict(record, iter=None))
        runner.logger.info(
            f'StructuredSparseTrainingHook: update {self.num_updates} at iteration {step}: '
            f'death rate {rate:.4f}, {heads_changed} heads and {neurons_changed} neurons '
            f'swapped; {self._layer_summary()}')

    def stats(self) -> dict:
        h = sum(int(m.sum()) for m in self.head_masks)
        n = sum(int(m.sum()) for m in self.neuron_masks)
        return dict(head_density=h / max(sum(m.numel() for m in self.head_masks), 1),
                    mlp_density=n / max(sum(m.numel() for m in self.neuron_masks), 1))

    def _layer_summary(self) -> str:
        return 'heads ' + ' '.join(''.join('1' if v else '0' for v in m.tolist())
                                   for m in self.head_masks) + \
            ', neurons ' + ' '.join(str(int(m.sum())) for m in self.neuron_masks)


@HOOKS.register_module()
class TokenSelectorTemperatureHook(Hook):
    """Anneal the Gumbel temperature (and noise) of SViTE+'s token selectors over training.

    Before every training iteration, with ``t = iter / max_iters``:
    ``tau = start + (end - start) * t`` (the original's ``get_tau`` after its "fix-tau" commit:
    10 -> 0.1) and ``noise_scale = noise_start + (noise_end - noise_start) * min(t / noise_until,
    1)``. The original
    keeps the noise at 1 (``noise_end=1.0`` reproduces it) and evaluates with noise; mmsparse
    infers with a deterministic top-k, so by default the noise fades to 0 and the last
    training iterations select exactly as inference does. The position is the Runner's
    iteration, so a resumed run continues both schedules.

    Args:
        start: temperature at iteration 0 (> 0).
        end: temperature at the last iteration (> 0).
        noise_start: Gumbel noise scale at iteration 0 (>= 0).
        noise_end: Gumbel noise scale reached at ``noise_until`` (>= 0).
        noise_until: fraction of training (0, 1] after which the noise stays at ``noise_end``
            (e.g. 0.5: the second half trains with the selection inference uses).
    """

    priority = 'NORMAL'

    def __init__(self, start: float = 10.0, end: float = 0.1, noise_start: float = 1.0,
                 noise_end: float = 0.0, noise_until: float = 1.0) -> None:
        for name, v in (('start', start), ('end', end)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f'custom_hooks.TokenSelectorTemperatureHook.{name} must be a '
                                  f'temperature > 0, got {v!r}')
        for name, v in (('noise_start', noise_start), ('noise_end', noise_end)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ConfigError(f'custom_hooks.TokenSelectorTemperatureHook.{name} must be a '
                                  f'noise scale >= 0, got {v!r}')
        _check_number('custom_hooks.TokenSelectorTemperatureHook.noise_until', noise_until, 0.0,
                      1.0, allowed=' (fraction of training)')
        self.start, self.end = float(start), float(end)
        self.noise_start, self.noise_end = float(noise_start), float(noise_end)
        self.noise_until = float(noise_until)
        self.selectors: list = []

    def before_run(self, runner) -> None:
        from mmsparse.models.svite import TokenSelector
        self.selectors = [m for m in unwrap_model(runner.model).modules()
                          if isinstance(m, TokenSelector)]
        if not self.selectors:
            raise ConfigError("custom_hooks.TokenSelectorTemperatureHook: the model has no token "
                              "selector; set model.backbone.type='mmsparse.SViTEVisionTransformer'"
                              " and model.backbone.token_keep")

    def tau_at(self, it: int, max_iters: int) -> float:
        return self.start + (self.end - self.start) * min(it, max_iters) / max(max_iters, 1)

    def noise_at(self, it: int, max_iters: int) -> float:
        t = min(it / max(max_iters, 1) / self.noise_until, 1.0)
        return self.noise_start + (self.noise_end - self.noise_start) * t

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        tau = self.tau_at(runner.iter, runner.max_iters)
        noise = self.noise_at(runner.iter, runner.max_iters)
        for s in self.selectors:
            s.tau, s.noise_scale = tau, noise
        runner.message_hub.update_scalar('train/token_tau', tau)
        runner.message_hub.update_scalar('train/token_noise', noise)
