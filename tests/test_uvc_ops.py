"""UVC's pure functions (mmsparse.ops.uvc) against hand-computed cases."""
import pytest
import torch

from mmsparse.ops.uvc import (ViTCost, clip_inf_norm, gate_keep_hard, gate_keep_prob,
                              gate_keep_sample, group_flops_fractions, group_scores,
                              keep_mask_lowest, least_sum, min_flops_fraction, project_grad,
                              prox_factors, ste_ceil, uvc_flops_fraction, uvc_macs, uvc_masks)

# L=2 blocks, N=5 tokens, C=8, H=2 heads of hd=4, F=16 neurons; LayerNorms 2*5*N*C = 400 per
# block, 100 MACs outside the blocks.
COST = ViTCost(num_layers=2, num_tokens=5, embed_dims=8, num_heads=2, head_dims=4, mlp_dims=16,
               fixed_macs=100.0, norm_macs=400.0)
# dense block: qkv 5*8*24 = 960, q.k^T + attn.v 25*(8+8) = 400, proj 5*8*8 = 320,
# fc1 + fc2 2*5*8*16 = 1280, norms 400 -> 3360
DENSE_BLOCK = 960 + 400 + 320 + 1280 + 400
DENSE = 100 + 2 * DENSE_BLOCK


def test_dense_cost_by_hand():
    assert COST.dense_block_macs == DENSE_BLOCK == 3360
    assert COST.dense_macs == DENSE == 6820


def test_resource_hand_computed_heads_dims_neurons_skipped_block():
    # block 0: head 0 removed, 1 value dim removed in head 1 (and 3 "removed" in head 0, which
    # must not count), 6 neurons removed; block 1 skipped.
    s_heads = torch.tensor([1.0, 0.0])
    s_neurons = torch.tensor([6.0, 0.0])
    r = torch.tensor([[3.0, 1.0], [0.0, 0.0]])
    head_keep = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    block_keep = torch.tensor([1.0, 0.0])
    # block 0 by hand: Hk = 1, Dv = 4 - 1 = 3, Fk = 10
    qkv = 5 * 8 * (2 * 1 * 4 + 3)  # 440
    attn = 5 * 5 * (1 * 4 + 3)  # 175
    proj = 5 * 3 * 8  # 120
    mlp = 2 * 5 * 8 * 10  # 800
    block0 = qkv + attn + proj + mlp + 400  # 1935
    macs = uvc_macs(COST, s_heads, s_neurons, r, head_keep, block_keep, ceil=False)
    assert float(macs) == 100 + block0 == 2035
    frac = uvc_flops_fraction(COST, s_heads, s_neurons, r, head_keep, block_keep, ceil=False)
    assert float(frac) == pytest.approx(2035 / 6820, abs=1e-12)
    # a soft keep probability scales the block
    half = uvc_macs(COST, s_heads, s_neurons, r, head_keep, torch.tensor([1.0, 0.5]), False)
    assert float(half) == 100 + block0 + 0.5 * DENSE_BLOCK
    # nothing removed, every block runs: the dense model
    zero = torch.zeros(2)
    assert float(uvc_macs(COST, zero, zero, torch.zeros(2, 2), torch.ones(2, 2))) == DENSE


def test_resource_ceils_with_straight_through_gradient():
    s_heads = torch.tensor([0.3, 0.0], requires_grad=True)
    s_neurons = torch.tensor([5.2, 0.0], requires_grad=True)
    r = torch.tensor([[0.0, 0.5], [0.0, 0.0]], requires_grad=True)
    head_keep = torch.tensor([[0.0, 1.0], [1.0, 1.0]])  # ceil(0.3) = 1 head removed in block 0
    keep = torch.tensor([1.0, 0.5], requires_grad=True)
    macs = uvc_macs(COST, s_heads, s_neurons, r, head_keep, keep)
    # ceil: block 0 = the hand case above with 1 dim and 6 neurons removed
    assert float(macs) == 100 + 1935 + 0.5 * DENSE_BLOCK
    macs.backward()
    n, c, hd = 5, 8, 4
    # d/d s_heads: one head less = -(N C 2hd + N^2 hd) - hd * (N C + N^2 + N C)
    per_head = n * c * 2 * hd + n * n * hd + hd * (n * c + n * n + n * c)
    assert s_heads.grad.tolist() == [-per_head * 1.0, -per_head * 0.5]
    assert s_neurons.grad.tolist() == [-2 * n * c * 1.0, -2 * n * c * 0.5]
    per_dim = n * c + n * n + n * c
    # removed heads' dims do not count
    assert r.grad.tolist() == [[0.0, -per_dim], [-per_dim * 0.5, -per_dim * 0.5]]
    assert keep.grad.tolist() == [1935.0, DENSE_BLOCK]


