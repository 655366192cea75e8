"""The one compact ViT: the physically smaller dense model every structured compaction writes.

:class:`CompactVisionTransformer` is mmpretrain's ``VisionTransformer`` whose layers each have
their own structure, built from :class:`~.encoder.EncoderLayer` and :class:`~.attention.Attention`:

- ``num_heads``: heads per layer (>= 0; with 0 heads the attention branch outputs its
  ``proj.bias``, the S²ViTE layout);
- ``head_dims``: query / key channels of the heads of a layer (the softmax scale);
- ``v_dims``: per layer, one value (= output) width per head (UVC keeps every query / key dim
  and prunes value dims inside heads); default ``head_dims`` each;
- ``mlp_dims``: MLP hidden width per layer (>= 0);
- ``skip_layers``: layers replaced by the identity (S²ViTE: their keys are absent, the
  indices of the other layers unchanged);
- ``remove_empty_branches``: a branch with no head / no neuron is removed with its LayerNorm
  (no keys; UVC's layout) instead of kept as its output bias.

State-dict keys are mmpretrain's (``layers.N.ln1``, ``layers.N.attn.qkv`` ...,
``layers.N.ffn.layers.0.0`` ...), only the shapes follow the per-layer sizes; with the default
(dense) sizes it is state_dict-compatible with ``VisionTransformer``.

:class:`UVCCompactVisionTransformer` is the same model under the constructor arguments UVC's
compaction has always written (``embed_dims``, ``head_dims``, ``layers=[dict(v_dims,
feedforward_channels)]``, ...): its derived configs and checkpoints load unchanged.
"""
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from mmengine.model import ModuleList
from mmpretrain.models.backbones.vision_transformer import VisionTransformer
from torch import Tensor, nn

from mmsparse.registry import MODELS
from mmsparse.validation import Keys
from .._vit_utils import vit_layer_cfgs, vit_tokens
from .attention import Attention
from .encoder import EncoderLayer

__all__ = ['CompactVisionTransformer', 'UVCCompactVisionTransformer', 'STRUCTURE_KEYS',
           'compact_structure']

IntOrList = Union[int, Sequence[int], None]
_KEYS = Keys('model.backbone')
# the CompactVisionTransformer arguments that say how large each layer is (besides ``arch``)
STRUCTURE_KEYS = ('num_heads', 'head_dims', 'v_dims', 'mlp_dims', 'skip_layers',
                  'remove_empty_branches')


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _per_layer(value: IntOrList, default: int, num_layers: int, key: str,
               minimum: int) -> List[int]:
    """One int per layer from an int (every layer), a list (one per layer) or None (default)."""
    if value is None:
        return [default] * num_layers
    if _is_int(value):
        values = [int(value)] * num_layers
    elif isinstance(value, (list, tuple)) and len(value) == num_layers:
        values = list(value)
    else:
        _KEYS.fail(key, f'must be an int or a list of {num_layers} ints (one per layer), got '
                        f'{value!r}')
    if not all(_is_int(v) and v >= minimum for v in values):
        _KEYS.fail(key, f'values must each be an int >= {minimum}, got {value!r}')
    return [int(v) for v in values]


def _per_head(v_dims: Optional[Sequence], num_heads: List[int], head_dims: List[int],
              explicit_heads: bool) -> List[List[int]]:
    """Value dims per layer and head; with ``v_dims`` given and no explicit ``num_heads``, the
    head count of a layer is the length of its list."""
    L = len(num_heads)
    if v_dims is None:
        return [[d] * h for h, d in zip(num_heads, head_dims)]
    if not isinstance(v_dims, (list, tuple)) or len(v_dims) != L:
        _KEYS.fail('v_dims', f'must be a list of {L} lists (per layer, one value dim per head), '
                             f'got {v_dims!r}')
    out = []
    for i, dims in enumerate(v_dims):
        if dims is None:
            out.append([head_dims[i]] * num_heads[i])
            continue
        if not isinstance(dims, (list, tuple)) or not all(_is_int(d) and d >= 1 for d in dims):
            _KEYS.fail(f'v_dims[{i}]', f'must be a list of ints >= 1, got {dims!r}')
        if explicit_heads and len(dims) != num_heads[i]:
            _KEYS.fail(f'v_dims[{i}]', f'must have num_heads[{i}] = {num_heads[i]} values (one '
                                       f'per head), got {list(dims)!r}')
        out.append([int(d) for d in dims])
    return out


