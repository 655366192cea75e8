"""Swin windows for SparseViT: partition / reverse, window scores, top-k, gather / scatter.

Pure tensor functions (torch only, no module state). Conventions: B = batch, (H, W) = feature map,
C = channels, ws = window size, s = cyclic shift (``ws // 2`` for SW-MSA blocks, else 0),
(Hp, Wp) = (H, W) zero-padded right / bottom to multiples of ws, nW = (Hp / ws) * (Wp / ws)
windows per image, N = ws * ws tokens per window, k = kept windows per image.

Window order is row-major over the (padded, rolled) map, tokens inside a window row-major too:
the order of mmdet's / mmseg's ``ShiftWindowMSA.window_partition``. A shifted layout is the map
rolled by ``(-s, -s)`` before partitioning (``torch.roll``), as in those ``ShiftWindowMSA``.

SparseViT scores each window by the L2 norm, over its N tokens, of the per-token mean |activation|
(``mean_c |x|``), keeps the top-k windows per image (k = ``int(nW * (1 - ratio))``), runs
attention + FFN on the kept windows only and writes them back; the other windows pass through.
Instead of partitioning the whole map, :func:`window_token_index` maps every window token to its
position in the flat (H * W) map once, so :func:`gather_windows` / :func:`scatter_windows` touch
only the kept tokens (plus one out-of-place copy of the map for the scatter).

Window ratios are grouped by one rule, read by the backbone (validation of configured ratios),
the sparsity-aware adaptation (SAA draws) and the search (genes): see :func:`num_ratio_groups`.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    'pad_to_window_multiple', 'window_partition', 'window_reverse', 'to_windows', 'from_windows',
    'shifted_window_attn_mask', 'token_activation', 'window_scores', 'num_kept_windows',
    'topk_windows', 'window_token_index', 'kept_token_positions', 'window_valid_mask',
    'gather_tokens', 'scatter_tokens', 'gather_windows', 'scatter_windows', 'RATIO_GROUP_SIZE',
    'num_ratio_groups', 'expand_group_ratios', 'per_block_ratios', 'is_non_decreasing'
]


def pad_to_window_multiple(x: Tensor, window_size: int) -> Tuple[Tensor, Tuple[int, int]]:
    """Zero-pad a (B, H, W, C) map on the right and bottom to multiples of ``window_size``.

    Returns:
        The padded map (B, Hp, Wp, C) and ``(pad_bottom, pad_right)``.
    """
    _, h, w, _ = x.shape
    pad_b = (window_size - h % window_size) % window_size
    pad_r = (window_size - w % window_size) % window_size
    if pad_b or pad_r:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    return x, (pad_b, pad_r)


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """(B, Hp, Wp, C) with Hp, Wp multiples of ws -> windows (B, nW, ws * ws, C)."""
    b, hp, wp, c = x.shape
    ws = window_size
    if hp % ws or wp % ws:
        raise ValueError(f'window_partition: map {hp}x{wp} is not a multiple of window {ws}')
    x = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (hp // ws) * (wp // ws), ws * ws, c)


def window_reverse(windows: Tensor, hp: int, wp: int, window_size: int) -> Tensor:
    """Windows (B, nW, ws * ws, C) -> (B, Hp, Wp, C); the inverse of :func:`window_partition`."""
    b, _, _, c = windows.shape
    ws = window_size
    x = windows.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp, wp, c)


def to_windows(x: Tensor, window_size: int, shift: int = 0) -> Tensor:
    """(B, H, W, C) -> windows (B, nW, ws * ws, C): zero-pad, roll by (-shift, -shift), split."""
    x, _ = pad_to_window_multiple(x, window_size)
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    return window_partition(x, window_size)


def from_windows(windows: Tensor, hw_shape: Tuple[int, int], window_size: int,
                 shift: int = 0) -> Tensor:
    """Windows (B, nW, ws * ws, C) -> (B, H, W, C): the inverse of :func:`to_windows` (crop pad)."""
    h, w = hw_shape
    ws = window_size
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    x = window_reverse(windows, hp, wp, ws)
    if shift:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    return x[:, :h, :w, :]


def shifted_window_attn_mask(hw_shape: Tuple[int, int], window_size: int, shift: int,
                             device=None) -> Optional[Tensor]:
    """Attention mask of SW-MSA (nW, N, N): 0 inside one region, -100 across regions.

    After the roll by ``(-shift, -shift)``, the last window row / column mixes tokens from
    opposite borders of the map; tokens of different regions must not attend to each other.
    The regions and the value -100 are those of Swin and mmdet's / mmseg's ``ShiftWindowMSA``.
    ``None`` when ``shift == 0``.
    """
    if not shift:
        return None
    h, w = hw_shape
    ws = window_size
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    region = torch.zeros((1, hp, wp, 1), device=device)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for rows in cuts:
        for cols in cuts:
            region[:, rows, cols, :] = label
            label += 1
    regions = window_partition(region, ws)[0, :, :, 0]  # (nW, N)
    diff = regions.unsqueeze(1) - regions.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def token_activation(x: Tensor) -> Tensor:
    """Per-token mean |activation| over channels: (B, L, C) -> (B, L)."""
    return x.abs().mean(dim=-1)


def window_scores(act: Tensor, hw_shape: Tuple[int, int], window_size: int,
                  shift: int = 0) -> Tensor:
    """Score of every window: L2 norm over its tokens of the per-token activation.

    Args:
        act: per-token activation (B, H * W), e.g. :func:`token_activation` of the block input.
        hw_shape: (H, W).
        window_size: ws.
        shift: cyclic shift of the layout (0 for W-MSA, ws // 2 for SW-MSA).

    Returns:
        (B, nW) scores on the padded (pad tokens count 0) and rolled layout.
    """
    b = act.shape[0]
    win = to_windows(act.reshape(b, *hw_shape, 1), window_size, shift)  # (B, nW, N, 1)
    return torch.linalg.vector_norm(win[..., 0], ord=2, dim=-1)


def num_kept_windows(num_windows: int, ratio: float) -> int:
    """Windows kept per image: ``int(num_windows * (1 - ratio))``, at least 1.

    The floor is SparseViT's; the minimum of 1 is mmsparse's (a block whose ratio is < 1 always
    processes a window, so no parameter goes unused on tiny maps).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f'window ratio must be in [0, 1), got {ratio}')
    return max(1, int(num_windows * (1.0 - ratio)))


