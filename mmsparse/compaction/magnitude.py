"""Uniform magnitude pruning: the naive structured baseline, cut into the one compact ViT.

Every layer of a dense ViT keeps the *same* number of heads and of MLP neurons; which ones is
decided per layer by the L1 norm of their weights:

- a head h: ``|W_qkv[q, k, v rows of h]|_1 + |W_proj[:, columns of h]|_1`` (:func:`head_l1_scores`);
- a neuron j: ``|fc1 row j|_1 + |fc2 column j|_1`` (:func:`mmsparse.ops.dst.neuron_l1_scores`, the
  criterion S²ViTE drops neurons by).

How many are kept is set by a FLOPs target (:func:`uniform_keep_counts`): among the uniform
structures ``(heads, neurons)`` whose MACs are at most ``target`` of the dense model's (UVC's
resource function :func:`mmsparse.ops.uvc.block_macs`, which equals the traced MACs of the
compact model), the one whose *smaller* kept share ``min(heads / H, neurons / F)`` is largest,
i.e. the most even cut; ties go to the structure with more MACs (closer to the target).

The kept heads and neurons are cut out by S²ViTE's compaction
(:func:`mmsparse.compaction.svite.compact_state_dict`): a removed head's value bias, which the
attention turns into the constant ``W_proj[:, h] b_v``, is folded into ``proj.bias``, so the
compact model computes exactly the dense model with the removed heads' q/k/v weight rows and the
removed neurons' fc1 rows / fc2 columns zeroed (:func:`masked_state_dict`; checked by
:func:`compact_magnitude_checkpoint`). Unlike S²ViTE's masks, this is lossy with respect to the
dense model: the cut model needs fine-tuning.
"""
import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmsparse.ops.dst import head_rows_mask, neuron_l1_scores
from mmsparse.ops.uvc import ViTCost, block_macs
from .svite import FC1, FC2, layer_count, write_compact

__all__ = ['head_l1_scores', 'top_k_mask', 'vit_cost', 'uniform_flops_fraction',
           'uniform_keep_counts', 'uniform_magnitude_masks', 'masked_state_dict',
           'compact_magnitude_checkpoint']


def head_l1_scores(qkv_weight: Tensor, proj_weight: Tensor, num_heads: int) -> Tensor:
    """L1 norm of each head's weights: its q, k and v rows of ``qkv`` and its ``proj`` columns.

    Args:
        qkv_weight: (3 * H * d, C), rows ordered [Q heads, K heads, V heads] (mmpretrain's
            ``qkv(x).reshape(B, N, 3, H, d)``).
        proj_weight: (C, H * d).
        num_heads: H.

    Returns:
        (H,) float32 scores.
    """
    rows, cols = qkv_weight.shape[0], proj_weight.shape[1]
    if rows % (3 * num_heads) or cols != rows // 3:
        raise ValueError(f'qkv ({rows} rows) and proj ({cols} input columns) do not hold 3 x '
                         f'{num_heads} heads of equal dims')
    d = cols // num_heads
    qkv = qkv_weight.detach().float().abs().view(3, num_heads, d, -1).sum(dim=(0, 2, 3))
    proj = proj_weight.detach().float().abs().view(-1, num_heads, d).sum(dim=(0, 2))
    return qkv + proj


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """bool mask of the ``k`` largest ``scores`` (ties: the lower index first).

    Args:
        scores: (K,).
        k: in [0, K].
    """
    if not 0 <= k <= scores.numel():
        raise ValueError(f'cannot keep {k} of {scores.numel()} units')
    # a stable descending sort makes the choice deterministic under ties
    order = torch.sort(scores.detach().float(), descending=True, stable=True).indices
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask


