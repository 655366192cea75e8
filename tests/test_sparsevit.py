"""SparseViT backbone, sparsity-aware adaptation hook, configs and tools (CPU, tiny Swin)."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from mmsparse.checkpoint import load_checkpoint_file
from mmsparse.engine.sparsevit_hooks import (DEFAULT_CANDIDATES, SparsityAwareAdaptationHook,
                                             sample_window_ratios)
from mmsparse.errors import ConfigError
from mmsparse.models.sparsevit import (PAPER_WINDOW_RATIOS, KeptWindows, SparseSwinTransformer,
                                       WindowRatioError, convert_official_swin,
                                       normalize_window_ratios)
from mmsparse.ops.windows import to_windows, token_activation, topk_windows, window_scores
from tests.conftest import REPO, ok, run_tool

TINY = dict(embed_dims=32, depths=[2, 2, 4, 2], num_heads=[1, 2, 4, 8], drop_path_rate=0.)
CFG3 = PAPER_WINDOW_RATIOS['cfg3']
TINY_CFG3 = [[0.7, 0.7], [0, 0], [0.2, 0.2, 0.5, 0.5], [0, 0]]  # cfg3 for depths [2, 2, 4, 2]
VOC = REPO / 'configs/sparsevit'


def _randomise(model: nn.Module, seed: int = 0) -> None:
    """Give every parameter (incl. relative position tables, zero at init) random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if p.dim() > 1 else 0.05)
                    + (1.0 if 'norm' in name and name.endswith('weight') else 0.0))


def _tiny_pair(**kw):
    """An mmdet SwinTransformer and a SparseSwinTransformer holding the same random weights."""
    from mmdet.models.backbones.swin import SwinTransformer
    dense = SwinTransformer(**TINY, **kw)
    _randomise(dense)
    dense.eval()
    sparse = SparseSwinTransformer(**TINY, **kw)
    sparse.load_state_dict(dense.state_dict(), strict=True)
    return dense, sparse.eval()


# ------------------------------------------------------------------------ checkpoints / keys
def test_state_dict_keys_equal_mmdet_and_mmseg_swin_t():
    from mmdet.models.backbones.swin import SwinTransformer as DetSwin
    from mmseg.models.backbones.swin import SwinTransformer as SegSwin
    ours = SparseSwinTransformer().state_dict()
    for other in (DetSwin().state_dict(), SegSwin().state_dict()):
        assert list(ours) == list(other)
        for k, v in other.items():
            assert ours[k].shape == v.shape, k
            if k.endswith('relative_position_index'):
                assert torch.equal(ours[k], v), k
    with_pos = SparseSwinTransformer(**TINY, use_abs_pos_embed=True).state_dict()
    assert with_pos['absolute_pos_embed'].shape == (1, 56 * 56, 32)


@pytest.mark.parametrize('hw', [(112, 112), (100, 150)])  # (100, 150): padding in every stage
def test_dense_outputs_equal_mmdet_and_mmseg_exactly(hw):
    from mmseg.models.backbones.swin import SwinTransformer as SegSwin
    dense, sparse = _tiny_pair()
    seg = SegSwin(**TINY)
    seg.load_state_dict(dense.state_dict())
    seg.eval()
    sparse.window_ratios = [[0, 0], [0, 0], [0, 0, 0, 0], [0, 0]]
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        ref, got, ref_seg = dense(x), sparse(x), seg(x)
    assert len(got) == 4
    for a, b, c in zip(ref, got, ref_seg):
        assert torch.equal(a, b) and torch.equal(c, b)


def test_dense_swin_layers_equal_mmdet_exactly():
    from mmsparse.models.layers.swin import SwinTransformer
    dense, sparse = _tiny_pair()
    ours = SwinTransformer(**TINY)
    ours.load_state_dict(dense.state_dict(), strict=True)
    ours.eval()
    assert list(ours.state_dict()) == list(sparse.state_dict())
    x = torch.randn(1, 3, 100, 150)  # padding in every stage
    with torch.no_grad():
        for a, b in zip(dense(x), ours(x)):
            assert torch.equal(a, b)


