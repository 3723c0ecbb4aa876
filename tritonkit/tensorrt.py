"""TensorRT plans: plan -> builder settings (data), settings -> plan file (the TensorRT API), plan -> proof.

A plan (serialized engine) loads only with the TensorRT version and the GPU architecture that built it:
anything else fails at load time ("Magic tag does not match", "The engine plan file is not compatible
with this version of TensorRT", "expected dim 0 between 1 and 1" when its profile is narrower than the
config). So tritonkit

* derives every builder setting from the plan, as a value (:func:`builder_settings`, pure, tested on
  any machine): precision flags, optimization profiles (the spec's named axes, batch included),
  workspace (from the GPU's memory), optimization level, the file name per compute capability, and
  the equivalent ``trtexec`` command for ``reproduce.sh``;
* builds only where the serving release's TensorRT runs on the target architecture
  (:func:`require_build_host`): in ``nvcr.io/nvidia/tensorrt:<release>-py3`` on a GPU of that compute
  capability. Anywhere else it refuses with the command that does it right;
* validates every plan against ONNX Runtime on the same inputs with the tolerance of its precision;
* records TensorRT version, GPU, compute capability, precision, profiles and the measured error in
  ``build.json``; render and serve refuse a plan whose record does not match the server that will load
  it (:func:`check_built_plans`).

Written against the TensorRT 10.x Python API (TensorRT 10.13 in NGC 25.10). The precision flags
(``BuilderFlag.FP16`` ...) are "weak typing", deprecated since TensorRT 10.12 and removed in 11; they
still work in the pinned 10.13. ``import tensorrt`` happens only inside the functions that call it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shlex
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import defaults
from .catalogue import GPU
from .errors import UserError
from .plan import Plan, Profile, TritonModel, plan_filename

MANIFEST = "build.json"          # same name as render.MANIFEST (render imports this module lazily)
VERSION = "1"
PLANS_KEY = "plans"              # build.json: {"plans": {file name: what built it}}


# --------------------------------------------------------------------------------------------------
# Pure: the plan -> builder settings
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrecisionFlags:
    """What one precision means to the builder: BuilderFlag names to set / clear, the trtexec flags."""
    set: tuple[str, ...]
    clear: tuple[str, ...]
    trtexec: tuple[str, ...]
    quantized: bool              # needs an explicitly quantized (Q/DQ) ONNX: TensorRT 10 has no implicit INT8/FP8
    note: str


# Table, read by builder_settings; a precision missing here raises. TF32 is on by default in TensorRT,
# so FP32 clears it: FP32 tolerances (1e-4) are tighter than TF32's 10-bit mantissa allows.
PRECISION_FLAGS: dict[str, PrecisionFlags] = {
    "fp32": PrecisionFlags((), ("TF32",), ("--noTF32",), False, "FP32 kernels only (TF32 cleared)"),
    "tf32": PrecisionFlags(("TF32",), (), (), False, "TF32 tensor cores for FP32 math (TensorRT's default)"),
    "fp16": PrecisionFlags(("FP16",), (), ("--fp16",), False, "FP16 kernels allowed, FP32 where faster or needed"),
    "bf16": PrecisionFlags(("BF16",), (), ("--bf16",), False, "BF16 kernels allowed, FP32 where faster or needed"),
    "int8": PrecisionFlags(("INT8", "FP16"), (), ("--int8", "--fp16"), True,
                           "INT8 from the graph's Q/DQ scales, FP16 for the layers between"),
    "fp8": PrecisionFlags(("FP8", "FP16"), (), ("--fp8", "--fp16"), True,
                          "FP8 from the graph's Q/DQ scales, FP16 for the layers between"),
    "fp4": PrecisionFlags(("FP4", "FP16"), (), ("--fp4", "--fp16"), True,
                          "FP4 from the graph's Q/DQ scales, FP16 for the layers between"),
}


@dataclass(frozen=True)
class BuilderSettings:
    """Everything the TensorRT builder is told for one plan file; ``record()`` goes into build.json."""
    model: str
    plan_file: str                                  # plan_filename(cc), the name cc_model_filenames points at
    gpu: str
    compute_capability: tuple[int, int]
    precision: str
    flags: tuple[str, ...]                          # trt.BuilderFlag members set
    cleared_flags: tuple[str, ...]                  # trt.BuilderFlag members cleared
    trtexec_precision: tuple[str, ...]
    quantized_onnx_required: bool
    profiles: tuple[Profile, ...]
    workspace_bytes: int
    optimization_level: int
    tensorrt_version: str                           # the serving release's TensorRT: the build must run it
    server_image: str | None
    build_image: str
    timing_cache: str                               # file name under the cache dir

    @property
    def cc(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    def record(self) -> dict:
        return {"plan_file": self.plan_file, "gpu": self.gpu, "compute_capability": self.cc,
                "precision": self.precision, "flags": list(self.flags), "cleared_flags": list(self.cleared_flags),
                "profiles": [profile_record(p) for p in self.profiles], "workspace_bytes": self.workspace_bytes,
                "builder_optimization_level": self.optimization_level, "tensorrt": self.tensorrt_version,
                "build_image": self.build_image, "timing_cache": self.timing_cache}

    def trtexec_command(self, onnx: str | Path, plan: str | Path, timing_cache: str | Path) -> list[str]:
        """The equivalent trtexec command line (TensorRT 10 flags). Several profiles: one
        --minShapes/--optShapes/--maxShapes triple per profile, in order."""
        cmd = ["trtexec", f"--onnx={onnx}", f"--saveEngine={plan}"]
        for p in self.profiles:
            cmd += [f"--minShapes={_shapes_arg(p.min)}", f"--optShapes={_shapes_arg(p.opt)}",
                    f"--maxShapes={_shapes_arg(p.max)}"]
        cmd += [*self.trtexec_precision, f"--builderOptimizationLevel={self.optimization_level}",
                f"--memPoolSize=workspace:{self.workspace_bytes // 2**20}",  # MiB (trtexec's default unit)
                f"--timingCacheFile={timing_cache}", "--skipInference"]
        return cmd


def _shapes_arg(shapes: Sequence[tuple[str, Sequence[int]]]) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes)


def profile_record(p: Profile) -> dict:
    return {"min": {n: list(d) for n, d in p.min}, "opt": {n: list(d) for n, d in p.opt},
            "max": {n: list(d) for n, d in p.max}}


def profiles_from_spec(spec_model) -> tuple[Profile, ...]:
    """One profile spanning each named axis' min/opt/max; the batch axis goes 1 .. max_batch_size.

    The same rule as policy.profiles; used when a plan carries no profiles (older plan.json)."""
    def shapes(which: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return tuple((t.name, spec_model.shape(t.dims, which))
                     for t in spec_model.inputs)
    return (Profile(min=shapes("min"), opt=shapes("opt"), max=shapes("max")),)


def check_profiles(profiles: Sequence[Profile], model: TritonModel) -> None:
    """Refuse profiles Triton could not serve with this config (before spending minutes on a build).

    Every input in every profile, full rank (batch included when batching), min <= opt <= max, fixed
    dims equal to the config's, and batch 1 .. max_batch_size covered: an engine whose profile stops
    short of max_batch_size fails in Triton with "expected dim 0 between 1 and N".
    """
    where = f"{model.name}: TensorRT profiles"
    if not profiles:
        raise UserError("no optimization profile", where=where, expected="at least one (from the spec's axes)")
    names = [t.name for t in model.inputs]
    batched = model.max_batch_size > 0
    for i, p in enumerate(profiles):
        for which in ("min", "opt", "max"):
            got = [n for n, _ in getattr(p, which)]
            if sorted(got) != sorted(names):
                raise UserError(f"profile {i} {which} shapes name other inputs than the model has", where=where,
                                actual=got, expected=names)
        mins, opts, maxs = dict(p.min), dict(p.opt), dict(p.max)
        for t in model.inputs:
            full = ((-1,) if batched else ()) + tuple(t.dims)
            lo, mid, hi = mins[t.name], opts[t.name], maxs[t.name]
            if not len(lo) == len(mid) == len(hi) == len(full):
                raise UserError(f"profile {i}: input '{t.name}' has the wrong rank", where=where,
                                actual=[list(lo), list(mid), list(hi)], expected=f"rank {len(full)} ({list(full)})")
            for d, (a, b, c, want) in enumerate(zip(lo, mid, hi, full)):
                if not 1 <= a <= b <= c:
                    raise UserError(f"profile {i}: input '{t.name}' dim {d} needs 1 <= min <= opt <= max",
                                    where=where, actual=(a, b, c), expected="1 <= min <= opt <= max")
                if want != -1 and not a == b == c == want:
                    raise UserError(f"profile {i}: input '{t.name}' dim {d} is fixed to {want} in the config",
                                    where=where, actual=(a, b, c), expected=(want, want, want))
    if batched:
        lowest = min(dict(p.min)[n][0] for p in profiles for n in names)
        highest = min(max(dict(p.max)[n][0] for p in profiles) for n in names)
        if lowest > 1 or highest < model.max_batch_size:
            raise UserError("the profiles do not cover the batch sizes Triton will send", where=where,
                            actual=f"batch {lowest}..{highest}", expected=f"1..{model.max_batch_size} (max_batch_size)",
                            fix="set axes.<batch>.max to max_batch_size in the spec (Triton would fail with "
                                f"'expected dim 0 between {lowest} and {highest}')")


def workspace_bytes(gpu_memory_bytes: int) -> int:
    """Workspace pool: min(TRT_WORKSPACE_MAX_BYTES, TRT_WORKSPACE_MEMORY_SHARE of the GPU), whole MiB."""
    limit = min(defaults.TRT_WORKSPACE_MAX_BYTES, int(gpu_memory_bytes * defaults.TRT_WORKSPACE_MEMORY_SHARE))
    return max(2**20, limit // 2**20 * 2**20)


def cc_text(cc: Sequence[int]) -> str:
    return f"{cc[0]}.{cc[1]}"


def parse_cc(text: str) -> tuple[int, int]:
    major, minor = str(text).split(".")
    return int(major), int(minor)


def plan_file_for(model: TritonModel, cc: tuple[int, int]) -> str:
    """The file a plan for compute capability ``cc`` goes to: the config's cc_model_filenames entry,
    else plan_filename(cc); it must be one the config names, or Triton would never load it."""
    mapped = dict(model.cc_model_filenames).get(cc_text(cc))
    name = mapped or plan_filename(cc)
    named = {*model.artifacts, *(f for _, f in model.cc_model_filenames)}
    if name not in named:
        raise UserError(f"the plan names no TensorRT plan file for compute capability {cc_text(cc)}",
                        where=model.name, actual=sorted(named), expected=name,
                        fix="render the repository for this GPU (or for a fleet that includes it), then build")
    return name


def timing_cache_name(cc: tuple[int, int], tensorrt_version: str) -> str:
    return f"timing-sm{cc[0]}{cc[1]}-trt{tensorrt_version}.cache"


def builder_settings(plan: Plan, model: TritonModel, spec_model=None, *, gpu: GPU | None = None) -> BuilderSettings:
    """Pure: what TensorRT is told for ``model``'s plan on ``gpu`` (default: the plan's GPU)."""
    gpu = gpu or plan.gpu
    if gpu is None:
        raise UserError("a TensorRT plan needs a GPU target", where=model.name, actual="no GPU in the plan",
                        expected="--gpu auto on a GPU host, or --gpu <name>")
    if plan.server.tensorrt_version is None:
        raise UserError(f"the {plan.server.name} server cannot load TensorRT plans", where=model.name,
                        actual=plan.server.name, expected="a server with a TensorRT backend (--server ngc)")
    try:
        flags = PRECISION_FLAGS[model.precision]
    except KeyError:
        raise UserError("no TensorRT builder flags for this precision", where=f"{model.name}: precision",
                        actual=model.precision, expected=sorted(PRECISION_FLAGS)) from None
    profiles = model.profiles or (profiles_from_spec(spec_model) if spec_model is not None else ())
    check_profiles(profiles, model)
    cc = tuple(gpu.compute_capability)
    return BuilderSettings(
        model=model.name, plan_file=plan_file_for(model, cc), gpu=gpu.name, compute_capability=cc,
        precision=model.precision, flags=flags.set, cleared_flags=flags.clear, trtexec_precision=flags.trtexec,
        quantized_onnx_required=flags.quantized, profiles=tuple(profiles),
        workspace_bytes=workspace_bytes(gpu.memory_bytes),
        optimization_level=defaults.TRT_BUILDER_OPTIMIZATION_LEVEL, tensorrt_version=plan.server.tensorrt_version,
        server_image=plan.server.image, build_image=defaults.NGC_TENSORRT_IMAGE,
        timing_cache=timing_cache_name(cc, plan.server.tensorrt_version))


def require_quantized(settings: BuilderSettings, onnx_ops: Mapping[str, int], *, where: str,
                      calibration: str | None) -> None:
    """INT8/FP8/FP4 plans come from explicitly quantized ONNX (Q/DQ nodes) in TensorRT 10; refuse otherwise."""
    if settings.quantized_onnx_required and not onnx_ops:
        raise UserError(f"{settings.precision.upper()} needs an explicitly quantized ONNX (QuantizeLinear/"
                        "DequantizeLinear nodes); this graph has none", where=where, actual="no Q/DQ nodes",
                        expected="a graph quantized with its calibration data",
                        fix="quantize it with NVIDIA TensorRT Model Optimizer (modelopt.onnx.quantization) using "
                            f"the calibration data{f' ({calibration})' if calibration else ''}, point source.path "
                            "at the result (format: onnx), or choose precision: auto")


# --------------------------------------------------------------------------------------------------
# Pure: manifests, and refusing plans that do not match the server that will load them
# --------------------------------------------------------------------------------------------------
def same_tensorrt(built: str | None, server: str | None) -> bool:
    """'10.13.3.9' (what a build reports) matches the pin '10.13.3': compare the pin's components."""
    if not built or not server:
        return False
    want = server.split(".")
    return built.split(".")[:len(want)] == want


