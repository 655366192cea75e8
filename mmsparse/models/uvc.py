"""UVC (Unified ViT Compression, Yu et al., ICLR 2022): a gated ViT and its primal-dual training.

Parts (all state_dict-compatible with mmpretrain's ``VisionTransformer``; model-zoo DeiT
checkpoints load unchanged, the UVC variables are extra keys):

- :class:`UVCVisionTransformer`: the gated backbone. Per block: heads removed, value / output dims
  removed inside the remaining heads, MLP neurons removed (architecture variables ``arch_heads``
  (L,), ``arch_neurons`` (L,), ``arch_dims`` (L, H), used through ``ceil``), a block gate
  (``block_gates`` (L, 2): Gumbel-softmax or soft-L0) and optional patch gating. Mode
  ``'search'`` (stage 1): the training forward is unmasked with soft block gates, the eval
  forward applies the current hard masks and hard gates. Mode ``'fixed'`` (stage 2): the masks
  stored in the buffers ``mask_*`` (written by stage 1, loaded from its checkpoint) are applied
  in every forward, blocks run iff their gate says so.
- :class:`UVCClassifier`: mmpretrain's ``ImageClassifier`` with the budget, the dual variables
  (``dual_heads`` (L,), ``dual_neurons`` (L,), ``dual_dims`` (L, H), ``dual_flops`` (1,)), the
  frozen dense teacher (DeiT soft distillation) and, in search mode, its own ``train_step``: one
  primal-dual step with the optimizers of an ``OptimWrapperDict`` (built by
  :class:`mmsparse.engine.UVCOptimWrapperConstructor`).

Names against the paper / original code: ``s[:, 0] = arch_heads``, ``s[:, 1] = arch_neurons``,
``r = arch_dims``, ``y = [dual_heads, dual_neurons]``, ``p = dual_dims``, ``z = dual_flops``.
"""
import copy
import math
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.logging import MessageHub
from mmengine.model import ModuleList
from mmengine.registry import MODEL_WRAPPERS
from mmengine.optim import OptimWrapperDict
from mmpretrain.models.backbones.vision_transformer import (TransformerEncoderLayer,
                                                            VisionTransformer)
from mmpretrain.models.classifiers import ImageClassifier
from mmpretrain.models.utils import MultiheadAttention
from torch import Tensor, nn

from mmsparse.errors import ConfigError
from mmsparse.ops.uvc import (LEAST_SUM_SLOPES, UVCMasks, ViTCost, clip_inf_norm, gate_keep_hard,
                              gate_keep_prob, gate_keep_sample, group_flops_fractions,
                              group_scores, least_sum, min_flops_fraction, project_grad,
                              prox_factors, uvc_flops_fraction, uvc_masks)
from mmsparse.registry import MODELS
from ._vit_utils import vit_layer_cfgs, vit_tokens
from .teacher import FrozenTeacherMixin
from .uvc_compact import UVCCompactVisionTransformer  # noqa: F401  (registers it)

__all__ = ['UVCAttention', 'UVCEncoderLayer', 'UVCVisionTransformer', 'UVCClassifier',
           'UVCCompactVisionTransformer', 'UVCDistributedDataParallel', 'UVC_OPTIMIZERS']

