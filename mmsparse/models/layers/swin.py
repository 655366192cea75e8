"""Swin Transformer layers: an adaptation of mmdet 3.x's ``mmdet.models.backbones.swin``.

The classes mirror mmdet's one for one (:class:`WindowMSA`, :class:`ShiftWindowMSA`,
:class:`SwinBlock`, :class:`SwinBlockSequence`, :class:`SwinTransformer`; mmdet's
``swin_converter`` and checkpoint fitting are in :mod:`.swin_weights`), with the same
constructor arguments, the same state_dict keys (equal to mmseg 1.x's) and, on the dense path,
exactly the same outputs (``tests/test_sparsevit.py`` compares them bit for bit with mmdet's and
mmseg's).

What differs from mmdet, and why:

- Window partition / reverse, padding, the cyclic roll and the SW-MSA mask are the pure functions
  of :mod:`mmsparse.ops.windows` (same window order, same -100 mask), which SparseViT's gather /
  scatter of kept windows shares, so dense and sparse paths agree on what a window is.
- :meth:`WindowMSA.forward` also takes one mask per window, ``(B * k, N, N)``, besides mmdet's
  one per layout ``(nW, N, N)``: gathered windows of different images carry their own.
- The stage and block classes are class attributes (:attr:`SwinTransformer.stage_cls`,
  :attr:`SwinBlockSequence.block_cls`), so that SparseViT
  (:mod:`mmsparse.models.sparsevit`) replaces them without re-writing the construction.
- Bad constructor values raise :class:`~mmsparse.errors.ConfigError` naming
  ``model.backbone.<key>`` instead of mmdet's asserts; gradient checkpointing uses the
  non-reentrant ``torch.utils.checkpoint``.
- Nothing here imports mmdet or mmseg (mmcv / mmengine / torch only), so a classification-only
  user never imports them. :class:`SwinTransformer` is not registered: the registered backbone
  is :class:`mmsparse.models.SparseSwinTransformer`, which equals it with all window ratios 0.
"""
import warnings
from typing import Callable, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks.transformer import FFN, PatchEmbed, PatchMerging, build_dropout
from mmengine.logging import print_log
from mmengine.model import BaseModule, ModuleList
from mmengine.model.weight_init import constant_init, trunc_normal_, trunc_normal_init
from mmengine.runner.checkpoint import CheckpointLoader
from mmengine.utils import to_2tuple
from torch import Tensor

from mmsparse.ops.windows import from_windows, shifted_window_attn_mask, to_windows
from .swin_weights import adapt_swin_state_dict, convert_official_swin
from mmsparse.validation import Keys

__all__ = ['WindowMSA', 'ShiftWindowMSA', 'SwinBlock', 'SwinBlockSequence', 'SwinTransformer',
           'convert_official_swin']

BACKBONE_KEYS = Keys('model.backbone')


