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
  Its blocks are the one :class:`~mmsparse.models.layers.EncoderLayer`: the masks enter as
  its ``v_mask`` (head output dims) and ``neuron_mask`` (MLP hidden neurons) arguments.
- the classifier (budget, duals, teacher, primal-dual ``train_step``) is
  :class:`mmsparse.models.uvc_classifier.UVCClassifier`; the compact model UVC's compaction
  writes is :class:`mmsparse.models.layers.compact_vit.UVCCompactVisionTransformer`.

Names against the paper / original code: ``s[:, 0] = arch_heads``, ``s[:, 1] = arch_neurons``,
``r = arch_dims``, ``y = [dual_heads, dual_neurons]``, ``p = dual_dims``, ``z = dual_flops``.
"""
import math
from typing import Dict, List, Optional, Tuple, Union

import torch
from mmengine.model import ModuleList
from mmpretrain.models.backbones.vision_transformer import VisionTransformer
from torch import Tensor, nn

from mmsparse.ops.uvc import (UVCMasks, ViTCost, gate_keep_hard, gate_keep_prob,
                              gate_keep_sample, group_scores, uvc_masks)
from mmsparse.registry import MODELS
from mmsparse.validation import Keys
from ._vit_utils import vit_layer_cfgs, vit_tokens
from .layers.encoder import EncoderLayer

__all__ = ['UVCVisionTransformer']

# the upper bounds of s and r stay just below the group count: >= 1 group always remains
_BOUND_EPS = 1e-8
_KEYS = Keys('model.backbone')


_MODES = ('search', 'fixed')
_GATINGS = ('gumbel', 'soft_l0', None)


def _check_args(mode, block_gating, gumbel_tau, gumbel_hard, gate_init, soft_l0_eps,
                soft_l0_eps_decay, warmup_block_keep, patch_gating, kwargs) -> None:
    """Build-time checks of the UVC backbone arguments (and of the ViT ones UVC restricts)."""
    k = _KEYS
    k.require('mode', mode in _MODES,
              f"must be 'search' (stage 1) or 'fixed' (stage 2), got {mode!r}")
    k.require('block_gating', block_gating in _GATINGS,
              f"must be 'gumbel', 'soft_l0' or None, got {block_gating!r}")
    k.number('gumbel_tau', gumbel_tau, 0, low_open=True)
    k.require('gumbel_hard=True', not (gumbel_hard and block_gating != 'gumbel'),
              f"contradicts block_gating={block_gating!r}: hard Gumbel samples need "
              f"block_gating='gumbel'")
    k.require('gumbel_hard=True', not (gumbel_hard and mode == 'fixed'),
              "contradicts mode='fixed': a fixed architecture runs or skips each block "
              "deterministically")
    k.number('soft_l0_eps', soft_l0_eps, 0, low_open=True)
    k.number('soft_l0_eps_decay', soft_l0_eps_decay, 0, 1, low_open=True)
    k.number('warmup_block_keep', warmup_block_keep, 0, 1, low_open=True)
    k.require(f'warmup_block_keep={warmup_block_keep}',
              block_gating is not None or warmup_block_keep == 1.0,
              'contradicts block_gating=None (without gates every block always runs)')
    k.require('gate_init', len(tuple(gate_init)) == 2,
              f'must be (skip, run) logits, got {gate_init!r}')
    k.require('patch_gating=True', not (patch_gating and mode == 'fixed'),
              "contradicts mode='fixed': patch gating is a stage-1 device (the original drops "
              "it in stage 2) and cannot be compacted")
    out_type = kwargs.get('out_type', 'cls_token')
    k.require('out_type', out_type == 'cls_token',
              f"must be 'cls_token' for UVC, got {out_type!r}")
    k.require('with_cls_token', kwargs.get('with_cls_token', True), 'must be True for UVC')
    k.require('layer_scale_init_value', not kwargs.get('layer_scale_init_value', 0.),
              'must be 0 for UVC (DeiT layout)')
    k.require('pre_norm', not kwargs.get('pre_norm', False),
              'must be False for UVC (DeiT layout)')


def _layer_cfgs(vit: VisionTransformer, kwargs: dict) -> List[dict]:
    """The per-layer arguments of ``VisionTransformer.__init__``; UVC masks the neurons
    of a 2-layer MLP (:attr:`EncoderLayer.fc1` / ``fc2``)."""
    cfgs = vit_layer_cfgs(vit, kwargs)
    for cfg in cfgs:
        # (vit_layer_cfgs already refuses an ffn_type other than mmcv's 'origin')
        _KEYS.require('layer_cfgs', cfg.get('num_fcs', 2) == 2,
                      'must keep the 2-layer FFN whose neurons UVC masks (num_fcs=2)')
    return cfgs


def _build_layer(cfg: dict) -> EncoderLayer:
    """One block. Its attention's initial weights are drawn after the MLP's, as they were
    when the block was mmpretrain's layer with its attention replaced: a seeded build (no
    checkpoint) gives the weights it always gave."""
    layer = EncoderLayer(**cfg)
    layer.attn.qkv.reset_parameters()
    layer.attn.proj.reset_parameters()
    return layer


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
    MODES = _MODES
    GATINGS = _GATINGS
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
        _check_args(mode, block_gating, gumbel_tau, gumbel_hard, gate_init, soft_l0_eps,
                    soft_l0_eps_decay, warmup_block_keep, patch_gating, kwargs)
        _KEYS.boolean('eval_masked', eval_masked)
        _KEYS.boolean('train_masked', train_masked)
        super().__init__(arch=arch, **kwargs)
        _KEYS.require('out_indices', self.out_indices == [self.num_layers - 1],
                      f'must be -1 (the last block) for UVCVisionTransformer, got '
                      f'{kwargs.get("out_indices")!r}')
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
        _KEYS.require('arch', self.embed_dims % self.num_heads == 0,
                      f'must have embed_dims divisible by num_heads, got {self.embed_dims} and '
                      f'{self.num_heads}')
        self.head_dims = self.embed_dims // self.num_heads
        self.num_patches = self.patch_resolution[0] * self.patch_resolution[1]
        # True while the classifier runs the warm-up epochs (gates frozen, fixed block weight)
        self.warmup = False

        self.layers = ModuleList([_build_layer(cfg) for cfg in _layer_cfgs(self, kwargs)])
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
        conv = self.patch_embed.projection
        return ViTCost.of_vit(
            self.num_layers, self.num_patches, self.num_extra_tokens, self.embed_dims,
            self.num_heads, self.head_dims, self.mlp_dims,
            self.embed_dims * conv.in_channels // conv.groups * math.prod(conv.kernel_size),
            self.final_norm, head_macs)

    def group_scores(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``(head (L, H), dim (L, H, hd), neuron (L, F))`` scores of the current weights."""
        proj = torch.stack([layer.attn.proj.weight for layer in self.layers])
        fc2 = torch.stack([layer.fc2.weight for layer in self.layers])
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
                    x = layer(x, v_mask=v_masks[i], neuron_mask=n_masks[i])
        else:
            weights = self._soft_block_weights()
            masked = self.training and self.train_masked
            for i, layer in enumerate(self.layers):
                out = layer(x, v_mask=self.mask_dims[i], neuron_mask=self.mask_neurons[i]) \
                    if masked else layer(x)
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
