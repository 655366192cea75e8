"""S²ViTE compaction: a head/neuron-masked ViT becomes a physically smaller dense ViT.

Input: the weights of a model trained with
:class:`~mmsparse.engine.StructuredSparseTrainingHook` and its head / neuron masks (from
``checkpoint['svite']``, else read off the zero rows of the weights). Output: the state_dict and
backbone config of a :class:`~mmsparse.models.CompactVisionTransformer` (or an
:class:`~mmsparse.models.SViTEVisionTransformer` with per-layer sizes when the model has a token
selector) with, per layer, only the active heads and neurons.

Per layer, with the active heads A and neurons J:

- ``qkv.weight`` / ``qkv.bias``: the Q, K and V rows of the heads in A;
- ``proj.weight``: the input columns of the heads in A; ``proj.bias`` += ``W_proj[:, h] b_v[h]``
  for every removed head h. This is the v-bias subtlety: the masked model keeps its biases (as the
  original does, so a regrown head restarts from trained q/k biases), so a removed head, whose
  qkv rows are zero, still outputs ``softmax(.) @ (0 x + b_v) = b_v`` at every token (the
  attention rows sum to 1). Folding that constant into ``proj.bias`` makes the compact model
  compute the same function (equal to float rounding, checked to 1e-5 in the tests);
- ``ffn.layers.0.0`` (fc1): the rows and biases of J; ``ffn.layers.1`` (fc2): the columns of J
  (a removed neuron's fc2 column is zero, so dropping it changes nothing).

Everything else (patch embedding, class token, position embedding, norms, head, token selector)
is copied unchanged.

:func:`compact_svite_checkpoint` does all of it for a trained checkpoint (what
``tools/compact.py --method svite`` runs): the masks, the compact weights, a derived config
(:func:`~mmsparse.utils.write_derived_config`) and the check that both models compute the same.
"""
import copy
import os
import os.path as osp
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from mmsparse.engine.svite import DSTHook, StructuredMaskState, read_mask_state
from mmsparse.ops.dst import head_rows_mask

__all__ = ['structured_masks_from_checkpoint', 'structured_masks_from_weights',
           'compact_state_dict', 'compact_backbone_cfg', 'layer_count',
           'compact_svite_checkpoint']

# state-dict keys of the MLP of an mmpretrain encoder layer (mmcv FFN): fc1, fc2
FC1 = 'ffn.layers.0.0.'
FC2 = 'ffn.layers.1.'


def layer_count(state_dict: Dict[str, Tensor], prefix: str = 'backbone.') -> int:
    """Number of encoder layers (``<prefix>layers.N.attn.qkv.weight`` keys)."""
    n = 0
    while f'{prefix}layers.{n}.attn.qkv.weight' in state_dict:
        n += 1
    return n


def structured_masks_from_checkpoint(checkpoint: Mapping) -> Optional[Tuple[List[Tensor],
                                                                            List[Tensor]]]:
    """``(head_masks, neuron_masks)`` (bool, CPU) saved by the structured hook, or None."""
    state = read_mask_state(checkpoint)
    if not isinstance(state, StructuredMaskState):
        return None
    return state.head_masks, state.neuron_masks


def structured_masks_from_weights(state_dict: Dict[str, Tensor], head_dims: Sequence[int],
                                  prefix: str = 'backbone.') -> Tuple[List[Tensor], List[Tensor]]:
    """Masks read off the weights: a head is active if any of its qkv rows is non-zero, a
    neuron if its fc1 row or fc2 column is non-zero."""
    heads, neurons = [], []
    for i in range(layer_count(state_dict, prefix)):
        p = f'{prefix}layers.{i}.'
        qkv = state_dict[p + 'attn.qkv.weight']
        d = head_dims[i]
        h = qkv.shape[0] // (3 * d)
        rows = (qkv != 0).any(dim=1).view(3, h, d)
        heads.append(rows.any(dim=2).any(dim=0))
        fc1, fc2 = state_dict[p + FC1 + 'weight'], state_dict[p + FC2 + 'weight']
        neurons.append((fc1 != 0).any(dim=1) | (fc2 != 0).any(dim=0))
    return heads, neurons