def test_group_flops_fractions_and_min_fraction():
    head, neuron, dim = group_flops_fractions(COST)
    assert head == pytest.approx((5 * 8 * 12 + 2 * 25 * 4 + 5 * 4 * 8) / DENSE)
    assert neuron == pytest.approx(2 * 5 * 8 / DENSE)
    assert dim == pytest.approx((2 * 5 * 8 + 25) / DENSE)
    assert min_flops_fraction(COST, block_gating=True) == pytest.approx(100 / DENSE)
    one_block = 400 + 5 * 8 * (8 + 1) + 25 * (4 + 1) + 5 * 1 * 8 + 2 * 5 * 8 * 1
    assert min_flops_fraction(COST, block_gating=False) == pytest.approx(
        (100 + 2 * one_block) / DENSE)


def test_ste_ceil_forward_ceil_backward_identity():
    x = torch.tensor([0.0, 0.2, 1.0, 2.7], requires_grad=True)
    y = ste_ceil(x)
    assert y.tolist() == [0.0, 1.0, 1.0, 3.0]
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_least_sum_nearest_slope_changes_half_way_between_hard_architectures():
    v = torch.tensor([[5.0, 1.0, 3.0, 2.0]])  # sorted [1, 2, 3, 5]
    s = torch.tensor([0.0, 0.2, 0.49, 0.5, 1.0, 1.4, 1.6, 3.9], requires_grad=True)
    vv = v.expand(len(s), -1)
    out = least_sum(s, vv, 'nearest')
    # the forward is the same staircase: ceil(s) smallest
    assert out.tolist() == least_sum(s.detach(), vv).tolist() == [0, 1, 1, 1, 1, 3, 3, 11]
    out.sum().backward()
    # slope sort(v)[floor(s + 1/2)]: 1 below s = 0.5, 2 in [0.5, 1.5), 3 in [1.5, 2.5), ...
    assert s.grad.tolist() == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 5.0]
    # 'next' jumps at the integers, where ceil(s) changes: 1 at s = 0, 2 just above
    s2 = torch.tensor([0.0, 0.2, 1.0, 1.4], requires_grad=True)
    least_sum(s2, v.expand(4, -1)).sum().backward()
    assert s2.grad.tolist() == [1.0, 2.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="slope must be one of"):
        least_sum(s2, v.expand(4, -1), 'prev')


def test_least_sum_forward_and_next_smallest_backward():
    v = torch.tensor([[5.0, 1.0, 3.0, 2.0], [4.0, 4.0, 1.0, 0.5]])
    s = torch.tensor([1.5, 0.0], requires_grad=True)  # ceil: 2 and 0
    out = least_sum(s, v)
    assert out.tolist() == [1.0 + 2.0, 0.0]
    out.backward(torch.tensor([1.0, 2.0]))
    # next smallest: row 0 sorted [1, 2, 3, 5] -> the 3rd = 3; row 1 sorted [.5, 1, 4, 4] -> .5
    assert s.grad.tolist() == [3.0, 2.0 * 0.5]
    # all groups counted: the gradient is the largest score
    s_all = torch.tensor([4.0], requires_grad=True)
    least_sum(s_all, torch.tensor([[1.0, 2.0, 3.0, 4.0]])).backward()
    assert s_all.grad.tolist() == [4.0]
    with pytest.raises(ValueError, match='least_sum'):
        least_sum(torch.zeros(3), torch.zeros(2, 4))


