"""UVC compaction: the masked / gated model -> a physically smaller dense ViT, and its export.

The hard architecture of a :class:`mmsparse.models.UVCClassifier` (its ``backbone.mask_*``
buffers: heads, value dims inside heads, MLP neurons, blocks that run) becomes the one compact
ViT (:class:`~mmsparse.models.layers.compact_vit.CompactVisionTransformer`, written under its
UVC arguments, :class:`~mmsparse.models.layers.compact_vit.UVCCompactVisionTransformer`) inside
a plain mmpretrain ``ImageClassifier``: removed heads lose their q/k/v rows of ``qkv`` and their
``proj`` columns, removed value dims lose their v row and ``proj`` column, removed neurons their
``fc1`` row and ``fc2`` column, skipped blocks disappear. Its outputs equal the masked model's in
eval mode (up to float rounding) and its traced MACs equal UVC's resource function of the
architecture.

:func:`export_uvc_compact` writes ``<out>.py`` (the source config with this ``model``, a
standalone derived config of :func:`~mmsparse.utils.write_derived_config`) and ``<out>.pth``
(its weights): ``tools/test.py <out>.py <out>.pth`` evaluates it.
"""
import copy
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from mmsparse.models.utils import unwrap_model

__all__ = ['uvc_compact_layers', 'compact_backbone_cfg', 'compact_model_cfg',
           'compact_state_dict', 'compact_uvc_model', 'export_uvc_compact', 'max_output_diff',
           'compact_checkpoint']


def _uvc_model(model: nn.Module):
    from mmsparse.models.uvc_classifier import UVCClassifier
    model = unwrap_model(model)
    if not isinstance(model, UVCClassifier):
        raise ValueError(f'UVC compaction needs a mmsparse.UVCClassifier, got '
                         f'{type(model).__name__}')
    bb = model.uvc_backbone
    if bb.patch_gates is not None:
        raise ValueError('UVC compaction: the model has patch gating (a stage-1 device that '
                         'scales tokens, not a structure); compact a stage-2 model '
                         "(backbone.mode='fixed', patch_gating=False)")
    if bb.mode == 'search':
        bb.refresh_masks()
    return model, bb


def uvc_compact_layers(backbone) -> List[dict]:
    """The structure of the kept blocks, and where their weights come from.

    Returns:
        One dict per *running* block: ``block`` (dense index), ``heads`` (kept head indices,
        ordered by descending value dim, then index, so that equal dims are adjacent),
        ``v_dims`` (value dims of those heads), ``dims`` (per kept head, the kept dim indices),
        ``neurons`` (kept neuron indices), ``feedforward_channels``.
    """
    layers = []
    for i in range(backbone.num_layers):
        if backbone.mask_blocks[i] <= 0:
            continue
        head_keep = backbone.mask_heads[i] > 0
        dims = {h: torch.nonzero(backbone.mask_dims[i, h] > 0).flatten().tolist()
                for h in torch.nonzero(head_keep).flatten().tolist()}
        heads = sorted(dims, key=lambda h: (-len(dims[h]), h))
        neurons = torch.nonzero(backbone.mask_neurons[i] > 0).flatten().tolist()
        layers.append(dict(block=i, heads=heads, v_dims=[len(dims[h]) for h in heads],
                           dims=[dims[h] for h in heads], neurons=neurons,
                           feedforward_channels=len(neurons)))
    return layers


def compact_backbone_cfg(backbone, backbone_cfg: Optional[dict] = None) -> dict:
    """The config of the compact backbone of ``backbone``'s hard architecture."""
    conv = backbone.patch_embed.projection
    norm_cfg = (backbone_cfg or {}).get('norm_cfg', dict(type='LN', eps=1e-6))
    qkv_bias = backbone.layers[0].attn.qkv.bias is not None
    return dict(
        type='mmsparse.UVCCompactVisionTransformer',
        embed_dims=backbone.embed_dims,
        head_dims=backbone.head_dims,
        layers=[dict(v_dims=layer['v_dims'], feedforward_channels=layer['feedforward_channels'])
                for layer in uvc_compact_layers(backbone)],
        img_size=list(backbone.img_size),
        patch_size=list(conv.kernel_size),
        in_channels=conv.in_channels,
        qkv_bias=qkv_bias,
        norm_cfg=dict(norm_cfg),
        final_norm=backbone.final_norm,
        interpolate_mode=backbone.interpolate_mode,
        dense_num_layers=backbone.num_layers,
    )


def compact_model_cfg(model_cfg: dict, backbone) -> dict:
    """A plain ``mmpretrain.ImageClassifier`` config: ``model_cfg``'s head and data
    preprocessor (and batch augments) with the compact backbone."""
    cfg = dict(type='mmpretrain.ImageClassifier', _scope_='mmpretrain',
               backbone=compact_backbone_cfg(backbone, model_cfg.get('backbone')),
               head=copy.deepcopy(model_cfg['head']))
    for key in ('data_preprocessor', 'train_cfg'):
        if model_cfg.get(key) is not None:
            cfg[key] = copy.deepcopy(model_cfg[key])
    return cfg


