"""FLOPs (multiply-accumulates) and parameters of the model a config builds.

Attention matmuls are counted (also inside ``scaled_dot_product_attention``) and the model is
traced, so a sparse model is counted with the tokens / windows it really processes.
"""
import argparse
import json
import sys

from mmsparse.utils import build_model, load_config, run_cli
from mmsparse.utils.cli import add_config_args, input_size, positive_ints


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('--checkpoint', help='load these weights first (needed where a sparse '
                        "model's kept structure comes from training)")
    parser.add_argument('--shape', type=int, nargs='+', default=None,
                        help='input image size: H [W] (default: the backbone img_size, else 224)')
    parser.add_argument('--part', choices=['model', 'backbone'], default='model')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--out', help='also write the result to this JSON file')
    add_config_args(parser)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    positive_ints([args.batch_size], '--batch-size')
    cfg = load_config(args.config, args.cfg_options)
    size = input_size(cfg, args.shape, '--shape')
    model = build_model(cfg, args.checkpoint)

    from mmsparse.analysis import count_flops, make_images, part_module
    channels = cfg.model.get('backbone', {}).get('in_channels', 3)
    images = make_images(args.batch_size, size, channels)
    result = count_flops(part_module(model, args.part, images), (images, ))
    report = {
        'config': args.config, 'part': args.part, 'input_shape': list(images.shape),
        'flops': result.flops, 'gflops': round(result.gflops, 4), 'params': result.params,
        'mparams': round(result.mparams, 4), 'unsupported_ops': result.unsupported_ops,
    }
    split = '=' * 30
    print(f'{split}\nInput shape: {tuple(images.shape)}\nPart: {args.part}\n'
          f'Flops: {result.gflops:.3f} GFLOPs (multiply-accumulates)\n'
          f'Params: {result.mparams:.3f} M\n{split}')
    if result.unsupported_ops:
        print(f'not counted (no FLOPs handle): {result.unsupported_ops}', file=sys.stderr)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == '__main__':
    run_cli(main)
