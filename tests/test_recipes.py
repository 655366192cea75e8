"""The shipped ImageNet / COCO recipes resolve to the original implementations' settings.

Each row is a setting read in the original code (the public HEADs of VITA-Group/SViTE and
mit-han-lab/sparsevit; ../shared/design/METHODS.md) and the value the shipped config must resolve
to after inheritance from the OpenMMLab model zoo's configs.
"""
import glob

import pytest

from tests.conftest import REPO

SVITE_IN1K = sorted(glob.glob(str(REPO / 'configs/svite/*_in1k.py')))


def _load(path):
    from mmsparse.utils import load_config
    return load_config(str(path))


@pytest.mark.parametrize('path', SVITE_IN1K, ids=lambda p: p.split('/')[-1])
def test_svite_imagenet_configs_train_without_gradient_clipping(path):
    # original: main.py --clip-grad default None, no cmd script sets it; mmpretrain's DeiT-S
    # config (the base) has clip_grad=dict(max_norm=5.0)
    cfg = _load(path)
    assert cfg.optim_wrapper.get('clip_grad') is None


def test_sparsevit_coco_fp16_loss_scale_is_dynamic_from_512():
    # original: configs/swin/mask_rcnn_swin-t-p4-w7_fpn_fp16_ms-crop-{1x,3x}_coco.py,
    # fp16 = dict(loss_scale=dict(init_scale=512)): mmcv's dynamic scaler
    paths = glob.glob(str(REPO / 'configs/sparsevit/mask-rcnn_sparsevit-swin-t_*coco.py'))
    assert len(paths) == 6
    for path in paths:
        ow = _load(path).optim_wrapper
        assert ow.type == 'AmpOptimWrapper', path
        assert ow.loss_scale == dict(init_scale=512.), path


def test_uvc_imagenet_stage1_projects_to_the_budget_as_its_readme_says():
    # not in the original (documented in configs/uvc/README.md, with project_at_end=False to
    # restore it): the end-of-search projection, rounded to multiples of 8 on ImageNet
    paths = glob.glob(str(REPO / 'configs/uvc/uvc-deit-*_stage1_*_in1k.py'))
    assert len(paths) == 3
    for path in paths:
        hooks = [h for h in _load(path).custom_hooks if h['type'] == 'UVCHook']
        assert hooks == [dict(type='UVCHook', project_at_end=True, round_to=8)], path
    from mmsparse.engine.uvc_hooks import UVCHook
    assert UVCHook().project_at_end is True
    assert 'project_at_end=False` restores the original' in \
        (REPO / 'configs/uvc/README.md').read_text()


def test_search_times_candidates_as_sparsevit_on_a_gpu(monkeypatch):
    # original tools/search.py: measure(model, num_repeats=300, num_warmup=200) with
    # torch.backends.cudnn.benchmark = True; on a CPU that is minutes per candidate: 5 / 20
    import torch

    from mmsparse.search.run import TIMING_DEFAULTS, SearchOptions
    assert TIMING_DEFAULTS == {'cuda': (200, 300), 'cpu': (5, 20)}
    for cuda, expected in ((True, (200, 300)), (False, (5, 20))):
        monkeypatch.setattr(torch.cuda, 'is_available', lambda cuda=cuda: cuda)
        monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
        opts = SearchOptions(config='c.py', checkpoint=None, max_latency=1.0)
        opts.check()
        assert (opts.warmup, opts.runs) == expected
        assert torch.backends.cudnn.benchmark is cuda
        given = SearchOptions(config='c.py', checkpoint=None, max_latency=1.0, warmup=0, runs=1)
        given.check()
        assert (given.warmup, given.runs) == (0, 1)  # a flag wins on every device


# ---- DynamicViT ---------------------------------------------------------------------------------
DYNAMICVIT_IN1K = sorted(glob.glob(str(REPO / 'configs/dynamicvit/*_in1k.py')))


@pytest.mark.parametrize('path', DYNAMICVIT_IN1K, ids=lambda p: p.split('/')[-1])
def test_dynamicvit_imagenet_configs_train_with_the_originals_policy_softmax(path):
    # original: models/dyvit.py Attention.softmax_with_policy, shifted by the maximum over all
    # keys (mmsparse: policy_max_gap=None; a number is mmsparse's capped variant)
    import inspect

    from mmsparse.models.dynamicvit import DynamicVisionTransformer
    cfg = _load(path)
    assert cfg.model.backbone.get('policy_max_gap', 'unset') in (None, 'unset')
    default = inspect.signature(DynamicVisionTransformer).parameters['policy_max_gap'].default
    assert default is None
    if 'tiny' in path:  # built: every block runs the original formula
        from mmengine.registry import init_default_scope

        from mmsparse.registry import MODELS
        init_default_scope('mmsparse')
        model = MODELS.build(dict(cfg.model, distill=False))
        assert all(layer.attn.policy_max_gap is None for layer in model.backbone.layers)


@pytest.mark.parametrize('path', DYNAMICVIT_IN1K, ids=lambda p: p.split('/')[-1])
def test_dynamicvit_imagenet_configs_validate_the_ema_and_the_raw_model(path):
    # original main.py: --model_ema True (decay 0.9999), --model_ema_eval True: every epoch
    # evaluates the model and model_ema.ema; infer.py loads checkpoint['model'] (the raw one).
    # mmpretrain's EMAHook: EMA metrics under the usual names, the raw ones as *_origin
    hooks = [h for h in _load(path).custom_hooks if h['type'] == 'EMAHook']
    assert hooks == [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL',
                          evaluate_on_ema=True, evaluate_on_origin=True, _scope_='mmpretrain')]


def test_dynamicvit_imagenet_configs_name_the_real_baseline_of_their_weights():
    # original main.py: ./pretrained/deit_small_patch16_224-cd65a155.pth and
    # deit_base_patch16_224-b5f2ef4d.pth (Facebook's DeiT). The model zoo holds a conversion of
    # the DeiT-B file only; DeiT-S / DeiT-T start from OpenMMLab's own weights, whose metafile
    # top-1 the configs and the README state.
    import os.path as osp

    import mmpretrain
    import yaml
    meta = osp.join(osp.dirname(mmpretrain.__file__), '.mim/configs/deit/metafile.yml')
    with open(meta) as f:
        zoo = {m['Weights']: m for m in yaml.safe_load(f)['Models']}
    readme = (REPO / 'configs/dynamicvit/README.md').read_text()
    for arch, top1, original in (('tiny', 74.5, None), ('small', 80.69, None),
                                 ('base', 81.79, 'deit_base_patch16_224-b5f2ef4d.pth')):
        path = REPO / f'configs/dynamicvit/dynamicvit-deit-{arch}_8xb128_in1k.py'
        model = zoo[_load(path).load_from]
        assert model['Results'][0]['Metrics']['Top 1 Accuracy'] == top1
        assert f'{top1:.2f}' in path.read_text() and f'{top1:.2f}' in readme
        converted = model.get('Converted From', {}).get('Weights', '')
        assert converted.endswith(original) if original else not converted



