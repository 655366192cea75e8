"""Every shim the OpenMMLab stack needs on torch 2.13, in one place.

1. Checkpoints. mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; torch >= 2.6 loads with
   ``weights_only=True`` and refuses the objects every Runner checkpoint holds (the message hub's
   ``HistoryBuffer``, numpy arrays and scalars). :func:`register_checkpoint_loader` installs, through
   MMEngine's own ``CheckpointLoader.register_scheme``, a local-file loader that allow-lists exactly
   those objects for that load, so ``load_from``, ``--resume`` and ``tools/test.py CHECKPOINT`` work
   while every load stays a weights-only load.
2. Distributed start. mmengine's launchers call ``torch.cuda.set_device`` (fails without a GPU) and
   its MPI launcher wants ``MASTER_ADDR``/``MASTER_PORT`` while ``torchpack dist-run`` sets
   ``MASTER_HOST=host:port``. :func:`init_distributed` bridges both and initialises the process group
   before the Runner does (the Runner then skips its own ``init_dist``).
3. Warnings. mmengine and mmcv import ``pkg_resources`` (setuptools < 81 is pinned for mmcv's
   build), which warns on every command; :func:`quiet_pinned_stack_warnings` drops that one message.
4. DDP on CPU. The Runner wraps the model with ``device_ids=[LOCAL_RANK]``, which DDP refuses for
   a CPU module; :func:`ddp_wrapper_cfg` gives it ``device_ids=None`` there.
"""
import os
import warnings
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

__all__ = ['quiet_pinned_stack_warnings', 'checkpoint_safe_globals', 'load_checkpoint_file', 'register_checkpoint_loader',
           'init_distributed', 'bridge_mpi_env', 'ddp_wrapper_cfg']


def quiet_pinned_stack_warnings() -> None:
    """Drop two warnings of the pinned stack that say nothing to a user: ``pkg_resources is
    deprecated`` (its imports) and torch's "NumPy array is not writable" on every read of the
    MNIST / Fashion-MNIST files (mmpretrain's loader wraps the bytes it read in a tensor and
    only reads it)."""
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated',
                            category=UserWarning)
    warnings.filterwarnings('ignore', message='The given NumPy array is not writable',
                            category=UserWarning, module='mmpretrain.datasets.mnist')


def checkpoint_safe_globals() -> list:
    """The non-tensor objects of MMEngine Runner checkpoints, for a weights-only load.

    ``getattr`` is needed because ``HistoryBuffer`` keeps bound methods (``getattr(buf, 'min')``);
    the weights-only unpickler still refuses to *call* anything not on this list.
    """
    from mmengine.logging.history_buffer import HistoryBuffer

    # numpy 2 pickles arrays through numpy._core (numpy 1: numpy.core).
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    safe = [HistoryBuffer, getattr, np.ndarray, np.dtype, multiarray._reconstruct,
            multiarray.scalar]
    # numpy scalars and arrays pickle through their dtype classes (np.dtypes.Float64DType, ...).
    safe += [type(np.dtype(t)) for t in np.sctypeDict.values() if isinstance(t, type)]
    return list(dict.fromkeys(safe))


def load_checkpoint_file(filename: str, map_location=None) -> dict:
    """``torch.load`` of a local MMEngine checkpoint: weights-only, with its objects allowed.

    Raises:
        FileNotFoundError: if ``filename`` is not a file.
    """
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    with torch.serialization.safe_globals(checkpoint_safe_globals()):
        return torch.load(filename, map_location=map_location, weights_only=True)


def register_checkpoint_loader() -> None:
    """Make MMEngine's loader of local files (``load_from``, ``--resume``, ``tools/test.py``)
    use :func:`load_checkpoint_file`. The allow-list applies to those loads only: other
    ``torch.load`` calls keep torch's defaults."""
    from mmengine.runner import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes='', loader=load_checkpoint_file, force=True)


def bridge_mpi_env() -> None:
    """Make an Open MPI / torchpack launch look like a torchrun launch (RANK, WORLD_SIZE, ...)."""
    if 'OMPI_COMM_WORLD_RANK' not in os.environ:
        raise RuntimeError('--launcher mpi needs an Open MPI launch (mpirun or torchpack '
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


def init_distributed(launcher: str, backend: Optional[str] = None, timeout_s: int = 1800) -> None:
    """Initialise torch.distributed for ``launcher`` ('pytorch' or 'mpi'), on CPU or GPU.

    Args:
        launcher: 'pytorch' (torchrun) or 'mpi' (mpirun / torchpack dist-run).
        backend: process-group backend; default 'nccl' with CUDA, else 'gloo'.
        timeout_s: collective timeout in seconds.
    """
    if launcher not in ('pytorch', 'mpi'):
        raise ValueError(f"launcher must be 'pytorch' or 'mpi', got {launcher!r}")
    if dist.is_available() and dist.is_initialized():
        return
    if launcher == 'mpi':
        bridge_mpi_env()
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
