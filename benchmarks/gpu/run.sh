#!/usr/bin/env bash
# Run ON the GPU machine (no network needed): install the wheels that benchmarks/gpu/prepare.sh
# put into .whl/ (copied there with the checkout) offline into a private folder, then run
# bench.py from the working tree. Arguments go to bench.py; --out defaults to $OUT if set.
#
#   benchmarks/gpu/run.sh [--quick] [--compile] [bench.py flags]
#
# Environment: PYTHON (default python3), KIT_SITE (default /tmp/site), KIT_WHEELS (default
# .whl), OUT.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 2
PYTHON=${PYTHON:-python3}
SITE=${KIT_SITE:-/tmp/site}
LIST=benchmarks/gpu/wheels.txt
WHL=${KIT_WHEELS:-.whl}

die() { echo "error: $*" >&2; exit 2; }

norm() { echo "$1" | tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/_/g'; }

missing=()
total=0
while read -r spec how _; do
  case "$spec" in ''|'#'*) continue ;; esac
  dir=$WHL
  [ "$how" = fallback ] && dir=$WHL/fallback
  total=$((total + 1))
  prefix="$(norm "${spec%%==*}")-${spec#*==}-"
  found=0
  for f in "$dir"/*.whl; do
    [ -e "$f" ] || continue
    case "$(basename "$f" | tr 'A-Z' 'a-z')" in "$prefix"*) found=1 ;; esac
  done
  [ $found = 1 ] || missing+=("$spec")
done < "$LIST"
if [ ${#missing[@]} -gt 0 ]; then
  die "no prepared wheels in $WHL/ (${#missing[@]} of the $total of $LIST missing, e.g. ${missing[0]}): run benchmarks/gpu/prepare.sh on a machine with network, then copy .whl/ to this checkout"
fi

LOG=$(mktemp /tmp/mmsparse-kit-pip.XXXXXX)
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" "$WHL"/*.whl >"$LOG" 2>&1 \
  || die "pip could not install $WHL/*.whl into $SITE with $PYTHON (its output: $LOG)"
if ! PYTHONPATH="$SITE" "$PYTHON" -W ignore -c 'import pkg_resources' >/dev/null 2>&1; then
  # MMEngine's config loader resolves 'mmpretrain::' / 'mmdet::' bases with pkg_resources
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHL"/fallback/*.whl >"$LOG" 2>&1 \
    || die "pip could not install $WHL/fallback/*.whl into $SITE with $PYTHON (its output: $LOG)"
fi
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::SyntaxWarning}  # old escapes in mmpretrain, py3.12

args=("$@")
has_out=0
for a in "$@"; do
  case "$a" in --out|--out=*) has_out=1 ;; esac
done
if [ $has_out = 0 ]; then
  [ -n "${OUT:-}" ] || die "give --out DIR (or set OUT) for gpu_kit.json and gpu_kit.md"
  args=(--out "$OUT" "${args[@]}")
fi
exec "$PYTHON" benchmarks/gpu/bench.py "${args[@]}"