def topk_windows(scores: Tensor, keep: int) -> Tensor:
    """Indices (B, keep) of the ``keep`` highest-scoring windows per image, best first.

    SparseViT computes this once per stage and layout; later blocks of the same layout with a
    higher ratio (smaller ``keep``) take the prefix ``indices[:, :keep]``.
    """
    if not 0 <= keep <= scores.shape[-1]:
        raise ValueError(f'keep must be in [0, {scores.shape[-1]}], got {keep}')
    return torch.topk(scores, keep, dim=-1, largest=True, sorted=True).indices


def window_token_index(hw_shape: Tuple[int, int], window_size: int, shift: int = 0,
                       device=None) -> Tuple[Tensor, Optional[Tensor]]:
    """Where every window token lives in the flat (H * W) map.

    Returns:
        ``index`` (nW, N) long: position ``r * W + c`` of each window token (pad tokens: 0), and
        ``valid`` (nW, N) bool, False at pad tokens, or ``None`` when H and W are multiples of
        ws (no pad tokens).
    """
    h, w = hw_shape
    grid = torch.arange(h * w, device=device).view(1, h, w, 1)
    pad_b = (window_size - h % window_size) % window_size
    pad_r = (window_size - w % window_size) % window_size
    if pad_b or pad_r:
        grid = F.pad(grid, (0, 0, 0, pad_r, 0, pad_b), value=-1)
    if shift:
        grid = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2))
    index = window_partition(grid, window_size)[0, :, :, 0]
    if not (pad_b or pad_r):
        return index, None
    valid = index >= 0
    return index.clamp(min=0), valid


def kept_token_positions(token_index: Tensor, window_idx: Tensor, length: int) -> Tensor:
    """Positions of the kept windows' tokens in the flattened (B * L) token map.

    Args:
        token_index: (nW, N) from :func:`window_token_index`.
        window_idx: (B, k) kept window indices per image.
        length: L = H * W.

    Returns:
        (B, k, N) long; pad tokens point at the image's token 0.
    """
    b = window_idx.shape[0]
    offsets = torch.arange(b, device=window_idx.device).view(b, 1, 1) * length
    return token_index[window_idx] + offsets


def window_valid_mask(valid: Optional[Tensor], window_idx: Tensor) -> Optional[Tensor]:
    """(B, k, N) bool: which tokens of the kept windows are real (``None``: all)."""
    return None if valid is None else valid[window_idx]


def gather_tokens(x: Tensor, positions: Tensor) -> Tensor:
    """Tokens (B, L, C) at ``positions`` (B, k, N) -> (B, k, N, C)."""
    b, length, c = x.shape
    return x.reshape(b * length, c).index_select(0, positions.reshape(-1)).view(
        *positions.shape, c)