# ---- SparseViT search ---------------------------------------------------------------------------
def test_sparsevit_coco_search_resolves_to_the_originals_searcher():
    # original tools/search.py: EvolveSearcher(population_size=100, candidate_size=25,
    # mutation_prob=0.1), searcher.search(num_iters=10000); before_step: parents = the 25 best
    # of the population just drawn, then the population is reset; after_step appends every
    # satisfied draw (repeats too); sample: mutation while len(population) < 100 // 2, else
    # crossover of random.sample(candidates, 2); _mutate mixes the parent with self._sample()
    # (stage-2 triple sorted); choices [0, 0.1, ..., 0.8]; measure() on randn(4, 3, 672, 672)
    from mmsparse.search.evolution import SearchSettings
    from mmsparse.search.host import window_defaults
    from mmsparse.search.run import SPACE_KEYS, SearchOptions, search_config
    cfg = _load(REPO / 'configs/sparsevit/mask-rcnn_sparsevit-swin-t_search_coco.py')
    scfg = search_config(cfg, SearchOptions(config='c.py', checkpoint=None, max_latency=42.0))
    s = SearchSettings.from_dict(scfg, ignore=SPACE_KEYS)
    assert (s.population_size, s.parents, s.mutation_prob, s.max_draws, s.iterations) == \
        (100, 25, 0.1, 10000, None)
    assert (s.selection, s.mutation, s.num_mutations) == ('population', 'sample', 50)
    assert s.random_trials is None and s.trials_per_iteration is None  # only the 10,000 draws
    assert scfg['img_size'] == 672
    assert window_defaults(cfg) == (tuple(i / 10 for i in range(9)), 2)
    assert SearchSettings() == s  # the defaults are the same searcher



# ---- UVC ----------------------------------------------------------------------------------------
UVC_STAGE1_IN1K = sorted(glob.glob(str(REPO / 'configs/uvc/uvc-deit-*_stage1_*_in1k.py')))
UVC_STAGE2_IN1K = sorted(glob.glob(str(REPO / 'configs/uvc/uvc-deit-*_stage2_*_in1k.py')))


def test_the_imagenet_config_lists_are_not_empty():
    # the parametrized tests of this file pass vacuously on an empty list
    assert (len(SVITE_IN1K), len(DYNAMICVIT_IN1K), len(UVC_STAGE1_IN1K),
            len(UVC_STAGE2_IN1K)) == (8, 3, 3, 3)
UVC_README = REPO / 'configs/uvc/README.md'


@pytest.mark.parametrize('path', UVC_STAGE1_IN1K, ids=lambda p: p.split('/')[-1])
def test_uvc_imagenet_stage1_runs_the_original_gate_step_clip_dims_and_decay(path):
    # original (VITA-Group/UVC): uvc_optimizer.py:91 weights gate gradients by
    # global_step % gating_interval and joint_train.py:271 puts every model parameter (gates
    # included) in AdamW(weight_decay=0.05); uvc_optimizer.py:107 clips s = [heads, neurons] as
    # one tensor; uvc_utils.py prox_w shrinks every head's lowest dims
    cfg = _load(path)
    m = cfg.model
    assert (m.gate_step, m.gating_interval, m.arch_grad_clip, m.arch_grad_clip_joint,
            m.removed_head_dims) == ('original', 50, 1.0, True, 'included')
    weights = cfg.optim_wrapper.weights
    assert weights.optimizer.type == 'AdamW' and weights.optimizer.weight_decay == 0.05
    assert 'paramwise_cfg' not in weights and 'paramwise_cfg' not in cfg.optim_wrapper
    assert cfg.optim_wrapper.gates.optimizer == dict(type='SGD', lr=0.1, momentum=0.9,
                                                     weight_decay=1e-4)
    # every epoch's checkpoint is kept (UVCClosestEpochHook can pick any of them)
    assert cfg.default_hooks.checkpoint.interval == 1
    assert cfg.default_hooks.checkpoint.get('max_keep_ckpts', -1) == -1


def test_uvc_imagenet_gates_train_with_the_weights_adamw_and_decay_everywhere():
    import torch
    from mmengine.registry import MODELS, init_default_scope

    from mmsparse.engine.uvc_optim import UVCOptimWrapperConstructor
    cfg = _load(REPO / 'configs/uvc/uvc-deit-tiny_stage1_budget0.5_in1k.py')
    init_default_scope('mmsparse')
    model_cfg = dict(cfg.model, distill=False)  # no teacher copy: faster, same optimizers
    model_cfg['backbone'] = dict(model_cfg['backbone'], arch=dict(
        embed_dims=192, num_layers=2, num_heads=3, feedforward_channels=768))
    model = MODELS.build(model_cfg)
    ow_cfg = {k: v for k, v in cfg.optim_wrapper.items() if k not in ('constructor', )}
    ow = UVCOptimWrapperConstructor(ow_cfg)(model)
    gates = model.backbone.block_gates
    for key in ('weights', 'gates'):
        assert any(p is gates for g in ow[key].optimizer.param_groups for p in g['params'])
    decays = {g['weight_decay'] for g in ow['weights'].optimizer.param_groups}
    assert decays == {0.05}  # norms, biases, cls_token, pos_embed, gates: all decayed
    assert isinstance(gates, torch.nn.Parameter)


def test_uvc_class_defaults_stay_mmsparse_and_the_readme_names_each_option():
    # the classes keep mmsparse's behaviour (tests/test_uvc.py pins it); the README's table
    # names the key that restores the original
    import inspect

    from mmsparse.models.uvc_primal_dual import UVCPrimalDual
    defaults = {k: v.default for k, v in inspect.signature(UVCPrimalDual).parameters.items()}
    assert (defaults['gate_step'], defaults['arch_grad_clip_joint'],
            defaults['removed_head_dims']) == ('uniform', False, 'excluded')
    text = UVC_README.read_text()
    for option in ("`model.gate_step='original'`", '`model.arch_grad_clip_joint=True`',
                   "`model.removed_head_dims='included'`", 'UVCClosestEpochHook',
                   'no `paramwise_cfg` in `optim_wrapper.weights`'):
        assert option in text, option


@pytest.mark.parametrize('path', UVC_STAGE2_IN1K, ids=lambda p: p.split('/')[-1])
def test_uvc_imagenet_stage2_starts_from_stage1s_last_epoch_as_its_readme_says(path):
    # ours (documented, with UVCClosestEpochHook as the original's hand-picked epoch): the
    # projected last epoch; the original's post-training (timm create_optimizer) does not
    # decay 1-D parameters, biases, pos_embed and cls_token
    cfg = _load(path)
    stage1 = path.replace('_stage2_', '_stage1_')
    last = _load(stage1).train_cfg.max_epochs
    assert cfg.load_from == f"work_dirs/{stage1.split('/')[-1][:-3]}/epoch_{last}.pth"
    assert [h['type'] for h in cfg.custom_hooks] == ['UVCHook', 'UVCCompactHook']
    pw = cfg.optim_wrapper.paramwise_cfg
    assert (pw.norm_decay_mult, pw.bias_decay_mult) == (0.0, 0.0)
    assert set(pw.custom_keys) == {'.cls_token', '.pos_embed'}
    assert "stage 1's last epoch (`epoch_30.pth`)" in UVC_README.read_text()


