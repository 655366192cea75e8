"""UVC's classifier: the budget, the dual variables, the teacher and the search-mode
``train_step`` (see :mod:`mmsparse.models.uvc` for the gated backbone and the names used,
:mod:`mmsparse.models.uvc_primal_dual` for the primal-dual step)."""
import copy
from typing import Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from mmengine.logging import MessageHub
from mmengine.optim import OptimWrapperDict
from mmpretrain.models.classifiers import ImageClassifier
from torch import Tensor, nn

from mmsparse.errors import ConfigError
from mmsparse.ops.uvc import ViTCost, min_flops_fraction, uvc_flops_fraction
from mmsparse.ops.uvc_budget import project_to_budget
from mmsparse.registry import MODELS
from mmsparse.validation import Keys
from .teacher import FrozenTeacherMixin
from .uvc import UVCVisionTransformer
from .utils import unwrap_model
from .uvc_ddp import UVCDistributedDataParallel
from .uvc_primal_dual import (UVC_OPTIMIZERS, UVCDuals, UVCPrimalDual, check_optim_wrapper,
                              sync_task_gradients)

__all__ = ['UVCClassifier', 'UVCDistributedDataParallel', 'UVC_OPTIMIZERS']


def _check_args(budget, warmup_epochs, distill_alpha, distill_tau, dual_init, neck) -> None:
    """The classifier's own settings (the step checks its own: UVCPrimalDual)."""
    keys = Keys('model')
    ok = isinstance(budget, (int, float)) and not isinstance(budget, bool)
    keys.require('budget', ok and 0.0 < budget < 1.0,
                 f'must be a FLOPs fraction in (0, 1), got {budget!r}')
    keys.number('warmup_epochs', warmup_epochs, 0, integer=True)
    keys.number('distill_alpha', distill_alpha, 0, 1)
    keys.number('distill_tau', distill_tau, 0, low_open=True)
    keys.number('dual_init', dual_init, 0)
    keys.require('neck', neck is None, f'must be None for UVCClassifier (the head reads the '
                 f'class token), got {neck!r}')


def _check_reachable(cost: ViTCost, budget: float, gating: bool) -> None:
    """The budget must lie above the smallest FLOPs the structure can reach."""
    reachable = min_flops_fraction(cost, gating)
    Keys('model').require(
        'budget', budget >= reachable,
        f'{budget} is below what the structure can reach: at least {reachable:.4f} of the '
        f'dense FLOPs (every block keeps >= 1 head, 1 value dim per head and 1 neuron'
        + ('' if gating else '; block_gating=None: no block can be skipped')
        + f'). Raise the budget to >= {reachable:.4f}'
        + ('' if gating else ' or set backbone.block_gating'))


