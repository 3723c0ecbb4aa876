"""Step 3: the decision. A pure function (spec, hardware, server) -> plan, every choice with its reason.

Decisions are tables read top to bottom (first row that matches wins), never if/elif chains, so the
whole policy can be read in one screen and tested row by row on declared hardware.
"""

from __future__ import annotations

import json

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from . import defaults
from .catalogue import GPU, PRECISION_MIN_CC
from .errors import UserError
from .hardware import Hardware
from .onnx_torch import unsupported
from .plan import (Batching, Capabilities, Decision, EnsembleStep, InstanceGroup, Plan, Profile, SpecRef,
                   TensorConfig, TritonModel, Warmup, plan_filename)
from .servers import ServerTarget
from .spec import TOKEN_PIPELINES, ModelSpec, Spec, Tensor, triton_model_names

# --- backend ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendRow:
    """One way to serve a model, and everything that follows from choosing it (read by policy and build)."""
    backend: str
    runtime: str
    needs_gpu: bool | None          # True: only with a GPU; False: only without; None: either
    formats: frozenset[str]
    uses_gpu: bool                  # executes on the GPU when there is one
    tensorrt_build: bool | None     # True: only where plans can be built; False: only where not; None: either
    precisions: frozenset[str]      # what this row can execute
    builder: str                    # build step producing the artifacts (build.BUILDERS)
    artifacts: tuple[str, ...]      # files in the version folder (TensorRT: named per GPU architecture instead)
    reason: str
    code_template: str | None = None    # python backend: templates/python/<name> rendered to model.py
    code_files: tuple[str, ...] = ()    # python backend: modules copied beside model.py
    any_onnx_op: bool = True            # False: ONNX sources only with operators onnx_torch.OPS interprets
    cpu_bf16: bool = False              # True: only where the plan's CPU precision is BF16 (cpu_bf16_refusal)

    @property
    def label(self) -> str:
        return self.backend + (f" ({self.runtime})" if self.runtime else "")


_ONNXABLE = frozenset({"onnx", "sentence-transformers", "pytorch", "huggingface"})
BACKENDS = (
    BackendRow("tensorrt", "", True, _ONNXABLE, True, True,
               frozenset({"fp32", "tf32", "fp16", "bf16", "fp8", "int8", "fp4"}), "tensorrt", (),
               "TensorRT plan: the fastest engine on NVIDIA GPUs; built in the TensorRT container of the serving "
               "release so its TensorRT matches"),
    # The TensorRT execution accelerator takes FP16/INT8 through its precision_mode.
    # INT8 there would need the accelerator's own calibration table, which the kit does not make: not offered.
    BackendRow("onnxruntime", "tensorrt-ep", True, _ONNXABLE, True, False, frozenset({"fp32", "fp16"}),
               "onnx", ("model.onnx",),
               "no TensorRT build for this target: ONNX Runtime backend with the TensorRT execution accelerator "
               "(engines built at load time by the server's own TensorRT, precision from the plan)"),
    # The pytorch backend runs the TorchScript file as it was saved (FP32 here): nothing casts it at load.
    BackendRow("pytorch", "", None, frozenset({"torchscript"}), True, None, frozenset({"fp32"}), "torchscript",
               ("model.pt",), "TorchScript source runs natively in the pytorch backend (as saved: FP32)"),
    BackendRow("onnxruntime", "", False, _ONNXABLE, False, None, frozenset({"fp32", "int8"}), "onnx", ("model.onnx",),
               "no GPU: the ONNX Runtime backend on CPU (C++, no Python in the request path)"),
    BackendRow("python", "torch", True, frozenset({"sentence-transformers"}), True, None,
               frozenset({"fp32", "fp16", "bf16"}), "torch", ("hf/config.json", "hf/model.safetensors"),
               "this server has only the python backend: model.py runs the encoder in PyTorch on the GPU "
               "(tensors exchanged with Triton through DLPack)",
               code_template="encoder_torch.py.j2", code_files=("bert_encoder.py",)),
    # ONNX sources take it too (tritonkit/onnx_torch.py interprets the graph in torch for torch.export): no ONNX
    # Runtime CUDA build matches the CUDA 13 of the PyTorch wheels this server runs.
    BackendRow("python", "torch-program", True, frozenset({"pytorch", "huggingface", "onnx"}), True, None,
               frozenset({"fp32", "fp16", "bf16"}), "torch_program", ("model.pt2",),
               "this server has only the python backend: model.py runs the source's torch.export program in "
               "PyTorch on the GPU (tensors exchanged with Triton through DLPack; an ONNX graph is interpreted in "
               "torch first)",
               code_template="program_torch.py.j2", code_files=("opaque_gemms.py",), any_onnx_op=False),
    # CPUs with AMX-BF16: PyTorch's oneDNN kernels multiply BF16 on the AMX tiles; ONNX Runtime's CPU kernels have
    # no BF16 MatMul. The same model.py as the GPU rows, on CPU instances, eager (no torch.compile).
    BackendRow("python", "torch", False, frozenset({"sentence-transformers"}), False, None, frozenset({"bf16"}),
               "torch", ("hf/config.json", "hf/model.safetensors"), "BF16 on this CPU's AMX tiles: model.py runs the "
               "encoder in PyTorch, whose oneDNN kernels multiply BF16 there (ONNX Runtime's CPU kernels have no BF16 "
               "MatMul)", code_template="encoder_torch.py.j2", code_files=("bert_encoder.py",), cpu_bf16=True),
    BackendRow("python", "torch-program", False, frozenset({"pytorch", "huggingface", "onnx"}), False, None,
               frozenset({"bf16"}), "torch_program", ("model.pt2",), "BF16 on this CPU's AMX tiles: model.py runs the "
               "source's torch.export program in PyTorch, whose oneDNN kernels multiply BF16 there (ONNX Runtime's "
               "CPU kernels have no BF16 MatMul)", code_template="program_torch.py.j2",
               code_files=("opaque_gemms.py",), any_onnx_op=False, cpu_bf16=True),
    BackendRow("python", "onnxruntime", None, _ONNXABLE, False, None, frozenset({"fp32", "int8"}), "onnx", ("model.onnx",),
               "this server has only the python backend: model.py runs the exported ONNX graph with ONNX Runtime "
               "on the CPU", code_template="encoder_onnxruntime.py.j2"),
)

