#!/usr/bin/env bash
# tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args]: test on a Slurm
# cluster (see slurm_run.sh for GPUS, GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS, PYTHON).
if [ $# -lt 4 ]; then
    echo "error: usage: $0 PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args]" >&2
    exit 2
fi
exec "$(dirname "$0")/slurm_run.sh" test.py "$1" "$2" "$3" "$4" "${@:5}"
