#!/usr/bin/env bash
# Run HERE (a machine with network), before a GPU machine that has none runs benchmarks/gpu/run.sh.
#
# Puts into .whl/ (repo root, ignored by git) the wheels listed in benchmarks/gpu/wheels.txt, for
# CPython 3.12 on manylinux x86_64: downloads the published ones (pip download --no-deps
# --only-binary=:all:), builds mmcv 2.1.0 without compiled ops (a pure-Python mmcv-lite wheel:
# backbones need mmcv.cnn, not mmcv.ops), drops any other wheel, and checks that the checkout
# (tracked and untracked, not ignored, files) plus .whl/ stay under KIT_LIMIT_MIB (default 64
# MiB: what a GPU machine without network may be sent per run). mmsparse itself goes as the
# checkout (run.sh puts the repo root on PYTHONPATH). Idempotent: wheels already there are
# kept, so a second run needs no network.
#
#   benchmarks/gpu/prepare.sh            # then, on the GPU machine (checkout + .whl/):
#   benchmarks/gpu/run.sh [bench.py flags]
#
# Environment: PYTHON (default .venv/bin/python, else python3; needs pip, setuptools<81 and
# torch for mmcv's setup.py), MMSPARSE_KIT_CACHE (the mmcv sdist, default
# ~/.cache/mmsparse-gpu-kit), KIT_WHEELS (the wheel folder, default .whl), KIT_LIMIT_MIB.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
WHL=${KIT_WHEELS:-.whl}
LIST=benchmarks/gpu/wheels.txt
LIMIT_MIB=${KIT_LIMIT_MIB:-64}
CACHE=${MMSPARSE_KIT_CACHE:-$HOME/.cache/mmsparse-gpu-kit}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)

die() { echo "error: $*" >&2; exit 2; }

# the wheel-file prefix of a distribution: lower case, runs of -_. as one _
norm() { echo "$1" | tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/_/g'; }

# the wheel of name==version in a folder, if there is one
find_wheel() {  # dir name version
  local f
  for f in "$1"/*.whl; do
    [ -e "$f" ] || continue
    case "$(basename "$f" | tr 'A-Z' 'a-z')" in
      "$(norm "$2")-$3-"*) echo "$f"; return 0 ;;
    esac
  done
  return 1
}

[ -f "$LIST" ] || die "$LIST is missing (run this script from a checkout of mmsparse)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "no pip for $PYTHON (set PYTHON to a Python with pip)"
mkdir -p "$WHL/fallback" "$CACHE"

# .whl/ never enters git (it is in .gitignore too)
if [ -d .git ]; then
  mkdir -p .git/info
  grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
fi

expected=()
while read -r spec how _; do
  case "$spec" in ''|'#'*) continue ;; esac
  name=${spec%%==*}
  version=${spec#*==}
  [ "$name" != "$spec" ] || die "$LIST: '$spec' is not name==version"
  dir=$WHL
  [ "$how" = fallback ] && dir=$WHL/fallback
  if wheel=$(find_wheel "$dir" "$name" "$version"); then
    echo "have     $(basename "$wheel")"
  else
    case "$how" in
      download|fallback)
        echo "download $spec"
        "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
          --implementation cp "${PLATFORMS[@]}" -d "$dir" "$spec" \
          || die "pip could not download $spec for CPython 3.12 (network, or no such wheel)"
        ;;
      build)
        [ "$name" = mmcv-lite ] || die "$LIST: only mmcv-lite is built, not $name"
        sdist=$CACHE/mmcv-$version.tar.gz
        if [ ! -f "$sdist" ]; then
          echo "download mmcv==$version (sdist)"
          "$PYTHON" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
            -d "$CACHE" "mmcv==$version" || die "pip could not download the mmcv $version sdist"
        fi
        echo "build    mmcv-lite $version (MMCV_WITH_OPS=0, pure Python)"
        MMCV_WITH_OPS=0 "$PYTHON" -m pip wheel -q --no-build-isolation --no-deps --no-cache-dir \
          -w "$WHL" "$sdist" >/dev/null \
          || die "building mmcv-lite from $sdist failed (needs setuptools<81 and torch in $PYTHON)"
        ;;
      *) die "$LIST: '$how' for $spec is not download, build or fallback" ;;
    esac
    wheel=$(find_wheel "$dir" "$name" "$version") || die "no wheel of $spec in $dir after fetching it"
  fi
  case "$(basename "$wheel")" in
    *-none-any.whl|*-cp312-*manylinux*x86_64*.whl|*-abi3-*manylinux*x86_64*.whl) ;;
    *) die "$(basename "$wheel") does not install on CPython 3.12 / x86_64" ;;
  esac
  expected+=("$wheel")
done < "$LIST"

# exactly the listed wheels: another version of one would stop the whole install there
for f in "$WHL"/*.whl "$WHL"/fallback/*.whl; do
  [ -e "$f" ] || continue
  keep=0
  for e in "${expected[@]}"; do [ "$f" = "$e" ] && keep=1; done
  if [ $keep = 0 ]; then echo "remove   $f (not in $LIST)"; rm -f "$f"; fi
done

# what one call carries: tracked and untracked-not-ignored files, plus .whl/
"$PYTHON" - "$WHL" "$LIMIT_MIB" <<'PY'
import os
import subprocess
import sys

whl, limit = sys.argv[1], float(sys.argv[2])
try:
    names = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], check=True,
                           capture_output=True).stdout.split(b'\0')
except (OSError, subprocess.CalledProcessError) as e:
    print(f'error: cannot list the checkout with git ({e}): run prepare.sh in a git checkout '
          f'of mmsparse', file=sys.stderr)
    sys.exit(2)
tree = sum(os.path.getsize(n) for n in names if n and os.path.isfile(n))
wheels = {os.path.join(d, f): os.path.getsize(os.path.join(d, f))
          for d, _, fs in os.walk(whl) for f in fs}
for path, size in sorted(wheels.items()):
    print(f'{size / 2**20:8.2f} MiB  {path}')
total = tree + sum(wheels.values())
print(f'total to send: {total / 2**20:.2f} MiB of {limit:.0f} MiB (checkout '
      f'{tree / 2**20:.2f} MiB + {whl}/ {sum(wheels.values()) / 2**20:.2f} MiB, '
      f'{len(wheels)} wheels)')
if total > limit * 2**20:
    print(f'error: the working tree and {whl}/ hold {total / 2**20:.2f} MiB, over the '
          f'{limit:.0f} MiB limit (KIT_LIMIT_MIB): drop wheels from benchmarks/gpu/wheels.txt or '
          f'untracked files from the tree', file=sys.stderr)
    sys.exit(2)
PY
echo "ready: on the GPU machine, with .whl/ in the checkout there, run benchmarks/gpu/run.sh"
