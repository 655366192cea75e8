"""Token pruning and selection ops (DynamicViT, SViTE+): keep counts, top-k and Gumbel
selection, gathers, the policy-masked attention softmax, policy-weighted pooling, the keep-ratio
and token-distillation losses. Torch only, no module state.

Shapes: B batch, N patch tokens (class token excluded unless said), T = 1 + N tokens with the
class token first, H heads, C channels, K kept patch tokens.

A *decision* or *policy* is a float tensor of 0/1 values (1 = keep) that may carry gradients
(straight-through Gumbel-softmax), so masks stay differentiable w.r.t. the scorers.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    # how many tokens
    'cumulative_keep_ratios', 'keep_count', 'keep_counts',
    # which tokens
    'topk_indices', 'batch_index_select', 'select_topk_tokens', 'gumbel_noise',
    'gumbel_topk_st', 'gumbel_keep_decision', 'random_keep_decision',
    # computing with a policy
    'softmax_with_policy', 'policy_weighted_mean',
    # losses
    'keep_ratio_loss', 'masked_token_mse',
]


# ---- how many tokens ----------------------------------------------------------------------------
def cumulative_keep_ratios(keep_rate: float, num_stages: int) -> List[float]:
    """DynamicViT's keep ratios ``[rho, rho**2, ..., rho**num_stages]`` (of the patch tokens).

    Args:
        keep_rate: rho, in (0, 1].
        num_stages: number of pruning locations.
    """
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f'keep_rate must be in (0, 1], got {keep_rate}')
    return [keep_rate ** (i + 1) for i in range(num_stages)]


def keep_count(num_tokens: int, token_keep: Union[int, float]) -> int:
    """Number of patch tokens kept: ``token_keep`` itself if an int (a count), else
    ``int(num_tokens * token_keep)`` (a ratio).

    DeiT-S (196 patches): 0.9 -> 176 (+ class token = SViTE's ``--token_number 177``),
    0.7 -> 137 (138).

    Raises:
        ValueError: if ``token_keep`` is not an int in [1, num_tokens] or a float in (0, 1], or
            keeps no token.
    """
    keep = token_keep
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise ValueError(f'token_keep must be an int count or a float ratio, got {keep!r}')
    if isinstance(keep, int):
        if not 1 <= keep <= num_tokens:
            raise ValueError(f'token_keep={keep} must be in [1, {num_tokens}] (the number of '
                             f'patch tokens) when given as a count')
        return keep
    if not 0.0 < keep <= 1.0:
        raise ValueError(f'token_keep={keep} must be in (0, 1] when given as a ratio')
    k = int(num_tokens * keep)
    if k < 1:
        raise ValueError(f'token_keep={keep} keeps int({num_tokens} * {keep}) = 0 tokens')
    return k


def keep_counts(num_patches: int, ratios: Sequence[float]) -> List[int]:
    """Patch tokens kept at each stage (DynamicViT): ``int(num_patches * ratio)`` per ratio.

    ``ratios`` are fractions of the *original* number of patch tokens (DeiT-S, rho 0.7, 196
    patches: 137, 96, 67). The class token is kept on top of these.

    Raises:
        ValueError: if a stage would keep no token.
    """
    counts = [int(num_patches * r) for r in ratios]
    for i, (r, k) in enumerate(zip(ratios, counts)):
        if k < 1:
            raise ValueError(f'keep ratio {r:.4g} of stage {i} keeps int({num_patches} * {r:.4g})'
                             f' = {k} of {num_patches} patch tokens; every stage must keep >= 1')
    return counts


# ---- which tokens -------------------------------------------------------------------------------
def topk_indices(scores: Tensor, k: int, sort_positions: bool = True) -> Tensor:
    """Indices of the ``k`` largest scores per row.

    Args:
        scores: (B, N).
        k: 1 <= K <= N.
        sort_positions: True: in ascending position order (tokens keep their spatial order,
            SViTE+); False: by descending score (DynamicViT's inference order).

    Returns:
        (B, K) int64.
    """
    idx = torch.topk(scores, k, dim=-1, largest=True, sorted=True).indices
    return idx.sort(dim=-1).values if sort_positions else idx


def batch_index_select(x: Tensor, idx: Tensor) -> Tensor:
    """Per-sample gather along dim 1.

    Args:
        x: (B, N) or (B, N, C).
        idx: (B, K) int64 indices into dim 1.

    Returns:
        (B, K) or (B, K, C): ``out[b, k] = x[b, idx[b, k]]``.
    """
    if x.dim() == 2:
        return torch.gather(x, 1, idx)
    if x.dim() == 3:
        return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    raise ValueError(f'batch_index_select takes (B, N) or (B, N, C), got {tuple(x.shape)}')


def select_topk_tokens(x: Tensor, scores: Tensor, num_keep: int, num_extra: int = 1,
                       sort_positions: bool = False) -> Tuple[Tensor, Tensor]:
    """Keep the extra (class) tokens and the ``num_keep`` best-scoring patch tokens.

    The kept patch tokens come in order of descending score (as DynamicViT's inference does),
    or in their spatial order with ``sort_positions`` (SViTE+); the extra tokens stay first.

    Args:
        x: tokens (B, num_extra + N, C).
        scores: a score per patch token (B, N); higher is kept first.
        num_keep: K, 1 <= K <= N.
        num_extra: leading tokens always kept (1: the class token).
        sort_positions: see :func:`topk_indices`.

    Returns:
        ``(tokens, idx)``: tokens (B, num_extra + K, C) and idx (B, K), the kept patch tokens'
        positions among the N input patch tokens.
    """
    n = scores.shape[1]
    if not 1 <= num_keep <= n:
        raise ValueError(f'num_keep must be in [1, {n}], got {num_keep}')
    idx = topk_indices(scores, num_keep, sort_positions)
    kept = batch_index_select(x[:, num_extra:], idx)
    return torch.cat([x[:, :num_extra], kept], dim=1), idx


def gumbel_noise(shape, device=None, dtype=torch.float32,
                 generator: Optional[torch.Generator] = None) -> Tensor:
    """Standard Gumbel noise ``-log(E)``, E ~ Exp(1), with E clamped away from 0 (never inf)."""
    e = torch.empty(shape, dtype=dtype, device=device).exponential_(generator=generator)
    return -e.clamp_min(torch.finfo(dtype).tiny).log()


def gumbel_topk_st(logits: Tensor, k: int, tau: float, noise: bool = True,
                   generator: Optional[torch.Generator] = None,
                   noise_scale: float = 1.0) -> Tuple[Tensor, Tensor]:
    """Hard top-k selection with a straight-through Gumbel-softmax gradient.

    ``y_soft = softmax((log_softmax(logits) + s * g) / tau)`` with Gumbel noise g (if
    ``noise``) scaled by s = ``noise_scale``; the ``k`` largest entries of ``y_soft`` are
    selected: ``y_hard`` is 1 there and 0 elsewhere; the result
    ``y_hard - y_soft.detach() + y_soft`` has ``y_hard``'s values and ``y_soft``'s gradient.
    With s = 1 this is a draw of k tokens without replacement from ``softmax(logits)`` (tau
    changes the gradient only, not the selection); s -> 0 turns it into the deterministic
    top-k of ``logits``.

    Args:
        logits: (B, N) token scores.
        k: tokens kept per row, 1 <= k <= N.
        tau: temperature > 0.
        noise: add Gumbel noise (training); without it the selection is the deterministic
            top-k of ``logits``.
        generator: random generator of the noise.
        noise_scale: s >= 0, the scale of the noise.

    Returns:
        ``(mask, idx)``: mask (B, N) with 0/1 values (differentiable), idx (B, K) selected
        positions in ascending order.
    """
    n = logits.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f'k must be in [1, {n}], got {k}')
    if not tau > 0:
        raise ValueError(f'tau must be > 0, got {tau}')
    y = F.log_softmax(logits.float(), dim=-1)
    if noise and noise_scale > 0:
        y = y + noise_scale * gumbel_noise(y.shape, y.device, y.dtype, generator)
    y_soft = F.softmax(y / tau, dim=-1)
    idx = topk_indices(y, k)
    y_hard = torch.zeros_like(y_soft).scatter_(-1, idx, 1.0)
    mask = y_hard - y_soft.detach() + y_soft
    return mask.to(logits.dtype), idx


def gumbel_keep_decision(log_probs: Tensor, prev_decision: Optional[Tensor] = None,
                         tau: float = 1.0, generator: Optional[torch.Generator] = None,
                         ) -> Tensor:
    """Hard keep decisions by straight-through Gumbel-softmax, monotone in the stages.

    ``hard = onehot(argmax(log_probs + g))[..., 0] * prev_decision``, g ~ Gumbel(0, 1): the
    forward value is exactly 0/1, the gradient is that of ``softmax((log_probs + g) / tau)``.
    A token dropped earlier (``prev_decision`` 0) stays dropped.

    Args:
        log_probs: (B, N, 2) log-probabilities, channel 0 = keep, 1 = drop.
        prev_decision: (B, N) decision of the previous stage, or None (all kept).
        tau: Gumbel-softmax temperature.
        generator: random generator of the noise (default: torch's global one).

    Returns:
        (B, N) decision, 1 = keep.
    """
    g = gumbel_noise(log_probs.shape, log_probs.device, log_probs.dtype, generator)
    soft = ((log_probs + g) / tau).softmax(dim=-1)
    index = soft.argmax(dim=-1, keepdim=True)
    hard = torch.zeros_like(soft).scatter_(-1, index, 1.0)
    keep = (hard - soft.detach() + soft)[..., 0]
    return keep if prev_decision is None else keep * prev_decision


def random_keep_decision(prev_decision: Tensor, num_keep: int,
                         generator: Optional[torch.Generator] = None) -> Tensor:
    """Keep ``num_keep`` tokens per sample, uniformly at random among those still kept.

    The random-dropping baseline's training decision (exact counts, no gradient).

    Args:
        prev_decision: (B, N) 0/1 decision of the previous stage (each row keeps >= num_keep).
        num_keep: tokens kept per sample.
        generator: random generator (default: torch's global one).

    Returns:
        (B, N) 0/1 decision, monotone w.r.t. ``prev_decision``.
    """
    noise = torch.rand(prev_decision.shape, generator=generator, device=prev_decision.device,
                       dtype=torch.float32)
    score = noise + (prev_decision.detach() > 0.5).float() * 2.0  # kept tokens rank first
    idx = torch.topk(score, num_keep, dim=1).indices
    out = torch.zeros_like(prev_decision).scatter_(1, idx, 1.0)
    return out * prev_decision.detach()


# ---- computing with a policy --------------------------------------------------------------------
def softmax_with_policy(attn: Tensor, policy: Tensor, eps: float = 1e-6,
                        max_gap: Optional[float] = 0.0) -> Tensor:
    """Attention softmax restricted to the tokens a policy keeps (DynamicViT training).

    With ``G_ij = p_j + (1 - p_j) * delta_ij`` (a query always attends to itself)::

        A_ij = (exp(a_ij - m_i) * G_ij + eps / T) / (sum_j exp(a_ij - m_i) * G_ij + eps)

    computed in float32. For a 0/1 policy this is the plain softmax over the kept keys (plus
    ``eps``-sized terms). Two choices of the shift ``m_i``:

    - ``max_gap=None`` (the original's ``Attention.softmax_with_policy``): ``m_i`` is the maximum
      over *all* keys, taken in ``attn``'s dtype, and the gradients are those autograd gives
      through the original's formula, the maximum included (computed by the hand-written
      backward below), so values and gradients are the original's. A dropped key's policy
      gradient is proportional to ``exp(a_ij - m_i) / Z_i``, which reaches ``~1/eps`` when the
      attended logits lie far below a dropped key's (``Z_i -> eps``); once they all lie more
      than ``log(1/eps)`` (~14) below it, ``eps`` dominates ``Z_i`` and the row tends to the
      uniform ``1/T`` on every key, dropped ones included.
    - ``max_gap`` a number >= 0: ``m_i`` is the maximum over the *attended* keys, so the largest
      attended term is exactly 1, the denominator is >= 1 and no row underflows (no NaN, even
      when a sample drops every patch token; ``m`` is a constant for autograd). The exponent
      is capped at ``max_gap``: a dropped key above the attended maximum gets the policy
      gradient (same sign) of a key ``max_gap`` above it. Forward values do not depend on the
      cap (dropped keys get 0 attention either way), nor do the gradients of keys below the
      attended maximum. 0 (the default): at most the gradient of a key tied with the best
      attended one.

    Args:
        attn: attention logits ``q k^T * scale``, (B, H, T, T).
        policy: keep policy of the keys, (B, T) or (B, T, 1), values in [0, 1].
        eps: numerical safety term.
        max_gap: None (the original's global shift) or the cap of ``a_ij - m_i`` inside the
            exponential (the policy-gradient clip).

    Returns:
        Attention probabilities (B, H, T, T), in ``attn``'s dtype.
    """
    B, _, T, _ = attn.shape
    p = policy.reshape(B, 1, 1, T).float()
    eye = torch.eye(T, dtype=torch.float32, device=attn.device).view(1, 1, T, T)
    g = p + (1.0 - p) * eye  # (B, 1, T, T)
    out = _PolicySoftmax.apply(attn, g, eps, None if max_gap is None else float(max_gap))
    return out.to(attn.dtype)


class _PolicySoftmax(torch.autograd.Function):
    """:func:`softmax_with_policy` with a hand-written backward (about half the memory passes of
    autograd through the elementwise ops; the same values and gradients as autograd through the
    formula).

    With ``r = e / Z`` (``e = exp(a - m)``, capped at ``exp(max_gap)`` with a number, and
    ``Z = sum_j e_j g_j + eps``) and ``t = r * (dA - sum_j dA_j A_j)``: ``dL/dg = t`` and the
    gradient through ``e`` is ``t * g``. With ``max_gap=None`` the shift ``m_i`` is the arg-max
    logit itself, which autograd differentiates too: ``dL/dm_i = -sum_j (t * g)_ij`` goes to
    that key (``torch.max``'s index, as autograd through the original's ``torch.max``). That sum
    cancels to O(eps); it is computed in the closed form ``-(eps / Z) (v - u D / T)`` with
    ``v = sum_j r_j g_j dA_j``, ``u = 1 - eps / Z`` and ``D = sum_j dA_j``, which has no
    cancellation. With a number, ``m`` is a constant.
    """

    @staticmethod
    def forward(ctx, attn: Tensor, g: Tensor, eps: float, max_gap: Optional[float]) -> Tensor:
        T = attn.shape[-1]
        if max_gap is None:
            # the original's order of operations: the shift in attn's dtype, then exp, policy
            # and normalisation in float32
            m, argmax = torch.max(attn, dim=-1, keepdim=True)
            e = (attn - m).float().exp_()
        else:
            a = attn.float()
            m = a.masked_fill(g <= 0, float('-inf')).amax(dim=-1, keepdim=True)
            argmax = None
            # dropped keys above the attended maximum: exp(.) is capped at exp(max_gap), so it
            # cannot overflow (inf * 0 = NaN); their forward value is 0 either way
            e = (a - m).clamp_(max=max_gap).exp_()
        out = e * g
        z = out.sum(dim=-1, keepdim=True).add_(eps)
        out.add_(eps / T).div_(z)
        r = e.div_(z)
        ctx.save_for_backward(r, g, out, argmax, z if argmax is not None else None)
        ctx.attn_dtype = attn.dtype
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        r, g, out, argmax, z = ctx.saved_tensors
        dm = None
        if argmax is not None and ctx.needs_input_grad[0]:
            T = r.shape[-1]
            v = (r * g * grad_out).sum(dim=-1, keepdim=True)
            u = 1.0 - ctx.eps / z
            dm = (v - u * grad_out.sum(dim=-1, keepdim=True) / T).mul_(-ctx.eps / z)
        t = (grad_out - (grad_out * out).sum(dim=-1, keepdim=True)).mul_(r)
        grad_g = t.sum(dim=1, keepdim=True) if ctx.needs_input_grad[1] else None
        grad_attn = None
        if ctx.needs_input_grad[0]:
            grad_attn = t.mul_(g)
            if dm is not None:
                grad_attn.scatter_add_(-1, argmax, dm)
            grad_attn = grad_attn.to(ctx.attn_dtype)
        return grad_attn, grad_g, None, None


def policy_weighted_mean(x: Tensor, policy: Optional[Tensor] = None,
                         eps: float = 1e-6) -> Tensor:
    """Mean of the kept tokens, ``sum_n x_n p_n / sum_n p_n`` (plain mean without a policy).

    A sample that keeps no token gets 0 (the original divides by 0 there).

    Args:
        x: (B, N, C).
        policy: (B, N) keep policy, or None.
        eps: lower bound of the denominator.

    Returns:
        (B, 1, C).
    """
    if policy is None:
        return x.mean(dim=1, keepdim=True)
    p = policy.unsqueeze(-1).to(x.dtype)
    return (x * p).sum(dim=1, keepdim=True) / p.sum(dim=1, keepdim=True).clamp_min(eps)


# ---- losses -------------------------------------------------------------------------------------
def keep_ratio_loss(decisions: Sequence[Tensor], ratios: Sequence[float]) -> Tensor:
    """DynamicViT's ratio loss: ``mean_i mean_b (mean_n D_i[b, n] - ratio_i) ** 2``.

    Args:
        decisions: one (B, N) cumulative decision per stage.
        ratios: the target keep ratio of each stage.

    Returns:
        Scalar tensor.
    """
    if len(decisions) != len(ratios) or not decisions:
        raise ValueError(f'need one target ratio per decision, got {len(decisions)} decisions '
                         f'and {len(ratios)} ratios')
    losses = [((d.float().mean(dim=1) - r) ** 2).mean() for d, r in zip(decisions, ratios)]
    return torch.stack(losses).mean()


def masked_token_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """MSE between student and teacher tokens on the tokens a mask keeps (DeiT distillation).

    The mean runs over the kept tokens and channels; 0 when no token is kept.

    Args:
        student: (B, N, C).
        teacher: (B, N, C).
        mask: (B, N), a token counts where ``mask > 0.5``.

    Returns:
        Scalar tensor.
    """
    keep = mask.detach() > 0.5
    if not bool(keep.any()):
        return student.sum() * 0.0
    return F.mse_loss(student[keep].float(), teacher[keep].float())
