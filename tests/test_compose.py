"""Composition: DynamicViT token pruning on UVC / S²ViTE compact models
(``DynamicViTClassifier(compact_checkpoint=...)``, mmsparse/models/compose.py).

The compact models here are written in-process with the structures the two compactions produce
(UVC: per-head value dims, branches removed, skipped blocks absent; S²ViTE: fewer heads and
neurons, a skipped layer kept as the identity); the real compactions' files are checked in
tests/test_uvc.py and tests/test_svite.py."""
import json

import pytest
import torch

from mmsparse.errors import ConfigError
from tests.conftest import REPO, ok, run_tool, small_config

DEMO_ARCH = dict(embed_dims=96, num_layers=6, num_heads=3, feedforward_channels=384)
IMG = dict(img_size=28, patch_size=4, in_channels=1)
HEAD = dict(type='VisionTransformerClsHead', num_classes=10, in_channels=96)
UVC_CONFIG = REPO / 'configs/compose/dynamicvit-uvc-vit-tiny-p4_budget0.5_fashion-mnist.py'
# a UVC compact model of the demo ViT: 5 of 6 blocks, value dims pruned inside heads, one block
# without heads, one without MLP neurons (their branches removed)
UVC_LAYERS = [dict(v_dims=[20, 12], feedforward_channels=200),
              dict(v_dims=[32, 32, 8], feedforward_channels=100),
              dict(v_dims=[], feedforward_channels=150),
              dict(v_dims=[16], feedforward_channels=0),
              dict(v_dims=[32, 32, 32], feedforward_channels=384)]


def _scope():
    from mmengine.registry import init_default_scope
    import mmsparse  # noqa: F401
    init_default_scope('mmsparse')


def build(cfg: dict):
    _scope()
    from mmsparse.registry import MODELS
    return MODELS.build(cfg)


def uvc_compact_cfg() -> dict:
    return dict(type='mmpretrain.ImageClassifier', _scope_='mmpretrain', head=HEAD, backbone=dict(
        type='mmsparse.UVCCompactVisionTransformer', embed_dims=96, head_dims=32,
        layers=UVC_LAYERS, dense_num_layers=6, **IMG))


def s2vite_compact_cfg() -> dict:
    return dict(type='mmpretrain.ImageClassifier', _scope_='mmpretrain', head=HEAD, backbone=dict(
        type='mmsparse.CompactVisionTransformer', arch=DEMO_ARCH, num_heads=[2, 2, 1, 2, 2, 3],
        mlp_dims=[230, 230, 100, 230, 230, 230], skip_layers=[3], **IMG))


def write_compact(path, cfg: dict, seed: int = 0):
    """A compact checkpoint as the compactions write it; returns the (eval) model."""
    from mmsparse.models.layers.compact_vit import compact_structure
    torch.manual_seed(seed)
    model = build(cfg).eval()
    with torch.no_grad():  # weights of a trained scale, not the near-zero initial biases
        for p in model.parameters():
            p.normal_(0, 0.05)
    torch.save(dict(meta=dict(compact_structure=compact_structure(model.backbone)),
                    state_dict=model.state_dict()), path)
    return model


def composed_cfg(path, **backbone) -> dict:
    bb = dict(type='mmsparse.DynamicVisionTransformer', arch=DEMO_ARCH, pruning_loc=[2, 4],
              keep_rate=0.7, **IMG)
    bb.update(backbone)
    return dict(type='mmsparse.DynamicViTClassifier', _scope_='mmpretrain', backbone=bb,
                head=HEAD, compact_checkpoint=str(path))


@pytest.fixture(scope='module')
def compacts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('compose')
    uvc, s2 = tmp / 'uvc_compact.pth', tmp / 's2vite_compact.pth'
    return dict(tmp=tmp, uvc=uvc, s2vite=s2, uvc_model=write_compact(uvc, uvc_compact_cfg()),
                s2vite_model=write_compact(s2, s2vite_compact_cfg(), seed=1))


@pytest.mark.parametrize('kind', ['uvc', 's2vite'])
def test_composed_model_is_the_compact_model_at_keep_ratio_one(compacts, kind):
    model = build(composed_cfg(compacts[kind], keep_rate=1.0))
    model.init_weights()
    model.eval()
    compact = compacts[f'{kind}_model']
    assert model.backbone.layer_dims() == compact.backbone.layer_dims()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        # every token kept (in the order of the predictors' scores): the compact model's logits
        torch.testing.assert_close(model(x, mode='tensor'), compact(x, mode='tensor'),
                                   rtol=0, atol=2e-5)
    sd, own = torch.load(compacts[kind], weights_only=True)['state_dict'], model.state_dict()
    for k, v in sd.items():
        torch.testing.assert_close(own[k], v, rtol=0, atol=0, msg=k)
    new = sorted({k.split('.')[2] for k in own if k not in sd and k.startswith('backbone.')})
    assert new == ['0', '1']  # only backbone.predictors.0 / .1 are new
    assert all(k.startswith('backbone.predictors.') for k in own if k not in sd)


