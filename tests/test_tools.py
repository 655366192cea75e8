"""The command lines, end to end on real data: train, checkpoint, resume, test (predictions,
metrics, pictures, AMP, TTA), FLOPs, latency, 2-process distributed training (torchrun, MPI,
Slurm), and one clear line for each user error."""
import json
import os
import re
import shutil

import pytest
import torch

from mmsparse.checkpoint import load_checkpoint_file
from tests.conftest import (DEMO_CONFIG, DET_CONFIG, REPO, SEG_CONFIG, fake_slurm, ok,
                            one_error_line, run_tool, small_config, tool_env)

# A small, augmentation-free slice of the demo config, so that an interrupted-and-resumed run
# must reproduce an uninterrupted one exactly.


@pytest.fixture(scope='module')
def small_cls(tmp_path_factory, data_root):
    path = tmp_path_factory.mktemp('cfg') / 'small_cls.py'
    path.write_text(small_config(DEMO_CONFIG, test_images=128))
    return path


@pytest.fixture(scope='module')
def trained(small_cls, tmp_path_factory):
    """The work dir of small_cls trained for its two epochs."""
    work = tmp_path_factory.mktemp('full')
    ok(run_tool('tools/train.py', small_cls, '--work-dir', work))
    return work


def _load_predictions(path) -> list:
    """A --out pickle of tools/test.py, in test-set order."""
    from mmengine.fileio import load
    return sorted(load(str(path)), key=lambda p: p['sample_idx'])


@pytest.fixture(scope='module')
def predictions(small_cls, trained, tmp_path_factory):
    """tools/test.py --out preds.pkl on the trained model: (predictions, the run's output)."""
    tmp = tmp_path_factory.mktemp('test')
    proc = ok(run_tool('tools/test.py', small_cls, trained / 'epoch_2.pth', '--work-dir',
                       tmp / 'w', '--out', tmp / 'preds.pkl'))
    return _load_predictions(tmp / 'preds.pkl'), proc.stdout + proc.stderr


def _weights(path):
    return load_checkpoint_file(str(path), map_location='cpu')['state_dict']


def test_train_checkpoint_resume_test(small_cls, trained, tmp_path):
    full, cut = trained, tmp_path / 'cut'
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
                '--out', out, '--out-item', 'metrics'))
    acc = json.loads(out.read_text())['accuracy/top1']
    assert 10.0 <= acc <= 100.0

    # load_from: fine-tuning starts from the trained weights
    proc = ok(run_tool('tools/train.py', small_cls, '--work-dir', tmp_path / 'ft',
                       '--cfg-options', f'load_from={full / "epoch_2.pth"}',
                       'train_cfg.max_epochs=1'))
    assert 'Load checkpoint from' in proc.stdout + proc.stderr


def test_test_out_holds_one_prediction_per_image(predictions):
    preds, log = predictions
    assert [p['sample_idx'] for p in preds] == list(range(128))
    for p in preds:
        assert p['pred_score'].shape == (10, )
        assert int(p['pred_score'].argmax()) == int(p['pred_label'])
    # they are the predictions the evaluator scored
    top1 = 100 * sum(int(p['pred_label']) == int(p['gt_label']) for p in preds) / len(preds)
    assert top1 == pytest.approx(float(re.search(r'accuracy/top1: ([\d.]+)', log).group(1)),
                                 abs=1e-3)


def test_test_show_dir_draws_every_interval_th_image(small_cls, trained, tmp_path):
    import mmcv
    ok(run_tool('tools/test.py', small_cls, trained / 'epoch_2.pth', '--work-dir', tmp_path / 'w',
                '--show-dir', tmp_path / 'vis', '--interval', 32))
    # mmpretrain's VisualizationHook: <sample index>_0.png, 28x28 drawn at 224x224 (the config)
    assert sorted(os.listdir(tmp_path / 'vis')) == ['0_0.png', '32_0.png', '64_0.png',
                                                    '96_0.png']
    for name in os.listdir(tmp_path / 'vis'):
        assert mmcv.imread(str(tmp_path / 'vis' / name)).shape == (224, 224, 3)


