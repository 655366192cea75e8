"""SparseViT: a Swin Transformer that skips whole windows, per stage (Chen et al., CVPR 2023).

:class:`SparseSwinTransformer` is a drop-in backbone for mmdet's and mmseg's ``SwinTransformer``:
the same constructor arguments and exactly the same state_dict keys, so model-zoo Swin, Mask R-CNN
and UperNet checkpoints load unchanged. Its dense parts are :mod:`mmsparse.models.layers.swin`
(the adaptation of mmdet's Swin); this module holds what is SparseViT's own: window ratios, the
kept-window plan of a stage, and the sparse path of a block.

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
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from torch import Tensor

from mmsparse.errors import ConfigError
from mmsparse.models.layers.swin import (BACKBONE_KEYS, SwinBlock, SwinBlockSequence,
                                         SwinTransformer, convert_official_swin)
from mmsparse.ops.windows import (RATIO_GROUP_SIZE, gather_tokens, is_non_decreasing,
                                  kept_token_positions, num_kept_windows, per_block_ratios,
                                  scatter_tokens, shifted_window_attn_mask, token_activation,
                                  topk_windows, window_scores, window_token_index,
                                  window_valid_mask)
from mmsparse.registry import MODELS
from mmsparse.validation import Keys

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

    The grouping rule (W-MSA / SW-MSA pairs, non-decreasing within a stage) is
    :func:`mmsparse.ops.windows.per_block_ratios` / :func:`~mmsparse.ops.windows.is_non_decreasing`,
    the rule the SAA hook and the search follow too.

    Args:
        ratios: ``None`` (all 0), or one sequence per stage holding either one ratio per block or
            one ratio per W-MSA / SW-MSA pair (``depth // 2`` values, each used for both blocks).
        depths: blocks per stage.
        key: the full config key named in error messages (``model.backbone.window_ratios``).

    Returns:
        One tuple of floats per stage, one float per block.

    Raises:
        WindowRatioError: wrong number of stages or blocks, a ratio outside [0, 1), or ratios that
            decrease within a stage.
    """
    depths = [int(d) for d in depths]
    if ratios is None:
        return tuple(tuple(0.0 for _ in range(d)) for d in depths)
    # messages read "<key>[i][j]: <what is wrong>": the key is complete, so no prefix here
    keys = Keys('', WindowRatioError)
    keys.require(f'{key}:', not isinstance(ratios, (str, bytes)) and isinstance(ratios, Sequence),
                 f'expected one list of ratios per stage ({len(depths)} stages), got '
                 f'{ratios!r} ({_EXAMPLE})')
    keys.require(f'{key}:', len(ratios) == len(depths),
                 f'expected one list per stage, {len(depths)} stages (depths {tuple(depths)}), '
                 f'got {len(ratios)} ({_EXAMPLE})')
    return tuple(_stage_ratios(keys, f'{key}[{i}]', i, stage, depth)
                 for i, (stage, depth) in enumerate(zip(ratios, depths)))


def _stage_ratios(keys: Keys, key: str, i: int, stage, depth: int) -> Tuple[float, ...]:
    """One stage of :func:`normalize_window_ratios`."""
    keys.require(f'{key}:', not isinstance(stage, (str, bytes)) and isinstance(stage, Sequence),
                 f'expected a list of {depth} ratios (one per block) for stage {i}, '
                 f'got {stage!r}')
    for j, r in enumerate(stage):
        keys.require(f'{key}[{j}]:', not isinstance(r, bool) and isinstance(r, numbers.Real),
                     f'{r!r} is not a number; a ratio is the fraction of windows skipped, '
                     f'in [0, 1)')
        keys.require(f'{key}[{j}]:', 0.0 <= float(r) < 1.0,
                     f'{r} is outside [0, 1) (the fraction of windows a block skips; 0 = dense)')
    values = per_block_ratios(stage, depth, RATIO_GROUP_SIZE)
    if values is None:
        pairs = (f' or {depth // RATIO_GROUP_SIZE} (one per W-MSA/SW-MSA pair)'
                 if depth % RATIO_GROUP_SIZE == 0 else '')
        keys.fail(f'{key}:', f'stage {i} has {depth} blocks; give {depth} ratios (one per '
                  f'block){pairs}, got {len(stage)}')
    keys.require(f'{key}:', is_non_decreasing(values),
                 f'ratios must be non-decreasing within a stage (later blocks keep a subset of '
                 f'the earlier kept windows), got {list(stage)}')
    return tuple(values)


class SparseSwinBlock(SwinBlock):
    """A Swin block (mmdet's ``SwinBlock`` keys) that can run on a subset of its windows."""

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
            return super().forward(x, hw_shape)
        return self._run(lambda t: self._sparse(t, kept), x)

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


class SparseSwinBlockSequence(SwinBlockSequence):
    """One stage (mmdet's ``SwinBlockSequence`` keys) whose blocks skip windows.

    Attributes:
        window_ratios: one ratio per block (set by the backbone, already validated).
        kept_windows: ``None``, or the records of the last forward (see
            :meth:`SparseSwinTransformer.record_kept_windows`).
    """

    block_cls = SparseSwinBlock

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.window_ratios: Tuple[float, ...] = tuple(0.0 for _ in range(self.depth))
        self.kept_windows: Optional[list] = None

    def forward(self, x: Tensor, hw_shape: Tuple[int, int]):
        """As :meth:`SwinBlockSequence.forward`; blocks with a ratio > 0 run on kept windows."""
        if self.kept_windows is not None:
            self.kept_windows = []
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
        return self._merge(x, hw_shape)


@MODELS.register_module()
class SparseSwinTransformer(SwinTransformer):
    """Swin Transformer backbone with SparseViT window pruning.

    Same constructor arguments and state_dict keys as mmdet 3.x's ``SwinTransformer`` (whose keys
    equal mmseg 1.x's; see :class:`mmsparse.models.layers.swin.SwinTransformer`), plus
    ``window_ratios``.

    Args:
        *args, **kwargs: the arguments of :class:`~mmsparse.models.layers.swin.SwinTransformer`
            (mmdet's).
        window_ratios: per stage, one ratio per block or per W-MSA/SW-MSA pair, each in [0, 1)
            and non-decreasing within a stage; ``None`` = all 0 (dense). Also a settable
            attribute (validated on set), read at every forward.

    Raises:
        WindowRatioError: bad ``window_ratios`` (``model.backbone.window_ratios...``).
    """

    stage_cls = SparseSwinBlockSequence

    def __init__(self, *args, window_ratios=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.window_ratios = window_ratios

    @property
    def window_ratios(self) -> Ratios:
        """Per stage, per block: the fraction of windows each block skips."""
        return tuple(stage.window_ratios for stage in self.stages)

    @window_ratios.setter
    def window_ratios(self, ratios) -> None:
        ratios = normalize_window_ratios(ratios, self.depths,
                                         BACKBONE_KEYS.key('window_ratios'))
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
        """The records of the last forward (:meth:`record_kept_windows`), or ``None``."""
        if self.stages[0].kept_windows is None:
            return None
        return [list(stage.kept_windows) for stage in self.stages]
