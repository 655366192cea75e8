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
"""
import copy
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from mmsparse.ops.dst import head_rows_mask

__all__ = ['structured_masks_from_checkpoint', 'structured_masks_from_weights',
           'compact_state_dict', 'compact_backbone_cfg', 'layer_count']


def layer_count(state_dict: Dict[str, Tensor], prefix: str = 'backbone.') -> int:
    """Number of encoder layers (``<prefix>layers.N.attn.qkv.weight`` keys)."""
    n = 0
    while f'{prefix}layers.{n}.attn.qkv.weight' in state_dict:
        n += 1
    return n


def structured_masks_from_checkpoint(checkpoint: dict) -> Optional[Tuple[List[Tensor],
                                                                         List[Tensor]]]:
    """``(head_masks, neuron_masks)`` saved by the structured hook, or None."""
    state = checkpoint.get('svite')
    if not isinstance(state, dict) or state.get('kind') != 'structured':
        return None
    return ([m.bool().cpu() for m in state['head_masks']],
            [m.bool().cpu() for m in state['neuron_masks']])


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
        fc1, fc2 = state_dict[p + 'ffn.layers.0.0.weight'], state_dict[p + 'ffn.layers.1.weight']
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
        fc1 = p + 'ffn.layers.0.0.'
        out[fc1 + 'weight'] = state_dict[fc1 + 'weight'][nm].clone()
        out[fc1 + 'bias'] = state_dict[fc1 + 'bias'][nm].clone()
        fc2 = p + 'ffn.layers.1.weight'
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
