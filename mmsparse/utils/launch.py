"""Ranks stop when their launcher is gone.

A rank started by ``mpirun`` / ``torchpack dist-run``, ``torchrun`` or ``srun`` that loses its
launcher (SIGKILLed, OOM-killed, its terminal closed) otherwise runs on: it keeps appending to
the search log or writing checkpoints while a restarted job writes the same files.
:func:`stop_with_launcher` starts a daemon thread that ends the process within ``poll_s``
seconds once the launcher has gone.

Why a watchdog thread, not ``prctl(PR_SET_PDEATHSIG)``: the death signal fires only when the
*direct* parent exits (and, on Linux, when the parent *thread* that forked us exits), but a
rank's direct parent is often a shell that outlives the launcher: ``torchpack dist-run`` runs
each rank as ``sh -c 'python ... 2>&1'`` (its ``silentrun``), which stays alive, waiting for the
rank, when ``mpirun`` is killed. The watchdog instead identifies the launcher as the nearest
ancestor that is not a shell (:func:`launcher_pid`) and polls that the same process is still
there; when a process dies its children are re-parented (to init or a subreaper), so the
nearest non-shell ancestor changes, zombie or not. Without ``/proc`` (not Linux) it falls back
to the direct parent (``os.getppid()`` changing), which covers launchers that start the rank
themselves (torchrun, mpirun without torchpack's shell).
"""
import os
import sys
import threading
from typing import Optional, Tuple

__all__ = ['launcher_pid', 'stop_with_launcher', 'SHELLS']

# Process names skipped when looking for the launcher: wrappers between it and the rank.
SHELLS = frozenset({'sh', 'bash', 'dash', 'zsh', 'ksh', 'mksh', 'busybox', 'env', 'nohup',
                    'time', 'timeout', 'stdbuf', 'nice', 'taskset', 'numactl', 'silentrun'})

_watchdog: Optional[threading.Thread] = None


def _stat(pid: int) -> Optional[Tuple[str, int, int]]:
    """``(name, parent pid, start time)`` of ``pid`` from ``/proc`` (None if unreadable)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            stat = f.read()
    except OSError:
        return None
    # the name is in parentheses and may hold spaces or ')'; the fields after it are plain
    name = stat[stat.index('(') + 1:stat.rindex(')')]
    rest = stat[stat.rindex(')') + 2:].split()
    return name, int(rest[1]), int(rest[19])


def launcher_pid(pid: Optional[int] = None) -> Tuple[int, Optional[int]]:
    """The launcher of process ``pid`` (default: this one): its nearest ancestor that is not a
    shell or wrapper (:data:`SHELLS`), with the ancestor's start time (None without ``/proc``).

    Returns:
        ``(launcher pid, start time)``; ``(os.getppid(), None)`` where ``/proc`` is missing.
    """
    pid = os.getpid() if pid is None else pid
    me = _stat(pid)
    if me is None:
        return os.getppid(), None
    parent = me[1]
    while parent > 1:
        info = _stat(parent)
        if info is None:
            break
        name, grand, start = info
        if name not in SHELLS:
            return parent, start
        parent = grand
    return parent, None


def stop_with_launcher(poll_s: float = 1.0, what: str = 'this rank') -> Optional[threading.Thread]:
    """End this process (exit status 1, one line on stderr) once its launcher is gone.

    Call once in a rank of a distributed launch; calling again does nothing. The line written
    before exiting is flushed to disk by the writers themselves (the search log fsyncs each
    line), so the work done so far is resumable.

    Args:
        poll_s: seconds between checks.
        what: how the message names the process (e.g. ``'rank 1'``).

    Returns:
        The daemon thread (None if one was already started).
    """
    global _watchdog
    if _watchdog is not None:
        return None
    launcher, start = launcher_pid()
    parent = os.getppid()

    def gone() -> bool:
        if start is None:  # no /proc: only the direct parent can be watched
            return os.getppid() != parent
        return launcher_pid() != (launcher, start)

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(poll_s):
            if gone():
                sys.stderr.write(f'{what}: its launcher (pid {launcher}) is gone; stopping\n')
                sys.stderr.flush()
                os._exit(1)  # from a thread: sys.exit would end the thread only

    _watchdog = threading.Thread(target=watch, name='mmsparse-launcher-watchdog', daemon=True)
    _watchdog.start()
    return _watchdog
