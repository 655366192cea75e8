#!/usr/bin/env bash
# tools/dist_run.sh SCRIPT N [SCRIPT args]: N processes of tools/SCRIPT on this node (torchrun,
# --launcher pytorch). gloo on CPU, nccl on GPUs (one process per GPU). Used by dist_train.sh and
# dist_test.sh; NNODES, NODE_RANK, PORT, MASTER_ADDR, PYTHON select the rest.
SCRIPT=$1
NPROC=$2
PYTHON=${PYTHON:-python}

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --nproc_per_node="$NPROC" \
    --master_port="${PORT:-29500}" \
    "$(dirname "$0")/$SCRIPT" \
    "${@:3}" \
    --launcher pytorch
