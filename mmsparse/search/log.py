"""The search log: one JSON line per assessed candidate, after a header line (pure).

The first line is ``{"type": "header", ...}`` with what the results depend on (the window,
settings, space, input size, checkpoint, metric); every later line is a
:class:`~mmsparse.search.evolution.Candidate` (``"type": "candidate"``). Lines are flushed and
fsync'ed one at a time, so a killed search leaves at most one partial last line, which
:func:`read_log` drops.
"""
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .evolution import Candidate

__all__ = ['read_log', 'SearchLogWriter', 'header_mismatch']


def read_log(path: str) -> Tuple[Optional[Dict[str, Any]], List[Candidate], int]:
    """Read a search log.

    Returns:
        ``(header or None, candidates, dropped)``; ``dropped`` counts unparsable lines (a partial
        last line of a killed run).
    """
    if not os.path.isfile(path):
        return None, [], 0
    header, cands, dropped = None, [], 0
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if rec.get('type') == 'header':
                header = rec
            elif rec.get('type') == 'candidate':
                cands.append(Candidate.from_dict(rec))
    return header, cands, dropped


def header_mismatch(old: Mapping[str, Any], new: Mapping[str, Any]) -> Optional[str]:
    """The first key whose value differs between two headers (None if they agree).

    ``iterations`` may differ: a search extended by more generations replays the same ones first.
    """
    for key in sorted(set(old) | set(new)):
        if key in ('type', 'iterations'):
            continue
        if json.dumps(old.get(key), sort_keys=True) != json.dumps(new.get(key), sort_keys=True):
            return key
    return None


class SearchLogWriter:
    """Appends lines to the log (rank 0 only); a dropped partial line is cut off first."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._rewrite_valid_lines()

    def _rewrite_valid_lines(self) -> None:
        # a killed writer may leave a partial line; keep the whole ones only
        if not os.path.isfile(self.path):
            return
        with open(self.path) as f:
            lines = f.read().splitlines()
        good = []
        for line in lines:
            try:
                json.loads(line)
                good.append(line)
            except json.JSONDecodeError:
                pass
        if len(good) != len(lines):
            with open(self.path, 'w') as f:
                f.write(''.join(line + '\n' for line in good))

    def write(self, record: Mapping[str, Any]) -> None:
        with open(self.path, 'a') as f:
            f.write(json.dumps(record, sort_keys=True) + '\n')
            f.flush()
            os.fsync(f.fileno())

    def header(self, header: Mapping[str, Any]) -> None:
        self.write(dict(header, type='header'))

    def candidate(self, cand: Candidate) -> None:
        self.write(dict(cand.to_dict(), type='candidate'))