def test_test_amp_and_tta(small_cls, trained, predictions, tmp_path):
    plain, _ = predictions
    ckpt = trained / 'epoch_2.pth'
    # --amp: autocast (bfloat16 on CPU, float16 on a GPU); the same labels, but for a few
    ok(run_tool('tools/test.py', small_cls, ckpt, '--work-dir', tmp_path / 'w', '--amp',
                '--out', tmp_path / 'amp.pkl'))
    amp = _load_predictions(tmp_path / 'amp.pkl')
    assert len(amp) == 128 and amp[0]['pred_score'].dtype in (torch.bfloat16, torch.float16)
    assert sum(int(a['pred_label']) == int(p['pred_label']) for a, p in zip(amp, plain)) >= 120
    # --tta with the config's tta_model / tta_pipeline: the mean score of the image and its
    # mirror image, each as the plain test pipeline scores it
    flip = tmp_path / 'flip.py'
    flip.write_text(f"_base_ = ['{small_cls}']\n"
                    "test_dataloader = dict(dataset=dict(pipeline=[\n"
                    "    dict(type='RandomFlip', prob=1.0), dict(type='PackInputs')]))\n")
    tta = tmp_path / 'tta.py'
    tta.write_text(f"_base_ = ['{small_cls}']\n"
                   "tta_model = dict(type='mmpretrain.AverageClsScoreTTA')\n"
                   "tta_pipeline = [dict(type='TestTimeAug', transforms=[\n"
                   "    [dict(type='RandomFlip', prob=1.0), dict(type='RandomFlip', prob=0.0)],\n"
                   "    [dict(type='PackInputs')]])]\n")
    ok(run_tool('tools/test.py', flip, ckpt, '--work-dir', tmp_path / 'w',
                '--out', tmp_path / 'flip.pkl'))
    ok(run_tool('tools/test.py', tta, ckpt, '--work-dir', tmp_path / 'w', '--tta',
                '--out', tmp_path / 'tta.pkl'))
    flipped, merged = _load_predictions(tmp_path / 'flip.pkl'), _load_predictions(
        tmp_path / 'tta.pkl')
    assert len(merged) == 128
    for m, p, f in zip(merged, plain, flipped):
        torch.testing.assert_close(m['pred_score'], (p['pred_score'] + f['pred_score']) / 2,
                                   rtol=0, atol=1e-5)


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


def test_slurm_scripts_run_two_tasks(small_cls, tmp_path):
    """tools/slurm_train.sh and slurm_test.sh under a stand-in srun (tests/conftest.py): the
    srun options, and --launcher slurm turning the tasks into one 2-process group."""
    bin_dir = fake_slurm(tmp_path / 'bin')
    env = {k: v for k, v in tool_env().items()
           if not k.startswith('SLURM_') and k not in ('MASTER_ADDR', 'RANK', 'WORLD_SIZE')}
    env.update(PATH=f'{bin_dir}{os.pathsep}{env["PATH"]}', GPUS='2', MASTER_PORT='29547',
               OMP_NUM_THREADS='1')
    proc = ok(run_tool(REPO / 'tools/slurm_train.sh', 'debug', 'mmsparse-ci', small_cls,
                       tmp_path / 'w', '--cfg-options', 'train_cfg.max_epochs=1', env=env))
    out = proc.stdout + proc.stderr
    assert 'Distributed launcher: slurm' in out and 'GPU number: 2' in out  # = world size
    assert (tmp_path / 'w/epoch_1.pth').is_file()
    assert (bin_dir / 'srun.log').read_text().split()[:8] == [
        '-p', 'debug', '--job-name=mmsparse-ci', '--gres=gpu:2', '--ntasks=2',
        '--ntasks-per-node=2', '--cpus-per-task=5', '--kill-on-bad-exit=1']
    # every task found the master (the first host) with scontrol
    assert (bin_dir / 'scontrol.log').read_text().splitlines() == \
        ['show hostnames node[1-2]'] * 2
    # two test tasks: the predictions of all 128 images, each once
    ok(run_tool(REPO / 'tools/slurm_test.sh', 'debug', 'mmsparse-ci', small_cls,
                tmp_path / 'w/epoch_1.pth', '--work-dir', tmp_path / 't',
                '--out', tmp_path / 'preds.pkl', env=env))
    assert [p['sample_idx'] for p in _load_predictions(tmp_path / 'preds.pkl')] == \
        list(range(128))


def test_get_flops_and_latency_tools(tmp_path):
    out = tmp_path / 'flops.json'
    proc = ok(run_tool('tools/analysis_tools/get_flops.py', DEMO_CONFIG, '--out', out))
    assert 'GFLOPs' in proc.stdout
    rep = json.loads(out.read_text())
    assert rep['input_shape'] == [1, 1, 28, 28] and rep['flops'] > 0
    out = tmp_path / 'lat.json'
    proc = ok(run_tool('tools/analysis_tools/measure_latency.py', DEMO_CONFIG, '--batch-sizes',
                       1, 4, '--warmup', 1, '--runs', 3, '--out', out))
    assert 'threads:' in proc.stdout
    rep = json.loads(out.read_text())
    assert [r['batch_size'] for r in rep['results']] == [1, 4]
    assert rep['torch_threads'] >= 1 and all(r['runs'] == 3 for r in rep['results'])


