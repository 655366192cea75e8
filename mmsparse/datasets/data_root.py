"""Where mmsparse's real data lives, and how it gets there.

One variable names the root: ``MMSPARSE_DATA`` (default ``./data`` of the working directory).
Configs read the same variable (``'{{$MMSPARSE_DATA:data}}/fashion_mnist'``), so tools, tests and
the demo all see one folder. Under it:

- ``fashion_mnist/``: the four un-gzipped idx files that mmpretrain's ``FashionMNIST`` reads.
- ``voc_sample/``: three PASCAL VOC images with COCO instance masks (``annotations.json`` +
  ``JPEGImages/``) and VOC class masks (``SegmentationClassPNG/``).

Both come from Debian packages (``dataset-fashion-mnist``, ``labelme-examples``); ``make install``
installs them where apt is available and calls :func:`prepare_data`.
"""
import gzip
import os
import shutil
from pathlib import Path
from typing import Dict, Union

ENV_VAR = 'MMSPARSE_DATA'
FASHION_MNIST_SRC = Path('/usr/share/datasets/fashion-mnist')
LABELME_SRC = Path('/usr/share/doc/labelme-examples/examples')
FASHION_MNIST_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
                       't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
HOW_TO_GET = (f'Run `make install` (installs the Debian packages dataset-fashion-mnist and '
              f'labelme-examples and unpacks them), or `apt-get install dataset-fashion-mnist '
              f'labelme-examples && python tools/prepare_data.py`, or point {ENV_VAR} at a '
              f'folder that holds fashion_mnist/ and voc_sample/.')


class DataNotFoundError(FileNotFoundError):
    """Raised when a data set mmsparse needs is not on disk; the message says how to get it."""


def data_root() -> Path:
    """The data root: ``$MMSPARSE_DATA`` or ``./data``."""
    return Path(os.environ.get(ENV_VAR, 'data')).expanduser()


def require_data(name: str, root: Union[str, Path, None] = None) -> Path:
    """Return ``root/name`` after checking it holds the expected files.

    Args:
        name: ``'fashion_mnist'`` or ``'voc_sample'``.
        root: the data root; defaults to :func:`data_root`.

    Raises:
        DataNotFoundError: with the missing path and how to get the data.
    """
    path = Path(root) if root is not None else data_root()
    path = path / name
    expected = {
        'fashion_mnist': list(FASHION_MNIST_FILES),
        'voc_sample': ['annotations.json', 'JPEGImages', 'SegmentationClassPNG'],
    }
    if name not in expected:
        raise ValueError(f'unknown data set {name!r}; known: {sorted(expected)}')
    missing = [f for f in expected[name] if not (path / f).exists()]
    if missing:
        raise DataNotFoundError(f'{name} not found: {path / missing[0]} is missing ({ENV_VAR}='
                                f'{path.parent}). {HOW_TO_GET}')
    return path


def prepare_data(out: Union[str, Path, None] = None,
                 fashion_mnist_src: Path = FASHION_MNIST_SRC,
                 labelme_src: Path = LABELME_SRC) -> Dict[str, Path]:
    """Unpack the Debian packages' files into ``out`` (idempotent).

    Returns:
        ``{'fashion_mnist': path, 'voc_sample': path}``.

    Raises:
        DataNotFoundError: when a source package is not installed.
    """
    out = Path(out) if out is not None else data_root()
    fm = out / 'fashion_mnist'
    fm.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        dst = fm / name
        if dst.exists():
            continue
        src = fashion_mnist_src / f'{name}.gz'
        if not src.exists():
            raise DataNotFoundError(f'{src} is missing (Debian package dataset-fashion-mnist). '
                                    f'{HOW_TO_GET}')
        tmp = dst.with_suffix('.part')
        with gzip.open(src, 'rb') as fin, open(tmp, 'wb') as fout:
            shutil.copyfileobj(fin, fout)
        tmp.rename(dst)

    voc = out / 'voc_sample'
    coco_src = labelme_src / 'instance_segmentation' / 'data_dataset_coco'
    sem_src = labelme_src / 'semantic_segmentation' / 'data_dataset_voc'
    if not coco_src.exists() or not sem_src.exists():
        raise DataNotFoundError(f'{coco_src} is missing (Debian package labelme-examples). '
                                f'{HOW_TO_GET}')
    voc.mkdir(parents=True, exist_ok=True)
    # The COCO file lists category 0 '_background_'; configs name the 20 VOC classes in their
    # metainfo, so mmdet's CocoDataset skips it by name.
    shutil.copyfile(coco_src / 'annotations.json', voc / 'annotations.json')
    for sub, src in (('JPEGImages', coco_src / 'JPEGImages'),
                     ('SegmentationClassPNG', sem_src / 'SegmentationClassPNG')):
        shutil.copytree(src, voc / sub, dirs_exist_ok=True)
    return {'fashion_mnist': fm, 'voc_sample': voc}
