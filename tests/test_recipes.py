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
    for path in glob.glob(str(REPO / 'configs/sparsevit/mask-rcnn_sparsevit-swin-t_*coco.py')):
        ow = _load(path).optim_wrapper
        assert ow.type == 'AmpOptimWrapper', path
        assert ow.loss_scale == dict(init_scale=512.), path


def test_uvc_imagenet_stage1_projects_to_the_budget_as_its_readme_says():
    # not in the original (documented in configs/uvc/README.md, with project_at_end=False to
    # restore it): the end-of-search projection, rounded to multiples of 8 on ImageNet
    for path in glob.glob(str(REPO / 'configs/uvc/uvc-deit-*_stage1_*_in1k.py')):
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