def compact_state_dict(model: nn.Module) -> Dict[str, Tensor]:
    """The weights of the compact classifier (backbone, head, data preprocessor)."""
    model, bb = _uvc_model(model)
    hd, C = bb.head_dims, bb.embed_dims
    sd = {}
    for k in ('cls_token', 'pos_embed', 'patch_embed.projection.weight',
              'patch_embed.projection.bias'):
        sd[f'backbone.{k}'] = dict(bb.named_parameters())[k].detach().clone()
    if bb.final_norm:
        sd['backbone.ln1.weight'] = bb.ln1.weight.detach().clone()
        sd['backbone.ln1.bias'] = bb.ln1.bias.detach().clone()
    for j, layer in enumerate(uvc_compact_layers(bb)):
        src = bb.layers[layer['block']]
        p = f'backbone.layers.{j}.'
        if layer['heads']:
            q_rows = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in layer['heads']])
            v_cols = torch.cat([h * hd + torch.tensor(d, dtype=torch.long)
                                for h, d in zip(layer['heads'], layer['dims'])])
            rows = torch.cat([q_rows, C + q_rows, 2 * C + v_cols])
            qkv = src.attn.qkv
            sd[p + 'attn.qkv.weight'] = qkv.weight.detach()[rows].clone()
            if qkv.bias is not None:
                sd[p + 'attn.qkv.bias'] = qkv.bias.detach()[rows].clone()
            sd[p + 'attn.proj.weight'] = src.attn.proj.weight.detach()[:, v_cols].clone()
            sd[p + 'attn.proj.bias'] = src.attn.proj.bias.detach().clone()
            sd[p + 'ln1.weight'] = src.ln1.weight.detach().clone()
            sd[p + 'ln1.bias'] = src.ln1.bias.detach().clone()
        if layer['neurons']:
            n = torch.tensor(layer['neurons'], dtype=torch.long)
            fc1, fc2 = src.fc1, src.fc2
            sd[p + 'ffn.layers.0.0.weight'] = fc1.weight.detach()[n].clone()
            sd[p + 'ffn.layers.0.0.bias'] = fc1.bias.detach()[n].clone()
            sd[p + 'ffn.layers.1.weight'] = fc2.weight.detach()[:, n].clone()
            sd[p + 'ffn.layers.1.bias'] = fc2.bias.detach().clone()
            sd[p + 'ln2.weight'] = src.ln2.weight.detach().clone()
            sd[p + 'ln2.bias'] = src.ln2.bias.detach().clone()
    for k, v in unwrap_model(model.head).state_dict().items():
        sd[f'head.{k}'] = v.detach().clone()
    for k, v in model.data_preprocessor.state_dict().items():
        sd[f'data_preprocessor.{k}'] = v.detach().clone()
    return sd


def compact_uvc_model(model: nn.Module, model_cfg: dict) -> Tuple[nn.Module, dict]:
    """Build the compact classifier of a UVC model and load its weights.

    Args:
        model: a :class:`~mmsparse.models.UVCClassifier` (stage 2, or stage 1: its current
            hard architecture).
        model_cfg: the config dict the model was built from (for the head and preprocessor).

    Returns:
        ``(compact model in eval mode, its config dict)``.
    """
    from mmengine.registry import MODELS
    uvc, bb = _uvc_model(model)
    cfg = compact_model_cfg(model_cfg, bb)
    compact = MODELS.build(copy.deepcopy(cfg))
    sd = compact_state_dict(uvc)
    missing, unexpected = compact.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith('data_preprocessor.')]
    if missing or unexpected:
        raise RuntimeError(f'UVC compaction: weights do not fit the compact model: missing '
                           f'{missing[:5]}, unexpected {unexpected[:5]}')
    return compact.to(next(uvc.parameters()).device).eval(), cfg


def _plain_training_cfg(cfg) -> None:
    """Make the exported config trainable as a plain classifier (in place): UVC's optimizers,
    schedules, hooks and DDP wrapper go, the weights' own stay."""
    from mmsparse.engine.uvc_hooks import UVCCompactHook, UVCHook
    from mmsparse.engine.uvc_optim import UVCOptimWrapperConstructor
    from mmsparse.registry import OPTIM_WRAPPER_CONSTRUCTORS
    from mmsparse.utils.config import is_config_of
    ow = cfg.get('optim_wrapper')
    if isinstance(ow, dict) and is_config_of(dict(type=ow.get('constructor')),
                                             UVCOptimWrapperConstructor,
                                             OPTIM_WRAPPER_CONSTRUCTORS):
        cfg.optim_wrapper = copy.deepcopy(ow['weights'])
    sched = cfg.get('param_scheduler')
    if isinstance(sched, dict) and 'type' not in sched:
        cfg.param_scheduler = copy.deepcopy(sched.get('weights', []))
    hooks = cfg.get('custom_hooks') or []
    cfg.custom_hooks = [h for h in hooks if not is_config_of(h, (UVCHook, UVCCompactHook))]
    cfg.pop('model_wrapper_cfg', None)
    cfg.load_from = None
    cfg.resume = False


