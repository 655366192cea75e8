"""SViTE / S²ViTE / SViTE+ as mmsparse parts: backbone, hooks, compaction, compact checkpoints,
configs, and the command lines (resume with bit-identical masks, 2 ranks agree, compact + test)."""
import glob
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from mmsparse.checkpoint import load_checkpoint_file
from mmsparse.errors import ConfigError
from tests.conftest import DEMO_CONFIG, REPO, ok, run_tool, small_config, tool_env

SVITE_CONFIGS = sorted(glob.glob(str(REPO / 'configs/svite/*.py')))
TINY_ARCH = dict(embed_dims=96, num_layers=6, num_heads=3, feedforward_channels=384)
TINY = dict(arch=TINY_ARCH, img_size=28, patch_size=4, in_channels=1)


# ---------------------------------------------------------------------------------------------
# helpers: a classifier, an optimizer and a minimal runner, to drive the hooks in-process
class FakeRunner:
    """What the SViTE hooks read from a Runner."""

    def __init__(self, model, max_iters: int, seed: int = 0, lr: float = 2e-3):
        from mmengine.logging import MessageHub, MMLogger
        from mmengine.optim import OptimWrapper
        self.model = model
        self.optim_wrapper = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=lr))
        self.iter, self.max_iters, self.seed = 0, max_iters, seed
        name = f'svite-test-{id(self)}'
        self.message_hub = MessageHub.get_instance(name)
        self.logger = MMLogger.get_instance(name)


def build_classifier(backbone_type: str = 'VisionTransformer', **backbone):
    from mmsparse.utils import build_model, load_config
    cfg = load_config(str(DEMO_CONFIG))
    if backbone_type != 'VisionTransformer':
        cfg.model.backbone.type = backbone_type
    cfg.model.backbone.update(backbone)
    torch.manual_seed(0)
    model = build_model(cfg)  # torch's default init: enough here, and quiet
    model.train()
    return model, cfg


def batch(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n, ), generator=g)


def train(hook, runner, steps: int, check=None):
    for _ in range(steps):
        x, y = batch(seed=runner.iter)
        hook.before_train_iter(runner, runner.iter)
        loss = F.cross_entropy(runner.model(x, mode='tensor'), y)
        runner.optim_wrapper.update_params(loss)
        if check is not None:
            check()
        hook.after_train_iter(runner, runner.iter)
        runner.iter += 1


def start(hook, runner):
    hook.before_run(runner)
    hook.before_train(runner)