def vit_cost(backbone: nn.Module, head_macs: float = 0.0) -> ViTCost:
    """The :class:`~mmsparse.ops.uvc.ViTCost` of a dense mmpretrain ``VisionTransformer``
    (the resource function UVC's budget uses, for a backbone without UVC's gates).

    Args:
        backbone: a built ``VisionTransformer`` (``arch_settings``, ``patch_resolution``,
            ``num_extra_tokens``, ``patch_embed``, ``final_norm``).
        head_macs: MACs of the classification head on one image.
    """
    arch = backbone.arch_settings
    c, h = int(arch['embed_dims']), int(arch['num_heads'])
    conv = backbone.patch_embed.projection
    return ViTCost.of_vit(
        int(arch['num_layers']), int(math.prod(backbone.patch_resolution)),
        int(backbone.num_extra_tokens), c, h, c // h, int(arch['feedforward_channels']),
        c * conv.in_channels // conv.groups * math.prod(conv.kernel_size),
        bool(backbone.final_norm), head_macs)


def uniform_flops_fraction(cost: ViTCost, heads: int, neurons: int) -> float:
    """FLOPs fraction of the dense model when every layer keeps ``heads`` heads (all their
    ``head_dims``) and ``neurons`` MLP neurons."""
    L = cost.num_layers
    kept = torch.full((L, ), float(heads), dtype=torch.float64)
    per_block = block_macs(cost, kept, kept * cost.head_dims,
                           torch.full((L, ), float(neurons), dtype=torch.float64))
    return float((cost.fixed_macs + per_block.sum()) / cost.dense_macs)


