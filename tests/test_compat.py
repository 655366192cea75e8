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


def test_bridge_slurm_env_from_srun(monkeypatch, tmp_path):
    from mmsparse.compat import LaunchError, bridge_slurm_env
    from tests.conftest import fake_slurm
    monkeypatch.setattr(os, 'environ', dict(os.environ))  # nothing leaks into later tests
    for k in [k for k in os.environ if k.startswith('SLURM_')] + [
            'RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT']:
        os.environ.pop(k, None)
    bin_dir = fake_slurm(tmp_path / 'bin')
    os.environ['PATH'] = f'{bin_dir}{os.pathsep}{os.environ.get("PATH", "")}'
    # what srun sets for task 3 of 8, the 2nd on its node; LOCAL_RANK=0 as the tools' parser
    # sets it by default
    os.environ.update(SLURM_PROCID='3', SLURM_NTASKS='8', SLURM_LOCALID='1',
                      SLURM_NODELIST='node[1-2]', LOCAL_RANK='0')
    bridge_slurm_env()
    assert (os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['LOCAL_RANK']) == \
        ('3', '8', '1')
    assert (os.environ['MASTER_ADDR'], os.environ['MASTER_PORT']) == ('127.0.0.1', '29500')
    assert (bin_dir / 'scontrol.log').read_text().splitlines() == ['show hostnames node[1-2]']

    # a MASTER_ADDR / MASTER_PORT given by the user wins (scontrol is not asked)
    os.environ.update(MASTER_ADDR='10.0.0.9', MASTER_PORT='31337')
    bridge_slurm_env()
    assert (os.environ['MASTER_ADDR'], os.environ['MASTER_PORT']) == ('10.0.0.9', '31337')
    assert len((bin_dir / 'scontrol.log').read_text().splitlines()) == 1

    # without scontrol: one plain host name is used as it is; a list needs MASTER_ADDR
    os.environ['PATH'] = str(tmp_path / 'empty')
    del os.environ['MASTER_ADDR']
    os.environ['SLURM_NODELIST'] = 'gpu7'
    bridge_slurm_env()
    assert os.environ['MASTER_ADDR'] == 'gpu7'
    del os.environ['MASTER_ADDR']
    os.environ['SLURM_NODELIST'] = 'gpu[7-8]'
    with pytest.raises(LaunchError, match='MASTER_ADDR'):
        bridge_slurm_env()

    # outside srun
    del os.environ['SLURM_PROCID']
    with pytest.raises(LaunchError, match='srun'):
        bridge_slurm_env()


def test_import_installs_no_warning_filters_and_the_tools_do():
    """`import mmsparse` leaves warning filters alone (its one side effect is the checkpoint
    loaders); the tools' entry point run_cli drops the pinned stack's noise."""
    import subprocess
    import sys
    code = ('import warnings\n'
            'import mmsparse\n'
            'from mmengine.runner import CheckpointLoader\n'
            "ours = [f for f in warnings.filters if f[1] is not None and any(\n"
            "    m in f[1].pattern for m in ('pkg_resources', 'NumPy array is not writable'))]\n"
            'assert not ours, ours\n'
            "assert CheckpointLoader._schemes['sparse://'].__module__ == 'mmsparse.checkpoint'\n"
            'from mmsparse.utils import run_cli\n'
            'def main():\n'
            "    assert any('pkg_resources' in str(f[1]) for f in warnings.filters)\n"
            'run_cli(main)\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