def export_uvc_compact(cfg, model: nn.Module, out_prefix: str) -> Tuple[str, str, nn.Module]:
    """Write the compact model: ``<out_prefix>.py`` (config) and ``<out_prefix>.pth`` (weights).

    Args:
        cfg: the :class:`mmengine.Config` the UVC model was built from (data, evaluator ...).
        model: the UVC model (weights as trained).
        out_prefix: path without extension.

    Returns:
        ``(config path, checkpoint path, compact model)``.
    """
    from mmsparse.utils.config import write_derived_config
    uvc, bb = _uvc_model(model)
    compact, model_cfg = compact_uvc_model(uvc, cfg.model.to_dict() if hasattr(
        cfg.model, 'to_dict') else dict(cfg.model))
    out = copy.deepcopy(cfg)
    out.model = model_cfg
    _plain_training_cfg(out)
    os.makedirs(osp.dirname(osp.abspath(out_prefix)), exist_ok=True)
    cfg_path, ckpt_path = f'{out_prefix}.py', f'{out_prefix}.pth'
    # standalone (no _base_): the config as the run had it, command-line overrides included
    write_derived_config(None, cfg_path, out.to_dict(), header=(
        f'UVC compact model of {cfg.filename or "a config built in memory"}, written by '
        f'mmsparse.compaction.uvc\nwith its weights {osp.abspath(ckpt_path)}: '
        f'tools/test.py <this config> <those weights>'))
    from mmsparse.models.layers.compact_vit import compact_structure
    meta = dict(uvc=dict(
        source_flops_fraction=float(uvc.fixed_flops_fraction()),
        architecture=bb.arch_summary(),
        dense_macs=float(uvc.cost.dense_macs)),
        compact_structure=compact_structure(compact.backbone))
    torch.save(dict(meta=meta, state_dict={k: v.cpu() for k, v in compact.state_dict().items()}),
               ckpt_path)
    return cfg_path, ckpt_path, compact


@torch.no_grad()
def max_output_diff(a: nn.Module, b: nn.Module, images: Tensor) -> float:
    """Largest absolute difference of two classifiers' logits (``mode='tensor'``, eval)."""
    a.eval()
    b.eval()
    return float((a(images, mode='tensor') - b(images, mode='tensor')).abs().max())


def compact_checkpoint(cfg, checkpoint: str, out_prefix: str, atol: float = 1e-5) -> dict:
    """What ``tools/compact.py --method uvc`` does.

    Builds the UVC model of ``cfg`` with ``checkpoint``, writes the compact model
    (:func:`export_uvc_compact`), and checks it: the largest logit difference to the masked
    model on random inputs must be <= ``atol``; the compact model's traced MACs are reported
    next to UVC's real FLOPs fraction of the dense MACs.

    Returns:
        A report dict (paths, max logit difference, MACs, fractions, architecture).

    Raises:
        ValueError: not a UVC model, or a model with patch gating.
        RuntimeError: the compact model's outputs differ by more than ``atol``.
    """
    from mmsparse.analysis import count_flops, make_images
    from mmsparse.analysis.model_parts import part_module
    from mmsparse.utils.cli import build_model

    model = build_model(cfg, checkpoint)
    uvc, bb = _uvc_model(model)
    cfg_path, ckpt_path, compact = export_uvc_compact(cfg, uvc, out_prefix)
    size = tuple(bb.img_size)
    channels = bb.patch_embed.projection.in_channels
    diff = max_output_diff(uvc, compact, make_images(4, size, channels))
    one = make_images(1, size, channels)
    traced = count_flops(part_module(compact, 'model', one), (one, ))
    dense_macs = uvc.cost.dense_macs
    report = dict(method='uvc', config=cfg_path, checkpoint=ckpt_path, max_abs_diff=diff,
                  compact_macs=traced.flops, compact_params=traced.params,
                  dense_macs=dense_macs, real_flops_fraction=uvc.fixed_flops_fraction(),
                  measured_flops_fraction=traced.flops / dense_macs,
                  architecture=bb.arch_summary())
    if diff > atol:
        raise RuntimeError(f'the compact model differs from the masked one by {diff:.3g} '
                           f'(> {atol})')
    return report
