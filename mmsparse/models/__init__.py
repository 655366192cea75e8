"""Registered mmsparse models: importing this package registers every method's modules."""
from .layers.compact_vit import (CompactVisionTransformer,  # noqa: F401  (S²ViTE, UVC compaction)
                                 UVCCompactVisionTransformer)
from .sparsevit import SparseSwinTransformer  # noqa: F401  (SparseViT)
from .dynamicvit import DynamicViTClassifier, DynamicVisionTransformer  # noqa: F401  (DynamicViT)
from .uvc import UVCVisionTransformer  # noqa: F401  (UVC)
from .uvc_classifier import UVCClassifier  # noqa: F401  (UVC)
from .svite import SViTEVisionTransformer, TokenSelector  # noqa: F401  (SViTE)
