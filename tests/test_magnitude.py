"""Uniform magnitude pruning (mmsparse.compaction.magnitude): scores, counts at a FLOPs target,
masks, and the compact checkpoint (exact against the masked dense model, composable)."""
import pytest
import torch

from mmsparse.compaction.magnitude import (compact_magnitude_checkpoint, head_l1_scores,
                                           masked_state_dict, top_k_mask,
                                           uniform_flops_fraction, uniform_keep_counts,
                                           uniform_magnitude_masks, vit_cost)
from mmsparse.ops.uvc import ViTCost
from tests.conftest import DEMO_CONFIG, REPO

# the demo ViT: 6 layers, N = 49 + 1 tokens, C = 96, 3 heads of 32, MLP 384
DEMO_COST = ViTCost(num_layers=6, num_tokens=50, embed_dims=96, num_heads=3, head_dims=32,
                    mlp_dims=384, fixed_macs=75264 + 24000 + 960, norm_macs=48000)


def test_head_l1_scores_by_hand():
    # H = 2 heads of d = 1, C = 2: qkv rows [q0, q1, k0, k1, v0, v1], proj columns [h0, h1]
    qkv = torch.tensor([[1., -1.], [0., 2.], [3., 0.], [0., -1.], [1., 1.], [0., 0.]])
    proj = torch.tensor([[2., 0.], [-1., 4.]])
    # head 0: |q0| 2 + |k0| 3 + |v0| 2 + proj col 0: 3 = 10; head 1: 2 + 1 + 0 + 4 = 7
    assert head_l1_scores(qkv, proj, 2).tolist() == [10.0, 7.0]
    with pytest.raises(ValueError, match='3 x 4 heads'):
        head_l1_scores(qkv, proj, 4)


def test_top_k_mask_ties_and_bounds():
    assert top_k_mask(torch.tensor([1., 3., 3., 0.]), 2).tolist() == [False, True, True, False]
    # a tie at the cut: the lower index is kept
    assert top_k_mask(torch.tensor([2., 1., 2.]), 1).tolist() == [True, False, False]
    assert top_k_mask(torch.tensor([2., 1.]), 0).tolist() == [False, False]
    with pytest.raises(ValueError, match='cannot keep 3 of 2'):
        top_k_mask(torch.tensor([2., 1.]), 3)


def test_uniform_flops_fraction_by_hand():
    # one block, N = 2, C = 4, H = 2 of hd = 2, F = 4, no fixed / norm MACs: dense
    # qkv 2*4*12 = 96, q k^T + attn v 4*8 = 32, proj 2*4*4 = 32, MLP 2*2*4*4 = 64 -> 224;
    # 1 head, 2 neurons: 48 + 16 + 16 + 32 = 112 = half
    cost = ViTCost(num_layers=1, num_tokens=2, embed_dims=4, num_heads=2, head_dims=2,
                   mlp_dims=4)
    assert cost.dense_macs == 224
    assert uniform_flops_fraction(cost, 2, 4) == 1.0
    assert uniform_flops_fraction(cost, 1, 2) == pytest.approx(112 / 224)


def test_uniform_keep_counts_most_even_cut_demo_vit():
    # target 0.5 of 36,445,824 MACs: per block 2,972,448 MACs for heads (774,400 each) and
    # neurons (9,600 each) -> 3 heads + 67 neurons (min share 67/384 = 0.17), 2 + 148 (0.385),
    # 1 + 228 (1/3): the most even cut is 2 heads and 148 neurons
    assert DEMO_COST.dense_macs == 36445824
    heads, neurons, frac = uniform_keep_counts(DEMO_COST, 0.5)
    assert (heads, neurons) == (2, 148)
    assert frac == pytest.approx((100224 + 6 * (48000 + 2 * 774400 + 148 * 9600)) / 36445824)
    assert frac <= 0.5 < uniform_flops_fraction(DEMO_COST, 2, 149)
    assert uniform_keep_counts(DEMO_COST, 1.0)[:2] == (3, 384)
    with pytest.raises(ValueError, match='below the smallest uniform structure'):
        uniform_keep_counts(DEMO_COST, 0.01)
    with pytest.raises(ValueError, match=r'in \(0, 1\]'):
        uniform_keep_counts(DEMO_COST, 1.5)


