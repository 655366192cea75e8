"""SViTE's engine: one hook per file and the mask state they share.

- :class:`SparseTrainingHook` (SViTE, unstructured weight masks): :mod:`.sparse_training_hook`;
- :class:`StructuredSparseTrainingHook` (S²ViTE, heads and MLP neurons):
  :mod:`.structured_sparse_training_hook`;
- :class:`TokenSelectorTemperatureHook` (SViTE+, Gumbel temperature):
  :mod:`.token_selector_temperature_hook`;
- :class:`DSTHook`: what the two sparse-training hooks share (schedule, gradient capture,
  checkpoint, rank sync): :mod:`.dst_hook`;
- :class:`MaskState` (pack, restore, fingerprint, rank sync of the masks; the one reader of
  ``checkpoint['svite']``, which compaction uses too): :mod:`.mask_state`.

The update rules are pure functions of :mod:`mmsparse.ops.dst`.
"""
from .dst_hook import DSTHook
from .mask_state import (CHECKPOINT_KEY, MaskState, StructuredMaskState, UnstructuredMaskState,
                         read_mask_state)
from .sparse_training_hook import DEFAULT_LAYERS, SparseTrainingHook
from .structured_sparse_training_hook import StructuredSparseTrainingHook
from .token_selector_temperature_hook import TokenSelectorTemperatureHook

__all__ = ['SparseTrainingHook', 'StructuredSparseTrainingHook', 'TokenSelectorTemperatureHook',
           'DSTHook', 'MaskState', 'UnstructuredMaskState', 'StructuredMaskState',
           'read_mask_state', 'CHECKPOINT_KEY', 'DEFAULT_LAYERS']