def test_print_config_shows_the_merged_config():
    proc = ok(run_tool('tools/misc/print_config.py', DEMO_CONFIG, '--cfg-options',
                       'model.head.num_classes=7'))
    text = proc.stdout
    assert 'Config:\n' in text
    assert 'num_classes=7,' in text  # --cfg-options applied
    assert "type='FashionMNIST'" in text and "type='IterTimerHook'" in text  # _base_ merged


@pytest.mark.parametrize('config,metric', [(DET_CONFIG, 'coco/bbox_mAP'),
                                           (SEG_CONFIG, 'mIoU')])
def test_det_and_seg_configs_train_on_voc_samples(config, metric, tmp_path, data_root):
    proc = ok(run_tool('tools/train.py', config, '--work-dir', tmp_path, '--cfg-options',
                       'train_cfg.max_epochs=1' if 'mask-rcnn' in str(config)
                       else 'train_cfg.max_iters=2'))
    assert metric in proc.stdout + proc.stderr
    assert list(tmp_path.glob('*.pth'))


def test_user_errors_are_one_clear_line(tmp_path):
    one_error_line(run_tool('tools/train.py', 'configs/nope.py'), 'config file not found',
                    'configs/nope.py')
    one_error_line(run_tool('tools/test.py', DEMO_CONFIG, tmp_path / 'missing.pth'),
                    'checkpoint not found', 'missing.pth')
    one_error_line(run_tool('tools/analysis_tools/measure_latency.py', DEMO_CONFIG,
                             '--batch-sizes', 0), '--batch-sizes', 'positive')
    one_error_line(run_tool('tools/analysis_tools/get_flops.py', DEMO_CONFIG, '--cfg-options',
                             'model.backbone.type=NoSuchBackbone'),
                    "model.backbone.type: 'NoSuchBackbone'", 'not a registered model')
    one_error_line(run_tool('tools/train.py', DEMO_CONFIG, '--work-dir', tmp_path,
                             env=tool_env(MMSPARSE_DATA=str(tmp_path / 'nodata'))),
                    'train_dataloader.dataset.data_root', 'MMSPARSE_DATA', 'make install')


def test_test_and_launch_flag_errors_are_one_clear_line(tmp_path, data_root):
    ckpt = tmp_path / 'any.pth'  # the flags are refused before it is read
    ckpt.write_bytes(b'')
    one_error_line(run_tool('tools/test.py', DEMO_CONFIG, ckpt, '--out-item', 'metrics'),
                    '--out-item metrics needs --out')
    one_error_line(run_tool('tools/test.py', DEMO_CONFIG, ckpt, '--out', 'preds.json'),
                    '--out preds.json', '.pkl', '--out-item metrics')
    one_error_line(run_tool('tools/test.py', DEMO_CONFIG, ckpt, '--out', 'm.txt',
                             '--out-item', 'metrics'), '--out m.txt', '.json')
    one_error_line(run_tool('tools/test.py', DEMO_CONFIG, ckpt, '--tta'),
                    '--tta', 'tta_model / tta_pipeline')
    one_error_line(run_tool('tools/test.py', DEMO_CONFIG, ckpt, '--interval', 0),
                    '--interval must be >= 1')
    env = {k: v for k, v in tool_env().items() if not k.startswith('SLURM_')}
    one_error_line(run_tool('tools/train.py', DEMO_CONFIG, '--work-dir', tmp_path,
                             '--launcher', 'slurm', env=env),
                    '--launcher slurm needs a Slurm launch', 'srun')


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the refusal without a GPU')
def test_amp_without_gpu_is_one_clear_line(tmp_path, data_root):
    # the UVC stage-1 config (several optimizer wrappers) is refused like the others, at start
    for config in (DEMO_CONFIG, REPO / 'configs/uvc/uvc-vit-tiny-p4_stage1_fashion-mnist.py'):
        one_error_line(run_tool('tools/train.py', config, '--work-dir', tmp_path, '--amp'),
                        '--amp needs a GPU')


def test_bad_config_values_are_one_clear_line(tmp_path, data_root):
    # a model argument, checked when the Runner builds the model
    proc = run_tool('tools/train.py', 'configs/dynamicvit/dynamicvit-vit-tiny-p4_'
                    'fashion-mnist.py', '--work-dir', tmp_path, '--cfg-options',
                    'model.backbone.keep_rate=1.5')
    one_error_line(proc, 'keep_rate must be in (0, 1]', '1.5')
    assert 'Config:' not in proc.stdout  # the Runner logs its config once everything is built
    # a hook argument, checked against the model when training starts
    one_error_line(run_tool('tools/train.py', 'configs/svite/svite-vit-tiny-p4_density0.5_'
                             'fashion-mnist.py', '--work-dir', tmp_path, '--cfg-options',
                             'custom_hooks.0.layers=[nope]'),
                    'custom_hooks[SparseTrainingHook].layers', "'nope' matches no parameter")


