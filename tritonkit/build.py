"""Step 5: produce every artifact the plan names, prove each one numerically, record what it is.

Each artifact is written to a temporary name, validated, and only then moved into place, so a
failed build leaves the previous artifact untouched. Next to it: `build.json` (what it is, from
what, how close to the source it measured) and `reproduce.sh` (the command that rebuilds it).
An artifact whose manifest matches the current plan and whose bytes hash to the recorded value
is not rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import __version__, defaults
from .errors import UserError
from .plan import Plan, TritonModel
from .render import MANIFEST, VERSION
from .spec import ModelSpec, Spec, load_spec

REPRODUCE = "reproduce.sh"


@dataclass(frozen=True)
class BuildResult:
    model: str
    artifacts: tuple[str, ...]
    status: str                     # "built" | "current"
    seconds: float
    detail: str

    def summary(self) -> str:
        return f"{self.model}: {self.status} {', '.join(self.artifacts)} ({self.seconds:.1f} s) {self.detail}".rstrip()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _recipe(model: TritonModel, spec_model: ModelSpec) -> dict:
    """Everything that determines the artifact's bytes; a change in any of it means rebuild."""
    return {
        "source": {"format": spec_model.source.format, "path": spec_model.source.path},
        "backend": model.backend, "runtime": model.runtime, "precision": model.precision,
        "opset": defaults.ONNX_OPSET,
        "inputs": [[t.name, t.dtype, list(t.dims)] for t in spec_model.inputs],
        "outputs": [[t.name, t.dtype, list(t.dims)] for t in spec_model.outputs],
        "axes": {n: [a.min, a.opt, a.max] for n, a in sorted(spec_model.axes.items())},
    }


def _is_current(folder: Path, model: TritonModel, recipe: dict) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("recipe") != recipe:
        return False
    return all((folder / name).is_file() and sha256(folder / name) == manifest["files"].get(name)
               for name in model.artifacts)


# --- one builder per artifact kind (table; a miss raises) ------------------------------------------

def _build_tokenizer(model: TritonModel, spec_model: ModelSpec, stage: Path) -> dict:
    from .export import copy_tokenizer, resolve_sentence_transformer
    copy_tokenizer(resolve_sentence_transformer(spec_model.source.path), stage)
    return {"tool": "tokenizers files copied from the sentence-transformers source"}


def _build_onnx(model: TritonModel, spec_model: ModelSpec, stage: Path) -> dict:
    from .export import (TensorSig, check_signature, export_sentence_embedding, resolve_sentence_transformer,
                         validate_sentence_embedding)
    out = stage / model.artifacts[0]
    expected_in = tuple(TensorSig(t.name, t.dtype, t.dims) for t in spec_model.inputs)
    expected_out = tuple(TensorSig(t.name, t.dtype, t.dims) for t in spec_model.outputs)
    where = f"{spec_model.name}: source {spec_model.source.path}"
    if spec_model.source.format == "onnx":
        shutil.copyfile(spec_model.source.path, out)
        check_signature(out, expected_in, expected_out, where=where)
        return {"tool": "copied from the ONNX source", "signature": "matches the spec"}
    model_dir = resolve_sentence_transformer(spec_model.source.path)
    axes = {i: d for i, d in enumerate(spec_model.inputs[0].dims) if isinstance(d, str)}
    result = export_sentence_embedding(model_dir, out, input_names=tuple(t.name for t in spec_model.inputs),
                                       output_name=spec_model.outputs[0].name, axes=axes, opset=defaults.ONNX_OPSET)
    check_signature(out, expected_in, expected_out, where=where)
    tol = spec_model.tolerance[model.precision]
    check = validate_sentence_embedding(out, model_dir, atol=tol.atol, min_cosine=tol.min_cosine or 0.0)
    if not check.passed:
        raise UserError(f"exported ONNX does not match the source model: {check.explain()}", where=where,
                        actual=f"max abs error {check.max_abs_error:.3g}, min cosine {check.min_cosine:.6f}",
                        expected=f"atol {tol.atol:g}, min cosine {tol.min_cosine}",
                        fix="loosen tolerance in the spec only if that error is acceptable for your use")
    return {"tool": result.exporter, "opset": result.opset, "export_seconds": round(result.seconds, 2),
            "validation": {"samples": check.samples, "max_abs_error": check.max_abs_error,
                           "min_cosine": check.min_cosine, "atol": tol.atol, "min_cosine_required": tol.min_cosine,
                           "reference": "SentenceTransformer.encode(normalize_embeddings=True)"}}


def _needs_tensorrt(model: TritonModel, spec_model: ModelSpec, stage: Path) -> dict:
    raise UserError("TensorRT plans are built inside the TensorRT container of the serving release",
                    where=model.name, actual="tensorrt backend on this host",
                    expected=f"a build in {defaults.NGC_TENSORRT_IMAGE}",
                    fix="use --server embedded here, or build on a GPU host with the NGC TensorRT image")


def _needs_torchscript(model: TritonModel, spec_model: ModelSpec, stage: Path) -> dict:
    shutil.copyfile(spec_model.source.path, stage / model.artifacts[0])
    return {"tool": "copied from the TorchScript source"}


