"""UVC's classifier: the budget, dual variables, teacher and primal-dual ``train_step``
(see :mod:`mmsparse.models.uvc` for the gated backbone and the names used)."""
import copy
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.logging import MessageHub
from mmengine.registry import MODEL_WRAPPERS
from mmengine.optim import OptimWrapperDict
from mmpretrain.models.classifiers import ImageClassifier
from torch import Tensor, nn

from mmsparse.errors import ConfigError
from mmsparse.ops.uvc import (LEAST_SUM_SLOPES, UVCMasks, clip_inf_norm, gate_keep_prob,
                              group_flops_fractions, least_sum, min_flops_fraction,
                              project_grad, prox_factors, uvc_flops_fraction)
from mmsparse.registry import MODELS
from .teacher import FrozenTeacherMixin
from .uvc import _BOUND_EPS, UVC_OPTIMIZERS, UVCVisionTransformer, _unwrap

__all__ = ['UVCClassifier', 'UVCDistributedDataParallel', 'UVC_OPTIMIZERS']


@MODELS.register_module()
class UVCClassifier(FrozenTeacherMixin, ImageClassifier):
    """mmpretrain's ``ImageClassifier`` with UVC's budget, dual variables and primal-dual step.

    **Loss** (both stages): ``loss_cls = (1 - alpha) * head loss`` and, with a teacher,
    ``loss_distill = alpha * KL(teacher || student)`` of the logits at temperature ``tau``
    (DeiT's soft distillation: ``sum KL * tau^2 / numel``, numel = batch x classes).

    **Search mode** (backbone ``mode='search'``, stage 1): :meth:`train_step` needs an
    ``OptimWrapperDict`` with the keys ``weights`` (AdamW over the network weights and patch
    gates), ``arch`` (SGD over ``arch_heads``, ``arch_neurons``, ``arch_dims``), ``gates`` (SGD
    over ``block_gates``; only with block gating), ``duals`` (SGD ascent over ``dual_heads``,
    ``dual_neurons``, ``dual_dims``) and ``flops_dual`` (SGD ascent over ``dual_flops``), as built
    by :class:`mmsparse.engine.UVCOptimWrapperConstructor`. One step:

    1. task loss -> backward -> (clip) -> ``weights`` step;
    2. proximal group shrinkage: the weights of the currently removed groups (proj columns of
       removed heads and of removed dims inside kept heads, fc2 columns of removed neurons) are
       divided by ``1 + 2 lr y`` (``lr`` = the weights' current lr, ``y`` the group's dual);
    3. during the ``warmup_epochs`` first epochs: stop here (architecture, gates, duals frozen);
    4. architecture gradients of ``sum y LeastSum(s, scores) + sum p LeastSum(r, scores) +
       z (FLOPs(s, r, gates) - budget)``, projected onto the box, clipped to an inf-norm of
       ``arch_grad_clip`` per tensor, ``arch`` SGD step, clamp to the box;
    5. block gates: task gradient + ``z * gating_weight * dFLOPs/dg``, averaged over
       ``gating_interval`` steps, then one ``gates`` step;
    6. dual ascent ``y += lr LeastSum``, ``p += lr LeastSum``, ``z += lr (FLOPs - budget)``,
       projected onto ``>= 0``.

    FLOPs here is the expected (soft) fraction: the blocks count with their noise-free keep
    probability. The masks (``backbone.mask_*``) are refreshed after every step.

    **Fixed mode** (stage 2): the usual one-optimizer ``train_step`` on the masked model.

    Args:
        backbone: an :class:`UVCVisionTransformer` config.
        head: a ``VisionTransformerClsHead``-like config.
        neck: must be None.
        budget: FLOPs budget as a fraction of the dense model, in (0, 1) and reachable.
        warmup_epochs: epochs with the architecture frozen (original 5).
        distill: build a teacher and add the distillation loss.
        teacher: None (a dense ``mmpretrain.VisionTransformer`` classifier of the backbone's
            arch, with the same head), a model config dict or a config file path.
        teacher_checkpoint: checkpoint of the teacher; else the teacher is a frozen copy of the
            student when the first loss is computed (after ``load_from``). Either way it is
            saved in checkpoints as ``teacher.*``.
        distill_alpha: alpha (original 0.1); distill_tau: temperature (original 1).
        gating_weight: weight of the resource term in the gates' gradient (original 5e-4).
        gating_interval: gate gradients are averaged over this many steps (original 50).
        dual_init: initial y, p, z (original 1e-3).
        arch_grad_clip: inf-norm clip of each architecture gradient tensor (original 1.0).
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
        **kwargs: ``ImageClassifier``'s ``pretrained``, ``train_cfg``, ``data_preprocessor``,
            ``init_cfg``.
    """
    # the teacher (FrozenTeacherMixin); one loaded from teacher_checkpoint is saved too
    _teacher_name = 'UVC'
    _student_only_keys = UVCVisionTransformer.UVC_KEYS
    _save_loaded_teacher = True

    def __init__(self, backbone: dict, head: dict, neck: Optional[dict] = None,
                 budget: float = 0.5, warmup_epochs: int = 5, distill: bool = True,
                 teacher: Optional[Union[str, dict]] = None,
                 teacher_checkpoint: Optional[str] = None, distill_alpha: float = 0.1,
                 distill_tau: float = 1.0, gating_weight: float = 5e-4,
                 gating_interval: int = 50, dual_init: float = 1e-3,
                 arch_grad_clip: float = 1.0, arch_precondition: str = 'none',
                 score_normalize: str = 'none', resource_penalty: float = 0.0,
                 resource_clip: Optional[float] = None, least_sum_slope: str = 'next',
                 **kwargs) -> None:
        if not (isinstance(budget, (int, float)) and not isinstance(budget, bool)
                and 0.0 < budget < 1.0):
            raise ConfigError(f'model.budget must be a FLOPs fraction in (0, 1), got {budget!r}')
        if not (isinstance(warmup_epochs, int) and warmup_epochs >= 0):
            raise ConfigError(f'model.warmup_epochs must be an int >= 0, got {warmup_epochs!r}')
        if not (isinstance(gating_interval, int) and gating_interval >= 1):
            raise ConfigError(f'model.gating_interval must be an int >= 1, got '
                              f'{gating_interval!r}')
        for name, v in (('distill_alpha', distill_alpha), ('gating_weight', gating_weight),
                        ('dual_init', dual_init), ('resource_penalty', resource_penalty)):
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ConfigError(f'model.{name} must be a number >= 0, got {v!r}')
        if not distill_alpha <= 1:
            raise ConfigError(f'model.distill_alpha must be in [0, 1], got {distill_alpha!r}')
        if not (isinstance(distill_tau, (int, float)) and distill_tau > 0):
            raise ConfigError(f'model.distill_tau must be > 0, got {distill_tau!r}')
        if not (isinstance(arch_grad_clip, (int, float)) and arch_grad_clip > 0):
            raise ConfigError(f'model.arch_grad_clip must be > 0, got {arch_grad_clip!r}')
        if arch_precondition not in ('none', 'flops'):
            raise ConfigError(f"model.arch_precondition must be 'none' (the original) or 'flops', "
                              f'got {arch_precondition!r}')
        if score_normalize not in ('none', 'sum'):
            raise ConfigError(f"model.score_normalize must be 'none' (the original) or 'sum', "
                              f'got {score_normalize!r}')
        if least_sum_slope not in LEAST_SUM_SLOPES:
            raise ConfigError(f'model.least_sum_slope must be one of {LEAST_SUM_SLOPES} '
                              f"('next' is the original), got {least_sum_slope!r}")
        if resource_clip is not None and not resource_clip > 0:
            raise ConfigError(f'model.resource_clip must be None or > 0, got {resource_clip!r}')
        if neck is not None:
            raise ConfigError(f'model.neck must be None for UVCClassifier (the head reads the '
                              f'class token), got {neck!r}')
        backbone_cfg = copy.deepcopy(backbone) if isinstance(backbone, dict) else None
        head_cfg = copy.deepcopy(head) if isinstance(head, dict) else None
        super().__init__(backbone, neck=None, head=head, **kwargs)
        bb = self.backbone
        if not isinstance(bb, UVCVisionTransformer):
            raise ConfigError(f'model.backbone.type must be mmsparse.UVCVisionTransformer, got '
                              f'{type(bb).__name__}')
        self.budget = float(budget)
        self.warmup_epochs = warmup_epochs
        self.distill_alpha = float(distill_alpha) if distill else 0.0
        self.distill_tau = float(distill_tau)
        self.gating_weight = float(gating_weight)
        self.gating_interval = gating_interval
        self.arch_grad_clip = float(arch_grad_clip)
        self.arch_precondition = arch_precondition
        self.score_normalize = score_normalize
        self.resource_penalty = float(resource_penalty)
        self.resource_clip = resource_clip
        self.least_sum_slope = least_sum_slope
        self.cost = bb.cost(self._head_macs())
        reachable = min_flops_fraction(self.cost, bb.block_gating is not None)
        if self.budget < reachable:
            raise ConfigError(
                f'model.budget={budget} is below what the structure can reach: at least '
                f'{reachable:.4f} of the dense FLOPs (every block keeps >= 1 head, 1 value dim '
                f'per head and 1 neuron' + ('' if bb.block_gating is not None else
                                            '; block_gating=None: no block can be skipped')
                + f'). Raise the budget to >= {reachable:.4f}' +
                ('' if bb.block_gating is not None else " or set backbone.block_gating"))
        L, H = bb.num_layers, bb.num_heads
        self.dual_heads = nn.Parameter(torch.full((L, ), float(dual_init)), requires_grad=False)
        self.dual_neurons = nn.Parameter(torch.full((L, ), float(dual_init)),
                                         requires_grad=False)
        self.dual_dims = nn.Parameter(torch.full((L, H), float(dual_init)), requires_grad=False)
        self.dual_flops = nn.Parameter(torch.full((1, ), float(dual_init)), requires_grad=False)
        # block-gate gradient accumulated over gating_interval steps, and how many are in it
        self.register_buffer('gate_grad_sum', torch.zeros(L, 2))
        self.register_buffer('gate_grad_count', torch.zeros((), dtype=torch.long))

        self._init_teacher(teacher, teacher_checkpoint, backbone_cfg, head_cfg,
                           build=distill and self.distill_alpha > 0)

    # ---- parts -------------------------------------------------------------------------------
    @property
    def uvc_backbone(self) -> UVCVisionTransformer:
        """The backbone, unwrapped from a DDP wrapper."""
        return _unwrap(self.backbone)

    def _head_macs(self) -> float:
        """MACs of the head on one image (its linear layers)."""
        return float(sum(m.in_features * m.out_features for m in self.head.modules()
                         if isinstance(m, nn.Linear)))

    def arch_parameters(self) -> Dict[str, nn.Parameter]:
        """The parameters of each optimizer except ``weights`` (see the class docstring)."""
        bb = self.uvc_backbone
        out = dict(arch=[bb.arch_heads, bb.arch_neurons, bb.arch_dims],
                   gates=[bb.block_gates] if bb.block_gating is not None else [],
                   duals=[self.dual_heads, self.dual_neurons, self.dual_dims],
                   flops_dual=[self.dual_flops])
        return out

    # ---- the teacher -------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_logits(self, inputs: Tensor) -> Tensor:
        """The teacher's logits (B, classes)."""
        return self._ensure_teacher()(inputs, mode='tensor')

    # ---- loss --------------------------------------------------------------------------------
    def loss(self, inputs: Tensor, data_samples: list) -> Dict[str, Tensor]:
        """``loss_cls`` (weighted by 1 - alpha) and ``loss_distill`` (see the class docstring)."""
        feats = self.extract_feat(inputs)
        head_losses = self.head.loss(feats, data_samples)
        losses = {'loss_cls': head_losses.pop('loss') * (1.0 - self.distill_alpha)}
        losses.update(head_losses)
        if self.teacher is not None and self.distill_alpha > 0:
            t = self.distill_tau
            logits = self.head(feats).float()
            t_logits = self.teacher_logits(inputs).float()
            kd = F.kl_div(F.log_softmax(logits / t, dim=-1), F.log_softmax(t_logits / t, dim=-1),
                          reduction='sum', log_target=True) * (t * t) / logits.numel()
            losses['loss_distill'] = self.distill_alpha * kd
        return losses

    # ---- resources ---------------------------------------------------------------------------
    def flops_fraction(self, hard: bool = True) -> float:
        """FLOPs of the current architecture as a fraction of the dense model.

        ``hard``: blocks run or not by their hard decision (the real FLOPs, what the compacted
        model costs); else with their keep probability (the expected FLOPs).
        """
        bb = self.uvc_backbone
        with torch.no_grad():
            masks = bb.compute_masks() if bb.mode == 'search' else None
            head_keep = masks.heads if masks is not None else bb.mask_heads
            if bb.mode == 'fixed':
                return self.fixed_flops_fraction()
            keep = bb.block_keep_hard().float() if hard else bb.block_keep_prob()
            return float(uvc_flops_fraction(self.cost, bb.arch_heads, bb.arch_neurons,
                                            bb.arch_dims, head_keep, keep))

    def fixed_flops_fraction(self, block_keep: Optional[Tensor] = None) -> float:
        """The FLOPs fraction of the architecture stored in the ``mask_*`` buffers.

        Args:
            block_keep: (L,) block keep probabilities to use instead of ``mask_blocks``.
        """
        bb = self.uvc_backbone
        H, hd = bb.num_heads, bb.head_dims
        heads_removed = H - bb.mask_heads.sum(-1)
        dims_removed = (hd - bb.mask_dims.sum(-1)) * bb.mask_heads
        neurons_removed = bb.mlp_dims - bb.mask_neurons.sum(-1)
        keep = bb.mask_blocks if block_keep is None else block_keep
        with torch.no_grad():
            return float(uvc_flops_fraction(self.cost, heads_removed, neurons_removed,
                                            dims_removed, bb.mask_heads, keep, ceil=False))

    @torch.no_grad()
    def project_to_budget(self, multiple: int = 1) -> int:
        """Make the hard architecture meet the budget by removing the cheapest groups.

        The primal-dual iterates meet the constraint only on average; at the end of stage 1 the
        real FLOPs may sit slightly above the budget. While they do, this removes, one at a
        time, the group (next head of a block, next value dim of a kept head, next neuron of a
        block) with the lowest relative score (its score over the mean score of its kind in
        its block) per MAC saved, by raising its architecture variable to the next integer.
        Blocks the gates skip are left out.

        Args:
            multiple: then round every running block's kept neurons and every kept head's value
                dims down to a multiple of this (removing the lowest-score extra groups; only
                where at least ``multiple`` remain), which lowers the FLOPs further and keeps
                the compact model's matrix sizes friendly to GEMM kernels (e.g. 8).

        Returns:
            How many groups were removed.
        """
        bb = self.uvc_backbone
        n, c, hd = self.cost.num_tokens, self.cost.embed_dims, bb.head_dims
        ub = bb.bounds
        removed = 0
        while self.flops_fraction(hard=True) > self.budget:
            head_s, dim_s, neuron_s = bb.group_scores()
            masks = bb.compute_masks((head_s, dim_s, neuron_s))
            runs = bb.block_keep_hard()
            nh, nn_, nd = bb.removed_counts()
            inf = torch.tensor(float('inf'))
            # heads: the next head's score / the MACs its removal saves
            sorted_h, order_h = torch.sort(head_s, dim=-1, stable=True)
            k = nh.clamp(max=bb.num_heads - 1)
            nxt_h = order_h.gather(-1, k.unsqueeze(-1)).squeeze(-1)  # (L,)
            v_kept = masks.dims.sum(-1).gather(-1, nxt_h.unsqueeze(-1)).squeeze(-1).double()
            saved_h = n * c * (2 * hd + v_kept) + n * n * (hd + v_kept) + n * v_kept * c
            cost_h = (sorted_h.gather(-1, k.unsqueeze(-1)).squeeze(-1).double()
                      / head_s.mean(-1).double().clamp(min=1e-12) / saved_h)
            cost_h[(nh + 1 > ub['arch_heads'] + _BOUND_EPS) | ~runs] = inf
            # neurons
            sorted_n, _ = torch.sort(neuron_s, dim=-1)
            kn = nn_.clamp(max=bb.mlp_dims - 1)
            cost_n = (sorted_n.gather(-1, kn.unsqueeze(-1)).squeeze(-1).double()
                      / neuron_s.mean(-1).double().clamp(min=1e-12) / (2 * n * c))
            cost_n[(nn_ + 1 > ub['arch_neurons'] + _BOUND_EPS) | ~runs] = inf
            # value dims inside kept heads
            sorted_d, _ = torch.sort(dim_s, dim=-1)
            kd = nd.clamp(max=hd - 1)
            cost_d = (sorted_d.gather(-1, kd.unsqueeze(-1)).squeeze(-1).double()
                      / dim_s.mean((-1, -2)).double().clamp(min=1e-12).unsqueeze(-1)
                      / (2 * n * c + n * n))
            cost_d[(nd + 1 > ub['arch_dims'] + _BOUND_EPS) | ~masks.heads
                   | ~runs.unsqueeze(-1)] = inf
            best = [(cost_h.min(), 'arch_heads', cost_h.argmin()),
                    (cost_n.min(), 'arch_neurons', cost_n.argmin()),
                    (cost_d.min(), 'arch_dims', cost_d.argmin())]
            value, name, idx = min(best, key=lambda t: float(t[0]))
            if not torch.isfinite(value):
                break  # nothing left to remove
            p = getattr(bb, name).view(-1)
            p[idx] = torch.ceil(p[idx]) + 1
            removed += 1
        if multiple > 1:
            runs = bb.block_keep_hard()
            masks = bb.compute_masks()
            for name, kept, keep in (
                    ('arch_neurons', bb.mlp_dims - torch.ceil(bb.arch_neurons), runs),
                    ('arch_dims', hd - torch.ceil(bb.arch_dims), masks.heads & runs[:, None])):
                extra = torch.where(keep & (kept > multiple), kept % multiple,
                                    torch.zeros_like(kept))
                p = getattr(bb, name)
                p.copy_(torch.ceil(p) + extra)
                removed += int(extra.sum())
        bb.refresh_masks()
        return removed

    # ---- training ----------------------------------------------------------------------------
    def current_epoch(self) -> int:
        """The runner's epoch (from the message hub; 0 outside a runner)."""
        epoch = MessageHub.get_current_instance().get_info('epoch')
        return int(epoch) if epoch is not None else 0

    def train_step(self, data: Union[dict, tuple, list],
                   optim_wrapper) -> Dict[str, Tensor]:
        """Stage 1: one primal-dual step (class docstring); stage 2: the usual step."""
        bb = self.uvc_backbone
        if bb.mode == 'fixed':
            if isinstance(optim_wrapper, OptimWrapperDict):
                raise ConfigError("optim_wrapper: a fixed-architecture (stage 2) UVC model trains "
                                 "with one optimizer; do not use UVCOptimWrapperConstructor")
            return super().train_step(data, optim_wrapper)
        self._check_optim_wrapper(optim_wrapper)
        bb.set_epoch(self.current_epoch(), self.warmup_epochs)
        warm = bb.warmup

        # 1. weights (and, by the same backward, the task gradient of the block gates)
        ow = optim_wrapper['weights']
        with ow.optim_context(self):
            data = self.data_preprocessor(data, True)
            losses = self._run_forward(data, mode='loss')
        parsed, log_vars = self.parse_losses(losses)
        ow.backward(ow.scale_loss(parsed))
        self._unscale_gate_grad(ow)
        self._average_gradients(ow)
        if ow.should_update():
            ow.step()
            ow.zero_grad()
        lr = float(ow.get_lr()['lr'][0])

        # 2. proximal group shrinkage on the currently removed groups
        scores = bb.group_scores()
        masks = bb.compute_masks(scores)
        self._prox_step(masks, lr)
        if warm:
            bb.block_gates.grad = None
            bb.refresh_masks(masks)
            return self._log(log_vars, warm)
        scores = bb.group_scores()
        masks = bb.compute_masks(scores)

        # 4.-6. architecture, gates, duals
        self._primal_dual_step(optim_wrapper, self._normalized(scores), masks)
        bb.refresh_masks()
        return self._log(log_vars, warm)

    def _unscale_gate_grad(self, weights_wrapper) -> None:
        """Mixed precision (an ``AmpOptimWrapper`` for ``weights``): the backward of the scaled
        loss gave the block gates a scaled task gradient, which the weights' scaler does not
        unscale (the gates are not in its optimizer). Divide it by the scale; drop a non-finite
        one (the scaler skips that step for the weights too)."""
        gates = self.uvc_backbone.block_gates
        scaler = getattr(weights_wrapper, 'loss_scaler', None)
        if scaler is None or gates is None or gates.grad is None:
            return
        grad = gates.grad / scaler.get_scale()  # get_scale() is 1.0 for a disabled scaler
        gates.grad = grad if bool(torch.isfinite(grad).all()) else None

    def _average_gradients(self, weights_wrapper) -> None:
        """Multi-process: average the task gradients (weights and block gates) over processes
        (what DDP would do; see :class:`UVCDistributedDataParallel`). No-op in one process."""
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        params = [p for g in weights_wrapper.optimizer.param_groups for p in g['params']]
        if self.uvc_backbone.block_gating is not None:
            params.append(self.uvc_backbone.block_gates)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def _check_optim_wrapper(self, optim_wrapper) -> None:
        if not isinstance(optim_wrapper, OptimWrapperDict):
            raise ConfigError('optim_wrapper: UVC stage 1 (backbone.mode="search") needs '
                              "optim_wrapper=dict(constructor='UVCOptimWrapperConstructor', ...) "
                              f'(an OptimWrapperDict), got {type(optim_wrapper).__name__}')
        need = [k for k in UVC_OPTIMIZERS
                if k != 'gates' or self.uvc_backbone.block_gating is not None]
        missing = [k for k in need if k not in optim_wrapper]
        if missing:
            raise ConfigError(f'optim_wrapper: missing optimizers {missing}; UVC stage 1 needs '
                              f'{need}')

    @torch.no_grad()
    def _prox_step(self, masks: UVCMasks, lr: float) -> None:
        """Divide the weights of the removed groups by ``1 + 2 lr dual`` (step 2)."""
        bb = self.uvc_backbone
        L, H, hd = bb.num_layers, bb.num_heads, bb.head_dims
        head_f = prox_factors(~masks.heads, self.dual_heads, lr)  # (L, H)
        dim_removed = ~masks.dims & masks.heads.unsqueeze(-1)  # removed dims of kept heads
        dim_f = prox_factors(dim_removed, self.dual_dims, lr)  # (L, H, hd)
        col_f = (head_f.unsqueeze(-1) * dim_f).reshape(L, H * hd)  # proj input columns
        neuron_f = prox_factors(~masks.neurons, self.dual_neurons, lr)  # (L, F)
        for i, layer in enumerate(bb.layers):
            w = layer.attn.proj.weight
            w.mul_(col_f[i].to(w.dtype).unsqueeze(0))
            w = layer.ffn.layers[1].weight
            w.mul_(neuron_f[i].to(w.dtype).unsqueeze(0))

    def lagrangian_terms(self, scores: Tuple[Tensor, Tensor, Tensor], masks: UVCMasks,
                         s_heads: Tensor, s_neurons: Tensor, r: Tensor,
                         gates: Optional[Tensor]) -> Dict[str, Tensor]:
        """The constraint terms of the Lagrangian at the given (differentiable) variables.

        Returns:
            ``ls_heads`` (L,), ``ls_neurons`` (L,), ``ls_dims`` (L, H) (least sums; removed
            heads' dims count 0) and ``flops`` () the expected FLOPs fraction.
        """
        bb = self.uvc_backbone
        head_s, dim_s, neuron_s = scores
        keep = None
        if gates is not None and not bb.warmup:
            keep = gate_keep_prob(gates, bb.block_gating, bb.gumbel_tau, float(bb.soft_l0_eps))
        return dict(
            ls_heads=least_sum(s_heads, head_s, self.least_sum_slope),
            ls_neurons=least_sum(s_neurons, neuron_s, self.least_sum_slope),
            ls_dims=least_sum(r, dim_s, self.least_sum_slope) * masks.heads.to(r.dtype),
            flops=uvc_flops_fraction(self.cost, s_heads, s_neurons, r, masks.heads, keep))

    def _normalized(self, scores: Tuple[Tensor, Tensor, Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """The scores the least sums use (see ``score_normalize``)."""
        if self.score_normalize == 'none':
            return scores
        head_s, dim_s, neuron_s = scores
        eps = 1e-12
        return (head_s / head_s.sum(-1, keepdim=True).clamp(min=eps),
                dim_s / dim_s.sum((-1, -2), keepdim=True).clamp(min=eps),
                neuron_s / neuron_s.sum(-1, keepdim=True).clamp(min=eps))

    def _arch_units(self) -> Tuple[float, float, float]:
        """Per kind (heads, neurons, dims), the unit dividing the gradient twice (step 4):
        1 without preconditioning, the dense FLOPs fraction of one group with 'flops'."""
        if self.arch_precondition == 'flops':
            return group_flops_fractions(self.cost)
        return (1.0, 1.0, 1.0)

    def _primal_dual_step(self, optim_wrapper, scores, masks: UVCMasks) -> None:
        bb = self.uvc_backbone
        params = [bb.arch_heads, bb.arch_neurons, bb.arch_dims]
        xs = [p.detach().clone().requires_grad_(True) for p in params]
        gating = bb.block_gating is not None
        g = bb.block_gates.detach().clone().requires_grad_(True) if gating else None
        with torch.enable_grad():
            terms = self.lagrangian_terms(scores, masks, *xs, g)
            residual = terms['flops'] - self.budget
            if self.resource_clip is not None:
                residual = residual.clamp(-self.resource_clip, self.resource_clip)
            z = self.dual_flops.detach()[0]
            if self.resource_penalty > 0:
                z = (z + self.resource_penalty * (terms['flops'].detach() - self.budget)).clamp(
                    min=0).to(z.dtype)
            lagrangian = ((self.dual_heads.detach() * terms['ls_heads']).sum()
                          + (self.dual_neurons.detach() * terms['ls_neurons']).sum()
                          + (self.dual_dims.detach() * terms['ls_dims']).sum() + z * residual)
            arch_grads = torch.autograd.grad(lagrangian, xs, retain_graph=gating)
            gate_res_grad = torch.autograd.grad(terms['flops'], g)[0] if gating else None

        # 4. projected, clipped gradient step on s and r, then back into the box
        bounds = bb.bounds
        names = ['arch_heads', 'arch_neurons', 'arch_dims']
        for p, grad, name, unit in zip(params, arch_grads, names, self._arch_units()):
            grad = project_grad(grad, p.detach(), 0.0, bounds[name])
            # 'flops' preconditioning: clip the gradient w.r.t. the FLOPs fraction u = unit * x
            # (grad / unit) and step x by it / unit, i.e. gradient descent in FLOPs coordinates
            p.grad = (clip_inf_norm(grad / unit, self.arch_grad_clip) / unit).to(p.dtype)
        optim_wrapper['arch'].step()
        optim_wrapper['arch'].zero_grad()
        with torch.no_grad():
            for p, name in zip(params, names):
                p.clamp_(0.0, bounds[name])

        # 5. block gates: task + resource gradient, averaged over gating_interval steps
        if gating:
            task = bb.block_gates.grad
            grad = (z * self.gating_weight * gate_res_grad).to(bb.block_gates.dtype)
            if task is not None:
                grad = grad + task
            self.gate_grad_sum += grad.detach()
            self.gate_grad_count += 1
            bb.block_gates.grad = None
            if int(self.gate_grad_count) >= self.gating_interval:
                bb.block_gates.grad = self.gate_grad_sum / self.gate_grad_count.float()
                optim_wrapper['gates'].step()
                optim_wrapper['gates'].zero_grad()
                self.gate_grad_sum.zero_()
                self.gate_grad_count.zero_()

        # 6. dual ascent (as descent on the negated constraint values), then >= 0
        with torch.no_grad():
            for p, value in ((self.dual_heads, terms['ls_heads']),
                              (self.dual_neurons, terms['ls_neurons']),
                              (self.dual_dims, terms['ls_dims']),
                              (self.dual_flops, (terms['flops'] - self.budget).reshape(1))):
                p.grad = -value.detach().to(p.dtype)
        optim_wrapper['duals'].step()
        optim_wrapper['duals'].zero_grad()
        optim_wrapper['flops_dual'].step()
        optim_wrapper['flops_dual'].zero_grad()
        with torch.no_grad():
            for p in (self.dual_heads, self.dual_neurons, self.dual_dims, self.dual_flops):
                p.clamp_(min=0.0)

    def _log(self, log_vars: dict, warm: bool) -> dict:
        """Add the FLOPs of the architecture just written to the mask buffers."""
        bb = self.uvc_backbone
        log_vars = dict(log_vars)
        prob = bb.block_keep_prob()
        with torch.no_grad():
            log_vars['flops_expected'] = self.fixed_flops_fraction(
                prob.detach() if prob is not None else torch.ones_like(bb.mask_blocks))
        log_vars['flops_real'] = self.fixed_flops_fraction()
        log_vars['dual_flops'] = float(self.dual_flops)
        log_vars['warmup'] = float(warm)
        return log_vars


@MODEL_WRAPPERS.register_module()
class UVCDistributedDataParallel(nn.Module):
    """Multi-process wrapper for UVC stage 1 (``model_wrapper_cfg=dict(type=
    'UVCDistributedDataParallel')``).

    MMEngine's ``MMDistributedDataParallel.train_step`` runs its own single-optimizer step and
    would bypass :meth:`UVCClassifier.train_step`; this wrapper calls the model's own step, which
    averages the task gradients over the processes itself (one all-reduce per step), so that
    every process takes the same weight, gate, architecture and dual steps. At construction the
    model's state is broadcast from process 0. Validation and test steps are the model's.

    Args:
        module: the :class:`UVCClassifier`.
        **kwargs: the usual DDP arguments (``device_ids``, ``broadcast_buffers``,
            ``find_unused_parameters``), accepted and ignored.
    """

    def __init__(self, module: nn.Module, **kwargs) -> None:
        super().__init__()
        self.module = module
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            with torch.no_grad():
                for t in module.state_dict().values():
                    if isinstance(t, Tensor):
                        dist.broadcast(t, 0)

    def train_step(self, data, optim_wrapper) -> Dict[str, Tensor]:
        return self.module.train_step(data, optim_wrapper)

    def val_step(self, data) -> list:
        return self.module.val_step(data)

    def test_step(self, data) -> list:
        return self.module.test_step(data)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
