"""Turn masks into a physically smaller dense model or a compact file, and export it.

Every method's compaction lives here; ``tools/compact.py`` only parses flags and calls it.

- :mod:`.svite`: S²ViTE heads / MLP neurons -> :class:`~mmsparse.models.CompactVisionTransformer`
  (:func:`~.svite.compact_svite_checkpoint`: ``--method svite``).
- :mod:`.sparse_ckpt`: unstructured-sparse checkpoints as values + packed bitmask
  (``sparse://`` checkpoint scheme; :func:`~.sparse_ckpt.export_sparse_checkpoint`:
  ``--method sparse``).
- :mod:`.uvc`: UVC heads, head dims, neurons and skipped blocks -> the compact ViT
  (:func:`~.uvc.compact_checkpoint`: ``--method uvc``).

The SViTE masks are read from a checkpoint through :func:`mmsparse.engine.svite.read_mask_state`,
the one reader of the schema the training hooks write.
"""
from . import sparse_ckpt, svite  # noqa: F401  (the modules, as before)
from .magnitude import compact_magnitude_checkpoint  # noqa: F401  (uniform magnitude baseline)
from .sparse_ckpt import export_sparse_checkpoint, load_sparse_checkpoint, save_sparse_checkpoint
from .svite import compact_svite_checkpoint

__all__ = ['compact_svite_checkpoint', 'export_sparse_checkpoint', 'save_sparse_checkpoint',
           'load_sparse_checkpoint']
