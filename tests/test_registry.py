"""Registry scope, cross-library builds, and configs that inherit the model zoo."""
import pytest
import torch
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import DefaultScope

import mmsparse  # noqa: F401
from mmsparse import registry
from mmsparse.utils import build_model, load_config
from tests.conftest import DEMO_CONFIG, DET_CONFIG, SEG_CONFIG


def test_registries_are_children_of_mmengine_roots():
    import mmengine.registry as root
    for name in registry.__all__:
        child = getattr(registry, name)
        assert child.scope == 'mmsparse'
        assert child.parent is getattr(root, name), name
        assert root.MODELS.children.get('mmsparse') is registry.MODELS


def test_build_host_library_modules_from_mmsparse_scope():
    import mmpretrain.models  # noqa: F401
    with DefaultScope.overwrite_default_scope('mmsparse'):
        vit = ROOT_MODELS.build(dict(type='mmpretrain.VisionTransformer', arch='deit-tiny',
                                     img_size=32, patch_size=8))
        # a dict carrying _scope_ builds its children in that library's scope
        clf = ROOT_MODELS.build(dict(
            type='ImageClassifier', _scope_='mmpretrain',
            backbone=dict(type='VisionTransformer', arch='deit-tiny', img_size=32, patch_size=8),
            head=dict(type='VisionTransformerClsHead', num_classes=3, in_channels=192)))
    assert type(vit).__module__.startswith('mmpretrain')
    out = clf(torch.randn(2, 3, 32, 32), mode='tensor')
    assert out.shape == (2, 3)


def test_unknown_type_in_mmsparse_scope_names_registry():
    with DefaultScope.overwrite_default_scope('mmsparse'):
        with pytest.raises(KeyError, match='mmsparse'):
            registry.MODELS.build(dict(type='NoSuchModel'))


@pytest.mark.parametrize('config,kind,out', [
    (DEMO_CONFIG, 'classifier', 'ImageClassifier'),
    (DET_CONFIG, 'detector', 'MaskRCNN'),
    (SEG_CONFIG, 'segmentor', 'EncoderDecoder'),
])
def test_mmsparse_configs_inheriting_model_zoo_build(config, kind, out):
    from mmsparse.analysis import model_kind
    cfg = load_config(str(config))
    assert cfg.default_scope == 'mmsparse'
    model = build_model(cfg)
    assert type(model).__name__ == out
    assert model_kind(model) == kind


@pytest.mark.parametrize('zoo', ['mmpretrain::deit/deit-small_4xb256_in1k.py',
                                 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
                                 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_'
                                 '8xb2-160k_ade20k-512x512.py'])
def test_model_zoo_configs_build(tmp_path, zoo):
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text(f"_base_ = ['{zoo}']\ncustom_imports = dict(imports=['mmsparse'])\n"
                        "default_scope = 'mmsparse'\n"
                        "model = dict(backbone=dict(init_cfg=None))\n")
    model = build_model(load_config(str(cfg_file)))
    assert sum(p.numel() for p in model.parameters()) > 1e6