# ---------------------------------------------------------------------------------------------
# models
def test_svite_backbone_is_state_dict_compatible_with_mmpretrain_vit():
    from mmpretrain.models.backbones import VisionTransformer

    from mmsparse.models import SViTEVisionTransformer
    torch.manual_seed(0)
    ref, ours = VisionTransformer(**TINY), SViTEVisionTransformer(**TINY)
    assert set(ref.state_dict()) == set(ours.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.eval()
    ours.eval()
    x = batch(2)[0]
    assert torch.equal(ref(x)[0], ours(x)[0])


def test_compact_vit_per_layer_sizes_zero_heads_and_skipped_layers():
    from mmsparse.models import CompactVisionTransformer
    m = CompactVisionTransformer(**TINY, num_heads=[3, 2, 0, 1, 3, 3], head_dims=[32, 32, 32,
                                                                                 16, 32, 8],
                                 mlp_dims=[384, 100, 50, 0, 10, 384], skip_layers=[5])
    m.eval()
    sd = m.state_dict()
    assert sd['layers.1.attn.qkv.weight'].shape == (3 * 2 * 32, 96)
    assert sd['layers.3.attn.proj.weight'].shape == (96, 16)
    assert sd['layers.2.attn.qkv.weight'].shape == (0, 96)
    assert sd['layers.4.ffn.layers.0.0.weight'].shape == (10, 96)
    assert not any(k.startswith('layers.5.') for k in sd)
    assert m(batch(2)[0])[0].shape == (2, 96)
    # a layer without heads adds proj.bias only
    attn = m.layers[2].attn
    x = torch.randn(2, 5, 96)
    assert torch.equal(attn(x), attn.proj.bias.expand(2, 5, 96))
    with pytest.raises(ConfigError, match='num_heads'):
        CompactVisionTransformer(**TINY, num_heads=[3, 3])
    with pytest.raises(ConfigError, match='skip_layers'):
        CompactVisionTransformer(**TINY, skip_layers=[6])


def test_token_selector_keeps_k_tokens_at_eval_and_passes_straight_through_gradients():
    from mmsparse.analysis import count_flops
    from mmsparse.models import SViTEVisionTransformer
    torch.manual_seed(0)
    x = batch(4)[0]
    m = SViTEVisionTransformer(**TINY, token_keep=0.7, out_type='raw')
    assert m.num_kept_tokens() == 34  # int(49 * 0.7)
    m.eval()
    out = m(x)[0]
    assert out.shape == (4, 1 + 34, 96)
    assert torch.equal(out, m(x)[0])  # deterministic
    m.train()  # 'mask' mode: every token computed, the kept ones attend to kept ones only
    assert m(x)[0].shape == (4, 1 + 49, 96)
    m.token_selector.noise_scale = 0.0  # the end of the noise schedule: inference's selection
    cls = SViTEVisionTransformer(**TINY, token_keep=0.7)
    cls.load_state_dict(m.state_dict())
    cls.eval()
    ref = cls(x)[0]
    cls.train()
    cls.token_selector.noise_scale = 0.0
    assert (cls(x)[0] - ref).abs().max() < 1e-5  # training computes what inference computes
    m.token_selector.noise_scale = 1.0
    m.zero_grad()
    m(x)[0][:, 0].pow(2).sum().backward()
    g = m.token_selector.score.weight.grad
    assert g is not None and float(g.abs().sum()) > 0  # straight-through reaches the scorer
    gather = SViTEVisionTransformer(**TINY, token_keep=0.7, out_type='raw',
                                    token_train_mode='gather')
    gather.train()
    assert gather(x)[0].shape == (4, 1 + 34, 96)
    zero = SViTEVisionTransformer(**TINY, token_keep=0.7, out_type='raw',
                                  token_train_mode='zero')
    zero.train()
    assert zero(x)[0].shape == (4, 1 + 49, 96)  # the original: tokens zeroed, not removed
    # FLOPs follow the kept tokens
    dense = SViTEVisionTransformer(**TINY)
    dense.eval()
    m.eval()
    f_dense = count_flops(dense, (x[:1], )).flops
    m90 = SViTEVisionTransformer(**TINY, token_keep=0.9)
    m90.eval()
    f_90 = count_flops(m90, (x[:1], )).flops
    f_70 = count_flops(m, (x[:1], )).flops
    assert f_70 < f_90 < f_dense
    with pytest.raises(ConfigError, match='token_keep'):
        SViTEVisionTransformer(**TINY, token_keep=1.5)
    with pytest.raises(ConfigError, match='featmap'):
        SViTEVisionTransformer(**TINY, token_keep=0.5, out_type='featmap')


# ---------------------------------------------------------------------------------------------
# hooks, in-process
def test_masks_are_applied_after_every_optimizer_step_and_updated_on_schedule():
    from mmsparse.engine import SparseTrainingHook
    model, _ = build_classifier()
    runner = FakeRunner(model, max_iters=10)
    hook = SparseTrainingHook(density=0.5, update_interval=3, stop_ratio=0.8, seed=1)
    start(hook, runner)
    assert len(hook.params) == 6 * 4 + 2
    assert hook.stats()['density'] == pytest.approx(0.5, abs=0.01)  # Bernoulli draw
    assert all(bool((p[~hook.masks[n]] == 0).all()) for n, p in hook.params.items())
    seen = []

    def check():  # right after the optimizer step, before the hook: pruned weights moved
        seen.append(sum(int((p.detach()[~hook.masks[n]] != 0).sum())
                        for n, p in hook.params.items()))

    kept = {n: int(m.sum()) for n, m in hook.masks.items()}
    train(hook, runner, 10, check)
    assert min(seen[1:]) > 0  # AdamW moved pruned weights (moments are not masked) ...
    for n, p in hook.params.items():  # ... and the hook zeroed them after the step
        assert bool((p.detach()[~hook.masks[n]] == 0).all()), n
        assert int(hook.masks[n].sum()) == kept[n]  # exact counts: density unchanged
    assert [h['iter'] for h in hook.history] == [3, 6]  # 9 >= 0.8 * 10: stopped
    for h in hook.history:
        assert h['pruned'] == h['regrown'] > 0 and h['new_connections'] > 0
    rates = [h['death_rate'] for h in hook.history]
    assert rates[0] > rates[1] > 0.005
    assert hook.stats()['exploration'] > hook.stats()['density']
    assert runner.message_hub.get_scalar('train/sparse_pruned').current() > 0


def test_erk_and_magnitude_init_and_random_growth():
    from mmsparse.engine import SparseTrainingHook
    model, _ = build_classifier()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    runner = FakeRunner(model, max_iters=5)
    hook = SparseTrainingHook(density=0.5, sparse_init='ERK', init_by='magnitude',
                              growth='random', update_interval=2, stop_ratio=1.0)
    start(hook, runner)
    assert hook.stats()['density'] == pytest.approx(0.5, abs=1e-3)  # exact counts
    for n, m in hook.masks.items():  # the largest weights are kept
        w = weights[n].abs()
        if 0 < int(m.sum()) < m.numel():
            assert float(w[m].min()) >= float(w[~m].max())
    train(hook, runner, 4)
    assert len(hook.history) == 2 and hook.history[0]['regrown'] == hook.history[0]['pruned']


def test_momentum_growth_regrows_where_the_adam_momentum_is_largest():
    from mmsparse.engine import SparseTrainingHook
    from mmsparse.ops import dst
    model, _ = build_classifier()
    runner = FakeRunner(model, max_iters=6)
    hook = SparseTrainingHook(density=0.5, sparse_init='ERK', growth='momentum',
                              update_interval=3, stop_ratio=1.0, death_rate=0.3)
    start(hook, runner)
    train(hook, runner, 2)
    before = {n: m.clone() for n, m in hook.masks.items()}
    # step 3 by hand, reading the momentum after the optimizer step and before the hook's update
    opt = runner.optim_wrapper.optimizer
    hook.before_train_iter(runner, runner.iter)
    x, y = batch(seed=runner.iter)
    runner.optim_wrapper.update_params(F.cross_entropy(model(x, mode='tensor'), y))
    name = 'backbone.layers.0.ffn.layers.0.0.weight'
    p = hook.params[name]
    st = opt.state[p]
    score = (st['exp_avg'] / (st['exp_avg_sq'].sqrt() + opt.defaults['eps'])).abs()
    weight = p.detach().clone()
    hook.after_train_iter(runner, runner.iter)
    runner.iter += 1
    new, old = hook.masks[name], before[name]
    after_death = dst.magnitude_death(weight, old, hook.history[-1]['death_rate'])
    n = int(old.sum()) - int(after_death.sum())
    assert n > 0 and int(new.sum()) == int(old.sum())  # as many regrown as pruned
    # growth took the largest momenta among the inactive weights
    assert torch.equal(new, dst.gradient_growth(after_death, score, n))
    grown = new & ~after_death
    assert float(score[grown].min()) >= float(score[~new].max())
    assert hook.history[-1]['regrown'] > 0


def test_momentum_growth_needs_an_optimizer_with_momentum():
    from mmengine.optim import OptimWrapper

    from mmsparse.engine import SparseTrainingHook
    model, _ = build_classifier()
    runner = FakeRunner(model, max_iters=6)
    runner.optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    hook = SparseTrainingHook(density=0.5, growth='momentum')
    hook.before_run(runner)
    with pytest.raises(ConfigError, match="growth='momentum' needs an optimizer"):
        hook.before_train(runner)


def test_structured_hook_swaps_heads_and_compaction_is_exact():
    from mmsparse.compaction.svite import compact_backbone_cfg, compact_state_dict
    from mmsparse.engine import StructuredSparseTrainingHook
    from mmsparse.utils import build_model
    model, cfg = build_classifier('mmsparse.SViTEVisionTransformer')
    runner = FakeRunner(model, max_iters=8, lr=5e-3)
    hook = StructuredSparseTrainingHook(head_density=0.7, mlp_density=0.6, update_interval=2,
                                        score_iters=2, stop_ratio=1.0, neuron_growth='random')
    start(hook, runner)
    assert [int(m.sum()) for m in hook.head_masks] == [2] * 6  # int(3 * 0.7)
    assert [int(m.sum()) for m in hook.neuron_masks] == [230] * 6  # int(384 * 0.6)
    before = [m.clone() for m in hook.head_masks]
    train(hook, runner, 8)
    assert len(hook.history) == 3
    assert sum(h['new_heads'] for h in hook.history) > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, hook.head_masks))
    assert [int(m.sum()) for m in hook.head_masks] == [2] * 6
    # masked weights really are zero
    for b, hm, nm in zip(hook.blocks, hook.head_masks, hook.neuron_masks):
        rows = hm.repeat_interleave(32).repeat(3)
        assert bool((b.attn.qkv.weight[~rows] == 0).all())
        assert bool((b.fc2.weight[:, ~nm] == 0).all())

    # compaction: a physically smaller model with the same outputs
    model.eval()
    sd = model.state_dict()
    head_dims = [32] * 6
    csd = compact_state_dict(sd, hook.head_masks, hook.neuron_masks, head_dims)
    cfg.model.backbone = compact_backbone_cfg(cfg.model.backbone.to_dict(), hook.head_masks,
                                              hook.neuron_masks, head_dims)
    compact = build_model(cfg)
    compact.load_state_dict(csd, strict=True)
    x = batch(6, seed=99)[0]
    with torch.no_grad():
        a, b = model(x, mode='tensor'), compact(x, mode='tensor')
    assert (a - b).abs().max() < 1e-5
    assert sum(p.numel() for p in compact.parameters()) < \
        0.7 * sum(p.numel() for p in model.parameters())
    # the v-bias matters: without folding it the outputs differ
    assert float(sd['backbone.layers.0.attn.qkv.bias'].abs().sum()) > 0


