"""Write the physically smaller model of a UVC checkpoint (heads, head dims, neurons, skipped
blocks removed) as a config + checkpoint that tools/test.py runs, and check it.

    python tools/uvc_compact.py CONFIG CHECKPOINT [--out PREFIX] [--json FILE] [--atol 1e-5]

(the same as ``tools/compact.py CONFIG CHECKPOINT --out DIR --method uvc``). CONFIG is the
UVC config the checkpoint was trained with (stage 2, or stage 1: its current hard
architecture). Writes ``PREFIX.py`` and ``PREFIX.pth`` (default: ``uvc_compact`` beside the
checkpoint), then prints the largest logit difference to the masked model on random inputs
and the compact model's traced FLOPs next to UVC's real FLOPs fraction.
"""
import argparse
import json
import os.path as osp

from mmsparse.utils import load_config, run_cli
from mmsparse.utils.cli import DictAction, UserError, check_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='the UVC config of the checkpoint')
    parser.add_argument('checkpoint', help='a UVC checkpoint (stage 2 or stage 1)')
    parser.add_argument('--out', help='output path without extension (default: '
                        '<checkpoint dir>/uvc_compact)')
    parser.add_argument('--json', help='also write the report to this JSON file')
    parser.add_argument('--atol', type=float, default=1e-5,
                        help='largest allowed logit difference (default 1e-5)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    from mmsparse.compaction.uvc import compact_checkpoint
    cfg = load_config(args.config, args.cfg_options)
    check_checkpoint(args.checkpoint)
    out = args.out or osp.join(osp.dirname(osp.abspath(args.checkpoint)), 'uvc_compact')
    try:
        report = compact_checkpoint(cfg, args.checkpoint, out, args.atol)
    except ValueError as e:
        raise UserError(f'{args.config}: {e}') from None
    print(f"compact model: {report['config']}  {report['checkpoint']}")
    print(f"max logit difference to the masked model: {report['max_abs_diff']:.3e} "
          f"(allowed {args.atol:g})")
    print(f"FLOPs: compact {report['compact_macs'] / 1e9:.4f} G = "
          f"{report['measured_flops_fraction'] * 100:.3f} % of dense "
          f"({report['dense_macs'] / 1e9:.4f} G); UVC real fraction "
          f"{report['real_flops_fraction'] * 100:.3f} %; params "
          f"{report['compact_params'] / 1e6:.3f} M")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == '__main__':
    run_cli(main)