def test_uvc_readme_names_the_wrappers_the_configs_use():
    text = UVC_README.read_text()
    s1 = _load(REPO / 'configs/uvc/uvc-deit-small_stage1_budget0.5_in1k.py').model_wrapper_cfg
    s2 = _load(REPO / 'configs/uvc/uvc-deit-small_stage2_budget0.5_in1k.py').model_wrapper_cfg
    assert s1.type == 'mmsparse.UVCDistributedDataParallel'
    assert s2.type == 'MMDistributedDataParallel' and s2.find_unused_parameters
    assert "model_wrapper_cfg=dict(type='mmsparse.UVCDistributedDataParallel')" in text
    assert '(`MMDistributedDataParallel`, `find_unused_parameters=True`' in text
    assert 'MMSeparateDistributedDataParallel' not in text



# ---- every shipped config against the originals' hyper-parameters ------------------------------
# Every config under configs/<method>/ has a row below: its key hyper-parameters after inheritance
# (mmpretrain:: / mmdet:: / mmseg:: resolved by mmsparse.utils.load_config). The ImageNet and COCO
# rows hold the originals' values, each group citing where the original sets them (file:line at
# the HEAD of VITA-Group/SViTE, raoyongming/DynamicViT, VITA-Group/UVC, mit-han-lab/sparsevit);
# an MMEngine config's lr is the lr of its `auto_scale_lr.base_batch_size` images per step, so
# the original's effective lr is compared at the original's total batch. Where a config differs
# from the original on purpose, the row holds our value and names the README row that says so.
# The rows of recipes that have no original (Fashion-MNIST, VOC samples, ADE20K) hold ours
# ("ours"), so that changing one is a deliberate edit here. A new config fails
# test_every_shipped_config_has_a_row until it has a row.
SHIPPED = sorted(str(p.relative_to(REPO / 'configs')) for p in (REPO / 'configs').glob('*/*.py')
                 if p.parent.name != '_base_')
ABSENT = '<absent>'  # the key, or the list element of that type, must not be there


def _at(cfg, path: str):
    """The value at ``path`` in a config: dotted keys (``a..b``: the key ``.b`` of ``a``), ``0``
    list positions, ``[Type]`` the one list element whose ``type`` is ``Type`` (with or without
    a scope prefix); ABSENT if there is none."""
    import re
    parts = []
    for piece in path.replace('..', '.\0').split('.'):
        parts += re.findall(r'\[[^\]]+\]|[^\[\]]+', piece.replace('\0', '.'))
    node = cfg
    for part in parts:
        if part.startswith('['):
            hits = [e for e in node or () if isinstance(e, dict)
                    and str(e.get('type', '')).split('.')[-1] == part[1:-1]]
            assert len(hits) <= 1, f'{path}: {len(hits)} elements of type {part[1:-1]}'
            node = hits[0] if hits else ABSENT
        elif isinstance(node, (list, tuple)):
            node = node[int(part)] if int(part) < len(node) else ABSENT
        elif hasattr(node, 'keys'):  # a dict, ConfigDict or Config
            node = node.get(part, ABSENT)
        else:
            node = ABSENT
        if node is ABSENT:
            return ABSENT
    return node


def _same(value, expected) -> bool:
    if isinstance(expected, float) and isinstance(value, (int, float)) \
            and not isinstance(value, bool):
        return value == pytest.approx(expected, rel=1e-9, abs=0.0)
    if isinstance(expected, (list, tuple)) and isinstance(value, (list, tuple)):
        return len(value) == len(expected) and all(map(_same, value, expected))
    if isinstance(expected, dict) and isinstance(value, dict):  # a registry scope aside
        return set(value) - {'_scope_'} == set(expected) and \
            all(_same(value[k], expected[k]) for k in expected)
    return value == expected


# -- SViTE (VITA-Group/SViTE). DeiT recipe: SViTE/main.py:85 lr 5e-4 scaled by batch * world / 512
# (main.py:303), :80 wd 0.05, :76 no clip, :100 5 warm-up epochs from :93 1e-6, :95 min lr 1e-5,
# cosine (timm default), :60 drop path 0.1, :134/:136 mixup 0.8 / cutmix 1.0, :115 smoothing 0.1,
# :124 random erasing 0.25, :119-121 repeated augmentation, :112 RandAugment m9 mstd 0.5, :305
# timm's optimizer (no decay on 1-D parameters, pos_embed, cls_token). Masks: README.md:68-73
# fixed_ERK, gradient growth, magnitude death; dst_utils/core.py:17 death rate 0.5, :38 cosine to
# 0.005; engine.py:82 updates until t_end = 0.8 (main.py:36) of training. EMA (main.py:65)
# dropped, fp32 instead of AMP (engine.py:52), lr stepped per iteration instead of per epoch
# (main.py:387): configs/svite/README.md, rows "EMA", "mixed precision", "lr schedule
# granularity".
def _svite_recipe(batch: int, density: float, interval: int) -> dict:
    gpus = 8  # README.md:60 / :87 --nproc_per_node=8
    lr = 5e-4 * batch * gpus / 512
    return {
        'train_dataloader.batch_size': batch, 'auto_scale_lr.base_batch_size': batch * gpus,
        'optim_wrapper.optimizer.type': 'AdamW', 'optim_wrapper.optimizer.lr': lr,
        'optim_wrapper.optimizer.weight_decay': 0.05, 'optim_wrapper.clip_grad': None,
        'train_cfg.max_epochs': 600,  # README.md:63 / :90
        'param_scheduler.0.type': 'LinearLR', 'param_scheduler.0.end': 5,
        'param_scheduler.0.start_factor': 1e-6 / lr,
        'param_scheduler.1.type': 'CosineAnnealingLR', 'param_scheduler.1.begin': 5,
        'param_scheduler.1.end': 600, 'param_scheduler.1.eta_min': 1e-5,
        'param_scheduler.0.convert_to_iter_based': True,
        'param_scheduler.1.convert_to_iter_based': True,
        'optim_wrapper.type': ABSENT,  # mmengine's OptimWrapper: fp32
        'model.backbone.drop_path_rate': 0.1,
        'model.train_cfg.augments': [dict(type='Mixup', alpha=0.8),
                                     dict(type='CutMix', alpha=1.0)],
        'model.head.loss.label_smooth_val': 0.1,
        'train_dataloader.dataset.pipeline[RandomErasing].erase_prob': 0.25,
        'train_dataloader.dataset.pipeline[RandAugment].magnitude_level': 9,
        'train_dataloader.dataset.pipeline[RandAugment].magnitude_std': 0.5,
        'train_dataloader.sampler.type': 'RepeatAugSampler',
        'optim_wrapper.paramwise_cfg.norm_decay_mult': 0.0,
        'optim_wrapper.paramwise_cfg.bias_decay_mult': 0.0,
        'optim_wrapper.paramwise_cfg.custom_keys..cls_token': dict(decay_mult=0.0),
        'optim_wrapper.paramwise_cfg.custom_keys..pos_embed': dict(decay_mult=0.0),
        'custom_hooks[EMAHook]': ABSENT,
        'custom_hooks[SparseTrainingHook]': dict(
            type='SparseTrainingHook', density=density, sparse_init='fixed_ERK',
            growth='gradient', update_interval=interval, stop_ratio=0.8, death_rate=0.5,
            death_rate_min=0.005),
    }


