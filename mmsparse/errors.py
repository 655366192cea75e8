"""The error a bad config value raises.

:class:`ConfigError` is a ``ValueError`` whose message names the config key, the value given and
the values allowed. The command lines (:func:`mmsparse.utils.run_cli`) print it as one line
``error: ...`` with exit status 2, wherever the Runner meets it: while building the model, hooks
and optimizer, or when a hook checks the model it was given.
"""

import os
import sys

__all__ = ['ConfigError', 'CheckpointError', 'StackError',
           'report_uncaught_in_one_line']


class ConfigError(ValueError):
    """A config value that mmsparse cannot run with (raised at build time)."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded: missing, corrupt, unreachable, or holding objects
    that a weights-only load refuses (one ``error:`` line in the tools)."""


class StackError(ImportError):
    """An installed package of the stack (torch, mmengine, mmcv, mmpretrain) that mmsparse does
    not support, or that is missing; the message names what to install."""


def report_uncaught_in_one_line(*types: type) -> None:
    """Make an exception of ``types`` that reaches the top of the program uncaught print one
    line ``error: <message>`` and exit with status 2 instead of a traceback (other exceptions:
    unchanged). Used where a tool cannot catch the error itself: on ``import mmsparse``."""
    previous = sys.excepthook

    def hook(exc_type, value, tb):
        if issubclass(exc_type, types):
            print(f'error: {value}', file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)  # sys.exit is not honoured inside an excepthook
        previous(exc_type, value, tb)

    sys.excepthook = hook
