"""Derived configs: the one way mmsparse writes a config that another config's result implies.

The search writes a fine-tuning config with the best setting it found, compaction writes the
config of the smaller model it exported. Each is written by :func:`write_derived_config` as

.. code-block:: python

    # <header, one comment line per line>
    _base_ = ['/abs/path/of/the/source/config.py']

    model = dict(backbone=dict(window_ratios=[[0.7, 0.7], ...]))
    custom_hooks = [...]
    load_from = '/abs/path/best.pth'

so that the derived config is short, readable and inherits everything it does not change from
its source (MMEngine's ``_base_`` merge: dicts merge key by key, ``_delete_=True`` replaces a
dict, every other value replaces). With ``base_config=None`` the updates are the whole config.

Values must be Python literals (numbers, strings, bools, None, lists, tuples, dicts of them):
they are written with :func:`pprint.pformat` and read back by MMEngine's ``Config.fromfile``.

The module also answers "which class does this config dict build?" (:func:`config_class`,
:func:`is_config_of`) the way the Runner answers it, through the registry, so that code that
looks for a hook in ``custom_hooks`` (the search, compaction) recognises it by class, whether the
config writes ``'SparsityAwareAdaptationHook'``, ``'mmsparse.SparsityAwareAdaptationHook'`` or
the class itself, and a subclass counts.
"""
import os
import pprint
from typing import Any, Mapping, Optional

__all__ = ['derived_config_text', 'write_derived_config', 'config_class', 'is_config_of']


def config_class(obj_cfg: Any, registry: Any, default_scope: str = 'mmsparse') -> Optional[type]:
    """The class a config dict (``type``, optional ``_scope_``) builds in ``registry``.

    The name is looked up as the Runner builds it: in the dict's ``_scope_``, else the current
    default scope (``default_scope`` when none is set), a ``'lib.Name'`` prefix choosing the
    library's registry.

    Returns:
        The class, or None (no ``type``, or a name the registry does not know).
    """
    from mmengine.registry import DefaultScope

    type_ = obj_cfg.get('type') if isinstance(obj_cfg, Mapping) else None
    if not isinstance(type_, str):
        return type_ if isinstance(type_, type) else None
    current = DefaultScope.get_current_instance()
    scope = obj_cfg.get('_scope_') or (current.scope_name if current else default_scope)
    with registry.switch_scope_and_registry(scope) as reg:
        return reg.get(type_)


def is_config_of(obj_cfg: Any, cls: type, registry: Any = None) -> bool:
    """Whether a config dict builds ``cls`` (or a subclass); ``registry`` defaults to HOOKS."""
    if registry is None:
        from mmengine.registry import HOOKS as registry
    found = config_class(obj_cfg, registry)
    return isinstance(found, type) and issubclass(found, cls)


def _plain(value: Any) -> Any:
    """``value`` with mmengine ``ConfigDict`` / ``Config`` turned into plain dicts (recursively)."""
    if hasattr(value, 'to_dict'):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def derived_config_text(base_config: Optional[str], updates: Mapping[str, Any],
                        header: str = '') -> str:
    """The text :func:`write_derived_config` writes (see there)."""
    lines = [f'# {line}'.rstrip() for line in header.splitlines()]
    if base_config is not None:
        lines += [f'_base_ = [{os.path.abspath(base_config)!r}]', '']
    for key, value in updates.items():
        if not key.isidentifier() or key == '_base_':
            raise ValueError(f'derived config key {key!r}: must be a top-level identifier other '
                             f'than _base_')
        text = pprint.pformat(_plain(value), width=96, sort_dicts=False)
        if _literal_mismatch(text, value):  # an object's repr would not load back
            raise ValueError(f'derived config key {key!r}: {value!r} is not a Python literal')
        lines.append(f'{key} = {text}')
    return '\n'.join(lines) + '\n'


def _literal_mismatch(text: str, value: Any) -> bool:
    """Whether ``text`` does not evaluate back to ``value`` (e.g. an object's repr)."""
    import ast
    try:
        return ast.literal_eval(text) != _plain(value)
    except (ValueError, SyntaxError):
        return True


def write_derived_config(base_config: Optional[str], out_path: str,
                         updates: Mapping[str, Any], header: str = '') -> str:
    """Write a config that inherits ``base_config`` and overrides ``updates``.

    Args:
        base_config: path of the source config (written as an absolute ``_base_``); None for a
            standalone config holding ``updates`` only.
        out_path: where to write (its folder is created).
        updates: top-level keys -> values (Python literals, ``ConfigDict`` allowed), in the
            order they are written; MMEngine merges them into the base (``_delete_=True`` in a
            dict replaces the base's dict instead).
        header: text written first, each line as a ``#`` comment (what wrote the config, from
            what, and what to do with it).

    Returns:
        ``out_path``.

    Raises:
        ValueError: a key that is not a top-level identifier, or a value that is not a literal.

    Example:
        >>> write_derived_config('configs/a.py', 'work_dirs/a_best.py',
        ...                      dict(model=dict(backbone=dict(keep_ratios=[0.9, 0.7]))),
        ...                      header='the best keep ratios of configs/a.py')
    """
    text = derived_config_text(base_config, updates, header)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, 'w') as f:
        f.write(text)
    return out_path
