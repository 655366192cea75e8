"""A plain ViT whose layers may each have their own number of heads, head width and MLP width.

This is the target of structured compaction (S²ViTE here; UVC can use it too): a physically
smaller dense model, built from a config like any mmpretrain backbone. Its state_dict keys are
those of mmpretrain's ``VisionTransformer`` (``layers.N.attn.qkv.weight``,
``layers.N.ffn.layers.0.0.weight`` ...), only the shapes are per layer; with the default
(dense) dimensions it is state_dict-compatible with ``VisionTransformer``.

- :class:`CompactAttention`: ``num_heads`` heads of ``head_dims`` channels each
  (qkv: C -> 3 * num_heads * head_dims, proj: num_heads * head_dims -> C). With 0 heads the
  branch outputs ``proj.bias`` only. Optionally records per-head first-order Taylor scores
  (for S²ViTE), from the head outputs and their gradients, with no change to the forward.
- :class:`CompactEncoderLayer`: LN -> attention -> LN -> MLP (mmcv ``FFN``, hidden width
  ``feedforward_channels``, which may be 0) with the usual residuals.
- :class:`CompactVisionTransformer`: per-layer ``num_heads`` / ``head_dims`` / ``mlp_dims`` and
  ``skip_layers`` (whole blocks replaced by the identity).
"""
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch.nn.functional as F
from mmcv.cnn.bricks.drop import build_dropout
from mmcv.cnn.bricks.transformer import FFN
from mmengine.model import BaseModule, ModuleList
from mmpretrain.models.backbones.vision_transformer import VisionTransformer
from mmpretrain.models.utils import LayerScale, build_norm_layer
from torch import Tensor, nn

from mmsparse.errors import ConfigError
from mmsparse.ops.dst import head_taylor_scores
from mmsparse.ops.tokens import softmax_with_policy
from mmsparse.registry import MODELS
from ._vit_utils import vit_layer_cfgs

__all__ = ['CompactAttention', 'CompactEncoderLayer', 'CompactVisionTransformer']

IntOrList = Union[int, Sequence[int], None]


class CompactAttention(BaseModule):
    """Multi-head self-attention with a free number of heads and head width.

    Same parameter names as mmpretrain's ``MultiheadAttention`` (``qkv``, ``proj``,
    ``gamma1``); with ``num_heads * head_dims == embed_dims`` it is the same layer.

    Args:
        embed_dims: C, the token width.
        num_heads: H >= 0 heads.
        head_dims: d >= 1 channels per head (the softmax scale is d ** -0.5).
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after ``proj``.
        dropout_layer: the residual-branch dropout (DropPath) config.
        qkv_bias: bias in ``qkv``.
        layer_scale_init_value: > 0 adds a LayerScale ``gamma1``.
    """

    def __init__(self, embed_dims: int, num_heads: int, head_dims: int, attn_drop: float = 0.,
                 proj_drop: float = 0., dropout_layer: Optional[dict] = None,
                 qkv_bias: bool = True, layer_scale_init_value: float = 0.,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_heads < 0 or head_dims < 1:
            raise ConfigError(f'num_heads must be >= 0 and head_dims >= 1, got {num_heads}, '
                              f'{head_dims}')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = head_dims
        self.attn_drop = attn_drop
        inner = num_heads * head_dims
        self.qkv = nn.Linear(embed_dims, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)
        self.out_drop = build_dropout(dropout_layer or dict(type='Dropout', drop_prob=0.))
        self.gamma1 = LayerScale(embed_dims, layer_scale_init_value=layer_scale_init_value) \
            if layer_scale_init_value > 0 else nn.Identity()
        # S²ViTE head scores: off unless a hook turns them on (see record_head_scores)
        self.record_head_scores = False
        self._score_sums: Optional[Tuple[Tensor, Tensor]] = None
        self._score_count = 0

    def forward(self, x: Tensor, policy: Optional[Tensor] = None) -> Tensor:
        """Args: x (B, N, C); policy: None, or (B, N) key weights in [0, 1] (0 = the token is
        not attended to, except by itself; see
        :func:`~mmsparse.ops.tokens.softmax_with_policy`). Returns (B, N, C)."""
        B, N, _ = x.shape
        if self.num_heads == 0:
            out = self.proj.bias.expand(B, N, self.embed_dims)
            return self.out_drop(self.gamma1(self.proj_drop(out)))
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dims).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        drop = self.attn_drop if self.training else 0.
        if policy is None:
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, H, N, d)
        else:
            attn = softmax_with_policy((q * self.head_dims**-0.5) @ k.transpose(-2, -1), policy)
            o = F.dropout(attn, p=drop) @ v
        if self.record_head_scores and self.training and o.requires_grad:
            o.register_hook(self._make_score_hook(o.detach()))
        out = self.proj(o.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dims))
        return self.out_drop(self.gamma1(self.proj_drop(out)))

    def _make_score_hook(self, out: Tensor):
        def hook(grad: Tensor) -> None:
            taylor, gnorm = head_taylor_scores(out, grad)
            if self._score_sums is None:
                self._score_sums = (taylor, gnorm)
            else:
                self._score_sums = (self._score_sums[0] + taylor, self._score_sums[1] + gnorm)
            self._score_count += 1
        return hook

    def head_scores(self) -> Optional[Tuple[Tensor, Tensor]]:
        """Mean per-head ``(taylor, grad_norm)`` (each (H,)) over the recorded backward
        passes since :meth:`reset_head_scores`, or None if none was recorded."""
        if self._score_sums is None:
            return None
        return (self._score_sums[0] / self._score_count, self._score_sums[1] / self._score_count)

    def reset_head_scores(self) -> None:
        self._score_sums, self._score_count = None, 0


