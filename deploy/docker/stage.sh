#!/usr/bin/env bash
# Stage the docker build context (deploy/docker/build/, git-ignored): wheelhouses downloaded on the host
# and a copy of the tritonkit source. The Dockerfiles install only from these wheelhouses
# (`pip install --no-index`), so image builds need no network: the same images build air-gapped, in CI
# (whose build containers have no network at all) and behind proxies that pip inside `docker build`
# cannot verify.
#
#   deploy/docker/stage.sh          wheelhouses for the CPU stack (kit, triton-cpu), Python 3.11
#   deploy/docker/stage.sh --ngc    also for the NGC-based images (triton, trt-build), Python 3.12
#
# Versions come from constraints.txt and the dependency lists from pyproject.toml: nothing is pinned here.
# A wheelhouse whose inputs did not change is not downloaded again (stamp file with their hash).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT="$ROOT/deploy/docker/build"
PY=${PYTHON:-python3}
NGC=0
for arg in "$@"; do
    case "$arg" in
        --ngc) NGC=1 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "stage.sh: unknown argument $arg (expected --ngc)" >&2; exit 2 ;;
    esac
done
say() { printf 'stage: %s\n' "$*"; }
t0=$(date +%s)

# The NGC release must be the one in tritonkit/defaults.py (the only place it is written down).
"$PY" - "$ROOT" <<'PY'
import re, sys
from pathlib import Path
root = Path(sys.argv[1])
ns = {}
src = (root / "tritonkit/defaults.py").read_text()
exec(compile("\n".join(l for l in src.splitlines() if l.startswith(("NGC_", "from __future__"))), "defaults", "exec"), ns)
env = dict(l.split("=", 1) for l in (root / ".env").read_text().splitlines() if "=" in l and not l.startswith("#"))
want = {"NGC_RELEASE": ns["NGC_RELEASE"], "TRITON_IMAGE": ns["NGC_TRITON_IMAGE"], "TENSORRT_IMAGE": ns["NGC_TENSORRT_IMAGE"]}
bad = {k: (env.get(k), v) for k, v in want.items() if env.get(k) != v}
if bad:
    sys.exit("stage: .env disagrees with tritonkit/defaults.py: "
             + "; ".join(f"{k}: got {a!r}, expected {b!r}" for k, (a, b) in bad.items())
             + " -- fix: update .env to the values above")
PY

# Requirement lists from pyproject.toml (core dependencies + named extras), one per image.
requirements() {  # requirements EXTRA... ; "core" = [project].dependencies
    "$PY" - "$ROOT/pyproject.toml" "$@" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
out = []
for name in sys.argv[2:]:
    deps = project["dependencies"] if name == "core" else project["optional-dependencies"][name]
    out += [d for d in deps if not d.startswith("tritonkit[")]
print("\n".join(dict.fromkeys(out)))
PY
}

# wheelhouse NAME PYVER REQS [NODEPS_REQS]: download wheels (binary only, for that Python) into build/wheels/NAME.
wheelhouse() {
    local name=$1 pyver=$2 reqs=$3 nodeps=${4:-} dir="$OUT/wheels/$1"
    mkdir -p "$dir"
    printf '%s\n' "$reqs" >"$dir/requirements.txt"
    printf '%s\n' "$nodeps" >"$dir/requirements-nodeps.txt"
    local key
    key=$(cat "$dir/requirements.txt" "$dir/requirements-nodeps.txt" "$ROOT/constraints.txt" | sha256sum | cut -c1-16)
    if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$key-py$pyver" ]; then
        say "wheels/$name: current ($(du -sh "$dir" | cut -f1))"
        return
    fi
    say "wheels/$name: pip download for Python $pyver"
    local pip=("$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all:
               --python-version "$pyver" --dest "$dir" -c "$ROOT/constraints.txt")
    "${pip[@]}" -r "$dir/requirements.txt" pip 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    if [ -n "$nodeps" ]; then
        "${pip[@]}" --no-deps -r "$dir/requirements-nodeps.txt" 2> >(grep -v "is ignored: it is neither" >&2)
    fi
    echo "$key-py$pyver" >"$dir/.stamp"
    say "wheels/$name: $(ls "$dir"/*.whl | wc -l) wheels, $(du -sh "$dir" | cut -f1)"
}

# 1. kit (prepare, latency-test): core + export + bench.
wheelhouse kit 3.11 "$(requirements core export bench)"
# 2. triton-cpu: `tritonkit serve` (core dependencies: it checks every config.pbtxt with Triton's schema
#    before starting), the embedded server (nvidia-pytriton without its client-side dependencies: only
#    its bundled tritonserver is used) and what the python-backend models import. No torch.
wheelhouse triton-cpu 3.11 "$(requirements core embedded | grep -v '^nvidia-pytriton')" \
    "$(requirements embedded | grep '^nvidia-pytriton')"
if [ "$NGC" = 1 ]; then
    # 3. triton (NGC tritonserver, Python 3.12): what the python-backend models import.
    wheelhouse triton-ngc 3.12 "$(printf 'tokenizers\nonnxruntime\nnumpy')"
    # 4. trt-build (NGC TensorRT image, Python 3.12): the kit's dependencies, and NVIDIA ModelOpt: TensorRT 11
    #    takes precision from the ONNX (AutoCast FP16/BF16, Q/DQ INT8/FP8), which the build writes first.
    wheelhouse trt-build 3.12 "$(requirements core export quantize)"
fi

# The tritonkit source (the kit runs from a source tree: templates/ and deploy/ sit beside the package).
rm -rf "$OUT/src.new"
mkdir -p "$OUT/src.new/deploy"
cp -r "$ROOT/tritonkit" "$ROOT/templates" "$ROOT/pyproject.toml" "$ROOT/constraints.txt" "$OUT/src.new/"
cp "$ROOT/deploy/models.yaml" "$ROOT/deploy/sentences.txt" "$OUT/src.new/deploy/"
find "$OUT/src.new" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$OUT/src" && mv "$OUT/src.new" "$OUT/src"
say "src: $(find "$OUT/src" -type f | wc -l) files"
say "done in $(( $(date +%s) - t0 )) s: build context $OUT"
