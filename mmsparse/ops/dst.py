"""Dynamic sparse training (SViTE / S²ViTE): layer densities, prune and grow rules, schedules,
structured importance scores and mask packing. Torch only, no module state.

Conventions: a *mask* is a bool tensor of a weight's shape (True = the weight exists). Every rule
here keeps exact counts (``topk`` over the candidates, never a threshold), so the number of
non-zeros of a layer never drifts because of ties; the original's threshold rules can remove or
add a few more entries when magnitudes or gradients tie.
"""
import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    'erk_densities', 'uniform_densities', 'random_mask', 'magnitude_mask', 'magnitude_death',
    'gradient_growth', 'random_growth', 'magnitude_prune_regrow', 'cosine_death_rate',
    'head_taylor_scores', 'neuron_l1_scores', 'structured_prune_regrow', 'init_structured_mask',
    'head_rows_mask', 'pack_mask', 'unpack_mask', 'mask_fingerprint'
]


def _check_density(density: float, name: str = 'density') -> None:
    if isinstance(density, bool) or not isinstance(density, (int, float)) \
            or not 0.0 < density <= 1.0:
        raise ValueError(f'{name} must be a number in (0, 1], got {density!r}')


def erk_densities(shapes: Mapping[str, Sequence[int]], density: float,
                  power_scale: float = 1.0) -> Dict[str, float]:
    """Per-layer densities of the Erdős–Rényi-Kernel rule (RigL; SViTE's ``fixed_ERK``).

    Each layer l with shape s and n_l = prod(s) weights gets a raw score
    ``r_l = (sum(s) / prod(s)) ** power_scale`` (kernel dims included for a conv). ``eps`` solves
    ``eps * sum_{sparse} r_l n_l = density * sum_{sparse} n_l - (1 - density) * sum_{dense} n_l``
    so that the total density is ``density``. While ``eps * max r > 1``, every layer whose
    score equals the maximum is made dense (density 1) and ``eps`` is solved again. The other
    layers get ``eps * r_l``.

    Args:
        shapes: layer name -> weight shape, e.g. ``{'qkv': (1152, 384), ...}``.
        density: overall fraction of weights kept, in (0, 1].
        power_scale: exponent of the raw score (1 = ERK).

    Returns:
        layer name -> density in (0, 1].
    """
    _check_density(density)
    if not shapes:
        raise ValueError('erk_densities needs at least one layer')
    numel = {k: math.prod(int(d) for d in s) for k, s in shapes.items()}
    dense = set()
    eps = 0.0
    while True:
        rhs, divisor, raw = 0.0, 0.0, {}
        for name, shape in shapes.items():
            n = numel[name]
            if name in dense:
                rhs -= (1.0 - density) * n
            else:
                rhs += density * n
                raw[name] = (sum(int(d) for d in shape) / n) ** power_scale
                divisor += raw[name] * n
        if not raw:
            break
        eps = rhs / divisor
        max_raw = max(raw.values())
        if eps * max_raw > 1.0:
            dense.update(name for name, r in raw.items() if r == max_raw)
        else:
            break
    return {name: 1.0 if name in dense else eps * (sum(int(d) for d in shapes[name])
                                                   / numel[name]) ** power_scale
            for name in shapes}


def uniform_densities(shapes: Mapping[str, Sequence[int]], density: float) -> Dict[str, float]:
    """The same density for every layer (SViTE's ``uniform``)."""
    _check_density(density)
    return {name: float(density) for name in shapes}


def random_mask(shape: Sequence[int], density: float, generator: Optional[torch.Generator] = None,
                exact: bool = False) -> Tensor:
    """A random mask of ``shape`` at ``density`` (on CPU; the generator decides it).

    Args:
        shape: weight shape.
        density: fraction kept, in (0, 1].
        generator: CPU random generator (the same seed gives the same mask on every rank).
        exact: keep exactly ``round(density * numel)`` entries (uniformly chosen); otherwise an
            i.i.d. Bernoulli draw ``rand < density`` (the original; the realised density is only
            close to ``density``).

    Returns:
        bool mask of ``shape``.
    """
    _check_density(density)
    numel = math.prod(int(d) for d in shape)
    if exact:
        k = int(round(density * numel))
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[torch.randperm(numel, generator=generator)[:k]] = True
        return mask.view(*shape)
    return torch.rand(*shape, generator=generator) < density


def magnitude_mask(weight: Tensor, density: float) -> Tensor:
    """Keep the ``round(density * numel)`` largest-magnitude entries (one-shot magnitude pruning).

    Args:
        weight: any shape.
        density: fraction kept, in (0, 1].

    Returns:
        bool mask of ``weight``'s shape.
    """
    _check_density(density)
    k = int(round(density * weight.numel()))
    flat = weight.detach().abs().flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.topk(flat, k, largest=True, sorted=False).indices] = True
    return mask.view_as(weight)


