"""Token selection of SViTE+: Gumbel top-k with straight-through gradients, keep counts.
Torch only, no module state.

Shapes: B batch, N candidate (patch) tokens, K kept tokens.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['token_keep_count', 'gumbel_noise', 'gumbel_topk_st', 'topk_indices']


def token_keep_count(num_tokens: int, keep: Union[int, float]) -> int:
    """Number of patch tokens kept: ``keep`` itself if an int, else ``int(num_tokens * keep)``.

    DeiT-S (196 patches): 0.9 -> 176 (+ class token = the original's ``--token_number 177``),
    0.7 -> 137 (138).

    Raises:
        ValueError: if ``keep`` is not an int in [1, num_tokens] or a float in (0, 1], or
            keeps no token.
    """
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


def gumbel_noise(shape, device=None, dtype=torch.float32,
                 generator: Optional[torch.Generator] = None) -> Tensor:
    """Standard Gumbel noise ``-log(E)``, E ~ Exp(1), with E clamped away from 0 (never inf)."""
    e = torch.empty(shape, dtype=dtype, device=device).exponential_(generator=generator)
    return -e.clamp_min(torch.finfo(dtype).tiny).log()


def topk_indices(scores: Tensor, k: int, sort_positions: bool = True) -> Tensor:
    """Indices (B, K) of the ``k`` largest scores per row, in ascending position order if
    ``sort_positions`` (tokens keep their spatial order), else by descending score."""
    idx = torch.topk(scores, k, dim=-1, largest=True, sorted=True).indices
    return idx.sort(dim=-1).values if sort_positions else idx


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
