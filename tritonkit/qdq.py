"""The ONNX a TensorRT 11 plan is built from, in the plan's precision, gated on the CPU before TensorRT sees it.

TensorRT 11 builds strongly typed networks only, so a plan's precision is its ONNX's (trt_settings.PRECISIONS):

| precision | the ONNX                              | made by                                            |
|-----------|---------------------------------------|----------------------------------------------------|
| fp32/tf32 | the FP32 graph                        | the export (or the ONNX source)                    |
| fp16/bf16 | mixed precision, FP32 where needed    | modelopt.onnx.autocast.convert_to_mixed_precision  |
| int8/fp8  | Q/DQ nodes, scales from calibration   | modelopt.onnx.quantization.quantize, then below    |
| fp4       | the ONNX source, quantized before     | -                                                  |

Q/DQ graphs: ModelOpt quantizes the GEMM-like ops (defaults.QDQ_OP_TYPES) with scales from the spec's calibration
data. Every other reader of a quantized tensor (the residual stream, shape ops) then reads it unquantized: the Q/DQ
pair ONNX Runtime's quantizer shares between readers would round the residual stream too (on MiniLM that alone cost
1.5% cosine). The graph is gated by ONNX Runtime on the CPU against the source model with tolerance.<precision>:
embeddings by quantize.embedding_gate, classifiers by classification_gate on their gate texts or images, other
models by tensor_gate. When it fails, the ops whose quantization alone costs the most (measured one at a time)
lose their Q/DQ and stay in the graph's high precision, fewest first, at most quantize.MAX_FP32_SHARE of them.
The choice and the figures are recorded.

Each graph goes to the cache beside the repository, named by a digest of everything that made it, with a JSON
record next to it; a build with the same recipe reuses it, so once any host made it the TensorRT container needs
neither ModelOpt nor a calibration pass. ModelOpt is the `quantize` extra, imported only when a graph is made.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from . import defaults
from .errors import UserError
from .sources import source_sha256
from .spec import TOKEN_PIPELINES, ModelSpec
from .trt_settings import PRECISIONS

# Calibration data: what the build can feed ModelOpt, and the pipelines that can read each kind (None: any).
CALIBRATION_KINDS = {".txt": "texts", ".npz": "arrays", "/": "images"}    # "/": a folder
CALIBRATION_READERS = {"texts": TOKEN_PIPELINES, "arrays": None, "images": ("image-classification",)}
CALIBRATION_FORMS = {"texts": "texts.txt (one text per line)", "arrays": "data.npz of the model's inputs",
                     "images": "images/ (a folder of the images it serves)"}


# --- calibration data ---------------------------------------------------------------------------------

def _calibration_kind(model: ModelSpec) -> tuple[Path, str]:
    where = f"model {model.name}: calibration"
    def reads(kind: str) -> bool:
        return CALIBRATION_READERS[kind] is None or model.pipeline in CALIBRATION_READERS[kind]
    forms = [form for kind, form in CALIBRATION_FORMS.items() if reads(kind)]
    if model.calibration is None:
        raise UserError("INT8/FP8 Q/DQ scales need calibration data", where=where, actual="none",
                        expected=f"calibration: {{path: {' | '.join(forms)}, samples: N}}",
                        fix="add calibration data to the spec, or choose another precision")
    path = Path(model.calibration)
    kind = CALIBRATION_KINDS.get("/" if path.is_dir() else path.suffix)
    if kind is None or not reads(kind):
        raise UserError("this calibration data cannot feed the model", where=where,
                        actual=f"{path.name} ({kind or 'unknown kind'}; pipeline {model.pipeline})",
                        expected=" or ".join(forms), fix="point calibration.path at data of that kind")
    return path, kind


def _arrays(model: ModelSpec, path: Path) -> dict[str, Any]:
    """The .npz arrays, checked against the model's inputs: one array per input, [samples, *one request's dims]."""
    import zipfile

    import numpy as np

    from .dtypes import numpy_dtype
    where = f"model {model.name}: calibration {path.name}"
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError("calibration data is not a readable .npz", where=where, actual=str(exc),
                        expected="numpy.savez(path, <input name>=array, ...)") from None
    names = [t.name for t in model.inputs]
    if sorted(arrays) != sorted(names):
        raise UserError("calibration arrays do not name the model's inputs", where=where, actual=sorted(arrays),
                        expected=sorted(names))
    counts = {len(a) if a.ndim else 0 for a in arrays.values()}
    if counts == {0} or len(counts) != 1:
        raise UserError("calibration arrays need one sample per row, the same number for every input", where=where,
                        actual={k: list(a.shape) for k, a in arrays.items()}, expected="[samples, ...] with samples >= 1")
    for t in model.inputs:
        a, dims = arrays[t.name], model.triton_dims_named(t)
        want = numpy_dtype(t.dtype)
        ok = len(a.shape) == len(dims) + 1 and all(
            (model.axes[d].min <= n <= model.axes[d].max) if isinstance(d, str) else n == d
            for d, n in zip(dims, a.shape[1:]))
        if str(a.dtype) != want or not ok:
            raise UserError(f"calibration array '{t.name}' does not fit the input", where=where,
                            actual=f"{a.dtype} {list(a.shape)}",
                            expected=f"{want} [samples, {', '.join(map(str, dims))}] (named axes within the spec's "
                                     "min..max)")
    return arrays


def calibration_record(model: ModelSpec) -> dict:
    """What the calibration data is (file, digest, samples), checked enough that a build fails before any work."""
    path, kind = _calibration_kind(model)
    try:
        raw = b"" if path.is_dir() else path.read_bytes()
    except OSError as exc:
        raise UserError("calibration data is not readable", where=f"model {model.name}: calibration",
                        actual=str(exc), expected="a readable file") from None
    if kind == "images":   # every file decoded now: a file that is not an image fails here, before any work
        from .image_data import calibration_images, files_digest, image_values
        files = calibration_images(model)
        image_values(model, files, f"model {model.name}: calibration")
        return {"file": str(path), "kind": kind, "sha256": files_digest(files), "samples": len(files)}
    if kind == "texts":
        from .quantize import calibration_texts
        count = len(calibration_texts(model)[0])      # UTF-8, enough texts for the gate (they are its texts too)
    else:
        count = len(next(iter(_arrays(model, path).values())))
    return {"file": str(path), "kind": kind, "sha256": hashlib.sha256(raw).hexdigest(),
            "samples": min(count, model.calibration_samples or count)}


def _samples(model: ModelSpec, source: Path, kind: str) -> list[dict[str, Any]]:
    """The feeds ModelOpt calibrates on. Texts: one per feed, tokenized as sentence-transformers does and unpadded
    (padding would add activations no request has). Arrays: batches of the spec's typical (opt) batch size, so
    ModelOpt sees the GEMM shapes serving will (at batch 1 it takes a MatMul for a GEMV and leaves it unquantized)."""
    if kind == "texts":
        from .quantize import calibration_texts, source_tokens
        feats = source_tokens(model, source, calibration_texts(model)[0])
        mask = "attention_mask" if model.pipeline == "text-embedding" else model.inputs[1].name   # source_tokens' keys
        lengths = feats[mask].sum(axis=1)
        return [{t.name: feats[t.name][i:i + 1, :n] for t in model.inputs} for i, n in enumerate(lengths)]
    if kind == "images":
        from .image_data import calibration_images, image_values
        arrays = image_values(model, calibration_images(model), f"model {model.name}: calibration")
    else:
        arrays = {k: a[:model.calibration_samples] for k, a in _arrays(model, Path(model.calibration)).items()}
    count = len(next(iter(arrays.values())))
    if not model.batched:
        return [{k: a[i] for k, a in arrays.items()} for i in range(count)]
    step = model.size(model.batch_axis, "opt")
    return [{k: a[i:i + step] for k, a in arrays.items()} for i in range(0, count, step)]


def _reader(samples: list[dict[str, Any]]):
    """ModelOpt's calibration input: ONNX Runtime's CalibrationDataReader plus the get_first it also calls."""
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rewind()

        def get_next(self):
            return next(self.items, None)

        def get_first(self):
            return samples[0]

        def rewind(self):
            self.items = iter(samples)
    return Reader()


# --- the gate ------------------------------------------------------------------------------------------

def _judge(model: ModelSpec, source: Path, fp32: Path, precision: str) -> tuple[Callable[[Path], Any], dict]:
    """(graph path -> quantize.GateResult, what it runs on): texts vs sentence-transformers, else the FP32 graph."""
    from .compare import run_onnx, st_reference, synthetic_feeds
    from .quantize import calibration_texts, embedding_gate, onnx_embeddings, tensor_gate
    tol = model.tolerance[precision]
    if model.pipeline == "text-embedding":
        # The calibration texts (in-sample: the scales were fitted to them) and the sentences the plan is validated
        # on, held out: on MiniLM an in-sample gate passed a graph whose cosine on "Short." was 0.988.
        texts, digest, origin = calibration_texts(model)
        held_out = [t for t in defaults.VALIDATION_SENTENCES if t not in texts]
        reference, feats = st_reference(source, texts + held_out, normalize=True)
        return (lambda path: embedding_gate(reference, onnx_embeddings(path, feats), tol),
                {"texts": len(texts), "held_out": len(held_out), "file": origin, "sha256": digest,
                 "reference": "SentenceTransformer.encode(normalize_embeddings=True)"})
    if model.pipeline == "text-classification" or (model.pipeline == "image-classification" and model.image_folders):
        from .quantize import classifier_judge
        return classifier_judge(model, source, fp32, tol)[:2]
    if model.calibration and Path(model.calibration).suffix == ".npz":
        arrays = _arrays(model, Path(model.calibration))
        feeds = {k: a[:model.calibration_samples] if model.batched else a[0] for k, a in arrays.items()}
        data = {"file": model.calibration, "shapes": {k: list(v.shape) for k, v in feeds.items()}}
    else:
        feeds = synthetic_feeds(model.inputs, model.shapes(model.inputs, "opt"), defaults.VALIDATION_SEED)
        data = {"synthetic": {k: list(v.shape) for k, v in feeds.items()}, "seed": defaults.VALIDATION_SEED}
    reference = run_onnx(fp32, feeds)
    return lambda path: tensor_gate(reference, run_onnx(path, feeds), tol), {**data, "reference": "the FP32 graph"}


def _gate(judge: Callable[[Path], Any], path: Path) -> tuple[Any, str | None]:
    """(judge(path), None), or (None, why) where ONNX Runtime's CPU kernels cannot run the graph (BF16 has none):
    then the plan's validation, where TensorRT builds it, is the only measurement."""
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as CpuCannotRun
    try:
        return judge(path), None
    except CpuCannotRun as exc:
        return None, f"not measured here: ONNX Runtime (CPU) cannot run this graph ({str(exc).split(':')[-1].strip()})"


