"""Train a model from a config (mmpretrain 1.2's flags)."""
import argparse

from mmsparse.utils import load_config, run_cli
from mmsparse.utils.cli import (add_config_args, build_runner, check_checkpoint, enable_amp,
                                 parse_tool_args, set_work_dir)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the given checkpoint; without a value, from the latest checkpoint '
             'in the work dir')
    parser.add_argument('--amp', action='store_true', help='enable automatic mixed precision')
    parser.add_argument('--no-validate', action='store_true',
                        help='do not evaluate checkpoints during training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the real batch size over auto_scale_lr.base_batch_size')
    parser.add_argument('--no-pin-memory', action='store_true')
    parser.add_argument('--no-persistent-workers', action='store_true')
    add_config_args(parser, launcher=True)
    return parse_tool_args(parser, argv)


def merge_args(cfg, args):
    """Fold the command-line flags into the config, as mmpretrain's tools/train.py does."""
    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None
    set_work_dir(cfg, args.config, args.work_dir)
    if args.amp:
        enable_amp(cfg)
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = check_checkpoint(args.resume)
    if args.auto_scale_lr:
        cfg.auto_scale_lr.enable = True
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if loader is None:
            continue
        if args.no_pin_memory:
            loader['pin_memory'] = False
        if args.no_persistent_workers:
            loader['persistent_workers'] = False
    return cfg


def main() -> int:
    args = parse_args()
    cfg = merge_args(load_config(args.config, args.cfg_options), args)
    runner = build_runner(cfg, args.launcher)
    runner.train()
    return 0


if __name__ == '__main__':
    run_cli(main)