@pytest.mark.parametrize('kwargs,match', [
    (dict(num_heads=[1, 2, 4]), r'model\.backbone\.num_heads \(1, 2, 4\) must have one entry'),
    (dict(strides=(4, 2, 2)), r'model\.backbone\.strides \(4, 2, 2\) must have one entry'),
    (dict(strides=(2, 2, 2, 2)), r'model\.backbone\.strides\[0\] must equal patch_size 4'),
    (dict(out_indices=(0, 4)), r'model\.backbone\.out_indices\[1\] must be an integer'),
    (dict(depths=[2, 0, 4, 2]), r'model\.backbone\.depths\[1\] must be an integer >= 1'),
    (dict(window_size=0), r'model\.backbone\.window_size must be an integer >= 1'),
    (dict(pretrain_img_size=(1, 2, 3)), r'model\.backbone\.pretrain_img_size must be an int'),
    (dict(pretrained=3), r'model\.backbone\.pretrained must be a str or None'),
    (dict(pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='b.pth')),
     r'model\.backbone\.pretrained and init_cfg cannot'),
])
def test_bad_arch_arguments_fail_naming_the_key(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SparseSwinTransformer(**{**TINY, **kwargs})


def test_checkpoint_fitting_strips_prefixes_and_resizes_position_tables():
    from mmsparse.models.layers.swin_weights import adapt_swin_state_dict
    own = SparseSwinTransformer(**TINY).state_dict()
    table = 'stages.1.blocks.0.attn.w_msa.relative_position_bias_table'  # 2 heads
    assert own[table].shape == (13 * 13, 2)
    heads = torch.tensor([[1.0, 3.0]])
    src = {'module.' + table: heads.expand(9 * 9, 2),  # window 5: 9x9 offsets
           'module.stages.2.blocks.0.attn.w_msa.relative_position_bias_table': torch.zeros(169, 5),
           'module.absolute_pos_embed': torch.zeros(1, 4, 32),
           'module.norm0.weight': torch.ones(32)}
    out = adapt_swin_state_dict(src, own)
    assert list(out) == [table, 'norm0.weight']  # other head count / no pos embed: dropped
    # resized per head to window 7's 13x13 offsets (bicubic keeps a constant table constant)
    torch.testing.assert_close(out[table], heads.expand(169, 2))
    det = adapt_swin_state_dict({'backbone.norm0.weight': torch.ones(32),
                                 'neck.conv.weight': torch.zeros(1)}, own)
    assert list(det) == ['norm0.weight']


@pytest.mark.parametrize('hw', [(14, 14), (10, 17), (9, 9)])
def test_sparse_block_with_all_windows_equals_dense_block(hw):
    _, model = _tiny_pair()
    for block in model.stages[0].blocks:  # W-MSA and SW-MSA
        shift = block.shift_size
        x = torch.randn(2, hw[0] * hw[1], 32)
        nw = to_windows(x.view(2, *hw, 32), 7, shift).shape[1]
        idx = torch.stack([torch.randperm(nw), torch.randperm(nw)])  # any order
        kept = KeptWindows.build(idx, hw, 7, shift)
        with torch.no_grad():
            torch.testing.assert_close(block(x, hw, kept), block(x, hw), rtol=1e-5, atol=1e-5)


def test_pruned_windows_pass_through_unchanged():
    _, model = _tiny_pair()
    hw = (10, 17)
    for block in model.stages[0].blocks:
        shift = block.shift_size
        x = torch.randn(2, hw[0] * hw[1], 32)
        idx = torch.tensor([[5, 1], [0, 3]])
        with torch.no_grad():
            out = block(x, hw, KeptWindows.build(idx, hw, 7, shift))
            dense = block(x, hw)
        w_out, w_x, w_dense = (to_windows(t.view(2, *hw, 32), 7, shift) for t in (out, x, dense))
        for b in range(2):
            for w in range(w_out.shape[1]):
                want = w_dense if w in idx[b].tolist() else w_x
                torch.testing.assert_close(w_out[b, w], want[b, w], rtol=1e-5, atol=1e-5)


def test_convert_official_swin_matches_mmdet_and_loads_through_init_cfg(tmp_path):
    from mmdet.models.backbones.swin import SwinTransformer, swin_converter
    ours = SparseSwinTransformer(**TINY)
    gen = torch.Generator().manual_seed(1)
    official = {}
    for k, v in ours.state_dict().items():  # mmdet key -> official key
        k = k.replace('stages', 'layers', 1).replace('attn.w_msa.', 'attn.')
        k = k.replace('ffn.layers.0.0.', 'mlp.fc1.').replace('ffn.layers.1.', 'mlp.fc2.')
        k = k.replace('patch_embed.projection', 'patch_embed.proj')
        official[k] = (torch.randn(v.shape, generator=gen) if v.is_floating_point() else v)
    official['head.weight'] = torch.randn(10, 256)
    converted, ref = convert_official_swin(official), swin_converter(official)
    assert list(converted) == list(ref)
    for k in ref:
        assert torch.equal(converted[k], ref[k]), k
    path = tmp_path / 'official.pth'
    torch.save({'model': official}, path)
    init = dict(type='Pretrained', checkpoint=str(path))
    a = SparseSwinTransformer(**TINY, convert_weights=True, init_cfg=init)
    a.init_weights()
    from mmengine.config import ConfigDict
    b = SwinTransformer(**TINY, convert_weights=True, init_cfg=ConfigDict(init))
    b.init_weights()
    for k, v in b.state_dict().items():
        assert torch.equal(a.state_dict()[k], v), k


def test_loads_detector_and_bare_backbone_checkpoints(tmp_path):
    dense, _ = _tiny_pair()
    state = dense.state_dict()
    det = {'state_dict': {**{'backbone.' + k: v for k, v in state.items()},
                          'neck.conv.weight': torch.zeros(1)}}  # an mmdet Mask R-CNN
    for name, ckpt in (('det.pth', det), ('bare.pth', dict(state))):  # mmseg's pre-training
        torch.save(ckpt, tmp_path / name)
        model = SparseSwinTransformer(**TINY, init_cfg=dict(type='Pretrained',
                                                            checkpoint=str(tmp_path / name)))
        model.init_weights()
        for k, v in state.items():
            assert torch.equal(model.state_dict()[k], v), (name, k)


# ------------------------------------------------------------------------ window ratios
def test_kept_window_counts_scores_and_prefix_reuse():
    _, model = _tiny_pair()
    # 224x224 -> stage maps 56, 28, 14, 7 -> 64, 16, 4, 1 windows per image
    model.window_ratios = [[0.5, 0.75], [0.3, 0.3], [0.25, 0.25, 0.5, 0.5], [0.5, 0.5]]
    model.record_kept_windows()
    stage_inputs = []
    handle = model.stages[0].register_forward_pre_hook(lambda m, a: stage_inputs.append(a[0]))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        model(x)
    handle.remove()
    kept = model.kept_windows
    counts = [[(r['block'], r['shift'], r['num_windows'], r['indices'].shape) for r in s]
              for s in kept]
    assert counts == [
        [(0, 0, 64, (2, 32)), (1, 3, 64, (2, 16))],
        [(0, 0, 16, (2, 11)), (1, 3, 16, (2, 11))],
        [(0, 0, 4, (2, 3)), (1, 3, 4, (2, 3)), (2, 0, 4, (2, 2)), (3, 3, 4, (2, 2))],
        [(0, 0, 1, (2, 1)), (1, 3, 1, (2, 1))],  # at least one window
    ]
    # later blocks of one layout keep a prefix of the first block's windows
    s2 = kept[2]
    assert torch.equal(s2[2]['indices'], s2[0]['indices'][:, :2])
    assert torch.equal(s2[3]['indices'], s2[1]['indices'][:, :2])
    # the kept windows are the top-scoring ones (L2 of mean |x| of the stage input)
    act = token_activation(stage_inputs[0])
    for rec in kept[0]:
        scores = window_scores(act, (56, 56), 7, rec['shift'])
        assert torch.equal(rec['indices'], topk_windows(scores, rec['indices'].shape[1]))
    model.record_kept_windows(False)
    assert model.kept_windows is None


def test_flops_count_the_windows_really_processed():
    from mmsparse.analysis import count_flops
    _, model = _tiny_pair()
    x = torch.randn(1, 3, 224, 224)
    dense = count_flops(model, (x, ))
    model.window_ratios = [[0.5, 0.75], [0, 0], [0, 0, 0, 0], [0, 0]]
    sparse = count_flops(model, (x, ))
    assert sparse.flops < dense.flops
    for block, keep in (('stages.0.blocks.0', 32), ('stages.0.blocks.1', 16)):
        assert sparse.by_module[block] / dense.by_module[block] == pytest.approx(keep / 64,
                                                                                 rel=0.01)
    assert sparse.by_module['stages.1'] == dense.by_module['stages.1']


def test_train_mode_backward_reaches_every_parameter_and_with_cp_agrees():
    grads = []
    x = torch.randn(2, 3, 96, 80)
    for with_cp in (False, True):
        _, model = _tiny_pair(with_cp=with_cp)
        model.window_ratios = TINY_CFG3
        model.train()
        sum(o.square().mean() for o in model(x)).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6)