def _gate_figures(gate: dict) -> str:
    """A gate's figures (quantize.GateResult as a dict) in one line."""
    overlap, top1 = gate.get("neighbour_overlap"), gate.get("top1_agreement")
    return (f"min cosine {gate['min_cosine']:.5f}, max abs error {gate['max_abs_error']:.4g}"
            + (f", top-10 neighbour overlap {overlap:.3f}" if overlap is not None else "")
            + (f", top-1 agreement {top1:.4f} over {gate['samples']}" if top1 is not None else ""))


# --- Q/DQ graph surgery (pure: onnx protos in, onnx protos out) ------------------------------------------

def _producers(model) -> dict[str, Any]:
    return {out: node for node in model.graph.node for out in node.output}


def _qdq_source(producers: dict, tensor: str) -> str | None:
    """The tensor a DequantizeLinear(QuantizeLinear(x)) pair stands for: x, or None for any other tensor."""
    dq = producers.get(tensor)
    q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None


def quantized_ops(model) -> list[str]:
    """The GEMM-like ops that read at least one Q/DQ'd input, in graph order."""
    producers = _producers(model)
    return [n.name for n in model.graph.node if n.op_type in defaults.QDQ_OP_TYPES
            and any(_qdq_source(producers, i) for i in n.input)]