# ------------------------------------------------------------------ derived configs
def test_write_derived_config_round_trips_through_mmengine(tmp_path):
    from mmengine.config import Config

    from mmsparse.utils import write_derived_config
    base = Config.fromfile(str(DEMO_CONFIG))
    hooks = [dict(type='EMAHook', momentum=0.25, priority=49)]
    out = write_derived_config(
        str(DEMO_CONFIG), str(tmp_path / 'sub' / 'derived.py'),
        dict(model=dict(backbone=dict(drop_rate=0.125, out_indices=(-1, ))),
             custom_hooks=hooks, load_from='/some/where/best.pth'),
        header='written by a test\nsecond line')
    text = (tmp_path / 'sub' / 'derived.py').read_text()
    assert out == str(tmp_path / 'sub' / 'derived.py')
    assert text.splitlines()[:3] == ['# written by a test', '# second line',
                                     f'_base_ = [{str(DEMO_CONFIG.resolve())!r}]']
    cfg = Config.fromfile(out)
    # the updates, and everything else from the base (dicts merge key by key)
    assert cfg.model.backbone.drop_rate == 0.125
    assert tuple(cfg.model.backbone.out_indices) == (-1, )
    assert cfg.model.backbone.arch == base.model.backbone.arch
    assert cfg.model.head.to_dict() == base.model.head.to_dict()
    assert [h.to_dict() for h in cfg.custom_hooks] == hooks
    assert cfg.load_from == '/some/where/best.pth'
    assert cfg.train_dataloader.to_dict() == base.train_dataloader.to_dict()


def test_write_derived_config_delete_and_standalone(tmp_path):
    from mmengine.config import Config

    from mmsparse.utils import write_derived_config
    new_bb = dict(type='mmsparse.CompactVisionTransformer', num_heads=[3, 2], mlp_dims=[7, 5])
    cfg = Config.fromfile(write_derived_config(
        str(DEMO_CONFIG), str(tmp_path / 'c.py'),
        dict(model=dict(backbone=dict(_delete_=True, **new_bb)))))
    assert cfg.model.backbone.to_dict() == new_bb  # _delete_: the base's backbone replaced
    # no base: the updates are the whole config; ConfigDicts are written as plain dicts
    alone = write_derived_config(None, str(tmp_path / 'alone.py'),
                                 dict(model=Config(dict(type='X', depths=[2, 2])).to_dict(),
                                      work_dir='w'))
    assert Config.fromfile(alone).to_dict() == dict(model=dict(type='X', depths=[2, 2]),
                                                    work_dir='w')
    with pytest.raises(ValueError, match='not a Python literal'):
        write_derived_config(None, str(tmp_path / 'bad.py'), dict(model=object()))
    with pytest.raises(ValueError, match='top-level identifier'):
        write_derived_config(None, str(tmp_path / 'bad.py'), {'model.backbone': 1})


def test_config_dicts_are_recognised_by_class():
    """A hook in custom_hooks is recognised by the class the Runner builds, however the config
    names it (short name in the default scope, 'lib.Name', the class; subclasses count)."""
    from mmengine.registry import HOOKS, DefaultScope

    from mmsparse.engine.sparsevit_hooks import SparsityAwareAdaptationHook as SAA
    from mmsparse.utils import config_class, is_config_of
    assert config_class(dict(type='mmsparse.SparsityAwareAdaptationHook'), HOOKS) is SAA
    assert is_config_of(dict(type='SparsityAwareAdaptationHook'), SAA)  # default: mmsparse

    class MySAA(SAA):
        pass

    assert is_config_of(dict(type=MySAA), SAA) and not is_config_of(dict(type=SAA), MySAA)
    assert not is_config_of(dict(type='mmsparse.UVCHook'), SAA)
    assert not is_config_of(dict(type='NoSuchHook'), SAA) and not is_config_of({}, SAA)
    with DefaultScope.overwrite_default_scope('mmengine'):  # as the Runner: not in that scope
        assert not is_config_of(dict(type='SparsityAwareAdaptationHook'), SAA)
        assert is_config_of(dict(type='SparsityAwareAdaptationHook', _scope_='mmsparse'), SAA)


@pytest.mark.skipif(not os.path.isdir('/proc/self'), reason='reads the process table in /proc')
def test_launcher_is_the_nearest_ancestor_that_is_not_a_shell():
    """Under `sh -c '...; true'` (the shell forks and waits) the launcher is our process."""
    import subprocess
    import sys
    code = 'from mmsparse.utils.launch import launcher_pid; print(launcher_pid()[0])'
    proc = subprocess.run(['/bin/sh', '-c', f'{sys.executable} -c "{code}"; true'],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) == os.getpid()