def test_per_pair_ratios_expand_and_default_is_dense():
    assert normalize_window_ratios([[0.5], [0], [0.1, 0.3], [0.2]], [2, 2, 4, 2]) == (
        (0.5, 0.5), (0.0, 0.0), (0.1, 0.1, 0.3, 0.3), (0.2, 0.2))
    model = SparseSwinTransformer(**TINY)
    assert model.is_dense and model.window_ratios[2] == (0.0, ) * 4
    model.window_ratios = [[0.7], [0], [0.2, 0.4], [0]]
    assert model.window_ratios[2] == (0.2, 0.2, 0.4, 0.4) and not model.is_dense


BAD = [
    ([[0, 0], [0, 0], [0, 0, 0, 0]], 'one list per stage, 4 stages'),
    ([[0, 0], [0, 0, 0], [0, 0, 0, 0], [0, 0]], r'window_ratios\[1\]: stage 1 has 2 blocks'),
    ([[0, 1.0], [0, 0], [0, 0, 0, 0], [0, 0]], r'window_ratios\[0\]\[1\]: 1.0 is outside \[0, 1\)'),
    ([[-0.1, 0], [0, 0], [0, 0, 0, 0], [0, 0]], r'\[0\]\[0\]: -0.1 is outside \[0, 1\)'),
    ([[0, 0], [0, 0], [0.4, 0.4, 0.2, 0.2], [0, 0]], r'\[2\]: ratios must be non-decreasing'),
    ([[0, 0], [0, 0], [0, 'a', 0, 0], [0, 0]], r'\[2\]\[1\]: .a. is not a number'),
    (0.5, 'one list of ratios per stage'),
]


