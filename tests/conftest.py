import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Optional

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


def small_config(base, *extra: str, train_images: int = 128, test_images: int = 64,
                 epochs: Optional[int] = 2, validate: bool = True) -> str:
    """Text of a config that runs ``base`` on a few Fashion-MNIST images, for the command-line
    tests: the first ``train_images`` training and ``test_images`` test images (batches of 32 /
    64, no augmentation, no workers), a log line every iteration, a checkpoint every epoch (all
    kept); with ``epochs``, that many epochs on a cosine lr schedule; ``validate=False`` for a
    base without validation (only the test loader is set). ``extra`` lines follow."""
    lines = [
        f"_base_ = ['{base}']",
        'train_dataloader = dict(batch_size=32, num_workers=0, persistent_workers=False,',
        f"                        dataset=dict(indices={train_images}, "
        "pipeline=[dict(type='PackInputs')]))",
        'test_dataloader = dict(batch_size=64, num_workers=0, persistent_workers=False,',
        f'                       dataset=dict(indices={test_images}))',
        'val_dataloader = test_dataloader' if validate else '',
        'default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, '
        'max_keep_ckpts=-1))',
    ]
    if epochs is not None:
        lines += [f'max_epochs = {epochs}', 'train_cfg = dict(max_epochs=max_epochs)',
                  "param_scheduler = [dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, "
                  'begin=0, end=max_epochs, convert_to_iter_based=True)]']
    return '\n'.join(lines + [textwrap.dedent(e).strip() for e in extra]) + '\n'


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Assert a tool run succeeded (showing the end of its output if not)."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope='session')
def data_root() -> Path:
    from mmsparse.datasets import require_data
    root = Path(tool_env()['MMSPARSE_DATA'])
    require_data('fashion_mnist', root)
    require_data('voc_sample', root)
    return root


# Stand-ins for Slurm's srun and scontrol (there is no Slurm here). srun records its arguments
# in srun.log beside it, then starts --ntasks copies of the command with the variables srun
# gives each task, on a two-node list; scontrol records its arguments in scontrol.log and
# expands any node list to the hosts 127.0.0.1 and node2.
FAKE_SRUN = r'''#!/usr/bin/env bash
echo "$*" > "$(dirname "$0")/srun.log"
ntasks=1
while [ $# -gt 0 ]; do
    case $1 in
        -p|--partition|-J) shift 2 ;;
        --ntasks=*) ntasks=${1#--ntasks=}; shift ;;
        -*) shift ;;
        *) break ;;
    esac
done
pids=()
for ((i = 0; i < ntasks; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NTASKS=$ntasks SLURM_NODELIST='node[1-2]' "$@" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
'''
FAKE_SCONTROL = r'''#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/scontrol.log"
printf '127.0.0.1\nnode2\n'
'''


def fake_slurm(folder: Path) -> Path:
    """Write the srun / scontrol stand-ins into ``folder`` (to put first on PATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (('srun', FAKE_SRUN), ('scontrol', FAKE_SCONTROL)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert a tool ended with exit status 2 and one ``error: ...`` line on stderr holding every
    needle, without a traceback; return that line."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: '), proc.stderr[-2000:]
    for needle in needles:
        assert needle in err[0], err[0]
    assert 'Traceback' not in proc.stderr
    return err[0]
