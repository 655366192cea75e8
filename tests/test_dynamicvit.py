"""DynamicViT models, hooks, configs and tools: shapes and keep counts, state_dict compatibility,
teacher, build-time errors, training on real Fashion-MNIST with save/resume, the converter of
original checkpoints, the token pictures."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from mmsparse.checkpoint import load_checkpoint_file
from mmsparse.errors import ConfigError
from tests.conftest import DEMO_CONFIG, REPO, ok, run_tool, small_config

DV_CONFIG = REPO / 'configs/dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py'
# a small ViT with DeiT's patch grid (196 patches) and depth, cheap to run
SMALL_ARCH = dict(embed_dims=48, num_layers=12, num_heads=3, feedforward_channels=96)


def _scope():
    from mmengine.registry import init_default_scope
    import mmsparse  # noqa: F401
    init_default_scope('mmsparse')


def build(cfg: dict):
    _scope()
    from mmsparse.registry import MODELS
    return MODELS.build(cfg)


def dyn_backbone(**kw):
    cfg = dict(type='mmsparse.DynamicVisionTransformer', arch=SMALL_ARCH, img_size=224,
               patch_size=16, drop_path_rate=0.0)
    cfg.update(kw)
    return build(cfg)


def classifier_cfg(backbone=None, **kw):
    bb = dict(type='mmsparse.DynamicVisionTransformer', arch=SMALL_ARCH, img_size=224,
              patch_size=16)
    bb.update(backbone or {})
    cfg = dict(type='mmsparse.DynamicViTClassifier', _scope_='mmpretrain', backbone=bb,
               head=dict(type='VisionTransformerClsHead', num_classes=10, in_channels=48))
    cfg.update(kw)
    return cfg


# ---- backbone ------------------------------------------------------------------------------
@pytest.mark.parametrize('arch', ['deit-tiny', 'deit-small', 'deit-base'])
def test_state_dict_is_vision_transformer_plus_predictors(arch):
    _scope()
    from mmpretrain.models import VisionTransformer
    dense = VisionTransformer(arch=arch, img_size=224, patch_size=16)
    dyn = dyn_backbone(arch=arch)
    extra = set(dyn.state_dict()) - set(dense.state_dict())
    assert set(dense.state_dict()) <= set(dyn.state_dict())
    assert extra and all(k.startswith('predictors.') for k in extra)
    assert {k.split('.')[1] for k in extra} == {'0', '1', '2'}
    # a dense checkpoint loads, only the predictors are missing
    res = dyn.load_state_dict(dense.state_dict(), strict=False)
    assert not res.unexpected_keys and set(res.missing_keys) == extra
    assert dyn.eval_keep_counts == [137, 96, 67]


def test_eval_keep_counts_order_and_shapes():
    torch.manual_seed(0)
    bb = dyn_backbone(out_type='raw').eval()
    seen = []
    for layer in bb.layers:
        layer.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        (out, ), aux = bb.forward_with_aux(x)
    # 197 tokens in blocks 0-2, 1 + 137 in 3-5, 1 + 96 in 6-8, 1 + 67 in 9-11
    assert seen == [197] * 3 + [138] * 3 + [97] * 3 + [68] * 3
    assert out.shape == (2, 68, 48) and aux['decisions'] == []
    assert [k.shape for k in aux['kept_indices']] == [(2, 137), (2, 96), (2, 67)]
    # kept positions are distinct patches, and each stage keeps a subset of the previous one
    for a, b in zip(aux['kept_indices'], aux['kept_indices'][1:]):
        for i in range(2):
            assert len(set(b[i].tolist())) == b.shape[1]
            assert set(b[i].tolist()) <= set(a[i].tolist())
    # the first stage keeps the predictor's top scores, best first
    with torch.no_grad():
        h, _ = bb.patch_embed(x)
        tokens = torch.cat([bb.cls_token.expand(2, -1, -1), h], 1) + bb.pos_embed
        for layer in bb.layers[:3]:
            tokens = layer(tokens)
        scores = bb.predictors[0].keep_score(tokens[:, 1:])
    # (compared by value: the untrained predictor's scores have ties)
    torch.testing.assert_close(scores.gather(1, aux['kept_indices'][0]),
                               scores.sort(1, descending=True).values[:, :137], rtol=0, atol=0)
    # deterministic
    with torch.no_grad():
        torch.testing.assert_close(bb(x)[0], out)


def test_predictor_keep_score_orders_as_keep_log_prob():
    _scope()
    from mmsparse.models.dynamicvit import DynamicViTPredictor
    torch.manual_seed(0)
    pred = DynamicViTPredictor(48)
    with torch.no_grad():  # away from the near-uniform init, biases included
        for p in pred.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 50, 48)
    with torch.no_grad():
        log_p = pred(x)
        score = pred.keep_score(x)
    assert score.shape == (2, 50)
    torch.testing.assert_close(score, log_p[..., 0] - log_p[..., 1], rtol=0, atol=1e-5)
    torch.testing.assert_close(F.logsigmoid(score), log_p[..., 0], rtol=0, atol=1e-5)
    assert torch.equal(score.argsort(1), log_p[..., 0].argsort(1))


def test_train_outputs_and_monotone_decisions():
    torch.manual_seed(0)
    bb = dyn_backbone().train()
    (cls, ), aux = bb.forward_with_aux(torch.randn(2, 3, 224, 224))
    assert cls.shape == (2, 48) and aux['tokens'].shape == (2, 197, 48)
    d = aux['decisions']
    assert [x.shape for x in d] == [(2, 196)] * 3
    for a, b in zip(d, d[1:]):
        assert ((b.detach() > 0.5) <= (a.detach() > 0.5)).all()  # a dropped token stays dropped
    # the predictors get gradients through the masked attention
    (cls * torch.randn_like(cls)).sum().backward()  # (a plain sum of a LayerNorm output is 0)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bb.predictors.parameters())
    assert bb.cls_token.grad is None and bb.pos_embed.grad is None  # frozen


def test_keep_rate_one_equals_dense_model():
    """With every token kept, the eval path (tokens reordered by score) is the dense ViT."""
    _scope()
    from mmpretrain.models import VisionTransformer
    torch.manual_seed(0)
    dense = VisionTransformer(arch=SMALL_ARCH, img_size=224, patch_size=16)
    dense.eval()  # (mmpretrain's backbones return None from eval())
    dyn = dyn_backbone(keep_rate=1.0).eval()
    dyn.load_state_dict(dense.state_dict(), strict=False)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(dyn(x)[0], dense(x)[0], atol=1e-5, rtol=1e-5)


def test_masked_training_block_equals_gathered_block():
    """Kept tokens of a block with a policy equal the block run on the kept tokens alone."""
    torch.manual_seed(0)
    bb = dyn_backbone().eval()
    layer = bb.layers[4]
    x = torch.randn(2, 197, 48)
    policy = torch.ones(2, 197)
    policy[0, 1:120] = 0
    policy[1, 50:] = 0
    with torch.no_grad():
        masked = layer(x, policy)
        for b in range(2):
            keep = policy[b].nonzero().squeeze(1)
            torch.testing.assert_close(masked[b, keep], layer(x[b:b + 1, keep])[0],
                                       atol=1e-5, rtol=1e-5)


def test_random_selector_has_no_predictors():
    bb = dyn_backbone(selector='random').eval()
    assert bb.predictors is None
    assert not any(k.startswith('predictors') for k in bb.state_dict())
    with torch.no_grad():
        (out, ), aux = bb.forward_with_aux(torch.randn(1, 3, 224, 224))
    assert [k.shape[1] for k in aux['kept_indices']] == [137, 96, 67]


def test_policy_softmax_is_the_originals_by_default():
    """Default policy_max_gap=None: every block's masked softmax is the original's formula;
    a number selects the capped one. Only training (the policy path) differs."""
    from mmsparse.ops.tokens import softmax_with_policy
    torch.manual_seed(0)
    bb = dyn_backbone()
    assert all(layer.attn.policy_max_gap is None for layer in bb.layers)
    capped = dyn_backbone(policy_max_gap=0.0)
    assert all(layer.attn.policy_max_gap == 0.0 for layer in capped.layers)
    capped.load_state_dict(bb.state_dict())
    layer, x = bb.layers[4], torch.randn(2, 197, 48)
    policy = torch.ones(2, 197)
    policy[:, 1::3] = 0
    attn = layer.attn.eval()
    with torch.no_grad():
        h = layer.ln1(x)
        q, k, (v, ) = attn._split_qkv(attn.qkv(h), 2, 197)
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        for model in (bb, capped):  # each block's attention weights are its formula's
            a = model.layers[4].attn.eval()
            probs = softmax_with_policy(logits, policy, max_gap=a.policy_max_gap)
            by_hand = a.proj((probs @ v).transpose(1, 2).reshape(2, 197, 48))
            torch.testing.assert_close(a(h, policy), by_hand, atol=1e-6, rtol=1e-5)
        orig = softmax_with_policy(logits, policy, max_gap=None)
        ours = softmax_with_policy(logits, policy, max_gap=0.0)
        assert not torch.equal(orig, ours)  # the eps terms differ (another shift)
        torch.testing.assert_close(orig, ours, atol=1e-5, rtol=0)
        # inference (no policy) is the same model
        img = torch.randn(1, 3, 224, 224)
        torch.testing.assert_close(bb.eval()(img)[0], capped.eval()(img)[0], rtol=0, atol=0)


@pytest.mark.parametrize('kw, match', [
    (dict(pruning_loc=[6, 3]),
     r'pruning_loc must be .*strictly increasing.*\[1, 11\], got \[6, 3\]'),
    (dict(pruning_loc=[0, 3]), r'pruning_loc .* got \[0, 3\]'),
    (dict(pruning_loc=[3, 12]), r'pruning_loc .* got \[3, 12\]'),
    (dict(pruning_loc=[]), r'pruning_loc must be a non-empty'),
    (dict(keep_rate=0.0), r'keep_rate must be in \(0, 1\], got 0.0'),
    (dict(keep_rate=1.5), r'keep_rate must be in \(0, 1\], got 1.5'),
    (dict(keep_rate=0.1, img_size=32), r'keep_rate=0.1 .* every stage must keep >= 1'),
    (dict(keep_ratios=[0.5, 0.7, 0.2]), r'keep_ratios must be 3 non-increasing'),
    (dict(out_type='featmap'), r"out_type must be one of .*got 'featmap'"),
    (dict(selector='norm'), r"selector must be one of"),
    (dict(policy_max_gap=-1.0), r'model\.backbone\.policy_max_gap must be a number >= 0'),
])
def test_bad_backbone_config_fails_at_build(kw, match):
    with pytest.raises(ConfigError, match=match):
        dyn_backbone(**kw)


# ---- classifier and teacher ------------------------------------------------------------------
def _samples(n):
    from mmpretrain.structures import DataSample
    return [DataSample().set_gt_label(i % 10) for i in range(n)]


def test_classifier_losses_teacher_and_state_dict():
    torch.manual_seed(0)
    model = build(classifier_cfg())
    teacher = model.teacher
    assert teacher is not None and not teacher.training
    # the teacher is not a parameter of the model and does not follow train()
    ids = {id(p) for p in model.parameters()}
    assert not any(id(p) in ids for p in teacher.parameters())
    model.train()
    assert not teacher.training
    x = torch.randn(2, 3, 224, 224)
    losses = model.loss(x, _samples(2))
    assert {'loss_cls', 'loss_ratio', 'loss_distill_cls', 'loss_distill_token',
            'keep_ratio_0', 'keep_ratio_2'} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    # the teacher is the student's dense weights at the first loss; it is saved as teacher.*
    torch.testing.assert_close(teacher.backbone.layers[0].attn.qkv.weight,
                               model.backbone.layers[0].attn.qkv.weight)
    sd = model.state_dict()
    assert any(k.startswith('teacher.backbone.') for k in sd)
    fresh = build(classifier_cfg())
    fresh.load_state_dict(sd, strict=True)
    assert fresh._teacher_ready
    torch.testing.assert_close(fresh.teacher.head.layers.head.weight,
                               teacher.head.layers.head.weight)
    # .to() moves the teacher; predict / tensor modes are ImageClassifier's
    model.double()
    assert next(model.teacher.parameters()).dtype == torch.float64
    model.float().eval()
    assert model(x, mode='tensor').shape == (2, 10)
    assert model(x, _samples(2), mode='predict')[0].pred_label.shape == (1, )


def test_teacher_arch_mismatch_fails_at_build():
    teacher = dict(type='ImageClassifier', backbone=dict(type='VisionTransformer',
                   arch='deit-tiny', img_size=224, patch_size=16),
                   head=dict(type='VisionTransformerClsHead', num_classes=10, in_channels=192))
    with pytest.raises(ConfigError, match=r'teacher: backbone arch .* does not match'):
        build(classifier_cfg(teacher=teacher))
    with pytest.raises(ConfigError, match='ratio_weight must be a number >= 0'):
        build(classifier_cfg(ratio_weight=-1))


def test_flops_fewer_tokens():
    _scope()
    from mmsparse.analysis import count_flops
    from mmpretrain.models import VisionTransformer
    x = torch.randn(1, 3, 224, 224)
    dense = count_flops(VisionTransformer(arch=SMALL_ARCH, img_size=224, patch_size=16), (x, ))
    dyn = count_flops(dyn_backbone(), (x, ))
    # 12 blocks: 3 x 197 + 3 x 138 + 3 x 97 + 3 x 68 tokens vs 12 x 197 (+ small predictors)
    assert 0.55 < dyn.flops / dense.flops < 0.72


# ---- the original's checkpoints -------------------------------------------------------------
def _original_state_dict(depth=6, dim=96, heads=3, classes=10, patch=4, in_ch=1, grid=7,
                         num_pred=3, seed=0):
    """Random weights with the key names and shapes of the original VisionTransformerDiffPruning."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.2):
        return torch.randn(*shape, generator=g) * std

    sd = {'cls_token': r(1, 1, dim), 'pos_embed': r(1, 1 + grid * grid, dim),
          'patch_embed.proj.weight': r(dim, in_ch, patch, patch), 'patch_embed.proj.bias': r(dim)}
    for i in range(depth):
        p = f'blocks.{i}.'
        sd.update({p + 'norm1.weight': 1 + r(dim), p + 'norm1.bias': r(dim),
                   p + 'attn.qkv.weight': r(3 * dim, dim), p + 'attn.qkv.bias': r(3 * dim),
                   p + 'attn.proj.weight': r(dim, dim), p + 'attn.proj.bias': r(dim),
                   p + 'norm2.weight': 1 + r(dim), p + 'norm2.bias': r(dim),
                   p + 'mlp.fc1.weight': r(4 * dim, dim), p + 'mlp.fc1.bias': r(4 * dim),
                   p + 'mlp.fc2.weight': r(dim, 4 * dim), p + 'mlp.fc2.bias': r(dim)})
    for k in range(num_pred):
        p = f'score_predictor.{k}.'
        sd.update({p + 'in_conv.0.weight': 1 + r(dim), p + 'in_conv.0.bias': r(dim),
                   p + 'in_conv.1.weight': r(dim, dim), p + 'in_conv.1.bias': r(dim),
                   p + 'out_conv.0.weight': r(dim // 2, dim), p + 'out_conv.0.bias': r(dim // 2),
                   p + 'out_conv.2.weight': r(dim // 4, dim // 2),
                   p + 'out_conv.2.bias': r(dim // 4),
                   p + 'out_conv.4.weight': r(2, dim // 4), p + 'out_conv.4.bias': r(2)})
    sd.update({'norm.weight': 1 + r(dim), 'norm.bias': r(dim), 'head.weight': r(classes, dim),
               'head.bias': r(classes)})
    return sd


def _original_eval_forward(sd, x, pruning_loc, ratios, heads, patch):
    """The original DynamicViT's eval forward, in plain torch ops on its own key names
    (written from the description of models/dyvit.py in METHODS.md, section 3.5)."""
    def ln(t, name, eps=1e-6):
        return F.layer_norm(t, t.shape[-1:], sd[name + '.weight'], sd[name + '.bias'], eps)

    def lin(t, name):
        return F.linear(t, sd[name + '.weight'], sd[name + '.bias'])

    def index_select(t, idx):  # batch_index_select: flat gather with per-sample offsets
        B, N = t.shape[:2]
        flat = (idx + torch.arange(B).view(B, 1) * N).reshape(-1)
        return t.reshape(B * N, -1)[flat].reshape(B, idx.shape[1], -1)

    x = F.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=patch)
    x = x.flatten(2).transpose(1, 2)
    B, init_n, C = x.shape
    x = torch.cat([sd['cls_token'].expand(B, -1, -1), x], 1) + sd['pos_embed']
    prev = torch.ones(B, init_n, 1)
    stage = 0
    depth = len({k.split('.')[1] for k in sd if k.startswith('blocks.')})
    for i in range(depth):
        if i in pruning_loc:
            p = f'score_predictor.{stage}.'
            h = F.gelu(lin(ln(x[:, 1:], p + 'in_conv.0', eps=1e-5), p + 'in_conv.1'))
            local, glob = h[..., :C // 2], h[..., C // 2:]
            glob = (glob * prev).sum(1, keepdim=True) / prev.sum(1, keepdim=True)
            h = torch.cat([local, glob.expand(-1, h.shape[1], -1)], -1)
            h = F.gelu(lin(F.gelu(lin(h, p + 'out_conv.0')), p + 'out_conv.2'))
            score = lin(h, p + 'out_conv.4').log_softmax(-1)[:, :, 0]
            keep = torch.argsort(score, dim=1, descending=True)[:, :int(init_n * ratios[stage])]
            now = torch.cat([torch.zeros(B, 1, dtype=torch.long), keep + 1], 1)
            x = index_select(x, now)
            prev = index_select(prev, keep)
            stage += 1
        p = f'blocks.{i}.'
        h = ln(x, p + 'norm1')
        T = h.shape[1]
        qkv = lin(h, p + 'attn.qkv').reshape(B, T, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5).softmax(-1)
        x = x + lin((attn @ v).transpose(1, 2).reshape(B, T, C), p + 'attn.proj')
        x = x + lin(F.gelu(lin(ln(x, p + 'norm2'), p + 'mlp.fc1')), p + 'mlp.fc2')
    return lin(ln(x, 'norm')[:, 0], 'head')


def test_converter_round_trip(tmp_path):
    sd = _original_state_dict()
    src, dst = tmp_path / 'dyvit_original.pth', tmp_path / 'converted.pth'
    import argparse
    torch.save({'model': sd, 'epoch': 29, 'args': argparse.Namespace(base_rate=0.7)}, src)
    proc = run_tool('tools/model_converters/dynamicvit_to_mmsparse.py', src, dst, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'depth=6, 3 predictors, 10 classes' in proc.stdout
    converted = load_checkpoint_file(str(dst), map_location='cpu')['state_dict']
    assert len(converted) == len(sd)

    # the mmsparse model of the Fashion-MNIST config (same arch) with the converted weights
    _scope()
    from mmengine.config import Config
    from mmsparse.registry import MODELS
    cfg = Config.fromfile(str(DV_CONFIG))
    cfg.model.distill = False
    cfg.model.backbone.pruning_loc = [1, 3, 5]  # the original checkpoint has 3 predictors
    model = MODELS.build(cfg.model).eval()
    missing = model.load_state_dict(converted, strict=False)
    assert not missing.missing_keys and not missing.unexpected_keys
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ours = model(x, mode='tensor')
        ref = _original_eval_forward(sd, x, [1, 3, 5], [0.7, 0.49, 0.343], heads=3, patch=4)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    # a different checkpoint layout fails with one line
    torch.save({'model': {'fc.weight': torch.zeros(2, 2)}}, tmp_path / 'other.pth')
    proc = run_tool('tools/model_converters/dynamicvit_to_mmsparse.py', tmp_path / 'other.pth',
                    tmp_path / 'x.pth', timeout=120)
    assert proc.returncode == 2 and 'no mmsparse counterpart' in proc.stderr


# ---- training on real data, save / resume, test, pictures ------------------------------------
DV_EXTRA = """
load_from = '{dense}'
custom_hooks = [dict(type='mmsparse.DynamicViTOptimHook', backbone_lr_scale=0.1,
                     freeze_backbone=1, by_epoch=True),
                dict(type='mmsparse.RNGStateHook')]
"""


@pytest.fixture(scope='module')
def small_dv(tmp_path_factory, data_root):
    """A 2-epoch, 2-iteration-per-epoch DynamicViT run from a (randomly initialised) dense
    demo checkpoint, with the backbone frozen in epoch 1."""
    tmp = tmp_path_factory.mktemp('dv')
    _scope()
    from mmengine.config import Config
    from mmsparse.registry import MODELS
    torch.manual_seed(0)
    dense = MODELS.build(Config.fromfile(str(DEMO_CONFIG)).model)
    dense.init_weights()
    torch.save({'state_dict': dense.state_dict(), 'meta': {}}, tmp / 'dense.pth')
    path = tmp / 'small_dv.py'
    path.write_text(small_config(DV_CONFIG, DV_EXTRA.format(dense=tmp / 'dense.pth'),
                                 train_images=64, validate=False))
    return path, tmp


def test_train_freeze_save_resume_test_visualize(small_dv, tmp_path):
    cfg, tmp = small_dv
    full, cut = tmp_path / 'full', tmp_path / 'cut'
    out = ok(run_tool('tools/train.py', cfg, '--work-dir', full)).stdout
    for name in ('loss_cls', 'loss_ratio', 'loss_distill_cls', 'loss_distill_token',
                 'keep_ratio_0', 'backbone_lr'):
        assert name + ':' in out
    dense = load_checkpoint_file(str(tmp / 'dense.pth'))['state_dict']
    e1 = load_checkpoint_file(str(full / 'epoch_1.pth'))['state_dict']
    e2 = load_checkpoint_file(str(full / 'epoch_2.pth'))['state_dict']
    # epoch 1: backbone and head frozen (lr 0), predictors trained; epoch 2: the backbone
    # learns, cls_token / pos_embed never do; the teacher is the loaded dense model
    for k, v in dense.items():
        torch.testing.assert_close(e1[k], v, rtol=0, atol=0, msg=k)
        torch.testing.assert_close(e2['teacher.' + k], v, rtol=0, atol=0, msg=k)
    assert not torch.equal(e1['backbone.predictors.0.in_conv.1.weight'],
                           e2['backbone.predictors.0.in_conv.1.weight'])
    assert not torch.equal(e2['backbone.layers.0.attn.qkv.weight'],
                           dense['backbone.layers.0.attn.qkv.weight'])
    for k in ('backbone.cls_token', 'backbone.pos_embed'):
        torch.testing.assert_close(e2[k], dense[k], rtol=0, atol=0)

    # stopped after epoch 1, then resumed: the same weights as the uninterrupted run
    ok(run_tool('tools/train.py', cfg, '--work-dir', cut, '--cfg-options',
                'train_cfg.max_epochs=1'))
    proc = ok(run_tool('tools/train.py', cfg, '--work-dir', cut, '--resume'))
    assert 'resumed epoch: 1' in proc.stdout + proc.stderr
    resumed = load_checkpoint_file(str(cut / 'epoch_2.pth'))['state_dict']
    assert resumed.keys() == e2.keys()
    for k in e2:
        torch.testing.assert_close(resumed[k], e2[k], rtol=0, atol=1e-6, msg=k)

    # test.py on the checkpoint
    metrics = tmp_path / 'metrics.json'
    ok(run_tool('tools/test.py', cfg, full / 'epoch_2.pth', '--work-dir', tmp_path / 't',
                '--out', metrics, '--out-item', 'metrics'))
    assert 0.0 <= json.loads(metrics.read_text())['accuracy/top1'] <= 100.0

    # the token picture of a real test image
    import mmcv
    from mmengine.config import Config
    from mmpretrain.datasets.mnist import read_image_file
    root = Config.fromfile(str(cfg)).test_dataloader.dataset.data_root
    image = read_image_file(f'{root}/t10k-images-idx3-ubyte')[0].numpy()
    mmcv.imwrite(image, str(tmp_path / 'img.png'))
    picture = tmp_path / 'tokens.png'
    proc = ok(run_tool('tools/visualization/visualize_tokens.py', cfg, full / 'epoch_2.pth',
                       tmp_path / 'img.png', '--out', picture))
    assert 'kept [34, 24] of 49 patches' in proc.stdout
    drawn = mmcv.imread(str(picture))
    assert drawn.shape == (28 * 8, 3 * 28 * 8, 3)  # input + 2 stages, upscaled x8


DV_EMA = """
load_from = '{dense}'
# (the Fashion-MNIST config has no validation: _delete_ replaces its None)
val_dataloader = dict(
    _delete_=True, batch_size=64, num_workers=0,
    dataset=dict(type='FashionMNIST', data_root='{{{{$MMSPARSE_DATA:data}}}}/fashion_mnist',
                 split='test', test_mode=True, download=False, indices=64,
                 pipeline=[dict(type='PackInputs')], _scope_='mmpretrain'),
    sampler=dict(type='DefaultSampler', shuffle=False))
val_cfg = dict(_delete_=True)
val_evaluator = dict(_delete_=True, type='Accuracy', topk=(1, ), _scope_='mmpretrain')
custom_hooks = [dict(type='mmsparse.DynamicViTOptimHook', backbone_lr_scale=0.1,
                     freeze_backbone=0, by_epoch=True),
                dict(type='EMAHook', momentum=0.5, priority='ABOVE_NORMAL', evaluate_on_ema=True,
                     evaluate_on_origin=True, _scope_='mmpretrain')]
"""


def test_validation_reports_the_ema_and_the_raw_model(small_dv, tmp_path):
    """As the ImageNet configs' EMAHook: every validation runs on the EMA weights (the usual
    metric names) and on the raw ones (suffix _origin); the checkpoint holds both."""
    _, tmp = small_dv
    cfg = tmp_path / 'ema.py'
    cfg.write_text(small_config(DV_CONFIG, DV_EMA.format(dense=tmp / 'dense.pth'),
                                train_images=64, epochs=1, validate=False))
    work = tmp_path / 'w'
    ok(run_tool('tools/train.py', cfg, '--work-dir', work))
    scalars = [json.loads(line) for line in next(work.glob('*/vis_data/scalars.json')).open()]
    val = [r for r in scalars if 'accuracy/top1' in r]
    assert len(val) == 1 and 0 <= val[0]['accuracy/top1'] <= 100
    assert 0 <= val[0]['accuracy/top1_origin'] <= 100
    ckpt = torch.load(work / 'epoch_1.pth', map_location='cpu', weights_only=False)
    key = 'backbone.predictors.0.out_conv.4.weight'
    ema, raw = ckpt['state_dict'][key], ckpt['ema_state_dict']['module.' + key]
    assert not torch.equal(ema, raw)  # EMA weights in state_dict, raw ones in ema_state_dict


# ---- ImageNet configs ------------------------------------------------------------------------
@pytest.mark.parametrize('arch, ratio_weight, drop_path', [
    ('tiny', 2.0, 0.0), ('small', 2.0, 0.0), ('base', 5.0, 0.2)])
def test_imagenet_configs_hold_the_original_recipe(arch, ratio_weight, drop_path):
    from mmengine.config import Config
    cfg = Config.fromfile(str(REPO / f'configs/dynamicvit/dynamicvit-deit-{arch}_8xb128_in1k.py'))
    m = cfg.model
    assert m.type == 'mmsparse.DynamicViTClassifier' and m.ratio_weight == ratio_weight
    assert m.backbone.arch == f'deit-{arch}' and m.backbone.pruning_loc == [3, 6, 9]
    assert m.backbone.keep_rate == 0.7 and m.backbone.drop_path_rate == drop_path
    assert cfg.load_from.startswith('https://download.openmmlab.com/') and f'deit-{arch}' in \
        cfg.load_from
    assert cfg.train_cfg.max_epochs == 30 and cfg.optim_wrapper.optimizer.lr == 1e-3
    assert cfg.train_dataloader.batch_size == 128 and cfg.auto_scale_lr.base_batch_size == 1024
    hook = cfg.custom_hooks[0]
    assert hook.type == 'mmsparse.DynamicViTOptimHook' and hook.backbone_lr_scale == 0.01
    assert hook.freeze_backbone == 5 and hook.by_epoch
    if arch == 'tiny':  # builds, with the keep counts of 224x224
        model = build(dict(cfg.model, distill=False))
        assert model.backbone.eval_keep_counts == [137, 96, 67]


@pytest.mark.parametrize('kwargs,match', [
    (dict(backbone_lr_scale=-1), r'custom_hooks\[DynamicViTOptimHook\]\.backbone_lr_scale must '
                                 r'be a number >= 0, got -1'),
    (dict(freeze_backbone=1.5), r'\.freeze_backbone must be an integer >= 0, got 1\.5'),
    (dict(by_epoch=1), r'\.by_epoch must be True or False, got 1'),
    (dict(trainable_keys='predictor'), r'\.trainable_keys must be a non-empty list'),
])
def test_optim_hook_bad_arguments_name_the_full_key(kwargs, match):
    _scope()
    from mmsparse.engine import DynamicViTOptimHook
    with pytest.raises(ConfigError, match=match):
        DynamicViTOptimHook(**kwargs)
