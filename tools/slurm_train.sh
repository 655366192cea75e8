#!/usr/bin/env bash
# tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args]: train on a Slurm
# cluster (see slurm_run.sh for GPUS, GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS, PYTHON).
if [ $# -lt 4 ]; then
    echo "error: usage: $0 PARTITION JOB_NAME CONFIG WORK_DIR [train.py args]" >&2
    exit 2
fi
exec "$(dirname "$0")/slurm_run.sh" train.py "$1" "$2" "$3" --work-dir "$4" "${@:5}"
