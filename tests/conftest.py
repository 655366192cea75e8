import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / 'configs/vit/vit-tiny-p4_fashion-mnist.py'
DET_CONFIG = REPO / 'configs/swin/mask-rcnn_swin-t-p4-w7_fpn_voc-sample.py'
SEG_CONFIG = REPO / 'configs/swin/upernet_swin-t-p4-w7_voc-sample.py'


def tool_env(**extra) -> dict:
    env = dict(os.environ)
    env.setdefault('MMSPARSE_DATA', str(REPO / 'data'))
    # the venv's bin holds mpirun and torchrun
    env['PATH'] = f'{Path(sys.executable).parent}{os.pathsep}{env.get("PATH", "")}'
    env['PYTHON'] = sys.executable
    env.update(extra)
    return env


def run_tool(*args, timeout=900, env=None, launcher_prefix=()) -> subprocess.CompletedProcess:
    """Run ``python tools/<args>`` (or a shell script) from the repo root; capture its output."""
    args = [str(a) for a in args]
    cmd = list(launcher_prefix)
    cmd += [sys.executable, *args] if args[0].endswith('.py') else args
    return subprocess.run(cmd, cwd=REPO, env=env or tool_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope='session')
def data_root() -> Path:
    from mmsparse.datasets import require_data
    root = Path(tool_env()['MMSPARSE_DATA'])
    require_data('fashion_mnist', root)
    require_data('voc_sample', root)
    return root
