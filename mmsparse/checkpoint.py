"""How MMEngine loads checkpoints once mmsparse is imported: weights-only, from anywhere.

This is the one place where mmsparse registers checkpoint loaders (through MMEngine's own
``CheckpointLoader.register_scheme``): :func:`register_checkpoint_loaders`, called by
``import mmsparse`` (so that a config naming mmsparse only in ``custom_imports`` loads its
checkpoints through these loaders under any Runner: ``mmsparse/__init__.py`` says why) and again,
explicitly, by the tools' :func:`mmsparse.utils.setup_scope`; it is idempotent. What it
changes, and only for loads that go through MMEngine's ``CheckpointLoader`` (``load_from``,
``--resume``, ``init_cfg=dict(type='Pretrained')``, ``tools/test.py CHECKPOINT``,
``mmengine.runner.load_checkpoint``):

- local files, ``http://`` / ``https://`` URLs and the model-zoo names that resolve to URLs
  (``torchvision://``, ``open-mmlab://``, ``openmmlab://``, ``mmcls://``) are read with a
  weights-only ``torch.load`` whose allow-list is exactly the objects of a Runner checkpoint
  (:func:`checkpoint_safe_globals`). MMEngine 0.10.7 itself downloads through
  ``torch.hub.load_state_dict_from_url``, which unpickles with full pickle (it can run code);
- ``sparse://PATH`` reads the values + bitmask checkpoints of ``tools/compact.py --method sparse``;
- a file that needs any other object is refused with one line naming that object
  (:class:`~mmsparse.errors.CheckpointError`). To load such a file you trust, name it (or a
  prefix of its path or URL) in the environment variable ``MMSPARSE_TRUSTED_CHECKPOINTS``
  (several separated by ``,``): those files, and only those, get a full-pickle load;
- a missing, unreadable or corrupt file, or a URL that cannot be fetched, is a
  :class:`~mmsparse.errors.CheckpointError` (one ``error:`` line in the tools).

A loader that another package registered for one of these prefixes is left in place: mmsparse
replaces only MMEngine's own loaders. On a torch without ``torch.serialization.safe_globals``
(older than 2.5), nothing is registered and MMEngine's own loaders stay (they load with full
pickle there, as they always did). Other ``torch.load`` calls keep torch's defaults.
"""
import os
import re
import urllib.error
from typing import Callable, Optional

import numpy as np
import torch

from .errors import CheckpointError

__all__ = ['TRUST_ENV', 'checkpoint_safe_globals', 'load_checkpoint_file', 'load_checkpoint_url',
           'register_checkpoint_loaders']

TRUST_ENV = 'MMSPARSE_TRUSTED_CHECKPOINTS'
# MMEngine's zoo schemes -> the function of mmengine.runner.checkpoint that maps names to URLs.
_ZOO = {'torchvision://': 'get_torchvision_models', 'modelzoo://': 'get_torchvision_models',
       'open-mmlab://': 'get_external_models',
        'openmmlab://': 'get_external_models', 'mmcls://': 'get_mmcls_models'}
_REFUSED = re.compile(r'Unsupported global: GLOBAL (\S+)')


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


def _trusted(name: str) -> bool:
    """Whether ``name`` (a path or URL) starts with one of the entries of :data:`TRUST_ENV`."""
    def norm(path: str) -> str:
        return path if '://' in path else os.path.abspath(os.path.expanduser(path))

    prefixes = [p.strip() for p in os.environ.get(TRUST_ENV, '').split(',') if p.strip()]
    return any(norm(name).startswith(norm(p)) for p in prefixes)


def _torch_load(path: str, map_location, name: str) -> dict:
    """Weights-only ``torch.load`` of ``path`` (full pickle if ``name`` is trusted), with every
    failure turned into one :class:`CheckpointError` line about ``name``."""
    try:
        if _trusted(name):
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickle / zip / EOF errors all mean "unreadable")
        refused = _REFUSED.search(str(e))
        if refused:
            raise CheckpointError(
                f'{name} needs {refused.group(1)} to unpickle, which a weights-only load does '
                f'not allow (it could run code). If you trust this file, add it to the '
                f'environment variable {TRUST_ENV}') from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f'{name} is not a readable PyTorch checkpoint '
                              f'({type(e).__name__}: {reason})') from None


def load_checkpoint_file(filename: str, map_location=None) -> dict:
    """Load a local checkpoint, weights-only with a Runner checkpoint's objects allowed.

    Raises:
        CheckpointError: if the file is missing, corrupt, or needs another object.
    """
    path = os.path.expanduser(filename)
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint not found: {filename}')
    return _torch_load(path, map_location, filename)


