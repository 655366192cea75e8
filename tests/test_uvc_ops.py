"""UVC's pure functions (mmsparse.ops.uvc, mmsparse.ops.uvc_budget) against hand-computed cases."""
import pytest
import torch

from mmsparse.ops.uvc import (ViTCost, clip_inf_norm, gate_keep_hard, gate_keep_prob,
                              gate_keep_sample, group_flops_fractions, group_scores,
                              keep_mask_lowest, least_sum, min_flops_fraction, project_grad,
                              prox_factors, ste_ceil, uvc_flops_fraction, uvc_macs, uvc_masks)
from mmsparse.ops.uvc_budget import project_to_budget

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


# ---- the end-of-search projection ---------------------------------------------------------------
def test_projection_hand_computed():
    # block 0 runs, block 1 is skipped (its groups stay). Block 0's candidates, relative score
    # per MAC saved (saved: a head with 4 value dims N C 12 + N^2 8 + N 4 C = 840, a neuron
    # 2 N C = 80, a value dim 2 N C + N^2 = 105):
    #   head 0 (score 2, mean 3): 2 / 3 / 840 = 7.9e-4  <- first
    #   neurons 0, 1 (score .5, mean 15 / 16): .5 / .9375 / 80 = 6.7e-3  <- then (head 1 must stay)
    #   a value dim of head 1 (score 1, mean 1): 1 / 105 = 9.5e-3  <- then, below the next
    #   neuron (1 / .9375 / 80 = 1.3e-2)
    # FLOPs: 100 + 3360 (block 0) -> -840 -> -160 -> -105 = 2355 <= 2400: stop.
    head_s = torch.tensor([[2.0, 4.0], [1.0, 1.0]])
    dim_s = torch.ones(2, 2, 4)
    neuron_s = torch.ones(2, 16)
    neuron_s[0, :2] = 0.5
    zero = torch.zeros(2, dtype=torch.long)
    runs = torch.tensor([True, False])
    nh, nn_, nd, count = project_to_budget(COST, (head_s, dim_s, neuron_s), zero, zero,
                                           torch.zeros(2, 2, dtype=torch.long), runs,
                                           budget=2400 / DENSE)
    assert (nh.tolist(), nn_.tolist(), nd.tolist(), count) == ([1, 0], [2, 0], [[0, 1], [0, 0]],
                                                               4)
    head_keep = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    assert float(uvc_macs(COST, nh.double(), nn_.double(), nd.double(), head_keep,
                          runs.double())) == 2355
    # rounded to multiples of 4: block 0 keeps 14 neurons -> 12; 3 value dims (not > 4) stay
    nh, nn_, nd, count = project_to_budget(COST, (head_s, dim_s, neuron_s), zero, zero,
                                           torch.zeros(2, 2, dtype=torch.long), runs,
                                           budget=2400 / DENSE, multiple=4)
    assert (nh.tolist(), nn_.tolist(), nd.tolist(), count) == ([1, 0], [4, 0], [[0, 1], [0, 0]],
                                                               6)
    # under the budget already: nothing to do; a budget below every bound: stops at the bounds
    out = project_to_budget(COST, (head_s, dim_s, neuron_s), zero, zero,
                            torch.zeros(2, 2, dtype=torch.long), runs, budget=1.0)
    assert out[3] == 0
    nh, nn_, nd, count = project_to_budget(COST, (head_s, dim_s, neuron_s), zero, zero,
                                           torch.zeros(2, 2, dtype=torch.long), runs, budget=0.0)
    assert (nh.tolist(), nn_.tolist(), nd.tolist()) == ([1, 0], [15, 0], [[0, 3], [0, 0]])


