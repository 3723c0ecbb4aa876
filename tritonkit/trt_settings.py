"""Plan -> TensorRT builder settings, as a value (pure: tested on any machine, no TensorRT needed).

Everything the builder is told for one plan file comes from the plan: how the ONNX gets the plan's precision
(a table), optimization profiles (the plan's, from the spec's named axes, batch included), workspace (from the
GPU's memory), optimization level, the file name per compute capability, the timing cache name and the
equivalent ``trtexec`` command for ``reproduce.sh``.

TensorRT 11 (NGC 26.06 and later) builds strongly typed networks only: BuilderFlag FP16/BF16/INT8/FP8/FP4, the
INT8 calibrator and trtexec ``--fp16/--int8/--best/--calib`` are gone, and every tensor's type comes from the
ONNX (https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-c-api-reference.html).
So a precision here names the ONNX it needs (tritonkit/qdq.py writes it: ModelOpt AutoCast for FP16/BF16,
calibrated Q/DQ for INT8/FP8), and the builder itself is told only STRONGLY_TYPED (accepted and implied in 11)
and, for FP32, no TF32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import defaults
from .catalogue import GPU
from .errors import UserError
from .plan import Plan, Profile, TritonModel, plan_filename

# Creation flags of every network: types from the ONNX. trtexec's --stronglyTyped is implied in TensorRT 11 (a
# no-op) and kept so the line says what the builder was told.
NETWORK_FLAGS = ("STRONGLY_TYPED",)
TRTEXEC_NETWORK = ("--stronglyTyped",)


@dataclass(frozen=True)
class PrecisionRecipe:
    """What one precision means to a TensorRT 11 build: the ONNX it is built from, and the builder's math flags."""
    onnx: str                    # how qdq.py makes it: "fp32" (the graph as exported), "autocast", "ptq", "prequantized"
    mode: str | None             # AutoCast low_precision_type / ModelOpt PTQ quantize_mode
    clear: tuple[str, ...]       # trt.BuilderFlag members cleared
    trtexec: tuple[str, ...]     # the same for trtexec
    note: str

    @property
    def quantized(self) -> bool:
        return self.onnx in ("ptq", "prequantized")


# Table, read by builder_settings; a precision missing here raises. TF32 (a math mode, not a type) is on by
# default in TensorRT, so FP32 clears it: FP32 tolerances (1e-4) are tighter than TF32's 10-bit mantissa allows.
# FP4: ModelOpt 0.47's ONNX PTQ has modes int8, fp8 and int4 only, so an FP4 plan needs a source ONNX that
# already carries FP4 Q/DQ nodes (e.g. exported from modelopt.torch).
PRECISIONS: dict[str, PrecisionRecipe] = {
    "fp32": PrecisionRecipe("fp32", None, ("TF32",), ("--noTF32",), "the FP32 graph, FP32 kernels (TF32 cleared)"),
    "tf32": PrecisionRecipe("fp32", None, (), (), "the FP32 graph, TF32 tensor cores for its math (TensorRT's default)"),
    "fp16": PrecisionRecipe("autocast", "fp16", (), (), "ModelOpt AutoCast FP16 graph (FP32 where values overflow FP16)"),
    "bf16": PrecisionRecipe("autocast", "bf16", (), (), "ModelOpt AutoCast BF16 graph"),
    "int8": PrecisionRecipe("ptq", "int8", (), (), "INT8 Q/DQ graph from ModelOpt PTQ on the calibration data"),
    "fp8": PrecisionRecipe("ptq", "fp8", (), (), "FP8 Q/DQ graph from ModelOpt PTQ on the calibration data"),
    "fp4": PrecisionRecipe("prequantized", None, (), (), "FP4 Q/DQ graph quantized before tritonkit (the ONNX source)"),
}


@dataclass(frozen=True)
class BuilderSettings:
    """Everything the TensorRT builder is told for one plan file; ``record()`` goes into build.json."""
    model: str
    plan_file: str                                  # plan_filename(cc), the name cc_model_filenames points at
    gpu: str
    compute_capability: tuple[int, int]
    precision: str
    onnx: str                                       # the precision's PrecisionRecipe.note: what the ONNX is
    network_flags: tuple[str, ...]                  # trt.NetworkDefinitionCreationFlag members
    cleared_flags: tuple[str, ...]                  # trt.BuilderFlag members cleared
    trtexec_flags: tuple[str, ...]
    quantized_onnx_required: bool
    profiles: tuple[Profile, ...]
    workspace_bytes: int
    optimization_level: int
    tensorrt_version: str                           # the serving release's TensorRT: the build must run it
    build_image: str
    timing_cache: str                               # file name under the cache dir

    @property
    def cc(self) -> str:
        return cc_text(self.compute_capability)

    def record(self) -> dict:
        return {"plan_file": self.plan_file, "gpu": self.gpu, "compute_capability": self.cc,
                "precision": self.precision, "onnx_precision": self.onnx, "network_flags": list(self.network_flags),
                "cleared_flags": list(self.cleared_flags), "profiles": [profile_record(p) for p in self.profiles],
                "workspace_bytes": self.workspace_bytes, "builder_optimization_level": self.optimization_level,
                "tensorrt": self.tensorrt_version, "build_image": self.build_image, "timing_cache": self.timing_cache}

    def trtexec_command(self, onnx: str | Path, plan: str | Path, timing_cache: str | Path) -> list[str]:
        """The equivalent trtexec command line (TensorRT 11: no precision flags, the ONNX carries the types).
        Several profiles: one --minShapes/--optShapes/--maxShapes triple per profile, in order."""
        cmd = ["trtexec", f"--onnx={onnx}", f"--saveEngine={plan}"]
        for p in self.profiles:
            cmd += [f"--minShapes={_shapes_arg(p.min)}", f"--optShapes={_shapes_arg(p.opt)}",
                    f"--maxShapes={_shapes_arg(p.max)}"]
        cmd += [*self.trtexec_flags, f"--builderOptimizationLevel={self.optimization_level}",
                f"--memPoolSize=workspace:{self.workspace_bytes // 2**20}",  # MiB (trtexec's default unit)
                f"--timingCacheFile={timing_cache}", "--skipInference"]
        return cmd


