"""Latency measurement shared by ``tools/analysis_tools/measure_latency.py``, benchmarks and
search.

Several callables are timed *interleaved* (one run of each in turn), so that the slow drift of a
shared machine hits every model alike and their ratio is meaningful within one run.

On a GPU, each call is bracketed by CUDA synchronisation (so no call's kernels run into the next
one's time); ``timer='cuda_event'`` reads the time between two CUDA events recorded around the
call instead of the host clock. ``grad=True`` times with autograd on (a training step).
"""
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping

import torch

__all__ = ['LatencyResult', 'measure_latency', 'trimmed_mean', 'thread_info', 'TIMERS']


@dataclass
class LatencyResult:
    """Timings of one callable, in milliseconds per call."""
    name: str
    runs: int
    warmup: int
    trimmed_mean_ms: float
    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    timer: str = 'wall'

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def trimmed_mean(values: List[float], trim: float = 0.25) -> float:
    """Mean after dropping ``trim`` of the values at each end (``0 <= trim < 0.5``)."""
    if not values:
        raise ValueError('trimmed_mean of no values')
    if not 0 <= trim < 0.5:
        raise ValueError(f'trim must be in [0, 0.5), got {trim}')
    ordered = sorted(values)
    cut = int(math.floor(len(ordered) * trim))
    kept = ordered[cut:len(ordered) - cut]
    return sum(kept) / len(kept)


def thread_info() -> Dict[str, Any]:
    """What the timings depend on: torch threads and device."""
    return {
        'torch_threads': torch.get_num_threads(),
        'interop_threads': torch.get_num_interop_threads(),
        'device': torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',
        'torch': torch.__version__,
    }


TIMERS = ('wall', 'cuda_event')


def _timer(timer: str, sync: Callable[[], None]) -> Callable[[Callable[[], Any]], float]:
    """A function that calls ``fn`` once and returns its time in ms, by ``timer``."""
    if timer not in TIMERS:
        raise ValueError(f'timer must be one of {TIMERS}, got {timer!r}')
    if timer == 'wall':
        def timed(fn: Callable[[], Any]) -> float:
            start = time.perf_counter()
            fn()
            sync()
            return (time.perf_counter() - start) * 1e3
        return timed
    if not torch.cuda.is_available():
        raise ValueError("timer='cuda_event' needs CUDA, which is not available here")
    start_ev = torch.cuda.Event(enable_timing=True)
    end_ev = torch.cuda.Event(enable_timing=True)

    def timed_cuda(fn: Callable[[], Any]) -> float:
        sync()
        start_ev.record()
        fn()
        end_ev.record()
        end_ev.synchronize()
        return start_ev.elapsed_time(end_ev)
    return timed_cuda


def measure_latency(fns: Mapping[str, Callable[[], Any]], warmup: int = 10, runs: int = 50,
                    trim: float = 0.25, cuda_sync: bool = None, timer: str = 'wall',
                    grad: bool = False) -> Dict[str, LatencyResult]:
    """Time each callable ``runs`` times after ``warmup`` calls, interleaving them.

    Args:
        fns: name -> zero-argument callable (inputs already bound).
        warmup: untimed calls of each callable before timing.
        runs: timed calls of each callable.
        trim: fraction dropped at each end for the trimmed mean.
        cuda_sync: synchronise CUDA around each call; default: when CUDA is available.
        timer: 'wall' (host clock around the call and its synchronisation) or 'cuda_event' (the
            time between CUDA events recorded on the current stream before and after the call,
            read once it has finished; needs CUDA).
        grad: run the calls with autograd on (e.g. forward + backward + optimizer step);
            default: under ``torch.inference_mode``.

    Returns:
        name -> :class:`LatencyResult`.
    """
    if runs < 1:
        raise ValueError(f'runs must be >= 1, got {runs}')
    if warmup < 0:
        raise ValueError(f'warmup must be >= 0, got {warmup}')
    if cuda_sync is None:
        cuda_sync = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda_sync else (lambda: None)
    timed = _timer(timer, sync)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    with torch.enable_grad() if grad else torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        sync()
        for _ in range(runs):
            for name, fn in fns.items():
                times[name].append(timed(fn))
    results = {}
    for name, ts in times.items():
        results[name] = LatencyResult(
            name=name, runs=runs, warmup=warmup, trimmed_mean_ms=trimmed_mean(ts, trim),
            median_ms=statistics.median(ts), mean_ms=statistics.fmean(ts),
            std_ms=statistics.pstdev(ts), min_ms=min(ts), max_ms=max(ts), timer=timer)
    return results
