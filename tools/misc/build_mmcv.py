"""Build (once) and install mmcv with the compiled ops that fit this machine's torch.

    python tools/misc/build_mmcv.py --cache DIR [--mmcv 2.1.0] [--mode auto|cpu|cuda] [--check]

PyPI has mmcv 2.1.0 as an sdist only, and its setup.py compiles CUDA ops whenever
``torch.cuda.is_available()`` (or ``FORCE_CUDA=1``), whatever else is asked. This script decides
the build explicitly, before installing anything:

- no GPU visible to torch -> CPU ops;
- a GPU and an nvcc whose CUDA major version is torch's -> CUDA ops (``MAX_JOBS`` = cores);
- a GPU but no usable nvcc -> one ``error:`` line naming the CUDA toolkit to install, or
  ``--mode cpu`` (``MMSPARSE_MMCV=cpu`` in ``make install``) to accept CPU ops knowingly
  (the GPU is hidden from mmcv's build then);
- ``--mode cuda`` builds CUDA ops without a visible GPU (e.g. on a login node; set
  ``TORCH_CUDA_ARCH_LIST`` for the nodes' GPUs).

Wheels are kept in ``DIR/mmcv-<version>_torch<version>_<cu130|cpu>_<python tag>/``, so a wheel
built for one torch, CUDA or Python is never installed on another. ``--check`` imports
``mmcv.ops`` and, with a GPU, runs ``nms`` and ``RoIAlign`` on CUDA tensors. Only the standard
library and torch are imported (mmsparse may not be installable yet).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, Optional

MODES = ('auto', 'cpu', 'cuda')


class BuildError(Exception):
    """What stops the build, said in one line."""


@dataclass
class Machine:
    """What decides the build: torch's version and CUDA, a visible GPU, nvcc's CUDA."""
    torch_version: str
    torch_cuda: Optional[str]  # torch.version.cuda, None for a CPU-only torch
    gpu: bool
    nvcc_cuda: Optional[str]  # release printed by nvcc --version, None without nvcc
    python_tag: str = field(default_factory=lambda: f'cp{sys.version_info[0]}{sys.version_info[1]}')
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)


@dataclass
class Plan:
    """How to build: 'cpu' or 'cuda' ops, the build's environment, the wheel cache key."""
    ops: str
    env: Dict[str, str]
    key: str


def _major(version: Optional[str]) -> Optional[str]:
    return version.split('.')[0] if version else None


def plan_build(m: Machine, mode: str = 'auto', mmcv_version: str = '2.1.0',
               jobs: Optional[int] = None) -> Plan:
    """Decide the build of mmcv for machine ``m`` (pure: the tests give it machines).

    Raises:
        BuildError: the decision needs something the machine lacks.
    """
    if mode not in MODES:
        raise BuildError(f'--mode (MMSPARSE_MMCV) must be one of {", ".join(MODES)}, got {mode!r}')
    flags = {'MMCV_WITH_OPS': '1', 'CFLAGS': '-DNDEBUG -fwrapv -O3 -g0'}
    release = m.torch_version.split('+')[0]
    want_cuda = mode == 'cuda' or (mode == 'auto' and m.gpu)
    if want_cuda:
        if not m.torch_cuda:
            raise BuildError(f'mmcv with CUDA ops needs a CUDA build of torch; this torch '
                             f'{m.torch_version} has none (install a CUDA torch, or '
                             f'MMSPARSE_MMCV=cpu)')
        cuda_major = _major(m.torch_cuda)
        if m.nvcc_cuda is None or _major(m.nvcc_cuda) != cuda_major:
            found = f'nvcc of CUDA {m.nvcc_cuda}' if m.nvcc_cuda else 'no nvcc (CUDA_HOME, PATH)'
            raise BuildError(
                f'a GPU is visible and torch {m.torch_version} uses CUDA {m.torch_cuda}, but '
                f'there is {found}: install the CUDA {cuda_major}.x toolkit (nvcc) and set '
                f'CUDA_HOME, or pick a torch of your toolkit\'s CUDA with TORCH_INDEX_URL, or '
                f'set MMSPARSE_MMCV=cpu to build CPU-only ops knowingly (mmdet\'s RoIAlign / '
                f'nms will not run on CUDA tensors)')
        env = dict(flags, FORCE_CUDA='1', MAX_JOBS=str(jobs or m.cores))
        flavour = 'cu' + ''.join(m.torch_cuda.split('.')[:2])
        return Plan('cuda', env, f'mmcv-{mmcv_version}_torch{release}_{flavour}_{m.python_tag}')
    # CPU ops: hide any GPU from mmcv's setup.py, which builds CUDA ops when it sees one.
    env = dict(flags, FORCE_CUDA='0', CUDA_VISIBLE_DEVICES='', MAX_JOBS=str(jobs or m.cores))
    return Plan('cpu', env, f'mmcv-{mmcv_version}_torch{release}_cpu_{m.python_tag}')


