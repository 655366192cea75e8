#!/usr/bin/env bash
# tools/slurm_run.sh SCRIPT PARTITION JOB_NAME [SCRIPT args]: tools/SCRIPT on a Slurm cluster,
# one task per GPU (srun; --launcher slurm). Used by slurm_train.sh and slurm_test.sh.
# Environment: GPUS (tasks, 8), GPUS_PER_NODE (min(GPUS, 8)), CPUS_PER_TASK (5), SRUN_ARGS (more
# srun options), PYTHON.
SCRIPT=$1
PARTITION=$2
JOB_NAME=$3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
PYTHON=${PYTHON:-python}

# SRUN_ARGS is split into words on purpose (several options)
# shellcheck disable=SC2086
PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
exec srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS} \
    "$PYTHON" -u "$(dirname "$0")/$SCRIPT" "${@:4}" --launcher slurm