def _s2vite_recipe(batch: int, interval: int, heads: float, mlp: float) -> dict:
    row = _svite_recipe(batch, 0.4, interval)
    del row['custom_hooks[SparseTrainingHook]']
    return {**row, 'model.backbone.type': 'mmsparse.SViTEVisionTransformer',
            'custom_hooks[SparseTrainingHook]': ABSENT,
            'custom_hooks[StructuredSparseTrainingHook]': dict(
                type='StructuredSparseTrainingHook', head_density=heads, mlp_density=mlp,
                update_interval=interval, stop_ratio=0.8, death_rate=0.5,
                death_rate_min=0.005)}


# SViTE+ (cmd/vm/0517/line67.sh: density 0.5, --token_number 177 = 176 patches + the class token;
# line68.sh: 138 = 137 + 1): engine.py:48 tau 10 -> 0.1 over training. The training path and the
# Gumbel noise differ on purpose: configs/svite/README.md, row "token selector, training"
# (test_svite_plus_imagenet_configs_train_as_the_readme_says).
def _svite_plus_recipe(keep: float) -> dict:
    return {**_svite_recipe(64, 0.5, 15000),
            'model.backbone.type': 'mmsparse.SViTEVisionTransformer',
            'model.backbone.token_keep': keep,
            'custom_hooks[TokenSelectorTemperatureHook]': dict(
                type='TokenSelectorTemperatureHook', start=10.0, end=0.1)}


# -- DynamicViT (raoyongming/DynamicViT): README.md:127 (DeiT-S) / :133 (DeiT-B): 8 GPUs x 128,
# 30 epochs, --lr 1e-3 (absolute: main.py:517 uses it unscaled, so it is the lr of 1024 images),
# --warmup_epochs 5, --base_rate 0.7; DeiT-B adds --drop_path 0.2 --ratio_weight 5.0.
# main.py:87 min lr 1e-6, :78 wd 0.05, :74 no clip, :63 EMA 0.9999, :191 ratio weight 2.0,
# :425 distill weight 0.5 (cls and tokens), :337 pruning before blocks 3, 6, 9, :340-343 DeiT-S
# built without drop path; :189 backbone lr x 0.01 and optim_factory.py:107 backbone frozen for
# 5 epochs. The warm-up starts at 0 (utils.py:433); LinearLR at 1e-6 of the lr.
def _dynamicvit_recipe(drop_path: float, ratio_weight: float) -> dict:
    return {
        'train_dataloader.batch_size': 128, 'auto_scale_lr.base_batch_size': 1024,
        'optim_wrapper.optimizer.type': 'AdamW', 'optim_wrapper.optimizer.lr': 1e-3,
        'optim_wrapper.optimizer.weight_decay': 0.05, 'optim_wrapper.clip_grad': None,
        'train_cfg.max_epochs': 30,
        'param_scheduler.0.type': 'LinearLR', 'param_scheduler.0.end': 5,
        'param_scheduler.0.start_factor': 1e-6,
        'param_scheduler.1.type': 'CosineAnnealingLR', 'param_scheduler.1.begin': 5,
        'param_scheduler.1.end': 30, 'param_scheduler.1.eta_min': 1e-6,
        'model.backbone.pruning_loc': [3, 6, 9], 'model.backbone.keep_rate': 0.7,
        'model.backbone.drop_path_rate': drop_path, 'model.ratio_weight': ratio_weight,
        'model.distill_weight': 0.5, 'model.token_distill_weight': 0.5,
        'custom_hooks[DynamicViTOptimHook].backbone_lr_scale': 0.01,
        'custom_hooks[DynamicViTOptimHook].freeze_backbone': 5,
        'custom_hooks[EMAHook].momentum': 1e-4,
    }


# -- UVC (VITA-Group/UVC). Stage 1, README.md:69-106: 2 GPUs (:70) x 512 (:78, per process),
# 30 epochs (:79), --learning_rate 1e-4 (:83, joint_train.py:271: unscaled, the lr of 1024
# images), --budget 0.5 (:85), --gating_weight 5e-4 (:89), --glr 0.1 (:94), --seed 730 (:97),
# --warmup_epochs 5 (:103), --z_grad_clip 0.5 (:105), --gating_interval 50 (:106),
# --distillation-alpha 0.1 (:77), --zlr_schedule_list 1,5,9,13,17 (:82); joint_train.py:727
# warm-up 500 steps, :729 clip 1.0, :719 wd 0.05, :762 slr 0.02, :758 ylr 1e-4; cosine to 0
# (utils/scheduler.py WarmupCosineSchedule). Stage 2, README.md:112-124: 2 GPUs x 256, 120 epochs,
# post_train.py:441 lr 1e-4 scaled by batch * world / 512 (:297), :487 warm-up 5 epochs from
# :479 1e-6, :481 min lr 1e-5, :452 clip 1.0; DeiT-T run_post_train.sh:10 batch 128 (lr 1e-4 x
# 256 / 512 = 5e-5 at 256 images: our 1e-4 is the lr of 512). The end-of-search projection:
# configs/uvc/README.md, "project_at_end" (test_uvc_imagenet_stage1_projects_... above).
def _uvc_stage1(budget: float) -> dict:
    return {
        'train_dataloader.batch_size': 512, 'auto_scale_lr.base_batch_size': 1024,
        'optim_wrapper.weights.optimizer.type': 'AdamW',
        'optim_wrapper.weights.optimizer.lr': 1e-4,
        'optim_wrapper.weights.optimizer.weight_decay': 0.05,
        'optim_wrapper.weights.clip_grad.max_norm': 1.0,
        'optim_wrapper.arch.optimizer.lr': 0.02, 'optim_wrapper.gates.optimizer.lr': 0.1,
        'optim_wrapper.duals.optimizer.lr': 1e-4,
        'param_scheduler.weights.0.type': 'LinearLR', 'param_scheduler.weights.0.end': 500,
        'param_scheduler.weights.0.by_epoch': False,
        'param_scheduler.weights.1.type': 'CosineAnnealingLR',
        'param_scheduler.weights.1.eta_min': 0.0,
        'param_scheduler.flops_dual.0.values': [1.0, 5.0, 9.0, 13.0, 17.0],
        'train_cfg.max_epochs': 30, 'randomness.seed': 730,
        'model.budget': budget, 'model.warmup_epochs': 5, 'model.distill_alpha': 0.1,
        'model.gating_weight': 5e-4, 'model.gating_interval': 50, 'model.resource_clip': 0.5,
        'model.backbone.mode': 'search',
    }


