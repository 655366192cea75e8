"""mmsparse as an installed package: the wheel ships configs, tools and the model index as
``mmsparse/.mim``; installed non-editable into a fresh venv (which borrows this venv's stack
instead of downloading torch again), ``mim train / test / run / search`` work; the stack check
of ``import mmsparse``; the mmcv build decision of ``make install``; ``pip check``."""
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from mmsparse.version import STACK, __version__, stack_problems
from tests.conftest import REPO, ok, one_error_line, tool_env

CONFIG = 'vit-tiny-p4_fashion-mnist.py'
DYNAMICVIT = 'dynamicvit-vit-tiny-p4_fashion-mnist.py'
SMALL = ['train_dataloader.dataset.indices=64', 'train_dataloader.num_workers=0',
         'train_dataloader.persistent_workers=False', 'train_cfg.max_epochs=1',
         'test_dataloader.dataset.indices=64', 'test_dataloader.num_workers=0',
         'test_dataloader.persistent_workers=False', 'val_dataloader.dataset.indices=64',
         'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False']


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` of a copy of the source tree (as a clean clone has it)."""
    tmp = tmp_path_factory.mktemp('wheel')
    src = tmp / 'src'
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        '.venv', '.git', 'data', 'work_dirs', 'build', 'dist', '*.egg-info', '.mim',
        '__pycache__', '.pytest_cache'))
    ok(subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps',
                       '--no-build-isolation', '-w', tmp / 'dist', src],
                      capture_output=True, text=True, timeout=600))
    wheels = list((tmp / 'dist').glob(f'mmsparse-{__version__}-*.whl'))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_ships_configs_tools_and_model_index(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ['mmsparse/.mim/model-index.yml', 'mmsparse/.mim/tools/train.py',
                 'mmsparse/.mim/tools/test.py', 'mmsparse/.mim/tools/search.py',
                 'mmsparse/.mim/tools/dist_train.sh', f'mmsparse/.mim/configs/vit/{CONFIG}',
                 'mmsparse/.mim/configs/_base_/datasets/fashion_mnist.py',
                 'mmsparse/.mim/configs/dynamicvit/metafile.yml', 'mmsparse/version.py']:
        assert path in names, path
    configs = {p.relative_to(REPO / 'configs').as_posix() for p in (REPO / 'configs').rglob('*.py')}
    shipped = {n[len('mmsparse/.mim/configs/'):] for n in names
               if n.startswith('mmsparse/.mim/configs/') and n.endswith('.py')}
    assert shipped == configs
    assert not [n for n in names if n.endswith('.pyc') or n.startswith(('tests/', 'benchmarks/'))]
    meta = zipfile.ZipFile(wheel).read(
        f'mmsparse-{__version__}.dist-info/METADATA').decode()
    requires = [line for line in meta.splitlines() if line.startswith('Requires-Dist')]
    # ranges, not pins; the detection stack, MPI and mmcv only as extras
    assert not [r for r in requires if '==' in r.split(';')[0]], requires
    assert any(r.startswith('Requires-Dist: mmengine') and 'extra' not in r for r in requires)
    for extra, dist in [('det', 'mmdet'), ('seg', 'mmsegmentation'), ('mpi', 'mpi4py'),
                        ('mpi', 'torchpack'), ('deploy', 'onnx'), ('deploy', 'onnxruntime'),
                        ('deploy', 'onnxscript'), ('tests', 'onnxruntime')]:
        assert any(r.startswith(f'Requires-Dist: {dist}') and f'extra == "{extra}"' in r
                   for r in requires), (extra, dist)
    assert not any(r.startswith(('Requires-Dist: mmdet', 'Requires-Dist: mmcv'))
                   and 'extra' not in r for r in requires)


def borrowing_venv(venv: Path, exclude=()) -> tuple:
    """A fresh venv whose path ends with this venv's packages (a .pth line: their own .pth
    files, e.g. the editable mmsparse, are not processed), so torch and the OpenMMLab stack are
    borrowed, not downloaded. ``exclude``: distributions left out (their modules and
    dist-info), as in an environment that never installed them. Returns (python, site)."""
    ok(subprocess.run([sys.executable, '-m', 'venv', '--without-pip', venv],
                      capture_output=True, text=True))
    python = venv / 'bin' / 'python'
    site = Path(subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()'
                                '["purelib"])'], capture_output=True, text=True).stdout.strip())
    stack = Path(sysconfig.get_paths()['purelib'])
    if exclude:  # a folder of links to every entry but the excluded ones
        view = venv / 'stack'
        view.mkdir()
        for entry in stack.iterdir():
            name = entry.name.lower().replace('-', '_')
            if not any(name == e or name.startswith(f'{e}_') or name.startswith(f'{e}.')
                       for e in exclude):
                (view / entry.name).symlink_to(entry)
        stack = view
    (site / 'borrowed_stack.pth').write_text(f'{stack}\n')
    return python, site


@pytest.fixture(scope='module')
def installed(wheel, tmp_path_factory):
    """The wheel installed (not editable) into a venv that borrows this venv's stack."""
    python, site = borrowing_venv(tmp_path_factory.mktemp('venv') / 'venv')
    ok(subprocess.run([sys.executable, '-m', 'pip', '--python', python, 'install', '-q',
                       '--no-deps', wheel], capture_output=True, text=True, timeout=300))
    where = subprocess.run([python, '-c', 'import mmsparse; print(mmsparse.__file__)'],
                           capture_output=True, text=True, cwd=site)
    assert Path(ok(where).stdout.strip()).parent == site / 'mmsparse'
    return python, site


def mim(python, *args, cwd, timeout=600):
    return subprocess.run([str(python), '-m', 'mim', *map(str, args)], cwd=cwd,
                          env=tool_env(), capture_output=True, text=True, timeout=timeout)


def test_mim_train_test_run_search(installed, tmp_path, data_root):
    installed, site = installed
    work = tmp_path / 'work'
    # the config is found inside the installed package (the cwd has no configs/)
    proc = ok(mim(installed, 'train', 'mmsparse', CONFIG, '--work-dir', work, '--cfg-options',
                  *SMALL, cwd=tmp_path))
    assert f'{site}' in proc.stdout and '.mim/tools/train.py' in proc.stdout
    ckpt = work / 'epoch_1.pth'
    assert ckpt.is_file()
    proc = ok(mim(installed, 'test', 'mmsparse', CONFIG, '--checkpoint', ckpt, '--work-dir',
                  tmp_path / 'test', '--cfg-options', *SMALL, cwd=tmp_path))
    assert 'accuracy/top1' in proc.stdout + proc.stderr
    # a tool by name: tools/search.py on the installed DynamicViT config
    dynamicvit = site / 'mmsparse/.mim/configs/dynamicvit' / DYNAMICVIT
    proc = ok(mim(installed, 'run', 'mmsparse', 'search', dynamicvit, 'none', '--max-latency',
                  1000, '--work-dir', tmp_path / 'search', '--batch-size', 2, '--warmup', 1,
                  '--runs', 2, '--val-subset', 16, '--population-size', 2, '--parents', 1,
                  '--iterations', 1, '--cfg-options', 'test_dataloader.num_workers=0',
                  'test_dataloader.persistent_workers=False', cwd=tmp_path))
    assert 'search best' in proc.stdout
    proc = ok(mim(installed, 'search', 'mmsparse', cwd=tmp_path))
    for name in ('vit-tiny-p4_fashion-mnist', 'dynamicvit-deit-small_8xb128_in1k',
                 'mask-rcnn_sparsevit-swin-t_cfg3_coco', 'uvc-deit-small_stage1_budget0.5_in1k'):
        assert name in proc.stdout, name


def test_classification_needs_no_detection_segmentation_or_mpi(tmp_path, data_root):
    """Without mmdet, mmseg, torchpack and mpi4py: mmsparse imports and trains a classifier;
    a Mask R-CNN config says which extra to install, in one line."""
    python, _ = borrowing_venv(tmp_path / 'venv', exclude=(
        'mmdet', 'mmsegmentation', 'mmseg', 'torchpack', 'mpi4py', 'openmpi'))
    env = tool_env(PYTHONPATH=str(REPO))
    proc = subprocess.run([python, '-c', 'import mmsparse, sys; print(sorted(m for m in '
                           'sys.modules if m.split(".")[0] in ("mmdet", "mmseg", "torchpack", '
                           '"mpi4py")))'], cwd=REPO, env=env, capture_output=True, text=True)
    assert ok(proc).stdout.strip() == '[]'
    proc = subprocess.run([python, 'tools/train.py', f'configs/vit/{CONFIG}', '--work-dir',
                           tmp_path / 'cls', '--cfg-options', *SMALL], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert ok(proc) and (tmp_path / 'cls/epoch_1.pth').is_file()
    for config, package, extra in [
            ('configs/swin/mask-rcnn_swin-t-p4-w7_fpn_voc-sample.py', 'mmdet', 'det'),
            ('configs/swin/upernet_swin-t-p4-w7_voc-sample.py', 'mmsegmentation', 'seg')]:
        proc = subprocess.run([python, 'tools/train.py', config], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        line = one_error_line(proc, f"pip install 'mmsparse[{extra}]'")
        assert line.startswith(f'error: {config} needs {package}, which is not installed')


def test_pip_check_is_clean():
    proc = subprocess.run([sys.executable, '-m', 'pip', 'check'], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stack_ranges_are_the_requirements():
    """``mmsparse.version.STACK`` and requirements/*.txt state the same ranges."""
    lines = []
    for name in ('runtime', 'mminstall'):
        lines += [ln.split('#')[0].strip() for ln in (REPO / f'requirements/{name}.txt')
                  .read_text().splitlines() if ln.split('#')[0].strip()]
    for pkg, (low, high) in STACK.items():
        spec = f'{pkg}>={low}' + (f',<{high}' if high else '')
        assert spec in lines, (spec, lines)


def test_stack_problems_name_what_to_install():
    versions = {'torch': '2.13.0+cu130', 'mmengine': '0.9.1', 'mmcv': None, 'mmpretrain': '1.2.0'}
    problems = stack_problems(installed=versions.get)
    assert len(problems) == 2
    assert "needs mmengine>=0.10.0,<1.0.0, found mmengine 0.9.1: pip install " \
           "'mmengine>=0.10.0,<1.0.0'" in problems[0]
    assert 'needs mmcv>=2.0.0,<2.2.0, which is not installed' in problems[1]
    assert 'mim install' in problems[1]
    assert stack_problems(installed=dict(versions, mmengine='0.10.7', mmcv='2.1.0').get) == []
    assert stack_problems(installed=dict(versions, mmengine='1.0.0', mmcv='2.1.0').get)


def test_import_with_an_unsupported_stack_is_one_line(tmp_path):
    # a sitecustomize that makes package metadata report mmengine 0.9.0, for any command
    (tmp_path / 'sitecustomize.py').write_text(
        'from importlib import metadata\n'
        'real = metadata.version\n'
        "metadata.version = lambda name: '0.9.0' if name == 'mmengine' else real(name)\n")
    env = tool_env(PYTHONPATH=f'{tmp_path}{os.pathsep}{REPO}')
    for cmd in ([sys.executable, '-c', 'import mmsparse'],
                [sys.executable, 'tools/train.py', 'configs/vit/' + CONFIG]):
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines() == [
            f"error: mmsparse {__version__} needs mmengine>=0.10.0,<1.0.0, found mmengine 0.9.0: "
            f"pip install 'mmengine>=0.10.0,<1.0.0'"]
    # caught like any ImportError by code that imports mmsparse optionally
    proc = subprocess.run([sys.executable, '-c', 'try:\n import mmsparse\nexcept ImportError as '
                           'e:\n print("caught", type(e).__name__)'], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == 'caught StackError'


def _build_mmcv():
    spec = importlib.util.spec_from_file_location('build_mmcv', REPO / 'tools/misc/build_mmcv.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mmcv_build_decision():
    b = _build_mmcv()

    def machine(**kw):
        return b.Machine(**dict(dict(torch_version='2.13.0+cu130', torch_cuda='13.0', gpu=False,
                                     nvcc_cuda=None, python_tag='cp311', cores=16), **kw))

    plan = b.plan_build(machine())  # no GPU: CPU ops, the GPU (none) hidden from mmcv's setup
    assert plan.ops == 'cpu' and plan.env['FORCE_CUDA'] == '0'
    assert plan.env['CUDA_VISIBLE_DEVICES'] == '' and plan.key == 'mmcv-2.1.0_torch2.13.0_cpu_cp311'
    plan = b.plan_build(machine(gpu=True, nvcc_cuda='13.0'))
    assert (plan.ops, plan.env['FORCE_CUDA'], plan.env['MAX_JOBS']) == ('cuda', '1', '16')
    assert plan.key == 'mmcv-2.1.0_torch2.13.0_cu130_cp311'  # never the CPU wheel's folder
    assert b.plan_build(machine(python_tag='cp312')).key.endswith('_cpu_cp312')
    for nvcc in (None, '12.4'):  # a GPU, but no nvcc of torch's CUDA major
        with pytest.raises(b.BuildError, match='install the CUDA 13.x toolkit.*MMSPARSE_MMCV=cpu'):
            b.plan_build(machine(gpu=True, nvcc_cuda=nvcc))
    plan = b.plan_build(machine(gpu=True), mode='cpu')  # accepted knowingly
    assert plan.ops == 'cpu' and plan.env['CUDA_VISIBLE_DEVICES'] == ''
    plan = b.plan_build(machine(nvcc_cuda='13.1'), mode='cuda')  # a login node without GPU
    assert plan.ops == 'cuda' and plan.env['FORCE_CUDA'] == '1'
    with pytest.raises(b.BuildError, match='needs a CUDA build of torch'):
        b.plan_build(machine(torch_cuda=None, torch_version='2.13.0+cpu'), mode='cuda')
    with pytest.raises(b.BuildError, match='must be one of auto, cpu, cuda'):
        b.plan_build(machine(), mode='gpu')


def test_mmcv_build_bad_mode_is_one_line_and_builds_nothing(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / 'tools/misc/build_mmcv.py'), '--cache',
                           tmp_path / 'cache'], env=tool_env(MMSPARSE_MMCV='gpu'),
                          capture_output=True, text=True)
    assert one_error_line(proc) == \
        "error: --mode (MMSPARSE_MMCV) must be one of auto, cpu, cuda, got 'gpu'"
    assert not (tmp_path / 'cache').exists()


def test_config_loader_without_pkg_resources_names_the_fix(tmp_path, monkeypatch):
    """mmengine's loader of `mmpretrain::` bases imports pkg_resources (gone in setuptools 81)."""
    from mmsparse.utils import UserError, load_config
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("_base_ = ['mmpretrain::deit/deit-small_4xb256_in1k.py']\n")
    monkeypatch.setitem(sys.modules, 'pkg_resources', None)  # `import pkg_resources` fails
    with pytest.raises(UserError, match=r"needs pkg_resources, .*pip install 'setuptools<81'"):
        load_config(str(cfg))