def probe() -> Machine:
    """Read this machine: torch (imported), a visible GPU, nvcc's CUDA release."""
    try:
        import torch
    except ImportError:
        raise BuildError('torch is not installed: install torch first (requirements/torch.txt)')
    nvcc = os.path.join(os.environ.get('CUDA_HOME', '/usr/local/cuda'), 'bin', 'nvcc')
    nvcc = nvcc if os.path.isfile(nvcc) else shutil.which('nvcc')
    nvcc_cuda = None
    if nvcc:
        out = subprocess.run([nvcc, '--version'], capture_output=True, text=True).stdout
        found = re.search(r'release (\d+\.\d+)', out)
        nvcc_cuda = found.group(1) if found else None
    return Machine(torch.__version__, torch.version.cuda, torch.cuda.is_available(), nvcc_cuda)


def find_wheel(folder: str, mmcv_version: str) -> Optional[str]:
    if not os.path.isdir(folder):
        return None
    wheels = sorted(f for f in os.listdir(folder)
                    if f.startswith(f'mmcv-{mmcv_version}-') and f.endswith('.whl'))
    return os.path.join(folder, wheels[0]) if wheels else None


def build(plan: Plan, cache: str, mmcv_version: str) -> str:
    """The cached wheel of ``plan``, built first if missing (into a temporary folder, moved
    into the cache only once complete, so a failed build leaves nothing behind)."""
    folder = os.path.join(cache, plan.key)
    wheel = find_wheel(folder, mmcv_version)
    if wheel:
        print(f'mmcv: using the cached wheel {wheel}')
        return wheel
    print(f'mmcv: building {mmcv_version} with {plan.ops.upper()} ops (MAX_JOBS='
          f'{plan.env["MAX_JOBS"]}; ~6 min on 2 cores for CPU ops) into {folder}', flush=True)
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        # --no-cache-dir: pip's own cache of wheels built from sdists is not keyed by torch or
        # CUDA, so it could hand back a CPU-only build made elsewhere (a shared home).
        subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-cache-dir',
                        '--no-build-isolation', '--no-deps', '-w', tmp, f'mmcv=={mmcv_version}'],
                       env=dict(os.environ, **plan.env), check=True)
        built = find_wheel(tmp, mmcv_version)
        if built is None:
            raise BuildError(f'pip wheel mmcv=={mmcv_version} wrote no wheel')
        os.makedirs(folder, exist_ok=True)
        wheel = os.path.join(folder, os.path.basename(built))
        os.replace(built, wheel)
    return wheel


def check(gpu: bool) -> str:
    """Import mmcv's ops; with a GPU, run nms and RoIAlign on CUDA tensors."""
    code = ('import torch\nfrom mmcv.ops import RoIAlign, nms\n'
            'd = "cuda" if torch.cuda.is_available() else "cpu"\n'
            'b = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.]], device=d)\n'
            'keep = nms(b, torch.tensor([0.9, 0.8], device=d), 0.5)[1]\n'
            'assert keep.tolist() == [0], keep\n'
            'x = torch.arange(64., device=d).view(1, 1, 8, 8)\n'
            'r = RoIAlign((2, 2), 1.0, 0)(x, torch.tensor([[0., 0., 0., 7., 7.]], device=d))\n'
            'assert r.shape == (1, 1, 2, 2), r.shape\n'
            'print(d)\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ['no output'])[-1]
        where = 'on CUDA tensors' if gpu else 'on CPU tensors'
        raise BuildError(f'mmcv.ops nms / RoIAlign fail {where}: {last} (a CPU-only mmcv on a '
                         f'GPU machine? delete its wheel from the cache and rebuild)')
    return proc.stdout.strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cache', required=True, help='folder of built mmcv wheels')
    parser.add_argument('--mmcv', default='2.1.0', help='mmcv version (default 2.1.0)')
    parser.add_argument('--mode', default=os.environ.get('MMSPARSE_MMCV') or 'auto',
                        help='auto, cpu or cuda (default: $MMSPARSE_MMCV, else auto)')
    parser.add_argument('--jobs', type=int, help='compile jobs (default: the cores)')
    parser.add_argument('--check', action='store_true', help='after installing, run nms and '
                        'RoIAlign (on CUDA tensors where a GPU is visible)')
    args = parser.parse_args(argv)
    try:
        machine = probe()
        plan = plan_build(machine, args.mode, args.mmcv, args.jobs)
        wheel = build(plan, args.cache, args.mmcv)
        subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps',
                        '--force-reinstall', wheel], check=True)
        if args.check:
            print(f'mmcv: nms and RoIAlign run on {check(machine.gpu)} tensors')
    except BuildError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f'error: {" ".join(e.cmd[:6])} ... failed with status {e.returncode} (see '
              f'above)', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
