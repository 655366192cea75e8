"""The ViT layers every mmsparse method builds on: one attention, one encoder layer.

- :class:`Attention`: mmpretrain ``MultiheadAttention``'s keys; fused SDPA by default, an
  explicit path for a key policy; per-head value dims, value masks, head-score capture.
- :class:`EncoderLayer`: mmpretrain ``TransformerEncoderLayer``'s keys, named ``fc1`` / ``fc2``.
"""
from .attention import Attention, head_groups
from .encoder import EncoderLayer

__all__ = ['Attention', 'EncoderLayer', 'head_groups']