def test_uniform_magnitude_masks_keep_largest_l1():
    # one layer, H = 2 heads of d = 1 (C = 2), F = 3 neurons
    qkv = torch.tensor([[1., 0.], [5., 0.], [1., 0.], [5., 0.], [1., 0.], [5., 0.]])
    sd = {'backbone.layers.0.attn.qkv.weight': qkv,
          'backbone.layers.0.attn.proj.weight': torch.ones(2, 2),
          'backbone.layers.0.ffn.layers.0.0.weight': torch.tensor([[1., 1.], [0., 0.], [4., 0.]]),
          'backbone.layers.0.ffn.layers.1.weight': torch.tensor([[0., 1., 0.], [0., 0., 1.]])}
    # neurons: 2 + 0 = 2, 0 + 1 = 1, 4 + 1 = 5 -> keep 2 and 0
    heads, neurons = uniform_magnitude_masks(sd, 1, 2, num_heads=2)
    assert heads[0].tolist() == [False, True]
    assert neurons[0].tolist() == [True, False, True]
    with pytest.raises(ValueError, match='cannot keep 3 of 2 heads'):
        uniform_magnitude_masks(sd, 3, 1, num_heads=2)


def test_compact_magnitude_checkpoint_exact_and_composable(tmp_path):
    from mmsparse.utils import build_model, load_config
    cfg = load_config(str(DEMO_CONFIG))
    torch.manual_seed(0)
    dense = build_model(cfg)
    torch.save(dict(meta=dict(epoch=1), state_dict=dense.state_dict()), tmp_path / 'dense.pth')
    assert vit_cost(dense.backbone, 960).dense_macs == DEMO_COST.dense_macs
    report = compact_magnitude_checkpoint(cfg, str(tmp_path / 'dense.pth'),
                                          str(tmp_path / 'out' / 'uniform'), target=0.5,
                                          atol=1e-5)
    assert (report['heads'], report['neurons']) == (2, 148)
    # the resource function is the traced MACs of the compact model
    assert report['measured_flops_fraction'] == pytest.approx(report['flops_fraction'], abs=1e-12)
    assert report['max_abs_diff'] < 1e-5
    assert report['params_compact'] < 0.6 * report['params']
    saved = torch.load(report['checkpoint'], map_location='cpu', weights_only=False)
    structure = saved['meta']['compact_structure']
    assert structure['num_heads'] == [2] * 6 and structure['mlp_dims'] == [148] * 6
    assert saved['meta']['compaction'] == 'uniform_magnitude'
    # the kept heads are those of largest weight L1 norm, layer by layer
    heads, _ = uniform_magnitude_masks(dense.state_dict(), 2, 148, 3)
    sd = dense.state_dict()
    for i, hm in enumerate(heads):
        scores = head_l1_scores(sd[f'backbone.layers.{i}.attn.qkv.weight'],
                                sd[f'backbone.layers.{i}.attn.proj.weight'], 3)
        assert scores[hm].min() >= scores[~hm].max()
    # masked_state_dict zeroes only weights of removed units (biases stay)
    masked = masked_state_dict(sd, heads, [torch.ones(384, dtype=torch.bool)] * 6, [32] * 6)
    assert torch.equal(masked['backbone.layers.0.attn.qkv.bias'],
                       sd['backbone.layers.0.attn.qkv.bias'])
    assert int((masked['backbone.layers.0.attn.qkv.weight'].abs().sum(1) == 0).sum()) == 96
    # the composition takes it: DynamicViT on the uniform compact model
    dv = load_config(str(REPO / 'configs/dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py'),
                     {'model.compact_checkpoint': report['checkpoint']})
    composed = build_model(dv)
    composed.init_weights()
    assert composed.backbone.layer_num_heads == [2] * 6
    assert composed.backbone.layer_mlp_dims == [148] * 6
    compact = build_model(load_config(report['config']), report['checkpoint'])
    assert torch.equal(composed.backbone.layers[3].ffn.layers[1].weight,
                       compact.backbone.layers[3].ffn.layers[1].weight)


def test_compact_magnitude_checkpoint_bad_input(tmp_path):
    from mmsparse.utils import load_config
    cfg = load_config(str(DEMO_CONFIG))
    with pytest.raises(ValueError, match='give target'):
        compact_magnitude_checkpoint(cfg, 'x.pth', str(tmp_path / 'u'), target=0.5, heads=2)
    with pytest.raises(ValueError, match='give target'):
        compact_magnitude_checkpoint(cfg, 'x.pth', str(tmp_path / 'u'), heads=2)