def read_unquantized(model, keep: frozenset[str] | set[str] = frozenset()):
    """A copy of ``model`` where every reader of a Q/DQ'd tensor that is not a quantized GEMM-like op (the residual
    stream, shape ops), and every op in ``keep``, reads the tensor itself; Q/DQ pairs left unread are dropped."""
    import onnx
    out = onnx.ModelProto()
    out.CopyFrom(model)
    producers = _producers(out)
    for node in out.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.name in keep or node.op_type not in defaults.QDQ_OP_TYPES:
            for k, tensor in enumerate(node.input):
                node.input[k] = _qdq_source(producers, tensor) or tensor
    return _prune(out)


def _prune(model):
    graph = model.graph
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)
    return model


# --- the makers ------------------------------------------------------------------------------------------

def _modelopt(what: str):
    """ModelOpt's AutoCast or PTQ entry point, its log (to stdout) turned down to errors."""
    import logging
    try:
        from modelopt.onnx.logging_config import configure_logging
        configure_logging(logging.ERROR)
        if what == "autocast":
            from modelopt.onnx.autocast import convert_to_mixed_precision
            return convert_to_mixed_precision
        from modelopt.onnx.quantization import quantize
        return quantize
    except ImportError as exc:
        raise UserError("NVIDIA ModelOpt is not installed, and TensorRT 11 takes this precision from the ONNX",
                        actual=f"import modelopt.onnx: {exc}", expected="nvidia-modelopt (the `quantize` extra)",
                        fix="pip install 'tritonkit[quantize]' -c constraints.txt") from None


