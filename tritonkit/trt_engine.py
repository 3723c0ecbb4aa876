"""Builder settings -> plan file, and plan -> outputs: the TensorRT Python API (needs ``tensorrt`` and a GPU).

Written against the documented TensorRT 11 Python API (11.4 in NGC 26.10; not run on these machines, see README's
support matrix): strongly typed networks, types from the ONNX, no precision flags. Plans are built only where the
serving release's TensorRT runs on the target architecture (:func:`require_build_host`): in
``nvcr.io/nvidia/tensorrt:<release>-py3`` on a GPU of that compute capability; anywhere else it refuses
with the command that does it right. ``import tensorrt`` (and numpy) happen only inside the functions
that call them, so importing this module costs nothing on a machine without TensorRT.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import defaults
from .catalogue import GPU
from .errors import UserError
from .plan import Plan
from .trt_manifest import rebuild_command, same_tensorrt
from .trt_settings import BuilderSettings, cc_text


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
    rebuild = rebuild or rebuild_command("model_repository", force=False)
    try:
        import tensorrt as trt
    except ImportError as e:
        raise UserError("TensorRT is not installed here, and this plan has TensorRT plans to build",
                        actual=f"import tensorrt: {e}", expected=f"the TensorRT of {defaults.NGC_TENSORRT_IMAGE}",
                        fix="build in the serving release's TensorRT container on a GPU of the target "
                            f"architecture: {rebuild} (docker compose: the trt-build service). Or plan without "
                            "TensorRT plans: re-render with --no-tensorrt (ONNX Runtime with its TensorRT "
                            "execution accelerator; the server builds engines at load time), --gpu none (CPU) or "
                            "--server embedded") from None
    if not hasattr(trt, "Builder"):  # the PyPI 'tensorrt' placeholder imports but has no API
        raise UserError("the installed 'tensorrt' package is a placeholder without the TensorRT API",
                        actual=getattr(trt, "__file__", "?"), expected=defaults.NGC_TENSORRT_IMAGE,
                        fix=f"build in {defaults.NGC_TENSORRT_IMAGE}: {rebuild}")
    return trt


def require_build_host(plan: Plan, targets: Sequence[tuple[int, int]], *, repo: Path | str = "model_repository") -> BuildHost:
    """Refuse (UserError) unless this process can build plans the plan's server will load on ``targets``."""
    rebuild = rebuild_command(repo, force=False)
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


def _member(trt, enum, name: str, settings: BuilderSettings):
    """``enum.<name>``, or a UserError naming the TensorRT this build needs (the settings are TensorRT 11's)."""
    member = getattr(enum, name, None)
    if member is None:
        raise UserError(f"this TensorRT has no {enum.__name__}.{name}", actual=trt.__version__,
                        expected=f"TensorRT {settings.tensorrt_version}", fix=f"build in {settings.build_image}")
    return member


def _bits(trt, enum, names, settings: BuilderSettings) -> int:
    return sum(1 << int(_member(trt, enum, name, settings)) for name in names)


def build_engine(settings: BuilderSettings, onnx_path: Path, out_path: Path, cache_path: Path, *,
                 on_phase: Callable[[str, int, int], None] | None = None) -> EngineReport:
    """ONNX -> serialized plan at ``out_path`` with ``settings``: a strongly typed network, so every layer runs in
    the type the ONNX gives it (AutoCast / Q/DQ graphs from qdq.py). The timing cache at ``cache_path`` is loaded
    (if present and from this device) and saved back, so the next build of the same layers is fast."""
    trt = import_tensorrt()
    started = time.perf_counter()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_bits(trt, trt.NetworkDefinitionCreationFlag, settings.network_flags, settings))
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
    for name in settings.cleared_flags:
        config.clear_flag(_member(trt, trt.BuilderFlag, name, settings))
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