def plan_entry(settings: BuilderSettings, *, tensorrt_version: str, gpu_name: str, sha256: str, onnx: dict,
               validation: dict, engine: dict, recipe: dict) -> dict:
    """build.json's record of one plan file (``plans[<file>]``): what built it and how close it measured."""
    return {**settings.record(), "tensorrt": tensorrt_version, "tensorrt_pin": settings.tensorrt_version,
            "gpu": gpu_name, "sha256": sha256, "onnx": onnx, "validation": validation, "engine": engine,
            "recipe": recipe}


def rebuild_command(server: str, repo: Path | str, *, spec: Path | str | None = None, force: bool = True) -> str:
    """The build in the serving release's TensorRT image, on this host's GPU (paths relative to $PWD work)."""
    cmd = ["tritonkit", "build", *(["--spec", str(spec)] if spec else []), "--server", server, "--gpu", "auto",
           "--repo", str(repo), *(["--force"] if force else [])]
    return (f"docker run --rm --gpus all -v \"$PWD\":/workspace -w /workspace {defaults.NGC_TENSORRT_IMAGE} "
            + shlex.join(cmd))


def expected_plans(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """From plan records (plan.json: one, or a fleet's list): TensorRT model -> {plan file: compute capability}."""
    out: dict[str, dict[str, str]] = {}
    for rec in records:
        gpu = rec.get("gpu") or {}
        for m in rec.get("models", []):
            if m.get("backend") != "tensorrt":
                continue
            files = out.setdefault(m["name"], {})
            for cc, name in m.get("cc_model_filenames") or []:
                files[name] = cc
            if gpu.get("compute_capability"):
                for name in m.get("artifacts") or []:
                    files.setdefault(name, cc_text(gpu["compute_capability"]))
    return out


def plan_records(plan_json: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(plan_json["fleet"]) if "fleet" in plan_json else [plan_json]


@dataclass(frozen=True)
class PlanMismatch:
    path: str            # "minilm_encoder/1/model.sm75.plan"
    problem: str         # one line: what was built vs what the server needs


def plan_mismatches(repo: Path, expected: Mapping[str, Mapping[str, str]], *, tensorrt_version: str | None,
                    server: str, gpu_ccs: Sequence[str] = ()) -> list[PlanMismatch]:
    """Every built plan under ``repo`` that the server would refuse (or load on the wrong GPU).

    ``expected``: model -> {plan file: the cc the config maps it to}. A plan file present on disk must
    have a build.json entry recording TensorRT == ``tensorrt_version`` (the server's) and that cc.
    ``gpu_ccs``: the GPUs that will load it (serve: detected); each needs a plan built for its cc.
    """
    problems: list[PlanMismatch] = []
    for model, files in sorted(expected.items()):
        folder = Path(repo) / model / VERSION
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = {}
        entries = manifest.get(PLANS_KEY) or {}
        built_ccs = set()
        for name, cc in sorted(files.items()):
            rel = f"{model}/{VERSION}/{name}"
            if not (folder / name).is_file():
                continue
            entry = entries.get(name)
            if entry is None:
                problems.append(PlanMismatch(rel, "no build.json record of which TensorRT and GPU built it"))
                continue
            if not same_tensorrt(entry.get("tensorrt"), tensorrt_version):
                problems.append(PlanMismatch(rel, f"built with TensorRT {entry.get('tensorrt')}; the {server} server "
                                                  f"loads plans with TensorRT {tensorrt_version} ('Magic tag does not "
                                                  "match' / 'not compatible with this version of TensorRT')"))
            if entry.get("compute_capability") != cc:
                problems.append(PlanMismatch(rel, f"built for compute capability {entry.get('compute_capability')} "
                                                  f"({entry.get('gpu')}); the config loads it on cc {cc} GPUs"))
            else:
                built_ccs.add(cc)
        for cc in sorted(set(gpu_ccs)):
            if cc not in built_ccs:
                mapped = [n for n, c in files.items() if c == cc]
                problems.append(PlanMismatch(f"{model}/{VERSION}/{mapped[0] if mapped else plan_filename(parse_cc(cc))}",
                                             f"this host has a cc {cc} GPU and no matching plan was built for it"))
    return problems


def check_built_plans(repo: Path, plan_json: Mapping[str, Any], *, action: str,
                      gpu_ccs: Sequence[str] = ()) -> None:
    """Raise UserError (exit 2) naming each plan the target server would refuse, and how to rebuild it.

    The server's TensorRT comes from the current pins (servers.SERVERS[name].tensorrt_version), not from
    what plan.json recorded: a bumped NGC release makes every old plan stale, which is the point.
    """
    from .servers import SERVERS
    records = plan_records(plan_json)
    expected = expected_plans(records)
    if not expected:
        return
    server_name = records[0].get("server", {}).get("name", "ngc")
    target = SERVERS.get(server_name)
    tensorrt_version = target.tensorrt_version if target else None
    mismatches = plan_mismatches(repo, expected, tensorrt_version=tensorrt_version, server=server_name,
                                 gpu_ccs=gpu_ccs)
    if not mismatches:
        return
    lines = "\n".join(f"    {m.path}: {m.problem}" for m in mismatches)
    stale = " ".join(shlex.quote(str(Path(repo) / m.path)) for m in mismatches if (Path(repo) / m.path).is_file())
    ccs = sorted({c for files in expected.values() for c in files.values()})
    rebuild = rebuild_command(server_name, repo, spec=records[0].get("spec_path"))
    if action == "render":
        fix = (f"the repository is unchanged. Remove the stale plan(s){f' (rm {stale})' if stale else ''}, render "
               f"again, then rebuild on a GPU of compute capability {', '.join(ccs)}: {rebuild}")
    else:
        fix = f"rebuild on a GPU of compute capability {', '.join(ccs)}, in the serving release's TensorRT image: {rebuild}"
    raise UserError(f"{len(mismatches)} TensorRT plan(s) would not load in the {server_name} server "
                    f"(Triton {target.triton_version if target else '?'}, TensorRT {tensorrt_version}); "
                    f"refusing to {action}:\n{lines}", where=str(repo),
                    actual="plans built for another TensorRT or GPU",
                    expected=f"TensorRT {tensorrt_version} ({defaults.NGC_TENSORRT_IMAGE}) and the config's cc",
                    fix=fix)


# --------------------------------------------------------------------------------------------------
# Where plans can be built
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildHost:
    tensorrt_version: str
    gpu: GPU                          # CUDA device 0, which the builder and the validation run on


def import_tensorrt(rebuild: str | None = None):
    """``import tensorrt`` or a UserError saying where plans are built (exit 2, no traceback).

    ``rebuild``: the command that builds in the right place (default: the generic one)."""
    rebuild = rebuild or rebuild_command("ngc", "model_repository", force=False)
    try:
        import tensorrt as trt
    except ImportError as e:
        raise UserError("TensorRT is not installed here, and this plan has TensorRT plans to build",
                        actual=f"import tensorrt: {e}", expected=f"the TensorRT of {defaults.NGC_TENSORRT_IMAGE}",
                        fix="build in the serving release's TensorRT container on a GPU of the target "
                            f"architecture: {rebuild} (docker compose: the trt-build service). Or plan without "
                            "TensorRT plans: render and build with --no-tensorrt (ONNX Runtime with its TensorRT "
                            "execution accelerator; the server builds engines at load time), --gpu none (CPU) or "
                            "--server embedded") from None
    if not hasattr(trt, "Builder"):  # the PyPI 'tensorrt' placeholder imports but has no API
        raise UserError("the installed 'tensorrt' package is a placeholder without the TensorRT API",
                        actual=getattr(trt, "__file__", "?"), expected=defaults.NGC_TENSORRT_IMAGE,
                        fix=f"build in {defaults.NGC_TENSORRT_IMAGE}: {rebuild}")
    return trt


def require_build_host(plan: Plan, targets: Sequence[tuple[int, int]], *, repo: Path | str = "model_repository") -> BuildHost:
    """Refuse (UserError) unless this process can build plans the plan's server will load on ``targets``."""
    rebuild = rebuild_command(plan.server.name, repo, spec=plan.spec_path, force=False)
    trt = import_tensorrt(rebuild)
    version = str(trt.__version__)
    if not same_tensorrt(version, plan.server.tensorrt_version):
        raise UserError(f"this TensorRT would build plans the {plan.server.name} server cannot load",
                        actual=f"TensorRT {version}", expected=f"TensorRT {plan.server.tensorrt_version} "
                        f"(Triton {plan.server.triton_version})", fix=f"build in {defaults.NGC_TENSORRT_IMAGE}: {rebuild}")
    from .hardware import detect
    gpus = detect().gpus
    if not gpus:
        raise UserError("TensorRT builds plans on a GPU of the target architecture; this host has none",
                        actual="no GPU detected", expected=f"a GPU of compute capability "
                        f"{', '.join(cc_text(t) for t in targets)}",
                        fix="run the build on a GPU host (docker run --gpus all ...)")
    device = gpus[0]
    if tuple(device.compute_capability) not in {tuple(t) for t in targets}:
        raise UserError("this host's GPU is another architecture than the plan targets; a plan built here "
                        "would not load there", actual=f"GPU 0: {device.name} (cc {cc_text(device.compute_capability)})",
                        expected=f"cc {', '.join(cc_text(t) for t in targets)}",
                        fix="build on a GPU of the target architecture, or plan for this GPU (--gpu auto); with "
                            "several GPU types, make the right one device 0 (CUDA_VISIBLE_DEVICES)")
    return BuildHost(tensorrt_version=version, gpu=device)


# --------------------------------------------------------------------------------------------------
# The TensorRT API: build, inspect and run a plan (needs `tensorrt` and a GPU)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineReport:
    seconds: float
    tensorrt_version: str
    timing_cache: str                 # "loaded" | "new" | "rejected (...), started anew"
    profiles: list                    # what the engine reports per profile and input: [min, opt, max]
    io: dict                          # tensor name -> [mode, dtype]
    size_bytes: int


def _logger(trt):
    class Logger(trt.ILogger):
        """Keeps errors for the UserError; warnings go to the log like TensorRT's default logger."""
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                print(f"[TensorRT] {msg}", flush=True)
    return Logger()


def _monitor(trt, on_phase: Callable[[str, int, int], None]):
    class Monitor(trt.IProgressMonitor):
        """TensorRT's build phases -> (phase, step, steps) callbacks (the rich progress bar)."""
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.steps[phase_name] = num_steps
            on_phase(phase_name, 0, num_steps)

        def step_complete(self, phase_name, step):
            on_phase(phase_name, step + 1, self.steps.get(phase_name, step + 1))
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            n = self.steps.pop(phase_name, 1)
            on_phase(phase_name, n, n)
    return Monitor()


def _write_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(data))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_engine(settings: BuilderSettings, onnx_path: Path, out_path: Path, cache_path: Path, *,
                 on_phase: Callable[[str, int, int], None] | None = None) -> EngineReport:
    """ONNX -> serialized plan at ``out_path`` with ``settings``; the timing cache at ``cache_path`` is
    loaded (if present and from this device) and saved back, so the next build of the same layers is fast."""
    import time
    trt = import_tensorrt()
    started = time.perf_counter()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)   # TensorRT 10: every network is explicit-batch (the flag is deprecated)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise UserError("TensorRT's ONNX parser rejected the graph", where=str(onnx_path), actual=errors[:5],
                        expected="operators TensorRT supports (see the TensorRT ONNX operator matrix)")
    net_inputs = sorted(network.get_input(i).name for i in range(network.num_inputs))
    if net_inputs != sorted(n for n, _ in settings.profiles[0].min):
        raise UserError("the ONNX graph's inputs differ from the plan's profile", where=str(onnx_path),
                        actual=net_inputs, expected=sorted(n for n, _ in settings.profiles[0].min))
    config = builder.create_builder_config()
    for name in settings.flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:
            raise UserError(f"this TensorRT has no BuilderFlag.{name}", actual=trt.__version__,
                            expected=f"TensorRT {settings.tensorrt_version}", fix=f"build in {settings.build_image}")
        config.set_flag(flag)
    for name in settings.cleared_flags:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    config.builder_optimization_level = settings.optimization_level
    for p in settings.profiles:
        profile = builder.create_optimization_profile()
        opt, hi = dict(p.opt), dict(p.max)
        for name, lo in p.min:
            profile.set_shape(name, tuple(lo), tuple(opt[name]), tuple(hi[name]))
        config.add_optimization_profile(profile)
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(blob)
    cache_state = "loaded" if blob else "new"
    if cache is None or not config.set_timing_cache(cache, False):   # False: refuse another device's cache
        cache_state = "rejected (another device or version), started anew"
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    if on_phase is not None:
        config.progress_monitor = _monitor(trt, on_phase)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError("TensorRT could not build the plan", where=str(onnx_path), actual=logger.errors[-5:],
                        expected="a successful build", fix="see the TensorRT messages above; a larger workspace or "
                        "another precision may help")
    _write_atomic(out_path, serialized)
    _write_atomic(cache_path, config.get_timing_cache().serialize())
    engine = trt.Runtime(logger).deserialize_cuda_engine(out_path.read_bytes())
    return EngineReport(seconds=time.perf_counter() - started, tensorrt_version=str(trt.__version__),
                        timing_cache=cache_state, profiles=_engine_profiles(trt, engine), io=_engine_io(trt, engine),
                        size_bytes=out_path.stat().st_size)


