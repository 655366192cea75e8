"""Registered hooks, optimizer-wrapper constructors and loops: importing registers them."""
from .sparsevit_hooks import SparsityAwareAdaptationHook  # noqa: F401  (SparseViT)
from .dynamicvit_hooks import DynamicViTOptimHook, RNGStateHook  # noqa: F401  (DynamicViT)
from . import uvc_hooks, uvc_optim  # noqa: F401  (UVC)
from .svite import (SparseTrainingHook, StructuredSparseTrainingHook,  # noqa: F401  (SViTE)
                    TokenSelectorTemperatureHook)
