"""UVC's primal-dual step (stage 1): proximal shrinkage, architecture, block gates and duals.

:class:`UVCPrimalDual` holds the step's settings and runs steps 2-6 of
:class:`~mmsparse.models.UVCClassifier`'s search-mode ``train_step`` (step 1, the task loss and
the ``weights`` step, is the classifier's; :func:`check_optim_wrapper` and
:func:`sync_task_gradients` are its checks and its gradient hand-over). It keeps no tensors:
the architecture variables live in the backbone, the dual variables and the gate-gradient
accumulator in the classifier (:class:`UVCDuals`), where their state-dict keys have always
been. One step:

2. proximal group shrinkage: the weights of the currently removed groups (proj columns of
   removed heads and of removed dims inside kept heads, fc2 columns of removed neurons) are
   divided by ``1 + 2 lr y`` (``lr`` = the weights' current lr, ``y`` the group's dual);
3. during the warm-up epochs: stop here (architecture, gates, duals frozen);
4. architecture gradients of ``sum y LeastSum(s, scores) + sum p LeastSum(r, scores) +
   z (FLOPs(s, r, gates) - budget)``, projected onto the box, clipped to an inf-norm of
   ``arch_grad_clip`` (per tensor, or heads + neurons jointly as the original's ``s``),
   ``arch`` SGD step, clamp to the box;
5. block gates: task gradient + ``z * gating_weight * dFLOPs/dg``, averaged over
   ``gating_interval`` steps (uniformly, or weighted by the position in the interval as the
   original does), then one ``gates`` step;
6. dual ascent ``y += lr LeastSum``, ``p += lr LeastSum``, ``z += lr (FLOPs - budget)``,
   projected onto ``>= 0``.

FLOPs here is the expected (soft) fraction: the blocks count with their noise-free keep
probability. The masks (``backbone.mask_*``) are refreshed after every step.

It lives in ``models/`` (not ``engine/``) because the classifier, a model, calls it from its
``train_step``, and the layers point down: engine -> models -> ops.
"""
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from mmengine.optim import OptimWrapperDict
from torch import Tensor, nn

from mmsparse.errors import ConfigError
from mmsparse.ops.uvc import (LEAST_SUM_SLOPES, UVCMasks, ViTCost, clip_inf_norm,
                              group_flops_fractions, keep_mask_lowest, least_sum, project_grad,
                              prox_factors, uvc_flops_fraction)
from mmsparse.validation import Keys
from .uvc_ddp import average_gradients

__all__ = ['UVC_OPTIMIZERS', 'GATE_STEPS', 'REMOVED_HEAD_DIMS', 'UVCDuals', 'UVCPrimalDual',
           'check_optim_wrapper', 'sync_task_gradients']

# the optimizers of a search-mode train_step: the keys of its OptimWrapperDict ('gates' only
# with block gating), built by mmsparse.engine.UVCOptimWrapperConstructor
UVC_OPTIMIZERS = ('weights', 'arch', 'gates', 'duals', 'flops_dual')
# how the block gates step (UVCPrimalDual's gate_step): 'uniform' (their own SGD on the uniform
# mean over the interval) or 'original' (position-weighted mean, and also in the weights' AdamW)
GATE_STEPS = ('uniform', 'original')
# whether the value dims of removed heads take part in the dims' proximal step, least sums and
# duals (UVCPrimalDual's removed_head_dims): 'excluded' or 'included' (the original)
REMOVED_HEAD_DIMS = ('excluded', 'included')
Scores = Tuple[Tensor, Tensor, Tensor]


class UVCDuals(NamedTuple):
    """The classifier's dual variables and gate-gradient accumulator (its state-dict keys).

    Attributes:
        heads: ``dual_heads`` (L,), y of the head least sums.
        neurons: ``dual_neurons`` (L,), y of the neuron least sums.
        dims: ``dual_dims`` (L, H), p of the value-dim least sums.
        flops: ``dual_flops`` (1,), z of the budget.
        gate_grad_sum: (L, 2) block-gate gradient summed over the current interval.
        gate_grad_count: () long, how many steps are in it.
    """
    heads: nn.Parameter
    neurons: nn.Parameter
    dims: nn.Parameter
    flops: nn.Parameter
    gate_grad_sum: Tensor
    gate_grad_count: Tensor