def _uvc_stage2(budget: float, batch: int) -> dict:
    return {
        'train_dataloader.batch_size': batch, 'auto_scale_lr.base_batch_size': 512,
        'optim_wrapper.optimizer.type': 'AdamW', 'optim_wrapper.optimizer.lr': 1e-4,
        'optim_wrapper.optimizer.weight_decay': 0.05, 'optim_wrapper.clip_grad.max_norm': 1.0,
        'param_scheduler.0.type': 'LinearLR', 'param_scheduler.0.end': 5,
        'param_scheduler.0.start_factor': 1e-6 / 1e-4,
        'param_scheduler.1.type': 'CosineAnnealingLR', 'param_scheduler.1.eta_min': 1e-5,
        'param_scheduler.1.end': 120, 'train_cfg.max_epochs': 120,
        'model.budget': budget, 'model.backbone.mode': 'fixed',
    }


# -- SparseViT (mit-han-lab/sparsevit), COCO: configs/sparsevit/mask_rcnn_sparsevit.py:31 and
# mask_rcnn_sparsevit_saa.py:31 AdamW lr 1e-5, :33 wd 0.05, :47/:50 test at 672 x 672 without
# keeping the ratio; configs/swin/mask_rcnn_swin-t-p4-w7_fpn_fp16_ms-crop-3x_coco.py:3 dynamic
# loss scale from 512; _base_/datasets/coco_instance.py:32 2 images per GPU (x 8 GPUs, README
# "dist_train.sh ... 8"). SAA: ..._ms-crop-1x_coco.py:91-92 12 epochs, steps [8, 11], 1000
# warm-up iterations (_base_/schedules/schedule_1x.py:9 from 0.001 of the lr); tools/train.py:35-40
# ratios 0..0.8 in steps of 0.1, one per pair of blocks. cfg1/2/3: sparsevit_cfg*_*ms.py:3-4 36
# epochs, steps [27, 33]; :6 the ratios; :8 start from the SAA model's epoch 12. The dense start
# of the SAA run: configs/sparsevit/README.md, row "dense start of the COCO recipe".
_SPARSEVIT_COCO = {
    'model.backbone.type': 'mmsparse.SparseSwinTransformer', 'model.backbone.init_cfg': None,
    'model.backbone.drop_path_rate': 0.2,
    'train_dataloader.batch_size': 2, 'auto_scale_lr.base_batch_size': 16,
    'optim_wrapper.type': 'AmpOptimWrapper', 'optim_wrapper.loss_scale': dict(init_scale=512.),
    'optim_wrapper.optimizer.type': 'AdamW', 'optim_wrapper.optimizer.lr': 1e-5,
    'optim_wrapper.optimizer.weight_decay': 0.05,
    'optim_wrapper.paramwise_cfg.custom_keys': {  # mask_rcnn_sparsevit.py:34-39
        'absolute_pos_embed': dict(decay_mult=0.), 'relative_position_bias_table':
        dict(decay_mult=0.), 'norm': dict(decay_mult=0.)},
    'test_dataloader.dataset.pipeline[Resize]': dict(type='Resize', scale=(672, 672),
                                                     keep_ratio=False),
    'param_scheduler.0': dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
                              end=1000),
}
_SAA_HOOK = dict(type='mmsparse.SparsityAwareAdaptationHook',
                 candidates=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], group_size=2)
_SAA_COCO = {**_SPARSEVIT_COCO, 'train_cfg.max_epochs': 12, 'model.backbone.window_ratios': None,
             'param_scheduler.1.milestones': [8, 11], 'param_scheduler.1.end': 12,
             'custom_hooks[SparsityAwareAdaptationHook]': _SAA_HOOK}
_CFG1 = [[0.3, 0.3], [0, 0], [0.1, 0.1, 0.2, 0.2, 0.2, 0.2], [0, 0]]
_CFG2 = [[0.6, 0.6], [0, 0], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0, 0]]
_CFG3 = [[0.7, 0.7], [0, 0], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0, 0]]


def _finetune_coco(ratios) -> dict:
    return {**_SPARSEVIT_COCO, 'train_cfg.max_epochs': 36, 'model.backbone.window_ratios': ratios,
            'param_scheduler.1.milestones': [27, 33], 'param_scheduler.1.end': 36,
            'custom_hooks[SparsityAwareAdaptationHook]': ABSENT,
            'load_from': './work_dirs/mask-rcnn_sparsevit-swin-t_saa_coco/epoch_12.pth'}


# ADE20K: the original has no segmentation recipe; ours (configs/sparsevit/README.md, row
# "segmentation"): mmseg's UperNet Swin-T (8 x 2 images) fine-tuned 40k iterations at lr 6e-6,
# 1500 warm-up iterations, then poly.
_SPARSEVIT_ADE = {
    'model.backbone.type': 'mmsparse.SparseSwinTransformer', 'model.backbone.init_cfg': None,
    'train_dataloader.batch_size': 2, 'optim_wrapper.optimizer.type': 'AdamW',
    'optim_wrapper.optimizer.lr': 6e-6, 'optim_wrapper.optimizer.weight_decay': 0.01,
    'train_cfg.max_iters': 40000, 'train_cfg.val_interval': 4000,
    'param_scheduler.0': dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
                              end=1500),
    'param_scheduler.1': dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=40000,
                              by_epoch=False),
}

# -- ours: the demo ViT on Fashion-MNIST (configs/vit/vit-tiny-p4_fashion-mnist.py) and what
# starts from it; the VOC samples (configs/swin/*_voc-sample.py) and what starts from them.
_FASHION = {
    'train_dataloader.batch_size': 64, 'auto_scale_lr.base_batch_size': 64,
    'optim_wrapper.optimizer.type': 'AdamW', 'optim_wrapper.optimizer.lr': 2e-3,
    'optim_wrapper.optimizer.weight_decay': 0.05, 'train_cfg.max_epochs': 1,
    'param_scheduler.0': dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
                              end=40),
    'param_scheduler.1': dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0,
                              end=1, convert_to_iter_based=True),
    'randomness.seed': 0,
}
_FASHION_SVITE = {**_FASHION, 'custom_hooks[SparseTrainingHook]': dict(
    type='SparseTrainingHook', density=0.5, sparse_init='ERK', init_by='magnitude',
    growth='gradient', update_interval=100, stop_ratio=0.8, death_rate=0.1,
    death_rate_min=0.005)}
_FASHION_SVITE_PLUS = {
    **_FASHION, 'model.backbone.token_keep': 0.7,
    'model.backbone.type': 'mmsparse.SViTEVisionTransformer',
    'custom_hooks[SparseTrainingHook]': dict(
        type='SparseTrainingHook', density=0.5, sparse_init='fixed_ERK', growth='gradient',
        update_interval=100, stop_ratio=0.8, death_rate=0.5, death_rate_min=0.005),
    'custom_hooks[TokenSelectorTemperatureHook]': dict(
        type='TokenSelectorTemperatureHook', start=10.0, end=0.1, noise_until=0.5)}
