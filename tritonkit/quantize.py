"""INT8 for CPU serving: ONNX Runtime dynamic quantization of the FP32 graph, proven by an accuracy gate.

Weights become INT8 per output channel; activations are scaled per batch at run time. The gate compares the
quantized graph with the source model on real inputs, with the thresholds of the spec's tolerance.int8: for
embeddings min cosine, top-10 neighbour overlap and max abs error; otherwise max abs/rel error against the
FP32 graph. When the fully quantized graph fails: SmoothQuant scaling from the calibration texts' activation
ranges (smooth.py); if that is not enough, the MatMuls whose quantization alone costs the most accuracy
(measured one at a time) stay FP32, fewest first, at most a quarter of them.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from . import defaults
from .errors import UserError
from .spec import TOKEN_PIPELINES, ModelSpec, Tolerance

NEIGHBOURS = 10                 # top-k of the neighbour-overlap gate
MAX_FP32_SHARE = 0.25           # at most this share of the quantizable MatMuls may stay FP32


@dataclass(frozen=True)
class GateResult:
    samples: int
    max_abs_error: float
    min_cosine: float
    mean_cosine: float
    neighbour_overlap: float | None     # None: fewer samples than NEIGHBOURS + 1 (or not embeddings)
    failures: tuple[str, ...]           # each threshold missed, with its figures
    top1_agreement: float | None = None     # classifiers: share of samples whose top class is the reference's

    @property
    def passed(self) -> bool:
        return not self.failures


def calibration_texts(model: ModelSpec) -> tuple[list[str], str, str]:
    """(texts, sha256 of their file, the file): the spec's calibration texts, else the bench sentences."""
    from .workload import SENTENCES
    path = Path(model.calibration) if model.calibration and model.calibration.endswith(".txt") else SENTENCES
    try:
        raw = path.read_bytes()
        texts = [t for t in raw.decode().splitlines() if t.strip()][:model.calibration_samples]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError("calibration texts are not readable", where=str(path), actual=str(exc),
                        expected="a UTF-8 text file, one text per line") from None
    if len(texts) <= NEIGHBOURS:
        raise UserError("too few texts to gate INT8 embeddings on", where=str(path), actual=f"{len(texts)} texts",
                        expected=f"at least {NEIGHBOURS + 1} non-empty lines (neighbour overlap is top-{NEIGHBOURS})",
                        fix="add texts to the calibration file")
    return texts, hashlib.sha256(raw).hexdigest(), str(path)


def gate_texts(model: ModelSpec) -> tuple[list[str], str, str]:
    """(texts, their sha256, the file): the calibration texts plus the validation sentences they lack (very short
    and truncated texts: "Short." alone lost 0.012 cosine in INT8 while the 30 bench sentences all kept >= 0.99)."""
    texts, _, origin = calibration_texts(model)
    texts = texts + [t for t in defaults.VALIDATION_SENTENCES if t not in texts]
    return texts, hashlib.sha256("\n".join(texts).encode()).hexdigest(), origin


def gate_data_digest(model: ModelSpec) -> str:
    """What the gate runs on, for the build recipe: the texts' or images' digest, else the synthetic seed."""
    if model.pipeline in TOKEN_PIPELINES:
        return gate_texts(model)[1]
    if model.pipeline == "image-classification":
        from .image_data import gate_images
        images = gate_images(model)
        if images is not None:
            return images[1]
    return f"synthetic seed {defaults.VALIDATION_SEED}"


def neighbour_overlap(reference, candidate, k: int = NEIGHBOURS) -> float:
    """Mean share of each sample's k nearest neighbours (cosine, among the others) that the candidate keeps."""
    import numpy as np
    def ranks(e):
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1)[:, :k]
    r, c = ranks(reference), ranks(candidate)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(r, c)]))


def embedding_gate(reference, candidate, tol: Tolerance) -> GateResult:
    import numpy as np
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    cos = (ref * cand).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1))
    err = float(np.abs(ref - cand).max())
    overlap = neighbour_overlap(ref, cand) if len(ref) > NEIGHBOURS else None
    failures = []
    if err > tol.atol:
        failures.append(f"max abs error {err:.4g} > atol {tol.atol:g}")
    if tol.min_cosine is not None and cos.min() < tol.min_cosine:
        failures.append(f"min cosine {cos.min():.5f} < {tol.min_cosine}")
    if tol.min_neighbour_overlap is not None and (overlap is None or overlap < tol.min_neighbour_overlap):
        failures.append(f"top-{NEIGHBOURS} neighbour overlap {overlap if overlap is None else round(overlap, 4)} "
                        f"< {tol.min_neighbour_overlap}")
    return GateResult(len(ref), err, float(cos.min()), float(cos.mean()), overlap, tuple(failures))


