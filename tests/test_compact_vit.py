"""The one compact ViT (S²ViTE's and UVC's compaction target): layouts, logits, FLOPs, configs."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmsparse.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
C, HD = 32, 16  # embed dims, dense head dims (2 heads)
TINY = dict(arch=dict(embed_dims=C, num_layers=4, num_heads=2, feedforward_channels=64),
            img_size=8, patch_size=4, in_channels=1)
UVC_LAYERS = [dict(v_dims=[12, 5], feedforward_channels=20),  # two heads, different value dims
              dict(v_dims=[], feedforward_channels=7),  # attention branch removed
              dict(v_dims=[16], feedforward_channels=0),  # MLP branch removed
              dict(v_dims=[9, 9], feedforward_channels=64)]  # equal value dims: one SDPA call
UVC_ARGS = dict(embed_dims=C, head_dims=HD, layers=UVC_LAYERS, img_size=8, patch_size=4,
                in_channels=1, dense_num_layers=6)


def images(n=3, seed=0):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def randomize(model, seed=1):
    """Non-trivial weights in every parameter (biases included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    model.eval()  # (a backbone's train() returns None)
    return model


# ---- an independent reference: a plain-torch ViT read off the state dict --------------------
def reference_forward(sd, x, heads, eps=1e-6):
    """The class-token output of a ViT state dict with mmpretrain keys.

    Args:
        sd: the state dict (``layers.N.*``; a missing ``ln1`` / ``ln2`` = removed branch, a
            missing layer = skipped).
        heads: per layer index, ``(head_dims, v_dims)`` of its attention.
    """
    ln = lambda t, p: F.layer_norm(t, (C, ), sd[p + 'weight'], sd[p + 'bias'], eps)  # noqa
    w = sd['patch_embed.projection.weight']
    t = F.conv2d(x, w, sd['patch_embed.projection.bias'], stride=w.shape[-1])
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd['cls_token'].expand(len(x), -1, -1), t], 1) + sd['pos_embed']
    B, N, _ = t.shape
    for i, (d, v_dims) in heads.items():
        p = f'layers.{i}.'
        if p + 'ln1.weight' in sd:
            h = len(v_dims)
            if h == 0:  # no head: the branch is its bias
                t = t + sd[p + 'attn.proj.bias']
            else:
                qkv = F.linear(ln(t, p + 'ln1.'), sd[p + 'attn.qkv.weight'],
                               sd[p + 'attn.qkv.bias'])
                q, k = qkv[..., :h * d], qkv[..., h * d:2 * h * d]
                v, outs, col = qkv[..., 2 * h * d:], [], 0
                for j, dv in enumerate(v_dims):
                    qj, kj = q[..., j * d:(j + 1) * d], k[..., j * d:(j + 1) * d]
                    a = torch.softmax(qj @ kj.transpose(1, 2) / math.sqrt(d), -1)
                    outs.append(a @ v[..., col:col + dv])
                    col += dv
                t = t + F.linear(torch.cat(outs, -1), sd[p + 'attn.proj.weight'],
                                 sd[p + 'attn.proj.bias'])
        if p + 'ln2.weight' in sd:
            hid = F.gelu(F.linear(ln(t, p + 'ln2.'), sd[p + 'ffn.layers.0.0.weight'],
                                  sd[p + 'ffn.layers.0.0.bias']))
            t = t + F.linear(hid, sd[p + 'ffn.layers.1.weight'], sd[p + 'ffn.layers.1.bias'])
    return ln(t, 'ln1.')[:, 0]


def layer_keys(i, attn=True, ffn=True):
    keys = []
    if attn:
        keys += [f'layers.{i}.{k}' for k in ('ln1.weight', 'ln1.bias', 'attn.qkv.weight',
                                              'attn.qkv.bias', 'attn.proj.weight',
                                              'attn.proj.bias')]
    if ffn:
        keys += [f'layers.{i}.{k}' for k in ('ln2.weight', 'ln2.bias', 'ffn.layers.0.0.weight',
                                              'ffn.layers.0.0.bias', 'ffn.layers.1.weight',
                                              'ffn.layers.1.bias')]
    return keys


STEM = ['cls_token', 'pos_embed', 'patch_embed.projection.weight',
        'patch_embed.projection.bias', 'ln1.weight', 'ln1.bias']


