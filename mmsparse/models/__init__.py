"""Registered mmsparse models: importing this package registers every method's modules."""
from .sparsevit import SparseSwinTransformer  # noqa: F401  (SparseViT)
from .dynamicvit import DynamicViTClassifier, DynamicVisionTransformer  # noqa: F401  (DynamicViT)
from .uvc import UVCVisionTransformer, UVCCompactVisionTransformer  # noqa: F401  (UVC)
from .uvc_classifier import UVCClassifier  # noqa: F401  (UVC)
from .svite import CompactVisionTransformer, SViTEVisionTransformer, TokenSelector  # noqa: F401  (SViTE; compact ViT shared)