def magnitude_death(weight: Tensor, mask: Tensor, rate: float) -> Tensor:
    """Remove the ``ceil(rate * nnz)`` active weights of smallest magnitude.

    A fully dense layer (every entry active, e.g. an ERK-dense layer) is returned unchanged, as
    in the original.

    Args:
        weight: (...) weights.
        mask: bool (...) current mask; ``nnz = mask.sum()``.
        rate: death rate in [0, 1].

    Returns:
        the new bool mask (a subset of ``mask``).
    """
    nnz = int(mask.sum())
    if nnz == mask.numel() or nnz == 0:
        return mask.clone()
    n = min(int(math.ceil(rate * nnz)), nnz)
    if n <= 0:
        return mask.clone()
    score = weight.detach().abs().flatten().float()
    score = score.masked_fill(~mask.flatten(), float('inf'))
    out = mask.flatten().clone()
    out[torch.topk(score, n, largest=False, sorted=False).indices] = False
    return out.view_as(mask)


def gradient_growth(mask: Tensor, grad: Tensor, n: int) -> Tensor:
    """RigL growth: activate the ``n`` inactive entries with the largest ``|grad|``.

    Inactive entries include the ones just removed by the death step, so a just-removed weight
    can come straight back (and, since the weight is only re-masked after growth, keeps its
    value); other new connections start at 0.

    Args:
        mask: bool (...) mask after the death step.
        grad: (...) dense gradient of the last mini-batch.
        n: entries to activate (clamped to the number of inactive entries).

    Returns:
        the new bool mask (a superset of ``mask``).
    """
    n = min(int(n), int((~mask).sum()))
    if n <= 0:
        return mask.clone()
    return _activate_top(mask, grad.detach().abs().flatten().float(), n)


