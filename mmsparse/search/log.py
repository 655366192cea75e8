"""The search log: one JSON line per assessed candidate, after a header line (pure).

The first line is ``{"type": "header", ...}`` with what the results depend on (the window,
settings, space, input size, checkpoint, metric); every later line is a
:class:`~mmsparse.search.evolution.Candidate` (``"type": "candidate"``). Lines are flushed and
fsync'ed one at a time, so a killed search leaves at most one partial last line, which
:func:`read_log` drops.

One search at a time writes a log: :class:`SearchLogLock` holds an exclusive ``flock`` on
``<log>.lock`` (holding the writer's pid) for as long as the search runs. The kernel releases it
when the process ends however it ends, so a stale lock file never blocks a restart, while a
search that is still running (an orphaned rank of a killed launcher, a second terminal) makes a
new one refuse instead of interleaving lines.
"""
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .evolution import Candidate

__all__ = ['read_log', 'SearchLogWriter', 'SearchLogLock', 'header_mismatch']


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

    ``iterations`` may differ: the header keeps under it the budget settings (``iterations``
    and ``max_draws``, :data:`mmsparse.search.run.BUDGET_KEYS`), and a search given a longer
    budget replays the shorter one's draws first.
    """
    for key in sorted(set(old) | set(new)):
        if key in ('type', 'iterations'):
            continue
        if json.dumps(old.get(key), sort_keys=True) != json.dumps(new.get(key), sort_keys=True):
            return key
    return None


class SearchLogLock:
    """An exclusive lock on a search log: ``flock`` of ``<log>.lock``, released on exit.

    Args:
        log_path: the search log.

    Example:
        >>> lock = SearchLogLock('work_dirs/s/search_max40_min0.jsonl')
        >>> held_by = lock.acquire()   # None: acquired; else a message naming the holder
        >>> lock.release()
    """

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path
        self.path = f'{log_path}.lock'
        self._fd: Optional[int] = None

    def acquire(self) -> Optional[str]:
        """Take the lock without waiting.

        Returns:
            None when taken (or already held by this object; or no ``fcntl`` on this system),
            else one line saying which process holds it.
        """
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory locks, run unlocked as before
            return None
        if self._fd is not None:
            return None
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors='replace').strip() or '?'
            os.close(fd)
            return (f'another search is running on {self.log_path} (pid {holder} holds '
                    f'{self.path}); wait for it to finish or stop it, or use another --work-dir')
        os.ftruncate(fd, 0)
        os.write(fd, f'{os.getpid()}\n'.encode())
        self._fd = fd
        return None

    def release(self) -> None:
        """Give the lock up (the lock file stays; an unlocked file blocks nobody)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class SearchLogWriter:
    """Appends lines to the log (rank 0 only); a dropped partial line is cut off first.

    Args:
        path: the log.
        lock: the lock this writer holds (released by :meth:`close`).
    """

    def __init__(self, path: str, lock: Optional[SearchLogLock] = None) -> None:
        self.path = path
        self.lock = lock
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._rewrite_valid_lines()

    def close(self) -> None:
        """Release the log's lock (the file itself is not held open)."""
        if self.lock is not None:
            self.lock.release()

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