def _old_greedy(cost, scores, nh, nn_, nd, runs, budget, multiple):
    """The end-of-search projection as UVCClassifier.project_to_budget did it before: every
    group rescored after each removal (the reference of the faster one)."""
    head_s, dim_s, neuron_s = scores
    H, F, hd = cost.num_heads, cost.mlp_dims, cost.head_dims
    n, c = cost.num_tokens, cost.embed_dims
    nh, nn_, nd = nh.clone(), nn_.clone(), nd.clone()
    removed, order = 0, []
    while True:
        masks = uvc_masks(head_s, dim_s, neuron_s, nh, nd, nn_)
        if float(uvc_flops_fraction(cost, nh.float(), nn_.float(), nd.float(), masks.heads,
                                    runs.float())) <= budget:
            break
        inf = torch.tensor(float('inf'))
        sorted_h, order_h = torch.sort(head_s, dim=-1, stable=True)
        k = nh.clamp(max=H - 1)
        nxt_h = order_h.gather(-1, k.unsqueeze(-1)).squeeze(-1)
        v_kept = masks.dims.sum(-1).gather(-1, nxt_h.unsqueeze(-1)).squeeze(-1).double()
        saved_h = n * c * (2 * hd + v_kept) + n * n * (hd + v_kept) + n * v_kept * c
        cost_h = (sorted_h.gather(-1, k.unsqueeze(-1)).squeeze(-1).double()
                  / head_s.mean(-1).double().clamp(min=1e-12) / saved_h)
        cost_h[(nh + 1 > H - 1 - 1e-8 + 1e-8) | ~runs] = inf
        sorted_n, _ = torch.sort(neuron_s, dim=-1)
        kn = nn_.clamp(max=F - 1)
        cost_n = (sorted_n.gather(-1, kn.unsqueeze(-1)).squeeze(-1).double()
                  / neuron_s.mean(-1).double().clamp(min=1e-12) / (2 * n * c))
        cost_n[(nn_ + 1 > F - 1 - 1e-8 + 1e-8) | ~runs] = inf
        sorted_d, _ = torch.sort(dim_s, dim=-1)
        kd = nd.clamp(max=hd - 1)
        cost_d = (sorted_d.gather(-1, kd.unsqueeze(-1)).squeeze(-1).double()
                  / dim_s.mean((-1, -2)).double().clamp(min=1e-12).unsqueeze(-1)
                  / (2 * n * c + n * n))
        cost_d[(nd + 1 > hd - 1 - 1e-8 + 1e-8) | ~masks.heads | ~runs.unsqueeze(-1)] = inf
        best = [(cost_h.min(), 0, cost_h.argmin()), (cost_n.min(), 1, cost_n.argmin()),
                (cost_d.min(), 2, cost_d.argmin())]
        value, kind, idx = min(best, key=lambda t: float(t[0]))
        if not torch.isfinite(value):
            break
        (nh, nn_, nd)[kind].view(-1)[idx] += 1
        order.append((kind, int(idx)))
        removed += 1
    if multiple > 1:
        masks = uvc_masks(head_s, dim_s, neuron_s, nh, nd, nn_)
        for counts, kept, keep in ((nn_, F - nn_, runs),
                                   (nd, hd - nd, masks.heads & runs[:, None])):
            extra = torch.where(keep & (kept > multiple), kept % multiple,
                                torch.zeros_like(kept))
            counts += extra
            removed += int(extra.sum())
    return nh, nn_, nd, removed, order


@pytest.mark.parametrize('seed', range(4))
def test_projection_equals_the_old_greedy_order(seed):
    """On random scores with ties (a few distinct values), random starting architectures and
    skipped blocks, the incremental projection ends where the old rescore-everything greedy
    does, at every budget on the way down (so it removes the groups in the same order)."""
    cost = ViTCost(num_layers=4, num_tokens=9, embed_dims=12, num_heads=3, head_dims=4,
                   mlp_dims=20, fixed_macs=50.0, norm_macs=2 * 5 * 9 * 12)
    g = torch.Generator().manual_seed(seed)
    dim_s = torch.randint(1, 4, (4, 3, 4), generator=g).float() / 2
    scores = (dim_s.sum(-1), dim_s, torch.randint(1, 5, (4, 20), generator=g).float() / 3)
    nh = torch.randint(0, 2, (4, ), generator=g)
    nn_ = torch.randint(0, 8, (4, ), generator=g)
    nd = torch.randint(0, 3, (4, 3), generator=g)
    runs = torch.tensor([True, True, False, True])
    _, _, _, total, order = _old_greedy(cost, scores, nh, nn_, nd, runs, 0.0, 1)
    assert total == len(order) > 20
    for budget in torch.linspace(0.0, 1.0, 41).tolist():
        for multiple in (1, 4):
            *old, _ = _old_greedy(cost, scores, nh, nn_, nd, runs, budget, multiple)
            new = project_to_budget(cost, scores, nh, nn_, nd, runs, budget, multiple)
            assert [t.tolist() for t in new[:3]] + [new[3]] == \
                [t.tolist() for t in old[:3]] + [old[3]], (budget, multiple)
