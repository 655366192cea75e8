"""SViTE's unstructured dynamic sparse training: :class:`SparseTrainingHook`.

Masks of the patch-embed conv, every qkv / proj / fc1 / fc2 and the classifier head (regexes,
configurable); init ``fixed_ERK`` / ``ERK`` / ``uniform`` at ``density``; masks applied after
every iteration's optimizer step; every ``update_interval`` iterations while
``iter < stop_ratio * max_iters``: magnitude death at a cosine-decayed rate, then gradient
(RigL), momentum or random growth of as many weights (:func:`~mmsparse.ops.dst.
magnitude_prune_regrow`). Schedule, gradient capture, checkpoint and rank sync: :mod:`.dst_hook`.

Deliberate differences from the original: exact counts (top-k) instead of thresholds in every
prune/grow rule (ties cannot change a layer's density); random growth picks exactly ``n``
entries (the original draws Bernoulli(n / #zeros)); ``ERK`` (not in the original) is the ERK
density with exactly ``round(d * n)`` weights per layer, ``fixed_ERK`` / ``uniform`` are the
original's Bernoulli draws; masks are broadcast only when they change (the original broadcasts
every mask every step).
"""
import re
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from mmsparse.errors import ConfigError
from mmsparse.models.utils import unwrap_model
from mmsparse.ops import dst
from mmsparse.registry import HOOKS
from .dst_hook import DSTHook, optimizers_of
from .mask_state import UnstructuredMaskState

__all__ = ['SparseTrainingHook', 'DEFAULT_LAYERS', 'optimizer_momentum',
           'check_momentum_optimizers']

# parameter names (regexes, full match) of an mmpretrain ImageClassifier + VisionTransformer
DEFAULT_LAYERS = (
    r'backbone\.patch_embed\.projection\.weight',
    r'backbone\.layers\.\d+\.attn\.qkv\.weight',
    r'backbone\.layers\.\d+\.attn\.proj\.weight',
    r'backbone\.layers\.\d+\.ffn\.layers\.0\.0\.weight',
    r'backbone\.layers\.\d+\.ffn\.layers\.1\.weight',
    r'head\.layers\.head\.weight',
)


def optimizer_momentum(optimizers: Sequence[torch.optim.Optimizer], p: nn.Parameter) -> Tensor:
    """(...) the optimizer's momentum of ``p``: ``m / (sqrt(v) + eps)`` for Adam(W), the
    momentum buffer for SGD.

    Raises:
        RuntimeError: if no optimizer holds a moment of ``p``.
    """
    for opt in optimizers:
        state = opt.state.get(p)
        if not state:
            continue
        if 'exp_avg' in state:
            return state['exp_avg'] / (state['exp_avg_sq'].sqrt() + opt.defaults['eps'])
        if state.get('momentum_buffer') is not None:
            return state['momentum_buffer']
    raise RuntimeError(f"SparseTrainingHook: growth='momentum' found no optimizer moment for "
                       f'a masked weight of shape {tuple(p.shape)}')


def check_momentum_optimizers(optimizers: Sequence[torch.optim.Optimizer], key: str) -> None:
    """Raise unless every optimizer keeps a first moment (what momentum growth ranks by).

    Raises:
        ConfigError: naming ``key`` (the hook's ``growth``).
    """
    for opt in optimizers:
        d = opt.defaults
        if not ('betas' in d or d.get('momentum', 0) > 0):
            raise ConfigError(f"{key}='momentum' needs an optimizer with a first moment (Adam, "
                              f'AdamW, or SGD with momentum > 0), got {type(opt).__name__}({d})')


def _short(name: str) -> str:
    return name.replace('backbone.', '').replace('.weight', '')


