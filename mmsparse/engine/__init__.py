"""Registered hooks, optimizer-wrapper constructors and loops: importing registers them."""
from .dynamicvit_hooks import DynamicViTOptimHook, RNGStateHook  # noqa: F401  (DynamicViT)