def _shapes_arg(shapes: Sequence[tuple[str, Sequence[int]]]) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes)


def profile_record(p: Profile) -> dict:
    return {"min": {n: list(d) for n, d in p.min}, "opt": {n: list(d) for n, d in p.opt},
            "max": {n: list(d) for n, d in p.max}}


def check_profiles(model: TritonModel) -> None:
    """Refuse profiles Triton could not serve with this config (before spending minutes on a build).

    Every input in every profile, full rank (batch included when batching), min <= opt <= max, fixed
    dims equal to the config's, and batch 1 .. max_batch_size covered: an engine whose profile stops
    short of max_batch_size fails in Triton with "expected dim 0 between 1 and N".
    """
    where = f"{model.name}: TensorRT profiles"
    profiles = model.profiles
    if not profiles:
        # The policy writes the profiles into the plan; guessing them here could disagree with the config.
        raise UserError("the plan carries no TensorRT optimization profile", where=where,
                        actual="profiles: []", expected="one profile per the spec's named axes (from the policy)",
                        fix="re-render the repository (tritonkit render) so plan.json carries the profiles, then build")
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


def builder_settings(plan: Plan, model: TritonModel, *, gpu: GPU | None = None) -> BuilderSettings:
    """Pure: what TensorRT is told for ``model``'s plan on ``gpu`` (default: the plan's GPU)."""
    gpu = gpu or plan.gpu
    if gpu is None:
        raise UserError("a TensorRT plan needs a GPU target", where=model.name, actual="no GPU in the plan",
                        expected="--gpu auto on a GPU host, or --gpu <name>")
    if plan.server.tensorrt_version is None:
        raise UserError(f"the {plan.server.name} server cannot load TensorRT plans", where=model.name,
                        actual=plan.server.name, expected="a server with a TensorRT backend (--server ngc)")
    try:
        recipe = PRECISIONS[model.precision]
    except KeyError:
        raise UserError("no TensorRT build recipe for this precision", where=f"{model.name}: precision",
                        actual=model.precision, expected=sorted(PRECISIONS)) from None
    check_profiles(model)
    cc = tuple(gpu.compute_capability)
    return BuilderSettings(
        model=model.name, plan_file=plan_file_for(model, cc), gpu=gpu.name, compute_capability=cc,
        precision=model.precision, onnx=recipe.note, network_flags=NETWORK_FLAGS, cleared_flags=recipe.clear,
        trtexec_flags=(*TRTEXEC_NETWORK, *recipe.trtexec), quantized_onnx_required=recipe.quantized,
        profiles=tuple(model.profiles), workspace_bytes=workspace_bytes(gpu.memory_bytes),
        optimization_level=defaults.TRT_BUILDER_OPTIMIZATION_LEVEL, tensorrt_version=plan.server.tensorrt_version,
        build_image=defaults.NGC_TENSORRT_IMAGE,
        timing_cache=timing_cache_name(cc, plan.server.tensorrt_version))


def require_quantized(settings: BuilderSettings, onnx_ops: Mapping[str, int], *, where: str) -> None:
    """INT8/FP8/FP4 plans come from explicitly quantized ONNX (Q/DQ nodes): TensorRT 11 has no other way; refuse
    a graph without them rather than build a plan of another precision."""
    if settings.quantized_onnx_required and not onnx_ops:
        raise UserError(f"{settings.precision.upper()} needs an explicitly quantized ONNX (QuantizeLinear/"
                        "DequantizeLinear nodes); this graph has none", where=where, actual="no Q/DQ nodes",
                        expected=f"{settings.onnx}",
                        fix="give calibration data in the spec (the build quantizes INT8/FP8 with ModelOpt), point "
                            "source.path at an ONNX quantized to this precision (format: onnx), or choose "
                            "precision: auto")
