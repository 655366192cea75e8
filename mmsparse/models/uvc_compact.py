"""The physically smaller ViT that UVC's compaction writes (:mod:`mmsparse.compaction.uvc`).

:class:`UVCCompactVisionTransformer` is a plain ViT (DeiT layout, mmpretrain key names
``patch_embed``, ``cls_token``, ``pos_embed``, ``layers.N.ln1/attn.qkv/attn.proj/ln2/ffn.layers``,
``ln1``) whose blocks each have their own structure:

- ``v_dims``: one value / output dim count per kept head. Queries and keys keep ``head_dims``
  (UVC never prunes them), so ``attn.qkv`` has ``2 * heads * head_dims + sum(v_dims)`` outputs
  (all queries, then all keys, then the values head by head) and ``attn.proj`` has
  ``sum(v_dims)`` inputs. Consecutive heads with the same value dim run in one
  ``scaled_dot_product_attention`` call (the compaction orders heads so that equal dims are
  adjacent). An empty list removes the attention branch (and its LayerNorm).
- ``feedforward_channels``: MLP hidden width; 0 removes the MLP branch.

Skipped blocks are simply absent. It loads and runs as the backbone of a normal mmpretrain
``ImageClassifier``; :func:`mmsparse.analysis.count_flops` counts exactly the MACs of UVC's
resource function for its architecture.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn.bricks.transformer import FFN, PatchEmbed
from mmengine.model import BaseModule, ModuleList
from mmengine.model.weight_init import trunc_normal_
from mmpretrain.models.backbones.base_backbone import BaseBackbone
from mmpretrain.models.utils import build_norm_layer, resize_pos_embed, to_2tuple
from torch import Tensor, nn

from mmsparse.errors import ConfigError
from mmsparse.registry import MODELS

__all__ = ['UVCCompactAttention', 'UVCCompactLayer', 'UVCCompactVisionTransformer',
           'head_groups']


def head_groups(v_dims: Sequence[int]) -> List[Tuple[int, int, int, int]]:
    """Runs of consecutive heads with equal value dims.

    Returns:
        ``(first_head, num_heads, v_dim, first_value_column)`` per run.
    """
    groups, col, h = [], 0, 0
    while h < len(v_dims):
        n = 1
        while h + n < len(v_dims) and v_dims[h + n] == v_dims[h]:
            n += 1
        groups.append((h, n, int(v_dims[h]), col))
        col += n * int(v_dims[h])
        h += n
    return groups


class UVCCompactAttention(BaseModule):
    """Multi-head attention whose heads keep full query / key dims and their own value dims.

    Args:
        embed_dims: C.
        head_dims: query / key dims of every head (the dense head dim; also sets the scale).
        v_dims: value (= output) dims of each head, >= 1 each.
        qkv_bias: bias of ``qkv``.
    """

    def __init__(self, embed_dims: int, head_dims: int, v_dims: Sequence[int],
                 qkv_bias: bool = True, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if not v_dims or min(v_dims) < 1:
            raise ConfigError(f'v_dims must be a non-empty list of positive ints, got {v_dims}')
        self.embed_dims = embed_dims
        self.head_dims = head_dims
        self.v_dims = [int(d) for d in v_dims]
        self.num_heads = len(self.v_dims)
        self.qk_channels = self.num_heads * head_dims
        self.v_channels = sum(self.v_dims)
        self.groups = head_groups(self.v_dims)
        self.qkv = nn.Linear(embed_dims, 2 * self.qk_channels + self.v_channels, bias=qkv_bias)
        self.proj = nn.Linear(self.v_channels, embed_dims)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (B, N, C). Returns (B, N, C)."""
        B, N, _ = x.shape
        H, hd, qk = self.num_heads, self.head_dims, self.qk_channels
        qkv = self.qkv(x)
        q = qkv[..., :qk].reshape(B, N, H, hd).transpose(1, 2)
        k = qkv[..., qk:2 * qk].reshape(B, N, H, hd).transpose(1, 2)
        v = qkv[..., 2 * qk:]
        outs = []
        for h0, nh, d, c0 in self.groups:
            vg = v[..., c0:c0 + nh * d].reshape(B, N, nh, d).transpose(1, 2)
            o = F.scaled_dot_product_attention(q[:, h0:h0 + nh], k[:, h0:h0 + nh], vg)
            outs.append(o.transpose(1, 2).reshape(B, N, nh * d))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return self.proj(out)


