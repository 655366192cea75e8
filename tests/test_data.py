"""Data root, unpacking, and the error that says how to get missing data."""
import gzip

import pytest

from mmsparse.datasets import DataNotFoundError, prepare_data, require_data
from mmsparse.datasets.data_root import FASHION_MNIST_FILES


def test_prepare_unpacks_and_is_idempotent(tmp_path):
    fm_src = tmp_path / 'fm'
    fm_src.mkdir()
    for i, name in enumerate(FASHION_MNIST_FILES):
        with gzip.open(fm_src / f'{name}.gz', 'wb') as f:
            f.write(bytes([i]) * 10)
    lm = tmp_path / 'labelme'
    coco = lm / 'instance_segmentation/data_dataset_coco'
    sem = lm / 'semantic_segmentation/data_dataset_voc'
    (coco / 'JPEGImages').mkdir(parents=True)
    (sem / 'SegmentationClassPNG').mkdir(parents=True)
    (coco / 'annotations.json').write_text('{}')
    (coco / 'JPEGImages/a.jpg').write_bytes(b'jpg')
    (sem / 'SegmentationClassPNG/a.png').write_bytes(b'png')
    out = tmp_path / 'data'
    for _ in range(2):
        paths = prepare_data(out, fashion_mnist_src=fm_src, labelme_src=lm)
    assert (paths['fashion_mnist'] / FASHION_MNIST_FILES[2]).read_bytes() == bytes([2]) * 10
    assert (paths['voc_sample'] / 'JPEGImages/a.jpg').read_bytes() == b'jpg'
    assert require_data('voc_sample', out) == out / 'voc_sample'


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv('MMSPARSE_DATA', str(tmp_path))
    with pytest.raises(DataNotFoundError) as e:
        require_data('fashion_mnist')
    msg = str(e.value)
    assert 'MMSPARSE_DATA' in msg and 'make install' in msg and 'dataset-fashion-mnist' in msg
    with pytest.raises(DataNotFoundError, match='labelme-examples'):
        prepare_data(tmp_path / 'out', fashion_mnist_src=tmp_path / 'none')