def classification_gate(reference, candidate, tol: Tolerance) -> GateResult:
    """Classifier logits [samples, classes] against the reference's: top-1 agreement (tolerance.min_top1_agreement,
    1 when not given) and the max logit error (atol + rtol x |reference|)."""
    import numpy as np
    ref, cand = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    agree = float((ref.argmax(1) == cand.argmax(1)).mean())
    err = float(np.abs(ref - cand).max())
    cos = (ref * cand).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1), 1e-30)
    need = 1.0 if tol.min_top1_agreement is None else tol.min_top1_agreement
    failures = []
    if (np.abs(ref - cand) > tol.atol + tol.rtol * np.abs(ref)).any():
        failures.append(f"max logit error {err:.4g} beyond atol {tol.atol:g} + rtol {tol.rtol:g} x |ref|")
    if agree < need:
        failures.append(f"top-1 agreement {agree:.4f} < {need}")
    return GateResult(len(ref), err, float(cos.min()), float(cos.mean()), None, tuple(failures), agree)


def source_tokens(model: ModelSpec, source: Path, texts: list[str]) -> dict[str, Any]:
    """``texts`` tokenized as the served tokenizer model does: sentence-transformers' features for embeddings, the
    folder's own tokenizer (truncated at the sequence axis's max) for classifiers."""
    if model.pipeline == "text-embedding":
        from .compare import sentence_features
        return sentence_features(source, texts)
    from .huggingface_source import spec_token_feeds
    return spec_token_feeds(model, _tokenizer(str(source)), texts)


@lru_cache(maxsize=2)
def _tokenizer(folder: str):
    """The folder's tokenizer, loaded once per build (the gate and the calibration both tokenize)."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def classifier_judge(model: ModelSpec, source: Path, fp32: Path,
                     tol: Tolerance) -> tuple[Callable[[Path], GateResult], dict, dict]:
    """(graph path -> classification_gate against the FP32 graph's logits, what it runs on, its feeds): a text
    classifier's gate texts tokenized as served, or an image classifier's gate images decoded as served."""
    from .compare import run_onnx
    if model.pipeline == "text-classification":
        texts, digest, origin = gate_texts(model)
        feeds = source_tokens(model, source, texts)
        data = {"texts": len(texts), "file": origin, "sha256": digest,
                "reference": "the FP32 graph (proven against transformers), its logits"}
    else:
        from .image_data import gate_images, image_values
        files, digest, folders = gate_images(model)   # the policy plans INT8 only for a spec that names images
        feeds = image_values(model, files, f"model {model.name}: gate images")
        data = {"images": len(files), "folders": folders, "sha256": digest,
                "reference": "the FP32 graph (proven against the source), its logits"}
    logits = model.outputs[0].name
    reference = run_onnx(fp32, feeds)[logits]
    return lambda path: classification_gate(reference, run_onnx(path, feeds)[logits], tol), data, feeds


def tensor_gate(reference: dict, candidate: dict, tol: Tolerance) -> GateResult:
    """`none` pipelines: every output within atol + rtol x |reference| of the FP32 graph's."""
    import numpy as np
    failures, worst, cosines = [], 0.0, []
    for name, ref in reference.items():
        ref, cand = np.asarray(ref, dtype=np.float64), np.asarray(candidate[name], dtype=np.float64)
        excess = np.abs(ref - cand) - (tol.atol + tol.rtol * np.abs(ref))
        worst = max(worst, float(np.abs(ref - cand).max()))
        flat_r, flat_c = ref.reshape(len(ref), -1), cand.reshape(len(cand), -1)
        cosines.extend((flat_r * flat_c).sum(1) / np.maximum(np.linalg.norm(flat_r, axis=1) *
                                                              np.linalg.norm(flat_c, axis=1), 1e-30))
        if (excess > 0).any():
            failures.append(f"{name}: max abs error {float(np.abs(ref - cand).max()):.4g} beyond atol {tol.atol:g} "
                            f"+ rtol {tol.rtol:g} x |ref|")
    return GateResult(len(next(iter(reference.values()))), worst, float(min(cosines)), float(np.mean(cosines)),
                      None, tuple(failures))


def quantizable(path: Path) -> list[str]:
    """MatMul nodes with a constant weight (what dynamic quantization turns INT8), in graph order."""
    import onnx
    graph = onnx.load(str(path), load_external_data=False).graph
    consts = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and any(i in consts for i in n.input)]