def test_group_scores_are_squared_input_column_norms():
    proj = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)  # L=2, C=4, H=2, hd=2
    fc2 = torch.ones(2, 4, 3) * torch.tensor([1.0, 2.0, 3.0])
    head, dim, neuron = group_scores(proj, fc2, num_heads=2)
    col = proj.pow(2).sum(1)  # (L, C)
    assert torch.equal(dim, col.reshape(2, 2, 2))
    assert torch.equal(head, col.reshape(2, 2, 2).sum(-1))
    assert neuron.tolist() == [[4.0, 16.0, 36.0]] * 2


def test_masks_remove_the_lowest_groups():
    scores = torch.tensor([[3.0, 1.0, 1.0, 2.0]])
    assert keep_mask_lowest(scores, torch.tensor([2])).tolist() == [[True, False, False, True]]
    assert keep_mask_lowest(scores, torch.tensor([0])).all()
    # ties: the earlier entry goes first
    assert keep_mask_lowest(scores, torch.tensor([1])).tolist() == [[True, False, True, True]]
    head_s = torch.tensor([[2.0, 1.0, 3.0]])
    dim_s = torch.tensor([[[1.0, 0.0], [5.0, 6.0], [0.5, 0.2]]])
    neuron_s = torch.tensor([[0.1, 0.3, 0.2]])
    m = uvc_masks(head_s, dim_s, neuron_s, torch.tensor([1]), torch.tensor([[1, 1, 0]]),
                  torch.tensor([2]))
    assert m.heads.tolist() == [[True, False, True]]
    # head 1 removed: none of its dims is kept; head 0 loses its lowest dim; head 2 keeps all
    assert m.dims.tolist() == [[[True, False], [False, False], [True, True]]]
    assert m.neurons.tolist() == [[False, True, False]]


def test_prox_projection_clip():
    removed = torch.tensor([[True, False], [False, True]])
    f = prox_factors(removed, torch.tensor([1.0, 2.0]), lr=0.1)
    assert f.flatten().tolist() == pytest.approx([1 / 1.2, 1.0, 1.0, 1 / 1.4])
    x = torch.tensor([0.0, 0.0, 2.0, 2.0, 1.0])
    g = torch.tensor([1.0, -1.0, -1.0, 1.0, 5.0])
    # at the lower bound a positive (descent) gradient would leave the box; at the upper a
    # negative one
    assert project_grad(g, x, 0.0, 2.0).tolist() == [0.0, -1.0, 0.0, 1.0, 5.0]
    assert clip_inf_norm(torch.tensor([4.0, -2.0]), 1.0).tolist() == pytest.approx([1.0, -0.5],
                                                                                  abs=1e-6)
    assert clip_inf_norm(torch.tensor([0.5, -0.2]), 1.0).tolist() == pytest.approx([0.5, -0.2])


def test_gates():
    logits = torch.tensor([[-1.0, 1.0], [2.0, 0.5], [0.0, 0.2]])
    p = gate_keep_prob(logits, 'gumbel', tau=0.5)
    assert p[0].item() == pytest.approx(torch.softmax(torch.tensor([-2.0, 2.0]), 0)[1].item())
    assert p[0].item() == pytest.approx(0.982, abs=1e-3)  # the original's P(keep) at init
    assert gate_keep_hard(logits, 'gumbel').tolist() == [True, False, True]
    q = gate_keep_prob(logits, 'soft_l0', eps=0.1)
    assert q.tolist() == pytest.approx([1 / 1.1, 0.25 / 0.35, 0.04 / 0.14])
    assert gate_keep_hard(logits, 'soft_l0', eps=0.1).tolist() == [True, True, False]
    d = gate_keep_sample(logits, 'gumbel', tau=0.5, hard=True)
    assert set(d.tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match='gumbel'):
        gate_keep_prob(logits, 'l1')