def test_checkpoint_state_round_trips_in_process():
    from mmsparse.engine import SparseTrainingHook
    model, _ = build_classifier()
    runner = FakeRunner(model, max_iters=4)
    hook = SparseTrainingHook(density=0.4, update_interval=1, growth='random')
    start(hook, runner)
    train(hook, runner, 2)
    ckpt = {}
    hook.before_save_checkpoint(runner, ckpt)
    assert ckpt['svite']['kind'] == 'unstructured' and ckpt['svite']['num_updates'] == 2
    again = SparseTrainingHook(density=0.4, update_interval=1, growth='random')
    again.after_load_checkpoint(runner, ckpt)
    start(again, runner)
    for n in hook.masks:
        assert torch.equal(hook.masks[n], again.masks[n])
        assert torch.equal(hook.fired[n], again.fired[n])
    assert torch.equal(hook.generator.get_state(), again.generator.get_state())
    assert again.history == hook.history


def test_temperature_hook_anneals_linearly():
    from mmsparse.engine import TokenSelectorTemperatureHook
    model, _ = build_classifier('mmsparse.SViTEVisionTransformer', token_keep=0.9)
    runner = FakeRunner(model, max_iters=100)
    hook = TokenSelectorTemperatureHook(start=10.0, end=0.1)
    hook.before_run(runner)
    for it, tau, noise in ((0, 10.0, 1.0), (50, 5.05, 0.5), (100, 0.1, 0.0)):
        runner.iter = it
        hook.before_train_iter(runner, it)
        assert model.backbone.token_selector.tau == pytest.approx(tau)
        assert model.backbone.token_selector.noise_scale == pytest.approx(noise)
    half = TokenSelectorTemperatureHook(noise_until=0.5)
    half.before_run(runner)
    runner.iter = 25
    half.before_train_iter(runner, 25)
    assert model.backbone.token_selector.noise_scale == pytest.approx(0.5)
    runner.iter = 60
    half.before_train_iter(runner, 60)
    assert model.backbone.token_selector.noise_scale == 0.0
    with pytest.raises(ConfigError,
                       match=r'TokenSelectorTemperatureHook\]\.start must be a number > 0'):
        TokenSelectorTemperatureHook(start=0)
    with pytest.raises(ConfigError, match='noise_end must be a number >= 0'):
        TokenSelectorTemperatureHook(noise_end=-1)


