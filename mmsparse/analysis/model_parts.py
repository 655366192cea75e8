"""Which part of a built model to measure, with what inputs.

``backbone``: ``model.backbone(images)``. ``model``: the whole model as deployed — a classifier's
logits, a segmentor's or detector's prediction (``mode='predict'`` for latency; ``mode='tensor'``
for FLOPs, because tracing needs tensor outputs).
"""
import sys
from typing import Any, Callable, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ['PARTS', 'model_kind', 'make_images', 'part_module', 'part_callable']

PARTS = ('backbone', 'model')


# (kind, the host module that defines its base class, that class)
_HOST_BASES = (('detector', 'mmdet.models.detectors.base', 'BaseDetector'),
               ('segmentor', 'mmseg.models.segmentors.base', 'BaseSegmentor'),
               ('classifier', 'mmpretrain.models.classifiers.base', 'BaseClassifier'))


def model_kind(model: Union[nn.Module, type]) -> str:
    """'classifier', 'detector', 'segmentor' or 'other' for a model or a model class.

    Nothing is imported: a model of a host library's kind has that library's base-class module
    loaded already. (A host that is merely installed may not import at all: mmdet's models need
    mmcv's compiled ops, which mmcv-lite lacks, while mmpretrain still imports ``mmdet``.)
    """
    cls = model if isinstance(model, type) else type(model)
    for kind, module, base in _HOST_BASES:
        base_cls = getattr(sys.modules.get(module), base, None)
        if base_cls is not None and issubclass(cls, base_cls):
            return kind
    return 'other'


def make_images(batch_size: int, img_size: Tuple[int, int], channels: int = 3,
                device: str = 'cpu', seed: int = 0) -> Tensor:
    """Normalised-looking random images (B, C, H, W), the same for every call with one seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, channels, *img_size, generator=gen).to(device)


def _data_samples(model: nn.Module, kind: str, images: Tensor) -> list:
    h, w = images.shape[-2:]
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
                scale_factor=(1.0, 1.0), padding_size=[0, 0, 0, 0], flip=False)
    if kind == 'detector':
        from mmdet.structures import DetDataSample
        return [DetDataSample(metainfo=meta) for _ in range(images.shape[0])]
    from mmseg.structures import SegDataSample
    return [SegDataSample(metainfo=meta) for _ in range(images.shape[0])]


class _TensorForward(nn.Module):
    """``model(images, data_samples, mode='tensor')`` as a module of one tensor input."""

    def __init__(self, model: nn.Module, data_samples: Any = None) -> None:
        super().__init__()
        self.model = model
        self.data_samples = data_samples
        self.training = model.training

    def forward(self, images: Tensor) -> Any:
        return self.model(images, self.data_samples, mode='tensor')


def part_module(model: nn.Module, part: str, images: Tensor) -> nn.Module:
    """A module of one tensor input (the images) computing ``part`` of ``model``, for tracing."""
    if part not in PARTS:
        raise ValueError(f'part must be one of {PARTS}, got {part!r}')
    if part == 'backbone':
        if not hasattr(model, 'backbone'):
            raise ValueError(f'{type(model).__name__} has no backbone; use part "model"')
        return model.backbone
    kind = model_kind(model)
    samples = _data_samples(model, kind, images) if kind in ('detector', 'segmentor') else None
    return _TensorForward(model, samples)


def part_callable(model: nn.Module, part: str, images: Tensor) -> Callable[[], Any]:
    """A zero-argument callable running ``part`` of ``model`` on ``images`` as deployed."""
    kind = model_kind(model)
    if part == 'model' and kind in ('detector', 'segmentor'):
        samples = _data_samples(model, kind, images)
        return lambda: model(images, samples, mode='predict')
    module = part_module(model, part, images)
    return lambda: module(images)
