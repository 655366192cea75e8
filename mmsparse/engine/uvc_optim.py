"""UVC's optimizers: the ``OptimWrapperDict`` of a primal-dual step, and a preset-value schedule.

:class:`UVCOptimWrapperConstructor` builds one optimizer wrapper per variable kind of
:class:`mmsparse.models.UVCClassifier` (search mode): ``weights`` (the network, AdamW),
``arch`` (``arch_heads``, ``arch_neurons``, ``arch_dims``; plain SGD), ``gates`` (``block_gates``;
SGD with momentum), ``duals`` (``dual_heads``, ``dual_neurons``, ``dual_dims``; SGD used for
ascent) and ``flops_dual`` (``dual_flops``; SGD used for ascent). Every parameter is in exactly
one of them, except the block gates with the model's ``gate_step='original'``: they are in
``weights`` too (the original's AdamW covers every model parameter). Each entry is an ordinary
optim-wrapper config (``type``, ``optimizer``, ``clip_grad``, ``paramwise_cfg`` with
``custom_keys`` matched against the full parameter names, e.g.
``'backbone.arch_neurons': dict(lr_mult=10.)``); entries left out take the original recipe's
defaults (:data:`UVC_DEFAULT_OPTIMIZERS`).

Schedules are per optimizer: ``param_scheduler = dict(weights=[...], arch=[], gates=[],
duals=[], flops_dual=[dict(type='PresetLR', milestones=[0, 6, 12], values=[1., 5., 9.])])``.

:class:`PresetLR` sets the learning rate to given *values* at given epochs. It is what the
original's ``--zlr_schedule_list`` meant to do to the budget dual's step size (the original's
``PresetLRScheduler`` writes a ``'zlr'`` key that its dual optimizer does not read, so there the
step size never changes); here it is applied for real.
"""
import copy
from typing import Dict, List, Optional, Sequence

from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapperDict
from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import INF, _ParamScheduler
from torch import nn

from mmsparse.errors import ConfigError
from mmsparse.models.utils import unwrap_model
from mmsparse.models.uvc_primal_dual import UVC_OPTIMIZERS
from mmsparse.registry import OPTIM_WRAPPER_CONSTRUCTORS, PARAM_SCHEDULERS
from mmsparse.validation import Keys

__all__ = ['UVCOptimWrapperConstructor', 'PresetParamScheduler', 'PresetLR',
           'UVC_DEFAULT_OPTIMIZERS']

# The original recipe (run_uvc_train.sh): slr = rlr = 0.02, glr 0.1 (momentum 0.9, wd 1e-4),
# ylr = plr = 1e-4, zlr = 1 (README's zlr_schedule_list "1,5,9,13,17").
UVC_DEFAULT_OPTIMIZERS: Dict[str, dict] = dict(
    arch=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.02)),
    gates=dict(type='OptimWrapper',
               optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4)),
    duals=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=1e-4)),
    flops_dual=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=1.0)),
)