# ---------------------------------------------------------------------------------------------
# the mask state: the one writer and reader of checkpoint['svite']
def _old_entries():
    """``checkpoint['svite']`` of both kinds, key for key as the hooks wrote it before the mask
    state existed (engine/svite_hooks.py): what old checkpoints hold."""
    from mmsparse.ops import dst
    g = torch.Generator().manual_seed(5)
    masks = {'a.weight': torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool),
             'b.weight': torch.tensor([[0, 1]], dtype=torch.bool)}
    fired = {'a.weight': torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool),
             'b.weight': torch.tensor([[1, 1]], dtype=torch.bool)}
    unstructured = dict(
        kind='unstructured', version=1, shapes={n: list(m.shape) for n, m in masks.items()},
        masks={n: dst.pack_mask(m) for n, m in masks.items()},
        fired={n: dst.pack_mask(m) for n, m in fired.items()},
        densities={'a.weight': 0.6, 'b.weight': 0.5}, density=0.55, generator=g.get_state(),
        num_updates=2, history=[dict(iter=3, pruned=1)], pending=False)
    structured = dict(
        kind='structured', version=1, head_masks=[torch.tensor([True, False, True])],
        neuron_masks=[torch.tensor([True, True, False, False])], head_dims=[32],
        head_density=0.7, mlp_density=0.5, generator=g.get_state(), num_updates=1, history=[],
        pending=True)
    return masks, fired, unstructured, structured


