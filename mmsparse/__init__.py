"""mmsparse: sparse, measurably faster vision transformers for OpenMMLab 2.x runners.

Importing the package (``custom_imports=dict(imports=['mmsparse'])`` in a config) registers its
modules in the ``mmsparse`` scope and makes MMEngine load local checkpoints weights-only with
their objects allow-listed (see :mod:`mmsparse.compat`).
"""
from .compat import register_checkpoint_loader
from .registry import MODELS  # noqa: F401
from . import analysis, datasets  # noqa: F401,E402

__version__ = '0.1.0'

register_checkpoint_loader()