def test_composed_flops_are_the_compact_layers_at_the_kept_tokens_hand_computed(compacts):
    from mmsparse.analysis import count_flops
    model = build(composed_cfg(compacts['uvc']))
    model.init_weights()
    res = count_flops(model.backbone, torch.randn(1, 1, 28, 28))
    # 49 patches; keep int(49 * 0.7) = 34 before layer 2, int(49 * 0.49) = 24 before layer 4
    tokens = [50, 50, 35, 35, 25]
    C, hd = 96, 32
    for i, (n, layer) in enumerate(zip(tokens, UVC_LAYERS)):
        H, V, F = len(layer['v_dims']), sum(layer['v_dims']), layer['feedforward_channels']
        mod = f'layers.{i}'
        if H:
            assert res.by_module[f'{mod}.attn.qkv'] == n * C * (2 * H * hd + V)
            assert res.by_module[f'{mod}.attn.proj'] == n * V * C
            # the two attention matmuls of the fused path: q k^T and attn v
            assert res.by_module[f'{mod}.attn'] - n * C * (2 * H * hd + V) - n * V * C == \
                n * n * (H * hd + V)
        else:
            assert f'{mod}.attn' not in res.by_module
        if F:
            assert res.by_module[f'{mod}.ffn.layers.0.0'] == n * C * F
            assert res.by_module[f'{mod}.ffn.layers.1'] == n * F * C
        else:
            assert f'{mod}.ffn' not in res.by_module
    compact = count_flops(build(uvc_compact_cfg()).backbone, torch.randn(1, 1, 28, 28))
    assert res.flops < compact.flops


def test_composed_training_step_trains_the_predictors_against_the_compact_teacher(compacts):
    model = build(composed_cfg(compacts['uvc']))
    model.init_weights()
    model.train()
    from mmpretrain.structures import DataSample
    x = torch.randn(4, 1, 28, 28)
    samples = [DataSample().set_gt_label(i) for i in range(4)]
    losses = model.loss(x, samples)
    assert {'loss_cls', 'loss_ratio', 'loss_distill_cls', 'loss_distill_token'} <= set(losses)
    # the default teacher is the compact model as loaded: same structure, same weights
    teacher = model.teacher
    assert type(teacher.backbone).__name__ == 'CompactVisionTransformer'
    assert teacher.backbone.layer_dims() == model.backbone.layer_dims()
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, model.state_dict()[k], rtol=0, atol=0, msg=k)
    sum(v for k, v in losses.items() if k.startswith('loss')).backward()
    assert model.backbone.predictors[0].in_conv[1].weight.grad.abs().sum() > 0
    # a checkpoint of the composed model carries the teacher it distils from
    assert any(k.startswith('teacher.') for k in model.state_dict())


def test_a_dense_teacher_for_a_compact_student(compacts, tmp_path):
    dense = build(dict(type='mmpretrain.ImageClassifier', _scope_='mmpretrain', head=HEAD, backbone=dict(
        type='mmpretrain.VisionTransformer', arch=DEMO_ARCH, **IMG)))
    torch.save(dict(state_dict=dense.state_dict()), tmp_path / 'dense.pth')
    teacher = dict(type='mmpretrain.ImageClassifier', _scope_='mmpretrain', head=HEAD, backbone=dict(
        type='mmpretrain.VisionTransformer', arch=DEMO_ARCH, **IMG))
    model = build(composed_cfg(compacts['uvc']) | dict(
        teacher=teacher, teacher_checkpoint=str(tmp_path / 'dense.pth')))
    model.init_weights()
    x = torch.randn(2, 1, 28, 28)
    logits, _ = model.teacher_forward(x)
    with torch.no_grad():
        torch.testing.assert_close(logits, dense.eval()(x, mode='tensor'))
    assert model.teacher.backbone.num_layers == 6 and model.backbone.num_layers == 5