TORCH_RUNTIMES = ("torch", "torch-program")   # python-backend rows that run PyTorch (torch.compile on a GPU)


def choose_backend(model: ModelSpec, server: ServerTarget, gpu: GPU | None, caps: Capabilities,
                   cpu_features: tuple[str, ...] = ()) -> tuple[BackendRow, str]:
    """The first row that can run the model here, and why a row before it could not ("" when none was passed)."""
    passed = ""
    for row in BACKENDS:
        if (row.backend in server.backends and model.source.format in row.formats
                and row.needs_gpu in (None, gpu is not None)
                and (row.tensorrt_build is None or row.tensorrt_build == caps.tensorrt_build)
                and (not row.cpu_bf16 or cpu_bf16_refusal(model, cpu_features) is None)):
            missing = [] if row.any_onnx_op or model.source.format != "onnx" else unsupported(model.onnx_ops)
            if not missing:
                return row, passed
            passed = (f"not {row.label}: the ONNX graph uses operators tritonkit/onnx_torch.py cannot interpret "
                      f"for {'the GPU' if row.uses_gpu else 'PyTorch'} ({', '.join(missing)}); ")
    raise UserError(f"no backend of the {server.name} server can run a {model.source.format} model",
                    where=f"model {model.name}", actual=sorted(server.backends),
                    expected=f"a backend for {model.source.format}",
                    fix="pick another --server or convert the source (e.g. to ONNX)")


# --- precision -------------------------------------------------------------------------------------

