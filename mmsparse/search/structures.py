"""``search_cfg.structures``: the models a joint search chooses among (pure: os.path only).

A classifier's search may list several composed DynamicViT models, each a compact structure
with its own trained weights::

    search_cfg = dict(structures=[
        dict(name='uvc0.5', compact_checkpoint='work_dirs/uvc/uvc_compact.pth',
             checkpoint='work_dirs/dynamicvit-uvc/epoch_1.pth'),
        dict(name='dense', compact_checkpoint=None,
             checkpoint='work_dirs/dynamicvit/epoch_1.pth'),
    ])

- ``name``: what the log, the report and the log lines call the entry (distinct, non-empty);
- ``compact_checkpoint``: the compact checkpoint whose structure the model takes (it becomes the
  entry's ``model.compact_checkpoint``); None: the config's model without compaction (the
  dense DynamicViT);
- ``checkpoint``: the trained composed checkpoint to score (compact weights plus trained
  predictors, e.g. ``tools/train.py`` of a ``configs/compose`` config); every weight of the
  entry's model must be in it, with its shape.

The genome gets one categorical gene (which entry, :func:`mmsparse.search.spaces.joint_space`)
in front of the keep-ratio genes. :func:`parse_structures` checks the list when the search
starts, each error naming the key (``search_cfg.structures[1].checkpoint: ... not found``).
"""
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .evolution import SearchSettingsError

__all__ = ['StructureEntry', 'parse_structures', 'STRUCTURE_KEYS']

# the keys of one entry: required, and the one that may be None
STRUCTURE_KEYS = ('name', 'compact_checkpoint', 'checkpoint')


@dataclass(frozen=True)
class StructureEntry:
    """One model of a joint search (paths absolute).

    Attributes:
        name: the entry's name.
        compact_checkpoint: the compact checkpoint setting its structure, or None (dense).
        checkpoint: the composed weights to load.
        index: position in ``search_cfg.structures`` (the categorical gene's value).
    """
    name: str
    compact_checkpoint: Optional[str]
    checkpoint: str
    index: int

    @property
    def key(self) -> str:
        """The config key of this entry (``search_cfg.structures[1]``)."""
        return f'search_cfg.structures[{self.index}]'

    def to_dict(self) -> Dict[str, Any]:
        """What the search log's header and the latency table's meta record of it."""
        return dict(name=self.name, compact_checkpoint=self.compact_checkpoint,
                    checkpoint=self.checkpoint)


def _require(key: str, condition: bool, message: str) -> None:
    """``<key>: <message>`` unless ``condition`` holds."""
    if not condition:
        raise SearchSettingsError(f'{key}: {message}')


def _path(value: Any, key: str, optional: bool) -> Optional[str]:
    if value is None and optional:
        return None
    _require(key, isinstance(value, str) and bool(value),
             f'must be a checkpoint path{" or None" if optional else ""}, got {value!r}')
    path = os.path.expanduser(value)
    _require(key, os.path.isfile(path), f'{value!r} not found'
             + (' (train the composed model first, see the config\'s comments)'
                if key.endswith('.checkpoint') else
                ' (write it with tools/compact.py or UVCCompactHook; None: the dense model)'))
    return os.path.abspath(path)


def parse_structures(value: Any, key: str = 'search_cfg.structures') -> List[StructureEntry]:
    """Check ``search_cfg.structures`` and return its entries (files must exist).

    Args:
        value: the config value: a non-empty list of dicts with exactly :data:`STRUCTURE_KEYS`.
        key: the config key named in errors.

    Raises:
        SearchSettingsError: one line naming the entry's key (``search_cfg.structures[1].name``).
    """
    _require(key, isinstance(value, (list, tuple)) and len(value) > 0,
                 f'must be a non-empty list of dict(name=..., compact_checkpoint=..., '
                 f'checkpoint=...), got {value!r}')
    entries: List[StructureEntry] = []
    seen: Dict[str, int] = {}
    for i, item in enumerate(value):
        at = f'{key}[{i}]'
        _require(at, hasattr(item, 'items'), f'must be a dict(name=..., compact_checkpoint=..., '
                 f'checkpoint=...), got {item!r}')
        unknown = sorted(set(item) - set(STRUCTURE_KEYS))
        _require(f'{at}.{unknown[0]}' if unknown else at, not unknown,
                 f'unknown key; an entry has {", ".join(STRUCTURE_KEYS)}')
        missing = [k for k in STRUCTURE_KEYS if k not in item]
        _require(f'{at}.{missing[0]}' if missing else at, not missing,
                 "is missing (an entry has name, compact_checkpoint and checkpoint; "
                 "compact_checkpoint=None: the config's dense model)")
        name = item['name']
        _require(f'{at}.name', isinstance(name, str) and bool(name.strip()),
                 f'must be a non-empty string, got {name!r}')
        _require(f'{at}.name', name not in seen,
                 f'{name!r} duplicates {key}[{seen.get(name)}].name; names must be distinct')
        seen[name] = i
        entries.append(StructureEntry(
            name=name,
            compact_checkpoint=_path(item['compact_checkpoint'], f'{at}.compact_checkpoint',
                                     optional=True),
            checkpoint=_path(item['checkpoint'], f'{at}.checkpoint', optional=False),
            index=i))
    return entries
