"""SparseViT: a Swin Transformer that skips whole windows, per stage (Chen et al., CVPR 2023).

:class:`SparseSwinTransformer` is a drop-in backbone for mmdet's and mmseg's ``SwinTransformer``:
the same constructor arguments and exactly the same state_dict keys, so model-zoo Swin, Mask R-CNN
and UperNet checkpoints load unchanged. It is built from mmcv / mmengine / torch pieces only
(importing mmsparse does not import mmdet or mmseg).

``window_ratios`` (constructor argument and settable attribute, validated on set) gives, per stage,
the fraction of windows each block skips. In a stage, the first block with a ratio > 0 computes the
per-token mean |activation| of its input once; every window is scored by the L2 norm of that over
its tokens, separately for the unshifted and the shifted (rolled) layout. A block keeps
``int(nW * (1 - ratio))`` windows (at least 1): the top-scoring ones, computed once per layout and
re-used as a prefix by later blocks of that layout (ratios are non-decreasing within a stage). The
kept windows are gathered, run through norm1 + (S)W-MSA + residual + norm2 + FFN + residual, and
scattered back; the other windows pass through the block unchanged. Blocks with ratio 0 run the
dense code path, so with all ratios 0 the outputs equal the dense Swin's exactly, at any size.

Deliberate difference from the original SparseViT code: the original pads the map with zeros
*before* ``norm1``, so pad tokens enter attention as ``LN(0)``; mmdet / mmseg pad *after* ``norm1``
(pad tokens are 0). mmsparse follows mmdet / mmseg (kept windows are normalised, then their pad
tokens are zeroed), so a sparse block with every window kept equals the dense block at any input
size, not only when every stage resolution is a multiple of the window size.
"""
import numbers
import warnings
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks.transformer import FFN, PatchEmbed, PatchMerging, build_dropout
from mmengine.logging import print_log
from mmengine.model import BaseModule, ModuleList
from mmengine.model.weight_init import constant_init, trunc_normal_, trunc_normal_init
from mmengine.runner.checkpoint import CheckpointLoader
from mmengine.utils import to_2tuple
from torch import Tensor

from mmsparse.errors import ConfigError
from mmsparse.ops.windows import (from_windows, gather_tokens, kept_token_positions,
                                  num_kept_windows, scatter_tokens, shifted_window_attn_mask,
                                  to_windows, token_activation, topk_windows, window_scores,
                                  window_token_index, window_valid_mask)
from mmsparse.registry import MODELS

__all__ = ['SparseSwinTransformer', 'WindowRatioError', 'normalize_window_ratios',
           'convert_official_swin', 'PAPER_WINDOW_RATIOS', 'KeptWindows']

Ratios = Tuple[Tuple[float, ...], ...]

# The three searched configurations of the SparseViT paper (Swin-T Mask R-CNN, 672x672).
PAPER_WINDOW_RATIOS = {
    'cfg1': [[0.3, 0.3], [0, 0], [0.1, 0.1, 0.2, 0.2, 0.2, 0.2], [0, 0]],
    'cfg2': [[0.6, 0.6], [0, 0], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0, 0]],
    'cfg3': [[0.7, 0.7], [0, 0], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0, 0]],
}

_EXAMPLE = ('e.g. [[0.7, 0.7], [0, 0], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0, 0]] for depths '
            '(2, 2, 6, 2)')


class WindowRatioError(ConfigError):
    """A ``window_ratios`` value that does not fit the backbone (raised at build / set time)."""