class CompactEncoderLayer(BaseModule):
    """One ViT encoder layer with its own head count, head width and MLP width.

    Same structure, keys and initialisation as mmpretrain's ``TransformerEncoderLayer``.

    Args:
        embed_dims: C.
        num_heads: heads (>= 0).
        feedforward_channels: MLP hidden width (>= 0).
        head_dims: channels per head (default ``embed_dims // num_heads``).
        other args: as ``TransformerEncoderLayer``.
    """

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 head_dims: Optional[int] = None, layer_scale_init_value: float = 0.,
                 drop_rate: float = 0., attn_drop_rate: float = 0., drop_path_rate: float = 0.,
                 num_fcs: int = 2, qkv_bias: bool = True, act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN'), init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if head_dims is None:
            head_dims = embed_dims // max(num_heads, 1)
        self.embed_dims = embed_dims
        self.ln1 = build_norm_layer(norm_cfg, embed_dims)
        self.attn = CompactAttention(
            embed_dims, num_heads, head_dims, attn_drop=attn_drop_rate, proj_drop=drop_rate,
            dropout_layer=dict(type='DropPath', drop_prob=drop_path_rate), qkv_bias=qkv_bias,
            layer_scale_init_value=layer_scale_init_value)
        self.ln2 = build_norm_layer(norm_cfg, embed_dims)
        self.ffn = FFN(embed_dims=embed_dims, feedforward_channels=feedforward_channels,
                       num_fcs=num_fcs, ffn_drop=drop_rate,
                       dropout_layer=dict(type='DropPath', drop_prob=drop_path_rate),
                       act_cfg=act_cfg, layer_scale_init_value=layer_scale_init_value)

    @property
    def norm1(self):
        return self.ln1

    @property
    def norm2(self):
        return self.ln2

    def init_weights(self) -> None:
        super().init_weights()
        for m in self.ffn.modules():
            if isinstance(m, nn.Linear) and m.weight.numel() > 0:
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)

    def forward(self, x: Tensor, policy: Optional[Tensor] = None) -> Tensor:
        """Args: x (B, N, C); policy (B, N) attention key weights or None. Returns (B, N, C)."""
        x = x + self.attn(self.ln1(x), policy)
        return self.ffn(self.ln2(x), identity=x)


