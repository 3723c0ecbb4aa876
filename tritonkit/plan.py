"""The plan: what the policy decided, as plain values. Render, build, serve and bench all read it.

It travels between the steps as `plan.json` at the root of the model repository (plan_file.py):
everything here is a decision or an input that mattered (the spec's digest, the hardware the plan is
*for*, the server target, toolchain facts), never a fact about the host that happened to render it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from . import defaults
from .catalogue import GPU
from .dtypes import DTYPES
from .hardware import Hardware
from .servers import ServerTarget


@dataclass(frozen=True)
class Decision:
    subject: str        # Triton model name (or "server")
    key: str            # e.g. "backend", "precision"
    value: str
    reason: str


@dataclass(frozen=True)
class TensorConfig:
    name: str
    dtype: str                      # spec dtype, e.g. "FP32"
    dims: tuple[int, ...]           # Triton dims: batch dim excluded when batching, -1 = dynamic
    ragged: bool = False            # allow_ragged_batch: the model pads requests of different lengths itself

    @property
    def data_type(self) -> str:
        return DTYPES[self.dtype].config


@dataclass(frozen=True)
class InstanceGroup:
    kind: str                       # "KIND_CPU" | "KIND_GPU"
    count: int
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class Batching:
    max_queue_delay_us: int
    max_queue_size: int = 0         # 0 and 0: no default_queue_policy (unbounded; Triton's batcher prefetches)
    timeout_us: int = 0             # queued longer than this -> rejected (UNAVAILABLE), load is shed

    @property
    def bounded(self) -> bool:
        return bool(self.max_queue_size or self.timeout_us)


@dataclass(frozen=True)
class EnsembleStep:
    model: str
    input_map: tuple[tuple[str, str], ...]    # (step's input name, ensemble tensor)
    output_map: tuple[tuple[str, str], ...]   # (step's output name, ensemble tensor)


@dataclass(frozen=True)
class Warmup:
    batch_size: int
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...]   # (name, dtype, dims) filled with zeros


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimization profile: full shapes (batch included) per input."""
    min: tuple[tuple[str, tuple[int, ...]], ...]
    opt: tuple[tuple[str, tuple[int, ...]], ...]
    max: tuple[tuple[str, tuple[int, ...]], ...]


def plan_filename(compute_capability: tuple[int, int]) -> str:
    """TensorRT plan file for one GPU architecture; `cc_model_filenames` maps each cc to its file."""
    return f"model.sm{compute_capability[0]}{compute_capability[1]}.plan"


@dataclass(frozen=True)
class Capabilities:
    """What the toolchain can do, passed to the policy like hardware (never queried there) and recorded."""
    tensorrt_build: bool = True        # a TensorRT of the serving release can build plans (the NGC container)
    inductor_min_sms: int = defaults.INDUCTOR_MIN_SMS   # torch._inductor's max_autotune GEMM threshold
    inductor_source: str = "tritonkit default"          # where that number came from, for --explain


@dataclass(frozen=True)
class SpecRef:
    """The spec a plan was made from: later steps load it from here and refuse it if it changed since."""
    path: str                       # relative to the project root when inside it, else absolute
    sha256: str                     # of the file's bytes


@dataclass(frozen=True)
class TritonModel:
    name: str
    role: str                       # "ensemble" | "tokenizer" | "encoder" | "model"
    source_model: str               # the spec model it comes from
    backend: str                    # "ensemble" | "python" | "onnxruntime" | "tensorrt" | "pytorch"
    max_batch_size: int
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    precision: str = "fp32"
    runtime: str = ""               # python backend only: what model.py runs ("onnxruntime", "tokenizers")
    builder: str = ""               # build step that produces `artifacts` (build.BUILDERS); "" = nothing to build
    instances: tuple[InstanceGroup, ...] = ()
    batching: Batching | None = None
    parameters: tuple[tuple[str, str], ...] = ()
    artifacts: tuple[str, ...] = ()  # files in the version folder that the build step produces
    code_template: str | None = None  # templates/python/<name> rendered to 1/model.py
    code_files: tuple[str, ...] = ()  # templates/python/<name> copied beside model.py (modules it imports)
    steps: tuple[EnsembleStep, ...] = ()
    warmup: Warmup | None = None
    profiles: tuple[Profile, ...] = ()                       # TensorRT builder profiles (tensorrt backend)
    accelerator: tuple[tuple[str, str], ...] = ()            # ONNX Runtime's TensorRT execution accelerator
    cc_model_filenames: tuple[tuple[str, str], ...] = ()     # ("7.5", "model.sm75.plan"): one plan per GPU arch

    @property
    def config_template(self) -> str:
        return f"config/{self.backend}.pbtxt.j2"

    @property
    def label(self) -> str:
        """The backend row: backend, plus what a python model runs ("python (onnxruntime)")."""
        return self.backend + (f" ({self.runtime})" if self.runtime else "")

    @property
    def on_gpu(self) -> bool:
        return any(g.kind == "KIND_GPU" for g in self.instances)


@dataclass(frozen=True)
class Plan:
    spec: SpecRef
    server: ServerTarget
    hardware: Hardware              # the hardware the plan is for (declared or detected), nothing incidental
    gpu: GPU | None                 # the GPU type this plan targets (None = CPU)
    models: tuple[TritonModel, ...]
    caps: Capabilities = Capabilities()
    decisions: tuple[Decision, ...] = field(default=())

    def model(self, name: str) -> TritonModel:
        return next(m for m in self.models if m.name == name)

    def to_dict(self) -> dict:
        """Deterministic (no timestamps, no host paths beyond the spec) so plans can be diffed and compared."""
        d = asdict(self)
        d["server"]["backends"] = sorted(self.server.backends)
        return d
