#!/usr/bin/env bash
# tools/dist_test.sh CONFIG CHECKPOINT N [test.py args]: N test processes on this node (torchrun).
exec "$(dirname "$0")/dist_run.sh" test.py "$3" "$1" "$2" "${@:4}"
