"""DynamicViT's token ops (mmsparse.ops.tokens) against hand-computed cases."""
import math

import pytest
import torch

from mmsparse.ops.tokens import (batch_index_select, cumulative_keep_ratios, gumbel_keep_decision,
                                 keep_counts, keep_ratio_loss, masked_token_mse,
                                 policy_weighted_mean, random_keep_decision, select_topk_tokens,
                                 softmax_with_policy)


def test_keep_counts_deit_small():
    ratios = cumulative_keep_ratios(0.7, 3)
    assert ratios == pytest.approx([0.7, 0.49, 0.343])
    assert keep_counts(196, ratios) == [137, 96, 67]  # the original's int(196 * ratio)
    assert keep_counts(49, ratios) == [34, 24, 16]
    with pytest.raises(ValueError, match='keeps int'):
        keep_counts(49, [0.5, 0.01])
    with pytest.raises(ValueError, match=r'keep_rate must be in \(0, 1\]'):
        cumulative_keep_ratios(0.0, 3)


def test_masked_softmax_hand_case():
    # T = 3, equal logits, token 1 dropped: queries 0 and 2 attend to {0, 2}; query 1 still
    # attends to itself, so to {0, 1, 2}.
    attn = torch.zeros(1, 1, 3, 3)
    out = softmax_with_policy(attn, torch.tensor([[1., 0., 1.]]))
    expected = torch.tensor([[.5, 0., .5], [1 / 3, 1 / 3, 1 / 3], [.5, 0., .5]])
    torch.testing.assert_close(out[0, 0], expected, atol=1e-6, rtol=0)


def test_masked_softmax_equals_softmax_on_kept_set():
    g = torch.Generator().manual_seed(0)
    B, H, T = 2, 3, 7
    attn = torch.randn(B, H, T, T, generator=g) * 4
    policy = torch.tensor([[1., 1., 0., 1., 0., 0., 1.], [1., 0., 0., 0., 1., 1., 0.]])
    out = softmax_with_policy(attn, policy)
    for b in range(B):
        for i in range(T):
            kept = [j for j in range(T) if policy[b, j] > 0 or j == i]
            ref = torch.zeros(H, T)
            ref[:, kept] = attn[b, :, i, kept].softmax(dim=-1)
            torch.testing.assert_close(out[b, :, i], ref, atol=2e-6, rtol=0)
    # a policy of ones is the plain softmax
    torch.testing.assert_close(softmax_with_policy(attn, torch.ones(B, T)), attn.softmax(-1),
                               atol=2e-6, rtol=0)


def _reference_policy_softmax(attn, policy, eps=1e-6, max_gap=None):
    # the formula by plain autograd (float64), for the hand-written backward
    B, _, T, _ = attn.shape
    p = policy.reshape(B, 1, 1, T)
    g = p + (1 - p) * torch.eye(T, dtype=attn.dtype).view(1, 1, T, T)
    m = attn.masked_fill(g <= 0, float('-inf')).amax(-1, keepdim=True).detach()
    gap = attn - m if max_gap is None else (attn - m).clamp(max=max_gap)
    e = torch.exp(gap) * g
    return (e + eps / T) / (e.sum(-1, keepdim=True) + eps)


@pytest.mark.parametrize('max_gap', [0.0, 2.0, 40.0])
def test_masked_softmax_gradients_match_autograd(max_gap):
    g = torch.Generator().manual_seed(3)
    attn = (torch.randn(2, 3, 9, 9, generator=g) * 3).double().requires_grad_(True)
    policy = (torch.rand(2, 9, generator=g) > 0.5).double()
    policy[:, 0] = 1
    policy.requires_grad_(True)
    w = torch.randn(2, 3, 9, 9, generator=g).double()
    out = softmax_with_policy(attn, policy, max_gap=max_gap)
    (out * w).sum().backward()
    got = attn.grad.clone(), policy.grad.clone()
    attn.grad = policy.grad = None
    # the exact formula (max_gap 40 never binds here) and the clipped one agree in value;
    # the gradients are those of the clipped formula
    ref = _reference_policy_softmax(attn, policy, max_gap=None if max_gap > 30 else max_gap)
    torch.testing.assert_close(out, ref.detach().float().double(), atol=1e-6, rtol=0)
    (ref * w).sum().backward()
    torch.testing.assert_close(got[0], attn.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[1], policy.grad, atol=1e-5, rtol=1e-4)


