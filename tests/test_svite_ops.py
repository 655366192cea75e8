"""SViTE's pure ops against hand-computed cases: ERK densities (METHODS 1.2's table), death and
growth rules, the death-rate cosine, head Taylor scores, neuron L1 scores, structured
prune/regrow, mask packing, Gumbel top-k with straight-through gradients."""
import math

import pytest
import torch

from mmsparse.ops import dst
from mmsparse.ops.tokens import gumbel_topk_st, topk_indices
from mmsparse.ops.tokens import keep_count as token_keep_count


def deit_shapes(C: int, depth: int = 12, num_classes: int = 1000, patch: int = 16) -> dict:
    shapes = {'patch_embed': (C, 3, patch, patch)}
    for i in range(depth):
        shapes[f'{i}.qkv'] = (3 * C, C)
        shapes[f'{i}.proj'] = (C, C)
        shapes[f'{i}.fc1'] = (4 * C, C)
        shapes[f'{i}.fc2'] = (C, 4 * C)
    shapes['head'] = (num_classes, C)
    return shapes


# METHODS.md 1.2: (model width, density) -> patch_embed, qkv, proj, fc1/fc2, head
ERK_TABLE = [
    (384, 0.4, 0.165, 0.403, 0.604, 0.378, 0.418),   # DeiT-S
    (384, 0.5, 0.206, 0.504, 0.756, 0.472, 0.523),   # DeiT-S
    (768, 0.4, 0.313, 0.399, 0.599, 0.375, 0.530),   # DeiT-B
    (192, 0.5, 0.114, 0.512, 0.768, 0.480, 0.458),   # DeiT-T
]


@pytest.mark.parametrize('C,density,patch,qkv,proj,fc,head', ERK_TABLE)
def test_erk_matches_the_reference_table(C, density, patch, qkv, proj, fc, head):
    shapes = deit_shapes(C)
    d = dst.erk_densities(shapes, density)
    for name, ref in [('patch_embed', patch), ('head', head)]:
        assert d[name] == pytest.approx(ref, abs=1e-3), name
    for i in range(12):
        assert d[f'{i}.qkv'] == pytest.approx(qkv, abs=1e-3)
        assert d[f'{i}.proj'] == pytest.approx(proj, abs=1e-3)
        assert d[f'{i}.fc1'] == pytest.approx(fc, abs=1e-3)
        assert d[f'{i}.fc2'] == pytest.approx(fc, abs=1e-3)
    # the total number of kept weights is the target
    n = {k: math.prod(s) for k, s in shapes.items()}
    assert sum(d[k] * n[k] for k in n) / sum(n.values()) == pytest.approx(density, rel=1e-9)


@pytest.mark.parametrize('C', [192, 384, 768])
def test_erk_at_0_7_makes_every_proj_dense(C):
    shapes = deit_shapes(C)
    d = dst.erk_densities(shapes, 0.7)
    assert all(d[f'{i}.proj'] == 1.0 for i in range(12))
    assert all(v <= 1.0 for v in d.values())
    n = {k: math.prod(s) for k, s in shapes.items()}
    assert sum(d[k] * n[k] for k in n) / sum(n.values()) == pytest.approx(0.7, rel=1e-9)


def test_erk_hand_computed_and_density_one():
    # two layers: (4, 4) r = 8/16 = 0.5, (2, 8) r = 10/16 = 0.625; eps*(0.5*16 + 0.625*16) = 16
    d = dst.erk_densities({'a': (4, 4), 'b': (2, 8)}, 0.5)
    eps = 16 / (0.5 * 16 + 0.625 * 16)
    assert d['a'] == pytest.approx(eps * 0.5) and d['b'] == pytest.approx(eps * 0.625)
    assert dst.erk_densities({'a': (4, 4), 'b': (2, 8)}, 1.0) == {'a': 1.0, 'b': 1.0}
    assert dst.uniform_densities({'a': (4, 4)}, 0.3) == {'a': 0.3}
    for bad in (0, -0.1, 1.5, True, '0.5'):
        with pytest.raises(ValueError, match='density'):
            dst.erk_densities({'a': (4, 4)}, bad)


def test_random_and_magnitude_masks():
    g = torch.Generator().manual_seed(0)
    m = dst.random_mask((100, 50), 0.3, g, exact=True)
    assert m.dtype == torch.bool and int(m.sum()) == 1500
    m2 = dst.random_mask((100, 50), 0.3, torch.Generator().manual_seed(0), exact=True)
    assert torch.equal(m, m2)  # the seed decides
    b = dst.random_mask((200, 200), 0.3, g)
    assert abs(float(b.float().mean()) - 0.3) < 0.02
    w = torch.tensor([[0.1, -3.0], [2.0, -0.5]])
    assert dst.magnitude_mask(w, 0.5).tolist() == [[False, True], [True, False]]