@pytest.mark.parametrize('ratios,match', BAD)
def test_bad_ratios_fail_at_build_naming_the_key(ratios, match):
    import mmsparse  # noqa: F401
    from mmsparse.registry import MODELS
    with pytest.raises(WindowRatioError, match='model.backbone.window_ratios') as err:
        MODELS.build(dict(type='SparseSwinTransformer', window_ratios=ratios, **TINY))
    assert err.match(match)


def test_bad_ratios_on_set_keep_the_old_ones():
    model = SparseSwinTransformer(**TINY, window_ratios=[[0.5], [0], [0.1, 0.3], [0]])
    before = model.window_ratios
    for ratios, match in BAD:
        with pytest.raises(WindowRatioError, match='backbone.window_ratios'):
            model.window_ratios = ratios
    assert model.window_ratios == before


# ------------------------------------------------------------------------ SAA
def test_sample_window_ratios_rule():
    rng = np.random.default_rng([0, 0])
    seen = set()
    for _ in range(200):
        ratios = sample_window_ratios([2, 2, 6, 2], DEFAULT_CANDIDATES, rng)
        assert [len(r) for r in ratios] == [2, 2, 6, 2]
        for stage in ratios:
            assert all(r in DEFAULT_CANDIDATES for r in stage)
            assert stage[0::2] == stage[1::2]  # a W-MSA / SW-MSA pair shares its ratio
            assert stage == sorted(stage)  # non-decreasing (stage 3: 2_1 <= 2_2 <= 2_3)
        seen.add(json.dumps(ratios))
        normalize_window_ratios(ratios, [2, 2, 6, 2])
    assert len(seen) > 150


