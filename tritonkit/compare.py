"""Step: prove an artifact numerically: run it and its source on the same inputs and compare the outputs.

One comparison rule serves every check (ONNX vs sentence-transformers, TorchScript vs sentence-transformers,
a TensorRT plan vs ONNX Runtime): an element passes when ``|candidate - reference| <= atol + rtol * |reference|``
and a sample passes when its cosine is >= ``min_cosine``; the result is a :class:`ValidationResult` whose
``str()`` is one PASSED/FAILED line naming the worst sample.

Heavy imports (numpy, onnxruntime, sentence-transformers) happen inside the functions, so importing this
module is instant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import dtypes
from .defaults import VALIDATION_SENTENCES
from .errors import UserError
from .export import read_onnx_signature
from .sources import load_sentence_transformer, st_layout


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
# Inputs and reference outputs
# --------------------------------------------------------------------------------------------------
def synthetic_feeds(tensors: Sequence[Any], shapes: Mapping[str, Sequence[int]], seed: int) -> dict[str, Any]:
    """Validation inputs for a model without real sample data: seeded standard-normal floats, ones for
    integers (valid token ids, a full attention mask, index 1 of any lookup table), True for booleans."""
    import numpy as np
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in tensors:
        dtype = dtypes.numpy_dtype(t.dtype, where=f"validation data for input '{t.name}'")
        shape = tuple(shapes[t.name])
        feeds[t.name] = (rng.standard_normal(shape).astype(dtype) if dtype.startswith("float")
                         else np.ones(shape, dtype=dtype))
    return feeds


def _st_features(st, sentences: list[str]) -> dict[str, Any]:
    """Exactly what SentenceTransformer.encode feeds its transformer (preprocess in v6, tokenize before)."""
    prep = getattr(st, "preprocess", None) or st.tokenize
    features = prep(sentences)
    return {k: v.numpy() for k, v in features.items() if hasattr(v, "numpy")}


def sentence_features(model_dir: Path, sentences: Sequence[str] = VALIDATION_SENTENCES) -> dict[str, Any]:
    """The token ids and mask sentence-transformers feeds its transformer for ``sentences`` (int64 numpy)."""
    import numpy as np
    feats = _st_features(load_sentence_transformer(model_dir), list(sentences))
    return {k: np.ascontiguousarray(feats[k], dtype=np.int64) for k in ("input_ids", "attention_mask")}


def st_reference(model_dir: Path, sentences: list[str], *, normalize: bool) -> tuple[Any, dict[str, Any]]:
    """(``SentenceTransformer.encode`` FP32 embeddings, the token features it fed its transformer).

    Feeding a candidate those same features (sentence-transformers' own tokenizer: padding to the longest,
    truncation to its max_seq_length) makes any difference the candidate's, not the tokenizer's.
    """
    import numpy as np
    st = load_sentence_transformer(model_dir)
    reference = np.asarray(st.encode(sentences, normalize_embeddings=normalize, convert_to_numpy=True,
                                     batch_size=len(sentences)), dtype=np.float32)
    return reference, _st_features(st, sentences)


def run_onnx(path: Path, feeds: Mapping[str, Any]) -> dict[str, Any]:
    """ONNX Runtime (CPU, FP32 reference) on ``feeds``; every graph output by name."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds))))


# --------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------
def _check_tolerance(atol: float, rtol: float, min_cosine: float) -> None:
    if not atol >= 0 or not rtol >= 0 or not -1 <= min_cosine <= 1:  # min_cosine 0 (or -1) = "cosine not checked"
        raise UserError("bad tolerance", actual={"atol": atol, "rtol": rtol, "min_cosine": min_cosine},
                        expected="atol >= 0, rtol >= 0 and -1 <= min_cosine <= 1")


def preview(text: str, n: int = 40) -> str:
    """A sentence as a sample label in failure messages, cut to ``n`` characters."""
    return repr(text if len(text) <= n else text[: n - 3] + "...")


def compare_samples(reference, candidate, labels: Sequence[str], *, atol: float, min_cosine: float,
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
        results.append((name, compare_samples(ref, cand, [f"{what} {i}" for i in range(n)], atol=atol, rtol=rtol,
                                              min_cosine=min_cosine)))
    worst = max(results, key=lambda r: r[1].max_abs_error)[1]
    return ValidationResult(
        max_abs_error=worst.max_abs_error, min_cosine=min(r.min_cosine for _, r in results), atol=float(atol),
        min_cosine_required=float(min_cosine), passed=all(r.passed for _, r in results),
        samples=max(r.samples for _, r in results), worst_sample=worst.worst_sample, rtol=float(rtol),
        failures=tuple(f"{name}: {f}" for name, r in results for f in r.failures))


# --------------------------------------------------------------------------------------------------
# The exported sentence-embedding graph vs sentence-transformers
# --------------------------------------------------------------------------------------------------
def validate_sentence_embedding(onnx_path: Path, model_dir: Path, sentences: Sequence[str] = VALIDATION_SENTENCES, *,
                                atol: float, min_cosine: float, rtol: float = 0.0,
                                input_names: Sequence[str] = ("input_ids", "attention_mask"),
                                output_name: str | None = None, normalize: bool = True) -> ValidationResult:
    """Run the ONNX graph and sentence-transformers on the same sentences and compare.

    reference = ``SentenceTransformer(model_dir, device="cpu").encode(sentences, normalize_embeddings=normalize)``
    candidate = onnxruntime (CPU) fed with the SAME token ids sentence-transformers used (see :func:`st_reference`).
    Passes when every element is within ``atol + rtol * |reference|`` and every sample's cosine is
    >= ``min_cosine``; NaN fails.
    """
    onnx_path, model_dir = Path(onnx_path), Path(model_dir)
    sentences = list(sentences)
    if not sentences or not all(isinstance(s, str) for s in sentences):
        raise UserError("validation needs at least one sentence (str)", actual=sentences[:3])
    _check_tolerance(atol, rtol, min_cosine)
    st_layout(model_dir)  # UserError for a bad model dir before loading anything heavy
    read_onnx_signature(onnx_path)  # UserError for a missing / non-ONNX file

    import numpy as np
    import onnxruntime as ort

    reference, features = st_reference(model_dir, sentences, normalize=normalize)
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
    return compare_samples(reference, candidate, [preview(t) for t in sentences], atol=atol, rtol=rtol,
                           min_cosine=min_cosine)
