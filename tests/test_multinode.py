"""Two nodes simulated on 127.0.0.1: two ``tools/dist_train.sh`` launches (torchrun, one process
each, NNODES=2, NODE_RANK 0 / 1) train the Fashion-MNIST DynamicViT config together, and both
ranks end with the same weights."""
import subprocess

import torch

from mmsparse.checkpoint import load_checkpoint_file
from tests.conftest import REPO, small_config, tool_env

CONFIG = REPO / 'configs/dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py'


def test_two_nodes_train_to_identical_weights(tmp_path, data_root):
    cfg = tmp_path / 'dynamicvit_2nodes.py'
    cfg.write_text(small_config(
        CONFIG, "custom_imports = dict(imports=['mmsparse', 'tests.rank_weights'], "
        'allow_failed_imports=False)',
        "custom_hooks = [dict(type='mmsparse.DynamicViTOptimHook', backbone_lr_scale=0.01, "
        "freeze_backbone=0, by_epoch=True), dict(type='mmsparse.RNGStateHook'), "
        "dict(type='mmsparse.SaveRankWeightsHook')]",
        train_images=128, epochs=1, validate=False))
    procs = []
    for node in (0, 1):
        env = tool_env(NNODES='2', NODE_RANK=str(node), MASTER_ADDR='127.0.0.1', PORT='29541',
                       OMP_NUM_THREADS='1')
        procs.append(subprocess.Popen(
            [str(REPO / 'tools/dist_train.sh'), str(cfg), '1', '--work-dir',
             str(tmp_path / f'node{node}')], cwd=REPO, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert 'GPU number: 2' in outs[0]  # = world size
    a = torch.load(tmp_path / 'node0/rank0.pth', weights_only=True)
    b = torch.load(tmp_path / 'node1/rank1.pth', weights_only=True)
    assert a.keys() == b.keys() and any('predictor' in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # rank 0's checkpoint holds the same weights, after 2 iterations (128 images, 2 ranks x 32)
    ckpt = load_checkpoint_file(str(tmp_path / 'node0/epoch_1.pth'))
    assert ckpt['meta']['iter'] == 2
    assert len(ckpt['rng_state']) == 2  # RNGStateHook: every rank's random state
    for k in a:
        torch.testing.assert_close(ckpt['state_dict'][k], a[k], rtol=0, atol=0, msg=k)