def test_saa_draws_backbone_ratios_and_search_genomes_share_one_grouping():
    from mmsparse.search import window_ratio_space
    depths = [2, 2, 6, 2]
    space = window_ratio_space(depths, DEFAULT_CANDIDATES)
    hook = SparsityAwareAdaptationHook()
    for it in range(50):
        drawn = hook.ratios_for(it, 7, depths)
        # one gene per W-MSA / SW-MSA pair: the draw is a genome of the search space
        genome = tuple(DEFAULT_CANDIDATES.index(r) for stage in drawn for r in stage[::2])
        assert space.genome_space.is_valid(genome)
        assert space.decode(genome) == drawn
        # and the backbone reads the per-pair form as the same per-block ratios
        pairs = [stage[::2] for stage in drawn]
        assert normalize_window_ratios(pairs, depths) == tuple(map(tuple, drawn))


def test_saa_hook_messages_name_the_full_key():
    prefix = r'custom_hooks\[SparsityAwareAdaptationHook\]\.'
    for kwargs, key in ((dict(candidates=[0, 1.0]), r'candidates\[1\]'),
                        (dict(candidates=[0.5, 0.1]), 'candidates'),
                        (dict(group_size=0), 'group_size'), (dict(seed=-1), 'seed'),
                        (dict(log='yes'), 'log')):
        with pytest.raises(ConfigError, match=prefix + key):
            SparsityAwareAdaptationHook(**kwargs)
    runner = _fake_runner(_Detector(SparseSwinTransformer(**TINY)))
    with pytest.raises(ConfigError, match=prefix + 'group_size 4 must divide every stage'):
        SparsityAwareAdaptationHook(group_size=4).before_run(runner)
    with pytest.raises(WindowRatioError, match=prefix + r'val_ratios: expected one list'):
        SparsityAwareAdaptationHook(val_ratios=[[0.5]]).before_run(runner)


