"""Compact a trained sparse model: a physically smaller model, or a smaller checkpoint file.

    python tools/compact.py CONFIG CHECKPOINT --out DIR [--method svite|sparse|uvc]

``--method svite`` (S²ViTE, structured): the heads and MLP neurons that
StructuredSparseTrainingHook removed are cut out; writes ``DIR/<config>_compact.py`` (the same
config with a ``CompactVisionTransformer`` of per-layer sizes) and ``DIR/<config>_compact.pth``,
which ``tools/test.py``, ``tools/analysis_tools/get_flops.py`` and
``tools/analysis_tools/measure_latency.py`` take like any other model, and checks that the
compact model computes what the masked one does.

``--method sparse`` (SViTE, unstructured): writes ``DIR/<config>_sparse.pth``, the weights as
non-zero values + packed bitmask (smaller than the dense file below density ~0.97), loadable
as ``sparse://DIR/<config>_sparse.pth`` wherever a checkpoint is taken (``load_from``,
``tools/test.py``), and checks the exact round trip.

``--method uvc`` (UVC, stage 2 or the current hard architecture of stage 1): heads, head dims,
MLP neurons and skipped blocks are removed; writes ``DIR/<config>_compact.py`` / ``.pth``,
checks the largest logit difference to the masked model (``--atol``, e.g. 1e-5) and prints
the compact model's traced FLOPs next to UVC's real FLOPs fraction.

Every method also writes its report to ``DIR/<config>_<method>.json``.
"""
import argparse
import json
import os
import os.path as osp
import pprint
import tempfile

from mmsparse.utils import UserError, load_config, run_cli
from mmsparse.utils.cli import DictAction, check_checkpoint

METHODS = ('svite', 'sparse', 'uvc')
SVITE_HOOKS = ('SparseTrainingHook', 'StructuredSparseTrainingHook',
               'mmsparse.SparseTrainingHook', 'mmsparse.StructuredSparseTrainingHook')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='the config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='the trained checkpoint (.pth)')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--method', default='svite', choices=METHODS,
                        help='svite: structured compaction (S²ViTE); sparse: values + bitmask '
                             'checkpoint (unstructured SViTE); uvc: heads, head dims, neurons, '
                             'skipped blocks of a UVC model (mmsparse.compaction.uvc)')
    parser.add_argument('--atol', type=float, default=1e-4,
                        help='largest allowed output difference, masked vs compact model')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    return parser.parse_args(argv)


def _load(path: str) -> dict:
    from mmsparse.checkpoint import load_checkpoint_file
    ckpt = load_checkpoint_file(path, map_location='cpu')
    if 'state_dict' not in ckpt:
        raise UserError(f'{path} has no state_dict (not a checkpoint of tools/train.py)')
    return ckpt