def _assert_same(a, b):
    assert type(a) is type(b) or isinstance(a, (int, float)) and isinstance(b, (int, float))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def test_mask_state_reads_old_checkpoints_and_packs_them_back_key_for_key():
    from mmsparse.compaction.svite import structured_masks_from_checkpoint
    from mmsparse.engine.svite import (StructuredMaskState, UnstructuredMaskState,
                                       read_mask_state)
    masks, fired, unstructured, structured = _old_entries()
    state = read_mask_state({'svite': unstructured, 'state_dict': {}})
    assert isinstance(state, UnstructuredMaskState)
    assert list(state.masks) == ['a.weight', 'b.weight']
    for n in masks:
        assert torch.equal(state.masks[n], masks[n]) and torch.equal(state.fired[n], fired[n])
    assert state.num_updates == 2 and state.history == [dict(iter=3, pruned=1)]
    assert torch.equal(state.generator.get_state(), unstructured['generator'])
    _assert_same(state.pack(), unstructured)
    # hand-computed: kept 4 of a (flat indices 0 + 2 + 3 + 4 = 9) and 1 of b (index 1)
    assert state.fingerprint().tolist() == [4.0, 9.0, 1.0, 1.0]
    assert state.stats() == dict(density=5 / 8, exploration=7 / 8)
    state.synchronise('broadcast', True, 'test', 'init', None)  # one process: nothing happens
    assert torch.equal(state.masks['a.weight'], masks['a.weight'])

    s = read_mask_state({'svite': structured})
    assert isinstance(s, StructuredMaskState) and s.pending and s.head_dims == [32]
    _assert_same(s.pack(), structured)
    assert s.fingerprint().tolist() == [2.0, 2.0, 2.0, 1.0]
    heads, neurons = structured_masks_from_checkpoint({'svite': structured})
    assert heads[0].tolist() == [True, False, True] and neurons[0].tolist() == [1, 1, 0, 0]
    # nothing, or a kind this version does not know
    assert read_mask_state({}) is None and read_mask_state({'svite': dict(kind='x')}) is None
    assert structured_masks_from_checkpoint({'svite': unstructured}) is None


def test_hooks_ignore_masks_of_the_other_kind():
    from mmsparse.engine import SparseTrainingHook, StructuredSparseTrainingHook
    _, _, unstructured, structured = _old_entries()
    model, _ = build_classifier()
    runner = FakeRunner(model, max_iters=4)
    hook = StructuredSparseTrainingHook()
    hook.after_load_checkpoint(runner, {'svite': unstructured})
    assert hook._restored is None
    hook = SparseTrainingHook()
    hook.after_load_checkpoint(runner, {'svite': structured})
    assert hook._restored is None
    hook.after_load_checkpoint(runner, {'svite': unstructured})
    assert hook._restored is not None and hook._restored.num_updates == 2


def _composes(compact_ckpt: str, compact_cfg: str) -> None:
    """DynamicViT at keep ratio 1 on a compact checkpoint computes the compact model's logits."""
    from mmengine.config import Config
    from mmsparse.registry import MODELS
    from mmsparse.utils import build_model
    compact = build_model(Config.fromfile(compact_cfg), compact_ckpt).eval()
    cfg = Config.fromfile(compact_cfg).model.to_dict()
    bb = {k: v for k, v in cfg['backbone'].items()
          if k not in ('num_heads', 'head_dims', 'mlp_dims', 'token_keep', 'token_tau',
                       'token_train_mode', 'layers', 'embed_dims', 'dense_num_layers')}
    if 'arch' not in bb:  # UVC's compact config names the width, not an arch
        bb['arch'] = dict(embed_dims=cfg['backbone']['embed_dims'], num_layers=6, num_heads=3,
                          feedforward_channels=384)
    bb.update(type='mmsparse.DynamicVisionTransformer', pruning_loc=[1], keep_rate=1.0)
    composed = MODELS.build(dict(type='mmsparse.DynamicViTClassifier', _scope_='mmpretrain',
                                 backbone=bb, head=cfg['head'], compact_checkpoint=compact_ckpt,
                                 distill=False))
    composed.init_weights()
    composed.eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(composed(x, mode='tensor'), compact(x, mode='tensor'),
                                   rtol=0, atol=2e-5)


