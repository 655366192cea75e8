"""The error a bad config value raises.

:class:`ConfigError` is a ``ValueError`` whose message names the config key, the value given and
the values allowed. The command lines (:func:`mmsparse.utils.run_cli`) print it as one line
``error: ...`` with exit status 2, wherever the Runner meets it: while building the model, hooks
and optimizer, or when a hook checks the model it was given.
"""

__all__ = ['ConfigError']


class ConfigError(ValueError):
    """A config value that mmsparse cannot run with (raised at build time)."""