def _engine_io(trt, engine) -> dict:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return {n: [str(engine.get_tensor_mode(n)).split(".")[-1], str(engine.get_tensor_dtype(n)).split(".")[-1]]
            for n in names}


def _engine_profiles(trt, engine) -> list:
    inputs = [n for n in (engine.get_tensor_name(i) for i in range(engine.num_io_tensors))
              if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    return [{n: [list(s) for s in engine.get_tensor_profile_shape(n, p)] for n in inputs}
            for p in range(engine.num_optimization_profiles)]


class Cudart:
    """The few CUDA runtime calls a validation run needs, through ctypes (as Polygraphy does): no torch or
    cuda-python dependency, so it works in the bare TensorRT container."""
    NAMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")
    H2D, D2H = 1, 2

    def __init__(self):
        found = ctypes.util.find_library("cudart")
        for name in ([found] if found else []) + list(self.NAMES):
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            raise UserError("the CUDA runtime library (libcudart) was not found", actual=list(self.NAMES),
                            expected="CUDA's libcudart on the loader path", fix=f"run in {defaults.NGC_TENSORRT_IMAGE}")
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what}: CUDA error {status} ({self.lib.cudaGetErrorString(status).decode()})")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(1, nbytes))), "cudaMalloc")
        return ptr.value

    def free(self, ptr: int) -> None:
        self.lib.cudaFree(ctypes.c_void_p(ptr))

    def to_device(self, ptr: int, array) -> None:
        self._check(self.lib.cudaMemcpy(ctypes.c_void_p(ptr), ctypes.c_void_p(array.ctypes.data),
                                        ctypes.c_size_t(array.nbytes), self.H2D), "cudaMemcpy H2D")

    def to_host(self, array, ptr: int) -> None:
        self._check(self.lib.cudaMemcpy(ctypes.c_void_p(array.ctypes.data), ctypes.c_void_p(ptr),
                                        ctypes.c_size_t(array.nbytes), self.D2H), "cudaMemcpy D2H")

    def stream(self) -> int:
        s = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        return s.value or 0

    def synchronize(self, stream: int) -> None:
        self._check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def destroy(self, stream: int) -> None:
        self.lib.cudaStreamDestroy(ctypes.c_void_p(stream))