# ---- the S²ViTE layout ----------------------------------------------------------------------
def test_s2vite_layout_keys_shapes_and_logits():
    from mmsparse.models import CompactVisionTransformer
    kw = dict(TINY, num_heads=[2, 0, 1, 2], head_dims=[16, 16, 8, 16], mlp_dims=[64, 10, 0, 64],
              skip_layers=[3])
    m = randomize(CompactVisionTransformer(**kw))
    sd = m.state_dict()
    # zero heads / zero neurons stay (empty weights, their biases); the skipped layer is absent
    assert set(sd) == set(STEM + layer_keys(0) + layer_keys(1) + layer_keys(2))
    assert sd['layers.1.attn.qkv.weight'].shape == (0, C)
    assert sd['layers.1.attn.proj.weight'].shape == (C, 0)
    assert sd['layers.2.attn.qkv.weight'].shape == (3 * 8, C)
    assert sd['layers.2.ffn.layers.0.0.weight'].shape == (0, C)
    # a state dict of this layout loads strictly into a fresh model and gives the same logits
    fresh = randomize(CompactVisionTransformer(**kw), seed=2)
    fresh.load_state_dict(sd, strict=True)
    x = images()
    ref = reference_forward(sd, x, {0: (16, [16, 16]), 1: (16, []), 2: (8, [8])})
    torch.testing.assert_close(fresh(x)[0], ref, atol=1e-5, rtol=0)
    # a layer without heads adds proj.bias only
    attn = m.layers[1].attn
    t = torch.randn(2, 5, C)
    assert torch.equal(attn(t), attn.proj.bias.expand(2, 5, C))


def test_dense_sizes_are_mmpretrain_vision_transformer():
    from mmpretrain.models.backbones import VisionTransformer

    from mmsparse.models import CompactVisionTransformer
    ref = randomize(VisionTransformer(**TINY))
    ours = randomize(CompactVisionTransformer(**TINY))
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = images()
    assert torch.equal(ref(x)[0], ours(x)[0])


# ---- the UVC layout -------------------------------------------------------------------------
def test_uvc_layout_keys_shapes_and_logits():
    from mmsparse.models import CompactVisionTransformer, UVCCompactVisionTransformer
    m = randomize(UVCCompactVisionTransformer(**UVC_ARGS))
    assert isinstance(m, CompactVisionTransformer)  # one class, UVC's arguments
    sd = m.state_dict()
    assert set(sd) == set(STEM + layer_keys(0) + layer_keys(1, attn=False) +
                          layer_keys(2, ffn=False) + layer_keys(3))
    # qkv: all queries, all keys (16 per head), then the values head by head
    assert sd['layers.0.attn.qkv.weight'].shape == (2 * 2 * 16 + 12 + 5, C)
    assert sd['layers.0.attn.proj.weight'].shape == (C, 17)
    assert m.layers[3].attn.groups == [(0, 2, 9, 0)]  # equal value dims: one fused call
    fresh = randomize(UVCCompactVisionTransformer(**UVC_ARGS), seed=2)
    fresh.load_state_dict(sd, strict=True)
    x = images()
    ref = reference_forward(sd, x, {0: (16, [12, 5]), 1: (16, []), 2: (16, [16]),
                                    3: (16, [9, 9])})
    torch.testing.assert_close(fresh(x)[0], ref, atol=1e-5, rtol=0)
    assert fresh.arch_layers == UVC_LAYERS and fresh.dense_num_layers == 6
    assert fresh.head_dims == HD


def test_uvc_arguments_are_the_general_ones():
    """UVCCompactVisionTransformer(...) == CompactVisionTransformer with per-head v_dims and
    removed empty branches: same keys, same outputs."""
    from mmsparse.models import CompactVisionTransformer, UVCCompactVisionTransformer
    uvc = randomize(UVCCompactVisionTransformer(**UVC_ARGS))
    general = CompactVisionTransformer(
        arch=dict(embed_dims=C, num_layers=4, num_heads=2, feedforward_channels=64),
        img_size=8, patch_size=4, in_channels=1, head_dims=HD,
        v_dims=[layer['v_dims'] for layer in UVC_LAYERS],
        mlp_dims=[layer['feedforward_channels'] for layer in UVC_LAYERS],
        remove_empty_branches=True)
    general.eval()
    assert general.layer_num_heads == [2, 0, 1, 2]
    general.load_state_dict(uvc.state_dict(), strict=True)
    x = images()
    assert torch.equal(general(x)[0], uvc(x)[0])
    assert general.layer_dims()[0] == dict(num_heads=2, head_dims=16, v_dims=[12, 5],
                                           mlp_dims=20, skipped=False)


def test_uvc_every_block_removed():
    from mmsparse.models import UVCCompactVisionTransformer
    m = randomize(UVCCompactVisionTransformer(**dict(UVC_ARGS, layers=[])))
    sd = m.state_dict()
    assert set(sd) == set(STEM)
    x = images()
    torch.testing.assert_close(m(x)[0], reference_forward(sd, x, {}), atol=1e-5, rtol=0)