def check_optim_wrapper(optim_wrapper, gating: bool) -> None:
    """Raise a ConfigError unless ``optim_wrapper`` holds every optimizer the step needs."""
    if not isinstance(optim_wrapper, OptimWrapperDict):
        raise ConfigError('optim_wrapper: UVC stage 1 (backbone.mode="search") needs '
                          "optim_wrapper=dict(constructor='UVCOptimWrapperConstructor', ...) "
                          f'(an OptimWrapperDict), got {type(optim_wrapper).__name__}')
    need = [k for k in UVC_OPTIMIZERS if k != 'gates' or gating]
    missing = [k for k in need if k not in optim_wrapper]
    if missing:
        raise ConfigError(f'optim_wrapper: missing optimizers {missing}; UVC stage 1 needs '
                          f'{need}')


def sync_task_gradients(backbone: nn.Module, weights_wrapper) -> None:
    """After the task backward (step 1), before the ``weights`` step.

    Mixed precision (an ``AmpOptimWrapper`` for ``weights``): the backward of the scaled
    loss gave the block gates a scaled task gradient, which the weights' scaler does not
    unscale (the gates are not in its optimizer): divide it by the scale; drop a non-finite
    one (the scaler skips that step for the weights too). Multi-process: average the task
    gradients of the weights and the gates (:func:`~mmsparse.models.uvc_ddp.
    average_gradients`).
    """
    gates = backbone.block_gates if backbone.block_gating is not None else None
    params = [p for g in weights_wrapper.optimizer.param_groups for p in g['params']]
    if gates is not None and any(p is gates for p in params):
        gates = None  # gate_step='original': the gates are the weights' (unscaled, averaged)
    scaler = getattr(weights_wrapper, 'loss_scaler', None)
    if scaler is not None and gates is not None and gates.grad is not None:
        grad = gates.grad / scaler.get_scale()  # get_scale() is 1.0 for a disabled scaler
        gates.grad = grad if bool(torch.isfinite(grad).all()) else None
    average_gradients(params + ([gates] if gates is not None else []))


