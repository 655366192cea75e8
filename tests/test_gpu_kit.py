"""The GPU evidence kit (benchmarks/gpu/) on the CPU: bench.py's smoke run produces a row with
numbers for every model family, out-of-memory rows do not stop a group, bad flags and a missing
.whl/ end in one ``error:`` line, the prepared wheels (where prepare.sh ran) cover the list and
install into a private folder from which mmsparse imports with mmcv-lite; measure_latency's
timer and autograd options."""
import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch

from mmsparse.analysis import measure_latency
from tests.conftest import REPO, one_error_line, run_tool, tool_env

KIT = REPO / 'benchmarks/gpu'
WHEELS = REPO / '.whl'
FAMILIES = {'deit-dense', 'dynamicvit', 'norm-topk', 'uvc', 's2vite', 'svite-plus',
            'swin-dense', 'sparsevit'}


def _wheel_list():
    """(distribution, version, how) of benchmarks/gpu/wheels.txt."""
    specs = []
    for line in (KIT / 'wheels.txt').read_text().splitlines():
        if line.strip() and not line.startswith('#'):
            spec, how = line.split()[:2]
            name, version = spec.split('==')
            specs.append((name, version, how))
    return specs


def _norm(name: str) -> str:
    import re
    return re.sub(r'[-_.]+', '_', name).lower()


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    """One smoke run of bench.py on the CPU (asked for CUDA where there is none: the fallback)."""
    out = tmp_path_factory.mktemp('gpu_kit')
    device = 'cpu' if torch.cuda.is_available() else 'cuda'
    proc = run_tool('benchmarks/gpu/bench.py', '--device', device, '--smoke', '--out', out,
                    timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((out / 'gpu_kit.json').read_text()), (out / 'gpu_kit.md').read_text()


def test_smoke_run_has_every_family_with_numbers(smoke):
    proc, result, md = smoke
    rows = result['rows']
    assert FAMILIES <= {r['family'] for r in rows}
    eval_rows = [r for r in rows if 'eval' in r['group']]
    for r in eval_rows:
        assert r['status'] == 'ok', r
        for key in ('gflops', 'flops_vs_dense', 'latency_ms', 'speedup'):
            assert isinstance(r[key], float) and r[key] > 0, (key, r)
        assert r['name'] in md
    sparse = [r for r in eval_rows if r['family'] not in ('deit-dense', 'swin-dense')]
    assert all(r['flops_vs_dense'] < 0.95 for r in sparse), sparse
    assert {r['name'] for r in rows if r['family'] == 'sparsevit'} == {
        'SparseViT cfg1', 'SparseViT cfg2', 'SparseViT cfg3'}
    for r in eval_rows:
        if r['family'] in ('deit-dense', 'swin-dense') and r['name'].endswith('dense'):
            assert r['speedup'] == 1.0 and r['flops_vs_dense'] == 1.0
    train = [r for r in rows if 'train' in r['group']]
    assert [r['family'] for r in train] == ['deit-dense', 'dynamicvit', 'dynamicvit']
    assert all(isinstance(r['speedup'], float) and r['latency_ms'] > 0 for r in train)
    for header in ('## DeiT-S 224x224 eval', '## Swin-T backbone 224x224 eval',
                   '## DeiT-S 224x224 train step'):
        assert header in md
    assert result['plan']['mode'] == 'smoke' and result['environment']['device_kind'] == 'cpu'
    assert result['failed_sections'] == {}
    if not torch.cuda.is_available():  # asked for CUDA: one warning line, then the CPU
        warnings = [line for line in proc.stderr.splitlines() if line.startswith('warning:')]
        assert len(warnings) == 1 and 'CUDA is not available' in warnings[0], proc.stderr


def test_out_of_memory_rows_do_not_stop_the_group():
    sys.path.insert(0, str(REPO))
    from benchmarks.gpu import bench

    def oom():
        raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 9 GiB')

    def boom():
        raise ValueError('a bug, not memory')

    res = bench.time_group({'dense': lambda: None, 'big': oom}, warmup=1, repeats=2,
                           timer='wall')
    assert res['big'] == 'OOM' and res['dense'].runs == 2
    row = bench._row('g', 'big', 'uvc', 'fp32', 8, res['big'], res['dense'], (1.0, 2.0),
                     (2.0, 4.0))
    assert row['status'] == 'OOM' and row['speedup'] is None and row['flops_vs_dense'] == 0.5
    assert 'OOM' in bench.eval_table([row])
    with pytest.raises(ValueError, match='a bug'):
        bench.time_group({'x': boom}, warmup=0, repeats=1, timer='wall')


def test_a_failing_section_is_reported_and_the_others_run(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(REPO))
    from benchmarks.gpu import bench

    def broken(*args):
        raise KeyError('a bug in one section')

    row = dict(group='DeiT-S 224x224 train step', name='DeiT-S dense', family='deit-dense',
               dtype='fp32', batch=2, status='ok', latency_ms=5.0, speedup=1.0)
    monkeypatch.setattr(bench, 'run_swin', broken)
    monkeypatch.setattr(bench, 'run_train', lambda *args: [row])
    args = bench.parse_args(['--device', 'cpu', '--smoke', '--sections', 'swin', 'train',
                             '--out', str(tmp_path)])
    assert bench.main(args) == 1
    result = json.loads((tmp_path / 'gpu_kit.json').read_text())
    assert list(result['failed_sections']) == ['swin'] and result['rows'] == [row]
    assert 'section swin FAILED' in (tmp_path / 'gpu_kit.md').read_text()
    assert 'KeyError' in capsys.readouterr().err


def test_bad_flags_areone_error_line(tmp_path):
    one_error_line(run_tool('benchmarks/gpu/bench.py', '--out', tmp_path, '--repeats', 0),
                    '--repeats')
    one_error_line(run_tool('benchmarks/gpu/bench.py', '--out', tmp_path, '--vit-batch-sizes',
                             1, -4), '--vit-batch-sizes')
    one_error_line(run_tool('benchmarks/gpu/bench.py', '--out', tmp_path, '--device', 'tpu'),
                    '--device')
    one_error_line(run_tool('benchmarks/gpu/bench.py', '--smoke'), '--out')


def test_run_sh_without_wheels_isone_error_line(tmp_path):
    env = tool_env(KIT_WHEELS=str(tmp_path), OUT=str(tmp_path / 'out'))
    proc = subprocess.run(['bash', str(KIT / 'run.sh'), '--smoke'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    one_error_line(proc, 'prepare.sh', '.whl')
    assert not (tmp_path / 'out').exists()


def test_uvc_stored_config_is_a_compact_model_at_the_budget():
    stored = json.loads((KIT / 'uvc_deit-small_budget0.5_compact.json').read_text())
    assert stored['model']['backbone']['type'] == 'mmsparse.UVCCompactVisionTransformer'
    assert stored['real_flops_final'] <= stored['budget'] and stored['steps'] >= 1


def test_measure_latency_timer_and_grad_options():
    modes = []
    res = measure_latency({'a': lambda: modes.append(torch.is_grad_enabled())}, warmup=0,
                          runs=2, grad=True)
    assert modes == [True, True] and res['a'].timer == 'wall'
    modes.clear()
    measure_latency({'a': lambda: modes.append(torch.is_inference_mode_enabled())}, warmup=0,
                    runs=1)
    assert modes == [True]
    with pytest.raises(ValueError, match='timer'):
        measure_latency({'a': lambda: None}, timer='tsc')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA'):
            measure_latency({'a': lambda: None}, timer='cuda_event')


@pytest.mark.skipif(not WHEELS.is_dir(), reason='no .whl/: benchmarks/gpu/prepare.sh has not '
                    'run here (it needs network; CI does not run it)')
def test_prepared_wheels_cover_the_list_and_import(tmp_path):
    wheels = {p.name.lower(): p for p in list(WHEELS.glob('*.whl'))
              + list(WHEELS.glob('fallback/*.whl'))}
    for name, version, how in _wheel_list():
        found = [w for w in wheels if w.startswith(f'{_norm(name)}-{version}-')]
        assert len(found) == 1, (name, version, sorted(wheels))
        tag = found[0]
        assert tag.endswith('-none-any.whl') or ('cp312' in tag and 'manylinux' in tag), tag
    assert len(wheels) == len(_wheel_list()), 'a wheel not in wheels.txt (two versions?)'
    lite = next(p for n, p in wheels.items() if n.startswith('mmcv_lite-'))
    assert not [n for n in zipfile.ZipFile(lite).namelist() if n.endswith('.so')]
    # the pure-Python wheels into a private folder, as run.sh does there (with this Python)
    pure = [str(p) for n, p in wheels.items() if n.endswith('-none-any.whl')
            and not n.startswith('setuptools-')]
    site = tmp_path / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps',
                    '--no-compile', '--target', str(site), *pure], check=True,
                   capture_output=True, timeout=300)
    code = ('import importlib.metadata as m, mmcv, mmengine, mmpretrain, mmdet, mmsparse\n'
            f'assert all(x.__file__.startswith({str(site)!r}) for x in '
            '(mmcv, mmengine, mmpretrain, mmdet)), mmcv.__file__\n'
            "assert m.version('mmcv-lite') == '2.1.0'\n"
            'from mmsparse.utils import load_config\n'
            "cfg = load_config('configs/sparsevit/mask-rcnn_sparsevit-swin-t_cfg1_coco.py')\n"
            "assert cfg.model.backbone.type == 'mmsparse.SparseSwinTransformer'\n")
    env = dict(os.environ, PYTHONPATH=f'{site}{os.pathsep}{REPO}')
    proc = subprocess.run([sys.executable, '-W', 'ignore', '-c', code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
