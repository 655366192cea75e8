"""Every shim the OpenMMLab stack needs on torch 2.13, in one place.

1. Checkpoints: see :mod:`mmsparse.checkpoint` (weights-only loads MMEngine 0.10.7 cannot do
   on torch >= 2.6 by itself, for local files, URLs and model-zoo names).
2. Distributed start. mmengine's launchers call ``torch.cuda.set_device`` (fails without a GPU) and
   its MPI launcher wants ``MASTER_ADDR``/``MASTER_PORT`` while ``torchpack dist-run`` sets
   ``MASTER_HOST=host:port``; a Slurm launch (``srun``) sets ``SLURM_PROCID`` etc.
   :func:`init_distributed` bridges them (:func:`bridge_mpi_env`, :func:`bridge_slurm_env`) and
   initialises the process group before the Runner does (the Runner then skips its own
   ``init_dist``).
3. Warnings. mmengine and mmcv import ``pkg_resources`` (setuptools < 81 is pinned for mmcv's
   build), which warns on every command; :func:`quiet_pinned_stack_warnings` drops that one message
   (and mmpretrain's MNIST one). The tools call it (:func:`mmsparse.utils.run_cli`); importing
   mmsparse does not, so a library user's warning settings stay theirs.
4. DDP on CPU. The Runner wraps the model with ``device_ids=[LOCAL_RANK]``, which DDP refuses for
   a CPU module; :func:`ddp_wrapper_cfg` gives it ``device_ids=None`` there.
"""
import os
import subprocess
import warnings
from typing import Optional

import torch
import torch.distributed as dist

__all__ = ['quiet_pinned_stack_warnings', 'init_distributed', 'LaunchError', 'bridge_mpi_env',
           'bridge_slurm_env', 'ddp_wrapper_cfg']


def quiet_pinned_stack_warnings() -> None:
    """Drop two warnings of the pinned stack that say nothing to a user: ``pkg_resources is
    deprecated`` (its imports) and torch's "NumPy array is not writable" on every read of the
    MNIST / Fashion-MNIST files (mmpretrain's loader wraps the bytes it read in a tensor and
    only reads it)."""
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated',
                            category=UserWarning)
    warnings.filterwarnings('ignore', message='The given NumPy array is not writable',
                            category=UserWarning, module='mmpretrain.datasets.mnist')


class LaunchError(RuntimeError):
    """A ``--launcher`` whose launch environment is missing (e.g. ``slurm`` outside ``srun``)."""


def bridge_mpi_env() -> None:
    """Make an Open MPI / torchpack launch look like a torchrun launch (RANK, WORLD_SIZE, ...)."""
    if 'OMPI_COMM_WORLD_RANK' not in os.environ:
        raise LaunchError('--launcher mpi needs an Open MPI launch (mpirun or torchpack '
                           'dist-run); OMPI_COMM_WORLD_RANK is not set')
    os.environ.setdefault('RANK', os.environ['OMPI_COMM_WORLD_RANK'])
    os.environ.setdefault('WORLD_SIZE', os.environ['OMPI_COMM_WORLD_SIZE'])
    os.environ.setdefault('LOCAL_RANK', os.environ.get('OMPI_COMM_WORLD_LOCAL_RANK', '0'))
    host = os.environ.get('MASTER_HOST')  # torchpack: 'host:port'
    if host and 'MASTER_ADDR' not in os.environ:
        addr, _, port = host.rpartition(':')
        os.environ['MASTER_ADDR'] = addr
        os.environ.setdefault('MASTER_PORT', port)
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', '29500')


def _first_slurm_host(nodelist: str) -> str:
    """The first host name of a Slurm node list such as ``node[03-05],gpu7``."""
    try:
        out = subprocess.run(['scontrol', 'show', 'hostnames', nodelist], capture_output=True,
                             text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError) as e:
        if not any(c in nodelist for c in '[],'):
            return nodelist  # one plain host name: nothing to expand
        raise LaunchError(f'--launcher slurm: cannot expand SLURM_NODELIST={nodelist} with '
                          f'`scontrol show hostnames` ({e}); set MASTER_ADDR to the first '
                          f'node') from None
    if not out:
        raise LaunchError(f'--launcher slurm: `scontrol show hostnames {nodelist}` printed no '
                          f'host; set MASTER_ADDR to the first node')
    return out[0]


def bridge_slurm_env() -> None:
    """Make a Slurm launch (``srun``, one task per process) look like a torchrun launch.

    ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are set from ``SLURM_PROCID``, ``SLURM_NTASKS``
    and ``SLURM_LOCALID`` (Slurm's values win over stale ones); ``MASTER_ADDR`` defaults to the
    first host of the step's node list (``scontrol show hostnames``), ``MASTER_PORT`` to 29500.
    """
    env = os.environ
    missing = [k for k in ('SLURM_PROCID', 'SLURM_NTASKS') if k not in env]
    if missing:
        raise LaunchError(f'--launcher slurm needs a Slurm launch (srun, e.g. '
                          f'tools/slurm_train.sh); {", ".join(missing)} not set')
    env['RANK'] = env['SLURM_PROCID']
    env['WORLD_SIZE'] = env['SLURM_NTASKS']
    if 'SLURM_LOCALID' in env:
        env['LOCAL_RANK'] = env['SLURM_LOCALID']
    else:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        env['LOCAL_RANK'] = str(int(env['SLURM_PROCID']) % gpus) if gpus else '0'
    if 'MASTER_ADDR' not in env:
        nodelist = (env.get('SLURM_STEP_NODELIST') or env.get('SLURM_NODELIST')
                    or env.get('SLURM_JOB_NODELIST'))
        if not nodelist:
            raise LaunchError('--launcher slurm: SLURM_NODELIST is not set; set MASTER_ADDR '
                              'to the first node')
        env['MASTER_ADDR'] = _first_slurm_host(nodelist)
    env.setdefault('MASTER_PORT', '29500')


def init_distributed(launcher: str, backend: Optional[str] = None, timeout_s: int = 1800) -> None:
    """Initialise torch.distributed for ``launcher`` ('pytorch', 'mpi' or 'slurm'), on CPU or GPU.

    Args:
        launcher: 'pytorch' (torchrun), 'mpi' (mpirun / torchpack dist-run) or 'slurm' (srun).
        backend: process-group backend; default 'nccl' with CUDA, else 'gloo'.
        timeout_s: collective timeout in seconds.
    """
    if launcher not in ('pytorch', 'mpi', 'slurm'):
        raise ValueError(f"launcher must be 'pytorch', 'mpi' or 'slurm', got {launcher!r}")
    if dist.is_available() and dist.is_initialized():
        return
    if launcher == 'mpi':
        bridge_mpi_env()
    elif launcher == 'slurm':
        bridge_slurm_env()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count())
        backend = backend or 'nccl'
    else:
        backend = 'gloo'  # nccl needs a GPU, whatever the config says
    import datetime
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))


def ddp_wrapper_cfg(cfg) -> None:
    """On CPU, give the Runner's DDP wrapper ``device_ids=None`` (in place; GPU: unchanged)."""
    if torch.cuda.is_available():
        return
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper.setdefault('device_ids', None)
    cfg.model_wrapper_cfg = wrapper