# the optimizers of a search-mode train_step (keys of the OptimWrapperDict)
UVC_OPTIMIZERS = ('weights', 'arch', 'gates', 'duals', 'flops_dual')
# the upper bounds of s and r stay just below the group count: >= 1 group always remains
_BOUND_EPS = 1e-8


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside a (DDP) wrapper."""
    return module.module if hasattr(module, 'module') and isinstance(module.module,
                                                                       nn.Module) else module


class UVCAttention(MultiheadAttention):
    """mmpretrain's ``MultiheadAttention`` (same keys) whose output dims can be masked.

    ``forward(x, v_mask)`` multiplies the attention output of head h, dim j (i.e. the value dim
    j of head h, the input column ``h * hd + j`` of ``proj``) by ``v_mask[h, j]``. A 0 there
    equals removing that value row of ``qkv`` and that column of ``proj``.
    """

    def forward(self, x: Tensor, v_mask: Optional[Tensor] = None) -> Tensor:
        """Args: x (B, N, C); v_mask (H, hd) 0/1 or None. Returns (B, N, C)."""
        if v_mask is None:
            return super().forward(x)
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dims).permute(2, 0, 3, 1, 4)
        attn_drop = self.attn_drop if self.training else 0.
        out = self.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=attn_drop)
        out = out * v_mask.to(out.dtype).unsqueeze(1)  # (B, H, N, hd) * (H, 1, hd)
        out = out.transpose(1, 2).reshape(B, N, self.embed_dims)
        out = self.proj(out)
        return self.out_drop(self.gamma1(self.proj_drop(out)))


class UVCEncoderLayer(TransformerEncoderLayer):
    """mmpretrain's ``TransformerEncoderLayer`` (same arguments and keys) with UVC masks."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 layer_scale_init_value: float = 0., drop_rate: float = 0.,
                 attn_drop_rate: float = 0., drop_path_rate: float = 0., qkv_bias: bool = True,
                 **kwargs) -> None:
        super().__init__(embed_dims, num_heads, feedforward_channels,
                         layer_scale_init_value=layer_scale_init_value, drop_rate=drop_rate,
                         attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                         qkv_bias=qkv_bias, **kwargs)
        self.attn = UVCAttention(
            embed_dims=embed_dims, num_heads=num_heads, attn_drop=attn_drop_rate,
            proj_drop=drop_rate, dropout_layer=dict(type='DropPath', drop_prob=drop_path_rate),
            qkv_bias=qkv_bias, layer_scale_init_value=layer_scale_init_value)
        if len(self.ffn.layers) != 3:
            raise ConfigError('UVCEncoderLayer needs a 2-layer FFN (num_fcs=2)')

    def forward(self, x: Tensor, v_mask: Optional[Tensor] = None,
                neuron_mask: Optional[Tensor] = None) -> Tensor:
        """Args: x (B, N, C); v_mask (H, hd) or None; neuron_mask (F,) or None."""
        x = x + self.attn(self.ln1(x), v_mask)
        if neuron_mask is None:
            return self.ffn(self.ln2(x), identity=x)
        ffn = self.ffn
        h = ffn.layers[0](self.ln2(x)) * neuron_mask.to(x.dtype)  # fc1 -> act -> drop, masked
        out = ffn.gamma2(ffn.layers[2](ffn.layers[1](h)))
        return x + ffn.dropout_layer(out)


