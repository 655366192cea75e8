"""Config-value checks with one message shape, each naming the full config key.

Every registered mmsparse module checks its arguments at build time through a :class:`Keys`
bound to the prefix where users write them, so that a message reads
``model.backbone.keep_rate must be a number in (0, 1], got 1.5`` and the tools print it as one
``error:`` line (:class:`~mmsparse.errors.ConfigError`).

Prefixes, by convention (a module cannot know where a config nests it, so it names the usual
place): backbones ``model.backbone``, classifiers ``model``, hooks
``custom_hooks[<HookType>]``, search settings ``search_cfg``.
"""
import numbers
from typing import Any, Iterable, List, Optional, Sequence, Type

from mmsparse.errors import ConfigError

__all__ = ['Keys']


class Keys:
    """Checks of the values found under one config-key prefix.

    Args:
        prefix: the config key the values live under, e.g. ``'model.backbone'``; ``''`` for
            top-level keys.
        error: the exception class raised (a :class:`ConfigError` subclass).
    """

    def __init__(self, prefix: str = '', error: Type[ConfigError] = ConfigError) -> None:
        self.prefix = prefix
        self.error = error

    def key(self, name: str) -> str:
        """The full key of ``name`` (``name`` may already hold an index: ``'ratios[2]'``)."""
        return f'{self.prefix}.{name}' if self.prefix else name

    def fail(self, name: str, message: str) -> None:
        """Raise ``<prefix>.<name> <message>``."""
        raise self.error(f'{self.key(name)} {message}')

    def number(self, name: str, value: Any, low: Optional[float] = None,
               high: Optional[float] = None, low_open: bool = False, high_open: bool = False,
               integer: bool = False) -> Any:
        """Check a real number (booleans refused) in an interval; returns it.

        ``low`` / ``high`` of None leave that side unbounded; ``*_open`` excludes the bound.
        """
        kind = 'an integer' if integer else 'a number'
        ok = isinstance(value, numbers.Integral if integer else numbers.Real) and \
            not isinstance(value, bool)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            self.fail(name, f'must be {kind}{_interval(low, high, low_open, high_open)}, '
                      f'got {value!r}')
        return value

    def numbers(self, name: str, values: Any, low: Optional[float] = None,
                high: Optional[float] = None, low_open: bool = False, high_open: bool = False,
                integer: bool = False, length: Optional[int] = None,
                order: Optional[str] = None) -> List:
        """Check a non-empty list of numbers, each as :meth:`number`; returns it as a list.

        Args:
            length: the required length, if any.
            order: ``'non-increasing'`` or ``'non-decreasing'``, if required.
        """
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            self.fail(name, f'must be a non-empty list of numbers, got {values!r}')
        if length is not None and len(values) != length:
            self.fail(name, f'must have {length} values, got {len(values)}: {list(values)!r}')
        for i, v in enumerate(values):
            self.number(f'{name}[{i}]', v, low, high, low_open, high_open, integer)
        pairs = list(zip(values, values[1:]))
        if order == 'non-increasing' and any(b > a for a, b in pairs) or \
                order == 'non-decreasing' and any(b < a for a, b in pairs):
            self.fail(name, f'must be {order}, got {list(values)!r}')
        return list(values)

    def choice(self, name: str, value: Any, choices: Iterable) -> Any:
        """Check that ``value`` is one of ``choices``; returns it."""
        choices = list(choices)
        if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
            self.fail(name, f'must be one of {", ".join(map(repr, choices))}, got {value!r}')
        return value

    def boolean(self, name: str, value: Any) -> bool:
        """Check a real ``True`` / ``False`` (no coercion of 0, 1, 'yes' ...); returns it."""
        if not isinstance(value, bool):
            self.fail(name, f'must be True or False, got {value!r}')
        return value

    def require(self, name: str, condition: bool, message: str) -> None:
        """``<key> <message>`` unless ``condition`` holds (for rules between keys)."""
        if not condition:
            self.fail(name, message)


def _interval(low, high, low_open, high_open) -> str:
    if low is None and high is None:
        return ''
    if high is None:
        return f' {">" if low_open else ">="} {low:g}'
    if low is None:
        return f' {"<" if high_open else "<="} {high:g}'
    return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
