"""Print the whole config a file resolves to (its ``_base_`` files merged, ``--cfg-options``
applied), as the Runner sees it.

    python tools/misc/print_config.py CONFIG [--cfg-options k=v ...]
"""
import argparse

from mmsparse.utils import load_config, run_cli
from mmsparse.utils.cli import add_config_args


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Print the whole config')
    parser.add_argument('config', help='config file path')
    add_config_args(parser)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    print(f'Config:\n{cfg.pretty_text}')
    return 0


if __name__ == '__main__':
    run_cli(main)