def run_plan(plan_path: Path, feeds: Mapping[str, Any], *, profile: int = 0) -> dict[str, Any]:
    """Run a plan once on ``feeds`` (numpy arrays by input name) with the TensorRT runtime; outputs by name."""
    import numpy as np
    trt = import_tensorrt()
    logger = _logger(trt)
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(plan_path).read_bytes())
    if engine is None:
        raise UserError("TensorRT could not load the plan it just built", where=str(plan_path),
                        actual=logger.errors[-3:])
    context = engine.create_execution_context()
    cuda = Cudart()
    stream = cuda.stream()
    allocations: list[int] = []
    try:
        context.set_optimization_profile_async(profile, stream)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in inputs:
            arr = np.ascontiguousarray(feeds[name], dtype=trt.nptype(engine.get_tensor_dtype(name)))
            if not context.set_input_shape(name, arr.shape):
                raise UserError(f"input '{name}' shape is outside the plan's profile", where=str(plan_path),
                                actual=list(arr.shape), expected=_engine_profiles(trt, engine)[profile].get(name))
            ptr = cuda.malloc(arr.nbytes)
            allocations.append(ptr)
            cuda.to_device(ptr, arr)
            context.set_tensor_address(name, ptr)
        outputs = {}
        for name in (n for n in names if n not in inputs):
            host = np.empty(tuple(context.get_tensor_shape(name)), dtype=trt.nptype(engine.get_tensor_dtype(name)))
            ptr = cuda.malloc(host.nbytes)
            allocations.append(ptr)
            context.set_tensor_address(name, ptr)
            outputs[name] = (host, ptr)
        if not context.execute_async_v3(stream):
            raise UserError("TensorRT failed to run the plan", where=str(plan_path), actual=logger.errors[-3:])
        cuda.synchronize(stream)
        result = {}
        for name, (host, ptr) in outputs.items():
            cuda.to_host(host, ptr)
            result[name] = host
        return result
    finally:
        for ptr in allocations:
            cuda.free(ptr)
        cuda.destroy(stream)


def settings_json(settings: BuilderSettings) -> str:
    return json.dumps(asdict(settings), indent=2, sort_keys=True, default=list)


__all__ = [
    "PRECISION_FLAGS", "BuilderSettings", "builder_settings", "profiles_from_spec", "check_profiles",
    "workspace_bytes", "plan_file_for", "timing_cache_name", "require_quantized", "same_tensorrt", "plan_entry",
    "expected_plans", "plan_mismatches", "check_built_plans", "require_build_host", "build_engine", "run_plan",
    "Cudart", "BuildHost", "EngineReport", "rebuild_command",
]