def scatter_tokens(x: Tensor, windows: Tensor, positions: Tensor,
                   kept_valid: Optional[Tensor] = None) -> Tensor:
    """Write ``windows`` (B, k, N, C) at ``positions`` (B, k, N) of a copy of ``x`` (B, L, C).

    Tokens not in ``positions`` keep their value; pad tokens (``kept_valid`` False, from
    :func:`window_valid_mask`) are dropped. Out of place, differentiable w.r.t. both inputs.
    """
    b, length, c = x.shape
    flat = positions.reshape(-1)
    src = windows.reshape(-1, c).to(x.dtype)
    if kept_valid is not None:
        keep = kept_valid.reshape(-1).nonzero().squeeze(1)
        flat, src = flat.index_select(0, keep), src.index_select(0, keep)
    return x.reshape(b * length, c).index_copy(0, flat, src).view(b, length, c)


def gather_windows(x: Tensor, token_index: Tensor, window_idx: Tensor) -> Tensor:
    """Gather the kept windows of a token map.

    Args:
        x: (B, L, C) tokens, L = H * W.
        token_index: (nW, N) from :func:`window_token_index`.
        window_idx: (B, k) kept window indices per image.

    Returns:
        (B, k, N, C); pad tokens hold a copy of token 0 (mask them with ``valid``).
    """
    return gather_tokens(x, kept_token_positions(token_index, window_idx, x.shape[1]))


def scatter_windows(x: Tensor, windows: Tensor, token_index: Tensor, window_idx: Tensor,
                    valid: Optional[Tensor] = None) -> Tensor:
    """Write processed windows back into the map; tokens of other windows are unchanged.

    Out of place (differentiable w.r.t. ``x`` and ``windows``).

    Args:
        x: (B, L, C) tokens before the block.
        windows: (B, k, N, C) processed kept windows.
        token_index: (nW, N) from :func:`window_token_index`.
        window_idx: (B, k) kept window indices per image.
        valid: (nW, N) from :func:`window_token_index`; pad tokens are dropped.

    Returns:
        (B, L, C).
    """
    positions = kept_token_positions(token_index, window_idx, x.shape[1])
    return scatter_tokens(x, windows, positions, window_valid_mask(valid, window_idx))


# ------------------------------------------------------------------ window-ratio grouping
# SparseViT's rule, in one place. A stage's blocks fall into groups of ``group_size`` consecutive
# blocks (2: a W-MSA block and the SW-MSA block after it) that share one ratio; ratios never
# decrease within a stage, because a later block of a layout keeps a prefix of the windows an
# earlier block of that layout kept (:func:`topk_windows`). The SAA hook draws one sorted ratio
# per group, the search has one gene per group in a sorted group of genes, and a configured
# stage may give one ratio per group or one per block.
RATIO_GROUP_SIZE = 2


def num_ratio_groups(depth: int, group_size: int = RATIO_GROUP_SIZE) -> int:
    """Ratio groups in a stage of ``depth`` blocks: ``depth // group_size``.

    Raises:
        ValueError: ``group_size`` is not a positive divisor of ``depth``.
    """
    if group_size < 1 or depth % group_size:
        raise ValueError(f'group size {group_size} does not divide stage depth {depth}')
    return depth // group_size


def expand_group_ratios(group_ratios: Sequence[float],
                        group_size: int = RATIO_GROUP_SIZE) -> List[float]:
    """One ratio per group -> one ratio per block (each repeated ``group_size`` times)."""
    return [float(r) for r in group_ratios for _ in range(group_size)]


def per_block_ratios(ratios: Sequence[float], depth: int,
                     group_size: int = RATIO_GROUP_SIZE) -> Optional[List[float]]:
    """A stage's configured ratios as one ratio per block.

    Args:
        ratios: one ratio per block (``depth`` values), or one per group (``depth //
            group_size`` values, ``group_size`` dividing ``depth``).
        depth: blocks in the stage.
        group_size: blocks sharing one ratio.

    Returns:
        ``depth`` floats, or ``None`` when ``len(ratios)`` fits neither form.
    """
    if len(ratios) == depth:
        return [float(r) for r in ratios]
    if depth % group_size == 0 and len(ratios) == depth // group_size:
        return expand_group_ratios(ratios, group_size)
    return None


def is_non_decreasing(ratios: Sequence[float]) -> bool:
    """True when no ratio is smaller than the one before it (the order within a stage)."""
    return all(b >= a for a, b in zip(ratios, ratios[1:]))