def test_compact_svite_checkpoint_from_python(tmp_path):
    from mmsparse.compaction import compact_svite_checkpoint
    from mmsparse.engine import StructuredSparseTrainingHook
    model, cfg = build_classifier('mmsparse.SViTEVisionTransformer')
    runner = FakeRunner(model, max_iters=4, lr=5e-3)
    hook = StructuredSparseTrainingHook(head_density=0.7, mlp_density=0.6, update_interval=2,
                                        stop_ratio=1.0)
    start(hook, runner)
    train(hook, runner, 4)
    ckpt = dict(meta=dict(epoch=1), state_dict=model.state_dict())
    hook.before_save_checkpoint(runner, ckpt)
    torch.save(ckpt, tmp_path / 'epoch_1.pth')
    cfg.custom_hooks = [dict(type='StructuredSparseTrainingHook', head_density=0.7),
                        dict(type='mmsparse.TokenSelectorTemperatureHook')]
    report = compact_svite_checkpoint(cfg, str(tmp_path / 'epoch_1.pth'),
                                      str(tmp_path / 'out' / 's2_compact'), atol=1e-5)
    assert report['masks_from'].startswith('checkpoint masks')
    assert report['num_heads'] == [2] * 6 and report['mlp_dims'] == [230] * 6
    assert report['max_abs_diff'] < 1e-5 and report['params_compact'] < 0.7 * report['params']
    text = (tmp_path / 'out' / 's2_compact.py').read_text()
    assert 'CompactVisionTransformer' in text and '_base_' in text
    assert 'StructuredSparseTrainingHook' not in text  # the sparse-training hook is dropped
    assert 'TokenSelectorTemperatureHook' in text  # other hooks are kept
    saved = load_checkpoint_file(report['checkpoint'])
    assert saved['meta']['compaction'] == 'svite' and saved['meta']['epoch'] == 1
    # the structure travels in the file: a DynamicViT built on it is the compact model
    assert saved['meta']['compact_structure']['num_heads'] == [2] * 6
    _composes(report['checkpoint'], report['config'])
    # without checkpoint['svite'] the masks are read off the zero rows: the same model
    del ckpt['svite']
    torch.save(ckpt, tmp_path / 'plain.pth')
    again = compact_svite_checkpoint(cfg, str(tmp_path / 'plain.pth'),
                                     str(tmp_path / 'out' / 'plain_compact'), atol=1e-5)
    assert again['masks_from'].startswith('zero rows')
    assert (again['num_heads'], again['mlp_dims']) == (report['num_heads'], report['mlp_dims'])
    with pytest.raises(ValueError, match='S²ViTE compaction needs'):
        plain, plain_cfg = build_classifier()
        torch.save(dict(state_dict=plain.state_dict()), tmp_path / 'vit.pth')
        compact_svite_checkpoint(plain_cfg, str(tmp_path / 'vit.pth'), str(tmp_path / 'x'))


# ---------------------------------------------------------------------------------------------
# bad input
@pytest.mark.parametrize('kwargs,match', [
    (dict(density=0), r'SparseTrainingHook\]\.density must be a number in \(0, 1\]'),
    (dict(density=1.5), r'SparseTrainingHook\]\.density'),
    (dict(update_interval=0), r'SparseTrainingHook\]\.update_interval must be an integer >= 1'),
    (dict(update_interval=-5), 'update_interval'),
    (dict(sparse_init='ERR'), r"sparse_init must be one of 'fixed_ERK', 'ERK', 'uniform', got"),
    (dict(growth='magnitude'), r"growth must be one of 'gradient', 'momentum', 'random', got"),
    (dict(layers=['(']), 'not a valid regex'),
    (dict(stop_ratio=2), 'stop_ratio'),
])
def test_unstructured_hook_bad_input(kwargs, match):
    from mmsparse.engine import SparseTrainingHook
    with pytest.raises(ConfigError, match=match):
        SparseTrainingHook(**kwargs)


@pytest.mark.parametrize('kwargs,match', [
    (dict(head_density=0.0), r'head_density must be a number in \(0, 1\]'),
    (dict(head_density=1.2), 'head_density'),
    (dict(mlp_density=-0.1), r'mlp_density must be a number in \(0, 1\]'),
    (dict(update_interval=0), 'update_interval must be an integer >= 1'),
    (dict(neuron_growth='x'), 'neuron_growth'),
])
def test_structured_hook_bad_input(kwargs, match):
    from mmsparse.engine import StructuredSparseTrainingHook
    with pytest.raises(ConfigError, match=match):
        StructuredSparseTrainingHook(**kwargs)


def test_bad_input_found_when_the_model_is_known():
    from mmsparse.engine import (SparseTrainingHook, StructuredSparseTrainingHook,
                                 TokenSelectorTemperatureHook)
    model, _ = build_classifier()
    runner = FakeRunner(model, max_iters=4)
    hook = SparseTrainingHook(layers=[r'backbone\.layers\.\d+\.attn\.qkv\.weight', 'nothing'])
    with pytest.raises(ConfigError, match=r"layers: the pattern 'nothing' matches no parameter.*"
                       r'backbone\.patch_embed\.projection\.weight'):
        hook.before_run(runner)
    with pytest.raises(ConfigError, match='only weights with >= 2 dims'):
        SparseTrainingHook(layers=[r'.*\.bias']).before_run(runner)
    with pytest.raises(ConfigError, match="SViTEVisionTransformer"):
        StructuredSparseTrainingHook().before_run(runner)
    with pytest.raises(ConfigError, match='no token selector'):
        TokenSelectorTemperatureHook().before_run(runner)
    svite, _ = build_classifier('mmsparse.SViTEVisionTransformer')
    with pytest.raises(ConfigError, match=r'head_density=0.3 keeps int\(3 \* 0.3\) = 0 of 3'):
        StructuredSparseTrainingHook(head_density=0.3).before_run(FakeRunner(svite, 4))


