"""UVC's end-of-search projection onto the FLOPs budget (pure, torch only).

The stage-1 iterates of the primal-dual search end near, not at, the budget; this greedy
projection removes the group (a head, a value dim, an MLP neuron) of lowest mean-normalised score
per MAC saved until the hard architecture meets it. The MACs saved are those of
:func:`mmsparse.ops.uvc.block_macs` (one FLOPs truth); scores are sorted once and only the block
that lost a group is rescored, so a projection of DeiT-S takes milliseconds.
"""
from typing import NamedTuple, Tuple

import torch
from torch import Tensor

from .uvc import ViTCost, block_macs, keep_mask_lowest, uvc_flops_fraction

__all__ = ['project_to_budget']


# ----------------------------------------------------------------------------------------------
# the end-of-search projection onto the budget
# ----------------------------------------------------------------------------------------------
class _Ranked(NamedTuple):
    """What a projection computes once (the weights, so the scores, stay fixed in it): the
    scores, sorted ascending per block ((L, H), (L, F), (L, H, hd)), the heads' stable order
    (the masks') and each kind's mean score per block ((L,) float64, >= 1e-12)."""
    head_scores: Tensor
    head_order: Tensor
    head_sorted: Tensor
    neuron_sorted: Tensor
    dim_sorted: Tensor
    head_mean: Tensor
    neuron_mean: Tensor
    dim_mean: Tensor


def _rank(scores: Tuple[Tensor, Tensor, Tensor]) -> _Ranked:
    head_s, dim_s, neuron_s = scores
    head_sorted, head_order = torch.sort(head_s, dim=-1, stable=True)
    return _Ranked(head_s, head_order, head_sorted, torch.sort(neuron_s, dim=-1)[0],
                   torch.sort(dim_s, dim=-1)[0], head_s.mean(-1).double().clamp(min=1e-12),
                   neuron_s.mean(-1).double().clamp(min=1e-12),
                   dim_s.mean((-1, -2)).double().clamp(min=1e-12))


def _saved_macs(cost: ViTCost, heads: float, v_dims: Tensor, neurons: float) -> Tensor:
    """MACs saved by removing ``heads`` heads, ``v_dims`` value dims and ``neurons`` neurons
    from a block (:func:`block_macs` is affine: the difference to an empty block)."""
    zero = torch.zeros_like(v_dims)
    return block_macs(cost, zero + heads, v_dims, zero + neurons) - block_macs(cost, zero, zero,
                                                                               zero)