# Order tried when the spec says "auto". First the quantized precisions, fewest bits first, each only where the
# spec gives its tolerance and calibration data: FP4 (Blackwell, cc 10.0), FP8 (Ada/Hopper, cc 8.9), INT8 (Tensor
# Cores since Turing, cc 7.5: NGC 26.10 supports nothing older); the build proves each against its tolerance.
# Then FP16 (10 mantissa bits, best-supported reduced precision in TensorRT and Triton), BF16 (range of FP32, for
# models that overflow FP16), FP32 last.
AUTO_PRECISION_ORDER = ("fp4", "fp8", "int8", "fp16", "bf16", "fp32")
# Not chosen automatically on a GPU seen through a CUDA MPS thread limit: on an H100 at
# CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30 (driver 580.159, torch 2.11+cu130), a plain FP16 GEMM (64x384 @ 384x1152)
# returned NaN and the MiniLM encoder's FP16 output had min cosine 0.065 vs FP32 (BF16 likewise), while the
# full GPU was exact (benchmarks/results/gpu/README.md). A spec may still request them; the build validates.
MPS_UNSAFE_PRECISIONS = frozenset({"fp16", "bf16"})
# Precisions that change the numbers enough to need calibration data or a pre-quantized model (on a GPU; on a
# CPU INT8 is ONNX Runtime's dynamic quantization: activations are scaled per batch at run time, no calibration).
NEEDS_CALIBRATION = frozenset({"int8", "fp8", "fp4"})
# Build steps that quantize a graph for a GPU from calibration data (qdq.py: ModelOpt PTQ, gated on the CPU).
QDQ_BUILDERS = frozenset({"tensorrt"})
# CPU instructions ONNX Runtime's INT8 GEMMs use, best first (hardware.CPU_FEATURES names -> what people call
# them). Without VNNI/AMX the AVX2 kernel multiplies u8 x s8 pairs into saturating int16 sums, so weights are
# quantized to 7 bits there (ONNX Runtime's reduce_range); the gate of tolerance.int8 proves either.
# Measured in-process, MiniLM, 2 cores, 2 sessions x 1 thread: Xeon with AMX/VNNI 2.7x FP32 (2.6-3.0x with every
# MatMul INT8 after SmoothQuant, 2026-11-30); EPYC (AVX2 only) 1.8x.
CPU_INT8_FEATURES = {"amx_int8": "AMX-INT8", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI", "avx2": "AVX2"}
CPU_INT8_WHY = ("ONNX Runtime dynamic quantization (INT8 per-channel weights, activations scaled at run time; "
                "SmoothQuant scaling where outlier channels fail the gate), proven by the gate of tolerance.int8")
CPU_NO_BF16_WHY = "ONNX Runtime's CPU kernels have no BF16 MatMul"
# Measured in-process on this project's 2-core Xeon (AMX), MiniLM, PyTorch 2 threads, batch 32 (2026-12-01):
# BF16 weights 1,139 sentences/s vs FP32 363/s; served figures in docs/precision.md.
CPU_BF16_WHY = ("AMX multiplies BF16 tiles, several times FP32's rate; the range of FP32 with 8 mantissa bits, proven "
                "by tolerance.bf16")


# An image classifier's INT8 gate runs on real images (tritonkit/image_data.py): without any, no INT8 is planned.
NO_GATE_IMAGES = ("no images in the spec to gate INT8 on (calibration: {path: images/}, or workload: {files: images/} "
                  "of the images it will serve)")


def cpu_int8_unit(features: tuple[str, ...]) -> str | None:
    """The best INT8 instruction set among `features` ("AMX-INT8", ..., "AVX2"), or None."""
    return next((name for f, name in CPU_INT8_FEATURES.items() if f in features), None)


def cpu_int8_refusal(model: ModelSpec, features: tuple[str, ...], row: BackendRow | None = None) -> str | None:
    """Why INT8 cannot run on this CPU (with `row`, when given), or None if it can."""
    return ("no tolerance.int8 in the spec" if "int8" not in model.tolerance else
            f"the {row.label} backend cannot run it" if row is not None and "int8" not in row.precisions else
            f"this CPU has none of {', '.join(CPU_INT8_FEATURES.values())}" if cpu_int8_unit(features) is None else
            NO_GATE_IMAGES if model.pipeline == "image-classification" and not model.image_folders else None)


def cpu_bf16_refusal(model: ModelSpec, features: tuple[str, ...]) -> str | None:
    """Why BF16 is not the CPU precision (PyTorch on AMX-BF16), or None if it is: the spec tolerates it, the CPU
    has AMX-BF16, and INT8 (fewer bits, measured as fast) is neither requested nor possible."""
    if "bf16" not in model.tolerance:
        return "no tolerance.bf16 in the spec"
    if "amx_bf16" not in features:
        return "this CPU has no AMX-BF16"
    if model.precision not in ("auto", "bf16"):
        return f"the spec requests {model.precision}"
    if model.precision == "auto" and cpu_int8_refusal(model, features) is None:
        return "INT8 is planned instead"
    return None


def cpu_precision(model: ModelSpec, row: BackendRow, features: tuple[str, ...]) -> tuple[str, str]:
    """INT8 where the CPU has INT8 dot-product instructions and the spec tolerates it, BF16 on a BF16 row (AMX-BF16,
    chosen by choose_backend), else FP32."""
    unit = cpu_int8_unit(features)
    if row.cpu_bf16:
        return "bf16", ("requested in the spec; " if model.precision == "bf16" else "") + (
            f"BF16 on the CPU with AMX-BF16 (PyTorch's oneDNN kernels): {CPU_BF16_WHY}" +
            (f" (not INT8: {cpu_int8_refusal(model, features)})" if model.precision == "auto" else ""))
    why_not = cpu_int8_refusal(model, features, row)
    if model.precision == "int8" and why_not:
        raise UserError("INT8 cannot run well on this CPU", where=f"model {model.name}: precision", actual=why_not,
                        expected=f"a CPU with {' or '.join(CPU_INT8_FEATURES.values())} and tolerance.int8"
                                 + (" and images to gate on" if model.pipeline == "image-classification" else ""),
                        fix="declare the target CPU's features (--cpu-features avx512_vnni,...), add what the "
                            "reason names to the spec, or request fp32")
    if model.precision in ("auto", "int8") and not why_not:
        weights = "8-bit weights" if unit != "AVX2" else "7-bit weights (no VNNI: against int16 saturation)"
        return "int8", f"INT8 on the CPU with {unit}, {weights}: {CPU_INT8_WHY}"
    if model.precision not in ("auto", "fp32"):
        raise UserError(f"{model.precision.upper()} cannot run on the CPU with the {row.label} backend",
                        where=f"model {model.name}: precision", actual=model.precision,
                        expected="fp32 or int8; bf16 on a CPU with AMX-BF16 and the embedded server (its python "
                                 "backend runs PyTorch)" + (f"; here: {why}" if (
                                     why := cpu_bf16_refusal(model, features)) and model.precision == "bf16" else ""))
    if "fp32" not in model.tolerance:
        raise UserError("this model runs on the CPU in FP32, but the spec gives no FP32 tolerance to validate "
                        "it against", where=f"model {model.name}: tolerance", actual=sorted(model.tolerance),
                        expected="an fp32 entry", fix="add tolerance.fp32 (e.g. {atol: 1.0e-4})")
    if model.precision == "fp32":
        return "fp32", "requested in the spec"
    why_not_bf16 = cpu_bf16_refusal(model, features) or f"the {row.label} backend cannot run it ({CPU_NO_BF16_WHY})"
    return "fp32", f"CPU execution: FP32 (not INT8: {why_not}; not BF16: {why_not_bf16})"


def choose_precision(model: ModelSpec, row: BackendRow, gpu: GPU | None,
                     cpu_features: tuple[str, ...] = ()) -> tuple[str, str]:
    """`gpu`: the device the row executes on (None = CPU, whose `cpu_features` then decide)."""
    if gpu is None:
        return cpu_precision(model, row, cpu_features)
    device = gpu.describe()
    supported, backend = row.precisions, row.label
    if model.precision != "auto":
        p = model.precision
        if gpu is not None and gpu.compute_capability < PRECISION_MIN_CC[p]:
            need = ".".join(map(str, PRECISION_MIN_CC[p]))
            raise UserError(f"{p.upper()} is not supported by {gpu.name}", where=f"model {model.name}: precision",
                            actual=f"compute capability {gpu.compute_capability[0]}.{gpu.compute_capability[1]}",
                            expected=f">= {need}", fix="request another precision or use precision: auto")
        if p not in supported:
            raise UserError(f"{p.upper()} cannot run on {device} with the {backend} backend",
                            where=f"model {model.name}: precision", actual=p, expected=f"one of {sorted(supported)}")
        if p in NEEDS_CALIBRATION and model.calibration is None:
            raise UserError(f"{p.upper()} needs calibration data or a quantized model; refusing to quantize blindly",
                            where=f"model {model.name}: precision", actual="no calibration",
                            expected="calibration: <path>", fix="add calibration data or use precision: auto")
        return p, f"requested in the spec; {device} supports it and tolerance.{p} will validate it"
    why_not = {}
    # a quantized precision the spec gives no tolerance for is not a candidate at all (and not worth a reason)
    candidates = [p for p in AUTO_PRECISION_ORDER if p not in NEEDS_CALIBRATION or p in model.tolerance]
    for p in candidates:
        why_not[p] = _refusal(p, model, row, gpu)
        if why_not[p] is None:
            skipped = "; ".join(f"not {q}: {why_not[q]}" for q in candidates[:candidates.index(p)])
            return p, f"{p.upper()} on {gpu.name} (cc {gpu.cc:.1f}): fastest precision the spec tolerates" + \
                (f" ({skipped})" if skipped else "")
    raise UserError("no precision is both supported here and allowed by the spec's tolerance",
                    where=f"model {model.name}: tolerance", actual=sorted(model.tolerance),
                    expected="; ".join(f"{p}: {why}" for p, why in why_not.items()),
                    fix="add a tolerance for a precision this GPU supports (fp32 always is)")


def _refusal(p: str, model: ModelSpec, row: BackendRow, gpu: GPU) -> str | None:
    """Why precision p cannot be chosen automatically, or None if it can."""
    from .trt_settings import PRECISIONS
    if p not in model.tolerance:
        return "no tolerance for it in the spec"
    if p not in row.precisions:
        return f"the {row.label} backend cannot run it"
    if gpu.compute_capability < PRECISION_MIN_CC[p]:
        return f"{gpu.name} is cc {gpu.cc:.1f}, {p.upper()} needs >= {'.'.join(map(str, PRECISION_MIN_CC[p]))}"
    if p in NEEDS_CALIBRATION and model.calibration is None:
        return "no calibration data in the spec to quantize with (calibration: {path: texts.txt | images/ | data.npz})"
    if p in NEEDS_CALIBRATION and row.builder not in QDQ_BUILDERS:
        return f"the {row.label} backend gets no calibrated Q/DQ graph built (TensorRT plans do)"
    if p in NEEDS_CALIBRATION and PRECISIONS[p].onnx != "ptq":
        return (f"ModelOpt's ONNX PTQ makes no {p.upper()} graph (modes int8, fp8, int4); request it with a source "
                f"ONNX already quantized to {p.upper()}")
    if gpu.mps_limited and p in MPS_UNSAFE_PRECISIONS:
        return (f"the GPU's SMs are limited by CUDA MPS, where {p.upper()} cuBLAS GEMMs returned NaN or wrong values "
                "on an H100 (driver 580, CUDA 13.0); ask for it in the spec to try it (the build validates it)")
    return None


# --- instances -------------------------------------------------------------------------------------

# GPU instances per GPU by SM count: a second instance overlaps one request's CPU work (I/O, Python)
# with another's kernels; on small GPUs two instances only split the SMs and add memory.
GPU_INSTANCES_BY_SMS = ((48, 2), (0, 1))
# CPU: independent single-threaded sessions beat one multi-threaded session for batched serving
# (measured on 2 cores, MiniLM: 2 instances x 1 thread served 273 sentences/s, 1 x 2 threads 183),
# because no thread waits on another's share of a small kernel. Past this many instances each
# instance gets more threads instead (one copy of the weights per instance).
CPU_INSTANCES_MAX = 8


# The python backend runs each instance's execute() in one Python thread: a second instance overlaps
# one batch's host work (tokens in, DLPack, responses out) with the other's kernels. For a small model
# that host work, not the SMs, is the limit (measured on an H100 at 38 SMs: 1 instance 1269
# sentences/s at concurrency 16, 2 instances 2258), so python-backend models get 2 on any GPU.
PYTHON_GPU_INSTANCES = 2


def gpu_instances(gpu: GPU, backend: str = "") -> tuple[int, str]:
    if backend == "python":
        return PYTHON_GPU_INSTANCES, (f"{PYTHON_GPU_INSTANCES} per GPU: each python-backend instance runs its "
                                      "host work in one thread; a second overlaps it with the other's kernels")
    count = next(n for min_sms, n in GPU_INSTANCES_BY_SMS if gpu.sm_count >= min_sms)
    return count, (f"{count} per GPU: {gpu.sm_count} SMs " +
                   ("leave room to overlap two requests" if count > 1 else "are too few to share between instances"))


def cpu_instances(cores: int, minimum: int = 1, requested: int | None = None) -> tuple[int, int, str]:
    """(instances, intra-op threads each, why); `requested`: the spec's count, which only the threads follow."""
    count = max(minimum, min(cores, CPU_INSTANCES_MAX))
    threads = max(1, cores // count)
    why = (f"{count} instance(s) x {threads} intra-op thread(s) = {count * threads} of {cores} cores: "
           "independent sessions batch better than one session's threads")
    why += "; " + QUEUED_LONE_INSTANCE if count > cores else "; no oversubscription"
    if requested is None:
        return count, threads, why
    threads = max(1, cores // requested)
    return requested, threads, f"from the spec, {threads} intra-op thread(s) each (the policy's choice: {why})"


def spec_gpu_instances(model: ModelSpec, count: int, why: str) -> tuple[int, str]:
    """The spec's `instances` per GPU where it gives one (memory may still cut it), else the policy's."""
    return (count, why) if model.instances is None else (model.instances,
                                                        f"from the spec (the policy's choice: {count}: {why})")


QUEUED_LONE_INSTANCE = (f"at least {defaults.MIN_INSTANCES_WITH_QUEUE_POLICY} because the queue is bounded: Triton's "
                        "batcher then leaves requests that arrive while every instance is busy until its "
                        f"{defaults.TRITON_BATCHER_RECHECK_US // 1000} ms idle re-check "
                        "(triton-inference-server/server#8870); a lone instance is busy most often")


def queued_gpu_instances(count: int, bounded: bool) -> tuple[int, str]:
    """GPU instances raised to the bounded-queue minimum (see defaults.MIN_INSTANCES_WITH_QUEUE_POLICY)."""
    if not bounded or count >= defaults.MIN_INSTANCES_WITH_QUEUE_POLICY:
        return count, ""
    return defaults.MIN_INSTANCES_WITH_QUEUE_POLICY, f"; raised to {defaults.MIN_INSTANCES_WITH_QUEUE_POLICY}: " + \
        QUEUED_LONE_INSTANCE


# --- batching --------------------------------------------------------------------------------------

def queue_timeout_us(budget_ms: float) -> int:
    """Queue timeout: twice the p99 budget, and never inside Triton's 500 ms batcher re-check + the budget."""
    budget_us = budget_ms * 1000
    return int(max(budget_us * defaults.QUEUE_TIMEOUT_BUDGET_SHARE, defaults.TRITON_BATCHER_RECHECK_US + budget_us))


def batching(model: ModelSpec, on_gpu: bool) -> tuple[Batching, str]:
    budget_us = model.p99_budget_ms * 1000
    size = model.max_batch_size * defaults.QUEUE_BATCHES
    timeout = queue_timeout_us(model.p99_budget_ms)
    bound = (f"queue bounded at {size} requests and {timeout} us (max of {defaults.QUEUE_TIMEOUT_BUDGET_SHARE:g}x "
             f"the budget and the batcher's {defaults.TRITON_BATCHER_RECHECK_US // 1000} ms re-check + the budget, "
             "so a request the batcher picks up late is still served) so overload is rejected, not queued "
             "without end")
    if not on_gpu:
        # A busy CPU instance lets the queue fill by itself; waiting while one is idle only adds latency
        # (measured: 2 ms of delay cost 2 ms at concurrency 1 and bought no throughput).
        return (Batching(max_queue_delay_us=0, max_queue_size=size, timeout_us=timeout),
                f"no batching delay: on the CPU requests batch up while instances are busy; {bound}")
    delay = int(min(defaults.QUEUE_DELAY_MAX_US, budget_us * defaults.QUEUE_DELAY_BUDGET_SHARE))
    return (Batching(max_queue_delay_us=delay, max_queue_size=size, timeout_us=timeout),
            f"wait <= {delay} us to fill a batch ({defaults.QUEUE_DELAY_BUDGET_SHARE:.0%} of the "
            f"{model.p99_budget_ms:g} ms p99 budget, capped at {defaults.QUEUE_DELAY_MAX_US} us): a fuller GPU batch "
            f"costs little more than a small one; {bound}")


# --- the models of each pipeline -------------------------------------------------------------------

def _tensors(model: ModelSpec, tensors: tuple[Tensor, ...], ragged: bool = False) -> tuple[TensorConfig, ...]:
    return tuple(TensorConfig(t.name, t.dtype, model.triton_dims(t),
                              ragged=ragged and any(isinstance(d, str) for d in t.dims[1:]))
                 for t in tensors)


def compile_mode(gpu: GPU | None, caps: Capabilities) -> tuple[str, str]:
    """torch.compile mode for the PyTorch path, from the GPU's SM count and inductor's own threshold."""
    if gpu is None:
        return "none", ("on the CPU: eager PyTorch, whose oneDNN kernels use AMX as they are (inductor's CPU code "
                        "would need a C++ compiler where the server runs)")
    if gpu.sm_count >= caps.inductor_min_sms:
        return "max-autotune", (f"{gpu.sm_count} SMs >= {caps.inductor_min_sms} ({caps.inductor_source}): "
                                "autotuned GEMM kernels pay off; CUDA graphs remove launch overhead")
    # Inductor checks the SM count (and warns) when it lowers a GEMM, in every mode: measured on an H100
    # limited to 38 SMs by CUDA MPS, mode="reduce-overhead" warned too. So GEMMs are kept from it as opaque
    # cuBLAS ops (bert_encoder.opaque_gemms): what it would have chosen below the threshold anyway. The
    # rest of max-autotune (tuned fused kernels, CUDA graphs) stays.
    return "max-autotune-aten-gemm", (
        f"{gpu.sm_count} SMs < {caps.inductor_min_sms} ({caps.inductor_source}): inductor would print 'Not enough "
        "SMs to use max_autotune_gemm mode' and fall back to cuBLAS GEMMs; max-autotune with the GEMMs handed "
        "to cuBLAS as opaque ops keeps its tuned fused kernels and CUDA graphs, and inductor never makes the "
        "SM check")


def fit_instances(count: int, model: ModelSpec, gpu: GPU) -> tuple[int, str]:
    """Fewer instances when their weights would not leave room for activations; refuse if one does not fit."""
    budget = gpu.memory_bytes * defaults.GPU_WEIGHTS_MEMORY_SHARE
    if model.weights_bytes == 0:
        return count, "weights size unknown: not checked against GPU memory"
    fits = int(budget // model.weights_bytes)
    if fits < 1:
        raise UserError("the model's weights do not fit this GPU", where=f"model {model.name}",
                        actual=f"{model.weights_bytes / 2**30:.1f} GiB of weights",
                        expected=f"<= {budget / 2**30:.1f} GiB ({defaults.GPU_WEIGHTS_MEMORY_SHARE:.0%} of "
                                 f"{gpu.name}'s {gpu.memory_gib:.0f} GiB)",
                        fix="use a GPU with more memory or a smaller/quantized model")
    n = min(count, fits)
    return n, (f"weights {model.weights_bytes / 2**20:.0f} MiB x {n} = {n * model.weights_bytes / 2**20:.0f} MiB of "
               f"{gpu.memory_gib:.0f} GiB" + (f" (cut from {count}: memory)" if n < count else ""))


def profiles(model: ModelSpec) -> tuple[Profile, ...]:
    """One TensorRT profile spanning each named axis' min/opt/max (the batch axis included)."""
    def shapes(which: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return tuple(model.shapes(model.inputs, which).items())
    return (Profile(min=shapes("min"), opt=shapes("opt"), max=shapes("max")),)


def _encoder(model: ModelSpec, name: str, hw: Hardware, server: ServerTarget, gpu: GPU | None,
             caps: Capabilities, fleet_ccs: tuple[tuple[int, int], ...],
             decide: Callable[[str, str, str, str], None]) -> TritonModel:
    row, passed = choose_backend(model, server, gpu, caps, hw.cpu_features if gpu is None else ())
    decide(name, "backend", row.label, passed + row.reason)
    device = gpu if row.uses_gpu else None
    precision, why = choose_precision(model, row, device, hw.cpu_features)
    decide(name, "precision", precision, why)
    params: list[tuple[str, str]] = []
    if device is not None:
        count, why = gpu_instances(device, row.backend)
        count, raised = queued_gpu_instances(count, bounded=model.max_batch_size > 0)
        count, why = spec_gpu_instances(model, count, why + raised)
        count, mem_why = fit_instances(count, model, device)
        if model.max_batch_size and count < defaults.MIN_INSTANCES_WITH_QUEUE_POLICY:
            mem_why += (f"; with one instance a burst may wait for the batcher's "
                        f"{defaults.TRITON_BATCHER_RECHECK_US // 1000} ms re-check")
        decide(name, "gpu_memory", f"{count} instance(s)", mem_why)
        # Pin GPUs only on a detected mixed host. A declared list is a fleet of hosts, each seeing its own
        # GPUs from index 0 (a Kubernetes pod sees one): there "all GPUs" is the only portable choice.
        mixed_host = hw.source == "detected" and len(hw.gpu_types()) > 1
        pinned = tuple(g.index for g in hw.gpus if g.name == device.name) if mixed_host else ()
        groups = (InstanceGroup("KIND_GPU", count, pinned),)
    else:
        count, threads, why = cpu_instances(
            hw.cpu_cores, defaults.MIN_INSTANCES_WITH_QUEUE_POLICY if model.max_batch_size else 1, model.instances)
        groups = (InstanceGroup("KIND_CPU", count),)
        params.append(("intra_op_thread_count", str(threads)))
    decide(name, "instances", f"{count} x {groups[0].kind}", why)
    mbs = model.max_batch_size
    decide(name, "max_batch_size", str(mbs), "from the spec" if mbs else "spec disables batching (0)")
    queue = None
    if mbs:
        queue, why = batching(model, device is not None)
        decide(name, "dynamic_batching", f"delay {queue.max_queue_delay_us} us, queue {queue.max_queue_size}", why)
    # The python model pads requests of different lengths into one batch itself (ragged batching);
    # zero padding is inert only where an attention mask says so, i.e. in the text-embedding encoder.
    # C++ backends concatenate tensors, so there only equal shapes may be batched.
    ragged = row.backend == "python" and mbs > 0 and model.pipeline in TOKEN_PIPELINES
    if ragged:
        decide(name, "ragged_batch", "on", "model.py pads each batch to its longest request, so requests of "
               "different sequence lengths still share one execution")
    warmup = Warmup(batch_size=1, inputs=tuple(
        (t.name, t.dtype, model.shape(model.triton_dims_named(t), "opt"))
        for t in model.inputs))
    decide(name, "warmup", "1 request of typical shape", "readiness then means warm: the first real request "
           "is not the one that pays for lazy initialisation")
    artifacts, cc_files, plan_profiles, accelerator = row.artifacts, (), (), ()
    if row.backend == "tensorrt":   # plans are named per GPU architecture: one repository can hold one for each
        ccs = fleet_ccs or (device.compute_capability,)
        cc_files = tuple((f"{cc[0]}.{cc[1]}", plan_filename(cc)) for cc in ccs)
        artifacts = (plan_filename(device.compute_capability),)
        plan_profiles = profiles(model)
        decide(name, "plan_files", ", ".join(f"{cc} -> {f}" for cc, f in cc_files),
               "a plan loads only on the GPU architecture that built it: cc_model_filenames picks each GPU's own")
        p = plan_profiles[0]
        decide(name, "profile", f"min {dict(p.min)} opt {dict(p.opt)} max {dict(p.max)}",
               "one optimization profile spanning the spec's named axes (batch up to max_batch_size)")
    if row.runtime == "tensorrt-ep":
        accelerator = (("precision_mode", precision.upper()), ("max_workspace_size_bytes", str(1 << 30)))
    if row.backend == "python":
        params += [("runtime", row.runtime), ("precision", precision)]
        params.append(("model_dir", "hf") if row.runtime == "torch" else ("model_file", artifacts[0]))
    if row.runtime in TORCH_RUNTIMES:
        mode, why = compile_mode(device, caps)
        decide(name, "torch_compile", mode, why)
        params += [("compile_mode", mode), ("max_length", str(model.size(model.inputs[0].dims[-1], "max")))]
    return TritonModel(
        name=name, role="encoder" if model.pipeline != "none" else "model", source_model=model.name,
        backend=row.backend, runtime=row.runtime, builder=row.builder, precision=precision, max_batch_size=mbs,
        inputs=_tensors(model, model.inputs, ragged), outputs=_tensors(model, model.outputs),
        instances=groups, batching=queue, parameters=tuple(params), artifacts=artifacts,
        code_template=row.code_template, code_files=row.code_files, warmup=warmup, profiles=plan_profiles,
        cc_model_filenames=cc_files, accelerator=accelerator)


def _tokenizer(model: ModelSpec, tok_name: str, encoder: TritonModel,
               decide: Callable[[str, str, str, str], None]) -> TritonModel:
    # Requests padded to a multiple of this many tokens: C++ backends only batch equal shapes, so
    # bucketing sequence lengths lets the dynamic batcher combine more requests.
    pad_multiple = 1 if encoder.backend == "python" else 16
    tokenizer = replace(_python_step(
        model, tok_name, "tokenizer", "tokenizers",
        (TensorConfig(model.text_input, "BYTES", (1,) if model.max_batch_size else (-1,)),),
        tuple(TensorConfig(t.name, t.dtype, model.triton_dims(t)) for t in model.inputs),
        (("tokenizer_file", "tokenizer.json"), ("meta_file", "tokenizer_meta.json"),
         ("max_length", str(model.size(model.inputs[0].dims[-1], "max"))), ("pad_to_multiple_of", str(pad_multiple))),
        "tokenizer.py.j2"), builder="tokenizer", artifacts=("tokenizer.json", "tokenizer_meta.json"))
    tok_count = tokenizer.instances[0].count
    decide(tok_name, "backend", "python (tokenizers)", "tokenization is Python-side work; the Rust `tokenizers` "
           "library encodes a whole batch in one call")
    decide(tok_name, "instances", f"{tok_count} x KIND_CPU", "a batched tokenizer call takes well under a "
           "millisecond, so one instance would do the work" + (f"; {QUEUED_LONE_INSTANCE}" if tok_count > 1 else ""))
    if pad_multiple > 1:
        decide(tok_name, "pad_to_multiple_of", str(pad_multiple), "the encoder backend batches only equal shapes; "
               "bucketed lengths let more requests share a batch")
    return tokenizer


def _text_embedding(model: ModelSpec, hw: Hardware, server: ServerTarget, gpu: GPU | None, caps: Capabilities,
                    fleet_ccs: tuple, decide: Callable[[str, str, str, str], None]) -> tuple[TritonModel, ...]:
    ens_name, tok_name, enc_name = triton_model_names(model)
    encoder = _encoder(model, enc_name, hw, server, gpu, caps, fleet_ccs, decide)
    tokenizer = _tokenizer(model, tok_name, encoder, decide)
    text = tokenizer.inputs[0]
    out = model.outputs[0]
    ensemble = TritonModel(
        name=ens_name, role="ensemble", source_model=model.name, backend="ensemble", max_batch_size=model.max_batch_size,
        inputs=(text,), outputs=(TensorConfig(out.name, out.dtype, model.triton_dims(out)),),
        steps=(
            EnsembleStep(tok_name, ((model.text_input, model.text_input),),
                         tuple((t.name, t.name) for t in model.inputs)),
            EnsembleStep(enc_name, tuple((t.name, t.name) for t in model.inputs), ((out.name, out.name),)),
        ))
    decide(ens_name, "pipeline", f"{tok_name} -> {enc_name}", "text in, embedding out: clients send strings and "
           "never need the tokenizer")
    return ensemble, tokenizer, encoder


def _classify_post(model: ModelSpec, name: str, decide: Callable[[str, str, str, str], None]) -> TritonModel:
    decide(name, "backend", "python (numpy)", f"softmax over {len(model.labels)} logits and the top-1 label by name "
           "(config.id2label or the spec's labels)")
    logits = model.outputs[0]
    return _python_step(
        model, name, "postprocess", "numpy", (TensorConfig(logits.name, "FP32", model.triton_dims(logits)),),
        (TensorConfig("probabilities", "FP32", (len(model.labels),)), TensorConfig("label", "BYTES", (1,))),
        (("labels", json.dumps(list(model.labels))),), "classify_postprocess.py.j2", ("image_ops.py",))


def _text_classification(model: ModelSpec, hw: Hardware, server: ServerTarget, gpu: GPU | None, caps: Capabilities,
                         fleet_ccs: tuple, decide: Callable[[str, str, str, str], None]) -> tuple[TritonModel, ...]:
    ens_name, tok_name, clf_name, post_name = triton_model_names(model)
    classifier = _encoder(model, clf_name, hw, server, gpu, caps, fleet_ccs, decide)
    tokenizer = _tokenizer(model, tok_name, classifier, decide)
    post = _classify_post(model, post_name, decide)
    logits = model.outputs[0]
    ensemble = TritonModel(
        name=ens_name, role="ensemble", source_model=model.name, backend="ensemble", max_batch_size=model.max_batch_size,
        inputs=tokenizer.inputs, outputs=(TensorConfig(logits.name, "FP32", model.triton_dims(logits)), *post.outputs),
        steps=(EnsembleStep(tok_name, ((model.text_input, model.text_input),),
                            tuple((t.name, t.name) for t in model.inputs)),
               EnsembleStep(clf_name, tuple((t.name, t.name) for t in model.inputs), ((logits.name, logits.name),)),
               EnsembleStep(post_name, ((logits.name, logits.name),),
                            (("probabilities", "probabilities"), ("label", "label")))))
    decide(ens_name, "pipeline", f"{tok_name} -> {clf_name} -> {post_name}",
           "text in; logits, probabilities and the label out: clients send strings")
    return ensemble, tokenizer, classifier, post


def _python_step(model: ModelSpec, name: str, role: str, runtime: str, inputs, outputs, parameters, template: str,
                 code_files: tuple[str, ...] = ()) -> TritonModel:
    """A pre/post-processing python model: CPU, batched like the tokenizer (bounded queue, >= 2 instances)."""
    mbs = model.max_batch_size
    queue, count = (batching(model, on_gpu=False)[0], defaults.MIN_INSTANCES_WITH_QUEUE_POLICY) if mbs else (None, 1)
    return TritonModel(name=name, role=role, source_model=model.name, backend="python", runtime=runtime,
                       max_batch_size=mbs, inputs=inputs, outputs=outputs,
                       instances=(InstanceGroup("KIND_CPU", count),), batching=queue, parameters=parameters,
                       code_template=template, code_files=code_files)


def _image_classification(model: ModelSpec, hw: Hardware, server: ServerTarget, gpu: GPU | None, caps: Capabilities,
                          fleet_ccs: tuple, decide: Callable[[str, str, str, str], None]) -> tuple[TritonModel, ...]:
    ens_name, pre_name, clf_name, post_name = triton_model_names(model)
    classifier = _encoder(model, clf_name, hw, server, gpu, caps, fleet_ccs, decide)
    one = (1,) if model.max_batch_size else (-1,)
    image = TensorConfig(model.image_input, "BYTES", one)
    pixels, logits = model.inputs[0], model.outputs[0]
    prep = model.image
    pre = _python_step(
        model, pre_name, "preprocess", "pillow", (image,), (TensorConfig(pixels.name, "FP32", model.triton_dims(pixels)),),
        (("size", json.dumps(prep.size if isinstance(prep.size, int) else list(prep.size))),
         ("crop", json.dumps(list(prep.crop))), ("mode", prep.mode),
         ("mean", json.dumps(list(prep.mean))), ("std", json.dumps(list(prep.std))), ("resample", prep.resample),
         ("max_bytes", str(defaults.IMAGE_MAX_BYTES)), ("max_pixels", str(defaults.IMAGE_MAX_PIXELS))),
        "image_preprocess.py.j2", ("image_ops.py",))
    resize = (f"the shortest edge to {prep.size}" if isinstance(prep.size, int) else f"to {prep.size[0]}x{prep.size[1]}")
    decide(pre_name, "backend", "python (pillow)", f"decode (JPEG/PNG, at most {defaults.IMAGE_MAX_PIXELS:,} pixels), "
           f"{prep.mode}, resize {resize} ({prep.resample}), centre crop {prep.crop[0]}x{prep.crop[1]}, "
           f"normalise with {prep.origin}'s mean/std: the classifier's own transforms, on the server")
    post = _classify_post(model, post_name, decide)
    ensemble = TritonModel(
        name=ens_name, role="ensemble", source_model=model.name, backend="ensemble", max_batch_size=model.max_batch_size,
        inputs=(image,), outputs=post.outputs,
        steps=(EnsembleStep(pre_name, ((model.image_input, model.image_input),), ((pixels.name, pixels.name),)),
               EnsembleStep(clf_name, ((pixels.name, pixels.name),), ((logits.name, logits.name),)),
               EnsembleStep(post_name, ((logits.name, logits.name),),
                            (("probabilities", "probabilities"), ("label", "label")))))
    decide(ens_name, "pipeline", f"{pre_name} -> {clf_name} -> {post_name}",
           "encoded image in, probabilities and label out: clients send the file's bytes")
    return ensemble, pre, classifier, post


def _single(model: ModelSpec, hw: Hardware, server: ServerTarget, gpu: GPU | None, caps: Capabilities,
            fleet_ccs: tuple, decide: Callable[[str, str, str, str], None]) -> tuple[TritonModel, ...]:
    return (_encoder(model, model.name, hw, server, gpu, caps, fleet_ccs, decide),)


PIPELINES = {"text-embedding": _text_embedding, "text-classification": _text_classification,
             "image-classification": _image_classification, "none": _single}


def plan(spec: Spec, hardware: Hardware, server: ServerTarget, gpu: GPU | None = None,
         caps: Capabilities = Capabilities(), fleet_ccs: tuple[tuple[int, int], ...] = ()) -> Plan:
    """Decide everything for one GPU type (default: the GPU of `hardware`, or CPU when it has none).

    `fleet_ccs`: every compute capability of the fleet this plan is one variant of, so TensorRT
    configs name a plan file for each (cc_model_filenames).
    """
    if gpu is None and hardware.gpus:
        types = hardware.gpu_types()
        if len(types) > 1:
            raise UserError("several GPU types given; a single plan targets one", where="--gpu",
                            actual=[g.name for g in types], expected="one GPU type",
                            fix="use plan_fleet (the CLI does) to render one config variant per GPU type")
        gpu = types[0]
    if gpu is not None and gpu.compute_capability < server.min_compute_capability:
        need = ".".join(map(str, server.min_compute_capability))
        raise UserError(f"the {server.name} server does not support {gpu.name}", where="--gpu",
                        actual=f"compute capability {gpu.cc:.1f}", expected=f">= {need} ({server.note.split(';')[0]})",
                        fix="serve this GPU with --server embedded, or use a newer GPU")
    decisions: list[Decision] = []

    def decide(subject: str, key: str, value: str, reason: str) -> None:
        decisions.append(Decision(subject, key, value, reason))

    decide("server", "target", f"{server.name} (Triton {server.triton_version})", server.note)
    models: list[TritonModel] = []
    for m in spec.models:
        models.extend(PIPELINES[m.pipeline](m, hardware, server, gpu, caps, fleet_ccs, decide))
    # Only models whose instance count came from the cores make them part of the plan (the tokenizer's is fixed).
    uses_cores = any(g.kind == "KIND_CPU" for m in models if m.role != "tokenizer" for g in m.instances)
    # ...and the CPU's features only when a model on it could have been INT8 or BF16 (they decided its precision).
    uses_features = any(g.kind == "KIND_CPU" and {"int8", "bf16"} & set(spec.model(m.source_model).tolerance)
                        for m in models if m.role in ("encoder", "model") for g in m.instances)
    target = hardware.planned(uses_cores, uses_features)
    decisions.insert(1, Decision("server", "hardware", gpu.describe() if gpu else "CPU only", target.describe()))
    return Plan(spec=spec_ref(spec), server=server, hardware=target, gpu=gpu, models=tuple(models), caps=caps,
                decisions=tuple(decisions))


def spec_ref(spec: Spec) -> SpecRef:
    """The spec's path as a plan records it: relative to the project root when inside it, so the plan
    holds no path of the machine that made it."""
    path = Path(spec.path).resolve()
    try:
        shown = str(path.relative_to(defaults.PROJECT_ROOT))
    except ValueError:
        shown = str(path)
    return SpecRef(path=shown, sha256=spec.sha256)


def plan_fleet(spec: Spec, hardware: Hardware, server: ServerTarget,
               caps: Capabilities = Capabilities()) -> tuple[Plan, ...]:
    """One plan per GPU type (one for CPU-only), plus a CPU-only one for a fleet with CPU nodes; together
    they render one repository for the fleet."""
    types = hardware.gpu_types()
    cpu = (plan(spec, replace(hardware, gpus=()), server, caps=caps),) if hardware.cpu_nodes and types else ()
    if len(types) <= 1 and not cpu:
        return (plan(spec, hardware, server, caps=caps),)
    ccs = tuple(sorted({g.compute_capability for g in types}))
    return tuple(plan(spec, hardware, server, gpu=g, caps=caps, fleet_ccs=ccs) for g in types) + cpu