def test_masked_softmax_no_nan_when_everything_is_dropped():
    # every patch token dropped, dropped keys with huge logits: each query attends to the class
    # token and itself, in fp32 and in half precision inputs.
    T = 5
    attn = torch.full((1, 2, T, T), -50.0)
    attn[..., 3] = 1e4  # a dropped key far above all others
    policy = torch.tensor([[1., 0., 0., 0., 0.]])
    for dtype in (torch.float32, torch.bfloat16):
        out = softmax_with_policy(attn.to(dtype), policy).float()
        assert torch.isfinite(out).all()
        assert out[0, 0, 0, 0] == pytest.approx(1.0, abs=1e-5)
        assert out[0, 0, 2, 0] == pytest.approx(0.5, abs=1e-2)
        assert out[0, 0, 2, 2] == pytest.approx(0.5, abs=1e-2)
        assert out[0, 0, 2, 3] < 1e-5
    # and gradients reach the policy, finite
    p = policy.clone().requires_grad_(True)
    a = torch.randn(1, 2, T, T, requires_grad=True)
    (softmax_with_policy(a, p) * torch.randn(1, 2, T, T)).sum().backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert torch.isfinite(a.grad).all()


def _original_formula(attn, policy, eps=1e-6, detach_max=False):
    # the original's Attention.softmax_with_policy (raoyongming/DynamicViT models/dyvit.py) as a
    # formula, by plain autograd: G from the (B, T, 1) policy in its dtype; the shift is the
    # maximum over ALL keys, taken in attn's dtype and differentiable (torch.max's gradient goes
    # to the arg-max); exp and normalisation in float32; the result back in attn's dtype
    B, _, T, _ = attn.shape
    G = policy.reshape(B, 1, 1, T)
    G = G + (1.0 - G) * torch.eye(T, dtype=G.dtype).view(1, 1, T, T)
    top, _ = torch.max(attn, dim=-1, keepdim=True)
    top = top.detach() if detach_max else top
    x = torch.exp((attn - top).to(torch.float32)) * G.to(torch.float32)
    return ((x + eps / T) / (x.sum(dim=-1, keepdim=True) + eps)).to(attn.dtype)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_original_policy_softmax_values_and_gradients(dtype):
    g = torch.Generator().manual_seed(5)
    B, H, T = 2, 3, 9
    attn = torch.randn(B, H, T, T, generator=g) * 4
    attn[0, :, :, 4] += 20.0  # a dropped key far above the kept ones (where the two differ)
    policy = (torch.rand(B, T, 1, generator=g) > 0.5).float()
    policy[:, 0] = 1
    policy[0, 4] = 0
    policy[1, 2] = 0.3  # a soft value too
    w = torch.randn(B, H, T, T, generator=g).to(dtype)
    results = []
    for fn in (lambda a, p: softmax_with_policy(a, p, max_gap=None), _original_formula):
        a = attn.to(dtype).clone().requires_grad_(True)
        p = policy.to(dtype).clone().requires_grad_(True)
        out = fn(a, p)
        (out * w).sum().backward()
        results.append((out.detach(), a.grad, p.grad))
    (out, ga, gp), (ref, ref_ga, ref_gp) = results
    assert out.dtype == dtype
    # (float32 rounding: G is formed in float32 here, in the policy's dtype there)
    torch.testing.assert_close(out, ref, atol=1e-7, rtol=1e-6)
    # both run exp and normalisation in float32, as the original, in another order of
    # operations: the logit gradients (up to ~0.6 here) differ by float32 rounding (~2e-7)
    torch.testing.assert_close(ga, ref_ga, atol=5e-7, rtol=1e-5)
    torch.testing.assert_close(gp, ref_gp, atol=1e-7, rtol=1e-5)
    assert torch.isfinite(gp).all()
    # the maximum's gradient is part of it: where eps dominates (the rows of sample 0, whose
    # dropped key 4 lies ~20 above the kept ones) the output depends on the shift, and a
    # detached maximum would give other gradients at the arg-max
    a = attn.to(dtype).clone().requires_grad_(True)
    (_original_formula(a, policy.to(dtype), detach_max=True) * w).sum().backward()
    assert (a.grad[0, ..., 4] - ga[0, ..., 4]).abs().max() > 1e-3


def test_original_and_capped_policy_softmax_hand_case():
    # T = 3, one query row with logits [0, 0, 20], key 2 dropped. The original shifts by 20, so
    # the kept terms are exp(-20) = 2.1e-9, far below eps = 1e-6: the row tends to 1/3 on every
    # key, the dropped one included, and key 2's policy gradient is ~exp(0) / eps. Shifted by the
    # kept maximum (max_gap given), the row is the softmax over the kept keys.
    attn = torch.tensor([0.0, 0.0, 20.0]).expand(1, 1, 3, 3).clone()
    policy = torch.tensor([[1.0, 1.0, 0.0]])
    e, eps = math.exp(-20.0), 1e-6
    z = 2 * e + eps
    orig = softmax_with_policy(attn, policy, max_gap=None)[0, 0, 0]
    expected = torch.tensor([(e + eps / 3) / z, (e + eps / 3) / z, (eps / 3) / z])
    torch.testing.assert_close(orig, expected, atol=1e-6, rtol=0)
    assert orig[2] > 0.33
    capped = softmax_with_policy(attn, policy, max_gap=0.0)[0, 0, 0]
    torch.testing.assert_close(capped, torch.tensor([0.5, 0.5, 0.0]), atol=1e-6, rtol=0)
    # dL/dp_2 for L = A[0, 0, 0, 0]: the original's is ~1e5 times the capped one's
    grads = []
    for gap in (None, 0.0):
        p = policy.clone().requires_grad_(True)
        softmax_with_policy(attn, p, max_gap=gap)[0, 0, 0, 0].backward()
        grads.append(p.grad[0, 2].abs().item())
    assert grads[0] > 1e4 * grads[1] > 0