@HOOKS.register_module()
class SparseTrainingHook(DSTHook):
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
        erk_power_scale: exponent of the ERK raw score (1 = ERK), in [0, 10].
        seed: seed of the mask draws (default: the Runner's seed, the same on every rank).
        sync: 'broadcast' (rank 0's masks are broadcast after the init and every update) or
            'none' (every rank computes its own, identical masks).
        verify_sync: all-gather a fingerprint of the masks after the init and every update and
            raise if the ranks disagree.
        log_layers: log the realised density of every layer at the init and every update.
        schedule_iters: length of the schedule (death-rate decay, ``stop_ratio``); default the
            run's ``max_iters``.
    """
    STATE = UnstructuredMaskState
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
        keys = self.keys
        self.density = float(keys.number('density', density, 0.0, 1.0, low_open=True))
        self.sparse_init = keys.choice('sparse_init', sparse_init, self.INITS)
        self.init_by = keys.choice('init_by', init_by, self.INIT_BY)
        self.growth = keys.choice('growth', growth, self.GROWTHS)
        keys.require('layers', not isinstance(layers, str) and isinstance(layers, Sequence)
                      and bool(layers), f'must be a non-empty list of regexes of parameter '
                      f'names, got {layers!r}')
        self.patterns = []
        for p in layers:
            try:
                self.patterns.append(re.compile(p))
            except (re.error, TypeError) as e:
                raise ConfigError(f'{keys.key("layers")}: {p!r} is not a valid regex '
                                  f'({e})') from None
        self.erk_power_scale = float(keys.number('erk_power_scale', erk_power_scale, 0.0,
                                                 10.0, low_open=True))
        self.log_layers = keys.boolean('log_layers', log_layers)
        self.params: Dict[str, nn.Parameter] = {}
        self._factors: List[Tensor] = []
        self._weights: List[Tensor] = []

    # ---- the run's masks, as attributes ---------------------------------------------------
    @property
    def masks(self) -> Dict[str, Tensor]:
        """Parameter name -> bool mask (True: the weight exists)."""
        return self.state.masks

    @property
    def fired(self) -> Dict[str, Tensor]:
        """Parameter name -> bool mask of the entries ever active."""
        return self.state.fired

    @property
    def densities(self) -> Dict[str, float]:
        """Parameter name -> target density of the layer."""
        return self.state.densities

    # ---- layers ---------------------------------------------------------------------------
    def resolve_layers(self, model: nn.Module) -> Dict[str, nn.Parameter]:
        """The masked parameters of ``model`` (unwrapped), by name, in model order.

        Raises:
            ConfigError: if a pattern matches no parameter, or matches one with < 2 dims.
        """
        named = dict(model.named_parameters())
        key = self.keys.key('layers')
        chosen = set()
        for pat in self.patterns:
            hits = [n for n in named if pat.fullmatch(n)]
            if not hits:
                candidates = [n for n, p in named.items() if p.dim() >= 2]
                shown = ', '.join(candidates[:8]) + (f', ... ({len(candidates) - 8} more)'
                                                     if len(candidates) > 8 else '')
                raise ConfigError(f'{key}: the pattern {pat.pattern!r} matches no parameter of '
                                  f'the model; parameters that can be masked (>= 2 dims): '
                                  f'{shown}')
            for n in hits:
                if named[n].dim() < 2:
                    raise ConfigError(f'{key}: {pat.pattern!r} matches {n!r}, which has '
                                      f'{named[n].dim()} dim(s); only weights with >= 2 dims '
                                      f'(linear, conv) can be masked')
                chosen.add(n)
        return {n: p for n, p in named.items() if n in chosen}

    def _grad_params(self) -> Dict[str, nn.Parameter]:
        return self.params

    def _refresh_factors(self) -> None:
        """The masks as 0/1 tensors of the weights' dtype: what :meth:`apply_masks`
        multiplies by (one fused multiply per step; a bool mask would be converted every
        time)."""
        self._factors = [self.masks[n].to(p.dtype) for n, p in self.params.items()]
        self._weights = list(self.params.values())

    # ---- hook points ----------------------------------------------------------------------
    def before_run(self, runner) -> None:
        self.params = self.resolve_layers(unwrap_model(runner.model))

    def before_train(self, runner) -> None:
        self.params = self.resolve_layers(unwrap_model(runner.model))
        if self.growth == 'momentum':
            check_momentum_optimizers(optimizers_of(runner.optim_wrapper),
                                      self.keys.key('growth'))
        restored = self._start_state(runner)
        shapes = {n: tuple(p.shape) for n, p in self.params.items()}
        if self.sparse_init == 'uniform':
            densities = dst.uniform_densities(shapes, self.density)
        else:
            densities = dst.erk_densities(shapes, self.density, self.erk_power_scale)
        self.state.densities, self.state.density = densities, self.density
        if restored is not None:
            self._adopt_restored()
            what = f'resume (update {self.num_updates})'
        else:
            self._init_masks()
            what = f'init ({self.sparse_init}, {self.init_by})'
        self._synchronise(runner, what)
        self.apply_masks()
        self._register_capture(runner)
        stats = self.stats()
        runner.logger.info(f'SparseTrainingHook: {len(self.params)} masked tensors, target '
                           f'density {self.density}, realised {stats["density"]:.4f} after '
                           f'{what}; updates every {self.update_interval} iterations until '
                           f'iteration {self.last_update_iter(runner)}, growth {self.growth}')
        if self.log_layers:
            runner.logger.info('SparseTrainingHook: density per layer: '
                               + self._layer_densities())
        self._log_scalars(runner, dict(density=stats['density'],
                                       exploration=stats['exploration']))

    def _init_masks(self) -> None:
        for n, p in self.params.items():
            d = self.densities[n]
            if self.init_by == 'magnitude':
                m = dst.magnitude_mask(p.detach(), d)
            else:
                m = dst.random_mask(p.shape, d, self.generator,
                                    exact=self.sparse_init == 'ERK').to(p.device)
            self.masks[n] = m
            self.fired[n] = m.clone()

    def _adopt_restored(self) -> None:
        """Check the restored masks against the model's layers; move them to its device."""
        key = self.keys.prefix
        names = list(self.masks)
        if names != list(self.params):
            missing = sorted(set(self.params) - set(names))
            extra = sorted(set(names) - set(self.params))
            raise ConfigError(f'{key}: the checkpoint\'s masks are for other layers (missing: '
                              f'{missing[:4]}, unexpected: {extra[:4]}); check '
                              f'{self.keys.key("layers")}')
        for n, p in self.params.items():
            shape = tuple(self.masks[n].shape)
            if shape != tuple(p.shape):
                raise ConfigError(f'{key}: the checkpoint\'s mask of {n} has shape {shape}, '
                                  f'the model\'s weight {tuple(p.shape)}')
            self.masks[n] = self.masks[n].to(p.device)
            self.fired[n] = self.fired[n].to(p.device)

    # ---- masks ----------------------------------------------------------------------------
    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the pruned weights (after the optimizer step)."""
        torch._foreach_mul_(self._weights, self._factors)

    def _grow_scores(self, runner, name: str, p: nn.Parameter) -> Optional[Tensor]:
        """What growth ranks the inactive entries of ``p`` by (None: random growth)."""
        if self.growth == 'gradient':
            return self._grads[name]
        if self.growth == 'momentum':
            return optimizer_momentum(optimizers_of(runner.optim_wrapper), p)
        return None

    @torch.no_grad()
    def update_masks(self, runner, step: int) -> None:
        """Magnitude death then gradient / momentum / random growth of as many weights, every
        layer."""
        rate = self.death_rate_at(step, self.total_iters(runner))
        pruned = regrown = changed = 0
        for n, p in self.params.items():
            old = self.masks[n]
            after_death, new = dst.magnitude_prune_regrow(
                p, old, rate, self._grow_scores(runner, n, p), self.generator)
            pruned += int(old.sum()) - int(after_death.sum())
            regrown += int(new.sum()) - int(after_death.sum())
            changed += int((new & ~old).sum())
            self.masks[n] = new
            self.fired[n] |= new
        stats = self._finish_update(runner, step, death_rate=rate, pruned=pruned,
                                    regrown=regrown, new_connections=changed)
        runner.logger.info(
            f'SparseTrainingHook: update {self.num_updates} at iteration {step}: death rate '
            f'{rate:.4f}, pruned {pruned}, regrown {regrown} ({changed} new connections), '
            f'density {stats["density"]:.4f}, exploration {stats["exploration"]:.4f}')
        if self.log_layers:
            runner.logger.info('SparseTrainingHook: density per layer: '
                               + self._layer_densities())

    # ---- what is logged -------------------------------------------------------------------
    def layer_densities(self) -> Dict[str, float]:
        """Realised density of each masked tensor."""
        return {n: float(m.float().mean()) for n, m in self.masks.items()}

    def _layer_densities(self) -> str:
        return ', '.join(f'{_short(n)} {d:.3f}' for n, d in self.layer_densities().items())
