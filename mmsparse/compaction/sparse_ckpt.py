"""Compact checkpoints of unstructured-sparse models: non-zero values + a packed bitmask.

A weight with a fraction s of zeros is stored as its ``(1 - s) * numel`` non-zero values (same
dtype) and a bitmask of ``numel / 8`` bytes: at density 0.5 an fp32 weight takes
0.5 * 4 + 1/8 = 2.125 bytes per entry instead of 4. Everything else (biases, norms, embeddings,
dense weights) is stored as is. Loading gives back the exact tensors (a stored zero is +0.0).

The file holds ``{'meta': ..., 'state_dict': {dense tensors}, 'sparse_state_dict': {name:
{'values', 'bits', 'shape'}}, 'order': [names]}``: a weights-only ``torch.load`` reads it.
``import mmsparse`` registers the checkpoint scheme ``sparse://`` with MMEngine
(:mod:`mmsparse.checkpoint`), so ``load_from='sparse://path.pth'`` and
``tools/test.py CONFIG sparse://path.pth`` load it like a normal checkpoint.
"""
import os
import tempfile
from collections import OrderedDict
from typing import Dict, Iterable, Optional

import torch
from torch import Tensor

from mmsparse.checkpoint import load_checkpoint_file
from mmsparse.ops.dst import pack_mask, unpack_mask

__all__ = ['SCHEME', 'FORMAT', 'sparsify_state_dict', 'densify_state_dict',
           'save_sparse_checkpoint', 'load_sparse_checkpoint', 'export_sparse_checkpoint']

SCHEME = 'sparse://'
FORMAT = 'mmsparse.sparse_state_dict.v1'


def sparsify_state_dict(state_dict: Dict[str, Tensor], names: Optional[Iterable[str]] = None,
                        min_sparsity: float = 0.05) -> dict:
    """Split a state_dict into dense tensors and (values, bitmask) sparse ones.

    Args:
        state_dict: name -> tensor.
        names: the tensors to store sparse (e.g. the masked weights of a
            :class:`~mmsparse.engine.SparseTrainingHook`); default every floating tensor with
            >= 2 dims whose fraction of zeros is at least ``min_sparsity``.
        min_sparsity: the smallest fraction of zeros worth storing sparse when ``names`` is
            None (the break-even of fp32 is 1/32).

    Returns:
        ``dict(state_dict=..., sparse_state_dict=..., order=[...], format=FORMAT)``.
    """
    chosen = set(names) if names is not None else None
    dense, sparse = OrderedDict(), OrderedDict()
    for k, v in state_dict.items():
        v = v.detach().cpu() if isinstance(v, Tensor) else v
        use = isinstance(v, Tensor) and v.is_floating_point() and v.dim() >= 1
        if use:
            if chosen is not None:
                use = k in chosen
            else:
                use = v.dim() >= 2 and v.numel() > 0 and \
                    float((v == 0).float().mean()) >= min_sparsity
        if use:
            mask = v != 0
            sparse[k] = dict(values=v[mask].clone(), bits=pack_mask(mask), shape=list(v.shape))
        else:
            dense[k] = v
    return dict(state_dict=dense, sparse_state_dict=sparse, order=list(state_dict),
                format=FORMAT)


def densify_state_dict(packed: dict) -> 'OrderedDict[str, Tensor]':
    """Inverse of :func:`sparsify_state_dict`: the full state_dict in its original order."""
    if packed.get('format') != FORMAT:
        raise ValueError(f'not an mmsparse sparse checkpoint (format {packed.get("format")!r}, '
                         f'expected {FORMAT!r})')
    out = OrderedDict()
    sparse = packed['sparse_state_dict']
    for k in packed['order']:
        if k in sparse:
            s = sparse[k]
            mask = unpack_mask(s['bits'], s['shape'])
            t = torch.zeros(s['shape'], dtype=s['values'].dtype)
            t[mask] = s['values']
            out[k] = t
        else:
            out[k] = packed['state_dict'][k]
    return out


