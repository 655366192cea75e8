#!/usr/bin/env bash
# tools/dist_train.sh CONFIG N [train.py args]: N training processes on this node (torchrun).
exec "$(dirname "$0")/dist_run.sh" train.py "$2" "$1" "${@:3}"
