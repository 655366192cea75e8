"""Convert a checkpoint of the original DynamicViT code (``VisionTransformerDiffPruning``,
saved as ``{'model': state_dict, ...}``) into an mmsparse checkpoint of
``mmsparse.DynamicViTClassifier`` / ``mmsparse.DynamicVisionTransformer``.

    python tools/model_converters/dynamicvit_to_mmsparse.py SRC.pth DST.pth

Key mapping (timm names -> mmpretrain ViT names; predictors keep their inner names)::

    cls_token, pos_embed                -> backbone.cls_token, backbone.pos_embed
    patch_embed.proj.*                  -> backbone.patch_embed.projection.*
    blocks.N.norm1.* / norm2.*          -> backbone.layers.N.ln1.* / ln2.*
    blocks.N.attn.qkv.* / attn.proj.*   -> backbone.layers.N.attn.qkv.* / attn.proj.*
    blocks.N.mlp.fc1.* / mlp.fc2.*      -> backbone.layers.N.ffn.layers.0.0.* / ffn.layers.1.*
    norm.*                              -> backbone.ln1.*
    head.*                              -> head.layers.head.*
    score_predictor.K.*                 -> backbone.predictors.K.*

The model config must match the checkpoint: the arch (embed dims, depth, heads), the
``pruning_loc`` (the original's default for DeiT is [3, 6, 9]) and the keep ratios used in
training (``keep_rate``, default 0.7); the tool prints what it finds.
"""
import argparse
import os
import pickle
import re
import sys
from collections import OrderedDict
from typing import Dict, Tuple

import torch

RULES = [
    (r'^cls_token$', 'backbone.cls_token'),
    (r'^pos_embed$', 'backbone.pos_embed'),
    (r'^patch_embed\.proj\.(weight|bias)$', r'backbone.patch_embed.projection.\1'),
    (r'^blocks\.(\d+)\.norm1\.(weight|bias)$', r'backbone.layers.\1.ln1.\2'),
    (r'^blocks\.(\d+)\.norm2\.(weight|bias)$', r'backbone.layers.\1.ln2.\2'),
    (r'^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$', r'backbone.layers.\1.attn.qkv.\2'),
    (r'^blocks\.(\d+)\.attn\.proj\.(weight|bias)$', r'backbone.layers.\1.attn.proj.\2'),
    (r'^blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$', r'backbone.layers.\1.ffn.layers.0.0.\2'),
    (r'^blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$', r'backbone.layers.\1.ffn.layers.1.\2'),
    (r'^norm\.(weight|bias)$', r'backbone.ln1.\1'),
    (r'^head\.(weight|bias)$', r'head.layers.head.\1'),
    (r'^score_predictor\.(\d+)\.((?:in|out)_conv\.\d+\.(?:weight|bias))$',
     r'backbone.predictors.\1.\2'),
]


class ConversionError(Exception):
    """The source checkpoint is not an original DynamicViT ViT checkpoint."""


def convert_state_dict(src: Dict[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """Rename the original DynamicViT keys to mmsparse keys (tensors unchanged).

    Raises:
        ConversionError: on keys that have no mmsparse counterpart.
    """
    out, unknown = OrderedDict(), []
    for key, value in src.items():
        key = key[len('module.'):] if key.startswith('module.') else key
        for pattern, repl in RULES:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f'{len(unknown)} keys have no mmsparse counterpart, e.g. '
                              f'{unknown[:5]} (expected a VisionTransformerDiffPruning '
                              f'checkpoint of the original DynamicViT code)')
    if 'backbone.pos_embed' not in out or not any('.layers.' in k for k in out):
        raise ConversionError('no pos_embed / blocks.N.* keys: not a DynamicViT ViT checkpoint')
    return out


def summary(state_dict: Dict[str, torch.Tensor]) -> Tuple[int, int, int, int]:
    """(embed dims, depth, number of predictors, number of classes) of a converted dict."""
    dims = state_dict['backbone.pos_embed'].shape[-1]
    depth = len({k.split('.')[2] for k in state_dict if k.startswith('backbone.layers.')})
    preds = len({k.split('.')[2] for k in state_dict if k.startswith('backbone.predictors.')})
    head = state_dict.get('head.layers.head.weight')
    return dims, depth, preds, (head.shape[0] if head is not None else 0)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='checkpoint of the original DynamicViT code')
    parser.add_argument('dst', help='where to write the mmsparse checkpoint')
    parser.add_argument('--trust', action='store_true',
                        help='load SRC with full unpickling (only for files you trust)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not os.path.isfile(args.src):
        print(f'error: checkpoint not found: {args.src}', file=sys.stderr)
        return 2
    # the original's checkpoints also pickle its argparse Namespace (allowed here); anything
    # else that is not a tensor needs --trust (a full, unsafe unpickling of a file you trust)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(args.src, map_location='cpu', weights_only=not args.trust)
    except pickle.UnpicklingError as e:
        print(f'error: {args.src} holds objects a weights-only load refuses ({str(e)[:200]}); '
              f'if you trust the file, run again with --trust', file=sys.stderr)
        return 2
    src = ckpt.get('model', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(src, dict):
        print(f'error: {args.src} holds no state_dict (expected {{"model": state_dict}})',
              file=sys.stderr)
        return 2
    try:
        state_dict = convert_state_dict(src)
    except ConversionError as e:
        print(f'error: {args.src}: {e}', file=sys.stderr)
        return 2
    dims, depth, preds, classes = summary(state_dict)
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    torch.save({'state_dict': state_dict,
                'meta': dict(converted_from=os.path.basename(args.src),
                             converter='dynamicvit_to_mmsparse')}, args.dst)
    print(f'converted {len(state_dict)} tensors: embed_dims={dims}, depth={depth}, '
          f'{preds} predictors, {classes} classes -> {args.dst}\n'
          f'use it with a DynamicVisionTransformer of that arch and {preds} pruning_loc '
          f'(original DeiT default: [3, 6, 9])')
    return 0


if __name__ == '__main__':
    sys.exit(main())