class _SubsetConstructor(DefaultOptimWrapperConstructor):
    """MMEngine's default constructor restricted to (or excluding) a set of parameters."""

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict],
                 params: Sequence[nn.Parameter], include: bool,
                 uvc_params: Sequence[nn.Parameter] = ()) -> None:
        # a non-empty paramwise_cfg makes the default constructor go through add_params
        paramwise_cfg = dict(paramwise_cfg or {})
        paramwise_cfg.setdefault('custom_keys', {})
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        self.ids = {id(p) for p in params}
        self.include = include
        self.uvc_ids = {id(p) for p in uvc_params} | self.ids

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   is_dcn_module=None) -> None:
        if prefix != '':
            return super().add_params(params, module, prefix, is_dcn_module)
        # UVC's variables have requires_grad=False (no task gradient; their gradients are set
        # by the primal-dual step), which the default constructor would skip: include them
        # (all of them, so the default constructor does not warn about each one it skips)
        frozen = [p for p in module.parameters()
                  if id(p) in self.uvc_ids and not p.requires_grad]
        for p in frozen:
            p.requires_grad_(True)
        try:
            super().add_params(params, module, prefix, is_dcn_module)
        finally:
            for p in frozen:
                p.requires_grad_(False)
        # keep the wanted parameters only (and, for the weights, only trainable ones)
        params[:] = [g for g in params if (id(g['params'][0]) in self.ids) == self.include]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class UVCOptimWrapperConstructor:
    """Build UVC's ``OptimWrapperDict`` (see the module docstring).

    Config::

        optim_wrapper = dict(
            constructor='UVCOptimWrapperConstructor',
            weights=dict(optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
                         clip_grad=dict(max_norm=1.0), paramwise_cfg=dict(...)),
            arch=dict(optimizer=dict(type='SGD', lr=0.02)),
            gates=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4)),
            duals=dict(optimizer=dict(type='SGD', lr=1e-4)),
            flops_dual=dict(optimizer=dict(type='SGD', lr=1.0)))

    Mixed precision (``tools/train.py --amp``) is for ``weights`` only
    (``weights=dict(type='AmpOptimWrapper', ...)``): the task loss is the only loss scaled; the
    other wrappers step gradients that the primal-dual step computes in float32.

    Args:
        optim_wrapper_cfg: the config above without ``constructor`` (and without a top-level
            ``paramwise_cfg``, which MMEngine passes separately and which is applied to
            ``weights`` when ``weights`` has none).
        paramwise_cfg: see above.
    """
    KEYS = UVC_OPTIMIZERS
    # the wrappers whose loss is scaled under --amp (read by mmsparse.utils.cli.enable_amp)
    AMP_WRAPPERS = ('weights', )

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        cfg = dict(optim_wrapper_cfg)
        unknown = sorted(set(cfg) - set(self.KEYS))
        if unknown:
            raise ConfigError(f'optim_wrapper: UVCOptimWrapperConstructor takes the keys '
                              f'{list(self.KEYS)}, got unknown {unknown} (a single-optimizer '
                              f"key such as 'optimizer' or 'clip_grad' belongs inside "
                              f"'weights'; inherited ones need _delete_=True)")
        if 'weights' not in cfg:
            raise ConfigError("optim_wrapper.weights is required (the network's optimizer, "
                              "e.g. dict(optimizer=dict(type='AdamW', lr=1e-4, "
                              "weight_decay=0.05)))")
        self.cfgs = {}
        for key in self.KEYS:
            if key == 'weights':
                sub = copy.deepcopy(dict(cfg['weights']))
            else:
                sub = copy.deepcopy(dict(cfg.get(key) or UVC_DEFAULT_OPTIMIZERS[key]))
            if 'optimizer' not in sub:
                raise ConfigError(f'optim_wrapper.{key} needs an optimizer config')
            if key not in self.AMP_WRAPPERS and 'Amp' in str(sub.get('type', '')):
                raise ConfigError(f"optim_wrapper.{key}.type: {sub['type']} scales a loss, but "
                                  f'the {key} step has none (its gradients come from the '
                                  f"primal-dual step); use 'OptimWrapper' (mixed precision is "
                                  f'for {list(self.AMP_WRAPPERS)})')
            sub.setdefault('type', 'OptimWrapper')
            self.cfgs[key] = sub
        if paramwise_cfg and 'paramwise_cfg' not in self.cfgs['weights']:
            self.cfgs['weights']['paramwise_cfg'] = paramwise_cfg

    def __call__(self, model: nn.Module) -> OptimWrapperDict:
        from mmsparse.models.uvc_classifier import UVCClassifier
        module = unwrap_model(model)
        if not isinstance(module, UVCClassifier):
            raise ConfigError(f'UVCOptimWrapperConstructor builds the optimizers of a '
                              f'mmsparse.UVCClassifier, got {type(module).__name__}')
        if module.uvc_backbone.mode != 'search':
            raise ConfigError("UVCOptimWrapperConstructor is for stage 1 (backbone.mode="
                              "'search'); a fixed architecture trains with one optimizer")
        groups = module.arch_parameters()
        others = [p for key in ('arch', 'gates', 'duals', 'flops_dual') for p in groups[key]]
        shared = {id(p) for p in module.shared_parameters()}
        if shared and self.cfgs['weights'].get('accumulative_counts', 1) != 1:
            # the gate step takes the weights' task gradient of each update; accumulated over
            # several iterations it would see only the last one's (the rest are zeroed)
            raise ConfigError("model.gate_step='original' puts the block gates in the weights' "
                              "optimizer, which needs optim_wrapper.weights."
                              "accumulative_counts=1, got "
                              f"{self.cfgs['weights']['accumulative_counts']}")
        not_weights = [p for p in others if id(p) not in shared]
        wrappers = {}
        for key, sub in self.cfgs.items():
            sub = copy.deepcopy(sub)
            paramwise = sub.pop('paramwise_cfg', None)
            if key == 'weights':
                ctor = _SubsetConstructor(sub, paramwise, not_weights, False, others)
            else:
                if not groups[key]:
                    continue  # no block gating: no gates optimizer
                ctor = _SubsetConstructor(sub, paramwise, groups[key], True, others)
            wrappers[key] = ctor(module)
        return OptimWrapperDict(**wrappers)


@PARAM_SCHEDULERS.register_module()
class PresetParamScheduler(_ParamScheduler):
    """Set a parameter of every param group to preset *values* at preset steps.

    At step ``milestones[i]`` (epochs when ``by_epoch``) the parameter becomes ``values[i]``;
    between milestones it is left alone.

    Args:
        optimizer: the wrapped optimizer.
        param_name: e.g. 'lr'.
        milestones: increasing steps; values: one value per milestone.
    """

    def __init__(self, optimizer, param_name: str, milestones: Sequence[int],
                 values: Sequence[float], begin: int = 0, end: int = INF,
                 last_step: int = -1, by_epoch: bool = True, verbose: bool = False) -> None:
        keys = Keys(f'param_scheduler[{type(self).__name__}]')
        milestones = keys.numbers('milestones', list(milestones), low=0, integer=True)
        values = [float(v) for v in keys.numbers('values', list(values), length=len(milestones))]
        keys.require('milestones', all(b > a for a, b in zip(milestones, milestones[1:])),
                     f'must be increasing, got {milestones}')
        self.presets = dict(zip(milestones, values))
        super().__init__(optimizer, param_name=param_name, begin=begin, end=end,
                         last_step=last_step, by_epoch=by_epoch, verbose=verbose)

    def _get_value(self) -> List[float]:
        if self.last_step in self.presets:
            return [self.presets[self.last_step] for _ in self.optimizer.param_groups]
        return [group[self.param_name] for group in self.optimizer.param_groups]


@PARAM_SCHEDULERS.register_module()
class PresetLR(LRSchedulerMixin, PresetParamScheduler):
    """:class:`PresetParamScheduler` of the learning rate (UVC's ``zlr`` schedule)."""
