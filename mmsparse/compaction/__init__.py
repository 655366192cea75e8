"""Turn masks into a physically smaller dense model or a compact file, and export it.

- :mod:`.svite`: S²ViTE heads / MLP neurons -> :class:`~mmsparse.models.CompactVisionTransformer`.
- :mod:`.sparse_ckpt`: unstructured-sparse checkpoints as values + packed bitmask
  (``sparse://`` checkpoint scheme).
"""
from . import sparse_ckpt, svite  # noqa: F401