_DEMO_CKPT = 'work_dirs/demo/vit-tiny-p4_fashion-mnist/epoch_1.pth'
_UVC_FASHION_1 = {
    'train_dataloader.batch_size': 64, 'train_cfg.max_epochs': 1, 'load_from': _DEMO_CKPT,
    'optim_wrapper.weights.optimizer.lr': 2e-4, 'optim_wrapper.weights.clip_grad.max_norm': 1.0,
    'optim_wrapper.arch.optimizer.lr': 5e-4, 'optim_wrapper.gates.optimizer.lr': 0.1,
    'optim_wrapper.duals.optimizer.lr': 1e-4, 'optim_wrapper.flops_dual.optimizer.lr': 0.1,
    'model.budget': 0.5, 'model.warmup_epochs': 0, 'model.distill_alpha': 0.5,
    'model.gating_weight': 5e-4, 'model.gating_interval': 10, 'model.dual_init': 0.1,
    'model.resource_penalty': 5.0, 'model.backbone.mode': 'search',
}
_VOC_DET = {
    'train_dataloader.batch_size': 2, 'train_cfg.max_epochs': 2,
    'optim_wrapper.optimizer.type': 'AdamW', 'optim_wrapper.optimizer.lr': 1e-4,
    'param_scheduler': [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)],
    'model.backbone.init_cfg': None, 'model.roi_head.bbox_head.num_classes': 20,
    'auto_scale_lr.enable': False,
}
_VOC_SEG = {
    'train_dataloader.batch_size': 2, 'train_cfg.max_iters': 4,
    'optim_wrapper.optimizer.type': 'AdamW', 'optim_wrapper.optimizer.lr': 6e-5,
    'param_scheduler': [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)],
    'model.backbone.init_cfg': None, 'model.decode_head.num_classes': 21,
}
_VOC_SAA = {'custom_hooks[SparsityAwareAdaptationHook]': _SAA_HOOK,
            'model.backbone.type': 'mmsparse.SparseSwinTransformer',
            'model.backbone.window_ratios': None}
_VOC_CFG3 = {'model.backbone.type': 'mmsparse.SparseSwinTransformer',
             'model.backbone.window_ratios': _CFG3}

