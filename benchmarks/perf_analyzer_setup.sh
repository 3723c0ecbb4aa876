#!/usr/bin/env bash
# NVIDIA perf_analyzer for benchmarks/bench_vs_perf_analyzer.py, from PyPI wheels (no Docker, no NGC).
#
#   eval "$(bash benchmarks/perf_analyzer_setup.sh [DIR])"     # DIR default: .cache/perf_analyzer (git-ignored)
#
# * perf_analyzer: the tritonclient==2.41.1 manylinux wheel ships it as
#   tritonclient-2.41.1.data/data/bin/perf_analyzer (later tritonclient wheels do not; the PyPI name
#   `perf-analyzer` is a placeholder).
# * libcudart.so.12: perf_analyzer links it even when no GPU is used; the nvidia-cuda-runtime-cu12 wheel
#   has it in nvidia/cuda_runtime/lib.
# * libb64.so.0d: Debian's libb64-0d, installed with apt-get when running as root and missing, then copied
#   next to libcudart so DIR/lib alone can be carried to a host that has no apt or no network.
#
# Only perf_analyzer and the library are unpacked (not installed into any Python environment: the
# project's tritonclient stays the pinned 2.73). Progress goes to stderr; stdout is the two exports:
#   export PERF_ANALYZER=DIR/bin/perf_analyzer
#   export PERF_ANALYZER_CUDA_LIB=DIR/lib
# Running it again reuses what is there. Linux x86_64 only (the wheels' platform).
set -euo pipefail

TRITONCLIENT_VERSION=2.41.1      # the last tritonclient wheel with perf_analyzer in it
CUDART_VERSION=12.9.79           # nvidia-cuda-runtime-cu12: any 12.x has libcudart.so.12; pinned for repeatability

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.cache/perf_analyzer}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
BIN="$DEST/bin/perf_analyzer"
LIB="$DEST/lib"

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY=python3
fi

say() { echo "perf_analyzer_setup: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(uname -s)/$(uname -m)" = "Linux/x86_64" ] || die "the perf_analyzer wheel is for Linux x86_64, this is $(uname -s)/$(uname -m)"

runs() { LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$BIN" --version >/dev/null 2>&1; }

if [ -x "$BIN" ] && [ -e "$LIB/libcudart.so.12" ]; then
    say "reusing $BIN"
else
    WHEELS="$DEST/wheels"
    mkdir -p "$WHEELS"
    say "downloading tritonclient==$TRITONCLIENT_VERSION and nvidia-cuda-runtime-cu12==$CUDART_VERSION into $WHEELS"
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform manylinux1_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --dest "$WHEELS" "tritonclient==$TRITONCLIENT_VERSION" "nvidia-cuda-runtime-cu12==$CUDART_VERSION" >&2
    say "unpacking perf_analyzer and libcudart.so.12"
    "$PY" - "$WHEELS" "$DEST" "$TRITONCLIENT_VERSION" <<'EOF'
import glob, os, shutil, stat, sys, zipfile
wheels, dest, version = sys.argv[1:]
wanted = {  # wheel glob -> (member, where it goes)
    f"tritonclient-{version}-*.whl": (f"tritonclient-{version}.data/data/bin/perf_analyzer", "bin/perf_analyzer"),
    "nvidia_cuda_runtime_cu12-*.whl": ("nvidia/cuda_runtime/lib/libcudart.so.12", "lib/libcudart.so.12"),
}
for pattern, (member, target) in wanted.items():
    found = sorted(glob.glob(os.path.join(wheels, pattern)))
    if not found:
        sys.exit(f"no wheel matching {pattern} in {wheels}")
    with zipfile.ZipFile(found[-1]) as z:
        if member not in z.namelist():
            sys.exit(f"{found[-1]} has no {member}")
        out = os.path.join(dest, target)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(member) as src, open(out + ".part", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.chmod(out + ".part", 0o755 if target.startswith("bin/") else 0o644)
        os.replace(out + ".part", out)
EOF
fi

b64_path() { ldconfig -p 2>/dev/null | awk '/libb64\.so\.0d .*x86-64/ {print $NF; exit}'; }
if [ ! -e "$LIB/libb64.so.0d" ]; then
    if [ -z "$(b64_path)" ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            say "installing Debian's libb64-0d"
            apt-get install -y -q libb64-0d >&2 || { apt-get update -q >&2 && apt-get install -y -q libb64-0d >&2; }
        else
            die "libb64.so.0d is missing: run \`sudo apt-get install -y libb64-0d\` (Debian/Ubuntu), then this script again"
        fi
    fi
    src="$(b64_path)"
    [ -n "$src" ] || die "libb64-0d is installed but ldconfig does not list libb64.so.0d"
    cp -L "$src" "$LIB/libb64.so.0d"
fi

runs || die "$BIN does not run: $(LD_LIBRARY_PATH="$LIB" "$BIN" --version 2>&1 | tail -1)"
say "$(LD_LIBRARY_PATH="$LIB" "$BIN" --version 2>&1 | tail -1) ready"
echo "export PERF_ANALYZER=$BIN"
echo "export PERF_ANALYZER_CUDA_LIB=$LIB"
