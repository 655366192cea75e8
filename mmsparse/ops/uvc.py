"""UVC (Unified ViT Compression, Yu et al., ICLR 2022): the pure functions of the method.

Torch only, no module state. Shapes: L blocks, H heads, hd = C / H head dims, F MLP hidden
neurons, C embed dims, N tokens (patches + class token).

Architecture variables (real-valued, used through :func:`ste_ceil`):

- ``s_heads`` (L,): heads removed per block, in [0, H - 1].
- ``s_neurons`` (L,): MLP hidden neurons removed per block, in [0, F - 1].
- ``r`` (L, H): dims removed inside each head (of its value / output side), in [0, hd - 1].

(The original packs ``s = [s_heads, s_neurons]`` as one (L, 2) tensor.) Groups are ranked by
squared L2 norms of the *input columns* of ``attn.proj`` (heads and head dims) and of ``mlp.fc2``
(neurons): :func:`group_scores`. The ``ceil(s)`` lowest groups are removed (:func:`uvc_masks`).

The resource function (:func:`uvc_macs`) counts multiply-accumulates the way
:func:`mmsparse.analysis.count_flops` traces them (linear layers, the two attention matmuls,
LayerNorms, the patch embedding and the head), with the model's real token count N: the query and
key dims of a kept head stay ``hd`` (q/k are never pruned), the value / output dims of head h are
``hd - r[h]``. A block kept with probability ``p`` costs ``p`` times its MACs. So the hard
resource of an architecture equals the traced MACs of the compacted model, exactly.
"""
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    'ste_ceil', 'least_sum', 'LEAST_SUM_SLOPES', 'column_sq_norms', 'group_scores',
    'keep_mask_lowest', 'UVCMasks',
    'uvc_masks', 'ViTCost', 'block_macs', 'uvc_macs', 'uvc_flops_fraction',
    'group_flops_fractions', 'min_flops_fraction', 'prox_factors',
    'project_grad',
    'clip_inf_norm', 'gate_keep_prob',
    'gate_keep_sample', 'gate_keep_hard'
]


# ----------------------------------------------------------------------------------------------
# straight-through ceil and the least-sum penalty
# ----------------------------------------------------------------------------------------------
def ste_ceil(x: Tensor) -> Tensor:
    """``ceil(x)`` in the forward pass, identity gradient in the backward pass (any shape)."""
    return x + (torch.ceil(x) - x).detach()


