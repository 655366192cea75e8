"""Measured latency of the model a config builds, at one or more batch sizes.

Warm-up, then many timed runs (CUDA synchronised on GPU); reports the trimmed mean, median, mean
and spread in ms per batch, with the thread count, and writes JSON.
"""
import argparse
import json

from mmsparse.utils import build_model, load_config, run_cli
from mmsparse.utils.cli import add_config_args, input_size, positive_ints


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('--checkpoint', help='load these weights first')
    parser.add_argument('--part', choices=['model', 'backbone'], default='model')
    parser.add_argument('--batch-sizes', '--batch-size', type=int, nargs='+', default=[1, 32],
                        dest='batch_sizes')
    parser.add_argument('--img-size', type=int, nargs='+', default=None,
                        help='H [W] (default: the backbone img_size, else 224)')
    parser.add_argument('--warmup', type=int, default=10)
    parser.add_argument('--runs', type=int, default=50)
    parser.add_argument('--trim', type=float, default=0.25,
                        help='fraction dropped at each end for the trimmed mean')
    parser.add_argument('--device', default=None, help="'cpu' or 'cuda' (default: cuda if any)")
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    parser.add_argument('--out', help='write the JSON here (default: print it only)')
    add_config_args(parser)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    positive_ints(args.batch_sizes, '--batch-sizes')
    positive_ints([args.runs], '--runs')
    import torch

    from mmsparse.analysis import make_images, measure_latency, part_callable, thread_info
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    cfg = load_config(args.config, args.cfg_options)
    size = input_size(cfg, args.img_size, '--img-size')
    model = build_model(cfg, args.checkpoint, device=device)
    channels = cfg.model.get('backbone', {}).get('in_channels', 3)
    info = thread_info()
    print(f"threads: {info['torch_threads']} (interop {info['interop_threads']}), "
          f"device: {info['device']}")
    rows = []
    for bs in args.batch_sizes:
        images = make_images(bs, size, channels, device=device)
        name = f'batch{bs}'
        res = measure_latency({name: part_callable(model, args.part, images)},
                              warmup=args.warmup, runs=args.runs, trim=args.trim)[name]
        row = dict(batch_size=bs, img_size=list(size), part=args.part, **res.to_dict())
        row['images_per_s'] = bs * 1e3 / res.trimmed_mean_ms
        rows.append(row)
        print(f'batch {bs:4d}: trimmed mean {res.trimmed_mean_ms:9.3f} ms  median '
              f'{res.median_ms:9.3f} ms  ({row["images_per_s"]:.1f} img/s, {args.runs} runs)')
    report = dict(config=args.config, **info, results=rows)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report))
    return 0


if __name__ == '__main__':
    run_cli(main)
