"""Evaluate a checkpoint on a config's test set (mmpretrain 1.2's flags)."""
import argparse

from mmsparse.utils import UserError, load_config, run_cli
from mmsparse.utils.cli import (add_config_args, build_runner, check_checkpoint,
                                 parse_tool_args, set_work_dir)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the directory to save the file containing '
                        'evaluation metrics')
    parser.add_argument('--out', help='dump the metrics to this json/pkl file')
    add_config_args(parser, launcher=True)
    return parse_tool_args(parser, argv)


def main() -> int:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    cfg.load_from = check_checkpoint(args.checkpoint)
    set_work_dir(cfg, args.config, args.work_dir)
    if cfg.get('test_dataloader') is None or cfg.get('test_evaluator') is None:
        raise UserError(f'{args.config} has no test_dataloader / test_evaluator to test with')
    runner = build_runner(cfg, args.launcher)
    metrics = runner.test()
    if args.out:
        from mmengine.fileio import dump
        dump(metrics, args.out)
    return 0


if __name__ == '__main__':
    run_cli(main)