class WindowMSA(BaseModule):
    """Window multi-head self-attention with relative position bias (mmdet's ``WindowMSA``).

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
        # index[i, j] of the bias table for query i, key j (row-major tokens of one window);
        # the values of mmdet's double_step_seq construction
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
    """(Shifted) window attention over a token map (mmdet's ``ShiftWindowMSA``: ``w_msa``).

    Args:
        embed_dims: channels C.
        num_heads: attention heads.
        window_size: ws.
        shift_size: cyclic shift (0 for W-MSA, ws // 2 for SW-MSA).
        qkv_bias, qk_scale, attn_drop_rate, proj_drop_rate: as :class:`WindowMSA`.
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
        """Every window. (B, H * W, C) (already normalised) -> (B, H * W, C)."""
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


class SwinBlock(BaseModule):
    """A Swin block (mmdet's ``SwinBlock``): x + attn(norm1(x)), then + ffn(norm2(.)).

    Args:
        embed_dims: channels C.
        num_heads: attention heads.
        feedforward_channels: hidden channels of the FFN.
        window_size: ws.
        shift: SW-MSA block (shift ws // 2) if True.
        qkv_bias, qk_scale: as :class:`WindowMSA`.
        drop_rate: dropout after the attention projection and in the FFN.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: DropPath of both residual branches.
        act_cfg, norm_cfg: the FFN's activation, the norms.
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
        """The block's cyclic shift: 0 (W-MSA) or ws // 2 (SW-MSA)."""
        return self.attn.shift_size

    def _dense(self, x: Tensor, hw_shape: Tuple[int, int]) -> Tensor:
        x = x + self.attn(self.norm1(x), hw_shape)
        return self.ffn(self.norm2(x), identity=x)

    def _run(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """``fn(x)``, under gradient checkpointing when ``with_cp`` and training."""
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(fn, x, use_reentrant=False)
        return fn(x)

    def forward(self, x: Tensor, hw_shape: Tuple[int, int]) -> Tensor:
        """(B, H * W, C) tokens of an (H, W) map -> (B, H * W, C)."""
        return self._run(lambda t: self._dense(t, hw_shape), x)


class SwinBlockSequence(BaseModule):
    """One stage (mmdet's ``SwinBlockSequence``: ``blocks``, ``downsample``).

    Blocks alternate W-MSA (even index) and SW-MSA (odd index).

    Args:
        embed_dims, num_heads, feedforward_channels, window_size, qkv_bias, qk_scale,
        drop_rate, attn_drop_rate, act_cfg, norm_cfg, with_cp: as :class:`SwinBlock`.
        depth: blocks in the stage.
        drop_path_rate: one rate for every block, or a list of ``depth`` rates.
        downsample: the patch merging after the stage, or ``None``.
    """

    block_cls: Type[SwinBlock] = SwinBlock

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
            self.blocks.append(self.block_cls(
                embed_dims=embed_dims, num_heads=num_heads,
                feedforward_channels=feedforward_channels, window_size=window_size,
                shift=i % 2 == 1, qkv_bias=qkv_bias, qk_scale=qk_scale, drop_rate=drop_rate,
                attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rates[i],
                act_cfg=act_cfg, norm_cfg=norm_cfg, with_cp=with_cp))
        self.downsample = downsample

    def _merge(self, x: Tensor, hw_shape: Tuple[int, int]):
        """mmdet's stage output: ``(x_down, down_hw_shape, x, hw_shape)``."""
        if self.downsample:
            x_down, down_hw_shape = self.downsample(x, hw_shape)
            return x_down, down_hw_shape, x, hw_shape
        return x, hw_shape, x, hw_shape

    def forward(self, x: Tensor, hw_shape: Tuple[int, int]):
        """(B, H * W, C) -> (next stage's tokens, its (H', W'), this stage's output, (H, W))."""
        for block in self.blocks:
            x = block(x, hw_shape)
        return self._merge(x, hw_shape)


def _pretrained_init_cfg(pretrained: Optional[str],
                         init_cfg: Optional[dict]) -> Optional[dict]:
    """mmdet's deprecated ``pretrained`` path, turned into ``init_cfg``."""
    keys = BACKBONE_KEYS
    keys.require('pretrained', not (init_cfg and pretrained),
                 'and init_cfg cannot be specified at the same time (use init_cfg)')
    keys.require('pretrained', pretrained is None or isinstance(pretrained, str),
                 f'must be a str or None, got {pretrained!r}')
    if pretrained is not None:
        warnings.warn('DeprecationWarning: pretrained is deprecated, use "init_cfg" instead')
        return dict(type='Pretrained', checkpoint=pretrained)
    return init_cfg


def _check_arch(pretrain_img_size: Union[int, Tuple[int, ...]], patch_size: int,
                window_size: int, depths: Sequence[int], num_heads: Sequence[int],
                strides: Sequence[int], out_indices: Sequence[int]) -> Tuple[int, int]:
    """Check the backbone's shape arguments; returns ``pretrain_img_size`` as (H, W)."""
    keys = BACKBONE_KEYS
    size = pretrain_img_size
    if isinstance(size, int):
        size = to_2tuple(size)
    elif isinstance(size, Sequence) and len(size) == 1:
        size = to_2tuple(size[0])
    keys.require('pretrain_img_size', isinstance(size, Sequence) and len(size) == 2,
                 f'must be an int or a tuple of 1 or 2 ints, got {pretrain_img_size!r}')
    keys.number('window_size', window_size, 1, integer=True)
    depths = keys.numbers('depths', depths, 1, integer=True)
    keys.require('num_heads', len(num_heads) == len(depths),
                 f'{tuple(num_heads)} must have one entry per stage of depths {tuple(depths)}')
    keys.require('strides', len(strides) == len(depths),
                 f'{tuple(strides)} must have one entry per stage of depths {tuple(depths)}')
    keys.require('strides[0]', strides[0] == patch_size,
                 f'must equal patch_size {patch_size} (a non-overlapping patch embedding), '
                 f'got {strides[0]}')
    for i, index in enumerate(out_indices):
        keys.number(f'out_indices[{i}]', index, 0, len(depths) - 1, integer=True)
    return tuple(size)


class SwinTransformer(BaseModule):
    """Swin Transformer backbone (mmdet 3.x's ``SwinTransformer``; not registered).

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
        init_cfg: ``dict(type='Pretrained', checkpoint=...)`` or ``None``.

    Raises:
        ConfigError: a shape argument that does not fit (``model.backbone.<key>``).
    """

    stage_cls: Type[SwinBlockSequence] = SwinBlockSequence

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
                 frozen_stages: int = -1, init_cfg: Optional[dict] = None) -> None:
        # validate before building anything big
        init_cfg = _pretrained_init_cfg(pretrained, init_cfg)
        pretrain_img_size = _check_arch(pretrain_img_size, patch_size, window_size, depths,
                                        num_heads, strides, out_indices)
        super().__init__(init_cfg=init_cfg)
        self.convert_weights = convert_weights
        self.frozen_stages = frozen_stages
        self.depths = tuple(int(d) for d in depths)
        self.strides = tuple(strides)
        self.window_size = window_size
        self.out_indices = out_indices
        self.use_abs_pos_embed = use_abs_pos_embed
        patch_norm_cfg = norm_cfg if patch_norm else None
        self.patch_embed = PatchEmbed(in_channels=in_channels, embed_dims=embed_dims,
                                      conv_type='Conv2d', kernel_size=patch_size,
                                      stride=strides[0], padding='corner',
                                      norm_cfg=patch_norm_cfg, init_cfg=None)
        if self.use_abs_pos_embed:
            num_patches = ((pretrain_img_size[0] // patch_size) *
                           (pretrain_img_size[1] // patch_size))
            self.absolute_pos_embed = nn.Parameter(torch.zeros((1, num_patches, embed_dims)))
        self.drop_after_pos = nn.Dropout(p=drop_rate)
        self.stages = self._build_stages(
            embed_dims, num_heads, mlp_ratio, drop_path_rate, patch_norm_cfg,
            dict(window_size=window_size, qkv_bias=qkv_bias, qk_scale=qk_scale,
                 drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, act_cfg=act_cfg,
                 norm_cfg=norm_cfg, with_cp=with_cp))
        self.num_features = [int(embed_dims * 2**i) for i in range(len(self.depths))]
        for i in out_indices:
            self.add_module(f'norm{i}', build_norm_layer(norm_cfg, self.num_features[i])[1])

    def _build_stages(self, embed_dims: int, num_heads: Sequence[int],
                      mlp_ratio: Union[int, float], drop_path_rate: float,
                      patch_norm_cfg: Optional[dict], block_cfg: dict) -> ModuleList:
        """The stages (``stage_cls``), each but the last followed by patch merging."""
        depths = self.depths
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        stages = ModuleList()
        in_channels = embed_dims
        for i in range(len(depths)):
            downsample = None
            if i < len(depths) - 1:
                downsample = PatchMerging(in_channels=in_channels, out_channels=2 * in_channels,
                                          stride=self.strides[i + 1], norm_cfg=patch_norm_cfg,
                                          init_cfg=None)
            stages.append(self.stage_cls(
                embed_dims=in_channels, num_heads=num_heads[i],
                feedforward_channels=int(mlp_ratio * in_channels), depth=depths[i],
                drop_path_rate=dpr[sum(depths[:i]):sum(depths[:i + 1])], downsample=downsample,
                init_cfg=None, **block_cfg))
            if downsample:
                in_channels = downsample.out_channels
        return stages

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
        self.load_state_dict(adapt_swin_state_dict(state, self.state_dict()), strict=False)

    def forward(self, x: Tensor) -> List[Tensor]:
        """Images (B, C_in, H, W) -> one (B, C_i, H_i, W_i) map per ``out_indices`` stage."""
        x, hw_shape = self.patch_embed(x)
        if self.use_abs_pos_embed:
            x = x + self.absolute_pos_embed
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw_shape, out, out_hw_shape = stage(x, hw_shape)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(out)
                out = out.view(-1, *out_hw_shape, self.num_features[i]).permute(0, 3, 1, 2)
                outs.append(out.contiguous())
        return outs
