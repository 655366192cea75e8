"""Pieces of mmpretrain's ``VisionTransformer`` that the sparse ViT backbones rebuild.

The backbones here subclass ``VisionTransformer`` and replace its layers or its forward; these
helpers repeat what ``VisionTransformer.__init__`` / ``forward`` do, in one place.
"""
import inspect
from typing import List, Sequence, Tuple

import numpy as np
import torch
from mmpretrain.models.backbones.vision_transformer import VisionTransformer
from mmpretrain.models.utils import resize_pos_embed
from torch import Tensor

from mmsparse.validation import Keys

__all__ = ['vit_layer_cfgs', 'vit_tokens']


def vit_layer_cfgs(vit: VisionTransformer, kwargs: dict, **per_layer: Sequence) -> List[dict]:
    """The per-layer arguments ``VisionTransformer.__init__`` gives its layers.

    Args:
        vit: the (initialised) backbone: its ``num_layers``, ``embed_dims``, ``arch_settings``.
        kwargs: the ``VisionTransformer`` arguments it was built with (defaults filled in).
        **per_layer: further or other arguments, one value per layer (e.g. ``num_heads=[...]``);
            the config's ``layer_cfgs`` still override them.

    Returns:
        One argument dict per layer (:class:`~mmsparse.models.layers.EncoderLayer`'s
        arguments: a ``layer_cfgs`` ``ffn_type`` other than ``'origin'`` is refused, mmsparse's
        layer has mmcv's FFN only).
    """
    defaults = inspect.signature(VisionTransformer.__init__).parameters

    def arg(name):
        return kwargs.get(name, defaults[name].default)

    dpr = np.linspace(0, arg('drop_path_rate'), vit.num_layers)
    layer_cfgs = arg('layer_cfgs')
    if isinstance(layer_cfgs, dict):
        layer_cfgs = [layer_cfgs] * vit.num_layers
    cfgs = []
    for i in range(vit.num_layers):
        cfg = dict(embed_dims=vit.embed_dims, num_heads=vit.arch_settings['num_heads'],
                   feedforward_channels=vit.arch_settings['feedforward_channels'],
                   layer_scale_init_value=arg('layer_scale_init_value'),
                   drop_rate=arg('drop_rate'), drop_path_rate=float(dpr[i]),
                   qkv_bias=arg('qkv_bias'), norm_cfg=arg('norm_cfg'))
        cfg.update({k: v[i] for k, v in per_layer.items()})
        cfg.update(layer_cfgs[i])
        if cfg.pop('ffn_type', 'origin') != 'origin':
            Keys('model.backbone').fail(f'layer_cfgs[{i}].ffn_type', "must be 'origin' (mmcv's "
                                        "FFN, the MLP of mmsparse's EncoderLayer)")
        cfgs.append(cfg)
    return cfgs


def vit_tokens(vit: VisionTransformer, x: Tensor, patch_resolution: Tuple[int, int]) -> Tensor:
    """``VisionTransformer.forward`` from the patch tokens to the first layer's input.

    Args:
        vit: the backbone (with a class token).
        x: patch tokens (B, N, C), the output of ``vit.patch_embed``.
        patch_resolution: their grid, also from ``vit.patch_embed``.

    Returns:
        (B, 1 + N, C): class token prepended, position embedding added, dropout, pre-norm.
    """
    x = torch.cat((vit.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    x = x + resize_pos_embed(vit.pos_embed, vit.patch_resolution, patch_resolution,
                             mode=vit.interpolate_mode, num_extra_tokens=vit.num_extra_tokens)
    x = vit.drop_after_pos(x)
    return vit.pre_norm(x)
