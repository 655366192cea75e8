"""The one attention / encoder layer (mmsparse.models.layers) against mmpretrain and by hand."""
import pytest
import torch

from mmsparse.errors import ConfigError
from mmsparse.models.layers import Attention, EncoderLayer, head_groups
from mmsparse.ops.dst import head_taylor_scores

C, H, N = 24, 3, 7


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Weights away from their init (LayerScales and biases included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _by_hand(attn: Attention, x: torch.Tensor, policy=None, keep_outputs=None):
    """Per-head attention written out head by head (no fusing, no groups)."""
    B, T, _ = x.shape
    d, qk = attn.head_dims, attn.qk_channels
    qkv = attn.qkv(x)
    outs, col = [], 2 * qk
    for h, dv in enumerate(attn.v_dims):
        q = qkv[..., h * d:(h + 1) * d]
        k = qkv[..., qk + h * d:qk + (h + 1) * d]
        v = qkv[..., col:col + dv]
        col += dv
        logits = q @ k.transpose(-2, -1) * d ** -0.5  # (B, T, T)
        if policy is not None:  # kept keys, and every query's own key
            allowed = (policy[:, None, :] > 0.5) | torch.eye(T, dtype=torch.bool)
            logits = logits.masked_fill(~allowed, float('-inf'))
        o = logits.softmax(-1) @ v
        if keep_outputs is not None:
            o.retain_grad()
            keep_outputs.append(o)
        outs.append(o)
    return attn.proj(torch.cat(outs, dim=-1))


# ---- against mmpretrain ----------------------------------------------------------------------
@pytest.mark.parametrize('layer_scale', [0.0, 0.1])
def test_encoder_layer_has_mmpretrain_keys_and_outputs(layer_scale):
    from mmpretrain.models.backbones.vision_transformer import TransformerEncoderLayer
    torch.manual_seed(0)
    ref = TransformerEncoderLayer(C, H, 2 * C, layer_scale_init_value=layer_scale)
    mine = EncoderLayer(C, H, 2 * C, layer_scale_init_value=layer_scale)
    ref_sd = ref.state_dict()
    assert list(mine.state_dict()) == list(ref_sd)
    assert all(mine.state_dict()[k].shape == v.shape for k, v in ref_sd.items())
    _randomize(ref)
    mine.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, N, C)
    for mode in (False, True):  # eval, and train (no dropout configured: deterministic)
        ref.train(mode), mine.train(mode)
        assert torch.equal(mine(x), ref(x))


def test_attention_equals_mmpretrain_multihead_attention():
    from mmpretrain.models.utils import MultiheadAttention
    ref = MultiheadAttention(C, H, qkv_bias=True)
    mine = Attention(C, H)
    assert list(mine.state_dict()) == list(ref.state_dict())
    _randomize(ref, 1)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(3, N, C)
    assert torch.equal(mine(x), ref(x))


def test_named_accessors_are_the_mmcv_ffn_modules():
    layer = EncoderLayer(C, H, 2 * C)
    assert layer.fc1 is layer.ffn.layers[0][0] and layer.fc1.weight.shape == (2 * C, C)
    assert layer.fc2 is layer.ffn.layers[1] and layer.fc2.weight.shape == (C, 2 * C)
    assert layer.act is layer.ffn.layers[0][1] and layer.gamma2 is layer.ffn.gamma2
    assert layer.norm1 is layer.ln1 and layer.norm2 is layer.ln2
    no_branches = EncoderLayer(C, H, 2 * C, with_attn=False, with_ffn=False)
    assert no_branches.state_dict() == {}
    x = torch.randn(1, N, C)
    assert torch.equal(no_branches(x), x)


# ---- the explicit paths ------------------------------------------------------------------------
def test_fused_and_explicit_paths_agree():
    torch.manual_seed(0)
    attn = Attention(C, H).eval()
    _randomize(attn, 2)
    x = torch.randn(2, N, C)
    with torch.no_grad():
        fused = attn(x)
        torch.testing.assert_close(fused, _by_hand(attn, x), atol=1e-5, rtol=1e-5)
        # an all-ones policy is the plain softmax (up to softmax_with_policy's eps terms)
        torch.testing.assert_close(attn(x, policy=torch.ones(2, N)), fused, atol=1e-5,
                                   rtol=1e-5)


def test_policy_path_is_attention_over_the_kept_keys():
    torch.manual_seed(0)
    attn = Attention(C, H).eval()
    _randomize(attn, 3)
    x = torch.randn(2, N, C)
    policy = torch.tensor([[1., 0., 1., 1., 0., 1., 1.], [1., 1., 1., 0., 0., 0., 1.]])
    with torch.no_grad():
        out = attn(x, policy)
        torch.testing.assert_close(out, _by_hand(attn, x, policy), atol=1e-5, rtol=1e-5)
        # a kept query's output is the attention over the kept tokens alone
        keep = policy[0] > 0.5
        alone = attn(x[:1, keep])
    torch.testing.assert_close(out[0, keep], alone[0], atol=1e-5, rtol=1e-5)