def _removal_costs(cost: ViTCost, ranked: _Ranked, rows: Tensor, nh: Tensor, nn_: Tensor,
                   nd: Tensor, heads_kept: Tensor, runs: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Relative score per MAC saved of the next group of each kind, in the blocks ``rows``.

    Returns:
        ``(head (R,), neuron (R,), dim (R, H))`` float64, inf where that group cannot go (the
        bound: every block keeps >= 1 group of each kind; a removed head; a skipped block).
    """
    h, hd, f = cost.num_heads, cost.head_dims, cost.mlp_dims
    nh, nn_, nd, kept, run = nh[rows], nn_[rows], nd[rows], heads_kept[rows], runs[rows]
    inf = float('inf')
    # heads: the next head in score order, with the value dims it still has
    k = nh.clamp(0, h - 1).unsqueeze(-1)
    nxt = ranked.head_order[rows].gather(-1, k)
    v_kept = ((hd - nd).clamp(0, hd) * kept).gather(-1, nxt).squeeze(-1).double()
    head = (ranked.head_sorted[rows].gather(-1, k).squeeze(-1).double()
            / ranked.head_mean[rows] / _saved_macs(cost, 1.0, v_kept, 0.0))
    head = head.masked_fill((nh + 1 > h - 1) | ~run, inf)
    kn = nn_.clamp(0, f - 1).unsqueeze(-1)
    neuron = (ranked.neuron_sorted[rows].gather(-1, kn).squeeze(-1).double()
              / ranked.neuron_mean[rows]
              / _saved_macs(cost, 0.0, torch.zeros_like(v_kept), 1.0))
    neuron = neuron.masked_fill((nn_ + 1 > f - 1) | ~run, inf)
    kd = nd.clamp(0, hd - 1).unsqueeze(-1)
    dim = (ranked.dim_sorted[rows].gather(-1, kd).squeeze(-1).double()
           / ranked.dim_mean[rows].unsqueeze(-1)
           / _saved_macs(cost, 0.0, torch.ones_like(v_kept), 0.0).unsqueeze(-1))
    dim = dim.masked_fill((nd + 1 > hd - 1) | ~kept | ~run.unsqueeze(-1), inf)
    return head, neuron, dim


def project_to_budget(cost: ViTCost, scores: Tuple[Tensor, Tensor, Tensor],
                      heads_removed: Tensor, neurons_removed: Tensor, dims_removed: Tensor,
                      block_runs: Tensor, budget: float,
                      multiple: int = 1) -> Tuple[Tensor, Tensor, Tensor, int]:
    """Remove the cheapest groups of a hard architecture until its FLOPs meet the budget.

    While the FLOPs fraction (:func:`uvc_flops_fraction`) exceeds ``budget``, removes the
    group (the next head of a block, value dim of a kept head or neuron of a block, in ascending
    score order) of the lowest relative score (over the mean score of its kind in its block)
    per MAC saved (:func:`block_macs`); ties go to heads, neurons, dims, then the first block /
    head. Every block keeps >= 1 group of each kind; skipped blocks are left alone. One group
    at a time, but only the block that lost one is rescored (the others' candidates stay).

    Args:
        cost: the dense model's :class:`ViTCost`.
        scores: ``(head (L, H), dim (L, H, hd), neuron (L, F))`` group scores
            (:func:`group_scores`).
        heads_removed: (L,) ints; neurons_removed: (L,) ints; dims_removed: (L, H) ints: the
            architecture (``ceil`` of the architecture variables).
        block_runs: (L,) bool, the blocks that run.
        budget: FLOPs fraction of the dense model to reach.
        multiple: then round every running block's kept neurons and every kept head's value
            dims down to a multiple of this (the lowest-score extra groups go; only where more
            than ``multiple`` remain): GEMM-friendly compact sizes (e.g. 8), fewer FLOPs.

    Returns:
        ``(heads_removed (L,), neurons_removed (L,), dims_removed (L, H), count)``: the new
        architecture (int64) and how many groups were removed.
    """
    nh, nn_, nd = (t.long().clone() for t in (heads_removed, neurons_removed, dims_removed))
    runs = block_runs.bool()
    ranked = _rank(scores)
    heads_kept = keep_mask_lowest(ranked.head_scores, nh)
    removed = _remove_greedily(cost, ranked, nh, nn_, nd, heads_kept, runs, budget)
    if multiple > 1:
        for counts, size, where in ((nn_, cost.mlp_dims, runs),
                                    (nd, cost.head_dims, heads_kept & runs.unsqueeze(-1))):
            kept = size - counts
            extra = torch.where(where & (kept > multiple), kept % multiple,
                                torch.zeros_like(kept))
            counts += extra
            removed += int(extra.sum())
    return nh, nn_, nd, removed


def _remove_greedily(cost: ViTCost, ranked: _Ranked, nh: Tensor, nn_: Tensor, nd: Tensor,
                     heads_kept: Tensor, runs: Tensor, budget: float) -> int:
    """The greedy part of :func:`project_to_budget`, on the counts in place; returns how many
    groups it removed."""
    costs = list(_removal_costs(cost, ranked, torch.arange(cost.num_layers), nh, nn_, nd,
                                heads_kept, runs))
    removed = 0
    while float(uvc_flops_fraction(cost, nh.double(), nn_.double(), nd.double(), heads_kept,
                                   runs.double())) > budget:
        kind = min(range(3), key=lambda i: float(costs[i].min()))  # the first kind on a tie
        if not bool(torch.isfinite(costs[kind].min())):
            return removed  # nothing left to remove
        index = int(costs[kind].argmin())  # the first block (head) on a tie
        if kind == 0:
            nh[index] += 1
            heads_kept[index] = keep_mask_lowest(ranked.head_scores[index], nh[index])
        elif kind == 1:
            nn_[index] += 1
        else:
            nd.view(-1)[index] += 1
        removed += 1
        row = torch.tensor([index // cost.num_heads if kind == 2 else index])
        for full, new in zip(costs, _removal_costs(cost, ranked, row, nh, nn_, nd, heads_kept,
                                                   runs)):
            full[row] = new
    return removed