def test_flops_equal_the_uvc_resource_function():
    from mmsparse.analysis import count_flops
    from mmsparse.models import UVCCompactVisionTransformer
    from mmsparse.ops.uvc import ViTCost, block_macs
    layers = [dict(v_dims=[12, 5], feedforward_channels=20), dict(v_dims=[9, 9, 9],
                                                                  feedforward_channels=3)]
    m = UVCCompactVisionTransformer(**dict(UVC_ARGS, layers=layers))
    traced = count_flops(m, (images(1), )).flops
    n = 4 + 1  # patches + class token
    cost = ViTCost(num_layers=2, num_tokens=n, embed_dims=C, num_heads=3, head_dims=HD,
                   mlp_dims=64, norm_macs=float(2 * 5 * n * C))
    blocks = block_macs(cost, torch.tensor([2., 3.]), torch.tensor([17., 27.]),
                        torch.tensor([20., 3.]))
    fixed = 4 * C * 1 * 4 * 4 + 5 * n * C  # patch embedding, final norm
    assert traced == int(blocks.sum()) + fixed


def test_stored_uvc_derived_config_builds():
    """A compact config written by UVC's compaction before the one compact ViT still builds."""
    from mmsparse.registry import MODELS
    stored = json.loads((REPO / 'benchmarks/gpu/uvc_deit-small_budget0.5_compact.json')
                        .read_text())['model']['backbone']
    m = MODELS.build(dict(stored, img_size=32, patch_size=16))  # small input, same blocks
    assert m.num_layers == len(stored['layers'])
    for layer, arch in zip(m.layers, stored['layers']):
        assert layer.attn.v_dims == arch['v_dims']
        assert layer.fc1.out_features == arch['feedforward_channels']


# ---- the pieces the methods use -------------------------------------------------------------
def test_per_head_value_dims_in_a_general_model_and_head_scores():
    from mmsparse.models import CompactVisionTransformer
    m = randomize(CompactVisionTransformer(**TINY, v_dims=[[16, 3], None, [5], [16, 16]]))
    assert m.layer_num_heads == [2, 2, 1, 2]
    assert [a.v_dims for a in m.attention_layers()] == [[16, 3], [16, 16], [5], [16, 16]]
    x = images()
    ref = reference_forward(m.state_dict(), x, {0: (16, [16, 3]), 1: (16, [16, 16]),
                                                2: (16, [5]), 3: (16, [16, 16])})
    torch.testing.assert_close(m(x)[0], ref, atol=1e-5, rtol=0)
    # head-score capture (S²ViTE's hook) covers heads of different value dims
    m.train()
    for a in m.attention_layers():
        a.record_head_scores = True
    m(x)[0].sum().backward()
    taylor, gnorm = m.attention_layers()[0].head_scores()
    assert taylor.shape == gnorm.shape == (2, )


def test_svite_backbone_is_the_compact_vit():
    from mmsparse.models import CompactVisionTransformer, SViTEVisionTransformer
    from mmsparse.models.layers import Attention, EncoderLayer
    assert issubclass(SViTEVisionTransformer, CompactVisionTransformer)
    m = SViTEVisionTransformer(**TINY, num_heads=[2, 1, 2, 2], skip_layers=[2])
    assert [type(layer).__name__ for layer in m.layers] == ['EncoderLayer', 'EncoderLayer',
                                                           'Identity', 'EncoderLayer']
    assert all(isinstance(layer, EncoderLayer) for i, layer in enumerate(m.layers) if i != 2)
    attns = m.attention_layers()
    assert attns[2] is None and all(isinstance(a, Attention) for a in attns if a is not None)


@pytest.mark.parametrize('kw, match', [
    (dict(num_heads=[2, 2]), 'model.backbone.num_heads must be an int or a list of 4 ints'),
    (dict(mlp_dims=[64, -1, 64, 64]), 'model.backbone.mlp_dims values must each be an int >= 0'),
    (dict(skip_layers=[4]), 'model.backbone.skip_layers must be layer indices in \\[0, 3\\]'),
    (dict(v_dims=[[16]] * 3), 'model.backbone.v_dims must be a list of 4 lists'),
    (dict(num_heads=2, v_dims=[[16], None, None, None]),
     'model.backbone.v_dims\\[0\\] must have num_heads\\[0\\] = 2 values'),
    (dict(v_dims=[[16, 0], None, None, None]), 'model.backbone.v_dims\\[0\\] must be a list'),
    (dict(remove_empty_branches=1), 'model.backbone.remove_empty_branches must be True or'),
])
def test_bad_sizes_fail_at_build_time(kw, match):
    from mmsparse.models import CompactVisionTransformer
    with pytest.raises(ConfigError, match=match):
        CompactVisionTransformer(**TINY, **kw)


@pytest.mark.parametrize('kw, match', [
    (dict(layers=[dict(v_dims=[16], heads=2)]), 'model.backbone.layers\\[0\\] keys must be'),
    (dict(out_type='raw'), 'model.backbone.out_type must be one of'),
])
def test_bad_uvc_arguments_fail_at_build_time(kw, match):
    from mmsparse.models import UVCCompactVisionTransformer
    with pytest.raises(ConfigError, match=match):
        UVCCompactVisionTransformer(**dict(UVC_ARGS, **kw))