def quantize(fp32: Path, out: Path, *, reduce_range: bool, exclude: tuple[str, ...] = (),
             only: tuple[str, ...] = ()) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic
    root = logging.getLogger()   # it logs "consider pre-processing" on the root logger at every call: silenced here only
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(fp32), str(out), op_types_to_quantize=["MatMul"], per_channel=True,
                         reduce_range=reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                         nodes_to_quantize=list(only), extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)


def quantize_gated(fp32: Path, out: Path, *, reduce_range: bool, judge: Callable[[Path], GateResult],
                   where: str, step: Callable[[str], None] = lambda _: None,
                   calibration: dict | None = None) -> dict[str, Any]:
    """Quantize `fp32` to `out` so that `judge(out)` passes. When the plain quantization fails: SmoothQuant
    scaling (smooth.py, activation ranges from the `calibration` feeds) at each of smooth.ALPHAS, the best
    kept; then, if still failing, the fewest sensitive MatMuls in FP32. UserError with the figures when even
    a quarter of them in FP32 does not pass."""
    import tempfile

    from .smooth import ALPHAS, activation_ranges, smooth
    t0 = time.monotonic()
    nodes = quantizable(fp32)
    step(f"quantizing {len(nodes)} MatMuls to INT8 ({'7' if reduce_range else '8'}-bit weights)")
    quantize(fp32, out, reduce_range=reduce_range)
    first = result = judge(out)
    kept: tuple[str, ...] = ()
    sensitivity: list[tuple[float, str]] = []
    smoothing: dict[str, Any] = {"alpha": None, "trials": []}
    with tempfile.TemporaryDirectory(prefix="tritonkit-int8-") as tmp:
        base = fp32
        if not result.passed and calibration is not None:
            step(f"gate failed ({'; '.join(result.failures)}): SmoothQuant scaling at alpha {ALPHAS}")
            ranges = activation_ranges(fp32, calibration)
            for alpha in ALPHAS:
                scaled = Path(tmp) / f"smoothed-{alpha}.onnx"
                smooth(fp32, scaled, ranges, alpha)
                quantize(scaled, out, reduce_range=reduce_range)
                trial = judge(out)
                smoothing["trials"].append({"alpha": alpha, "passed": trial.passed, "min_cosine": trial.min_cosine,
                                            "neighbour_overlap": trial.neighbour_overlap})
                if (trial.passed, trial.min_cosine) > (result.passed, result.min_cosine):
                    base, result, smoothing["alpha"] = scaled, trial, alpha
            quantize(base, out, reduce_range=reduce_range)   # the best one, written last
        if not result.passed:
            step(f"gate failed ({'; '.join(result.failures)}): measuring each MatMul's sensitivity")
            for n in nodes:
                quantize(base, out, reduce_range=reduce_range, only=(n,))
                sensitivity.append((1.0 - judge(out).min_cosine, n))
            sensitivity.sort(reverse=True)
            for k in range(1, int(len(nodes) * MAX_FP32_SHARE) + 1):   # a model of 1-3 MatMuls keeps none in FP32
                kept = tuple(n for _, n in sensitivity[:k])
                quantize(base, out, reduce_range=reduce_range, exclude=kept)
                result = judge(out)
                if result.passed:
                    break
    if not result.passed:
        raise UserError(f"INT8 fails the accuracy gate even with {len(kept)} of {len(nodes)} MatMuls kept in FP32: "
                        + "; ".join(result.failures), where=where,
                        actual=f"min cosine {result.min_cosine:.5f}, max abs error {result.max_abs_error:.4g}"
                               + (f", neighbour overlap {result.neighbour_overlap:.3f}"
                                  if result.neighbour_overlap is not None else "")
                               + (f", top-1 agreement {result.top1_agreement:.3f}"
                                  if result.top1_agreement is not None else ""),
                        expected="the thresholds of tolerance.int8",
                        fix="serve FP32 (remove tolerance.int8 or request precision: fp32), or loosen tolerance.int8 "
                            "only if that error is acceptable for your use")
    return {"tool": "onnxruntime.quantization.quantize_dynamic (MatMul, per-channel QInt8, MatMulConstBOnly)",
            "reduce_range": reduce_range, "quantized_matmuls": len(nodes) - len(kept), "fp32_matmuls": list(kept),
            "smoothquant": smoothing,
            "sensitivity_top": [{"node": n, "min_cosine_loss": round(s, 6)} for s, n in sensitivity[:len(kept) + 3]],
            "gate_all_quantized": asdict(first), "gate": asdict(result), "seconds": round(time.monotonic() - t0, 1)}


def onnx_embeddings(path: Path, feeds: dict) -> Any:
    """The graph's first output for `feeds` (inputs it does not take are dropped), on the CPU."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run([sess.get_outputs()[0].name], {k: v for k, v in feeds.items() if k in names})[0]
