"""Latency measurement: statistics against hand-computed values, interleaving, bad input."""
import pytest

from mmsparse.analysis import measure_latency, trimmed_mean


def test_trimmed_mean_hand_cases():
    assert trimmed_mean([1, 2, 3, 4], trim=0.25) == 2.5          # drops 1 and 4
    # sorted 1 2 | 3 4 5 6 | 10 1000: drops two at each end
    assert trimmed_mean([10, 1, 2, 3, 1000, 4, 5, 6], trim=0.25) == 4.5
    assert trimmed_mean([5.0], trim=0.25) == 5.0
    with pytest.raises(ValueError, match='trim'):
        trimmed_mean([1, 2], trim=0.5)


def test_measure_latency_interleaves_and_counts_runs():
    calls = []
    fns = {'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}
    res = measure_latency(fns, warmup=2, runs=5)
    assert set(res) == {'a', 'b'}
    assert calls == ['a', 'b'] * 7  # one of each in turn, warm-up included
    for r in res.values():
        assert r.runs == 5 and r.warmup == 2
        assert r.min_ms <= r.median_ms <= r.max_ms
        assert r.min_ms <= r.trimmed_mean_ms <= r.max_ms


def test_measure_latency_bad_runs():
    with pytest.raises(ValueError, match='runs'):
        measure_latency({'a': lambda: None}, runs=0)