@MODELS.register_module()
class CompactVisionTransformer(VisionTransformer):
    """mmpretrain's ``VisionTransformer`` with per-layer heads, value dims and MLP widths.

    All ``VisionTransformer`` arguments are accepted (``arch``, ``img_size``, ``patch_size``,
    ``out_type``, ``drop_path_rate``, ``init_cfg`` ...). Keys are those of ``VisionTransformer``;
    the shapes of ``layers.N.attn.*`` and ``layers.N.ffn.*`` follow the per-layer sizes.

    Args:
        arch: a ``VisionTransformer`` arch name or dict; gives C, the depth and the defaults.
        num_heads: heads per layer (int for all, or a list); default the arch's, or the lengths
            of ``v_dims``.
        head_dims: query / key channels per head (int or list); default C // arch heads.
        mlp_dims: MLP hidden width per layer (int or list); default the arch's
            ``feedforward_channels``.
        v_dims: None (value dims = ``head_dims``), or per layer None or one value dim per head.
        skip_layers: indices of layers replaced by the identity (no parameters).
        remove_empty_branches: a layer with no head has no attention branch (no ``ln1`` /
            ``attn`` keys), one with no MLP neuron no MLP branch (no ``ln2`` / ``ffn``). Default
            False: they stay as their output bias (``attn.proj.bias``, ``fc2.bias``).
        **kwargs: the other ``VisionTransformer`` arguments.
    """

    def __init__(self, arch: Union[str, dict] = 'deit-small', num_heads: IntOrList = None,
                 head_dims: IntOrList = None, mlp_dims: IntOrList = None,
                 v_dims: Optional[Sequence[Optional[Sequence[int]]]] = None,
                 skip_layers: Sequence[int] = (), remove_empty_branches: bool = False,
                 **kwargs) -> None:
        super().__init__(arch=arch, **kwargs)
        L, C = self.num_layers, self.embed_dims
        arch_heads = self.arch_settings['num_heads']
        # without num_heads, a layer's v_dims list says how many heads it has
        explicit = num_heads is not None or not isinstance(v_dims, (list, tuple)) or \
            len(v_dims) != L
        if not explicit:
            num_heads = [len(d) if isinstance(d, (list, tuple)) else arch_heads for d in v_dims]
        self.layer_num_heads = _per_layer(num_heads, arch_heads, L, 'num_heads', 0)
        self.layer_head_dims = _per_layer(head_dims, C // arch_heads, L, 'head_dims', 1)
        self.layer_v_dims = _per_head(v_dims, self.layer_num_heads, self.layer_head_dims,
                                      explicit)
        self.layer_mlp_dims = _per_layer(mlp_dims, self.arch_settings['feedforward_channels'],
                                         L, 'mlp_dims', 0)
        skip = list(skip_layers or ())
        if not all(_is_int(i) and 0 <= i < L for i in skip):
            _KEYS.fail('skip_layers', f'must be layer indices in [0, {L - 1}], got {skip!r}')
        self.skip_layers = sorted(set(skip))
        self.remove_empty_branches = _KEYS.boolean('remove_empty_branches',
                                                   remove_empty_branches)
        cfgs = self._layer_cfgs(kwargs)
        self.layers = ModuleList([
            nn.Identity() if i in self.skip_layers else EncoderLayer(**cfgs[i])
            for i in range(L)
        ])
        if self.frozen_stages > 0:
            self._freeze_stages()

    def _layer_cfgs(self, kwargs: dict, **per_layer: Sequence) -> List[dict]:
        """The per-layer arguments, as ``VisionTransformer.__init__`` builds them (plus a
        subclass's ``per_layer`` ones, one value per layer)."""
        remove = self.remove_empty_branches
        return vit_layer_cfgs(
            self, kwargs, num_heads=self.layer_num_heads, head_dims=self.layer_head_dims,
            v_dims=self.layer_v_dims, feedforward_channels=self.layer_mlp_dims,
            with_attn=[not (remove and h == 0) for h in self.layer_num_heads],
            with_ffn=[not (remove and m == 0) for m in self.layer_mlp_dims], **per_layer)

    def attention_layers(self) -> List[Optional[Attention]]:
        """The attention module of each layer (None for a skipped layer or removed branch)."""
        return [getattr(m, 'attn', None) for m in self.layers]

    def layer_dims(self) -> List[dict]:
        """Per-layer sizes: ``dict(num_heads, head_dims, v_dims, mlp_dims, skipped)``."""
        return [dict(num_heads=h, head_dims=d, v_dims=list(v), mlp_dims=m,
                     skipped=i in self.skip_layers)
                for i, (h, d, v, m) in enumerate(zip(self.layer_num_heads, self.layer_head_dims,
                                                     self.layer_v_dims, self.layer_mlp_dims))]

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Args: x images (B, C_in, H, W). Returns the ``out_indices`` features (tuple)."""
        if self.num_layers > 0:
            return super().forward(x)
        # no layer at all (every block of a UVC model skipped): tokens -> final norm -> output
        x, patch_resolution = self.patch_embed(x)
        x = vit_tokens(self, x, patch_resolution)
        if self.final_norm:
            x = self.ln1(x)
        return (self._format_output(x, patch_resolution), )


def compact_structure(backbone: CompactVisionTransformer) -> dict:
    """How large each layer of ``backbone`` is, as plain ints and lists (checkpoint meta).

    The result holds ``arch`` (``embed_dims``, ``num_layers``, ``num_heads``,
    ``feedforward_channels``) and the :data:`STRUCTURE_KEYS`; given to any
    :class:`CompactVisionTransformer` subclass (with the same ``img_size`` / ``patch_size``) it
    builds layers whose weights have ``backbone``'s shapes and keys. The compactions save it as
    ``meta['compact_structure']`` of the compact checkpoint, which is where
    ``DynamicViTClassifier(compact_checkpoint=...)`` reads it.
    """
    arch = backbone.arch_settings
    return dict(
        arch=dict(embed_dims=int(backbone.embed_dims), num_layers=int(backbone.num_layers),
                  num_heads=int(arch['num_heads']),
                  feedforward_channels=int(arch['feedforward_channels'])),
        num_heads=[int(h) for h in backbone.layer_num_heads],
        head_dims=[int(d) for d in backbone.layer_head_dims],
        v_dims=[[int(d) for d in dims] for dims in backbone.layer_v_dims],
        mlp_dims=[int(m) for m in backbone.layer_mlp_dims],
        skip_layers=[int(i) for i in backbone.skip_layers],
        remove_empty_branches=bool(backbone.remove_empty_branches))


@MODELS.register_module()
class UVCCompactVisionTransformer(CompactVisionTransformer):
    """:class:`CompactVisionTransformer` under the arguments of UVC's compaction.

    The blocks of the UVC model that run, renumbered from 0 (the skipped ones are absent).
    Every head keeps its ``head_dims`` query / key channels (UVC never prunes them); a block
    without heads has no attention branch, one without neurons no MLP branch.

    Args:
        embed_dims: C.
        head_dims: query / key dims of every head (the dense model's ``C / H``).
        layers: one dict per kept block: ``dict(v_dims=[...], feedforward_channels=F)``.
        img_size, patch_size, in_channels, qkv_bias, norm_cfg, final_norm, interpolate_mode,
            init_cfg: as mmpretrain's ``VisionTransformer``.
        dense_num_layers: how many blocks the dense model had (informational).
        out_type: only 'cls_token'.
    """

    def __init__(self, embed_dims: int, head_dims: int, layers: Sequence[dict],
                 img_size: int = 224, patch_size: int = 16, in_channels: int = 3,
                 qkv_bias: bool = True, norm_cfg: dict = dict(type='LN', eps=1e-6),
                 final_norm: bool = True, interpolate_mode: str = 'bicubic',
                 dense_num_layers: Optional[int] = None, out_type: str = 'cls_token',
                 init_cfg: Optional[dict] = None) -> None:
        _KEYS.choice('out_type', out_type, ['cls_token'])
        _KEYS.number('embed_dims', embed_dims, 1, integer=True)
        _KEYS.number('head_dims', head_dims, 1, integer=True)
        for i, layer in enumerate(layers):
            if not isinstance(layer, dict) or set(layer) - {'v_dims', 'feedforward_channels'}:
                _KEYS.fail(f'layers[{i}]', f'keys must be v_dims and feedforward_channels, got '
                                           f'{sorted(layer) if isinstance(layer, dict) else layer}')
        v_dims = [[int(d) for d in layer.get('v_dims', [])] for layer in layers]
        mlp_dims = [int(layer.get('feedforward_channels', 0)) for layer in layers]
        # the arch's heads / MLP width only size the layers VisionTransformer builds first
        arch = dict(embed_dims=embed_dims, num_layers=len(layers),
                    num_heads=max(embed_dims // head_dims, 1),
                    feedforward_channels=max(mlp_dims + [1]))
        super().__init__(
            arch=arch, num_heads=[len(d) for d in v_dims], head_dims=head_dims, v_dims=v_dims,
            mlp_dims=mlp_dims, remove_empty_branches=True, img_size=img_size,
            patch_size=patch_size, in_channels=in_channels, qkv_bias=qkv_bias, norm_cfg=norm_cfg,
            final_norm=final_norm, interpolate_mode=interpolate_mode, out_type=out_type,
            out_indices=-1 if layers else 0, init_cfg=init_cfg)
        self.head_dims = head_dims
        self.arch_layers = [dict(v_dims=v, feedforward_channels=m)
                            for v, m in zip(v_dims, mlp_dims)]
        self.dense_num_layers = dense_num_layers
