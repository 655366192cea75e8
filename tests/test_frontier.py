"""benchmarks/frontier.py without training: the Pareto front, the point graph, the report from
given numbers, the schedules it derives from the configs, and its bad flags."""
import json

import pytest

from benchmarks.frontier import (DENSE_CFG, POINT_NAMES, POINTS, frontier_rows, main, markdown,
                                 pareto_front, plot, s2vite_options, select_points,
                                 uvc_stage2_schedule)
from mmsparse.utils.cli import UserError


def test_pareto_front_by_hand():
    costs = [1, 2, 2, 3, 0.5, 4, 1]
    scores = [50, 60, 55, 60, 40, 70, 50]
    # (2, 55) loses to (2, 60) on score at equal cost; (3, 60) to (2, 60) on cost at equal score;
    # the two equal points (1, 50) dominate neither each other (nothing strictly better)
    assert pareto_front(costs, scores) == [True, True, False, False, True, True, True]
    assert pareto_front([], []) == []
    assert pareto_front([5.0], [1.0]) == [True]
    with pytest.raises(ValueError, match='2 costs but 1 scores'):
        pareto_front([1, 2], [3])


def test_points_run_after_what_they_start_from():
    seen = set()
    for p in POINTS:
        assert set(p.needs) <= seen, p.name
        seen.add(p.name)
    assert len(set(POINT_NAMES)) == len(POINT_NAMES) == 16
    assert len({p.label for p in POINTS}) == 16  # the profile keys models by label
    assert [p.name for p in select_points(['uniform-magnitude'])] == \
        ['dense', 'uvc-0.5', 'uniform-magnitude']
    assert [p.name for p in select_points(['s2vite-0.7-0.6+dynamicvit-0.7'])] == \
        ['dense', 's2vite-0.7-0.6', 's2vite-0.7-0.6+dynamicvit-0.7']
    assert [p.name for p in select_points(None)] == POINT_NAMES
    assert sum(p.composition for p in POINTS) == 3
    with pytest.raises(UserError, match=r"--points: unknown \['uvc-0.4'\]"):
        select_points(['uvc-0.4'])


def _result(name, top1, method='x', composition=False):
    return dict(name=name, label=f'label {name}', method=method, composition=composition,
                top1=top1, train_s=1.0, test_s=2.0, config='c.py', options={},
                checkpoint='c.pth', extra={})


def _profile(name, gflops, lat1, lat32, ref32):
    return dict(name=f'label {name}', gflops=gflops, mparams=0.5, latency_ms={1: lat1, 32: lat32},
                speedup={1: 4.0 / lat1, 32: ref32 / lat32})


def test_report_from_given_numbers(tmp_path):
    results = [_result('dense', 80.0, 'dense'), _result('a', 79.0, 'UVC'),
               _result('b', 78.0, 'composition', True), _result('c', 70.0, 'DynamicViT')]
    profile = [_profile('dense', 0.04, 4.0, 30.0, 30.0), _profile('a', 0.02, 3.0, 20.0, 30.0),
               _profile('b', 0.01, 5.0, 25.0, 30.0), _profile('c', 0.03, 2.0, 15.0, 30.0)]
    rows = frontier_rows(results, profile, 32)
    assert [r['flops_fraction'] for r in rows] == [1.0, 0.5, 0.25, 0.75]
    # latency bs32: b (25 ms, 78) loses to a (20 ms, 79); GFLOPs: c (0.03, 70) loses to a
    assert [r['pareto_latency'] for r in rows] == [True, True, False, True]
    assert [r['pareto_gflops'] for r in rows] == [True, True, True, False]
    assert rows[1]['speedup'][32] == pytest.approx(1.5)
    meta = dict(quick=False, test_images=10000, runs=50, warmup=10, total_s=100.0,
                profile_s=5.0, env=dict(torch='2', torch_threads=2, device='cpu'))
    md = markdown(rows, [1, 32], 32, meta)
    assert '| `a` | label a | 0.0200 | 0.500 | 3.00 | 20.00 | 1.50x | 79.00 | yes | yes |' in md
    assert '| `b` | label b | 0.0100 | 0.250 | 5.00 | 25.00 | 1.20x | 78.00 | no | yes |' in md
    assert '| `a` | 1 | 2 | made |' in md  # the cost table
    json.dumps(rows)  # the rows are what frontier.json holds
    plot(rows, 32, str(tmp_path / 'f.png'), quick=False)
    assert (tmp_path / 'f.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_schedules_derived_from_the_configs():
    from mmsparse.utils import load_config
    schedule = uvc_stage2_schedule()
    cfg = load_config(DENSE_CFG, schedule)
    # UVC stage 2 (-demo): 9600 images in batches of 64, AdamW 5e-4 with gradient clipping
    assert cfg.train_dataloader.dataset.indices == 9600
    assert cfg.train_dataloader.batch_size == 64
    assert cfg.optim_wrapper.optimizer.lr == 5e-4
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=1.0)
    assert [s['type'] for s in cfg.param_scheduler] == ['CosineAnnealingLR']
    opts = s2vite_options(0.4, 0.4, quick=False)
    hook = opts['custom_hooks'][0]
    assert (hook['head_density'], hook['mlp_density'], hook['update_interval']) == (0.4, 0.4, 50)
    assert s2vite_options(0.7, 0.6, quick=True)['custom_hooks'][0]['update_interval'] == 2


def test_bad_flags_fail_before_any_training(tmp_path):
    with pytest.raises(UserError, match='--points: unknown'):
        main(['--points', 'nope', '--work-dir', str(tmp_path / 'w')])
    with pytest.raises(UserError, match='--batch-sizes must be positive'):
        main(['--batch-sizes', '0', '--work-dir', str(tmp_path / 'w')])
    with pytest.raises(UserError, match='--runs must be >= 1'):
        main(['--runs', '0', '--work-dir', str(tmp_path / 'w')])
    (tmp_path / 'q').mkdir()
    (tmp_path / 'q' / 'run.json').write_text(json.dumps(dict(quick=True)))
    with pytest.raises(UserError, match='holds a --quick run'):
        main(['--work-dir', str(tmp_path / 'q')])