def test_batch_index_select_and_topk_gather():
    x = torch.arange(2 * 5 * 2, dtype=torch.float32).view(2, 5, 2)  # cls + 4 patch tokens
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.8, 0.2, 0.1, 0.95]])
    out, idx = select_topk_tokens(x, scores, 2)
    assert idx.tolist() == [[1, 2], [3, 0]]  # best first
    # cls, then patch tokens 1 and 2 (= tokens 2, 3 of x) / 3 and 0 (= tokens 4, 1)
    torch.testing.assert_close(out[0], x[0, [0, 2, 3]])
    torch.testing.assert_close(out[1], x[1, [0, 4, 1]])
    torch.testing.assert_close(batch_index_select(scores, idx),
                               torch.tensor([[0.9, 0.5], [0.95, 0.8]]))
    with pytest.raises(ValueError):
        select_topk_tokens(x, scores, 5)


def test_gumbel_decisions_are_hard_monotone_and_differentiable():
    torch.manual_seed(0)
    B, N = 4, 50
    logits = torch.randn(B, N, 2, requires_grad=True)
    log_probs = logits.log_softmax(-1)
    prev = (torch.rand(B, N) > 0.3).float()
    d = gumbel_keep_decision(log_probs, prev)
    assert set(d.detach().unique().tolist()) <= {0.0, 1.0}
    assert (d.detach()[prev == 0] == 0).all()  # dropped stays dropped
    (d * torch.randn(B, N)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # a certain "keep" keeps exactly the previous decision; a certain "drop" drops all
    sure_keep = torch.tensor([0.0, -1e4]).expand(B, N, 2)
    torch.testing.assert_close(gumbel_keep_decision(sure_keep, prev), prev)
    sure_drop = torch.tensor([-1e4, 0.0]).expand(B, N, 2)
    assert gumbel_keep_decision(sure_drop, prev).sum() == 0
    # keep probability p: the fraction kept is ~p (p = 0.7, 20k draws)
    lp = torch.tensor([math.log(0.7), math.log(0.3)]).expand(1, 20000, 2)
    assert gumbel_keep_decision(lp).mean().item() == pytest.approx(0.7, abs=0.02)


def test_random_keep_decision_exact_counts():
    g = torch.Generator().manual_seed(1)
    prev = torch.zeros(3, 10)
    prev[:, :7] = 1
    d = random_keep_decision(prev, 4, generator=g)
    assert d.sum(1).tolist() == [4, 4, 4]
    assert (d[prev == 0] == 0).all()


def test_ratio_loss_and_weighted_mean_and_token_mse():
    d1 = torch.tensor([[1., 1., 0., 0.], [1., 1., 1., 1.]])
    d2 = torch.tensor([[1., 0., 0., 0.], [0., 0., 0., 0.]])
    # stage 1 target 0.5: (0.5-0.5)^2=0, (1-0.5)^2=0.25 -> 0.125; stage 2 target 0.25:
    # 0 and 0.0625 -> 0.03125; mean of the stages: 0.078125
    assert keep_ratio_loss([d1, d2], [0.5, 0.25]).item() == pytest.approx(0.078125)
    with pytest.raises(ValueError):
        keep_ratio_loss([d1], [0.5, 0.25])

    x = torch.tensor([[[1., 2.], [3., 4.], [5., 6.]]])
    torch.testing.assert_close(policy_weighted_mean(x, torch.tensor([[1., 0., 1.]])),
                               torch.tensor([[[3., 4.]]]))
    torch.testing.assert_close(policy_weighted_mean(x), torch.tensor([[[3., 4.]]]))
    torch.testing.assert_close(policy_weighted_mean(x, torch.zeros(1, 3)), torch.zeros(1, 1, 2))

    s = torch.tensor([[[1., 1.], [2., 2.], [0., 0.]]])
    t = torch.tensor([[[0., 0.], [0., 0.], [9., 9.]]])
    # kept tokens 0 and 1: squared errors 1, 1, 4, 4 -> mean 2.5; token 2 is ignored
    assert masked_token_mse(s, t, torch.tensor([[1., 1., 0.]])).item() == pytest.approx(2.5)
    assert masked_token_mse(s, t, torch.zeros(1, 3)).item() == 0.0
