"""Unpack mmsparse's real data (Fashion-MNIST, VOC samples) into the data root."""
import argparse
import sys

from mmsparse.datasets import DataNotFoundError, data_root, prepare_data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--out', default=None,
                        help='data root (default: $MMSPARSE_DATA or ./data)')
    args = parser.parse_args()
    try:
        paths = prepare_data(args.out if args.out else data_root())
    except DataNotFoundError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f'{name}: {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