def _build_torch(model: TritonModel, spec_model: ModelSpec, stage: Path) -> dict:
    from .export import resolve_sentence_transformer
    from .torch_export import export_torch_encoder
    tol = spec_model.tolerance[model.precision]
    r = export_torch_encoder(resolve_sentence_transformer(spec_model.source.path), stage / "hf", model.precision,
                             atol=tol.atol, min_cosine=tol.min_cosine or 0.0)
    return {"tool": f"transformers save_pretrained ({model.precision})", "export_seconds": round(r.seconds, 2),
            "validation": {"samples": len(defaults.VALIDATION_SENTENCES), "max_abs_error": r.max_abs_error,
                           "min_cosine": r.min_cosine, "atol": tol.atol, "min_cosine_required": tol.min_cosine,
                           "device": r.device, "reference": "SentenceTransformer.encode(normalize_embeddings=True)"}}


def _build_python_encoder(model: TritonModel, spec_model: ModelSpec, stage: Path) -> dict:
    return {"onnxruntime": _build_onnx, "torch": _build_torch}[model.runtime](model, spec_model, stage)


BUILDERS: dict[tuple[str, str], Callable[[TritonModel, ModelSpec, Path], dict]] = {
    ("tokenizer", "python"): _build_tokenizer,
    ("encoder", "python"): _build_python_encoder,
    ("model", "python"): _build_onnx,
    ("encoder", "onnxruntime"): _build_onnx,
    ("model", "onnxruntime"): _build_onnx,
    ("encoder", "tensorrt"): _needs_tensorrt,
    ("model", "tensorrt"): _needs_tensorrt,
    ("encoder", "pytorch"): _needs_torchscript,
    ("model", "pytorch"): _needs_torchscript,
}


def _reproduce_script(plan: Plan, repo: Path) -> str:
    gpu = plan.gpu.name if plan.gpu else "none"
    cmd = ["tritonkit", "build", "--spec", plan.spec_path, "--server", plan.server.name, "--gpu", gpu,
           "--repo", str(repo), "--force"]
    return ("#!/usr/bin/env bash\n# Rebuilds the artifacts in this folder exactly as tritonkit did.\nset -euo pipefail\n"
            + shlex.join(cmd) + "\n")


def build_model(plan: Plan, model: TritonModel, spec_model: ModelSpec, repo: Path, force: bool = False) -> BuildResult:
    folder = repo / model.name / VERSION
    recipe = _recipe(model, spec_model)
    start = time.perf_counter()
    if not force and _is_current(folder, model, recipe):
        return BuildResult(model.name, model.artifacts, "current", 0.0, "(manifest matches the plan)")
    builder = BUILDERS.get((model.role, model.backend))
    if builder is None:
        raise UserError("no builder for this model", where=model.name, actual=(model.role, model.backend),
                        expected=sorted(BUILDERS))
    folder.mkdir(parents=True, exist_ok=True)
    stage = folder.parent / f".build-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        record = builder(model, spec_model, stage)
        files = {str(f.relative_to(stage)): sha256(f) for f in sorted(stage.rglob("*")) if f.is_file()}
        manifest = {"model": model.name, "tritonkit": __version__, "recipe": recipe, "files": files,
                    "server": {"name": plan.server.name, "triton": plan.server.triton_version,
                               "tensorrt": plan.server.tensorrt_version},
                    "gpu": None if plan.gpu is None else {"name": plan.gpu.name,
                                                          "compute_capability": list(plan.gpu.compute_capability)},
                    "python": sys.version.split()[0], **record}
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        (stage / REPRODUCE).write_text(_reproduce_script(plan, repo))
        (stage / REPRODUCE).chmod(0o755)
        for name in [*files, REPRODUCE, MANIFEST]:       # manifest last: it vouches for the files before it
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / name, folder / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    detail = ""
    if "validation" in record:
        v = record["validation"]
        detail = f"max abs error {v['max_abs_error']:.2e}, min cosine {v['min_cosine']:.7f} vs sentence-transformers"
    return BuildResult(model.name, model.artifacts, "built", time.perf_counter() - start, detail)


def build(plan: Plan, repo: Path, *, spec: Spec | None = None, force: bool = False,
          progress: bool = True) -> list[BuildResult]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .render import PLAN_FILE, check_repository
    repo = Path(repo)
    if not (repo / PLAN_FILE).is_file():
        raise UserError("not a rendered repository", where=str(repo), actual="no plan.json",
                        expected="a folder written by `tritonkit render`", fix=f"run `tritonkit render --out {repo}`")
    drift = check_repository(plan, repo)
    if drift.missing or drift.changed:
        raise UserError("the repository was rendered for a different plan than this build's", where=str(repo),
                        actual=f"differs in {', '.join((drift.missing + drift.changed)[:4])}",
                        expected="the plan of the same --spec/--gpu/--server",
                        fix="re-run `tritonkit render` with the same flags, then build")
    spec = spec or load_spec(plan.spec_path)
    todo = [m for m in plan.models if m.artifacts]
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), disable=not progress, transient=True) as bar:
        task = bar.add_task("build", total=len(todo))
        for m in todo:
            bar.update(task, description=f"build {m.name} ({', '.join(m.artifacts)})")
            results.append(build_model(plan, m, spec.model(m.source_model), repo, force=force))
            bar.advance(task)
    return results