def save_sparse_checkpoint(checkpoint: dict, path: str, names: Optional[Iterable[str]] = None,
                           min_sparsity: float = 0.05) -> dict:
    """Write ``checkpoint['state_dict']`` (or a bare state_dict) as a compact sparse file.

    The optimizer state, schedulers and message hub are not kept (an export, not a resume
    point); ``meta`` is kept. If ``names`` is None and the checkpoint holds SViTE masks
    (``checkpoint['svite']``), the masked tensors are the ones stored sparse.

    Returns:
        ``dict(path, bytes, sparse_tensors, dense_tensors)``.
    """
    state_dict = checkpoint.get('state_dict', checkpoint)
    if names is None:
        # (here, not at import: loading a sparse:// checkpoint needs no hooks)
        from mmsparse.engine.svite import UnstructuredMaskState, read_mask_state
        state = read_mask_state(checkpoint)
        if isinstance(state, UnstructuredMaskState):
            names = list(state.masks)
    packed = sparsify_state_dict(state_dict, names, min_sparsity)
    meta = dict(checkpoint.get('meta', {})) if 'state_dict' in checkpoint else {}
    meta = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}
    packed['meta'] = dict(meta, sparse_format=FORMAT)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(packed, path)
    return dict(path=path, bytes=os.path.getsize(path),
                sparse_tensors=len(packed['sparse_state_dict']),
                dense_tensors=len(packed['state_dict']))


def load_sparse_checkpoint(path: str, map_location=None) -> dict:
    """Read a file of :func:`save_sparse_checkpoint`: ``{'meta': ..., 'state_dict': ...}``."""
    if path.startswith(SCHEME):
        path = path[len(SCHEME):]
    packed = load_checkpoint_file(path, map_location='cpu')
    state_dict = densify_state_dict(packed)
    if map_location not in (None, 'cpu'):
        state_dict = OrderedDict((k, v.to(map_location) if isinstance(v, Tensor) else v)
                                 for k, v in state_dict.items())
    return dict(meta=dict(packed.get('meta', {})), state_dict=state_dict)


def export_sparse_checkpoint(checkpoint: str, out_path: str) -> dict:
    """Write a trained checkpoint as a sparse file and check it (``tools/compact.py --method
    sparse``).

    Args:
        checkpoint: path of a ``.pth`` of ``tools/train.py``.
        out_path: the sparse file to write.

    Returns:
        A report: paths, ``load_as`` (the ``sparse://`` name), the file's bytes next to those
        of the same weights stored dense (no optimizer state) and of the original file.

    Raises:
        ValueError: the checkpoint has no state_dict.
        RuntimeError: the file does not load back to exactly the same weights.
    """
    ckpt = load_checkpoint_file(checkpoint, map_location='cpu')
    if 'state_dict' not in ckpt:
        raise ValueError(f'{checkpoint} has no state_dict (not a checkpoint of tools/train.py)')
    info = save_sparse_checkpoint(ckpt, out_path)
    back = load_sparse_checkpoint(out_path)['state_dict']
    exact = list(back) == list(ckpt['state_dict']) and all(
        torch.equal(back[k], ckpt['state_dict'][k]) for k in back)
    if not exact:
        raise RuntimeError('the sparse checkpoint does not load back to the same weights')
    with tempfile.TemporaryDirectory() as tmp:  # the same weights, dense, without optimizer
        dense = os.path.join(tmp, 'dense.pth')
        torch.save(dict(meta={}, state_dict=ckpt['state_dict']), dense)
        dense_bytes = os.path.getsize(dense)
    return dict(method='sparse', checkpoint=out_path, load_as=SCHEME + out_path,
                bytes=info['bytes'], dense_state_dict_bytes=dense_bytes,
                original_file_bytes=os.path.getsize(checkpoint),
                sparse_tensors=info['sparse_tensors'], exact=exact)
