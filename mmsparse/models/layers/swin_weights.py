"""Swin checkpoints into :class:`~mmsparse.models.layers.swin.SwinTransformer`: mmdet's loading.

What mmdet 3.x's ``SwinTransformer.init_weights`` does to a checkpoint before its non-strict load
(:func:`adapt_swin_state_dict`), and its ``swin_converter`` for the official Swin repo's keys
(:func:`convert_official_swin`), as functions of state dicts.
"""
from collections import OrderedDict
from typing import Dict

import torch.nn.functional as F
from mmengine.logging import print_log
from torch import Tensor

__all__ = ['adapt_swin_state_dict', 'convert_official_swin']


def adapt_swin_state_dict(state: Dict[str, Tensor],
                          own: Dict[str, Tensor]) -> 'OrderedDict[str, Tensor]':
    """A checkpoint's state dict, fitted to a backbone whose own state dict is ``own``.

    Strips ``backbone.`` (an mmdet / mmseg model; other keys dropped) and ``module.`` (DDP);
    drops an absolute position embedding of another shape and relative position tables of
    another head count; resizes relative position tables of another window size bicubically.
    """
    out = OrderedDict()
    prefixed = any(k.startswith('backbone.') for k in state)
    for k, v in state.items():
        if prefixed:
            if k.startswith('backbone.'):
                out[k[len('backbone.'):]] = v
        else:
            out[k] = v
    if out and next(iter(out)).startswith('module.'):
        out = OrderedDict((k[len('module.'):], v) for k, v in out.items())
    pos = out.get('absolute_pos_embed')
    if pos is not None and ('absolute_pos_embed' not in own
                            or pos.shape != own['absolute_pos_embed'].shape):
        print_log('Error in loading absolute_pos_embed, pass', logger='current')
        out.pop('absolute_pos_embed')
    for key in [k for k in out if 'relative_position_bias_table' in k]:
        if key not in own:
            continue
        table = out[key]
        (l1, h1), (l2, h2) = table.shape, own[key].shape
        if h1 != h2:
            print_log(f'Error in loading {key}, pass', logger='current')
            out.pop(key)
        elif l1 != l2:
            s1, s2 = int(l1**0.5), int(l2**0.5)
            resized = F.interpolate(table.permute(1, 0).reshape(1, h1, s1, s1),
                                    size=(s2, s2), mode='bicubic')
            out[key] = resized.view(h2, l2).permute(1, 0).contiguous()
    return out


def convert_official_swin(state: dict) -> 'OrderedDict[str, Tensor]':
    """Keys of an official Swin checkpoint (microsoft/Swin-Transformer) -> mmdet's, ``backbone.``
    prefixed; the semantics of mmdet's ``swin_converter`` (``convert_weights=True``).

    ``layers.`` -> ``stages.``; ``attn.`` -> ``attn.w_msa.``; ``mlp.fc1`` / ``mlp.fc2`` ->
    ``ffn.layers.0.0`` / ``ffn.layers.1``; ``patch_embed.proj`` -> ``patch_embed.projection``;
    classifier ``head.*`` dropped. Patch merging concatenates its 2x2 neighbours in the order
    (0,0), (1,0), (0,1), (1,1) in the official code and channel-major (``nn.Unfold``) in mmcv,
    so ``downsample.reduction.weight`` columns and ``downsample.norm`` entries are permuted.
    """
    def unfold_order(v: Tensor) -> Tensor:  # (..., 4 * C) concatenation -> unfold order
        lead, c4 = v.shape[:-1], v.shape[-1]
        v = v.reshape(*lead, 4, c4 // 4)[..., [0, 2, 1, 3], :]
        return v.transpose(-1, -2).reshape(*lead, c4)

    out = OrderedDict()
    for k, v in state.items():
        if k.startswith('head'):
            continue
        new_k = k
        if k.startswith('layers'):
            if 'attn.' in k:
                new_k = k.replace('attn.', 'attn.w_msa.')
            elif 'mlp.fc1.' in k:
                new_k = k.replace('mlp.fc1.', 'ffn.layers.0.0.')
            elif 'mlp.fc2.' in k:
                new_k = k.replace('mlp.fc2.', 'ffn.layers.1.')
            elif 'mlp.' in k:
                new_k = k.replace('mlp.', 'ffn.')
            elif 'downsample' in k and ('reduction.' in k or 'norm.' in k):
                v = unfold_order(v)
            new_k = new_k.replace('layers', 'stages', 1)
        elif k.startswith('patch_embed') and 'proj' in k:
            new_k = k.replace('proj', 'projection')
        out['backbone.' + new_k] = v
    return out