def test_v_mask_equals_removing_value_dims():
    attn = Attention(C, H).eval()
    _randomize(attn, 4)
    d = attn.head_dims
    v_mask = torch.ones(H, d)
    v_mask[0, 1] = v_mask[2, :3] = 0
    removed = Attention(C, H).eval()
    removed.load_state_dict(attn.state_dict())
    with torch.no_grad():  # a zero in v_mask = that column of proj removed
        cols = (v_mask.flatten() == 0).nonzero().flatten()
        removed.proj.weight[:, cols] = 0
    x = torch.randn(2, N, C)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, v_mask=v_mask), removed(x), atol=1e-6, rtol=1e-6)
        assert torch.equal(attn(x, v_mask=torch.ones(H, d)), attn(x))


@pytest.mark.parametrize('v_dims', [[3, 3, 5], [2, 6, 6, 1], [4, 4, 4]])
def test_per_head_value_dims(v_dims):
    attn = Attention(C, len(v_dims), head_dims=4, v_dims=v_dims).eval()
    assert attn.qkv.weight.shape == (2 * len(v_dims) * 4 + sum(v_dims), C)
    assert attn.proj.weight.shape == (C, sum(v_dims))
    _randomize(attn, 5)
    x = torch.randn(2, N, C)
    policy = torch.tensor([[1., 1., 0., 1., 1., 0., 1.]] * 2)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _by_hand(attn, x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(attn(x, policy), _by_hand(attn, x, policy), atol=1e-5,
                                   rtol=1e-5)


def test_head_groups():
    assert head_groups([3, 3, 5]) == [(0, 2, 3, 0), (2, 1, 5, 6)]
    assert head_groups([2, 6, 6, 1]) == [(0, 1, 2, 0), (1, 2, 6, 2), (3, 1, 1, 14)]
    assert head_groups([]) == []


def test_zero_heads_output_the_proj_bias():
    attn = Attention(C, 0, head_dims=8)
    assert attn.qkv.weight.shape == (0, C) and attn.proj.weight.shape == (C, 0)
    x = torch.randn(2, N, C)
    assert torch.equal(attn(x), attn.proj.bias.expand(2, N, C))


def test_neuron_mask_equals_removing_neurons():
    layer = EncoderLayer(C, H, 2 * C).eval()
    _randomize(layer, 6)
    mask = torch.ones(2 * C)
    mask[::3] = 0
    removed = EncoderLayer(C, H, 2 * C).eval()
    removed.load_state_dict(layer.state_dict())
    with torch.no_grad():
        removed.fc2.weight[:, mask == 0] = 0
    x = torch.randn(2, N, C)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, neuron_mask=mask), removed(x), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(layer(x, neuron_mask=torch.ones(2 * C)), layer(x),
                                   atol=1e-6, rtol=1e-6)


# ---- head scores (S²ViTE) --------------------------------------------------------------------
@pytest.mark.parametrize('v_dims', [None, [3, 3, 5]])
def test_head_score_capture(v_dims):
    attn = Attention(C, H, head_dims=4, v_dims=v_dims).train()
    _randomize(attn, 7)
    x = torch.randn(2, N, C)
    assert attn.head_scores() is None
    attn(x).sum().backward()  # off by default: nothing recorded
    assert attn.head_scores() is None
    attn.record_head_scores = True
    w = torch.randn(2, N, C)
    expected = []
    for _ in range(2):
        (attn(x) * w).sum().backward()
        outs = []
        (_by_hand(attn, x, keep_outputs=outs) * w).sum().backward()
        per_head = [head_taylor_scores(o.detach().unsqueeze(1), o.grad.unsqueeze(1))
                    for o in outs]
        expected.append([torch.cat([s[i] for s in per_head]) for i in (0, 1)])
        w = -2 * w
    taylor, gnorm = attn.head_scores()
    assert taylor.shape == gnorm.shape == (H, )
    torch.testing.assert_close(taylor, (expected[0][0] + expected[1][0]) / 2, rtol=1e-4,
                               atol=1e-5)
    torch.testing.assert_close(gnorm, (expected[0][1] + expected[1][1]) / 2, rtol=1e-4,
                               atol=1e-5)
    attn.reset_head_scores()
    assert attn.head_scores() is None
    attn.eval()
    with torch.no_grad():
        attn(x)  # no backward in eval: nothing recorded
    assert attn.head_scores() is None


# ---- validation ----------------------------------------------------------------------------
@pytest.mark.parametrize('kw, match', [
    (dict(num_heads=-1), r'model\.backbone\.num_heads must be an integer >= 0'),
    (dict(num_heads=2, head_dims=0), r'model\.backbone\.head_dims must be an integer >= 1'),
    (dict(num_heads=2, v_dims=[4]), r'model\.backbone\.v_dims must be 2 ints >= 1'),
    (dict(num_heads=2, v_dims=[4, 0]), r'model\.backbone\.v_dims'),
    (dict(num_heads=2, policy_max_gap=-1.0), r'model\.backbone\.policy_max_gap must be'),
])
def test_bad_attention_arguments(kw, match):
    with pytest.raises(ConfigError, match=match):
        Attention(C, **kw)


def test_policy_gradient_reaches_the_policy():
    attn = Attention(C, H).train()
    _randomize(attn, 8)
    policy = torch.tensor([[1., 0., 1., 1., 0., 1., 1.]], requires_grad=True)
    out = attn(torch.randn(1, N, C), policy)
    (out * torch.randn_like(out)).sum().backward()
    assert policy.grad is not None and bool((policy.grad[0, [1, 4]] != 0).all())