class UVCPrimalDual:
    """Steps 2-6 of UVC's search-mode ``train_step`` (see the module docstring).

    Args:
        cost: the dense model's :class:`~mmsparse.ops.uvc.ViTCost`.
        budget: FLOPs budget as a fraction of the dense model.
        gating_weight: weight of the resource term in the gates' gradient (original 5e-4).
        gating_interval: gate gradients are averaged over this many steps (original 50).
        gate_step: 'uniform' (default): the gates are stepped only by their ``gates`` SGD, on
            the uniform mean of the interval's gradients. 'original': the i-th gradient of an
            interval (i = 0 .. interval - 1) is weighted by i (the original's ``global_step %
            gating_interval``), so the mean the SGD steps is ``sum_i i g_i / interval``
            (``(interval - 1) / 2`` = 24.5 times the uniform mean for a steady gradient), and
            the gates are also in the weights' AdamW (stepped every iteration on their task
            gradient, clipped with the weights'; :class:`~mmsparse.engine.
            UVCOptimWrapperConstructor` puts them there).
        arch_grad_clip: inf-norm clip of the architecture gradients (original 1.0).
        arch_grad_clip_joint: False (default): each tensor (heads, neurons, value dims) is
            clipped on its own. True (the original): heads and neurons, the original's one
            ``s`` (L, 2) tensor, are clipped together (one scale for both, set by the larger),
            value dims (``r``) on their own.
        removed_head_dims: 'excluded' (default): the value dims of removed heads take no part
            in the dims' proximal step, least sums and dual ascent (they do not exist in the
            hard architecture). 'included' (the original): every head's ``ceil(r)`` lowest dims
            are shrunk by ``1 + 2 lr p``, enter the least-sum penalty (the gradient of ``r``)
            and the ascent of ``p``, removed heads' too (the resource function ignores them
            either way).
        arch_precondition: 'none' (the original): s and r step in units of groups, so one step
            of a kind with small groups (neurons, value dims) removes far fewer FLOPs than one
            of a kind with big groups (heads). 'flops': the step is taken in FLOPs coordinates
            ``u = c x`` (c = the dense FLOPs fraction of one group of that kind): the gradient
            is divided by c, clipped, divided by c again. Then the resource term pushes every
            kind at the same FLOPs rate ``z`` and a group resists with ``y * score / c``, its
            importance per FLOP; the ``arch`` lr is in FLOPs fraction per step.
        score_normalize: 'none' (the original): the least-sum penalties use the raw squared
            norms, whose scale differs between proj columns and fc2 columns. 'sum': each score
            is divided by the sum of its kind's scores in its block (heads, value dims, neurons
            each sum to 1 per block), so a least sum is the fraction of a kind's magnitude
            removed and the kinds are comparable. Masks (rankings) are the same either way.
        resource_penalty: rho of the augmented Lagrangian of the budget constraint: the
            architecture and the gates see the multiplier ``max(0, z + rho (FLOPs - budget))``
            instead of ``z`` (the method of multipliers for an inequality constraint), which
            reacts at once when the FLOPs cross the budget instead of after z has drained; the
            dual ascent of z is unchanged. 0 (default) is the original's plain Lagrangian.
        resource_clip: if set, the resource residual is clamped to ``[-c, c]`` before
            differentiation (the original's ``z_grad_clip`` 0.5: where ``|FLOPs - budget| > c``
            the architecture gets no resource gradient). Default None: no clamp.
        least_sum_slope: the derivative of the least sums w.r.t. s and r (see
            :func:`~mmsparse.ops.uvc.least_sum`): 'next' (the original: the next group's score,
            which jumps where ``ceil`` changes the hard architecture, so a variable whose
            balance point lies between k and k + 1 groups toggles the hard architecture every
            step) or 'nearest' (the slope jumps half-way, the hard architecture settles).

    Every setting is checked as the classifier's config key (``model.<name>``).
    """
    ARCH_NAMES = ('arch_heads', 'arch_neurons', 'arch_dims')

    def __init__(self, cost: ViTCost, budget: float, gating_weight: float = 5e-4,
                 gating_interval: int = 50, arch_grad_clip: float = 1.0,
                 arch_precondition: str = 'none', score_normalize: str = 'none',
                 resource_penalty: float = 0.0, resource_clip: Optional[float] = None,
                 least_sum_slope: str = 'next', gate_step: str = 'uniform',
                 arch_grad_clip_joint: bool = False,
                 removed_head_dims: str = 'excluded') -> None:
        keys = Keys('model')
        keys.number('gating_interval', gating_interval, 1, integer=True)
        keys.choice('gate_step', gate_step, GATE_STEPS)
        keys.boolean('arch_grad_clip_joint', arch_grad_clip_joint)
        keys.choice('removed_head_dims', removed_head_dims, REMOVED_HEAD_DIMS)
        keys.number('gating_weight', gating_weight, 0)
        keys.number('resource_penalty', resource_penalty, 0)
        keys.number('arch_grad_clip', arch_grad_clip, 0, low_open=True)
        keys.choice('arch_precondition', arch_precondition, ('none', 'flops'))
        keys.choice('score_normalize', score_normalize, ('none', 'sum'))
        keys.require('least_sum_slope', least_sum_slope in LEAST_SUM_SLOPES,
                     f"must be one of {LEAST_SUM_SLOPES} ('next' is the original), got "
                     f'{least_sum_slope!r}')
        if resource_clip is not None:
            keys.number('resource_clip', resource_clip, 0, low_open=True)
        self.cost = cost
        self.budget = float(budget)
        self.gating_weight = float(gating_weight)
        self.gating_interval = gating_interval
        self.arch_grad_clip = float(arch_grad_clip)
        self.arch_precondition = arch_precondition
        self.score_normalize = score_normalize
        self.resource_penalty = float(resource_penalty)
        self.resource_clip = resource_clip
        self.least_sum_slope = least_sum_slope
        self.gate_step = gate_step
        self.arch_grad_clip_joint = bool(arch_grad_clip_joint)
        self.removed_head_dims = removed_head_dims

    # ---- the whole step ------------------------------------------------------------------------
    def __call__(self, backbone: nn.Module, duals: UVCDuals, optim_wrapper, lr: float) -> None:
        """Steps 2-6 after the ``weights`` step (step 1) of the same iteration.

        Args:
            backbone: the :class:`~mmsparse.models.UVCVisionTransformer` (search mode, its
                ``warmup`` flag set for this epoch).
            duals: the classifier's :class:`UVCDuals`.
            optim_wrapper: the ``OptimWrapperDict`` (:data:`UVC_OPTIMIZERS`).
            lr: the weights' current learning rate (of the proximal step).
        """
        scores = backbone.group_scores()
        masks = backbone.compute_masks(scores)
        self.shrink_removed(backbone, duals, masks, lr, dim_scores=scores[1])
        if backbone.warmup:
            backbone.block_gates.grad = None
            backbone.refresh_masks(masks)
            return
        scores = backbone.group_scores()  # of the shrunk weights
        masks = backbone.compute_masks(scores)
        self.arch_gates_duals_step(backbone, duals, optim_wrapper, self.normalized(scores),
                                   masks)
        # the architecture variables moved, the weights did not: the same scores
        backbone.refresh_masks(backbone.compute_masks(scores))

    # ---- step 2 ------------------------------------------------------------------------------
    @torch.no_grad()
    def shrink_removed(self, backbone: nn.Module, duals: UVCDuals, masks: UVCMasks,
                       lr: float, dim_scores: Optional[Tensor] = None) -> None:
        """Divide the weights of the removed groups by ``1 + 2 lr dual`` (step 2).

        ``dim_scores``: the (L, H, hd) value-dim scores ``masks`` were computed from (default:
        those of the current weights); only ``removed_head_dims='included'`` reads them.
        """
        L, H, hd = backbone.num_layers, backbone.num_heads, backbone.head_dims
        head_f = prox_factors(~masks.heads, duals.heads, lr)  # (L, H)
        if self.removed_head_dims == 'included':  # every head's ceil(r) lowest dims
            if dim_scores is None:
                dim_scores = backbone.group_scores()[1]
            dim_removed = ~keep_mask_lowest(dim_scores, backbone.removed_counts()[2])
        else:  # removed dims of kept heads (a removed head's columns shrink by its head dual)
            dim_removed = ~masks.dims & masks.heads.unsqueeze(-1)
        dim_f = prox_factors(dim_removed, duals.dims, lr)  # (L, H, hd)
        col_f = (head_f.unsqueeze(-1) * dim_f).reshape(L, H * hd)  # proj input columns
        neuron_f = prox_factors(~masks.neurons, duals.neurons, lr)  # (L, F)
        for i, layer in enumerate(backbone.layers):
            w = layer.attn.proj.weight
            w.mul_(col_f[i].to(w.dtype).unsqueeze(0))
            w = layer.fc2.weight
            w.mul_(neuron_f[i].to(w.dtype).unsqueeze(0))

    # ---- steps 4-6 ---------------------------------------------------------------------------
    def lagrangian_terms(self, backbone: nn.Module, scores: Scores, masks: UVCMasks,
                         s_heads: Tensor, s_neurons: Tensor, r: Tensor,
                         gates: Optional[Tensor]) -> Dict[str, Tensor]:
        """The constraint terms of the Lagrangian at the given (differentiable) variables.

        Returns:
            ``ls_heads`` (L,), ``ls_neurons`` (L,), ``ls_dims`` (L, H) (least sums; removed
            heads' dims count 0) and ``flops`` () the expected FLOPs fraction.
        """
        head_s, dim_s, neuron_s = scores
        keep = backbone.block_keep_prob(gates)  # None without gating
        return dict(
            ls_heads=least_sum(s_heads, head_s, self.least_sum_slope),
            ls_neurons=least_sum(s_neurons, neuron_s, self.least_sum_slope),
            ls_dims=least_sum(r, dim_s, self.least_sum_slope) * (
                masks.heads.to(r.dtype) if self.removed_head_dims == 'excluded' else 1.0),
            flops=uvc_flops_fraction(self.cost, s_heads, s_neurons, r, masks.heads, keep))

    def normalized(self, scores: Scores) -> Scores:
        """The scores the least sums use (see ``score_normalize``)."""
        if self.score_normalize == 'none':
            return scores
        head_s, dim_s, neuron_s = scores
        eps = 1e-12
        return (head_s / head_s.sum(-1, keepdim=True).clamp(min=eps),
                dim_s / dim_s.sum((-1, -2), keepdim=True).clamp(min=eps),
                neuron_s / neuron_s.sum(-1, keepdim=True).clamp(min=eps))

    def arch_units(self) -> Tuple[float, float, float]:
        """Per kind (heads, neurons, dims), the unit dividing the gradient twice (step 4):
        1 without preconditioning, the dense FLOPs fraction of one group with 'flops'."""
        if self.arch_precondition == 'flops':
            return group_flops_fractions(self.cost)
        return (1.0, 1.0, 1.0)

    def arch_gates_duals_step(self, backbone: nn.Module, duals: UVCDuals, optim_wrapper,
                              scores: Scores, masks: UVCMasks) -> None:
        """Steps 4-6 at the (normalized) ``scores`` and the ``masks`` of the shrunk weights."""
        params = [getattr(backbone, name) for name in self.ARCH_NAMES]
        xs = [p.detach().clone().requires_grad_(True) for p in params]
        gating = backbone.block_gating is not None
        g = backbone.block_gates.detach().clone().requires_grad_(True) if gating else None
        with torch.enable_grad():
            terms = self.lagrangian_terms(backbone, scores, masks, *xs, g)
            residual = terms['flops'] - self.budget
            if self.resource_clip is not None:
                residual = residual.clamp(-self.resource_clip, self.resource_clip)
            z = self._multiplier(duals, terms['flops'])
            lagrangian = ((duals.heads.detach() * terms['ls_heads']).sum()
                          + (duals.neurons.detach() * terms['ls_neurons']).sum()
                          + (duals.dims.detach() * terms['ls_dims']).sum() + z * residual)
            arch_grads = torch.autograd.grad(lagrangian, xs, retain_graph=gating)
            gate_res_grad = torch.autograd.grad(terms['flops'], g)[0] if gating else None
        self._arch_step(backbone, params, arch_grads, optim_wrapper['arch'])
        if gating:
            self._gate_step(backbone, duals, z * self.gating_weight * gate_res_grad,
                            optim_wrapper['gates'])
        self._dual_step(duals, terms, optim_wrapper)

    def _multiplier(self, duals: UVCDuals, flops: Tensor) -> Tensor:
        """The budget multiplier the primal variables see: z, or the augmented one."""
        z = duals.flops.detach()[0]
        if self.resource_penalty > 0:
            z = (z + self.resource_penalty * (flops.detach() - self.budget)).clamp(
                min=0).to(z.dtype)
        return z

    def _arch_step(self, backbone: nn.Module, params: List[nn.Parameter],
                   grads: Tuple[Tensor, ...], arch_wrapper) -> None:
        """Step 4: projected, clipped gradient step on s and r, then back into the box."""
        bounds = backbone.bounds
        # 'flops' preconditioning: clip the gradient w.r.t. the FLOPs fraction u = unit * x
        # (grad / unit) and step x by it / unit, i.e. gradient descent in FLOPs coordinates
        units = self.arch_units()
        scaled = [project_grad(grad, p.detach(), 0.0, bounds[name]) / unit
                  for p, grad, name, unit in zip(params, grads, self.ARCH_NAMES, units)]
        if self.arch_grad_clip_joint:
            # the original's s = [heads, neurons] (L, 2) is one tensor: one scale for both,
            # set by the larger (the head gradient, whose groups are the bigger)
            joint = clip_inf_norm(torch.cat(scaled[:2]), self.arch_grad_clip)
            clipped = list(joint.split([scaled[0].numel(), scaled[1].numel()]))
            clipped.append(clip_inf_norm(scaled[2], self.arch_grad_clip))
        else:
            clipped = [clip_inf_norm(g, self.arch_grad_clip) for g in scaled]
        for p, grad, unit in zip(params, clipped, units):
            p.grad = (grad / unit).to(p.dtype)
        arch_wrapper.step()
        arch_wrapper.zero_grad()
        with torch.no_grad():
            for p, name in zip(params, self.ARCH_NAMES):
                p.clamp_(0.0, bounds[name])

    def _gate_step(self, backbone: nn.Module, duals: UVCDuals, resource_grad: Tensor,
                   gates_wrapper) -> None:
        """Step 5: task + resource gradient of the gates, averaged over the interval.

        ``gate_step='original'``: the gradient of the i-th step of the interval (i = 0, ...)
        is weighted by i before the mean (the count in the interval is the accumulator's).
        """
        gates = backbone.block_gates
        grad = resource_grad.to(gates.dtype)
        if gates.grad is not None:
            grad = grad + gates.grad
        weight = float(duals.gate_grad_count) if self.gate_step == 'original' else 1.0
        duals.gate_grad_sum.add_(grad.detach() * weight)
        duals.gate_grad_count.add_(1)
        gates.grad = None
        if int(duals.gate_grad_count) >= self.gating_interval:
            gates.grad = duals.gate_grad_sum / duals.gate_grad_count.float()
            gates_wrapper.step()
            gates_wrapper.zero_grad()
            duals.gate_grad_sum.zero_()
            duals.gate_grad_count.zero_()

    def _dual_step(self, duals: UVCDuals, terms: Dict[str, Tensor], optim_wrapper) -> None:
        """Step 6: dual ascent (as descent on the negated constraint values), then >= 0."""
        with torch.no_grad():
            for p, value in ((duals.heads, terms['ls_heads']),
                             (duals.neurons, terms['ls_neurons']),
                             (duals.dims, terms['ls_dims']),
                             (duals.flops, (terms['flops'] - self.budget).reshape(1))):
                p.grad = -value.detach().to(p.dtype)
        for key in ('duals', 'flops_dual'):
            optim_wrapper[key].step()
            optim_wrapper[key].zero_grad()
        with torch.no_grad():
            for p in duals[:4]:
                p.clamp_(min=0.0)