def _max_diff(model_a, model_b, cfg) -> float:
    import torch
    from mmsparse.analysis import make_images
    bb = cfg.model.backbone
    size = bb.get('img_size', 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    x = make_images(4, size, bb.get('in_channels', 3))
    with torch.no_grad():
        a = model_a(x, mode='tensor')
        b = model_b(x, mode='tensor')
    return float((a - b).abs().max())


def compact_svite(args, cfg, ckpt, name: str) -> dict:
    import torch
    from mmsparse.compaction.svite import (compact_backbone_cfg, compact_state_dict,
                                           structured_masks_from_checkpoint,
                                           structured_masks_from_weights)
    from mmsparse.utils import build_model

    bb_cfg = cfg.model.backbone.to_dict() if hasattr(cfg.model.backbone, 'to_dict') \
        else dict(cfg.model.backbone)
    original = build_model(cfg, args.checkpoint)
    backbone = original.backbone
    if not hasattr(backbone, 'attention_layers'):
        raise UserError(f"--method svite needs model.backbone.type='mmsparse."
                        f"SViTEVisionTransformer' (or a CompactVisionTransformer), got "
                        f'{type(backbone).__name__}')
    head_dims = [a.head_dims for a in backbone.attention_layers()]
    masks = structured_masks_from_checkpoint(ckpt)
    source = 'checkpoint masks (StructuredSparseTrainingHook)'
    if masks is None:
        masks = structured_masks_from_weights(ckpt['state_dict'], head_dims)
        source = 'zero rows of the weights (the checkpoint holds no S²ViTE masks)'
    heads, neurons = masks
    state_dict = compact_state_dict(ckpt['state_dict'], heads, neurons, head_dims)
    new_bb = compact_backbone_cfg(bb_cfg, heads, neurons, head_dims)

    hooks = [h for h in (cfg.get('custom_hooks') or []) if h.get('type') not in SVITE_HOOKS]
    cfg_path = osp.join(args.out, f'{name}_compact.py')
    ckpt_path = osp.join(args.out, f'{name}_compact.pth')
    with open(cfg_path, 'w') as f:
        f.write(f'# {name} compacted by tools/compact.py --method svite from\n'
                f'# {args.checkpoint}: per-layer heads {new_bb["num_heads"]}, MLP widths '
                f'{new_bb["mlp_dims"]}.\n'
                f'_base_ = [{osp.abspath(args.config)!r}]\n\n'
                f'model = dict(backbone=dict(_delete_=True, **{pprint.pformat(new_bb, indent=4)}'
                f'))\n'
                f'custom_hooks = {pprint.pformat([dict(h) for h in hooks])}\n')
    meta = {k: v for k, v in ckpt.get('meta', {}).items() if isinstance(v, (str, int, float))}
    meta.update(compacted_from=osp.abspath(args.checkpoint), compaction='svite')
    torch.save(dict(meta=meta, state_dict=state_dict), ckpt_path)

    compact_cfg = load_config(cfg_path)
    compact = build_model(compact_cfg, ckpt_path)
    diff = _max_diff(original, compact, cfg)
    n_orig = sum(p.numel() for p in original.parameters())
    n_new = sum(p.numel() for p in compact.parameters())
    report = dict(method='svite', masks_from=source, config=cfg_path, checkpoint=ckpt_path,
                  num_heads=new_bb['num_heads'], mlp_dims=new_bb['mlp_dims'],
                  params=n_orig, params_compact=n_new, max_abs_diff=diff)
    if diff > args.atol:
        raise RuntimeError(f'the compact model differs from the masked one by {diff:.3g} '
                           f'(> --atol {args.atol})')
    return report


def export_sparse(args, cfg, ckpt, name: str) -> dict:
    import torch
    from mmsparse.compaction.sparse_ckpt import (SCHEME, load_sparse_checkpoint,
                                                 save_sparse_checkpoint)
    path = osp.join(args.out, f'{name}_sparse.pth')
    info = save_sparse_checkpoint(ckpt, path)
    back = load_sparse_checkpoint(path)['state_dict']
    exact = list(back) == list(ckpt['state_dict']) and all(
        torch.equal(back[k], ckpt['state_dict'][k]) for k in back)
    if not exact:
        raise RuntimeError('the sparse checkpoint does not load back to the same weights')
    with tempfile.TemporaryDirectory() as tmp:  # the same weights, dense, without optimizer
        dense = osp.join(tmp, 'dense.pth')
        torch.save(dict(meta=info.get('meta', {}), state_dict=ckpt['state_dict']), dense)
        dense_bytes = os.path.getsize(dense)
    return dict(method='sparse', checkpoint=path, load_as=SCHEME + path, bytes=info['bytes'],
                dense_state_dict_bytes=dense_bytes, original_file_bytes=os.path.getsize(
                    args.checkpoint), sparse_tensors=info['sparse_tensors'], exact=exact)


def main() -> int:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    check_checkpoint(args.checkpoint)
    ckpt = _load(args.checkpoint)
    os.makedirs(args.out, exist_ok=True)
    name = osp.splitext(osp.basename(args.config))[0]
    if args.method == 'uvc':  # UVC: DIR/<config>_compact.py/.pth
        from mmsparse.compaction.uvc import compact_checkpoint
        try:
            report = compact_checkpoint(cfg, args.checkpoint,
                                        osp.join(args.out, f'{name}_compact'), args.atol)
        except ValueError as e:  # not a UVC model, or one with patch gating
            raise UserError(f'--method uvc: {args.config}: {e}') from None
    elif args.method == 'svite':
        report = compact_svite(args, cfg, ckpt, name)
    else:
        report = export_sparse(args, cfg, ckpt, name)
    with open(osp.join(args.out, f'{name}_{args.method}.json'), 'w') as f:
        json.dump(report, f, indent=2)
    for k, v in report.items():
        print(f'{k}: {v}')
    if args.method == 'uvc':
        print(f"FLOPs: compact {report['compact_macs'] / 1e9:.4f} G = "
              f"{report['measured_flops_fraction'] * 100:.3f} % of dense "
              f"({report['dense_macs'] / 1e9:.4f} G); UVC real fraction "
              f"{report['real_flops_fraction'] * 100:.3f} %; params "
              f"{report['compact_params'] / 1e6:.3f} M")
    return 0


if __name__ == '__main__':
    run_cli(main)
