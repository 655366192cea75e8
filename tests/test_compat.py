"""The stack shims: the MPI launch bridge (checkpoint loading: test_checkpoint.py)."""
import os

import pytest

from mmsparse.compat import bridge_mpi_env


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