class UVCCompactLayer(BaseModule):
    """A pre-norm transformer block with a :class:`UVCCompactAttention` and an FFN of any width.

    Args:
        embed_dims: C.
        head_dims: query / key dims per head.
        v_dims: value dims per head; empty: no attention branch.
        feedforward_channels: MLP hidden width; 0: no MLP branch.
        qkv_bias: bias of ``qkv``.
        norm_cfg: the LayerNorm config.
    """

    def __init__(self, embed_dims: int, head_dims: int, v_dims: Sequence[int],
                 feedforward_channels: int, qkv_bias: bool = True,
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if v_dims:
            self.ln1 = build_norm_layer(norm_cfg, embed_dims)
            self.attn = UVCCompactAttention(embed_dims, head_dims, v_dims, qkv_bias)
        else:
            self.ln1 = self.attn = None
        if feedforward_channels > 0:
            self.ln2 = build_norm_layer(norm_cfg, embed_dims)
            self.ffn = FFN(embed_dims=embed_dims, feedforward_channels=feedforward_channels,
                           num_fcs=2, ffn_drop=0., dropout_layer=None,
                           act_cfg=dict(type='GELU'))
        else:
            self.ln2 = self.ffn = None

    def forward(self, x: Tensor) -> Tensor:
        if self.attn is not None:
            x = x + self.attn(self.ln1(x))
        if self.ffn is not None:
            x = self.ffn(self.ln2(x), identity=x)
        return x


@MODELS.register_module()
class UVCCompactVisionTransformer(BaseBackbone):
    """A DeiT-layout ViT with per-block head counts, per-head value dims and MLP widths.

    Args:
        embed_dims: C.
        head_dims: query / key dims of every head (the dense model's ``C / H``).
        layers: one dict per (kept) block: ``dict(v_dims=[...], feedforward_channels=F)``.
        img_size, patch_size, in_channels: as mmpretrain's ``VisionTransformer``.
        qkv_bias: bias of ``qkv``.
        norm_cfg: LayerNorm config (DeiT: ``dict(type='LN', eps=1e-6)``).
        final_norm: LayerNorm after the last block.
        interpolate_mode: position-embedding resize mode for other input sizes.
        dense_num_layers: how many blocks the dense model had (informational).
        out_type: only 'cls_token'.
    """

    num_extra_tokens = 1

    def __init__(self, embed_dims: int, head_dims: int, layers: Sequence[dict],
                 img_size: int = 224, patch_size: int = 16, in_channels: int = 3,
                 qkv_bias: bool = True, norm_cfg: dict = dict(type='LN', eps=1e-6),
                 final_norm: bool = True, interpolate_mode: str = 'bicubic',
                 dense_num_layers: Optional[int] = None, out_type: str = 'cls_token',
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        if out_type != 'cls_token':
            raise ConfigError(f"out_type must be 'cls_token', got {out_type!r}")
        for i, layer in enumerate(layers):
            if set(layer) - {'v_dims', 'feedforward_channels'}:
                raise ConfigError(f'layers[{i}]: keys must be v_dims and feedforward_channels, '
                                  f'got {sorted(layer)}')
        self.embed_dims = embed_dims
        self.head_dims = head_dims
        self.arch_layers = [dict(v_dims=[int(d) for d in layer.get('v_dims', [])],
                                 feedforward_channels=int(layer.get('feedforward_channels', 0)))
                            for layer in layers]
        self.num_layers = len(self.arch_layers)
        self.dense_num_layers = dense_num_layers
        self.img_size = to_2tuple(img_size)
        self.out_type = out_type
        self.patch_embed = PatchEmbed(in_channels=in_channels, input_size=img_size,
                                      embed_dims=embed_dims, conv_type='Conv2d',
                                      kernel_size=patch_size, stride=patch_size, bias=True)
        self.patch_resolution = self.patch_embed.init_out_size
        num_patches = self.patch_resolution[0] * self.patch_resolution[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dims))
        self.interpolate_mode = interpolate_mode
        self.layers = ModuleList([
            UVCCompactLayer(embed_dims, head_dims, layer['v_dims'],
                            layer['feedforward_channels'], qkv_bias, norm_cfg)
            for layer in self.arch_layers])
        self.final_norm = final_norm
        if final_norm:
            self.ln1 = build_norm_layer(norm_cfg, embed_dims)

    def init_weights(self) -> None:
        super().init_weights()
        if not (isinstance(self.init_cfg, dict) and self.init_cfg['type'] == 'Pretrained'):
            trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: Tensor) -> Tuple[Tensor]:
        """Args: x images (B, C_in, H, W). Returns ``(cls_token (B, C),)``."""
        B = x.shape[0]
        x, patch_resolution = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        x = x + resize_pos_embed(self.pos_embed, self.patch_resolution, patch_resolution,
                                 mode=self.interpolate_mode, num_extra_tokens=1)
        for layer in self.layers:
            x = layer(x)
        if self.final_norm:
            x = self.ln1(x)
        return (x[:, 0], )