class _LeastSum(torch.autograd.Function):
    """Sum of the ``ceil(s)`` smallest values of ``v``; d/ds = one of the sorted values."""

    @staticmethod
    def forward(ctx, s: Tensor, v: Tensor, nearest: bool) -> Tensor:
        n = v.shape[-1]
        k = torch.ceil(s.detach()).clamp(0, n).long()  # (...)
        sorted_v, _ = torch.sort(v.detach(), dim=-1)  # ascending
        csum = torch.cat([sorted_v.new_zeros(*sorted_v.shape[:-1], 1),
                          sorted_v.cumsum(-1)], dim=-1)  # (..., n + 1)
        out = csum.gather(-1, k.unsqueeze(-1)).squeeze(-1)
        j = torch.floor(s.detach() + 0.5).long() if nearest else k
        slope = sorted_v.gather(-1, j.clamp(0, n - 1).unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(slope)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        slope, = ctx.saved_tensors
        return grad * slope, None, None


LEAST_SUM_SLOPES = ('next', 'nearest')


def least_sum(s: Tensor, v: Tensor, slope: str = 'next') -> Tensor:
    """UVC's ``LeastSsum``: the sum of the ``ceil(s)`` smallest group scores.

    Forward: ``sum(sort(v)[:ceil(s)])``. Backward (w.r.t. ``s`` only; ``v`` is treated as data):
    ``grad * sort(v)[j]`` with

    - ``slope='next'`` (the original): ``j = ceil(s)``, the next-smallest score, i.e. what
      removing one more group would add (the largest score when every group is counted);
    - ``slope='nearest'``: ``j = floor(s + 1/2)``. The slope changes at half-integers instead
      of at the integers where ``ceil`` changes the hard architecture: when removing group k
      pays (its penalty is below its FLOPs value) but removing group k + 1 does not, ``s``
      settles around ``k + 1/2`` with ``ceil(s) = k + 1`` fixed, instead of toggling between k
      and k + 1 groups every step (with 'next' the slope jumps exactly where ``ceil`` does).

    Args:
        s: (...) real number of groups to count, in [0, n].
        v: (..., n) group scores (e.g. squared column norms), >= 0.
        slope: 'next' or 'nearest'.

    Returns:
        (...) the sums.
    """
    if v.shape[:-1] != s.shape:
        raise ValueError(f'least_sum: s {tuple(s.shape)} must be v {tuple(v.shape)} without '
                         f'its last dim')
    if slope not in LEAST_SUM_SLOPES:
        raise ValueError(f'least_sum: slope must be one of {LEAST_SUM_SLOPES}, got {slope!r}')
    return _LeastSum.apply(s, v, slope == 'nearest')


# ----------------------------------------------------------------------------------------------
# group scores and masks
# ----------------------------------------------------------------------------------------------
def column_sq_norms(weight: Tensor) -> Tensor:
    """Squared L2 norm of every input column of a linear weight: (out, in) -> (in,)."""
    return weight.detach().float().pow(2).sum(0)


def group_scores(proj_weights: Tensor, fc2_weights: Tensor,
                 num_heads: int) -> Tuple[Tensor, Tensor, Tensor]:
    """UVC's group scores of every block.

    Args:
        proj_weights: (L, C, C) ``attn.proj`` weights (out, in).
        fc2_weights: (L, C, F) ``ffn`` second linear weights (out, in).
        num_heads: H; the proj input columns are ordered head by head.

    Returns:
        ``(head (L, H), dim (L, H, hd), neuron (L, F))``: dim = squared norm of one proj input
        column, head = sum over the head's columns, neuron = squared norm of one fc2 column.
    """
    L, _, C = proj_weights.shape
    dim = proj_weights.detach().float().pow(2).sum(1).reshape(L, num_heads, C // num_heads)
    neuron = fc2_weights.detach().float().pow(2).sum(1)
    return dim.sum(-1), dim, neuron


def keep_mask_lowest(scores: Tensor, num_removed: Tensor) -> Tensor:
    """Keep mask that removes the ``num_removed`` lowest-scored entries along the last dim.

    Ties are broken by position (the earlier entry is removed first), so the mask is
    deterministic.

    Args:
        scores: (..., n).
        num_removed: (...) integers in [0, n].

    Returns:
        (..., n) bool, True = kept.
    """
    order = torch.sort(scores, dim=-1, stable=True).indices
    rank = torch.empty_like(order)
    ar = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    rank.scatter_(-1, order, ar)
    return rank >= num_removed.long().unsqueeze(-1)


class UVCMasks(NamedTuple):
    """Keep masks of one architecture (True/1 = kept).

    Attributes:
        heads: (L, H) heads kept.
        dims: (L, H, hd) value / output dims kept inside each head (False for removed heads).
        neurons: (L, F) MLP hidden neurons kept.
    """
    heads: Tensor
    dims: Tensor
    neurons: Tensor


def uvc_masks(head_scores: Tensor, dim_scores: Tensor, neuron_scores: Tensor,
              heads_removed: Tensor, dims_removed: Tensor, neurons_removed: Tensor) -> UVCMasks:
    """The masks of ``ceil``-ed architecture variables: the lowest-scored groups go.

    Args:
        head_scores: (L, H); dim_scores: (L, H, hd); neuron_scores: (L, F).
        heads_removed: (L,) ints; dims_removed: (L, H) ints; neurons_removed: (L,) ints.

    Returns:
        :class:`UVCMasks`. Within each kept head the ``dims_removed[l, h]`` lowest dims go.
    """
    heads = keep_mask_lowest(head_scores, heads_removed)
    dims = keep_mask_lowest(dim_scores, dims_removed) & heads.unsqueeze(-1)
    neurons = keep_mask_lowest(neuron_scores, neurons_removed)
    return UVCMasks(heads, dims, neurons)


# ----------------------------------------------------------------------------------------------
# the resource function
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViTCost:
    """What the MACs of a plain ViT (mmpretrain ``VisionTransformer``) depend on.

    Attributes:
        num_layers: L.
        num_tokens: N = patches + extra (class) tokens of the input the model really sees.
        embed_dims: C.
        num_heads: H.
        head_dims: hd (q / k dims of a head, and the dense value dims).
        mlp_dims: F.
        fixed_macs: MACs outside the blocks (patch embedding, final norm, head).
        norm_macs: MACs of one block's two LayerNorms (MMEngine counts 5 per element: 10 N C).
    """
    num_layers: int
    num_tokens: int
    embed_dims: int
    num_heads: int
    head_dims: int
    mlp_dims: int
    fixed_macs: float = 0.0
    norm_macs: float = 0.0

    @property
    def dense_block_macs(self) -> float:
        """MACs of one dense block."""
        n, c, h, hd, f = (self.num_tokens, self.embed_dims, self.num_heads, self.head_dims,
                          self.mlp_dims)
        return float(self.norm_macs + n * c * 3 * h * hd + n * n * 2 * h * hd + n * h * hd * c
                     + 2 * n * c * f)

    @property
    def dense_macs(self) -> float:
        """MACs of the dense model."""
        return self.fixed_macs + self.num_layers * self.dense_block_macs

    @classmethod
    def of_vit(cls, num_layers: int, num_patches: int, num_extra_tokens: int, embed_dims: int,
               num_heads: int, head_dims: int, mlp_dims: int, patch_macs: int,
               final_norm: bool, head_macs: float = 0.0) -> 'ViTCost':
        """The cost of a ViT from its sizes, counted as MMEngine's tracer counts them.

        Args:
            num_patches, num_extra_tokens: N = their sum.
            patch_macs: MACs of the patch embedding per patch (C_in / groups x kernel area x C).
            final_norm: whether a final LayerNorm runs (5 MACs per element, as each block's).
            head_macs: MACs of the classification head on one image.
        """
        n = num_patches + num_extra_tokens
        final = 5 * n * embed_dims if final_norm else 0
        return cls(num_layers=num_layers, num_tokens=n, embed_dims=embed_dims,
                   num_heads=num_heads, head_dims=head_dims, mlp_dims=mlp_dims,
                   fixed_macs=float(num_patches * patch_macs + final + head_macs),
                   norm_macs=float(2 * 5 * n * embed_dims))


def block_macs(cost: ViTCost, heads_kept: Tensor, v_dims: Tensor, neurons_kept: Tensor) -> Tensor:
    """MACs of blocks with ``heads_kept`` heads, ``v_dims`` value dims in all, ``neurons_kept``.

    Per block: ``norm + N C (2 Hk hd + Dv)`` (qkv) ``+ N^2 (Hk hd + Dv)`` (q k^T and attn v)
    ``+ N Dv C`` (proj) ``+ 2 N C Fk`` (fc1, fc2).

    Args:
        heads_kept, v_dims, neurons_kept: (L,) tensors (may carry gradients).

    Returns:
        (L,) MACs.
    """
    n, c, hd = cost.num_tokens, cost.embed_dims, cost.head_dims
    qk = heads_kept * hd
    return (cost.norm_macs + n * c * (2 * qk + v_dims) + n * n * (qk + v_dims) + n * v_dims * c
            + 2 * n * c * neurons_kept)


def uvc_macs(cost: ViTCost, s_heads: Tensor, s_neurons: Tensor, r: Tensor, head_keep: Tensor,
             block_keep: Optional[Tensor] = None, ceil: bool = True) -> Tensor:
    """MACs of the architecture ``(s_heads, s_neurons, r)`` with block keep probabilities.

    Args:
        cost: the dense model's :class:`ViTCost`.
        s_heads: (L,) heads removed; s_neurons: (L,) neurons removed; r: (L, H) dims removed
            inside each head. Real-valued; ``ceil``-ed with a straight-through gradient when
            ``ceil`` (else used as given).
        head_keep: (L, H) 0/1 kept heads (data, no gradient): only kept heads' ``r`` count.
            It must keep ``H - ceil(s_heads)`` heads per block.
        block_keep: (L,) probability (or 0/1) that each block runs; None = all run.
        ceil: apply :func:`ste_ceil` to the architecture variables.

    Returns:
        () float64 total MACs (differentiable w.r.t. s_heads, s_neurons, r and block_keep).
    """
    # float64: MAC counts exceed float32's exact integer range
    s_heads, s_neurons, r = s_heads.double(), s_neurons.double(), r.double()
    if ceil:
        s_heads, s_neurons, r = ste_ceil(s_heads), ste_ceil(s_neurons), ste_ceil(r)
    if block_keep is not None:
        block_keep = block_keep.double()
    h, hd, f = cost.num_heads, cost.head_dims, cost.mlp_dims
    heads_kept = h - s_heads
    v_dims = heads_kept * hd - (head_keep.detach().to(r.dtype) * r).sum(-1)
    per_block = block_macs(cost, heads_kept, v_dims, f - s_neurons)
    if block_keep is not None:
        per_block = per_block * block_keep
    return cost.fixed_macs + per_block.sum()


def uvc_flops_fraction(cost: ViTCost, s_heads: Tensor, s_neurons: Tensor, r: Tensor,
                       head_keep: Tensor, block_keep: Optional[Tensor] = None,
                       ceil: bool = True) -> Tensor:
    """:func:`uvc_macs` as a fraction of the dense model's MACs (the budget's unit)."""
    return uvc_macs(cost, s_heads, s_neurons, r, head_keep, block_keep, ceil) / cost.dense_macs


def group_flops_fractions(cost: ViTCost) -> Tuple[float, float, float]:
    """Dense FLOPs fraction of one group of each kind: (head, neuron, value dim).

    A head (q, k, v rows of ``qkv``, its share of both attention matmuls and of ``proj``):
    ``N C 3 hd + 2 N^2 hd + N hd C``; a neuron: ``2 N C``; a value dim: ``2 N C + N^2``.
    """
    n, c, hd = cost.num_tokens, cost.embed_dims, cost.head_dims
    dense = cost.dense_macs
    return ((n * c * 3 * hd + 2 * n * n * hd + n * hd * c) / dense, 2 * n * c / dense,
            (2 * n * c + n * n) / dense)


def min_flops_fraction(cost: ViTCost, block_gating: bool) -> float:
    """The smallest FLOPs fraction the structure can reach.

    Every block keeps >= 1 head with >= 1 value dim and >= 1 neuron (the bounds of s and r);
    with block gating every block may be skipped, leaving the fixed MACs.
    """
    if block_gating:
        return cost.fixed_macs / cost.dense_macs
    one = torch.ones(1, dtype=torch.float64)
    per_block = block_macs(cost, one, one, one).item()
    return (cost.fixed_macs + cost.num_layers * per_block) / cost.dense_macs


# ----------------------------------------------------------------------------------------------
# proximal step, projections
# ----------------------------------------------------------------------------------------------
def prox_factors(removed: Tensor, dual: Tensor, lr: float) -> Tensor:
    """Proximal step of the group penalty ``dual * ||w_g||^2``: multiply removed groups' weights.

    The proximal operator of ``lr * y * ||w||^2`` is ``w / (1 + 2 lr y)``.

    Args:
        removed: (..., n) bool, True for the currently removed groups.
        dual: (...) dual variable of each row of groups (>= 0).
        lr: the weights' current learning rate.

    Returns:
        (..., n) factors: ``1 / (1 + 2 lr dual)`` where removed, 1 elsewhere.
    """
    shrink = 1.0 / (1.0 + 2.0 * lr * dual.detach().float().unsqueeze(-1))
    return torch.where(removed, shrink.expand(removed.shape), torch.ones_like(shrink))


def project_grad(grad: Tensor, x: Tensor, lower: float, upper: float) -> Tensor:
    """Zero the components of a descent gradient that push ``x`` out of ``[lower, upper]``.

    A step ``x - lr * grad`` leaves the box where ``x <= lower`` and ``grad > 0`` or where
    ``x >= upper`` and ``grad < 0``.
    """
    out = (x <= lower) & (grad > 0) | (x >= upper) & (grad < 0)
    return torch.where(out, torch.zeros_like(grad), grad)


def clip_inf_norm(grad: Tensor, max_norm: float) -> Tensor:
    """Scale ``grad`` so that its largest absolute component is at most ``max_norm``."""
    norm = grad.abs().max() if grad.numel() else grad.new_zeros(())
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return grad * scale


# ----------------------------------------------------------------------------------------------
# block gates
# ----------------------------------------------------------------------------------------------
def gate_keep_prob(logits: Tensor, kind: str, tau: float = 0.5, eps: float = 0.1) -> Tensor:
    """Noise-free probability that each block runs.

    Args:
        logits: (L, 2) gate parameters, column 1 = run, column 0 = skip.
        kind: 'gumbel': ``softmax(logits / tau)[:, 1]`` (= P(a hard Gumbel sample runs the
            block)); 'soft_l0': ``g1^2 / (g1^2 + eps)``.

    Returns:
        (L,) in [0, 1], differentiable w.r.t. ``logits``.
    """
    if kind == 'gumbel':
        return F.softmax(logits / tau, dim=-1)[:, 1]
    if kind == 'soft_l0':
        g1 = logits[:, 1].pow(2)
        return g1 / (g1 + eps)
    raise ValueError(f"gate kind must be 'gumbel' or 'soft_l0', got {kind!r}")


def gate_keep_sample(logits: Tensor, kind: str, tau: float = 0.5, eps: float = 0.1,
                     hard: bool = False) -> Tensor:
    """Training-time weight of each block's output, ``x <- d * block(x) + (1 - d) * x``.

    'gumbel': ``gumbel_softmax(logits, tau, hard)[:, 1]`` (a fresh sample per call);
    'soft_l0': the deterministic :func:`gate_keep_prob`.

    Returns:
        (L,) differentiable w.r.t. ``logits``.
    """
    if kind == 'gumbel':
        return F.gumbel_softmax(logits, tau=tau, hard=hard, dim=-1)[:, 1]
    return gate_keep_prob(logits, kind, tau, eps)


def gate_keep_hard(logits: Tensor, kind: str, eps: float = 0.1) -> Tensor:
    """Deterministic run/skip decision: 'gumbel' runs iff ``g1 > g0``; 'soft_l0' iff
    ``g1^2 / (g1^2 + eps) >= 0.5``, i.e. ``g1^2 >= eps``. Returns (L,) bool."""
    if kind == 'gumbel':
        return logits[:, 1] > logits[:, 0]
    if kind == 'soft_l0':
        return logits[:, 1].pow(2) >= eps
    raise ValueError(f"gate kind must be 'gumbel' or 'soft_l0', got {kind!r}")