def normalize_window_ratios(ratios, depths: Sequence[int],
                            key: str = 'window_ratios') -> Ratios:
    """Check window ratios and expand them to one ratio per block.

    Args:
        ratios: ``None`` (all 0), or one sequence per stage holding either one ratio per block or
            one ratio per W-MSA / SW-MSA pair (``depth // 2`` values, each used for both blocks).
        depths: blocks per stage.
        key: the config key named in error messages.

    Returns:
        One tuple of floats per stage, one float per block.

    Raises:
        WindowRatioError: wrong number of stages or blocks, a ratio outside [0, 1), or ratios that
            decrease within a stage.
    """
    depths = [int(d) for d in depths]
    if ratios is None:
        return tuple(tuple(0.0 for _ in range(d)) for d in depths)
    if isinstance(ratios, (str, bytes)) or not isinstance(ratios, Sequence):
        raise WindowRatioError(f'{key}: expected one list of ratios per stage '
                               f'({len(depths)} stages), got {ratios!r} ({_EXAMPLE})')
    if len(ratios) != len(depths):
        raise WindowRatioError(f'{key}: expected one list per stage, {len(depths)} stages '
                               f'(depths {tuple(depths)}), got {len(ratios)} ({_EXAMPLE})')
    out = []
    for i, (stage, depth) in enumerate(zip(ratios, depths)):
        if isinstance(stage, (str, bytes)) or not isinstance(stage, Sequence):
            raise WindowRatioError(f'{key}[{i}]: expected a list of {depth} ratios (one per '
                                   f'block) for stage {i}, got {stage!r}')
        for j, r in enumerate(stage):
            if isinstance(r, bool) or not isinstance(r, numbers.Real):
                raise WindowRatioError(f'{key}[{i}][{j}]: {r!r} is not a number; a ratio is '
                                       f'the fraction of windows skipped, in [0, 1)')
            if not 0.0 <= float(r) < 1.0:
                raise WindowRatioError(f'{key}[{i}][{j}]: {r} is outside [0, 1) (the fraction '
                                       f'of windows a block skips; 0 = dense)')
        if len(stage) == depth:
            values = [float(r) for r in stage]
        elif depth % 2 == 0 and len(stage) == depth // 2:
            values = [float(r) for r in stage for _ in range(2)]
        else:
            pairs = f' or {depth // 2} (one per W-MSA/SW-MSA pair)' if depth % 2 == 0 else ''
            raise WindowRatioError(f'{key}[{i}]: stage {i} has {depth} blocks; give {depth} '
                                   f'ratios (one per block){pairs}, got {len(stage)}')
        if any(b < a for a, b in zip(values, values[1:])):
            raise WindowRatioError(f'{key}[{i}]: ratios must be non-decreasing within a stage '
                                   f'(later blocks keep a subset of the earlier kept windows), '
                                   f'got {list(stage)}')
        out.append(tuple(values))
    return tuple(out)


