"""mmsparse: sparse, measurably faster vision transformers for OpenMMLab 2.x runners.

Importing the package (``custom_imports=dict(imports=['mmsparse'])`` in a config, or
``import mmsparse``):

- checks the installed torch / mmengine / mmcv / mmpretrain against the ranges mmsparse
  supports (:mod:`mmsparse.version`) and raises :class:`~mmsparse.errors.StackError` naming what
  to install otherwise;
- registers its modules in the ``mmsparse`` scope (:mod:`mmsparse.registry`);
- registers its checkpoint loaders with MMEngine: one call, :func:`register_checkpoint_loaders`
  (:mod:`mmsparse.checkpoint` documents exactly what it changes: weights-only loads of local
  files, URLs and model-zoo names, and the ``sparse://`` scheme).

Why the checkpoint loaders are registered on import, the one side effect of importing mmsparse:
an OpenMMLab user names mmsparse only in ``custom_imports`` and runs ``mim train`` /
``tools/train.py`` of mmpretrain, mmdet or mmseg, or builds a Runner themselves; nothing of
mmsparse runs between that import and the Runner loading ``load_from`` / ``resume`` /
``init_cfg=dict(type='Pretrained')``. Without the loaders, ``sparse://`` checkpoints (written
by ``tools/compact.py --method sparse``) would not load at all, and MMEngine 0.10.7's own loaders
cannot read Runner checkpoints with torch >= 2.6's weights-only default (or read downloads with
full pickle). The call is idempotent and leaves loaders that other packages registered in place;
mmsparse's own tools call it again explicitly (:func:`mmsparse.utils.setup_scope`), so that
they do not depend on import order.

Importing mmsparse installs no warning filters: the tools quiet the pinned stack's noise
(:func:`mmsparse.compat.quiet_pinned_stack_warnings`) in their entry point,
:func:`mmsparse.utils.run_cli`; a library user keeps their own warning settings.
"""
from .errors import StackError, report_uncaught_in_one_line
from .version import __version__, check_stack, version_info

try:
    check_stack()
except StackError:
    report_uncaught_in_one_line(StackError)  # a tool or script ends with one `error:` line
    raise

from .registry import MODELS  # noqa: F401,E402
from . import analysis, datasets, engine, models  # noqa: F401,E402
from .checkpoint import register_checkpoint_loaders  # noqa: E402

# The one import-time side effect (see the module docstring for why it must stay).
register_checkpoint_loaders()

__all__ = ['__version__', 'version_info', 'register_checkpoint_loaders']