@MODELS.register_module()
class UVCVisionTransformer(VisionTransformer):
    """mmpretrain's ``VisionTransformer`` with UVC's architecture variables, masks and gates.

    Takes every ``VisionTransformer`` argument (``arch='deit-tiny' | 'deit-small' | ...`` or a
    dict, ``img_size``, ``patch_size``, ``drop_path_rate``, ``init_cfg`` ...) and keeps its
    state_dict keys. New keys: ``arch_heads`` (L,), ``arch_neurons`` (L,), ``arch_dims`` (L, H)
    (parameters updated by the classifier's primal-dual step, not by backprop of the task loss),
    ``block_gates`` (L, 2) (column 0 = skip, 1 = run), ``patch_gates`` (1, patches, 1) if
    ``patch_gating``, and the buffers ``mask_heads`` (L, H), ``mask_dims`` (L, H, hd),
    ``mask_neurons`` (L, F), ``mask_blocks`` (L,) and ``soft_l0_eps``.

    Args:
        arch: a ``VisionTransformer`` arch.
        mode: 'search' (stage 1: masks follow the architecture variables, recomputed from the
            weights' group scores; training forward unmasked with soft gates, eval forward hard)
            or 'fixed' (stage 2: the stored masks and block decisions, every forward).
        block_gating: 'gumbel' (original default), 'soft_l0', or None (no block skipping).
        gumbel_tau: Gumbel-softmax temperature (original 0.5).
        gumbel_hard: straight-through hard Gumbel samples in training (original False).
        gate_init: initial (skip, run) logits of every block (original (-1, 1)).
        soft_l0_eps: soft-L0 epsilon at the start (original 0.1).
        soft_l0_eps_decay: its decay per epoch after the warm-up (original 0.92).
        warmup_block_keep: block output weight d during the warm-up epochs, when the gates are
            frozen: ``x <- d * block(x) + (1 - d) * x``. Default 1.0 (blocks run unchanged); the
            original uses 0.5.
        patch_gating: multiply the patch tokens by ``sigmoid(patch_gates)`` (the original's
            ``enable_patch_gating=1``; trained with the weights, ignored by the resource
            function, not kept in stage 2). Search mode only.
        patch_gating_init: initial ``patch_gates`` value (original 3: sigmoid 0.953).
        eval_masked: in search mode, evaluate the hard architecture (masks and block decisions);
            False: unmasked weights and blocks weighted by their keep probability.
        train_masked: in search mode, the training forward applies the current masks (those
            of the last step) with the soft block gates, so the weights train on the
            architecture being searched. Default False: the original trains the unmasked model
            and relies on the proximal shrinkage to fade the removed groups out.
        **kwargs: the other ``VisionTransformer`` arguments. ``out_type`` must be 'cls_token',
            ``layer_scale_init_value`` 0 and ``pre_norm`` False (DeiT's layout).
    """
    MODES = ('search', 'fixed')
    GATINGS = ('gumbel', 'soft_l0', None)
    # arguments of this class that a dense VisionTransformer does not take
    UVC_KEYS = ('mode', 'block_gating', 'gumbel_tau', 'gumbel_hard', 'gate_init', 'soft_l0_eps',
                'soft_l0_eps_decay', 'warmup_block_keep', 'patch_gating', 'patch_gating_init',
                'eval_masked', 'train_masked')

    def __init__(self, arch: Union[str, dict] = 'deit-small', mode: str = 'search',
                 block_gating: Optional[str] = 'gumbel', gumbel_tau: float = 0.5,
                 gumbel_hard: bool = False, gate_init: Tuple[float, float] = (-1.0, 1.0),
                 soft_l0_eps: float = 0.1, soft_l0_eps_decay: float = 0.92,
                 warmup_block_keep: float = 1.0, patch_gating: bool = False,
                 patch_gating_init: float = 3.0, eval_masked: bool = True,
                 train_masked: bool = False, **kwargs) -> None:
        self._check_args(mode, block_gating, gumbel_tau, gumbel_hard, gate_init, soft_l0_eps,
                         soft_l0_eps_decay, warmup_block_keep, patch_gating, kwargs)
        for key, value in (('eval_masked', eval_masked), ('train_masked', train_masked)):
            if not isinstance(value, bool):
                raise ConfigError(f'backbone.{key} must be True or False, got {value!r}')
        super().__init__(arch=arch, **kwargs)
        if self.out_indices != [self.num_layers - 1]:
            raise ConfigError(f'out_indices must be -1 (the last block) for UVCVisionTransformer, '
                              f'got {kwargs.get("out_indices")!r}')
        self.mode = mode
        self.block_gating = block_gating
        self.gumbel_tau = float(gumbel_tau)
        self.gumbel_hard = bool(gumbel_hard)
        self.soft_l0_eps0 = float(soft_l0_eps)
        self.soft_l0_eps_decay = float(soft_l0_eps_decay)
        self.warmup_block_keep = float(warmup_block_keep)
        self.eval_masked = eval_masked
        self.train_masked = train_masked
        self.num_heads = self.arch_settings['num_heads']
        self.mlp_dims = self.arch_settings['feedforward_channels']
        if self.embed_dims % self.num_heads:
            raise ConfigError(f'embed_dims {self.embed_dims} must be divisible by num_heads '
                              f'{self.num_heads}')
        self.head_dims = self.embed_dims // self.num_heads
        self.num_patches = self.patch_resolution[0] * self.patch_resolution[1]
        # True while the classifier runs the warm-up epochs (gates frozen, fixed block weight)
        self.warmup = False

        self.layers = ModuleList([UVCEncoderLayer(**cfg) for cfg in vit_layer_cfgs(self, kwargs)])
        if self.frozen_stages > 0:
            self._freeze_stages()

        L, H, hd, Fd = self.num_layers, self.num_heads, self.head_dims, self.mlp_dims
        # architecture variables: updated by the primal-dual step, never by task backprop
        self.arch_heads = nn.Parameter(torch.zeros(L), requires_grad=False)
        self.arch_neurons = nn.Parameter(torch.zeros(L), requires_grad=False)
        self.arch_dims = nn.Parameter(torch.zeros(L, H), requires_grad=False)
        self.block_gates = nn.Parameter(torch.tensor([list(gate_init)] * L, dtype=torch.float32),
                                        requires_grad=block_gating is not None and mode == 'search')
        self.patch_gates = nn.Parameter(
            torch.full((1, self.num_patches, 1), float(patch_gating_init))) if patch_gating \
            else None
        self.register_buffer('soft_l0_eps', torch.tensor(float(soft_l0_eps)))
        self.register_buffer('mask_heads', torch.ones(L, H))
        self.register_buffer('mask_dims', torch.ones(L, H, hd))
        self.register_buffer('mask_neurons', torch.ones(L, Fd))
        self.register_buffer('mask_blocks', torch.ones(L))

    # ---- validation --------------------------------------------------------------------------
    @classmethod
    def _check_args(cls, mode, block_gating, gumbel_tau, gumbel_hard, gate_init, soft_l0_eps,
                    soft_l0_eps_decay, warmup_block_keep, patch_gating, kwargs) -> None:
        if mode not in cls.MODES:
            raise ConfigError(f"backbone.mode must be 'search' (stage 1) or 'fixed' (stage 2), "
                              f'got {mode!r}')
        if block_gating not in cls.GATINGS:
            raise ConfigError(f"backbone.block_gating must be 'gumbel', 'soft_l0' or None, got "
                              f'{block_gating!r}')
        if not (isinstance(gumbel_tau, (int, float)) and gumbel_tau > 0):
            raise ConfigError(f'backbone.gumbel_tau must be > 0, got {gumbel_tau!r}')
        if gumbel_hard and block_gating != 'gumbel':
            raise ConfigError(f"backbone.gumbel_hard=True contradicts block_gating="
                              f"{block_gating!r}: hard Gumbel samples need block_gating='gumbel'")
        if gumbel_hard and mode == 'fixed':
            raise ConfigError("backbone.gumbel_hard=True contradicts mode='fixed': a fixed "
                              "architecture runs or skips each block deterministically")
        if not (isinstance(soft_l0_eps, (int, float)) and soft_l0_eps > 0):
            raise ConfigError(f'backbone.soft_l0_eps must be > 0, got {soft_l0_eps!r}')
        if not (isinstance(soft_l0_eps_decay, (int, float)) and 0 < soft_l0_eps_decay <= 1):
            raise ConfigError(f'backbone.soft_l0_eps_decay must be in (0, 1], got '
                              f'{soft_l0_eps_decay!r}')
        if not (isinstance(warmup_block_keep, (int, float)) and 0 < warmup_block_keep <= 1):
            raise ConfigError(f'backbone.warmup_block_keep must be in (0, 1], got '
                              f'{warmup_block_keep!r}')
        if block_gating is None and warmup_block_keep != 1.0:
            raise ConfigError(f'backbone.warmup_block_keep={warmup_block_keep} contradicts '
                              f'block_gating=None (without gates every block always runs)')
        if len(tuple(gate_init)) != 2:
            raise ConfigError(f'backbone.gate_init must be (skip, run) logits, got {gate_init!r}')
        if patch_gating and mode == 'fixed':
            raise ConfigError("backbone.patch_gating=True contradicts mode='fixed': patch gating "
                              "is a stage-1 device (the original drops it in stage 2) and cannot "
                              "be compacted")
        if kwargs.get('out_type', 'cls_token') != 'cls_token':
            raise ConfigError(f"backbone.out_type must be 'cls_token' for UVC, got "
                              f"{kwargs['out_type']!r}")
        if not kwargs.get('with_cls_token', True):
            raise ConfigError('backbone.with_cls_token must be True for UVC')
        if kwargs.get('layer_scale_init_value', 0.):
            raise ConfigError('backbone.layer_scale_init_value must be 0 for UVC (DeiT layout)')
        if kwargs.get('pre_norm', False):
            raise ConfigError('backbone.pre_norm must be False for UVC (DeiT layout)')

    # ---- architecture ------------------------------------------------------------------------
    @property
    def bounds(self) -> Dict[str, float]:
        """Upper bounds of the architecture variables (lower bounds are 0)."""
        return dict(arch_heads=self.num_heads - 1 - _BOUND_EPS,
                    arch_neurons=self.mlp_dims - 1 - _BOUND_EPS,
                    arch_dims=self.head_dims - 1 - _BOUND_EPS)

    def cost(self, head_macs: float = 0.0) -> ViTCost:
        """The :class:`~mmsparse.ops.uvc.ViTCost` of this backbone at ``img_size``.

        Args:
            head_macs: MACs of the classification head (added to the fixed MACs).
        """
        n, c = self.num_patches + self.num_extra_tokens, self.embed_dims
        conv = self.patch_embed.projection
        embed = self.num_patches * c * conv.in_channels // conv.groups * math.prod(
            conv.kernel_size)
        final = 5 * n * c if self.final_norm else 0
        return ViTCost(num_layers=self.num_layers, num_tokens=n, embed_dims=c,
                       num_heads=self.num_heads, head_dims=self.head_dims,
                       mlp_dims=self.mlp_dims, fixed_macs=float(embed + final + head_macs),
                       norm_macs=float(2 * 5 * n * c))

    def group_scores(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``(head (L, H), dim (L, H, hd), neuron (L, F))`` scores of the current weights."""
        proj = torch.stack([layer.attn.proj.weight for layer in self.layers])
        fc2 = torch.stack([layer.ffn.layers[1].weight for layer in self.layers])
        return group_scores(proj, fc2, self.num_heads)

    def removed_counts(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``ceil`` of the architecture variables: heads (L,), neurons (L,), dims (L, H)."""
        return (torch.ceil(self.arch_heads.detach()).long(),
                torch.ceil(self.arch_neurons.detach()).long(),
                torch.ceil(self.arch_dims.detach()).long())

    @torch.no_grad()
    def compute_masks(self, scores: Optional[Tuple[Tensor, Tensor, Tensor]] = None) -> UVCMasks:
        """Masks of the current architecture variables and weights (search mode's rule)."""
        head_s, dim_s, neuron_s = scores if scores is not None else self.group_scores()
        heads, neurons, dims = self.removed_counts()
        return uvc_masks(head_s, dim_s, neuron_s, heads, dims, neurons)

    def block_keep_hard(self) -> Tensor:
        """(L,) bool: which blocks run in the hard architecture."""
        if self.block_gating is None:
            return torch.ones(self.num_layers, dtype=torch.bool, device=self.block_gates.device)
        return gate_keep_hard(self.block_gates.detach(), self.block_gating,
                              float(self.soft_l0_eps))

    def block_keep_prob(self, gates: Optional[Tensor] = None) -> Optional[Tensor]:
        """(L,) noise-free keep probability (differentiable w.r.t. ``gates``), None without
        gating or during the warm-up (then every block counts fully)."""
        if self.block_gating is None or self.warmup:
            return None
        gates = self.block_gates if gates is None else gates
        return gate_keep_prob(gates, self.block_gating, self.gumbel_tau, float(self.soft_l0_eps))

    @torch.no_grad()
    def refresh_masks(self, masks: Optional[UVCMasks] = None) -> None:
        """Write the current hard architecture into the ``mask_*`` buffers (search mode)."""
        if self.mode != 'search':
            return
        masks = masks if masks is not None else self.compute_masks()
        self.mask_heads.copy_(masks.heads)
        self.mask_dims.copy_(masks.dims)
        self.mask_neurons.copy_(masks.neurons)
        self.mask_blocks.copy_(self.block_keep_hard())

    def set_epoch(self, epoch: int, warmup_epochs: int) -> None:
        """Warm-up flag and the soft-L0 epsilon (decayed once per epoch after the warm-up)."""
        self.warmup = epoch < warmup_epochs
        decays = max(0, epoch - warmup_epochs)
        self.soft_l0_eps.fill_(self.soft_l0_eps0 * self.soft_l0_eps_decay ** decays)

    def arch_summary(self) -> List[dict]:
        """Per block of the hard architecture (from the ``mask_*`` buffers): whether it runs,
        heads kept, value dims kept per kept head, neurons kept."""
        rows = []
        for i in range(self.num_layers):
            heads = self.mask_heads[i].bool()
            rows.append(dict(block=i, runs=bool(self.mask_blocks[i] > 0),
                              heads=int(heads.sum()),
                              v_dims=[int(d) for d in self.mask_dims[i].sum(-1)[heads]],
                              neurons=int(self.mask_neurons[i].sum())))
        return rows

    # ---- forward -----------------------------------------------------------------------------
    def _hard(self) -> bool:
        return self.mode == 'fixed' or (not self.training and self.eval_masked)

    def forward(self, x: Tensor) -> Tuple[Tensor]:
        """Args: x images (B, C_in, H, W). Returns ``(cls_token (B, C),)``."""
        x, patch_resolution = self.patch_embed(x)
        if self.patch_gates is not None:
            x = x * torch.sigmoid(self.patch_gates)
        x = vit_tokens(self, x, patch_resolution)

        if self._hard():
            if self.mode == 'search':
                self.refresh_masks()
            v_masks = self.mask_dims  # (L, H, hd), removed heads are all-zero rows
            n_masks = self.mask_neurons
            for i, layer in enumerate(self.layers):
                if self.mask_blocks[i] > 0:
                    x = layer(x, v_masks[i], n_masks[i])
        else:
            weights = self._soft_block_weights()
            masked = self.training and self.train_masked
            for i, layer in enumerate(self.layers):
                out = layer(x, self.mask_dims[i], self.mask_neurons[i]) if masked else layer(x)
                x = out if weights is None else weights[i] * out + (1 - weights[i]) * x
        if self.final_norm:
            x = self.ln1(x)
        return (x[:, 0], )

    def _soft_block_weights(self) -> Optional[Tensor]:
        """Block output weights of the unmasked (search) forward, or None (all 1)."""
        if self.block_gating is None:
            return None
        if self.training and self.warmup:
            if self.warmup_block_keep == 1.0:
                return None
            return self.block_gates.new_full((self.num_layers, ), self.warmup_block_keep)
        if self.training:
            return gate_keep_sample(self.block_gates, self.block_gating, self.gumbel_tau,
                                    float(self.soft_l0_eps), hard=self.gumbel_hard)
        return gate_keep_prob(self.block_gates, self.block_gating, self.gumbel_tau,
                              float(self.soft_l0_eps))


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