SHIPPED_ROWS = {
    # SViTE-Small (README.md:59-73: 8 x 64, density 0.4, every 15000 iterations) and density 0.5
    'svite/svite-deit-small_density0.4_8xb64_in1k.py': _svite_recipe(64, 0.4, 15000),
    'svite/svite-deit-small_density0.5_8xb64_in1k.py': _svite_recipe(64, 0.5, 15000),
    # SViTE-Base (README.md:86-100: 8 x 128, density 0.4, every 7000 iterations)
    'svite/svite-deit-base_density0.4_8xb128_in1k.py': {
        **_svite_recipe(128, 0.4, 7000), 'model.backbone.arch': 'deit-base'},
    'svite/svite-deit-base_density0.5_8xb128_in1k.py': {
        **_svite_recipe(128, 0.5, 7000), 'model.backbone.arch': 'deit-base'},
    # S²ViTE: cmd/vm/0502/vm2.sh (Small: heads 0.7, MLP 0.6, 15000), cmd/vm/0430/
    # deit_base_structure.sh (Base: 0.7, 0.6, 7000, 8 x 128)
    'svite/s2vite-deit-small_8xb64_in1k.py': _s2vite_recipe(64, 15000, 0.7, 0.6),
    'svite/s2vite-deit-base_8xb128_in1k.py': {
        **_s2vite_recipe(128, 7000, 0.7, 0.6), 'model.backbone.arch': 'deit-base'},
    'svite/svite-plus-deit-small_tokens0.9_8xb64_in1k.py': _svite_plus_recipe(0.9),
    'svite/svite-plus-deit-small_tokens0.7_8xb64_in1k.py': _svite_plus_recipe(0.7),
    # ours (configs/svite/README.md, row "Fashion-MNIST configs")
    'svite/svite-vit-tiny-p4_density0.5_fashion-mnist.py': _FASHION_SVITE,
    'svite/svite-vit-tiny-p4_static-magnitude0.5_fashion-mnist.py': {
        **_FASHION, 'custom_hooks[SparseTrainingHook]': dict(
            type='SparseTrainingHook', density=0.5, sparse_init='ERK', init_by='magnitude',
            update_interval=100, stop_ratio=0.0)},
    'svite/s2vite-vit-tiny-p4_fashion-mnist.py': {
        **_FASHION, 'custom_hooks[StructuredSparseTrainingHook]': dict(
            type='StructuredSparseTrainingHook', head_density=0.7, mlp_density=0.6,
            update_interval=100, stop_ratio=0.8, death_rate=0.5, death_rate_min=0.005)},
    'svite/svite-plus-vit-tiny-p4_fashion-mnist.py': _FASHION_SVITE_PLUS,
    'svite/svite-plus-vit-tiny-p4_density0.5-tokens0.7_ft-from-dense_fashion-mnist.py': {
        **_FASHION_SVITE_PLUS, 'optim_wrapper.optimizer.lr': 5e-4,
        'train_dataloader.dataset.indices': 12800,
        'optim_wrapper.paramwise_cfg.custom_keys': {
            '.cls_token': dict(decay_mult=0.0), '.pos_embed': dict(decay_mult=0.0),
            '.token_selector': dict(lr_mult=10.0)},
        'param_scheduler.0': dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
                                  end=20),
        'custom_hooks[SparseTrainingHook]': dict(
            type='SparseTrainingHook', density=0.5, sparse_init='ERK', init_by='magnitude',
            growth='gradient', update_interval=50, stop_ratio=0.8, death_rate=0.3,
            death_rate_min=0.005)},
    'vit/vit-tiny-p4_fashion-mnist.py': {
        **_FASHION, 'model.backbone.arch': dict(embed_dims=96, num_layers=6, num_heads=3,
                                                feedforward_channels=384)},
    # DynamicViT: DeiT-S README.md:127, DeiT-B README.md:133; DeiT-T is not in the original's
    # README (ours: the DeiT-S recipe)
    'dynamicvit/dynamicvit-deit-small_8xb128_in1k.py': _dynamicvit_recipe(0.0, 2.0),
    'dynamicvit/dynamicvit-deit-base_8xb128_in1k.py': {
        **_dynamicvit_recipe(0.2, 5.0), 'model.backbone.arch': 'deit-base'},
    'dynamicvit/dynamicvit-deit-tiny_8xb128_in1k.py': {
        **_dynamicvit_recipe(0.0, 2.0), 'model.backbone.arch': 'deit-tiny'},
    'dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py': {  # ours
        'train_dataloader.batch_size': 128, 'auto_scale_lr.base_batch_size': 128,
        'train_dataloader.dataset.indices': 19200, 'train_cfg.max_epochs': 1,
        'optim_wrapper.optimizer.lr': 1e-2,
        'param_scheduler': [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
                                 end=10)],
        'model.backbone.pruning_loc': [2, 4], 'model.backbone.keep_rate': 0.7,
        'model.ratio_weight': 2.0, 'model.distill_weight': 0.5,
        'model.token_distill_weight': 0.5,
        'custom_hooks[DynamicViTOptimHook].backbone_lr_scale': 0.01,
        'custom_hooks[DynamicViTOptimHook].freeze_backbone': 1},
    # stacked sparsity (ours): the DynamicViT recipes on a compact model's structure and weights
    'compose/dynamicvit-uvc-vit-tiny-p4_budget0.5_fashion-mnist.py': {
        'model.type': 'mmsparse.DynamicViTClassifier', 'model.teacher': ABSENT,
        'model.compact_checkpoint':
            'work_dirs/uvc-vit-tiny-p4_stage2_fashion-mnist/uvc_compact.pth',
        'model.backbone.pruning_loc': [2, 4], 'model.backbone.keep_rate': 0.7,
        'train_dataloader.dataset.indices': 19200, 'optim_wrapper.optimizer.lr': 1e-2,
        'custom_hooks[DynamicViTOptimHook].freeze_backbone': 1},
    'compose/dynamicvit-s2vite-vit-tiny-p4_fashion-mnist.py': {
        'model.type': 'mmsparse.DynamicViTClassifier', 'model.teacher': ABSENT,
        'model.compact_checkpoint': 'work_dirs/s2vite-vit-tiny-p4_fashion-mnist/compact/'
                                    's2vite-vit-tiny-p4_fashion-mnist_compact.pth',
        'model.backbone.pruning_loc': [2, 4], 'model.backbone.keep_rate': 0.7,
        'train_dataloader.dataset.indices': 19200, 'optim_wrapper.optimizer.lr': 1e-2,
        'custom_hooks[DynamicViTOptimHook].freeze_backbone': 1},
    'compose/dynamicvit-uvc-deit-small_budget0.5_8xb128_in1k.py': {
        **_dynamicvit_recipe(0.0, 2.0), 'model.teacher': ABSENT, 'load_from': None,
        'model.compact_checkpoint':
            'work_dirs/uvc-deit-small_stage2_budget0.5_in1k/uvc_compact.pth'},
    # the joint search of structure and keep ratios on Fashion-MNIST (ours)
    'compose/dynamicvit-compose_search_fashion-mnist.py': {
        'model.type': 'mmsparse.DynamicViTClassifier', 'model.backbone.pruning_loc': [2, 4],
        'search_cfg.max_latency': 4.0, 'search_cfg.min_latency': 0.0,
        'search_cfg.candidates': [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],
        'search_cfg.structures.0.name': 'uvc0.5', 'search_cfg.structures.1.name': 's2vite',
        'search_cfg.structures.2.name': 'dense',
        'search_cfg.structures.0.compact_checkpoint':
            'work_dirs/uvc-vit-tiny-p4_stage2_fashion-mnist/uvc_compact.pth',
        'search_cfg.structures.2.compact_checkpoint': None},
    # UVC: DeiT-S at budgets 0.5 / 0.58 (README.md:124 "nasprune_0.58"), DeiT-T (README.md:74)
    'uvc/uvc-deit-small_stage1_budget0.5_in1k.py': _uvc_stage1(0.5),
    'uvc/uvc-deit-small_stage1_budget0.58_in1k.py': _uvc_stage1(0.58),
    'uvc/uvc-deit-tiny_stage1_budget0.5_in1k.py': {
        **_uvc_stage1(0.5), 'model.backbone.arch': 'deit-tiny'},
    'uvc/uvc-deit-small_stage2_budget0.5_in1k.py': _uvc_stage2(0.5, 256),
    'uvc/uvc-deit-small_stage2_budget0.58_in1k.py': _uvc_stage2(0.58, 256),
    'uvc/uvc-deit-tiny_stage2_budget0.5_in1k.py': {
        **_uvc_stage2(0.5, 128), 'model.backbone.arch': 'deit-tiny'},
    # ours
    'uvc/uvc-vit-tiny-p4_stage1_fashion-mnist.py': _UVC_FASHION_1,
    'uvc/uvc-vit-tiny-p4_stage1_fashion-mnist-demo.py': {
        **_UVC_FASHION_1, 'train_dataloader.dataset.indices': 6400},
    'uvc/uvc-vit-tiny-p4_stage2_fashion-mnist.py': {
        'train_cfg.max_epochs': 1, 'model.budget': 0.5, 'model.backbone.mode': 'fixed',
        'load_from': 'work_dirs/uvc-vit-tiny-p4_stage1_fashion-mnist/epoch_1.pth'},
    'uvc/uvc-vit-tiny-p4_stage2_fashion-mnist-demo.py': {
        'train_cfg.max_epochs': 1, 'model.budget': 0.5, 'model.backbone.mode': 'fixed',
        'train_dataloader.dataset.indices': 9600,
        'load_from': 'work_dirs/uvc-vit-tiny-p4_stage1_fashion-mnist-demo/epoch_1.pth'},
    # SparseViT, COCO
    'sparsevit/mask-rcnn_sparsevit-swin-t_coco.py': {
        **_SPARSEVIT_COCO, 'model.backbone.window_ratios': None},
    'sparsevit/mask-rcnn_sparsevit-swin-t_saa_coco.py': _SAA_COCO,
    'sparsevit/mask-rcnn_sparsevit-swin-t_search_coco.py': _SAA_COCO,
    'sparsevit/mask-rcnn_sparsevit-swin-t_cfg1_coco.py': _finetune_coco(_CFG1),
    'sparsevit/mask-rcnn_sparsevit-swin-t_cfg2_coco.py': _finetune_coco(_CFG2),
    'sparsevit/mask-rcnn_sparsevit-swin-t_cfg3_coco.py': _finetune_coco(_CFG3),
    # SparseViT, ADE20K (ours, see above)
    'sparsevit/upernet_sparsevit-swin-t_ade20k.py': {
        **_SPARSEVIT_ADE, 'model.backbone.window_ratios': None},
    'sparsevit/upernet_sparsevit-swin-t_saa_ade20k.py': {
        **_SPARSEVIT_ADE, 'model.backbone.window_ratios': None,
        'custom_hooks[SparsityAwareAdaptationHook]': _SAA_HOOK},
    'sparsevit/upernet_sparsevit-swin-t_cfg3_ade20k.py': {
        **_SPARSEVIT_ADE, 'model.backbone.window_ratios': _CFG3,
        'custom_hooks[SparsityAwareAdaptationHook]': ABSENT,
        'load_from': './work_dirs/upernet_sparsevit-swin-t_saa_ade20k/iter_40000.pth'},
    # VOC samples (ours)
    'swin/mask-rcnn_swin-t-p4-w7_fpn_voc-sample.py': _VOC_DET,
    'swin/upernet_swin-t-p4-w7_voc-sample.py': _VOC_SEG,
    'sparsevit/mask-rcnn_sparsevit-swin-t_saa_voc-sample.py': {**_VOC_DET, **_VOC_SAA},
    'sparsevit/mask-rcnn_sparsevit-swin-t_search_voc-sample.py': {**_VOC_DET, **_VOC_SAA},
    'sparsevit/mask-rcnn_sparsevit-swin-t_cfg3_voc-sample.py': {**_VOC_DET, **_VOC_CFG3},
    'sparsevit/upernet_sparsevit-swin-t_saa_voc-sample.py': {**_VOC_SEG, **_VOC_SAA},
    'sparsevit/upernet_sparsevit-swin-t_cfg3_voc-sample.py': {**_VOC_SEG, **_VOC_CFG3},
}