def load_checkpoint_url(url: str, map_location=None, model_dir: Optional[str] = None) -> dict:
    """Download ``url`` once into torch's hub cache (``<TORCH_HOME>/hub/checkpoints``, as
    ``torch.hub.load_state_dict_from_url`` does) and load it like a local file. In a
    distributed run, local rank 0 downloads while the other ranks wait.

    Raises:
        CheckpointError: if the URL cannot be fetched or the file cannot be loaded.
    """
    from urllib.parse import urlparse

    from mmengine.dist import barrier, get_dist_info

    model_dir = model_dir or os.path.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, os.path.basename(urlparse(url).path) or 'checkpoint.pth')
    rank, world_size = get_dist_info()
    local_rank = int(os.environ.get('LOCAL_RANK', rank))
    if local_rank == 0 and not os.path.isfile(path):
        try:
            torch.hub.download_url_to_file(url, path, progress=False)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, 'reason', None) or e
            raise CheckpointError(f'cannot download checkpoint {url}: {reason} (check the URL '
                                  f'and the network, or download it and give the local '
                                  f'path)') from None
    if world_size > 1:
        barrier()
    return _torch_load(path, map_location, f'{url} (downloaded to {path})')


# MMEngine logs "Loads checkpoint by <name[10:]> backend": the loaders are named load_from_*, and
# live at module level so that registering again registers the very same functions.
def load_from_local(filename: str, map_location=None) -> dict:
    """A local file (MMEngine's ``''`` scheme): :func:`load_checkpoint_file`."""
    return load_checkpoint_file(filename, map_location)


def load_from_http(filename: str, map_location=None) -> dict:
    """``http://`` / ``https://``: :func:`load_checkpoint_url`."""
    return load_checkpoint_url(filename, map_location)


def load_from_zoo(filename: str, map_location=None) -> dict:
    """``torchvision://NAME``, ``open-mmlab://NAME``, ...: MMEngine's name -> URL tables."""
    from mmengine.runner import checkpoint as mmengine_ckpt

    prefix = next(p for p in _ZOO if filename.startswith(p))
    table = getattr(mmengine_ckpt, _ZOO[prefix])()
    name = filename[len(prefix):]
    if name not in table:
        raise CheckpointError(f'{filename}: no model named {name!r} under {prefix} '
                              f'(MMEngine knows {len(table)} names there)')
    url = table[name]
    if not url.startswith(('http://', 'https://')):  # open-mmlab:// may name a file under
        return load_checkpoint_file(  # MMEngine's home
            os.path.join(mmengine_ckpt._get_mmengine_home(), url), map_location)
    return load_checkpoint_url(url, map_location)


def load_from_sparse(filename: str, map_location=None) -> dict:
    """``sparse://PATH``: a values + bitmask file of ``tools/compact.py --method sparse``."""
    from .compaction.sparse_ckpt import load_sparse_checkpoint
    return load_sparse_checkpoint(filename, map_location)


def _register(prefixes, loader: Callable, default_name: Optional[str]) -> None:
    """Register ``loader`` for ``prefixes`` unless someone else's loader holds one of them
    (``default_name``: the MMEngine function mmsparse may replace; None: a new scheme)."""
    from mmengine.runner import CheckpointLoader
    from mmengine.runner import checkpoint as mmengine_ckpt

    prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    default = getattr(mmengine_ckpt, default_name) if default_name else None
    mine = [p for p in prefixes
            if CheckpointLoader._schemes.get(p) in (None, default)
            or getattr(CheckpointLoader._schemes.get(p), '__module__', '') == __name__]
    if mine:
        CheckpointLoader.register_scheme(prefixes=mine, loader=loader, force=True)


def register_checkpoint_loaders() -> bool:
    """Register mmsparse's checkpoint loaders with MMEngine (see the module docstring).

    Returns:
        False where this torch has no ``torch.serialization.safe_globals`` (nothing registered).
    """
    if not hasattr(torch.serialization, 'safe_globals'):
        return False
    _register('', load_from_local, 'load_from_local')
    _register(('http://', 'https://'), load_from_http, 'load_from_http')
    _register(('torchvision://', 'modelzoo://'), load_from_zoo, 'load_from_torchvision')
    _register(('open-mmlab://', 'openmmlab://'), load_from_zoo, 'load_from_openmmlab')
    _register('mmcls://', load_from_zoo, 'load_from_mmcls')
    from .compaction.sparse_ckpt import SCHEME
    _register(SCHEME, load_from_sparse, None)
    return True