def test_magnitude_death_hand_computed():
    w = torch.tensor([0.9, -0.1, 0.0, 0.5, -0.3, 0.0, 0.7, 0.2])
    mask = torch.tensor([1, 1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    # nnz = 6, rate 0.5 -> remove ceil(3) = 3 smallest active: -0.1, 0.2, -0.3
    out = dst.magnitude_death(w, mask, 0.5)
    assert out.tolist() == [True, False, False, True, False, False, True, False]
    # rate 0.1 -> ceil(0.6) = 1
    assert int(dst.magnitude_death(w, mask, 0.1).sum()) == 5
    # a fully dense layer is left alone, as in the original
    full = torch.ones(8, dtype=torch.bool)
    assert torch.equal(dst.magnitude_death(w, full, 0.5), full)


def test_gradient_and_random_growth_hand_computed():
    mask = torch.tensor([1, 0, 0, 1, 0, 0], dtype=torch.bool)
    grad = torch.tensor([9.0, 0.1, -5.0, 7.0, 2.0, -0.3])
    out = dst.gradient_growth(mask, grad, 2)  # largest |grad| among inactive: -5.0, 2.0
    assert out.tolist() == [True, False, True, True, True, False]
    assert torch.equal(dst.gradient_growth(mask, grad, 0), mask)
    assert int(dst.gradient_growth(mask, grad, 99).sum()) == 6  # clamped
    g = torch.Generator().manual_seed(3)
    r = dst.random_growth(mask, 3, g)
    assert int(r.sum()) == 5 and bool((r & mask).eq(mask).all())


def test_prune_then_grow_keeps_the_count_and_lets_pruned_weights_return():
    torch.manual_seed(0)
    w = torch.randn(64, 32)
    mask = dst.random_mask(w.shape, 0.4, torch.Generator().manual_seed(1), exact=True)
    w = w * mask
    after = dst.magnitude_death(w, mask, 0.3)
    n = int(mask.sum()) - int(after.sum())
    assert n == math.ceil(0.3 * int(mask.sum()))
    grad = torch.zeros_like(w)
    grad[~after & mask] = 10.0  # just-pruned weights have the largest gradient
    new = dst.gradient_growth(after, grad, n)
    assert int(new.sum()) == int(mask.sum())
    assert torch.equal(new, mask)  # they all come back


def test_magnitude_prune_regrow_hand_computed():
    w = torch.tensor([0.9, -0.1, 0.0, 0.5, -0.3, 0.0, 0.7, 0.2])
    mask = torch.tensor([1, 1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    grad = torch.tensor([0.0, 0.0, 4.0, 0.0, 3.0, 1.0, 0.0, 0.5])
    # death as above removes -0.1, -0.3, 0.2 (indices 1, 4, 7); growth takes the 3 inactive
    # entries of largest |grad|: 2 (4.0), 4 (3.0, just removed: it comes back), 5 (1.0)
    after, new = dst.magnitude_prune_regrow(w, mask, 0.5, grad)
    assert after.tolist() == [True, False, False, True, False, False, True, False]
    assert new.tolist() == [True, False, True, True, True, True, True, False]
    # random growth: as many entries, drawn by the generator exactly as random_growth draws
    after, new = dst.magnitude_prune_regrow(w, mask, 0.5, None, torch.Generator().manual_seed(4))
    ref = dst.random_growth(after, 3, torch.Generator().manual_seed(4))
    assert torch.equal(new, ref) and int(new.sum()) == int(mask.sum())


def test_cosine_death_rate():
    assert dst.cosine_death_rate(0, 100, 0.5, 0.005) == pytest.approx(0.5)
    assert dst.cosine_death_rate(100, 100, 0.5, 0.005) == pytest.approx(0.005)
    assert dst.cosine_death_rate(50, 100, 0.5, 0.005) == pytest.approx(0.2525)
    assert dst.cosine_death_rate(500, 100, 0.5, 0.005) == pytest.approx(0.005)  # clamped


def test_head_taylor_scores_hand_computed():
    out = torch.zeros(2, 3, 2, 2)
    grad = torch.zeros(2, 3, 2, 2)
    out[0, 0] = 1.0
    grad[0, 0] = 2.0  # sample 0, head 0: sum(g * o) = 8
    out[1, 0] = -1.0
    grad[1, 0] = 1.0  # sample 1, head 0: |-4| = 4
    grad[:, 2] = -0.5  # head 2: no output, gradient L1 = 2 per sample
    taylor, gnorm = dst.head_taylor_scores(out, grad)
    assert taylor.tolist() == [6.0, 0.0, 0.0]
    assert gnorm.tolist() == [(8.0 + 4.0) / 2, 0.0, 2.0]
    with pytest.raises(ValueError, match='B, H, N, d'):
        dst.head_taylor_scores(out, grad[:, :2])


def test_neuron_l1_scores_and_structured_update():
    fc1 = torch.tensor([[1.0, -1.0], [0.0, 0.0], [0.5, 0.5], [-2.0, 0.0]])  # (F=4, C=2)
    fc2 = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, -1.0, 0.0]])       # (C=2, F=4)
    assert dst.neuron_l1_scores(fc1, fc2).tolist() == [3.0, 0.0, 2.0, 3.0]
    active = torch.tensor([True, False, True, True])
    # rate 0.5 -> n = ceil(1.5) = 2: drop neurons 2 (score 2) and 0 (3; tie with 3 -> lower
    # index not guaranteed, so give distinct scores)
    prune = torch.tensor([3.0, 0.0, 2.0, 4.0])
    grow = torch.tensor([0.1, 5.0, 0.2, 9.0])
    new, n = dst.structured_prune_regrow(active, prune, grow, 0.5)
    assert n == 2
    # after pruning 2 and 0, inactive = {0, 1, 2}; regrow the 2 largest grow: 1 (5.0), 2 (0.2)
    assert new.tolist() == [False, True, True, True]
    assert int(new.sum()) == int(active.sum())
    same, n0 = dst.structured_prune_regrow(active, prune, grow, 0.0)
    assert n0 == 0 and torch.equal(same, active)


def test_init_structured_mask_and_head_rows():
    m = dst.init_structured_mask(6, 0.7, torch.Generator().manual_seed(0))
    assert int(m.sum()) == 4  # int(6 * 0.7), as the original
    with pytest.raises(ValueError, match='0 of 3'):
        dst.init_structured_mask(3, 0.2)
    rows = dst.head_rows_mask(torch.tensor([True, False]), 2)
    assert rows.tolist() == [True, True, False, False] * 3  # Q, K, V blocks


@pytest.mark.parametrize('shape', [(7,), (3, 5), (2, 3, 4, 4), (8,)])
def test_pack_unpack_round_trip(shape):
    m = torch.rand(*shape, generator=torch.Generator().manual_seed(1)) < 0.5
    packed = dst.pack_mask(m)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(m.numel() / 8)
    assert torch.equal(dst.unpack_mask(packed, shape), m)
    assert dst.pack_mask(torch.tensor([True] + [False] * 7)).tolist() == [128]


def test_token_keep_count():
    assert token_keep_count(196, 0.9) == 176  # + class token = the original's 177
    assert token_keep_count(196, 0.7) == 137  # 138
    assert token_keep_count(49, 10) == 10
    for bad in (0, 1.5, 50, 0.001, True, 'x'):
        with pytest.raises(ValueError, match='token_keep'):
            token_keep_count(49, bad)


def test_gumbel_topk_straight_through():
    torch.manual_seed(0)
    logits = torch.randn(3, 10, requires_grad=True)
    mask, idx = gumbel_topk_st(logits, 4, tau=0.5, generator=torch.Generator().manual_seed(0))
    # forward: exactly 4 ones per row (hard), at idx, in ascending order
    assert torch.allclose(mask.sum(-1), torch.full((3,), 4.0))
    assert torch.allclose(torch.gather(mask, 1, idx), torch.ones(3, 4))
    assert bool((idx[:, 1:] > idx[:, :-1]).all())
    # backward: the soft selection's gradient reaches every logit
    w = torch.randn(3, 10)
    (mask * w).sum().backward()
    assert logits.grad is not None and bool((logits.grad != 0).all())
    # without noise it is the deterministic top-k of the logits
    m2, idx2 = gumbel_topk_st(logits.detach(), 4, tau=1.0, noise=False)
    assert torch.equal(idx2, topk_indices(logits.detach(), 4))
    _, idx3 = gumbel_topk_st(logits.detach(), 4, tau=1.0, noise_scale=0.0)
    assert torch.equal(idx3, idx2)  # noise scaled to 0: the inference rule
    with pytest.raises(ValueError, match='tau'):
        gumbel_topk_st(logits, 4, tau=0.0)
