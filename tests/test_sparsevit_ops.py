"""SparseViT window ops against hand-computed cases: partition / reverse with padding and shift,
the SW-MSA mask, window scores, keep counts, top-k, gather / scatter, window-ratio grouping."""
import pytest
import torch

from mmsparse.ops.windows import (RATIO_GROUP_SIZE, expand_group_ratios, from_windows,
                                  gather_windows, is_non_decreasing, kept_token_positions,
                                  num_kept_windows, num_ratio_groups, pad_to_window_multiple,
                                  per_block_ratios, scatter_windows, shifted_window_attn_mask,
                                  to_windows, token_activation, topk_windows, window_partition,
                                  window_reverse, window_scores, window_token_index)


def grid(h, w, start=0):
    """(1, h, w, 1) map whose value is the token's flat position (+ start)."""
    return (torch.arange(h * w) + start).view(1, h, w, 1).float()


def test_partition_and_reverse_4x4():
    x = grid(4, 4)
    win = window_partition(x, 2)
    assert win.shape == (1, 4, 4, 1)
    assert win[0, :, :, 0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13],
                                        [10, 11, 14, 15]]
    assert torch.equal(window_reverse(win, 4, 4, 2), x)
    with pytest.raises(ValueError, match='not a multiple'):
        window_partition(grid(3, 4), 2)


def test_to_windows_pads_right_and_bottom():
    x = grid(3, 3, start=1)  # values 1..9, pad = 0
    padded, pads = pad_to_window_multiple(x, 2)
    assert pads == (1, 1) and padded.shape == (1, 4, 4, 1)
    win = to_windows(x, 2)
    assert win[0, :, :, 0].tolist() == [[1, 2, 4, 5], [3, 0, 6, 0], [7, 8, 0, 0], [9, 0, 0, 0]]
    assert torch.equal(from_windows(win, (3, 3), 2), x)


def test_to_windows_shift_rolls_up_left():
    x = grid(4, 4)
    win = to_windows(x, 2, shift=1)
    # rolled[r, c] = x[(r + 1) % 4, (c + 1) % 4]
    assert win[0, :, :, 0].tolist() == [[5, 6, 9, 10], [7, 4, 11, 8], [13, 14, 1, 2],
                                        [15, 12, 3, 0]]
    assert torch.equal(from_windows(win, (4, 4), 2, shift=1), x)


def test_pad_then_shift_round_trip():
    x = torch.randn(2, 5, 8, 3)
    for shift in (0, 1):
        win = to_windows(x, 3, shift)
        assert win.shape == (2, 2 * 3, 9, 3)
        assert torch.equal(from_windows(win, (5, 8), 3, shift), x)


def test_shifted_window_mask_4x4():
    assert shifted_window_attn_mask((4, 4), 2, 0) is None
    mask = shifted_window_attn_mask((4, 4), 2, 1)
    assert mask.shape == (4, 4, 4)
    # regions (rows x cols, each split [0:2], [2], [3]): window 0 lies in one region
    assert mask[0].eq(0).all()
    # window 1 = rows 0-1, cols 2-3: tokens alternate regions 1, 2, 1, 2
    same = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask[1], torch.where(same, 0.0, -100.0))
    # window 3 = rows 2-3, cols 2-3: four regions 4, 5, 7, 8, so only the diagonal attends
    assert torch.equal(mask[3], torch.where(torch.eye(4, dtype=torch.bool), 0.0, -100.0))


def test_window_scores_l2_of_mean_abs_with_padding():
    tokens = torch.tensor([[[3., -3.], [4., 4.], [0., 0.],
                            [0., 0.], [0., 0.], [1., -1.],
                            [2., 2.], [0., 0.], [0., 0.]]])  # (1, 9, 2): a 3x3 map
    act = token_activation(tokens)
    assert act.tolist() == [[3, 4, 0, 0, 0, 1, 2, 0, 0]]
    scores = window_scores(act, (3, 3), 2)
    # windows [3,4,0,0], [0,pad,1,pad], [2,0,pad,pad], [0,pad,pad,pad]
    torch.testing.assert_close(scores, torch.tensor([[5., 1., 2., 0.]]))
    shifted = window_scores(act, (3, 3), 2, shift=1)
    # padded 4x4 rolled by (-1, -1): window 0 = act[1,1], act[1,2], act[2,1], act[2,2] = 0,1,0,0
    assert shifted[0, 0].item() == pytest.approx(1.0)
    # the tokens are the same, only grouped differently: the squared scores sum to the same
    torch.testing.assert_close(scores.pow(2).sum(), shifted.pow(2).sum())


@pytest.mark.parametrize('nw,ratio,keep', [(576, 0.0, 576), (576, 0.7, 172), (576, 0.3, 403),
                                           (36, 0.2, 28), (36, 0.4, 21), (36, 0.5, 18),
                                           (49, 0.5, 24), (10, 0.3, 7), (4, 0.8, 1),
                                           (1, 0.5, 1)])
def test_num_kept_windows(nw, ratio, keep):
    assert num_kept_windows(nw, ratio) == keep


@pytest.mark.parametrize('ratio', [1.0, -0.1, 1.5])
def test_num_kept_windows_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError, match=r'\[0, 1\)'):
        num_kept_windows(10, ratio)


def test_topk_windows_best_first_and_prefix():
    scores = torch.tensor([[1., 5., 3., 4.], [9., 0., 8., 7.]])
    assert topk_windows(scores, 3).tolist() == [[1, 3, 2], [0, 2, 3]]
    assert torch.equal(topk_windows(scores, 2), topk_windows(scores, 3)[:, :2])
    with pytest.raises(ValueError):
        topk_windows(scores, 5)