class _Detector(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone(x)


def _fake_runner(model, seed=7):
    from mmengine.logging import MessageHub
    return SimpleNamespace(model=model, iter=0, seed=seed,
                           message_hub=MessageHub.get_instance('test_sparsevit_saa'))


def test_saa_hook_samples_per_iteration_and_restores_fixed_ratios():
    fixed = [[0.3], [0], [0.1, 0.2], [0]]
    model = _Detector(SparseSwinTransformer(**TINY, window_ratios=fixed))
    runner = _fake_runner(model)
    hook = SparsityAwareAdaptationHook()
    hook.before_run(runner)
    drawn = []
    for it in range(6):
        runner.iter = it
        hook.before_train_iter(runner, it)
        drawn.append(model.backbone.window_ratios)
        assert drawn[-1] == normalize_window_ratios(hook.ratios_for(it, 7, TINY['depths']),
                                                    TINY['depths'])
    assert len(set(drawn)) > 1
    assert runner.message_hub.get_scalar('train/window_ratio').current() >= 0
    hook.before_val_epoch(runner)
    assert model.backbone.window_ratios == normalize_window_ratios(fixed, TINY['depths'])
    # the same (seed, iteration) gives the same ratios: a resumed run draws the same
    again = SparsityAwareAdaptationHook()
    runner.iter = 3
    again.before_train_iter(runner, 0)
    assert model.backbone.window_ratios == drawn[3]
    hook.after_train(runner)
    assert model.backbone.window_ratios == normalize_window_ratios(fixed, TINY['depths'])
    # an explicit seed overrides the runner's; val_ratios override the configured ones
    seeded = SparsityAwareAdaptationHook(seed=123, val_ratios=TINY_CFG3)
    seeded.before_run(_fake_runner(model, seed=999))
    assert seeded.ratios_for(5, 123, [2, 2, 6, 2]) == SparsityAwareAdaptationHook().ratios_for(
        5, 123, [2, 2, 6, 2])
    with pytest.raises(WindowRatioError, match='val_ratios'):
        SparsityAwareAdaptationHook(val_ratios=[[0.5]]).before_run(runner)


@pytest.mark.parametrize('kwargs,match', [(dict(candidates=[]), 'candidates'),
                                          (dict(candidates=[0, 1.0]), r'\[0, 1\)'),
                                          (dict(candidates=[0.5, 0.1]), 'ascending'),
                                          (dict(group_size=0), 'group_size'),
                                          (dict(seed=-1), 'seed')])
def test_saa_hook_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SparsityAwareAdaptationHook(**kwargs)


def test_saa_hook_needs_a_sparse_backbone():
    from mmdet.models.backbones.swin import SwinTransformer
    runner = _fake_runner(_Detector(SwinTransformer(**TINY)))
    with pytest.raises(TypeError, match='mmsparse.SparseSwinTransformer'):
        SparsityAwareAdaptationHook().before_run(runner)


def _saa_draws(rank: int, world: int, out: str) -> None:
    import torch.distributed as dist
    from mmengine.dist import sync_random_seed
    from mmengine.model import MMDistributedDataParallel

    seed = sync_random_seed()  # what the Runner does when the config sets no seed
    torch.manual_seed(rank)  # every other random draw differs between ranks
    model = _Detector(SparseSwinTransformer(**TINY))
    ddp = MMDistributedDataParallel(module=model, device_ids=None)
    runner = _fake_runner(ddp, seed=seed)
    hook = SparsityAwareAdaptationHook()
    hook.before_run(runner)
    drawn = []
    for it in range(4):
        runner.iter = it
        hook.before_train_iter(runner, it)
        drawn.append(model.backbone.window_ratios)
        outs = ddp(torch.randn(1, 3, 64, 64))
        sum(o.mean() for o in outs).backward()  # DDP: every parameter used
    gathered = [None] * world
    dist.all_gather_object(gathered, dict(seed=seed, drawn=drawn))
    if rank == 0:
        with open(out, 'w') as f:
            json.dump(gathered, f)


def _saa_worker(rank: int, world: int, rendezvous: str, out: str) -> None:
    import datetime
    import gc

    import torch.distributed as dist

    torch.set_num_threads(1)
    # a file rendezvous (no port to race for) and a timeout, so a stuck peer fails, not hangs
    dist.init_process_group('gloo', init_method=f'file://{rendezvous}', rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        _saa_draws(rank, world, out)
        gc.collect()  # release DDP (its reducer) while its process group still exists
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_saa_ratios_identical_on_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp
    out = tmp_path / 'drawn.json'
    ctx = mp.start_processes(_saa_worker, args=(2, str(tmp_path / 'rendezvous'), str(out)),
                             nprocs=2, join=False, start_method='spawn')
    for _ in range(36):  # at most 3 minutes, even on a loaded machine
        if ctx.join(timeout=5):
            break
    else:
        for p in ctx.processes:
            p.kill()
        pytest.fail(f'2-rank gloo run did not finish in 180 s (result written: {out.exists()})')
    rank0, rank1 = json.loads(out.read_text())
    assert rank0 == rank1
    drawn = rank0['drawn']
    assert len({json.dumps(d) for d in drawn}) > 1  # new ratios every iteration
    hook = SparsityAwareAdaptationHook()
    for it, ratios in enumerate(drawn):  # reproducible from the seed alone
        want = normalize_window_ratios(hook.ratios_for(it, rank0['seed'], TINY['depths']),
                                       TINY['depths'])
        assert [tuple(r) for r in ratios] == list(want)


# ------------------------------------------------------------------------ configs and tools
TINY_DET = """
_base_ = ['{base}']
model = dict(
    backbone=dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8]),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=128),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=300, max_per_img=100),
                   rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100)))
"""
TINY_SEG = """
_base_ = ['{base}']
model = dict(
    backbone=dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8]),
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=64),
    auxiliary_head=dict(in_channels=128, channels=32))
train_cfg = dict(max_iters=2, val_interval=2)
default_hooks = dict(checkpoint=dict(interval=2))
"""


def _ok(proc):
    """The output of a successful tool run."""
    proc = ok(proc)
    return proc.stdout + proc.stderr


# An exact resume needs a fixed seed (else every run draws its own); the configs' RNGStateHook
# keeps torch's, numpy's and Python's random streams (DropPath, the RoI samplers, the flips).
EXACT_RESUME = """
randomness = dict(seed=0)
"""


@pytest.mark.parametrize('name,template,first,resume,metric,last', [
    ('mask-rcnn_sparsevit-swin-t_saa_voc-sample.py', TINY_DET, 'train_cfg.max_epochs=1',
     'train_cfg.max_epochs=2', 'coco/bbox_mAP', 'epoch_2.pth'),
    ('upernet_sparsevit-swin-t_saa_voc-sample.py', TINY_SEG, 'train_cfg.max_iters=2',
     'train_cfg.max_iters=4', 'mIoU', 'iter_4.pth'),
])
def test_voc_sample_saa_configs_train_checkpoint_resume(name, template, first, resume, metric,
                                                        last, tmp_path, data_root):
    cfg = tmp_path / name
    cfg.write_text(template.format(base=VOC / name) + EXACT_RESUME)
    full, cut = tmp_path / 'full', tmp_path / 'cut'
    out = _ok(run_tool('tools/train.py', cfg, '--work-dir', cut, '--cfg-options', first))
    assert 'window_ratio:' in out and metric in out
    out = _ok(run_tool('tools/train.py', cfg, '--work-dir', cut, '--resume', '--cfg-options',
                       resume))
    assert 'resumed' in out and 'window_ratio:' in out
    assert (cut / last).is_file()
    # the same run without the interruption: the same weights
    _ok(run_tool('tools/train.py', cfg, '--work-dir', full, '--cfg-options', resume))
    want = load_checkpoint_file(str(full / last))['state_dict']
    got = load_checkpoint_file(str(cut / last))['state_dict']
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=k)


def test_cfg3_config_latency_flops_and_picture(tmp_path, data_root):
    cfg = VOC / 'mask-rcnn_sparsevit-swin-t_cfg3_voc-sample.py'
    rep = tmp_path / 'lat.json'
    _ok(run_tool('tools/analysis_tools/measure_latency.py', cfg, '--part', 'backbone',
                 '--img-size', 224, '--batch-size', 1, '--warmup', 0, '--runs', 1, '--out', rep))
    assert json.loads(rep.read_text())['results'][0]['part'] == 'backbone'
    png = tmp_path / 'windows.png'
    out = _ok(run_tool('tools/visualization/visualize_windows.py', cfg,
                       data_root / 'voc_sample/JPEGImages/2011_000003.jpg', '--img-size', 224,
                       '--out', png))
    # 224: stage 0 has 8x8 windows, cfg3 keeps int(64 * 0.3) = 19; stage 2 has 2x2: 3, 2, 2
    assert 'stage 0: block 0: 19/64, block 1: 19/64' in out
    assert 'stage 2: block 0: 3/4, block 1: 3/4, block 2: 2/4' in out
    import mmcv
    assert mmcv.imread(str(png)).shape == (224, 4 * 224, 3)


def test_bad_ratios_in_a_config_name_the_key():
    from mmsparse.utils import build_model, load_config
    cfg = load_config(str(VOC / 'mask-rcnn_sparsevit-swin-t_cfg3_voc-sample.py'),
                      dict(model=dict(backbone=dict(window_ratios=[
                          [0.7, 0.9], [0, 0], [0.2, 0.2, 0.4, 0.4, 0.5, 1.0], [0, 0]]))))
    with pytest.raises(WindowRatioError,
                       match=r'model.backbone.window_ratios\[2\]\[5\]: 1.0 is outside \[0, 1\)'):
        build_model(cfg)  # what every tool calls