def compact_state_dict(state_dict: Dict[str, Tensor], head_masks: Sequence[Tensor],
                       neuron_masks: Sequence[Tensor], head_dims: Sequence[int],
                       prefix: str = 'backbone.') -> 'OrderedDict[str, Tensor]':
    """The state_dict of the compact model (see the module docstring).

    Args:
        state_dict: the masked model's weights (keys of an mmpretrain ViT classifier).
        head_masks: per layer, bool (H,) active heads.
        neuron_masks: per layer, bool (F,) active MLP neurons.
        head_dims: per layer, channels per head.
        prefix: the backbone's key prefix.
    """
    L = layer_count(state_dict, prefix)
    if not (len(head_masks) == len(neuron_masks) == len(head_dims) == L):
        raise ValueError(f'{L} layers in the state_dict, but {len(head_masks)} head masks, '
                         f'{len(neuron_masks)} neuron masks and {len(head_dims)} head dims')
    out = OrderedDict((k, v) for k, v in state_dict.items())
    for i in range(L):
        p = f'{prefix}layers.{i}.'
        hm, nm, d = head_masks[i].bool().cpu(), neuron_masks[i].bool().cpu(), head_dims[i]
        h = hm.numel()
        rows = head_rows_mask(hm, d)
        qkv_w = state_dict[p + 'attn.qkv.weight']
        if qkv_w.shape[0] != 3 * h * d:
            raise ValueError(f'layer {i}: qkv has {qkv_w.shape[0]} rows, masks say 3 * {h} '
                             f'heads * {d}')
        out[p + 'attn.qkv.weight'] = qkv_w[rows].clone()
        proj_w = state_dict[p + 'attn.proj.weight']
        cols = hm.repeat_interleave(d)
        proj_b = state_dict[p + 'attn.proj.bias'].clone()
        if p + 'attn.qkv.bias' in state_dict:
            qkv_b = state_dict[p + 'attn.qkv.bias']
            out[p + 'attn.qkv.bias'] = qkv_b[rows].clone()
            v_bias = qkv_b[2 * h * d:]  # (H * d,)
            dead = ~cols
            if dead.any():  # a removed head still emits b_v through proj: fold it in
                proj_b = proj_b + (proj_w[:, dead].double() @ v_bias[dead].double()).to(
                    proj_b.dtype)
        out[p + 'attn.proj.weight'] = proj_w[:, cols].clone()
        out[p + 'attn.proj.bias'] = proj_b
        fc1, fc2 = p + FC1, p + FC2 + 'weight'
        out[fc1 + 'weight'] = state_dict[fc1 + 'weight'][nm].clone()
        out[fc1 + 'bias'] = state_dict[fc1 + 'bias'][nm].clone()
        out[fc2] = state_dict[fc2][:, nm].clone()
    return out


def compact_backbone_cfg(backbone_cfg: dict, head_masks: Sequence[Tensor],
                         neuron_masks: Sequence[Tensor], head_dims: Sequence[int]) -> dict:
    """The backbone config of the compact model, from the masked model's backbone config.

    A backbone with a token selector stays an ``SViTEVisionTransformer`` (with per-layer
    sizes); any other becomes a ``CompactVisionTransformer``.
    """
    cfg = copy.deepcopy(dict(backbone_cfg))
    cfg.pop('_scope_', None)
    token = cfg.get('token_keep') is not None
    if not token:
        for k in ('token_keep', 'token_tau', 'token_train_mode'):
            cfg.pop(k, None)
    cfg['type'] = 'mmsparse.SViTEVisionTransformer' if token else \
        'mmsparse.CompactVisionTransformer'
    cfg['num_heads'] = [int(m.sum()) for m in head_masks]
    cfg['head_dims'] = [int(d) for d in head_dims]
    cfg['mlp_dims'] = [int(m.sum()) for m in neuron_masks]
    return cfg