# ---------------------------------------------------------------------------------------------
# compact checkpoints of unstructured models
def test_sparse_checkpoint_is_smaller_and_loads_back_exactly(tmp_path):
    from mmengine.runner import load_checkpoint

    from mmsparse.compaction.sparse_ckpt import load_sparse_checkpoint, save_sparse_checkpoint
    from mmsparse.engine import SparseTrainingHook
    model, _ = build_classifier()
    runner = FakeRunner(model, max_iters=2)
    hook = SparseTrainingHook(density=0.5, update_interval=1)
    start(hook, runner)
    train(hook, runner, 2)
    ckpt = dict(meta=dict(epoch=1), state_dict=model.state_dict())
    hook.before_save_checkpoint(runner, ckpt)
    dense = tmp_path / 'dense.pth'
    torch.save(dict(meta=ckpt['meta'], state_dict=ckpt['state_dict']), dense)
    info = save_sparse_checkpoint(ckpt, str(tmp_path / 'sparse.pth'))
    assert info['sparse_tensors'] == 26
    assert info['bytes'] < 0.6 * os.path.getsize(dense)  # ~0.53 at density 0.5
    back = load_sparse_checkpoint(str(tmp_path / 'sparse.pth'))['state_dict']
    assert list(back) == list(ckpt['state_dict'])
    assert all(torch.equal(back[k], v) for k, v in ckpt['state_dict'].items())
    # through MMEngine's loader: the sparse:// scheme
    fresh, _ = build_classifier()
    load_checkpoint(fresh, f'sparse://{tmp_path / "sparse.pth"}', map_location='cpu')
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in ckpt['state_dict'].items())


# ---------------------------------------------------------------------------------------------
# distributed: broadcast and verification on 2 gloo processes
def _dist_worker(rank: int, port: int, results):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    try:
        from mmsparse.engine import SparseTrainingHook
        out = {}
        for sync in ('broadcast', 'none'):
            model, _ = build_classifier()
            runner = FakeRunner(model, max_iters=4, seed=rank)  # ranks disagree on purpose
            hook = SparseTrainingHook(density=0.5, sync=sync, seed=rank)
            try:
                start(hook, runner)
                out[sync] = torch.cat([m.flatten() for m in hook.masks.values()])
            except RuntimeError as e:
                out[sync] = str(e)
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_broadcast_makes_masks_identical_and_verification_catches_differences():
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_dist_worker, args=(port, results), nprocs=2, join=True)
    assert torch.equal(results[0]['broadcast'], results[1]['broadcast'])
    assert all('masks differ between ranks' in results[r]['none'] for r in (0, 1))


# ---------------------------------------------------------------------------------------------
# configs
@pytest.mark.parametrize('path', SVITE_CONFIGS, ids=os.path.basename)
def test_svite_configs_build(path):
    from mmengine.registry import HOOKS

    from mmsparse.utils import build_model, load_config
    cfg = load_config(path)
    cfg.model.backbone.init_cfg = None
    model = build_model(cfg)
    hooks = [HOOKS.build(h) for h in cfg.custom_hooks]
    names = {type(h).__name__ for h in hooks}
    assert names & {'SparseTrainingHook', 'StructuredSparseTrainingHook'}
    if 'StructuredSparseTrainingHook' in names or 'TokenSelectorTemperatureHook' in names:
        assert type(model.backbone).__name__ == 'SViTEVisionTransformer'
    if 'in1k' in path:  # the seeds' recipes
        assert cfg.train_cfg.max_epochs == 600
        sparse = [h for h in cfg.custom_hooks if 'Sparse' in h.type][0]
        assert sparse.update_interval == (7000 if 'deit-base' in path else 15000)


# ---------------------------------------------------------------------------------------------
# command lines, on real Fashion-MNIST
UNSTRUCTURED = ("dict(type='SparseTrainingHook', density=0.5, update_interval=2, "
                "stop_ratio=0.9, schedule_iters=8)")


def _small_cfg(tmp_path, name, config, hook):
    path = tmp_path / f'{name}.py'
    path.write_text(small_config(REPO / config, f'custom_hooks = [{hook}]'))
    return path