class WindowMSA(BaseModule):
    """Window multi-head self-attention with relative position bias (mmdet's ``WindowMSA`` keys).

    Args:
        embed_dims: channels C.
        num_heads: attention heads.
        window_size: (Wh, Ww).
        qkv_bias: bias in the qkv projection.
        qk_scale: overrides ``head_dims ** -0.5``.
        attn_drop_rate: dropout on attention weights.
        proj_drop_rate: dropout after the output projection.
    """

    def __init__(self, embed_dims: int, num_heads: int, window_size: Tuple[int, int],
                 qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 attn_drop_rate: float = 0., proj_drop_rate: float = 0.,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.embed_dims = embed_dims
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (embed_dims // num_heads)**-0.5
        wh, ww = window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        # index[i, j] of the bias table for query i, key j (row-major tokens of one window)
        coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing='ij'))
        coords = coords.flatten(1)  # (2, N)
        rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
        index = (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)
        self.register_buffer('relative_position_index', index.contiguous())
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop_rate)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)
        self.softmax = nn.Softmax(dim=-1)

    def init_weights(self) -> None:
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Attention inside each window.

        Args:
            x: (num_windows * B, N, C) windows, image-major (all windows of image 0 first).
            mask: additive mask, either (nW, N, N), the same for every image of the batch, or
                (num_windows * B, N, N), one per window (gathered windows).

        Returns:
            (num_windows * B, N, C).
        """
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        n_win = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n_win, n_win, -1).permute(2, 0, 1).contiguous()
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            if nw == b:
                attn = attn + mask.unsqueeze(1)
            else:
                attn = attn.view(b // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
                attn = attn.view(-1, self.num_heads, n, n)
        attn = self.attn_drop(self.softmax(attn))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class ShiftWindowMSA(BaseModule):
    """(Shifted) window attention over a token map (mmdet's ``ShiftWindowMSA`` keys: ``w_msa``).

    Args:
        embed_dims: channels C.
        num_heads: attention heads.
        window_size: ws.
        shift_size: cyclic shift (0 for W-MSA, ws // 2 for SW-MSA).
        dropout_layer: applied to the output (DropPath, per image).
    """

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, shift_size: int = 0,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 attn_drop_rate: float = 0., proj_drop_rate: float = 0.,
                 dropout_layer: dict = dict(type='DropPath', drop_prob=0.),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.window_size = window_size
        self.shift_size = shift_size
        assert 0 <= shift_size < window_size, 'shift_size must be in [0, window_size)'
        self.w_msa = WindowMSA(embed_dims=embed_dims, num_heads=num_heads,
                               window_size=to_2tuple(window_size), qkv_bias=qkv_bias,
                               qk_scale=qk_scale, attn_drop_rate=attn_drop_rate,
                               proj_drop_rate=proj_drop_rate)
        self.drop = build_dropout(dropout_layer)

    def forward(self, query: Tensor, hw_shape: Tuple[int, int]) -> Tensor:
        """Dense path: every window. (B, H * W, C) (already normalised) -> (B, H * W, C)."""
        b, length, c = query.shape
        h, w = hw_shape
        assert length == h * w, 'input feature has wrong size'
        windows = to_windows(query.view(b, h, w, c), self.window_size, self.shift_size)
        nw, n = windows.shape[1:3]
        mask = shifted_window_attn_mask(hw_shape, self.window_size, self.shift_size,
                                        device=query.device)
        out = self.w_msa(windows.reshape(b * nw, n, c), mask=mask)
        x = from_windows(out.view(b, nw, n, c), hw_shape, self.window_size, self.shift_size)
        return self.drop(x.reshape(b, h * w, c))


class SparseSwinBlock(BaseModule):
    """A Swin block (mmdet's ``SwinBlock`` keys) that can run on a subset of its windows.

    Args:
        embed_dims: channels C.
        num_heads: attention heads.
        feedforward_channels: hidden channels of the FFN.
        window_size: ws.
        shift: SW-MSA block (shift ws // 2) if True.
        with_cp: gradient checkpointing.
    """

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 window_size: int = 7, shift: bool = False, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop_rate: float = 0.,
                 attn_drop_rate: float = 0., drop_path_rate: float = 0.,
                 act_cfg: dict = dict(type='GELU'), norm_cfg: dict = dict(type='LN'),
                 with_cp: bool = False, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = ShiftWindowMSA(embed_dims=embed_dims, num_heads=num_heads,
                                   window_size=window_size,
                                   shift_size=window_size // 2 if shift else 0,
                                   qkv_bias=qkv_bias, qk_scale=qk_scale,
                                   attn_drop_rate=attn_drop_rate, proj_drop_rate=drop_rate,
                                   dropout_layer=dict(type='DropPath', drop_prob=drop_path_rate))
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.ffn = FFN(embed_dims=embed_dims, feedforward_channels=feedforward_channels,
                       num_fcs=2, ffn_drop=drop_rate,
                       dropout_layer=dict(type='DropPath', drop_prob=drop_path_rate),
                       act_cfg=act_cfg, add_identity=True, init_cfg=None)

    @property
    def shift_size(self) -> int:
        return self.attn.shift_size

    def _dense(self, x: Tensor, hw_shape: Tuple[int, int]) -> Tensor:
        x = x + self.attn(self.norm1(x), hw_shape)
        return self.ffn(self.norm2(x), identity=x)

    def _sparse(self, x: Tensor, kept: 'KeptWindows') -> Tensor:
        b, _, c = x.shape
        windows = gather_tokens(x, kept.positions)  # (B, k, N, C)
        k, n = windows.shape[1:3]
        h = self.norm1(windows)
        if kept.valid is not None:  # mmdet pads after norm1: pad tokens are 0 in attention
            h = h * kept.valid.unsqueeze(-1).to(h.dtype)
        h = self.attn.w_msa(h.reshape(b * k, n, c), mask=kept.attn_mask)
        windows = windows.reshape(b, k * n, c)
        windows = windows + self.attn.drop(h.view(b, k * n, c))  # DropPath per image
        windows = self.ffn(self.norm2(windows), identity=windows)
        return scatter_tokens(x, windows.view(b, k, n, c), kept.positions, kept.valid)

    def forward(self, x: Tensor, hw_shape: Tuple[int, int],
                kept: Optional['KeptWindows'] = None) -> Tensor:
        """(B, H * W, C) -> (B, H * W, C).

        Args:
            x: tokens.
            hw_shape: (H, W).
            kept: the windows to process (:meth:`KeptWindows.build`, in the layout of this
                block's shift); ``None``: every window, on the dense code path (mmdet's).
        """
        if kept is None:
            fn = lambda t: self._dense(t, hw_shape)  # noqa: E731
        else:
            fn = lambda t: self._sparse(t, kept)  # noqa: E731
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(fn, x, use_reentrant=False)
        return fn(x)


class KeptWindows(NamedTuple):
    """The windows one sparse block processes, with what its gather / scatter / attention need.

    Attributes:
        indices: (B, k) kept windows per image (layout of the block's shift).
        positions: (B, k, N) their tokens' positions in the flattened (B * H * W) map.
        valid: (B, k, N) bool, False at pad tokens; ``None`` without padding.
        attn_mask: (B * k, N, N) SW-MSA mask of the kept windows; ``None`` for W-MSA.
    """
    indices: Tensor
    positions: Tensor
    valid: Optional[Tensor]
    attn_mask: Optional[Tensor]

    @classmethod
    def build(cls, indices: Tensor, hw_shape: Tuple[int, int], window_size: int, shift: int,
              layout: Optional[tuple] = None) -> 'KeptWindows':
        """From kept window ``indices`` (B, k); ``layout`` = ``(token_index, valid, mask)`` of
        :func:`window_token_index` / :func:`shifted_window_attn_mask` if already computed."""
        if layout is None:
            token_index, valid = window_token_index(hw_shape, window_size, shift,
                                                    device=indices.device)
            mask = shifted_window_attn_mask(hw_shape, window_size, shift, device=indices.device)
        else:
            token_index, valid, mask = layout
        b, k = indices.shape
        positions = kept_token_positions(token_index, indices, hw_shape[0] * hw_shape[1])
        n = token_index.shape[1]
        return cls(indices=indices, positions=positions,
                   valid=window_valid_mask(valid, indices),
                   attn_mask=None if mask is None else mask[indices].reshape(b * k, n, n))


class _StagePlan:
    """Kept windows of one stage for one forward: scores once per layout, top-k prefix reuse."""

    def __init__(self, act: Tensor, hw_shape: Tuple[int, int], window_size: int) -> None:
        self.act = act  # (B, H * W), detached
        self.hw_shape = hw_shape
        self.window_size = window_size
        self.indices: Dict[int, Tensor] = {}
        self.layouts: Dict[int, tuple] = {}

    def layout(self, shift: int) -> tuple:
        if shift not in self.layouts:
            token_index, valid = window_token_index(self.hw_shape, self.window_size, shift,
                                                    device=self.act.device)
            mask = shifted_window_attn_mask(self.hw_shape, self.window_size, shift,
                                            device=self.act.device)
            self.layouts[shift] = (token_index, valid, mask)
        return self.layouts[shift]

    def kept(self, shift: int, ratio: float) -> KeptWindows:
        """The kept windows of the layout ``shift`` at ``ratio``."""
        if shift not in self.indices:
            scores = window_scores(self.act, self.hw_shape, self.window_size, shift)
            self.indices[shift] = topk_windows(scores, num_kept_windows(scores.shape[1], ratio))
        idx = self.indices[shift]
        num_windows = self.layout(shift)[0].shape[0]
        keep = num_kept_windows(num_windows, ratio)
        if keep > idx.shape[1]:
            raise RuntimeError('window ratios decrease within a stage')  # validated on set
        return KeptWindows.build(idx[:, :keep], self.hw_shape, self.window_size, shift,
                                 self.layout(shift))


class SparseSwinBlockSequence(BaseModule):
    """One stage (mmdet's ``SwinBlockSequence`` keys: ``blocks``, ``downsample``)."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int, depth: int,
                 window_size: int = 7, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 drop_rate: float = 0., attn_drop_rate: float = 0.,
                 drop_path_rate: Union[float, List[float]] = 0.,
                 downsample: Optional[nn.Module] = None, act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN'), with_cp: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if isinstance(drop_path_rate, list):
            drop_path_rates = drop_path_rate
            assert len(drop_path_rates) == depth
        else:
            drop_path_rates = [float(drop_path_rate) for _ in range(depth)]
        self.depth = depth
        self.window_size = window_size
        self.blocks = ModuleList()
        for i in range(depth):
            self.blocks.append(SparseSwinBlock(
                embed_dims=embed_dims, num_heads=num_heads,
                feedforward_channels=feedforward_channels, window_size=window_size,
                shift=i % 2 == 1, qkv_bias=qkv_bias, qk_scale=qk_scale, drop_rate=drop_rate,
                attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rates[i],
                act_cfg=act_cfg, norm_cfg=norm_cfg, with_cp=with_cp))
        self.downsample = downsample
        self.window_ratios: Tuple[float, ...] = tuple(0.0 for _ in range(depth))
        self.kept_windows: Optional[list] = None  # filled when recording (see the backbone)

    def forward(self, x: Tensor, hw_shape: Tuple[int, int]):
        plan = None
        for i, (block, ratio) in enumerate(zip(self.blocks, self.window_ratios)):
            if ratio <= 0:
                x = block(x, hw_shape)
                continue
            if plan is None:  # once per stage, from the input of its first pruned block
                plan = _StagePlan(token_activation(x.detach()), hw_shape, self.window_size)
            shift = block.shift_size
            kept = plan.kept(shift, ratio)
            x = block(x, hw_shape, kept)
            if self.kept_windows is not None:
                self.kept_windows.append(dict(block=i, shift=shift, ratio=ratio,
                                              num_windows=plan.layout(shift)[0].shape[0],
                                              indices=kept.indices.detach().cpu()))
        if self.downsample:
            x_down, down_hw_shape = self.downsample(x, hw_shape)
            return x_down, down_hw_shape, x, hw_shape
        return x, hw_shape, x, hw_shape


@MODELS.register_module()
class SparseSwinTransformer(BaseModule):
    """Swin Transformer backbone with SparseViT window pruning.

    Same constructor arguments and state_dict keys as mmdet 3.x's ``SwinTransformer`` (whose keys
    equal mmseg 1.x's), plus ``window_ratios``.

    Args:
        pretrain_img_size: image size of pre-training (for the absolute position embedding).
        in_channels: image channels.
        embed_dims: channels of stage 0.
        patch_size: patch size (= ``strides[0]``).
        window_size: ws.
        mlp_ratio: FFN hidden / embed channels.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        strides: patch embedding and patch merging strides.
        out_indices: stages whose (normalised) outputs are returned.
        qkv_bias, qk_scale, patch_norm, drop_rate, attn_drop_rate, drop_path_rate,
        use_abs_pos_embed, act_cfg, norm_cfg, with_cp, frozen_stages: as in mmdet / mmseg.
        pretrained: deprecated checkpoint path (use ``init_cfg``).
        convert_weights: the ``init_cfg`` checkpoint has the official Swin repo's keys (mmdet's
            ``convert_weights``); they are converted on load.
        window_ratios: per stage, one ratio per block or per W-MSA/SW-MSA pair, each in [0, 1)
            and non-decreasing within a stage; ``None`` = all 0 (dense). Also a settable
            attribute (validated on set), read at every forward.
        init_cfg: ``dict(type='Pretrained', checkpoint=...)`` or ``None``.
    """

    def __init__(self, pretrain_img_size: Union[int, Tuple[int, int]] = 224,
                 in_channels: int = 3, embed_dims: int = 96, patch_size: int = 4,
                 window_size: int = 7, mlp_ratio: Union[int, float] = 4,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 strides: Sequence[int] = (4, 2, 2, 2),
                 out_indices: Sequence[int] = (0, 1, 2, 3), qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, patch_norm: bool = True,
                 drop_rate: float = 0., attn_drop_rate: float = 0., drop_path_rate: float = 0.1,
                 use_abs_pos_embed: bool = False, act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN'), with_cp: bool = False,
                 pretrained: Optional[str] = None, convert_weights: bool = False,
                 frozen_stages: int = -1, window_ratios=None,
                 init_cfg: Optional[dict] = None) -> None:
        self.convert_weights = convert_weights
        self.frozen_stages = frozen_stages
        if isinstance(pretrain_img_size, int):
            pretrain_img_size = to_2tuple(pretrain_img_size)
        elif isinstance(pretrain_img_size, tuple):
            if len(pretrain_img_size) == 1:
                pretrain_img_size = to_2tuple(pretrain_img_size[0])
            assert len(pretrain_img_size) == 2, \
                f'pretrain_img_size should have length 1 or 2, got {len(pretrain_img_size)}'
        assert not (init_cfg and pretrained), \
            'init_cfg and pretrained cannot be specified at the same time'
        if isinstance(pretrained, str):
            warnings.warn('DeprecationWarning: pretrained is deprecated, use "init_cfg" instead')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        elif pretrained is not None:
            raise TypeError('pretrained must be a str or None')
        super().__init__(init_cfg=init_cfg)

        # validate before building anything big
        depths = tuple(int(d) for d in depths)
        if len(num_heads) != len(depths):
            raise ConfigError(f'num_heads {tuple(num_heads)} must have one entry per stage of '
                              f'depths {depths}')
        ratios = normalize_window_ratios(window_ratios, depths, 'model.backbone.window_ratios')

        num_layers = len(depths)
        self.depths = depths
        self.strides = tuple(strides)
        self.window_size = window_size
        self.out_indices = out_indices
        self.use_abs_pos_embed = use_abs_pos_embed
        assert strides[0] == patch_size, 'Use non-overlapping patch embed.'

        self.patch_embed = PatchEmbed(in_channels=in_channels, embed_dims=embed_dims,
                                      conv_type='Conv2d', kernel_size=patch_size,
                                      stride=strides[0], padding='corner',
                                      norm_cfg=norm_cfg if patch_norm else None, init_cfg=None)
        if self.use_abs_pos_embed:
            num_patches = ((pretrain_img_size[0] // patch_size) *
                           (pretrain_img_size[1] // patch_size))
            self.absolute_pos_embed = nn.Parameter(torch.zeros((1, num_patches, embed_dims)))
        self.drop_after_pos = nn.Dropout(p=drop_rate)

        total_depth = sum(depths)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, total_depth)]
        self.stages = ModuleList()
        in_channels = embed_dims
        for i in range(num_layers):
            downsample = None
            if i < num_layers - 1:
                downsample = PatchMerging(in_channels=in_channels, out_channels=2 * in_channels,
                                          stride=strides[i + 1],
                                          norm_cfg=norm_cfg if patch_norm else None,
                                          init_cfg=None)
            self.stages.append(SparseSwinBlockSequence(
                embed_dims=in_channels, num_heads=num_heads[i],
                feedforward_channels=int(mlp_ratio * in_channels), depth=depths[i],
                window_size=window_size, qkv_bias=qkv_bias, qk_scale=qk_scale,
                drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                drop_path_rate=dpr[sum(depths[:i]):sum(depths[:i + 1])], downsample=downsample,
                act_cfg=act_cfg, norm_cfg=norm_cfg, with_cp=with_cp, init_cfg=None))
            if downsample:
                in_channels = downsample.out_channels

        self.num_features = [int(embed_dims * 2**i) for i in range(num_layers)]
        for i in out_indices:
            self.add_module(f'norm{i}', build_norm_layer(norm_cfg, self.num_features[i])[1])
        self._set_ratios(ratios)

    # ---------------------------------------------------------------- window ratios
    @property
    def window_ratios(self) -> Ratios:
        """Per stage, per block: the fraction of windows each block skips."""
        return tuple(stage.window_ratios for stage in self.stages)

    @window_ratios.setter
    def window_ratios(self, ratios) -> None:
        self._set_ratios(normalize_window_ratios(ratios, self.depths, 'backbone.window_ratios'))

    def _set_ratios(self, ratios: Ratios) -> None:
        for stage, r in zip(self.stages, ratios):
            stage.window_ratios = r

    @property
    def is_dense(self) -> bool:
        """True when every ratio is 0 (the dense Swin's computation)."""
        return all(r == 0 for stage in self.window_ratios for r in stage)

    def record_kept_windows(self, enabled: bool = True) -> None:
        """Record the kept windows of every pruned block at each forward (for pictures / tests).

        After a forward, :attr:`kept_windows` holds one list per stage of dicts ``block, shift,
        ratio, num_windows, indices (B, k)``.
        """
        for stage in self.stages:
            stage.kept_windows = [] if enabled else None

    @property
    def kept_windows(self) -> Optional[List[list]]:
        if self.stages[0].kept_windows is None:
            return None
        return [list(stage.kept_windows) for stage in self.stages]

    # ---------------------------------------------------------------- mmdet behaviour
    def train(self, mode: bool = True):
        """Training mode, keeping frozen stages in eval mode."""
        super().train(mode)
        self._freeze_stages()
        return self

    def _freeze_stages(self) -> None:
        if self.frozen_stages >= 0:
            self.patch_embed.eval()
            for param in self.patch_embed.parameters():
                param.requires_grad = False
            if self.use_abs_pos_embed:
                self.absolute_pos_embed.requires_grad = False
            self.drop_after_pos.eval()
        for i in range(1, self.frozen_stages + 1):
            if (i - 1) in self.out_indices:
                norm_layer = getattr(self, f'norm{i - 1}')
                norm_layer.eval()
                for param in norm_layer.parameters():
                    param.requires_grad = False
            stage = self.stages[i - 1]
            stage.eval()
            for param in stage.parameters():
                param.requires_grad = False

    def init_weights(self) -> None:
        """From scratch (trunc-normal Linear, unit LayerNorm), or from ``init_cfg.checkpoint``.

        A checkpoint may be an mmdet / mmseg model (``backbone.`` prefix, stripped), a bare
        backbone (mmseg's converted Swin pre-training), or an official Swin checkpoint with
        ``convert_weights=True``. Relative position tables are resized bicubically when the
        window size differs; the load is non-strict, as in mmdet / mmseg.
        """
        if self.init_cfg is None:
            print_log(f'No pre-trained weights for {self.__class__.__name__}, training start '
                      f'from scratch', logger='current')
            if self.use_abs_pos_embed:
                trunc_normal_(self.absolute_pos_embed, std=0.02)
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    trunc_normal_init(m, std=.02, bias=0.)
                elif isinstance(m, nn.LayerNorm):
                    constant_init(m, val=1.0, bias=0.)
            return
        assert 'checkpoint' in self.init_cfg, \
            f'Only `Pretrained` in `init_cfg` is supported in {self.__class__.__name__}'
        ckpt = CheckpointLoader.load_checkpoint(self.init_cfg['checkpoint'], logger='current',
                                                map_location='cpu')
        state = ckpt.get('state_dict', ckpt.get('model', ckpt))
        if self.convert_weights:
            state = convert_official_swin(state)
        self.load_state_dict(self._adapt_state_dict(state), strict=False)

    def _adapt_state_dict(self, state: dict) -> 'OrderedDict[str, Tensor]':
        out = OrderedDict()
        prefixed = any(k.startswith('backbone.') for k in state)
        for k, v in state.items():
            if prefixed:
                if k.startswith('backbone.'):
                    out[k[len('backbone.'):]] = v
            else:
                out[k] = v
        if out and next(iter(out)).startswith('module.'):
            out = OrderedDict((k[len('module.'):], v) for k, v in out.items())
        own = self.state_dict()
        pos = out.get('absolute_pos_embed')
        if pos is not None and ('absolute_pos_embed' not in own
                                or pos.shape != own['absolute_pos_embed'].shape):
            print_log('Error in loading absolute_pos_embed, pass', logger='current')
            out.pop('absolute_pos_embed')
        for key in [k for k in out if 'relative_position_bias_table' in k]:
            if key not in own:
                continue
            table = out[key]
            (l1, h1), (l2, h2) = table.shape, own[key].shape
            if h1 != h2:
                print_log(f'Error in loading {key}, pass', logger='current')
                out.pop(key)
            elif l1 != l2:
                s1, s2 = int(l1**0.5), int(l2**0.5)
                resized = F.interpolate(table.permute(1, 0).reshape(1, h1, s1, s1),
                                        size=(s2, s2), mode='bicubic')
                out[key] = resized.view(h2, l2).permute(1, 0).contiguous()
        return out

    def forward(self, x: Tensor) -> List[Tensor]:
        """Images (B, C_in, H, W) -> one (B, C_i, H_i, W_i) map per ``out_indices`` stage."""
        x, hw_shape = self.patch_embed(x)
        if self.use_abs_pos_embed:
            x = x + self.absolute_pos_embed
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            if stage.kept_windows is not None:
                stage.kept_windows = []
            x, hw_shape, out, out_hw_shape = stage(x, hw_shape)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(out)
                out = out.view(-1, *out_hw_shape, self.num_features[i]).permute(0, 3, 1, 2)
                outs.append(out.contiguous())
        return outs


def convert_official_swin(state: dict) -> 'OrderedDict[str, Tensor]':
    """Keys of an official Swin checkpoint (microsoft/Swin-Transformer) -> mmdet's, ``backbone.``
    prefixed; the semantics of mmdet's ``convert_weights=True``.

    ``layers.`` -> ``stages.``; ``attn.`` -> ``attn.w_msa.``; ``mlp.fc1`` / ``mlp.fc2`` ->
    ``ffn.layers.0.0`` / ``ffn.layers.1``; ``patch_embed.proj`` -> ``patch_embed.projection``;
    classifier ``head.*`` dropped. Patch merging concatenates its 2x2 neighbours in the order
    (0,0), (1,0), (0,1), (1,1) in the official code and channel-major (``nn.Unfold``) in mmcv,
    so ``downsample.reduction.weight`` columns and ``downsample.norm`` entries are permuted.
    """
    def unfold_order(v: Tensor) -> Tensor:  # (..., 4 * C) concatenation -> unfold order
        lead, c4 = v.shape[:-1], v.shape[-1]
        v = v.reshape(*lead, 4, c4 // 4)[..., [0, 2, 1, 3], :]
        return v.transpose(-1, -2).reshape(*lead, c4)

    out = OrderedDict()
    for k, v in state.items():
        if k.startswith('head'):
            continue
        new_k = k
        if k.startswith('layers'):
            if 'attn.' in k:
                new_k = k.replace('attn.', 'attn.w_msa.')
            elif 'mlp.fc1.' in k:
                new_k = k.replace('mlp.fc1.', 'ffn.layers.0.0.')
            elif 'mlp.fc2.' in k:
                new_k = k.replace('mlp.fc2.', 'ffn.layers.1.')
            elif 'mlp.' in k:
                new_k = k.replace('mlp.', 'ffn.')
            elif 'downsample' in k and ('reduction.' in k or 'norm.' in k):
                v = unfold_order(v)
            new_k = new_k.replace('layers', 'stages', 1)
        elif k.startswith('patch_embed') and 'proj' in k:
            new_k = k.replace('proj', 'projection')
        out['backbone.' + new_k] = v
    return out