def test_window_token_index_pad_and_shift():
    index, valid = window_token_index((3, 3), 2)
    assert index.tolist() == [[0, 1, 3, 4], [2, 0, 5, 0], [6, 7, 0, 0], [8, 0, 0, 0]]
    assert valid.tolist() == [[True] * 4, [True, False, True, False],
                              [True, True, False, False], [True, False, False, False]]
    index, valid = window_token_index((4, 4), 2, shift=1)
    assert valid is None
    assert index.tolist() == [[5, 6, 9, 10], [7, 4, 11, 8], [13, 14, 1, 2], [15, 12, 3, 0]]


def test_kept_token_positions_offset_per_image():
    index, _ = window_token_index((4, 4), 2)
    pos = kept_token_positions(index, torch.tensor([[3], [0]]), 16)
    assert pos.tolist() == [[[10, 11, 14, 15]], [[16, 17, 20, 21]]]


@pytest.mark.parametrize('hw,ws,shift', [((4, 4), 2, 0), ((4, 4), 2, 1), ((5, 7), 3, 0),
                                         ((5, 7), 3, 1), ((9, 9), 7, 3)])
def test_gather_equals_partition_of_kept_windows(hw, ws, shift):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, hw[0] * hw[1], 3, generator=gen)
    index, valid = window_token_index(hw, ws, shift)
    nw = index.shape[0]
    idx = torch.stack([torch.randperm(nw, generator=gen)[:max(1, nw // 2)] for _ in range(2)])
    got = gather_windows(x, index, idx)
    ref = to_windows(x.view(2, *hw, 3), ws, shift)
    for b in range(2):
        want = ref[b, idx[b]]
        if valid is not None:
            mask = valid[idx[b]].unsqueeze(-1)
            assert torch.equal(got[b] * mask, want)  # pad tokens of `ref` are 0
        else:
            assert torch.equal(got[b], want)


def test_scatter_writes_only_kept_windows():
    x = torch.zeros(1, 16, 1)
    index, valid = window_token_index((4, 4), 2)
    out = scatter_windows(x, torch.ones(1, 1, 4, 1), index, torch.tensor([[2]]), valid)
    assert out.view(4, 4).tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert x.eq(0).all()  # out of place


def test_scatter_with_padding_drops_pad_tokens():
    # window 1 of a 3x3 map (ws 2) holds tokens 2 and 5 and two pad tokens
    x = torch.arange(9.).view(1, 9, 1)
    index, valid = window_token_index((3, 3), 2)
    out = scatter_windows(x, torch.full((1, 1, 4, 1), -1.), index, torch.tensor([[1]]), valid)
    assert out.view(-1).tolist() == [0., 1., -1., 3., 4., -1., 6., 7., 8.]


def test_gather_scatter_round_trip_and_gradients():
    x = torch.randn(2, 35, 4, requires_grad=True)
    index, valid = window_token_index((5, 7), 3, shift=1)
    idx = torch.tensor([[0, 5, 2], [4, 1, 3]])
    win = gather_windows(x, index, idx)
    assert torch.equal(scatter_windows(x, win, index, idx, valid), x)
    out = scatter_windows(x, win * 2, index, idx, valid)
    out.sum().backward()
    # kept tokens: d(2x)/dx = 2 (each real token appears once); pruned tokens: identity, 1
    kept = torch.zeros(2, 35, dtype=torch.bool)
    for b in range(2):
        kept[b, index[idx[b]][valid[idx[b]]]] = True
    assert torch.equal(x.grad[..., 0], torch.where(kept, 2.0, 1.0))


# ------------------------------------------------------------------ window-ratio grouping
def test_ratio_groups_are_w_msa_sw_msa_pairs():
    assert RATIO_GROUP_SIZE == 2
    assert [num_ratio_groups(d) for d in (2, 2, 6, 2)] == [1, 1, 3, 1]
    assert num_ratio_groups(6, 3) == 2 and num_ratio_groups(5, 1) == 5
    for depth, size in ((3, 2), (4, 3), (4, 0)):
        with pytest.raises(ValueError, match='does not divide'):
            num_ratio_groups(depth, size)


def test_expand_group_ratios_repeats_each_group():
    assert expand_group_ratios([0.2, 0.4, 0.5]) == [0.2, 0.2, 0.4, 0.4, 0.5, 0.5]
    assert expand_group_ratios([0.1, 0.3], 3) == [0.1, 0.1, 0.1, 0.3, 0.3, 0.3]
    out = expand_group_ratios([0, 1])
    assert out == [0.0, 0.0, 1.0, 1.0] and all(type(r) is float for r in out)


def test_per_block_ratios_takes_one_per_block_or_one_per_pair():
    assert per_block_ratios([0.5, 0.75], 2) == [0.5, 0.75]  # one per block: pairs may differ
    assert per_block_ratios([0.5], 2) == [0.5, 0.5]
    assert per_block_ratios([0.2, 0.4, 0.5], 6) == [0.2, 0.2, 0.4, 0.4, 0.5, 0.5]
    assert per_block_ratios([0.1, 0.2, 0.3], 3) == [0.1, 0.2, 0.3]
    assert per_block_ratios([0.1], 3) is None  # an odd stage has no pairs
    assert per_block_ratios([0.1, 0.2], 6) is None


def test_is_non_decreasing():
    assert is_non_decreasing([]) and is_non_decreasing([0.3])
    assert is_non_decreasing([0.0, 0.2, 0.2, 0.5])
    assert not is_non_decreasing([0.2, 0.1])