def test_resume_continues_with_bit_identical_masks(tmp_path, data_root):
    cfg = _small_cfg(tmp_path, 'svite_small', 'configs/svite/'
                     'svite-vit-tiny-p4_density0.5_fashion-mnist.py', UNSTRUCTURED)
    full, cut = tmp_path / 'full', tmp_path / 'cut'
    ok(run_tool('tools/train.py', cfg, '--work-dir', full))
    ok(run_tool('tools/train.py', cfg, '--work-dir', cut, '--cfg-options',
                'train_cfg.max_epochs=1'))  # the same run stopped after epoch 1 ...
    proc = ok(run_tool('tools/train.py', cfg, '--work-dir', cut, '--resume'))  # ... resumed
    assert 'resumed epoch: 1' in proc.stdout + proc.stderr
    a = load_checkpoint_file(str(full / 'epoch_2.pth'))
    b = load_checkpoint_file(str(cut / 'epoch_2.pth'))
    sa, sb = a['svite'], b['svite']
    assert [h['iter'] for h in sb['history']] == [2, 4, 6] and sb['num_updates'] == 3
    assert sa['masks'].keys() == sb['masks'].keys()
    for k in sa['masks']:
        assert torch.equal(sa['masks'][k], sb['masks'][k]), k
        assert torch.equal(sa['fired'][k], sb['fired'][k]), k
    assert sa['history'] == sb['history']
    for k, v in a['state_dict'].items():
        assert torch.equal(v, b['state_dict'][k]), k
    # logged: realised density per layer, pruned / regrown counts, exploration
    log = proc.stdout + proc.stderr
    assert 'density per layer: patch_embed.projection' in log
    assert 'pruned' in log and 'regrown' in log and 'exploration' in log

    # the compact export: from Python, and through tools/compact.py
    import json

    from mmsparse.compaction import export_sparse_checkpoint
    report = export_sparse_checkpoint(str(full / 'epoch_2.pth'), str(tmp_path / 'sparse.pth'))
    size = (tmp_path / 'sparse.pth').stat().st_size
    assert report['exact'] and size == report['bytes'] and report['sparse_tensors'] == 26
    assert size < 0.6 * report['dense_state_dict_bytes']  # same weights, dense, no optimizer
    out = tmp_path / 'export'
    ok(run_tool('tools/compact.py', cfg, full / 'epoch_2.pth', '--out', out, '--method',
                'sparse'))
    report = json.loads((out / 'svite_small_sparse.json').read_text())
    size = (out / 'svite_small_sparse.pth').stat().st_size
    assert report['exact'] and size == report['bytes']
    assert report['load_as'] == f'sparse://{out / "svite_small_sparse.pth"}'


def test_two_ranks_compute_identical_masks(tmp_path, data_root):
    hook = ("dict(type='SparseTrainingHook', density=0.5, update_interval=1, sync='none', "
            "verify_sync=True)")
    cfg = _small_cfg(tmp_path, 'svite_dist', 'configs/svite/'
                     'svite-vit-tiny-p4_density0.5_fashion-mnist.py', hook)
    proc = ok(run_tool(REPO / 'tools/dist_train.sh', cfg, 2, '--work-dir', tmp_path / 'w',
                       '--cfg-options', 'train_cfg.max_epochs=1', env=tool_env(PORT='29563')))
    out = proc.stdout + proc.stderr
    assert 'GPU number: 2' in out  # = world size
    assert 'masks identical on 2 ranks after init' in out
    assert 'masks identical on 2 ranks after update 1 (sync=none)' in out
    assert 'masks differ between ranks' not in out


def test_structured_training_compact_tool_and_test(tmp_path, data_root):
    hook = ("dict(type='StructuredSparseTrainingHook', head_density=0.7, mlp_density=0.6, "
            "update_interval=1, stop_ratio=1.0)")
    cfg = _small_cfg(tmp_path, 's2vite_small', 'configs/svite/s2vite-vit-tiny-p4_fashion-mnist.py',
                     hook)
    work = tmp_path / 'w'
    ok(run_tool('tools/train.py', cfg, '--work-dir', work, '--cfg-options',
                'train_cfg.max_epochs=1'))
    out = tmp_path / 'compact'
    proc = ok(run_tool('tools/compact.py', cfg, work / 'epoch_1.pth', '--out', out))
    assert 'num_heads: [2, 2, 2, 2, 2, 2]' in proc.stdout
    diff = float(proc.stdout.split('max_abs_diff: ')[1].split()[0])
    assert diff < 1e-5
    compact_cfg, compact_ckpt = out / 's2vite_small_compact.py', out / 's2vite_small_compact.pth'
    assert 'CompactVisionTransformer' in compact_cfg.read_text()
    proc = ok(run_tool('tools/test.py', compact_cfg, compact_ckpt, '--work-dir', tmp_path / 't'))
    assert 'accuracy/top1' in proc.stdout + proc.stderr
