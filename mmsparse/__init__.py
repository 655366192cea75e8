"""mmsparse: sparse, measurably faster vision transformers for OpenMMLab 2.x runners.

Importing the package (``custom_imports=dict(imports=['mmsparse'])`` in a config):

- checks the installed torch / mmengine / mmcv / mmpretrain against the ranges mmsparse
  supports (:mod:`mmsparse.version`) and raises :class:`~mmsparse.errors.StackError` naming what
  to install otherwise;
- registers its modules in the ``mmsparse`` scope (:mod:`mmsparse.registry`);
- registers its checkpoint loaders with MMEngine (:mod:`mmsparse.checkpoint`: weights-only loads
  of local files, URLs and model-zoo names, and ``sparse://`` files) — the one place where
  loading behaviour changes, documented there.
"""
from .errors import StackError, report_uncaught_in_one_line
from .version import __version__, check_stack, version_info

try:
    check_stack()
except StackError:
    report_uncaught_in_one_line(StackError)  # a tool or script ends with one `error:` line
    raise

from .compat import quiet_pinned_stack_warnings  # noqa: E402

quiet_pinned_stack_warnings()

from .registry import MODELS  # noqa: F401,E402
from . import analysis, datasets, engine, models  # noqa: F401,E402
from .checkpoint import register_checkpoint_loaders  # noqa: E402

register_checkpoint_loaders()

__all__ = ['__version__', 'version_info']