def _version() -> str:
    from importlib.metadata import version
    return f"nvidia-modelopt {version('nvidia-modelopt')}"


def _save(model, path: Path) -> None:
    import onnx
    onnx.save(model, str(path), save_as_external_data=model.ByteSize() > 2**31 - 2**26,
              location=f"{path.name}.data")


def _linked(fp32: Path, folder: Path) -> Path:
    """The FP32 graph seen from ``folder`` (symlinks, external data included): ModelOpt writes its intermediate
    files beside its input, which must not be the user's model folder."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data
    graph = onnx.load(str(fp32), load_external_data=False)
    for rel in {ExternalDataInfo(t).location for t in _get_all_tensors(graph) if uses_external_data(t)}:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).symlink_to((fp32.parent / rel).resolve())
    (folder / "fp32.onnx").symlink_to(fp32.resolve())
    return folder / "fp32.onnx"


def _autocast(fp32: Path, out: Path, mode: str, judge, tmp: Path, where: str, step) -> dict:
    step(f"converting to {mode.upper()} with ModelOpt AutoCast")
    convert = _modelopt("autocast")
    model = convert(onnx_path=str(_linked(fp32, tmp)), low_precision_type=mode, keep_io_types=True, providers=["cpu"])
    _save(model, out)
    step(f"gating the {mode.upper()} graph with ONNX Runtime")
    result, unmeasured = _gate(judge, out)
    if result is not None and not result.passed:
        raise UserError(f"the {mode.upper()} graph fails its gate: " + "; ".join(result.failures), where=where,
                        actual=_gate_figures(asdict(result)), expected=f"the thresholds of tolerance.{mode}",
                        fix="choose another precision (remove this tolerance, or request fp32)")
    return {"tool": f"modelopt.onnx.autocast.convert_to_mixed_precision ({_version()})", "mode": mode,
            "keep_io_types": True, **({"gate": asdict(result)} if result else {"gate_not_measured": unmeasured})}


def _ptq(fp32: Path, out: Path, mode: str, judge, tmp: Path, where: str, step, *, samples) -> dict:
    import onnx
    quantize = _modelopt("ptq")
    made = tmp / "made.onnx"
    step(f"calibrating {mode.upper()} Q/DQ with ModelOpt on {len(samples)} samples")
    quantize(str(_linked(fp32, tmp)), quantize_mode=mode, calibration_data_reader=_reader(samples),
             calibration_eps=["cpu"], calibration_method=defaults.QDQ_CALIBRATION_METHOD,
             op_types_to_quantize=list(defaults.QDQ_OP_TYPES), high_precision_dtype=defaults.QDQ_HIGH_PRECISION,
             output_path=str(made), log_level="ERROR")
    made_model = onnx.load(str(made))
    producers = _producers(made_model)
    record = {"tool": f"modelopt.onnx.quantization.quantize ({_version()})", "mode": mode,
               "op_types": list(defaults.QDQ_OP_TYPES), "calibration_method": defaults.QDQ_CALIBRATION_METHOD,
               "high_precision": defaults.QDQ_HIGH_PRECISION, "residual_reads_unquantized": sum(
                   1 for n in made_model.graph.node
                   if n.op_type not in ("QuantizeLinear", "DequantizeLinear", *defaults.QDQ_OP_TYPES)
                   for t in n.input if _qdq_source(producers, t))}
    base = read_unquantized(made_model)
    ops = quantized_ops(base)
    if not ops:
        raise UserError(f"ModelOpt quantized none of the graph's {'/'.join(defaults.QDQ_OP_TYPES)} ops", where=where,
                        actual="no Q/DQ nodes", expected=f"{mode.upper()} Q/DQ on the GEMM-like ops",
                        fix="this model has none TensorRT quantizes; choose another precision")

    def judge_model(model):
        path = tmp / "candidate.onnx"
        _save(model, path)
        return judge(path)

    step(f"gating {len(ops)} quantized ops with ONNX Runtime")
    _save(base, out)
    first, unmeasured = _gate(judge, out)
    if unmeasured:
        return {**record, "quantized_ops": len(ops), "high_precision_ops": [], "gate_not_measured": unmeasured}
    result, kept, sensitivity = first, [], []
    if not result.passed:
        step(f"gate failed ({'; '.join(result.failures)}): measuring each op's sensitivity")
        for op in ops:   # only `op` quantized: what its quantization alone costs
            sensitivity.append((1.0 - judge_model(read_unquantized(base, set(ops) - {op})).min_cosine, op))
        sensitivity.sort(reverse=True)
        from .quantize import MAX_FP32_SHARE
        for k in range(1, int(len(ops) * MAX_FP32_SHARE) + 1):
            kept = [op for _, op in sensitivity[:k]]
            result = judge_model(read_unquantized(base, set(kept)))
            if result.passed:
                break
    if not result.passed:
        raise UserError(f"{mode.upper()} fails the accuracy gate even with {len(kept)} of {len(ops)} ops kept in "
                        f"{defaults.QDQ_HIGH_PRECISION.upper()}: " + "; ".join(result.failures), where=where,
                        actual=_gate_figures(asdict(result)), expected=f"the thresholds of tolerance.{mode}",
                        fix=f"give more or more typical calibration data, choose another precision (remove "
                            f"tolerance.{mode}), or loosen tolerance.{mode} only if that error is acceptable")
    if kept:
        _save(read_unquantized(base, set(kept)), out)
    return {**record, "quantized_ops": len(ops) - len(kept), "high_precision_ops": kept,
            "sensitivity_top": [{"op": op, "min_cosine_loss": round(s, 6)} for s, op in sensitivity[:len(kept) + 3]],
            "gate_all_quantized": asdict(first), "gate": asdict(result)}


MAKERS = {"autocast": _autocast, "ptq": _ptq}


# --- the one entry point ------------------------------------------------------------------------------------

def recipe(precision: str, model: ModelSpec) -> dict:
    """Everything besides the FP32 graph that decides the precision ONNX; raises (UserError) on bad calibration
    data, so a build checks it before any work."""
    how = PRECISIONS[precision]
    if how.onnx not in MAKERS:
        return {"transform": how.onnx}
    out: dict[str, Any] = {"transform": how.onnx, "mode": how.mode, "tolerance": asdict(model.tolerance[precision])}
    if how.onnx == "ptq":
        out["settings"] = {"op_types": list(defaults.QDQ_OP_TYPES), "calibration_method": defaults.QDQ_CALIBRATION_METHOD,
                           "high_precision": defaults.QDQ_HIGH_PRECISION}
        out["calibration"] = calibration_record(model)
    from .quantize import gate_data_digest
    out["gate_data_sha256"] = gate_data_digest(model)
    if model.pipeline == "text-embedding":   # _judge's held-out sentences
        out["held_out_sha256"] = hashlib.sha256("\n".join(defaults.VALIDATION_SENTENCES).encode()).hexdigest()
    return out


def precision_onnx(precision: str, fp32: Path, model: ModelSpec, source: Path, cache: Path, stem: str, *,
                   step: Callable[[str], None] = lambda _: None) -> tuple[Path, dict]:
    """(the ONNX a plan of ``precision`` is built from, its record). Made once per recipe, in ``cache``."""
    how = PRECISIONS[precision]
    made_by = recipe(precision, model)
    if how.onnx not in MAKERS:
        return fp32, {"transform": how.note, "path": str(fp32)}
    made_by["fp32_sha256"] = source_sha256(fp32)
    key = hashlib.sha256(json.dumps(made_by, sort_keys=True).encode()).hexdigest()[:16]
    out = cache / f"{stem}-{precision}-{key}.onnx"
    record_path = out.with_suffix(".json")
    try:
        record = json.loads(record_path.read_text())
        if record.get("recipe") == made_by and source_sha256(out) == record.get("sha256"):
            step(f"reusing the {precision.upper()} graph made for the same recipe")
            return out, record
    except (OSError, ValueError):
        pass
    where = f"model {model.name}: {precision.upper()} ONNX for TensorRT"
    started = time.monotonic()
    judge, data = _judge(model, source, fp32, precision)
    extra = {"samples": _samples(model, source, made_by["calibration"]["kind"])} if how.onnx == "ptq" else {}
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".qdq-") as tmp:
        staged = Path(tmp) / out.name        # the same name: a >2 GB graph's external data is found by it
        record = MAKERS[how.onnx](fp32, staged, how.mode, judge, Path(tmp), where, step, **extra)
        if (Path(tmp) / f"{out.name}.data").exists():
            os.replace(Path(tmp) / f"{out.name}.data", out.parent / f"{out.name}.data")
        os.replace(staged, out)
    record.update({"transform": how.note, "gate_data": data, "calibration": made_by.get("calibration"),
                   "path": str(out), "sha256": source_sha256(out), "seconds": round(time.monotonic() - started, 1),
                   "recipe": made_by})
    record_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")   # last: it vouches for the graph
    return out, record


def summary(precision: str, record: dict) -> str:
    """One line for the build's output: what the ONNX is and how it measured."""
    gate = record.get("gate")
    figures = _gate_figures(gate) if gate else record.get("gate_not_measured", "the graph as exported")
    kept = record.get("high_precision_ops")
    return (f"{precision.upper()} ONNX {Path(record['path']).name}: {figures}"
            + (f" ({record['quantized_ops']} ops quantized, {len(kept)} kept {record['high_precision'].upper()})"
               if kept is not None else ""))