def random_growth(mask: Tensor, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Activate ``n`` inactive entries chosen uniformly at random (the generator decides).

    Args:
        mask: bool (...) mask after the death step.
        n: entries to activate (clamped to the number of inactive entries).
        generator: CPU random generator.

    Returns:
        the new bool mask (a superset of ``mask``).
    """
    n = min(int(n), int((~mask).sum()))
    if n <= 0:  # no draw: the generator moves only when something grows
        return mask.clone()
    return _activate_top(mask, torch.rand(mask.numel(), generator=generator).to(mask.device), n)


def _activate_top(mask: Tensor, score: Tensor, n: int) -> Tensor:
    """``mask`` with its ``n`` inactive entries of largest flat ``score`` activated
    (1 <= n <= #inactive)."""
    score = score.masked_fill(mask.flatten(), float('-inf'))
    out = mask.flatten().clone()
    out[torch.topk(score, n, largest=True, sorted=False).indices] = True
    return out.view_as(mask)


def magnitude_prune_regrow(weight: Tensor, mask: Tensor, rate: float,
                           grow_scores: Optional[Tensor] = None,
                           generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """One SViTE update of one layer: :func:`magnitude_death`, then as many entries grown.

    Growth takes the inactive entries of largest ``|grow_scores|`` (:func:`gradient_growth`:
    RigL's gradient, or an optimizer momentum), or, with ``grow_scores=None``, uniformly random
    ones (:func:`random_growth`). The layer's number of active entries is unchanged.

    Args:
        weight: (...) weights (magnitudes decide the death).
        mask: bool (...) current mask.
        rate: death rate in [0, 1].
        grow_scores: (...) growth scores, or None for random growth.
        generator: CPU random generator of random growth.

    Returns:
        ``(after_death, new)``: the bool masks after the death step and after the growth.
    """
    after_death = magnitude_death(weight, mask, rate)
    n = int(mask.sum()) - int(after_death.sum())
    if grow_scores is None:
        return after_death, random_growth(after_death, n, generator)
    return after_death, gradient_growth(after_death, grow_scores, n)


def cosine_death_rate(step: int, total: int, initial: float, floor: float = 0.005) -> float:
    """Death rate on a cosine from ``initial`` (step 0) to ``floor`` (step ``total``).

    ``floor + (initial - floor) * (1 + cos(pi * step / total)) / 2`` (SViTE's ``CosineDecay``
    stepped once per iteration); ``step`` is clamped to [0, total].
    """
    if total <= 0:
        raise ValueError(f'total must be > 0, got {total}')
    t = min(max(step, 0), total)
    return floor + (initial - floor) * (1.0 + math.cos(math.pi * t / total)) / 2.0


def head_taylor_scores(out: Tensor, grad: Tensor) -> Tuple[Tensor, Tensor]:
    """First-order Taylor importance and gradient L1 norm of each attention head.

    Args:
        out: head outputs ``O = softmax(q k^T / sqrt(d)) v``, (B, H, N, d).
        grad: dL/dO, (B, H, N, d).

    Returns:
        ``(taylor, grad_norm)``, each (H,): ``taylor[h] = mean_b |sum_{n,d} grad * O|`` and
        ``grad_norm[h] = mean_b sum_{n,d} |grad|`` (float32).
    """
    if out.shape != grad.shape or out.dim() != 4:
        raise ValueError(f'out and grad must both be (B, H, N, d), got {tuple(out.shape)} and '
                         f'{tuple(grad.shape)}')
    o, g = out.float(), grad.float()
    taylor = (g * o).sum(dim=(2, 3)).abs().mean(dim=0)
    grad_norm = g.abs().sum(dim=(2, 3)).mean(dim=0)
    return taylor, grad_norm


def neuron_l1_scores(fc1_weight: Tensor, fc2_weight: Tensor) -> Tensor:
    """L1 importance of each MLP hidden neuron: ``|fc1 row j|_1 + |fc2 column j|_1``.

    Args:
        fc1_weight: (F, C) (or its gradient).
        fc2_weight: (C, F) (or its gradient).

    Returns:
        (F,) float32 scores.
    """
    if fc1_weight.shape[0] != fc2_weight.shape[1]:
        raise ValueError(f'fc1 (F, C) and fc2 (C, F) disagree on F: {tuple(fc1_weight.shape)}, '
                         f'{tuple(fc2_weight.shape)}')
    return fc1_weight.detach().float().abs().sum(1) + fc2_weight.detach().float().abs().sum(0)


def structured_prune_regrow(active: Tensor, prune_scores: Tensor, grow_scores: Tensor,
                            rate: float) -> Tuple[Tensor, int]:
    """One S²ViTE update of a set of units (heads or neurons of one layer).

    ``n = ceil(rate * #active)``; the ``n`` active units with the smallest ``prune_scores`` are
    dropped, then the ``n`` units with the largest ``grow_scores`` among all inactive units
    (including the ones just dropped) are enabled. The number of active units is unchanged.

    Args:
        active: bool (K,) current units.
        prune_scores: (K,) importance (Taylor score for heads, weight L1 for neurons).
        grow_scores: (K,) regrowth score (gradient L1).
        rate: death rate in [0, 1].

    Returns:
        ``(new_active, n)``.
    """
    n_active = int(active.sum())
    n = min(int(math.ceil(rate * n_active)), n_active)
    if n <= 0 or n_active == active.numel():
        return active.clone(), 0
    p = prune_scores.detach().float().masked_fill(~active, float('inf'))
    out = active.clone()
    out[torch.topk(p, n, largest=False, sorted=False).indices] = False
    g = grow_scores.detach().float().masked_fill(out, float('-inf'))
    out[torch.topk(g, n, largest=True, sorted=False).indices] = True
    return out, n


def init_structured_mask(num: int, density: float,
                         generator: Optional[torch.Generator] = None) -> Tensor:
    """``int(num * density)`` of ``num`` units chosen uniformly at random (S²ViTE's init).

    Raises:
        ValueError: if no unit would be kept.
    """
    _check_density(density)
    k = int(num * density)
    if k < 1:
        raise ValueError(f'density {density} keeps int({num} * {density}) = 0 of {num} units')
    mask = torch.zeros(num, dtype=torch.bool)
    mask[torch.randperm(num, generator=generator)[:k]] = True
    return mask


def head_rows_mask(head_mask: Tensor, head_dim: int) -> Tensor:
    """The qkv rows of the active heads: (H,) -> (3 * H * head_dim,), Q block, K block, V block.

    Row ``s * C + h * head_dim + i`` (s in {q, k, v}) belongs to head h, as in mmpretrain's
    ``qkv(x).reshape(B, N, 3, H, head_dim)``.
    """
    return head_mask.repeat_interleave(head_dim).repeat(3)


def pack_mask(mask: Tensor) -> Tensor:
    """Pack a bool mask into uint8 bytes, 8 entries per byte, most significant bit first.

    Args:
        mask: bool, any shape (flattened in row-major order).

    Returns:
        uint8 (ceil(numel / 8),) on CPU.
    """
    flat = mask.detach().flatten().to('cpu', torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_mask(packed: Tensor, shape: Sequence[int]) -> Tensor:
    """Inverse of :func:`pack_mask`: uint8 bytes -> bool mask of ``shape``."""
    numel = math.prod(int(d) for d in shape)
    if packed.numel() * 8 < numel:
        raise ValueError(f'{packed.numel()} bytes cannot hold a mask of shape {tuple(shape)}')
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8)
    bits = (packed.to(torch.uint8).view(-1, 1) >> shifts) & 1
    return bits.flatten()[:numel].bool().view(*shape)


def mask_fingerprint(mask: Tensor) -> Tuple[int, float]:
    """A cheap identity check of a mask: (number of entries kept, sum of their flat indices)."""
    idx = mask.flatten().nonzero().flatten().double()
    return int(idx.numel()), float(idx.sum()) if idx.numel() else 0.0