def test_every_shipped_config_has_a_row():
    assert len(SHIPPED) > 40
    missing, stale = set(SHIPPED) - set(SHIPPED_ROWS), set(SHIPPED_ROWS) - set(SHIPPED)
    assert not missing, f'configs without a row in SHIPPED_ROWS: {sorted(missing)}'
    assert not stale, f'rows without a config: {sorted(stale)}'


_LOADED: dict = {}


def _shipped(name: str):
    """A shipped config, loaded once for the tests of this section; callers must not change it.

    Resolving an ``mmdet::`` / ``mmpretrain::`` base config parses every metafile of that
    package (~1 s per base reference): while loading here, mmengine's reading of those files
    (unchanged while the tests run) is memoised."""
    import functools
    from unittest import mock

    import mmengine.config.utils as cfg_utils
    global _READ_METAFILE
    if name not in _LOADED:
        if _READ_METAFILE is None:
            _READ_METAFILE = functools.lru_cache(maxsize=None)(cfg_utils.load)
        with mock.patch.object(cfg_utils, 'load', _READ_METAFILE):
            _LOADED[name] = _load(REPO / 'configs' / name)
    return _LOADED[name]


_READ_METAFILE = None


@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_config_resolves_to_its_row(name):
    cfg = _shipped(name)
    row = SHIPPED_ROWS.get(name)
    assert row, f'{name} has no row in SHIPPED_ROWS'
    wrong = {key: (_at(cfg, key), want) for key, want in row.items()
             if not _same(_at(cfg, key), want)}
    assert not wrong, '\n'.join(f'{name}: {k} = {v!r}, the table says {w!r}'
                                for k, (v, w) in wrong.items())
    # a name's NxbM is the batch the lr is given for
    import re
    m = re.search(r'_(\d+)xb(\d+)_', name)
    if m:
        assert cfg.train_dataloader.batch_size == int(m[2])
        assert cfg.auto_scale_lr.base_batch_size == int(m[1]) * int(m[2])


def _compact_checkpoint_for(model_cfg) -> str:
    """A compact checkpoint (half the MLP width in every layer) of ``model_cfg``'s arch, as
    the compactions write it, for the configs that start from one (configs/compose/)."""
    import copy
    import os
    import tempfile

    import torch

    from mmsparse.models.layers.compact_vit import compact_structure
    from mmsparse.registry import MODELS
    bb = model_cfg.backbone
    keys = ('arch', 'img_size', 'patch_size', 'in_channels')
    backbone = dict(type='mmsparse.CompactVisionTransformer',
                    **{k: copy.deepcopy(bb[k]) for k in keys if k in bb})
    path = os.path.join(tempfile.mkdtemp(), 'compact.pth')
    model = MODELS.build(dict(type='mmpretrain.ImageClassifier', _scope_='mmpretrain',
                              backbone=backbone, head=copy.deepcopy(model_cfg.head)))
    # half of the dense MLP widths: the built model has the structure, not the arch's sizes
    narrow = MODELS.build(dict(type='mmpretrain.ImageClassifier', _scope_='mmpretrain',
                               backbone=dict(backbone, mlp_dims=[
                                   d // 2 for d in model.backbone.layer_mlp_dims]),
                               head=copy.deepcopy(model_cfg.head)))
    torch.save(dict(meta=dict(compact_structure=compact_structure(narrow.backbone)),
                    state_dict=narrow.state_dict()), path)
    return path


# the originals' model sizes (timm's deit_*_patch16_224, which SViTE's models.py builds)
DEIT_PARAMS = {'deit-tiny': 5_717_416, 'deit-small': 22_050_664, 'deit-base': 86_567_656}


@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_config_model_builds(name):
    import copy
    from unittest import mock

    from mmsparse.utils import build_model
    cfg = copy.deepcopy(_shipped(name))
    cfg.load_from = None  # build_model never initialises weights: no download either way
    if cfg.model.get('compact_checkpoint'):  # its structure is read when the model is built
        cfg.model.compact_checkpoint = _compact_checkpoint_for(cfg.model)
    # the shapes are what is checked: skip torch's random initialisation of every Linear / Conv
    # (seconds for a DeiT-B and its teacher copy on one thread)
    from torch import nn
    with mock.patch.object(nn.Linear, 'reset_parameters', lambda self: None), \
            mock.patch.object(nn.modules.conv._ConvNd, 'reset_parameters', lambda self: None):
        model = build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    arch = cfg.model.backbone.get('arch')
    if name.startswith('svite/') and name.endswith('_in1k.py'):
        # SViTE / S²ViTE: the DeiT itself; SViTE+: plus the selector's Linear(C, 1)
        selector = getattr(model.backbone, 'token_selector', None)
        extra = 0 if selector is None else sum(p.numel() for p in selector.parameters())
        assert n_params - extra == DEIT_PARAMS[arch]
    if cfg.model.backbone.get('token_keep') is not None:
        # the original's --token_number counts the class token: 177 (0.9) and 138 (0.7) of 197
        kept = model.backbone.num_kept_tokens()
        if arch == 'deit-small':
            assert kept + 1 == {0.9: 177, 0.7: 138}[cfg.model.backbone.token_keep]
        else:  # the demo ViT: 49 patches
            assert kept == int(49 * cfg.model.backbone.token_keep)


@pytest.mark.parametrize('name', [n for n in SHIPPED
                                  if n.startswith('svite/svite-plus-') and n.endswith('_in1k.py')])
def test_svite_plus_imagenet_configs_train_as_the_readme_says(name):
    # configs/svite/README.md, row "token selector, training": the selection is the attention's
    # key policy and the Gumbel noise fades 1 -> 0 over training; the original (SViTE
    # vision_transformer.py:291-300) multiplies the tokens by the 0/1 selection, with Gumbel
    # noise of scale 1 at every step (:49-50)
    from unittest import mock

    from torch import nn

    from mmsparse.registry import HOOKS, MODELS
    cfg = _shipped(name)
    hook = HOOKS.build([h for h in cfg.custom_hooks
                        if h['type'] == 'TokenSelectorTemperatureHook'][0])
    assert (hook.tau_at(0, 1000), hook.tau_at(1000, 1000)) == (10.0, pytest.approx(0.1))
    assert (hook.noise_at(0, 1000), hook.noise_at(500, 1000), hook.noise_at(1000, 1000)) == \
        (1.0, 0.5, 0.0)
    with mock.patch.object(nn.Linear, 'reset_parameters', lambda self: None), \
            mock.patch.object(nn.modules.conv._ConvNd, 'reset_parameters', lambda self: None):
        backbone = MODELS.build(cfg.model.backbone)
    assert backbone.token_selector.train_mode == 'mask'
    row = [line for line in (REPO / 'configs/svite/README.md').read_text().splitlines()
           if line.startswith('| token selector, training |')]
    assert len(row) == 1
    assert "`token_train_mode='mask'`" in row[0] and 'noise fades 1 -> 0' in row[0]
    assert "`model.backbone.token_train_mode='zero'` with the hook's `noise_end=1.0` restores" \
        in row[0]
