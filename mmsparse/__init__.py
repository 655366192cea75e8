"""mmsparse: sparse, measurably faster vision transformers for OpenMMLab 2.x runners.

Importing the package (``custom_imports=dict(imports=['mmsparse'])`` in a config) registers its
modules in the ``mmsparse`` scope and makes MMEngine load local checkpoints weights-only with
their objects allow-listed (see :mod:`mmsparse.compat`).
"""
from .compat import quiet_pinned_stack_warnings, register_checkpoint_loader

quiet_pinned_stack_warnings()

from .registry import MODELS  # noqa: F401,E402
from . import analysis, datasets, engine, models  # noqa: F401,E402

__version__ = '0.1.0'

register_checkpoint_loader()
