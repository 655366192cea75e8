"""The stack shims: weights-only checkpoint loading and the MPI launch bridge."""
import os

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from mmengine.runner import CheckpointLoader

import mmsparse  # noqa: F401  (registers the loader)
from mmsparse.compat import bridge_mpi_env


def test_runner_like_checkpoint_loads_through_mmengine(tmp_path):
    buf = HistoryBuffer()
    buf.update(1.5)
    buf.update(np.float64(2.5))
    ckpt = {
        'meta': {'epoch': 1, 'seed': np.int64(3), 'hook_msgs': {'best': np.float32(0.5)}},
        'message_hub': {'log_scalars': {'train/loss': buf},
                        'runtime_info': {'arr': np.arange(4, dtype=np.int32)}},
        'state_dict': {'w': torch.ones(2)},
    }
    path = tmp_path / 'ckpt.pth'
    torch.save(ckpt, path)
    loaded = CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert loaded['message_hub']['log_scalars']['train/loss'].mean() == pytest.approx(2.0)
    assert loaded['meta']['seed'] == 3
    np.testing.assert_array_equal(loaded['message_hub']['runtime_info']['arr'], np.arange(4))


class Evil:

    def __reduce__(self):
        return (print, ('pwned', ))


def test_loads_stay_weights_only(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'x': Evil()}, path)
    with pytest.raises(Exception, match='[Ww]eights only load failed'):
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    # the allow-list is scoped to MMEngine's checkpoint loads, not global
    buf = HistoryBuffer()
    buf.update(1.0)
    torch.save({'hub': buf}, tmp_path / 'hub.pth')
    with pytest.raises(Exception, match='[Ww]eights only load failed'):
        torch.load(tmp_path / 'hub.pth', weights_only=True)


def test_bridge_mpi_env_from_torchpack(monkeypatch):
    # bridge_mpi_env writes os.environ: give it a copy, so nothing leaks into later tests
    monkeypatch.setattr(os, 'environ', dict(os.environ))
    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        os.environ.pop(k, None)
    monkeypatch.setenv('OMPI_COMM_WORLD_RANK', '1')
    monkeypatch.setenv('OMPI_COMM_WORLD_SIZE', '2')
    monkeypatch.setenv('OMPI_COMM_WORLD_LOCAL_RANK', '1')
    monkeypatch.setenv('MASTER_HOST', '10.0.0.7:31337')
    bridge_mpi_env()
    assert (os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['LOCAL_RANK']) == \
        ('1', '2', '1')
    assert (os.environ['MASTER_ADDR'], os.environ['MASTER_PORT']) == ('10.0.0.7', '31337')


def test_bridge_mpi_env_without_mpi(monkeypatch):
    monkeypatch.delenv('OMPI_COMM_WORLD_RANK', raising=False)
    with pytest.raises(RuntimeError, match='mpirun'):
        bridge_mpi_env()