def uniform_keep_counts(cost: ViTCost, target: float) -> Tuple[int, int, float]:
    """The uniform structure at no more than ``target`` of the dense FLOPs, cut most evenly.

    For each head count ``h`` in [1, H] the most neurons ``m`` in [1, F] that fit the target;
    of those pairs, the one with the largest ``min(h / H, m / F)`` (then the most MACs).

    Args:
        cost: the dense model's resource function (:func:`vit_cost`).
        target: FLOPs fraction of the dense model, in (0, 1].

    Returns:
        ``(heads, neurons, fraction)`` kept per layer, and their FLOPs fraction.

    Raises:
        ValueError: ``target`` outside (0, 1], or below the smallest uniform structure (one
            head and one neuron per layer).
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f'target FLOPs fraction must be in (0, 1], got {target!r}')
    H, F = cost.num_heads, cost.mlp_dims
    best = None
    for h in range(1, H + 1):
        if uniform_flops_fraction(cost, h, 1) > target:
            continue
        lo, hi = 1, F  # the fraction grows with m: the largest m that fits, by bisection
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if uniform_flops_fraction(cost, h, mid) <= target:
                lo = mid
            else:
                hi = mid - 1
        frac = uniform_flops_fraction(cost, h, lo)
        key = (min(h / H, lo / F), frac)
        if best is None or key > best[0]:
            best = (key, h, lo, frac)
    if best is None:
        raise ValueError(f'target FLOPs fraction {target:.4f} is below the smallest uniform '
                         f'structure (1 head, 1 neuron per layer: '
                         f'{uniform_flops_fraction(cost, 1, 1):.4f})')
    return best[1], best[2], best[3]


def uniform_magnitude_masks(state_dict: Dict[str, Tensor], heads: int, neurons: int,
                            num_heads: int, prefix: str = 'backbone.'
                            ) -> Tuple[List[Tensor], List[Tensor]]:
    """Per layer, the ``heads`` heads and ``neurons`` neurons of largest weight L1 norm.

    Args:
        state_dict: a dense ViT classifier's weights (mmpretrain keys).
        heads: heads kept in every layer, in [1, H].
        neurons: MLP neurons kept in every layer, in [1, F].
        num_heads: H of every layer.
        prefix: the backbone's key prefix.

    Returns:
        ``(head_masks, neuron_masks)``: per layer bool (H,) and (F,), the input of
        :func:`mmsparse.compaction.svite.compact_state_dict`.
    """
    L = layer_count(state_dict, prefix)
    if L == 0:
        raise ValueError(f'no {prefix}layers.N.attn.qkv.weight in the state_dict')
    head_masks, neuron_masks = [], []
    for i in range(L):
        p = f'{prefix}layers.{i}.'
        h_scores = head_l1_scores(state_dict[p + 'attn.qkv.weight'],
                                  state_dict[p + 'attn.proj.weight'], num_heads)
        n_scores = neuron_l1_scores(state_dict[p + FC1 + 'weight'], state_dict[p + FC2 + 'weight'])
        if not 1 <= heads <= num_heads or not 1 <= neurons <= n_scores.numel():
            raise ValueError(f'layer {i}: cannot keep {heads} of {num_heads} heads and {neurons} '
                             f'of {n_scores.numel()} neurons (each needs >= 1)')
        head_masks.append(top_k_mask(h_scores, heads))
        neuron_masks.append(top_k_mask(n_scores, neurons))
    return head_masks, neuron_masks


def masked_state_dict(state_dict: Dict[str, Tensor], head_masks: Sequence[Tensor],
                      neuron_masks: Sequence[Tensor], head_dims: Sequence[int],
                      prefix: str = 'backbone.') -> Dict[str, Tensor]:
    """The dense weights with the removed heads' q/k/v weight rows and the removed neurons'
    fc1 rows and fc2 columns zeroed (biases kept): the model the compact one equals."""
    out = dict(state_dict)
    for i, (hm, nm, d) in enumerate(zip(head_masks, neuron_masks, head_dims)):
        p = f'{prefix}layers.{i}.'
        rows = head_rows_mask(hm.bool(), d)
        out[p + 'attn.qkv.weight'] = state_dict[p + 'attn.qkv.weight'] * rows.unsqueeze(1)
        keep = nm.bool()
        out[p + FC1 + 'weight'] = state_dict[p + FC1 + 'weight'] * keep.unsqueeze(1)
        out[p + FC2 + 'weight'] = state_dict[p + FC2 + 'weight'] * keep.unsqueeze(0)
    return out


def compact_magnitude_checkpoint(cfg, checkpoint: str, out_prefix: str,
                                 target: Optional[float] = None, heads: Optional[int] = None,
                                 neurons: Optional[int] = None, atol: float = 1e-4,
                                 base_config: Optional[str] = None) -> dict:
    """Uniform magnitude pruning of a dense checkpoint, written as a compact model.

    Give either ``target`` (a FLOPs fraction: the counts of :func:`uniform_keep_counts`) or both
    ``heads`` and ``neurons``. Writes ``<out_prefix>.pth`` (the compact weights, with
    ``meta['compact_structure']`` as every compaction writes, so that
    ``DynamicViTClassifier(compact_checkpoint=...)`` takes it) and ``<out_prefix>.py`` (a config
    inheriting ``base_config`` with the :class:`~mmsparse.models.CompactVisionTransformer`
    backbone), then checks that the compact model's logits equal those of the dense model with
    the removed weights zeroed (:func:`masked_state_dict`) to ``atol``.

    Args:
        cfg: the :class:`mmengine.Config` of the dense model (an mmpretrain
            ``VisionTransformer`` backbone).
        checkpoint: the dense ``.pth``.
        out_prefix: output path without extension.
        target: FLOPs fraction of the dense model, in (0, 1].
        heads, neurons: kept per layer (instead of ``target``).
        atol: largest allowed logit difference to the masked dense model.
        base_config: the config file the derived config inherits; default ``cfg.filename``.

    Returns:
        A report dict: ``config``, ``checkpoint``, ``heads``, ``neurons`` (per layer),
        ``num_heads``, ``mlp_dims`` (dense), ``flops_fraction`` (resource function),
        ``measured_flops_fraction`` (traced MACs, compact / dense), ``params``,
        ``params_compact``, ``max_abs_diff``.

    Raises:
        ValueError: neither or both of ``target`` and ``heads``/``neurons``; a backbone that is
            not a dense ViT of equal layers; a target no uniform structure reaches.
        RuntimeError: the compact model's logits differ by more than ``atol``.
    """
    from mmsparse.analysis import count_flops, make_images
    from mmsparse.analysis.model_parts import part_module
    from mmsparse.checkpoint import load_checkpoint_file
    from mmsparse.utils import build_model, load_config
    from .uvc import max_output_diff

    by_counts = heads is not None or neurons is not None
    if (target is not None) == by_counts or (by_counts and (heads is None or neurons is None)):
        raise ValueError('uniform magnitude pruning: give target (a FLOPs fraction) or both '
                         f'heads and neurons, got target={target}, heads={heads}, '
                         f'neurons={neurons}')
    ckpt = load_checkpoint_file(checkpoint, map_location='cpu')
    if 'state_dict' not in ckpt:
        raise ValueError(f'{checkpoint} has no state_dict (not a checkpoint of tools/train.py)')
    dense = build_model(cfg, checkpoint)
    bb = dense.backbone
    arch = getattr(bb, 'arch_settings', None)
    if arch is None or getattr(bb, 'layer_num_heads', None) is not None or \
            not hasattr(bb, 'patch_resolution'):
        raise ValueError(f'uniform magnitude pruning needs a dense mmpretrain VisionTransformer '
                         f'backbone (equal layers), got {type(bb).__name__}')
    cost = vit_cost(bb, float(sum(m.in_features * m.out_features for m in dense.head.modules()
                                  if isinstance(m, nn.Linear))))
    if target is not None:
        heads, neurons, fraction = uniform_keep_counts(cost, float(target))
    else:
        fraction = uniform_flops_fraction(cost, heads, neurons)
    sd = ckpt['state_dict']
    head_masks, neuron_masks = uniform_magnitude_masks(sd, heads, neurons, cost.num_heads)
    head_dims = [cost.head_dims] * len(head_masks)
    cfg_path, ckpt_path = f'{out_prefix}.py', f'{out_prefix}.pth'
    write_compact(
        cfg, ckpt, checkpoint, out_prefix, (head_masks, neuron_masks), head_dims,
        base_config or cfg.filename, 'uniform_magnitude',
        f'uniform magnitude pruning (mmsparse.compaction.magnitude) of\n{checkpoint}: '
        f'{heads} of {cost.num_heads} heads and {neurons} of {cost.mlp_dims} MLP neurons per '
        f'layer (largest weight L1 norm), {fraction:.4f} of the dense FLOPs.',
        meta=dict(flops_fraction=fraction))
    compact = build_model(load_config(cfg_path), ckpt_path)
    masked = copy.deepcopy(dense)
    masked.load_state_dict(masked_state_dict(dense.state_dict(), head_masks, neuron_masks,
                                             head_dims))
    # the image size the patch grid was built for (patch convolution: kernel = stride)
    size = tuple(int(r * k) for r, k in zip(bb.patch_resolution,
                                            bb.patch_embed.projection.kernel_size))
    channels = bb.patch_embed.projection.in_channels
    diff = max_output_diff(masked, compact, make_images(4, size, channels))
    one = make_images(1, size, channels)
    macs_dense = count_flops(part_module(dense, 'model', one), (one, )).flops
    macs_compact = count_flops(part_module(compact, 'model', one), (one, )).flops
    report = dict(method='uniform_magnitude', config=cfg_path, checkpoint=ckpt_path,
                  heads=heads, neurons=neurons, num_heads=cost.num_heads, mlp_dims=cost.mlp_dims,
                  flops_fraction=fraction, measured_flops_fraction=macs_compact / macs_dense,
                  params=sum(p.numel() for p in dense.parameters()),
                  params_compact=sum(p.numel() for p in compact.parameters()),
                  max_abs_diff=diff)
    if diff > atol:
        raise RuntimeError(f'the compact model differs from the masked dense one by {diff:.3g} '
                           f'(> atol {atol})')
    return report
