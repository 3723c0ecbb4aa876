"""Step: export a sentence-transformers model to ONE ONNX graph; read and check an ONNX file's signature.

sentence-transformers model -> ONE ONNX graph (transformer + attention-mask weighted mean pooling + L2
normalisation) with inputs ``input_ids``/``attention_mask`` (INT64 [batch, sequence]) and output
``embedding`` (FP32 [batch, hidden]). tritonkit.compare proves it against ``SentenceTransformer.encode``;
tritonkit.tokenizer_files writes the tokenizer that serves it.

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

Heavy imports (torch, onnx, onnxruntime, transformers) happen inside the functions, so
``import tritonkit.export`` is instant and the CLI's ``--help`` needs none of them.
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import dtypes
from .defaults import ONNX_OPSET, VALIDATION_SENTENCES
from .errors import UserError
from .sources import load_transformer, st_layout

UNNAMED_DYNAMIC = "?"  # read_onnx_signature's dim for a dynamic dim without a dim_param

# Opsets the TorchScript exporter produced a checker-clean, numerically exact MiniLM graph for (torch 2.13).
VERIFIED_OPSETS = range(11, 22)
EXPORTER = "torch.onnx(dynamo=False)"
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
        dtypes.dtype(self.dtype, where=f"tensor '{self.name}'")
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
    """Export transformer + the source's pooling (mean, CLS or max) (+ L2 norm) as one ONNX file, written atomically.

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
    layout = st_layout(model_dir)

    import onnx
    import torch
    transformer, tokenizer = load_transformer(layout.transformer_dir)
    wrapper = sentence_embedding_module(transformer, normalize=normalize, pooling=layout.pooling)

    ids, mask = trace_inputs(tokenizer, trace_shape)
    with torch.no_grad():
        hidden = int(wrapper(torch.from_numpy(ids), torch.from_numpy(mask)).shape[-1])

    dynamic_axes = {input_names[0]: axes, input_names[1]: axes}
    if 0 in axes:
        dynamic_axes[output_name] = {0: axes[0]}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent))
    try:
        raw_path = tmp_dir / "raw.onnx"
        torch_onnx_export(wrapper, (torch.from_numpy(ids), torch.from_numpy(mask)), raw_path,
                           input_names=list(input_names), output_names=[output_name],
                           dynamic_axes=dynamic_axes, opset=opset)
        model = onnx.load(str(raw_path))  # pulls in external data too, if the exporter wrote any
        _fix_output_dims(model, output_name, (axes.get(0, trace_shape[0]), hidden))
        model.doc_string = f"{model_dir.name}: {layout.pooling} pooling{' + L2 norm' if normalize else ''}"
        meta = {"tritonkit.source": str(model_dir), "tritonkit.pooling": layout.pooling,
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


def torch_onnx_export(module, args: tuple, path: Path, *, input_names: list[str], output_names: list[str],
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


def check_opset(opset: int) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in VERIFIED_OPSETS:
        raise UserError("unsupported ONNX opset", actual=opset,
                        expected=f"{VERIFIED_OPSETS.start}..{VERIFIED_OPSETS.stop - 1} (verified with the "
                                 f"TorchScript exporter); default {ONNX_OPSET}")


def _check_export_args(input_names, output_name, axes, opset, trace_shape) -> None:
    if len(input_names) != 2 or len(set(input_names)) != 2 or not all(isinstance(n, str) and n for n in input_names):
        raise UserError("input_names must be two distinct names (token ids, attention mask)",
                        actual=input_names, expected="e.g. ('input_ids', 'attention_mask')")
    if not isinstance(output_name, str) or not output_name or output_name in input_names:
        raise UserError("bad output name", actual=output_name, expected="a name different from the inputs")
    if not set(axes) <= {0, 1} or not all(isinstance(v, str) and v for v in axes.values()):
        raise UserError("bad dynamic axes", actual=axes, expected="{0: 'batch', 1: 'sequence'} or a subset of it")
    check_opset(opset)
    if len(trace_shape) != 2 or not all(isinstance(n, int) and n >= 2 for n in trace_shape):
        # >= 2: a size-1 example lets the tracer specialise broadcasting on that axis
        raise UserError("bad trace_shape", actual=trace_shape, expected="(batch >= 2, sequence >= 2)")


def sentence_embedding_module(transformer, *, normalize: bool, pooling: str = "mean"):
    """transformer -> last_hidden_state -> pooling (sources.POOLING_MODES) -> (L2 normalise), as one Module."""
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
            pooled = pool(hidden, attention_mask, pooling)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)  # eps 1e-12, as Normalize()
            return pooled

    return SentenceEmbedding().eval()


def pool(hidden, attention_mask, pooling: str):
    """sentence_transformers.models.Pooling's formulas: masked mean (clamped: no 0/0 on an empty row), the
    first ([CLS]) token, or the masked max (padding set to -1e9 first)."""
    import torch
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "max":
        return torch.where(mask > 0, hidden, torch.full_like(hidden, -1e9)).max(dim=1).values
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def trace_inputs(tokenizer, trace_shape: tuple[int, int]):
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
    dtype = dtypes.from_onnx(onnx_name, where=f"{where} (tensor '{value.name}')")
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


def quantize_ops(path: Path) -> dict[str, int]:
    """Count of Q/DQ nodes in an ONNX graph: TensorRT 10 builds INT8/FP8/FP4 only from these (explicit quantization)."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if "Quantize" in node.op_type:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
