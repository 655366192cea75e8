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

Every method also writes its report to ``DIR/<config>_<method>.json``. The work is done by
:mod:`mmsparse.compaction` (``compact_svite_checkpoint``, ``export_sparse_checkpoint``,
``uvc.compact_checkpoint``), callable from Python; this tool parses the flags and prints.
"""
import argparse
import json
import os
import os.path as osp

from mmsparse.utils import UserError, load_config, run_cli
from mmsparse.utils.cli import add_config_args, check_checkpoint

METHODS = ('svite', 'sparse', 'uvc')


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
    add_config_args(parser)
    return parser.parse_args(argv)


def compact(args, cfg, name: str) -> dict:
    """Run the compaction of ``args.method``; its report."""
    from mmsparse.compaction import compact_svite_checkpoint, export_sparse_checkpoint
    from mmsparse.compaction.uvc import compact_checkpoint
    prefix = osp.join(args.out, f'{name}_compact')
    try:
        if args.method == 'uvc':  # DIR/<config>_compact.py/.pth
            return compact_checkpoint(cfg, args.checkpoint, prefix, args.atol)
        if args.method == 'svite':  # DIR/<config>_compact.py/.pth
            return compact_svite_checkpoint(cfg, args.checkpoint, prefix, args.atol,
                                            base_config=args.config)
        return export_sparse_checkpoint(args.checkpoint,
                                        osp.join(args.out, f'{name}_sparse.pth'))
    except ValueError as e:  # not a model of the method, no state_dict, a bad config value
        raise UserError(f'--method {args.method}: {args.config}: {e}') from None


def main() -> int:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    check_checkpoint(args.checkpoint)
    os.makedirs(args.out, exist_ok=True)
    name = osp.splitext(osp.basename(args.config))[0]
    report = compact(args, cfg, name)
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