@MODELS.register_module()
class UVCClassifier(FrozenTeacherMixin, ImageClassifier):
    """mmpretrain's ``ImageClassifier`` with UVC's budget, dual variables and primal-dual step.

    **Loss** (both stages): ``loss_cls = (1 - alpha) * head loss`` and, with a teacher,
    ``loss_distill = alpha * KL(teacher || student)`` of the logits at temperature ``tau``
    (DeiT's soft distillation: ``sum KL * tau^2 / numel``, numel = batch x classes).

    **Search mode** (backbone ``mode='search'``, stage 1): :meth:`train_step` needs an
    ``OptimWrapperDict`` with the keys ``weights`` (AdamW over the network weights and patch
    gates; with ``gate_step='original'`` the block gates too), ``arch`` (SGD over
    ``arch_heads``, ``arch_neurons``, ``arch_dims``), ``gates`` (SGD over ``block_gates``;
    only with block gating), ``duals`` (SGD ascent over ``dual_heads``, ``dual_neurons``,
    ``dual_dims``) and ``flops_dual`` (SGD ascent over ``dual_flops``), as built
    by :class:`mmsparse.engine.UVCOptimWrapperConstructor`. One step: 1. task loss -> backward
    -> (clip) -> ``weights`` step; 2.-6. proximal shrinkage, then (after the warm-up epochs)
    architecture, gates and duals: :class:`~mmsparse.models.uvc_primal_dual.UVCPrimalDual`.

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
        dual_init: initial y, p, z (original 1e-3).
        gating_weight, gating_interval, gate_step, arch_grad_clip, arch_grad_clip_joint,
            arch_precondition, score_normalize, resource_penalty, resource_clip,
            least_sum_slope, removed_head_dims: the primal-dual step's settings
            (:class:`~mmsparse.models.uvc_primal_dual.UVCPrimalDual`).
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
                 gate_step: str = 'uniform', arch_grad_clip_joint: bool = False,
                 removed_head_dims: str = 'excluded', **kwargs) -> None:
        _check_args(budget, warmup_epochs, distill_alpha, distill_tau, dual_init, neck)
        backbone_cfg = copy.deepcopy(backbone) if isinstance(backbone, dict) else None
        head_cfg = copy.deepcopy(head) if isinstance(head, dict) else None
        super().__init__(backbone, neck=None, head=head, **kwargs)
        bb = self.backbone
        if not isinstance(bb, UVCVisionTransformer):
            raise ConfigError(f'model.backbone.type must be mmsparse.UVCVisionTransformer, got '
                              f'{type(bb).__name__}')
        self.warmup_epochs = warmup_epochs
        self.distill_alpha = float(distill_alpha) if distill else 0.0
        self.distill_tau = float(distill_tau)
        self.cost = bb.cost(self._head_macs())
        _check_reachable(self.cost, float(budget), bb.block_gating is not None)
        self.primal_dual = UVCPrimalDual(
            self.cost, budget, gating_weight=gating_weight, gating_interval=gating_interval,
            arch_grad_clip=arch_grad_clip, arch_precondition=arch_precondition,
            score_normalize=score_normalize, resource_penalty=resource_penalty,
            resource_clip=resource_clip, least_sum_slope=least_sum_slope,
            gate_step=gate_step, arch_grad_clip_joint=arch_grad_clip_joint,
            removed_head_dims=removed_head_dims)
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
    def budget(self) -> float:
        """The FLOPs budget (a fraction of the dense model's)."""
        return self.primal_dual.budget

    @property
    def uvc_backbone(self) -> UVCVisionTransformer:
        """The backbone, unwrapped from a DDP wrapper."""
        return unwrap_model(self.backbone)

    @property
    def duals(self) -> UVCDuals:
        """The dual variables and the gate-gradient accumulator, for the primal-dual step."""
        return UVCDuals(self.dual_heads, self.dual_neurons, self.dual_dims, self.dual_flops,
                        self.gate_grad_sum, self.gate_grad_count)

    def _head_macs(self) -> float:
        """MACs of the head on one image (its linear layers)."""
        return float(sum(m.in_features * m.out_features for m in self.head.modules()
                         if isinstance(m, nn.Linear)))

    def arch_parameters(self) -> Dict[str, List[nn.Parameter]]:
        """The parameters of each optimizer except ``weights`` (see the class docstring)."""
        bb = self.uvc_backbone
        return dict(arch=[bb.arch_heads, bb.arch_neurons, bb.arch_dims],
                    gates=[bb.block_gates] if bb.block_gating is not None else [],
                    duals=[self.dual_heads, self.dual_neurons, self.dual_dims],
                    flops_dual=[self.dual_flops])

    def shared_parameters(self) -> List[nn.Parameter]:
        """Those of :meth:`arch_parameters` that the ``weights`` optimizer trains too: the
        block gates with ``gate_step='original'`` (the original's AdamW takes every model
        parameter)."""
        if self.primal_dual.gate_step == 'original':
            return self.arch_parameters()['gates']
        return []

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
            if bb.mode == 'fixed':
                return self.fixed_flops_fraction()
            head_keep = bb.compute_masks().heads
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
        real FLOPs may sit slightly above the budget. This removes the lowest-score groups per
        MAC saved until they do not (:func:`mmsparse.ops.uvc_budget.project_to_budget`), by
        raising their architecture variables to the next integers. Blocks the gates skip are
        left out.

        Args:
            multiple: then round every running block's kept neurons and every kept head's value
                dims down to a multiple of this (see :func:`~mmsparse.ops.uvc_budget.
                project_to_budget`); the neuron and value-dim variables are then all written
                as integers.

        Returns:
            How many groups were removed.
        """
        bb = self.uvc_backbone
        before = bb.removed_counts()  # heads (L,), neurons (L,), dims (L, H)
        *after, count = project_to_budget(self.cost, bb.group_scores(), *before,
                                          bb.block_keep_hard(), self.budget, multiple)
        for i, (p, old, new) in enumerate(zip((bb.arch_heads, bb.arch_neurons, bb.arch_dims),
                                              before, after)):
            write = torch.ones_like(new, dtype=torch.bool) if multiple > 1 and i > 0 \
                else new != old  # the variables of the groups removed here, else untouched
            p.copy_(torch.where(write, new.to(p.dtype), p))
        bb.refresh_masks()
        return count

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
        check_optim_wrapper(optim_wrapper, bb.block_gating is not None)
        bb.set_epoch(self.current_epoch(), self.warmup_epochs)

        # 1. weights (and, by the same backward, the task gradient of the block gates)
        ow = optim_wrapper['weights']
        with ow.optim_context(self):
            data = self.data_preprocessor(data, True)
            losses = self._run_forward(data, mode='loss')
        parsed, log_vars = self.parse_losses(losses)
        ow.backward(ow.scale_loss(parsed))
        sync_task_gradients(bb, ow)
        if ow.should_update():
            ow.step()
            # gate_step='original': the gates are in this optimizer too; their task gradient
            # (clipped with the weights', unscaled by its scaler) also feeds the gate step
            shared = self.shared_parameters()
            kept = [None if p.grad is None else p.grad.clone() for p in shared]
            ow.zero_grad()
            for p, grad in zip(shared, kept):
                p.grad = grad if grad is None or bool(torch.isfinite(grad).all()) else None
        # 2.-6. proximal shrinkage, architecture, gates, duals
        self.primal_dual(bb, self.duals, optim_wrapper, float(ow.get_lr()['lr'][0]))
        return self._log(log_vars, bb.warmup)

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
