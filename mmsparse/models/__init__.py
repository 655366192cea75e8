"""Registered mmsparse models: importing this package registers every method's modules."""
from .dynamicvit import DynamicViTClassifier, DynamicVisionTransformer  # noqa: F401  (DynamicViT)