def _per_layer(value: IntOrList, default: int, num_layers: int, key: str,
               minimum: int) -> List[int]:
    if value is None:
        return [default] * num_layers
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        values = [int(value)] * num_layers
    elif isinstance(value, (list, tuple)) and len(value) == num_layers:
        values = list(value)
    else:
        raise ConfigError(f'{key} must be an int or a list of {num_layers} ints (one per layer), '
                          f'got {value!r}')
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise ConfigError(f'{key}: every value must be an int >= {minimum}, got {value!r}')
    return [int(v) for v in values]


@MODELS.register_module()
class CompactVisionTransformer(VisionTransformer):
    """mmpretrain's ``VisionTransformer`` with per-layer head counts, head widths, MLP widths.

    All ``VisionTransformer`` arguments are accepted (``arch``, ``img_size``, ``patch_size``,
    ``out_type``, ``drop_path_rate``, ``init_cfg`` ...). The keys of the state_dict are the
    same; the shapes of ``layers.N.attn.*`` and ``layers.N.ffn.*`` follow the per-layer sizes.

    Args:
        arch: a ``VisionTransformer`` arch name or dict; gives C, the depth and the defaults.
        num_heads: heads per layer (int for all, or a list); default the arch's.
        head_dims: channels per head (int or list); default C // arch heads.
        mlp_dims: MLP hidden width per layer (int or list); default the arch's
            ``feedforward_channels``.
        skip_layers: indices of layers replaced by the identity (no parameters).
        **kwargs: the other ``VisionTransformer`` arguments.
    """

    def __init__(self, arch: Union[str, dict] = 'deit-small', num_heads: IntOrList = None,
                 head_dims: IntOrList = None, mlp_dims: IntOrList = None,
                 skip_layers: Sequence[int] = (), **kwargs) -> None:
        super().__init__(arch=arch, **kwargs)
        L, C = self.num_layers, self.embed_dims
        arch_heads = self.arch_settings['num_heads']
        self.layer_num_heads = _per_layer(num_heads, arch_heads, L, 'num_heads', 0)
        self.layer_head_dims = _per_layer(head_dims, C // arch_heads, L, 'head_dims', 1)
        self.layer_mlp_dims = _per_layer(mlp_dims, self.arch_settings['feedforward_channels'],
                                         L, 'mlp_dims', 0)
        skip = list(skip_layers or ())
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < L for i in skip):
            raise ConfigError(f'skip_layers must be layer indices in [0, {L - 1}], got {skip!r}')
        self.skip_layers = sorted(set(skip))
        cfgs = self._layer_cfgs(kwargs)
        self.layers = ModuleList([
            nn.Identity() if i in self.skip_layers else CompactEncoderLayer(**cfgs[i])
            for i in range(L)
        ])
        if self.frozen_stages > 0:
            self._freeze_stages()

    def _layer_cfgs(self, kwargs: dict) -> List[dict]:
        """The per-layer arguments, as ``VisionTransformer.__init__`` builds them."""
        cfgs = vit_layer_cfgs(self, kwargs, num_heads=self.layer_num_heads,
                              head_dims=self.layer_head_dims,
                              feedforward_channels=self.layer_mlp_dims)
        for cfg in cfgs:
            if cfg.pop('ffn_type', 'origin') != 'origin':
                raise ConfigError("layer_cfgs: CompactVisionTransformer supports ffn_type='origin' "
                                  "only")
        return cfgs

    def attention_layers(self) -> List[Optional[CompactAttention]]:
        """The attention module of each layer (None for a skipped layer)."""
        return [None if isinstance(m, nn.Identity) else m.attn for m in self.layers]

    def layer_dims(self) -> List[dict]:
        """Per-layer sizes: ``dict(num_heads, head_dims, mlp_dims, skipped)``."""
        return [dict(num_heads=h, head_dims=d, mlp_dims=m, skipped=i in self.skip_layers)
                for i, (h, d, m) in enumerate(zip(self.layer_num_heads, self.layer_head_dims,
                                                  self.layer_mlp_dims))]
