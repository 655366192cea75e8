"""The command lines, end to end on real data: train, checkpoint, resume, test, FLOPs, latency,
2-process distributed training, and one clear line for each user error."""
import json
import shutil

import pytest
import torch

from mmsparse.compat import load_checkpoint_file
from tests.conftest import (DEMO_CONFIG, DET_CONFIG, REPO, SEG_CONFIG, ok, run_tool, small_config,
                            tool_env)

# A small, augmentation-free slice of the demo config, so that an interrupted-and-resumed run
# must reproduce an uninterrupted one exactly.


@pytest.fixture(scope='module')
def small_cls(tmp_path_factory, data_root):
    path = tmp_path_factory.mktemp('cfg') / 'small_cls.py'
    path.write_text(small_config(DEMO_CONFIG, test_images=128))
    return path


def _weights(path):
    return load_checkpoint_file(str(path), map_location='cpu')['state_dict']


def test_train_checkpoint_resume_test(small_cls, tmp_path):
    full, cut = tmp_path / 'full', tmp_path / 'cut'
    ok(run_tool('tools/train.py', small_cls, '--work-dir', full))
    # the same run, stopped after epoch 1, then resumed to epoch 2
    ok(run_tool('tools/train.py', small_cls, '--work-dir', cut, '--cfg-options',
                'train_cfg.max_epochs=1'))
    proc = ok(run_tool('tools/train.py', small_cls, '--work-dir', cut, '--resume'))
    assert 'resumed epoch: 1' in (proc.stdout + proc.stderr)
    a, b = _weights(full / 'epoch_2.pth'), _weights(cut / 'epoch_2.pth')
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    ckpt = load_checkpoint_file(str(full / 'epoch_2.pth'), map_location='cpu')
    assert {'meta', 'state_dict', 'optimizer', 'param_schedulers', 'message_hub'} <= set(ckpt)

    out = tmp_path / 'metrics.json'
    ok(run_tool('tools/test.py', small_cls, full / 'epoch_2.pth', '--work-dir', tmp_path / 't',
                '--out', out))
    acc = json.loads(out.read_text())['accuracy/top1']
    assert 10.0 <= acc <= 100.0

    # load_from: fine-tuning starts from the trained weights
    proc = ok(run_tool('tools/train.py', small_cls, '--work-dir', tmp_path / 'ft',
                       '--cfg-options', f'load_from={full / "epoch_2.pth"}',
                       'train_cfg.max_epochs=1'))
    assert 'Load checkpoint from' in proc.stdout + proc.stderr


def test_dist_train_two_processes_gloo(small_cls, tmp_path):
    proc = ok(run_tool(REPO / 'tools/dist_train.sh', small_cls, 2, '--work-dir', tmp_path,
                       '--cfg-options', 'train_cfg.max_epochs=1',
                       env=tool_env(PORT='29517')))
    out = proc.stdout + proc.stderr
    assert 'Distributed launcher: pytorch' in out and 'GPU number: 2' in out  # = world size
    assert (tmp_path / 'epoch_1.pth').is_file()


@pytest.mark.parametrize('prefix', [('mpirun', '--allow-run-as-root', '--oversubscribe', '-np', '2'),
                                    ('torchpack', 'dist-run', '-v', '-np', '2')])
def test_train_under_mpi(prefix, small_cls, tmp_path):
    assert shutil.which(prefix[0], path=tool_env()['PATH']), f'{prefix[0]} is not installed'
    env = tool_env(MASTER_PORT='29533', OMP_NUM_THREADS='1')
    proc = ok(run_tool('tools/train.py', small_cls, '--work-dir', tmp_path, '--launcher', 'mpi',
                       '--cfg-options', 'train_cfg.max_epochs=1', env=env,
                       launcher_prefix=prefix))
    out = proc.stdout + proc.stderr
    assert 'Distributed launcher: mpi' in out and 'GPU number: 2' in out  # = world size
    assert (tmp_path / 'epoch_1.pth').is_file()


def test_get_flops_and_latency_tools(tmp_path):
    out = tmp_path / 'flops.json'
    proc = ok(run_tool('tools/analysis/get_flops.py', DEMO_CONFIG, '--out', out))
    assert 'GFLOPs' in proc.stdout
    rep = json.loads(out.read_text())
    assert rep['input_shape'] == [1, 1, 28, 28] and rep['flops'] > 0
    out = tmp_path / 'lat.json'
    proc = ok(run_tool('tools/measure_latency.py', DEMO_CONFIG, '--batch-sizes', 1, 4,
                       '--warmup', 1, '--runs', 3, '--out', out))
    assert 'threads:' in proc.stdout
    rep = json.loads(out.read_text())
    assert [r['batch_size'] for r in rep['results']] == [1, 4]
    assert rep['torch_threads'] >= 1 and all(r['runs'] == 3 for r in rep['results'])


@pytest.mark.parametrize('config,metric', [(DET_CONFIG, 'coco/bbox_mAP'),
                                           (SEG_CONFIG, 'mIoU')])
def test_det_and_seg_configs_train_on_voc_samples(config, metric, tmp_path, data_root):
    proc = ok(run_tool('tools/train.py', config, '--work-dir', tmp_path, '--cfg-options',
                       'train_cfg.max_epochs=1' if 'mask-rcnn' in str(config)
                       else 'train_cfg.max_iters=2'))
    assert metric in proc.stdout + proc.stderr
    assert list(tmp_path.glob('*.pth'))


def _one_error_line(proc, *needles):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: '), proc.stderr[-2000:]
    for needle in needles:
        assert needle in err[0], err[0]
    assert 'Traceback' not in proc.stderr


def test_user_errors_are_one_clear_line(tmp_path):
    _one_error_line(run_tool('tools/train.py', 'configs/nope.py'), 'config file not found',
                    'configs/nope.py')
    _one_error_line(run_tool('tools/test.py', DEMO_CONFIG, tmp_path / 'missing.pth'),
                    'checkpoint not found', 'missing.pth')
    _one_error_line(run_tool('tools/measure_latency.py', DEMO_CONFIG, '--batch-sizes', 0),
                    '--batch-sizes', 'positive')
    _one_error_line(run_tool('tools/analysis/get_flops.py', DEMO_CONFIG, '--cfg-options',
                             'model.backbone.type=NoSuchBackbone'),
                    "model.backbone.type: 'NoSuchBackbone'", 'not a registered model')
    _one_error_line(run_tool('tools/train.py', DEMO_CONFIG, '--work-dir', tmp_path,
                             env=tool_env(MMSPARSE_DATA=str(tmp_path / 'nodata'))),
                    'train_dataloader.dataset.data_root', 'MMSPARSE_DATA', 'make install')


def test_bad_config_values_are_one_clear_line(tmp_path, data_root):
    # a model argument, checked when the Runner builds the model
    _one_error_line(run_tool('tools/train.py', 'configs/dynamicvit/dynamicvit-vit-tiny-p4_'
                             'fashion-mnist.py', '--work-dir', tmp_path, '--cfg-options',
                             'model.backbone.keep_rate=1.5'),
                    'keep_rate must be in (0, 1]', '1.5')
    # a hook argument, checked against the model when training starts
    _one_error_line(run_tool('tools/train.py', 'configs/svite/svite-vit-tiny-p4_density0.5_'
                             'fashion-mnist.py', '--work-dir', tmp_path, '--cfg-options',
                             'custom_hooks.0.layers=[nope]'),
                    'custom_hooks.SparseTrainingHook.layers', "'nope' matches no parameter")