def _fails(cfg: dict, *needles: str) -> str:
    with pytest.raises(ConfigError) as e:
        build(cfg)
    msg = str(e.value)
    assert '\n' not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_bad_compositions_fail_at_build_naming_the_key(compacts, tmp_path):
    uvc = compacts['uvc']
    _fails(composed_cfg(tmp_path / 'missing.pth'), 'model.compact_checkpoint', 'not found')
    plain = tmp_path / 'plain.pth'
    torch.save(dict(state_dict=compacts['uvc_model'].state_dict()), plain)
    _fails(composed_cfg(plain), 'model.compact_checkpoint', "meta['compact_structure']",
           'tools/compact.py')
    # another model's width
    _fails(composed_cfg(uvc, arch=dict(DEMO_ARCH, embed_dims=48)), 'model.compact_checkpoint',
           'embed_dims=96', 'embed_dims=48')
    # a layer size the checkpoint also sets
    _fails(composed_cfg(uvc, mlp_dims=384), 'model.backbone.mlp_dims', 'compact_checkpoint')
    # another input size: the position embedding does not fit
    _fails(composed_cfg(uvc, img_size=32), 'model.compact_checkpoint', 'pos_embed',
           'do not fit')
    # the UVC compact model has 5 layers: layer 5 does not exist
    _fails(composed_cfg(uvc, pruning_loc=[2, 5]), 'model.backbone.pruning_loc', '[1, 4]')
    # keep ratios that leave no token
    _fails(composed_cfg(uvc, keep_ratios=[0.5, 0.01]), 'model.backbone.keep_ratios')
    # a dense teacher config without its weights cannot be a copy of the compact student
    dense_teacher = dict(type='mmpretrain.ImageClassifier', _scope_='mmpretrain', head=HEAD,
                         backbone=dict(type='mmpretrain.VisionTransformer', arch=DEMO_ARCH, **IMG))
    _fails(composed_cfg(uvc) | dict(teacher=dense_teacher), 'model.teacher',
           'model.teacher_checkpoint')
    # a dense checkpoint for the (default, compact) teacher does not fit it
    dense = build(dense_teacher)
    torch.save(dict(state_dict=dense.state_dict()), tmp_path / 'dense.pth')
    model = build(composed_cfg(uvc) | dict(teacher_checkpoint=str(tmp_path / 'dense.pth')))
    with pytest.raises(ConfigError, match=r'model.teacher_checkpoint .* do not fit the teacher '
                                          r'\(CompactVisionTransformer\)'):
        model.init_weights()


COMPOSE_EXTRA = """
model = dict(compact_checkpoint='{ckpt}')
"""


def test_compose_config_trains_tests_draws_and_exports(compacts, tmp_path, data_root):
    """The shipped composition config end to end on real images: train, test, the token
    picture and a verified ONNX export all read the composed model."""
    cfg = tmp_path / 'compose.py'
    cfg.write_text(small_config(UVC_CONFIG, COMPOSE_EXTRA.format(ckpt=compacts['uvc']),
                                epochs=1, validate=False))
    work = tmp_path / 'w'
    log = ok(run_tool('tools/train.py', cfg, '--work-dir', work))
    out = log.stdout + log.stderr
    assert 'weights loaded from' in out and 'new: backbone.predictors.' in out
    ckpt = work / 'epoch_1.pth'
    sd = torch.load(ckpt, weights_only=False)['state_dict']
    assert any(k.startswith('backbone.predictors.') for k in sd)
    assert sd['backbone.layers.0.attn.qkv.weight'].shape == (2 * 2 * 32 + 32, 96)
    metrics = tmp_path / 'metrics.json'
    ok(run_tool('tools/test.py', cfg, ckpt, '--work-dir', tmp_path / 't', '--out', metrics,
                '--out-item', 'metrics'))
    top1 = json.loads(metrics.read_text())['accuracy/top1']
    # the composed checkpoint carries its structure: it is tested without the compact file
    assert torch.load(ckpt, weights_only=False)['meta']['compact_structure']['v_dims'][1] == \
        [32, 32, 8]
    again = tmp_path / 'again.json'
    ok(run_tool('tools/test.py', cfg, ckpt, '--work-dir', tmp_path / 't2', '--out', again,
                '--out-item', 'metrics', '--cfg-options', f'model.compact_checkpoint={ckpt}'))
    assert json.loads(again.read_text())['accuracy/top1'] == top1

    import mmcv
    from mmengine.config import Config
    from mmpretrain.datasets.mnist import read_image_file
    root = Config.fromfile(str(cfg)).test_dataloader.dataset.data_root
    mmcv.imwrite(read_image_file(f'{root}/t10k-images-idx3-ubyte')[0].numpy(),
                 str(tmp_path / 'img.png'))
    proc = ok(run_tool('tools/visualization/visualize_tokens.py', cfg, ckpt,
                       tmp_path / 'img.png', '--out', tmp_path / 'tokens.png'))
    assert 'kept [34, 24] of 49 patches' in proc.stdout

    proc = ok(run_tool('tools/deployment/pytorch2onnx.py', cfg, ckpt, '--out',
                       tmp_path / 'compose.onnx', '--verify'))
    assert (tmp_path / 'compose.onnx').is_file()
    assert 'kept indices equal (2 sets x 2 inputs)' in proc.stdout