def compact_svite_checkpoint(cfg, checkpoint: str, out_prefix: str, atol: float = 1e-4,
                             base_config: Optional[str] = None) -> dict:
    """Compact a model trained with the structured hook (``tools/compact.py --method svite``).

    Reads the masks from ``checkpoint['svite']`` (else off the zero rows of the weights),
    writes ``<out_prefix>.pth`` (the compact weights, see :func:`compact_state_dict`) and
    ``<out_prefix>.py``, a config that inherits ``base_config`` with the compact backbone
    (:func:`compact_backbone_cfg`) and without the sparse-training hooks, and checks that the
    compact model's logits equal the masked model's to ``atol`` on random images.

    Args:
        cfg: the :class:`mmengine.Config` the checkpoint was trained with.
        checkpoint: path of the trained ``.pth``.
        out_prefix: output path without extension.
        atol: largest allowed logit difference.
        base_config: the config file the derived config inherits; default ``cfg.filename``.

    Returns:
        A report dict (mask source, paths, per-layer heads and MLP widths, parameter counts,
        largest logit difference).

    Raises:
        ValueError: the checkpoint has no state_dict, or the backbone records no heads.
        RuntimeError: the compact model's logits differ by more than ``atol``.
    """
    from mmsparse.analysis import make_images
    from mmsparse.checkpoint import load_checkpoint_file
    from mmsparse.utils import build_model, load_config
    from .uvc import max_output_diff

    ckpt = load_checkpoint_file(checkpoint, map_location='cpu')
    if 'state_dict' not in ckpt:
        raise ValueError(f'{checkpoint} has no state_dict (not a checkpoint of tools/train.py)')
    original = build_model(cfg, checkpoint)
    backbone = original.backbone
    if type(backbone).__name__ == 'DynamicVisionTransformer':
        raise ValueError('S²ViTE compaction cuts the heads and neurons of an S²ViTE model; a '
                         'DynamicViT backbone has no structured masks (compose DynamicViT on a '
                         'compact model with model.compact_checkpoint instead)')
    if not hasattr(backbone, 'attention_layers'):
        raise ValueError(f"S²ViTE compaction needs model.backbone.type='mmsparse."
                         f"SViTEVisionTransformer' (or a CompactVisionTransformer), got "
                         f'{type(backbone).__name__}')
    head_dims = [a.head_dims for a in backbone.attention_layers()]
    masks = structured_masks_from_checkpoint(ckpt)
    source = 'checkpoint masks (StructuredSparseTrainingHook)'
    if masks is None:
        masks = structured_masks_from_weights(ckpt['state_dict'], head_dims)
        source = 'zero rows of the weights (the checkpoint holds no S²ViTE masks)'
    new_bb = write_compact(
        cfg, ckpt, checkpoint, out_prefix, masks, head_dims, base_config or cfg.filename,
        'svite', f'compacted by mmsparse.compaction.svite (tools/compact.py --method svite) '
                 f'from\n{checkpoint}: per-layer heads {[int(m.sum()) for m in masks[0]]}, MLP '
                 f'widths {[int(m.sum()) for m in masks[1]]}.')
    cfg_path, ckpt_path = f'{out_prefix}.py', f'{out_prefix}.pth'
    compact = build_model(load_config(cfg_path), ckpt_path)
    size = new_bb.get('img_size', 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    diff = max_output_diff(original, compact, make_images(4, size, new_bb.get('in_channels', 3)))
    report = dict(method='svite', masks_from=source, config=cfg_path, checkpoint=ckpt_path,
                  num_heads=new_bb['num_heads'], mlp_dims=new_bb['mlp_dims'],
                  params=sum(p.numel() for p in original.parameters()),
                  params_compact=sum(p.numel() for p in compact.parameters()),
                  max_abs_diff=diff)
    if diff > atol:
        raise RuntimeError(f'the compact model differs from the masked one by {diff:.3g} '
                           f'(> --atol {atol})')
    return report


def _structure(backbone_cfg: dict) -> dict:
    """``compact_structure`` of the compact backbone ``backbone_cfg`` describes (built
    without weights: the layer sizes are resolved as the model resolves them)."""
    from mmsparse.models.layers.compact_vit import compact_structure
    from mmsparse.registry import MODELS
    cfg = dict(copy.deepcopy(backbone_cfg), init_cfg=None)
    return compact_structure(MODELS.build(cfg))


def write_compact(cfg, ckpt: dict, checkpoint: str, out_prefix: str,
                  masks: Tuple[List[Tensor], List[Tensor]], head_dims: List[int],
                  base_config: str, compaction: str, header: str,
                  meta: Optional[dict] = None) -> dict:
    """Write ``<out_prefix>.py`` / ``.pth`` of the model ``masks`` cut out of ``ckpt``; returns
    the compact backbone config.

    The config inherits ``base_config`` with the compact backbone (:func:`compact_backbone_cfg`)
    and without the sparse-training hooks (the masks are cut out: they have nothing left to do);
    the checkpoint holds the compact weights (:func:`compact_state_dict`) and, in ``meta``,
    ``compaction``, ``compacted_from`` and ``compact_structure`` (what a composed model reads).

    Args:
        masks: ``(head masks, neuron masks)``, one (H,) / (F,) mask per layer.
        head_dims: q / k dims of each layer's heads.
        compaction: its name in ``meta`` ('svite', 'uniform_magnitude').
        header: the first comment lines of the written config.
        meta: further ``meta`` entries.
    """
    from mmsparse.utils import write_derived_config
    from mmsparse.utils.config import is_config_of

    heads, neurons = masks
    bb_cfg = cfg.model.backbone
    new_bb = compact_backbone_cfg(bb_cfg.to_dict() if hasattr(bb_cfg, 'to_dict') else bb_cfg,
                                  heads, neurons, head_dims)
    hooks = [h for h in (cfg.get('custom_hooks') or []) if not is_config_of(h, DSTHook)]
    write_derived_config(
        base_config, f'{out_prefix}.py',
        dict(model=dict(backbone=dict(_delete_=True, **new_bb)), custom_hooks=hooks),
        header=header)
    out_meta = {k: v for k, v in ckpt.get('meta', {}).items()
                if isinstance(v, (str, int, float))}
    out_meta.update(meta or {})
    out_meta.update(compacted_from=osp.abspath(checkpoint), compaction=compaction,
                    compact_structure=_structure(new_bb))
    os.makedirs(osp.dirname(osp.abspath(out_prefix)), exist_ok=True)
    torch.save(dict(meta=out_meta, state_dict=compact_state_dict(ckpt['state_dict'], heads,
                                                                 neurons, head_dims)),
               f'{out_prefix}.pth')
    return new_bb
