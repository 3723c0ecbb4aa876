"""Step 5: produce every artifact the plan names, prove each one numerically, record what it is.

Each artifact is written to a staging folder, validated, and only then moved into place, so a failed
build leaves the previous artifact and its manifest byte-identical. Next to it: `build.json` (what it
is, from which source bytes (sha256), with which tools, how close to its reference it measured) and
`reproduce.sh` (the command that rebuilds it; for TensorRT plans also the equivalent `trtexec` line).
An artifact whose recorded recipe matches the current one and whose bytes hash to the recorded value
is not rebuilt.

| plan row                    | artifact            | proof                                                          |
|-----------------------------|---------------------|----------------------------------------------------------------|
| python (tokenizers)         | tokenizer.json ...  | loads in `tokenizers` (tokenizer_files.copy_tokenizer)         |
| onnxruntime / python (ort)  | model.onnx          | sentence-transformers source: export + onnx.checker + values vs |
|                             |                     | SentenceTransformer.encode; onnx source: signature + a run     |
| tensorrt                    | model.sm<cc>.plan   | the ONNX above in the plan's precision (qdq.py: AutoCast, or   |
|                             |                     | calibrated Q/DQ gated on the CPU), then the plan vs ONNX       |
|                             |                     | Runtime on the same inputs with the precision's tolerance      |
| pytorch                     | model.pt            | loads with torch.jit.load and runs at the spec's min/opt shapes |
| python (torch)              | hf/ weights         | saved in the plan's precision, run as model.py runs them, vs    |
|                             |                     | SentenceTransformer.encode (tritonkit.torch_export)            |
| python (torch-program)      | model.pt2           | torch.export in the plan's precision, loaded back, vs the FP32 |
|                             |                     | source module (tritonkit.torch_program)                        |

TensorRT plans are built only where the serving release's TensorRT runs on a GPU of the target
architecture (`trt_engine.require_build_host`); anywhere else the build stops with a UserError that names the
container command (docker compose: the `trt-build` service). What needs no TensorRT comes first: an INT8/FP8
plan's Q/DQ ONNX (TensorRT 11 takes the precision from it) is calibrated and gated on any host and recorded in
build.json ("prepared") before that check, so the container only compiles it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__, defaults
from .errors import UserError
from .plan import Plan, TritonModel
from .render import MANIFEST, VERSION
from .spec import ModelSpec, Spec

REPRODUCE = "reproduce.sh"


@dataclass(frozen=True)
class BuildResult:
    model: str
    artifacts: tuple[str, ...]
    status: str                     # "built" | "current" | "skipped"
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


# --- what a build is made of -------------------------------------------------------------------------

@dataclass
class BuildContext:
    plan: Plan
    model: TritonModel
    spec_model: ModelSpec
    repo: Path
    folder: Path                    # the version folder the artifacts end up in
    stage: Path                     # builders write here; moved into `folder` only after validation
    source: Path                    # the resolved source file or folder
    source_sha256: str
    host: object | None = None      # tensorrt.BuildHost where plans are built
    step: Callable[[str], None] = lambda text: None
    on_phase: Callable[[str, int, int], None] | None = None
    trtexec: list[str] | None = field(default=None)   # set by the TensorRT builder for reproduce.sh
    prepared: dict | None = None    # TensorRT: the plan's ONNX, made before the build host was checked

    @property
    def cache_dir(self) -> Path:
        """Timing caches and intermediate ONNX files: next to the repository, shared by its builds."""
        return self.repo.resolve().parent / defaults.TRT_CACHE_DIR


def _resolve_source(spec_model: ModelSpec) -> Path:
    if spec_model.source.format == "sentence-transformers":
        from .sources import resolve_sentence_transformer
        return resolve_sentence_transformer(spec_model.source.path)
    if spec_model.source.path.startswith("pkg:"):
        raise UserError("pkg: sources are sentence-transformers folders", where=f"{spec_model.name}: source.path",
                        actual=spec_model.source.path, expected=f"a {spec_model.source.format} file path")
    return spec_model.source.folder


def _tolerances(model: TritonModel, spec_model: ModelSpec) -> dict:
    """The tolerances the artifact is proven with: FP32 for the exported graph, the model's precision for it
    (none for a tokenizer, which is not compared numerically)."""
    if model.role == "tokenizer":
        return {}
    return {p: asdict(spec_model.tolerance[p]) for p in sorted({"fp32", model.precision}) if p in spec_model.tolerance}


def _recipe(model: TritonModel, spec_model: ModelSpec, source_sha: str, plan: Plan) -> dict:
    """Everything that determines the artifact's bytes or its proof; a change in any of it means rebuild."""
    extra = {}
    if model.precision == "int8" and model.builder == "onnx":   # CPU INT8: the target's INT8 unit and the gate's data
        from .policy import cpu_int8_unit
        from .quantize import gate_data_digest
        from .smooth import ALPHAS
        extra["int8"] = {"cpu_unit": cpu_int8_unit(plan.hardware.cpu_features),
                         "gate_data_sha256": gate_data_digest(spec_model), "smoothquant_alphas": list(ALPHAS)}
    return {**extra,
        "source": {"format": spec_model.source.format, "path": spec_model.source.path, "sha256": source_sha,
                   **({"factory": spec_model.source.factory} if spec_model.source.factory else {})},
        "backend": model.label, "precision": model.precision, "opset": defaults.ONNX_OPSET,
        "inputs": [[t.name, t.dtype, list(t.dims)] for t in spec_model.inputs],
        "outputs": [[t.name, t.dtype, list(t.dims)] for t in spec_model.outputs],
        "axes": {n: [a.min, a.opt, a.max] for n, a in sorted(spec_model.axes.items())},
        "tolerance": _tolerances(model, spec_model),
    }


def _read_manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _is_current(folder: Path, names: tuple[str, ...], recipe: dict, plan_file: str | None = None) -> bool:
    """The recorded recipe equals ``recipe`` and every file hashes to its recorded value.

    ``plan_file``: a TensorRT plan, recorded in ``build.json``'s ``plans`` map (one entry per GPU architecture)."""
    manifest = _read_manifest(folder)
    if plan_file is not None:
        entry = (manifest.get("plans") or {}).get(plan_file) or {}
        recorded, hashes = entry.get("recipe"), {plan_file: entry.get("sha256")}
    else:
        recorded, hashes = manifest.get("recipe"), manifest.get("files") or {}
    return recorded == recipe and all((folder / n).is_file() and sha256(folder / n) == hashes.get(n) for n in names)


# --- one builder per plan row (table; a miss raises) -------------------------------------------------

def _build_tokenizer(ctx: BuildContext) -> dict:
    from .tokenizer_files import copy_tokenizer
    copy_tokenizer(ctx.source, ctx.stage)
    return {"tool": f"tokenizers files copied from the {ctx.spec_model.source.format} source"}


def _check_outputs(outputs: dict, spec_model: ModelSpec, which: str, where: str) -> None:
    from .dtypes import DTYPES
    for t in spec_model.outputs:
        if t.name not in outputs:
            raise UserError(f"the model has no output '{t.name}'", where=where, actual=sorted(outputs),
                            expected=[o.name for o in spec_model.outputs])
        want = spec_model.shape(t.dims, which)
        got = outputs[t.name]
        if tuple(got.shape) != want or str(got.dtype) != DTYPES[t.dtype].numpy:
            raise UserError(f"output '{t.name}' does not match the spec at the {which} shapes", where=where,
                            actual=f"{got.dtype} {list(got.shape)}", expected=f"{DTYPES[t.dtype].numpy} {list(want)}")


def _check_onnx(ctx: BuildContext, path: Path) -> dict:
    """An ONNX file given as the source: its signature must be the spec's, and it must run at the opt shapes."""
    from .compare import run_onnx, synthetic_feeds
    from .export import TensorSig, check_signature
    sm = ctx.spec_model
    where = f"{sm.name}: source {sm.source.path}"
    check_signature(path, tuple(TensorSig(t.name, t.dtype, t.dims) for t in sm.inputs),
                    tuple(TensorSig(t.name, t.dtype, t.dims) for t in sm.outputs), where=where)
    feeds = synthetic_feeds(sm.inputs, sm.shapes(sm.inputs, "opt"), defaults.VALIDATION_SEED)
    _check_outputs(run_onnx(path, feeds), sm, "opt", where)
    return {"signature": "matches the spec",
            "smoke": {"runtime": "onnxruntime (CPU)", "shapes": {k: list(v.shape) for k, v in feeds.items()}}}


def _make_onnx(ctx: BuildContext, out: Path) -> dict:
    """The FP32 ONNX graph of the source at ``out``, proven: exported and validated, or copied and run."""
    from .compare import validate_sentence_embedding
    from .export import TensorSig, check_signature, export_sentence_embedding
    sm = ctx.spec_model
    expected_in = tuple(TensorSig(t.name, t.dtype, t.dims) for t in sm.inputs)
    expected_out = tuple(TensorSig(t.name, t.dtype, t.dims) for t in sm.outputs)
    where = f"{sm.name}: source {sm.source.path}"
    if sm.source.format == "onnx":
        ctx.step("copying and checking the ONNX source")
        shutil.copyfile(ctx.source, out)
        data = _external_data(ctx.source)
        for rel in data:   # weights beside the graph (models over 2 GB, or saved that way): ONNX reads them from there
            (out.parent / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ctx.source.parent / rel, out.parent / rel)
        return {"tool": "copied from the ONNX source", **({"external_data": data} if data else {}),
                **_check_onnx(ctx, out)}
    tol = sm.tolerance.get("fp32") or sm.tolerance[ctx.model.precision]   # the graph itself is FP32
    if sm.source.format == "pytorch":
        from .pytorch_source import export_pytorch
        ctx.step("exporting the PyTorch module to ONNX and validating it against the module")
        return export_pytorch(sm, out, atol=tol.atol, rtol=tol.rtol)
    if sm.source.format == "huggingface" and sm.pipeline == "image-classification":
        from .huggingface_source import load_image_classifier
        from .pytorch_source import export_module
        ctx.step("exporting the transformers image classifier to ONNX and validating it against the model")
        return export_module(load_image_classifier(ctx.source), sm, out, f"{sm.name}: source {sm.source.path}",
                             "transformers AutoModelForImageClassification (eager, FP32, CPU)",
                             atol=tol.atol, rtol=tol.rtol)
    if sm.source.format == "huggingface":
        from .huggingface_source import export_sequence_classifier
        from .quantize import gate_texts
        texts, digest, origin = gate_texts(sm)
        ctx.step(f"exporting the transformers classifier to ONNX and validating it on {len(texts)} texts")
        return {"validation_texts": {"file": origin, "sha256": digest}, **export_sequence_classifier(
            ctx.source, out, texts, input_names=("input_ids", "attention_mask"),
                                          output_name=sm.outputs[0].name, atol=tol.atol, rtol=tol.rtol,
                                          max_length=sm.size(sm.inputs[0].dims[-1], "max"))}
    if sm.source.format != "sentence-transformers":
        raise UserError("no ONNX export for this source format", where=where, actual=sm.source.format,
                        expected="sentence-transformers, pytorch or onnx")
    ctx.step("exporting to ONNX")
    axes = {i: d for i, d in enumerate(sm.inputs[0].dims) if isinstance(d, str)}
    result = export_sentence_embedding(ctx.source, out, input_names=tuple(t.name for t in sm.inputs),
                                       output_name=sm.outputs[0].name, axes=axes, opset=defaults.ONNX_OPSET)
    check_signature(out, expected_in, expected_out, where=where)
    ctx.step("validating the ONNX graph against sentence-transformers")
    check = validate_sentence_embedding(out, ctx.source, atol=tol.atol, rtol=tol.rtol,
                                        min_cosine=tol.min_cosine or 0.0)
    if not check.passed:
        raise UserError(f"exported ONNX does not match the source model: {check.explain()}", where=where,
                        actual=f"max abs error {check.max_abs_error:.3g}, min cosine {check.min_cosine:.6f}",
                        expected=f"atol {tol.atol:g}" + (f" + rtol {tol.rtol:g} x |ref|" if tol.rtol else "")
                                 + f", min cosine {tol.min_cosine}",
                        fix="loosen tolerance in the spec only if that error is acceptable for your use")
    return {"tool": result.exporter, "opset": result.opset, "export_seconds": round(result.seconds, 2),
            "validation": {"samples": check.samples, "max_abs_error": check.max_abs_error,
                           "min_cosine": check.min_cosine, "atol": tol.atol, "rtol": tol.rtol,
                           "min_cosine_required": tol.min_cosine,
                           "reference": "SentenceTransformer.encode(normalize_embeddings=True)"}}


def _external_data(path: Path) -> list[str]:
    """Files an ONNX model keeps its tensors in (paths relative to the model), each checked to exist."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data
    model = onnx.load(str(path), load_external_data=False)
    files = sorted({ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)})
    for rel in files:
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not (path.parent / rel).is_file():
            raise UserError("an external-data file of the ONNX model is missing or outside its folder",
                            where=str(path), actual=rel, expected="a file beside the model",
                            fix="keep the model's .data/.bin files next to the .onnx (as onnx.save wrote them)")
    return files


def _fp32_onnx(ctx: BuildContext) -> tuple[Path, dict]:
    """The FP32 graph that TensorRT and INT8 quantization start from: the ONNX source itself, or its export
    (cached beside the repository by source digest, proven like the served one)."""
    sm = ctx.spec_model
    if sm.source.format == "onnx":
        return ctx.source, {"tool": "the ONNX source itself", **_check_onnx(ctx, ctx.source)}
    path = ctx.cache_dir / "onnx" / f"{ctx.model.name}-{ctx.source_sha256[:12]}-opset{defaults.ONNX_OPSET}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, _make_onnx(ctx, path)


def _build_onnx(ctx: BuildContext) -> dict:
    out = ctx.stage / ctx.model.artifacts[0]
    return _quantized_onnx(ctx, out) if ctx.model.precision == "int8" else _make_onnx(ctx, out)


def _quantized_onnx(ctx: BuildContext, out: Path) -> dict:
    """CPU INT8: the FP32 graph quantized (quantize.py) until it passes tolerance.int8's gate on real inputs."""
    from .compare import run_onnx, st_reference, synthetic_feeds
    from .policy import cpu_int8_unit
    from .quantize import (calibration_texts, classifier_judge, embedding_gate, gate_texts, onnx_embeddings,
                           quantize_gated, source_tokens, tensor_gate)
    sm = ctx.spec_model
    tol = sm.tolerance["int8"]
    fp32, fp32_record = _fp32_onnx(ctx)
    fp32_record.update({"path": str(fp32), "sha256": sha256(fp32)})
    calibration = None
    if sm.pipeline == "text-embedding":
        texts, digest, origin = gate_texts(sm)
        ctx.step(f"encoding {len(texts)} gate texts with sentence-transformers (FP32 reference)")
        reference, feats = st_reference(ctx.source, texts, normalize=True)
        judge = lambda path: embedding_gate(reference, onnx_embeddings(path, feats), tol)   # noqa: E731
        calibration = st_reference(ctx.source, calibration_texts(sm)[0], normalize=True)[1]   # not the held-out 4
        data = {"texts": len(texts), "file": origin, "sha256": digest,
                "reference": "SentenceTransformer.encode(normalize_embeddings=True)"}
    elif sm.pipeline == "text-classification":
        judge, data, _ = classifier_judge(sm, ctx.source, fp32, tol)
        calibration = source_tokens(sm, ctx.source, calibration_texts(sm)[0])
    elif sm.pipeline == "image-classification":
        from .image_data import calibration_images, image_values
        ctx.step("decoding the gate images as the pre-processing model does")
        judge, data, feeds = classifier_judge(sm, ctx.source, fp32, tol)
        own = calibration_images(sm)
        calibration = image_values(sm, own, f"model {sm.name}: calibration") if own else feeds
    else:
        feeds = synthetic_feeds(sm.inputs, sm.shapes(sm.inputs, "opt"), defaults.VALIDATION_SEED)
        reference = run_onnx(fp32, feeds)
        judge = lambda path: tensor_gate(reference, run_onnx(path, feeds), tol)   # noqa: E731
        data = {"synthetic": {k: list(v.shape) for k, v in feeds.items()}, "seed": defaults.VALIDATION_SEED,
                "reference": "the FP32 ONNX graph"}
    unit = cpu_int8_unit(ctx.plan.hardware.cpu_features)
    q = quantize_gated(fp32, out, reduce_range=unit == "AVX2", judge=judge, step=ctx.step,
                       where=f"{ctx.model.name}: INT8 ({unit})", calibration=calibration)
    gate = q["gate"]
    return {"tool": q.pop("tool"), "fp32_onnx": fp32_record, "quantization": {**q, "cpu_unit": unit},
            "gate_data": data,
            "validation": {"samples": gate["samples"], "max_abs_error": gate["max_abs_error"],
                           "min_cosine": gate["min_cosine"], "neighbour_overlap": gate["neighbour_overlap"],
                           "atol": tol.atol, "min_cosine_required": tol.min_cosine,
                           "min_neighbour_overlap_required": tol.min_neighbour_overlap,
                           **({"top1_agreement": gate["top1_agreement"],
                               "min_top1_agreement_required": tol.min_top1_agreement or 1.0}
                              if gate["top1_agreement"] is not None else {}),
                           "reference": data["reference"]}}


def _plan_feeds(ctx: BuildContext, settings) -> list[tuple[str, dict]]:
    """Inputs a plan is validated on: real sentences for text embeddings, else the profile's min/opt/max shapes."""
    from .compare import sentence_features, synthetic_feeds
    if ctx.spec_model.pipeline == "text-embedding":
        feats = sentence_features(ctx.source)
        return [(f"{len(defaults.VALIDATION_SENTENCES)} validation sentences", feats)]
    p = settings.profiles[0]
    return [(f"profile 0 {which} shapes", synthetic_feeds(ctx.spec_model.inputs, dict(getattr(p, which)),
                                                          defaults.VALIDATION_SEED))
            for which in ("min", "opt", "max")]


def _tensorrt_recipe(plan: Plan, model: TritonModel, spec_model: ModelSpec) -> dict:
    """What a plan adds to the recipe: the builder's settings and what decides its ONNX (qdq.recipe checks the
    calibration data, so a bad file stops the build before any work)."""
    from .qdq import recipe
    from .trt_settings import builder_settings
    return {"tensorrt": builder_settings(plan, model).record(), "onnx_precision": recipe(model.precision, spec_model)}


def _prepare_tensorrt(ctx: BuildContext, fp32_record: dict | None = None) -> dict:
    """The part of a TensorRT build that needs no TensorRT: the FP32 graph (``fp32_record``: already made for another
    plan of the model), and from it the ONNX in the plan's precision (qdq.py: AutoCast, or Q/DQ gated on the CPU).
    build() runs it before checking the build host."""
    from .qdq import precision_onnx
    if fp32_record is None:
        fp32, fp32_record = _fp32_onnx(ctx)
        fp32_record.update({"path": str(fp32), "sha256": sha256(fp32)})
    fp32 = Path(fp32_record["path"])
    onnx_path, record = precision_onnx(ctx.model.precision, fp32, ctx.spec_model, ctx.source, ctx.cache_dir / "onnx",
                                       f"{ctx.model.name}-{ctx.source_sha256[:12]}", step=ctx.step)
    return {"fp32": fp32_record, "precision": record}


def _build_tensorrt(ctx: BuildContext) -> dict:
    from . import trt_engine as E   # looked up at call time: tests/trt_stand_in.py replaces the engine here
    from .compare import compare_outputs, run_onnx
    from .export import quantize_ops
    from .trt_manifest import plan_entry
    from .trt_settings import builder_settings, require_quantized
    settings = builder_settings(ctx.plan, ctx.model)
    if ctx.host is None:   # build() checks the host first; a direct call without one is our bug
        raise AssertionError("TensorRT build without a checked build host")
    sm = ctx.spec_model
    onnx_record = ctx.prepared or _prepare_tensorrt(ctx)
    fp32_path, onnx_path = Path(onnx_record["fp32"]["path"]), Path(onnx_record["precision"]["path"])
    require_quantized(settings, quantize_ops(onnx_path), where=f"{sm.name}: {onnx_path}")
    plan_path = ctx.stage / settings.plan_file
    cache_path = ctx.cache_dir / settings.timing_cache
    ctx.step(f"building {settings.plan_file} ({settings.precision.upper()}, TensorRT {ctx.host.tensorrt_version}, "
             f"{ctx.host.gpu.name})")
    engine = E.build_engine(settings, onnx_path, plan_path, cache_path, on_phase=ctx.on_phase)
    ctx.step(f"validating {settings.plan_file} against ONNX Runtime")
    tol = sm.tolerance[settings.precision]
    runs, worst = [], None
    for what, feeds in _plan_feeds(ctx, settings):
        check = compare_outputs(run_onnx(fp32_path, feeds), E.run_plan(plan_path, feeds), atol=tol.atol, rtol=tol.rtol,
                                min_cosine=tol.min_cosine or 0.0)
        runs.append({"inputs": what, "max_abs_error": check.max_abs_error, "min_cosine": check.min_cosine,
                     "passed": check.passed})
        if not check.passed:
            raise UserError(f"the {settings.precision.upper()} plan does not match ONNX Runtime on {what}: "
                            f"{check.explain()}", where=f"{ctx.model.name}/{settings.plan_file}",
                            actual=f"max abs error {check.max_abs_error:.3g}, min cosine {check.min_cosine:.6f}",
                            expected=f"tolerance.{settings.precision}: atol {tol.atol:g}, rtol {tol.rtol:g}, "
                                     f"min cosine {tol.min_cosine}",
                            fix="choose a wider precision (precision: fp32 or auto without this precision's "
                                "tolerance), or loosen the tolerance only if that error is acceptable")
        worst = check if worst is None or check.max_abs_error > worst.max_abs_error else worst
    validation = {"reference": "ONNX Runtime (CPU) on the FP32 graph, same inputs", "runs": runs,
                  "max_abs_error": worst.max_abs_error, "min_cosine": min(r["min_cosine"] for r in runs),
                  "atol": tol.atol, "rtol": tol.rtol, "min_cosine_required": tol.min_cosine}
    folder_rel = ctx.folder.resolve()
    ctx.trtexec = settings.trtexec_command(os.path.relpath(onnx_path.resolve(), folder_rel), settings.plan_file,
                                           os.path.relpath(cache_path.resolve(), folder_rel))
    entry = plan_entry(settings, tensorrt_version=engine.tensorrt_version, gpu_name=ctx.host.gpu.name,
                       sha256=sha256(plan_path), onnx=onnx_record, validation=validation,
                       engine={"seconds": round(engine.seconds, 1), "timing_cache": engine.timing_cache,
                               "profiles": engine.profiles, "io": engine.io, "size_bytes": engine.size_bytes},
                       recipe={})     # filled by build_model (the recipe it checked)
    entry["trtexec"] = shlex.join(ctx.trtexec)   # kept per plan: reproduce.sh holds the latest build's only
    return {"tool": f"TensorRT Python API {engine.tensorrt_version} (strongly typed network, ONNX parser)", "plans": {
        settings.plan_file: entry}, "validation": validation,
        "trtexec": shlex.join(ctx.trtexec)}


def _build_torchscript(ctx: BuildContext) -> dict:
    from .torchscript import check_torchscript
    if ctx.spec_model.source.format != "torchscript":
        raise UserError("the pytorch backend serves TorchScript sources", where=ctx.spec_model.name,
                        actual=ctx.spec_model.source.format, expected="source.format: torchscript",
                        fix="make one with `python -m tritonkit.torchscript --source ... --out model.pt`")
    ctx.step("copying and checking the TorchScript source")
    out = ctx.stage / ctx.model.artifacts[0]
    shutil.copyfile(ctx.source, out)
    return {"tool": "copied from the TorchScript source", "check": check_torchscript(out, ctx.spec_model)}


def _build_torch(ctx: BuildContext) -> dict:
    """python (torch): the transformer saved in the plan's precision under hf/, validated as model.py runs it
    (tritonkit.torch_export), against SentenceTransformer.encode with the precision's tolerance."""
    from .torch_export import export_torch_encoder
    tol = ctx.spec_model.tolerance[ctx.model.precision]
    ctx.step(f"saving and validating the {ctx.model.precision.upper()} PyTorch encoder")
    r = export_torch_encoder(ctx.source, ctx.stage / "hf", ctx.model.precision, atol=tol.atol,
                             min_cosine=tol.min_cosine or 0.0, on_gpu=ctx.model.on_gpu)
    return {"tool": f"transformers save_pretrained ({ctx.model.precision})", "export_seconds": round(r.seconds, 2),
            "validation": {"samples": len(defaults.VALIDATION_SENTENCES), "max_abs_error": r.max_abs_error,
                           "min_cosine": r.min_cosine, "atol": tol.atol, "min_cosine_required": tol.min_cosine,
                           "device": r.device, "reference": "SentenceTransformer.encode(normalize_embeddings=True)"}}


def _build_torch_program(ctx: BuildContext) -> dict:
    """python (torch-program): the source exported with torch.export in the plan's precision (model.pt2), loaded
    back as model.py loads it and checked against the FP32 source module (tritonkit.torch_program)."""
    from .torch_program import export_program
    sm, precision = ctx.spec_model, ctx.model.precision
    tol = sm.tolerance[precision]
    ctx.step(f"exporting the {precision.upper()} torch.export program and validating it against the source")
    return export_program(sm, ctx.source, ctx.stage / ctx.model.artifacts[0], precision, atol=tol.atol, rtol=tol.rtol,
                          on_gpu=ctx.model.on_gpu)


# The plan names each model's builder (policy.BackendRow.builder); a name missing here is our bug.
BUILDERS: dict[str, Callable[[BuildContext], dict]] = {
    "tokenizer": _build_tokenizer, "onnx": _build_onnx, "tensorrt": _build_tensorrt,
    "torchscript": _build_torchscript, "torch": _build_torch, "torch_program": _build_torch_program,
}


# --- reproduce.sh ------------------------------------------------------------------------------------

def reproduce_script(plan: Plan, trtexec: list[str] | None = None) -> str:
    """``reproduce.sh``: the tritonkit build line (the repository's own plan.json says what to build); for a
    plan also ``reproduce.sh trtexec``, the same plan with trtexec (paths relative to this folder; run it in
    the serving release's TensorRT image)."""
    head = ("#!/usr/bin/env bash\n# Rebuilds the artifacts in this folder exactly as tritonkit did, from the plan in the "
            "repository (two levels up).\n")
    build_line = 'tritonkit build --repo "$(dirname "$0")/../.." --force\n'
    if trtexec is None:
        return head + "set -euo pipefail\n" + build_line
    cc = f"{plan.gpu.compute_capability[0]}.{plan.gpu.compute_capability[1]}" if plan.gpu else "?"
    return (head +
            "#   ./reproduce.sh           tritonkit build: export, build, validate against ONNX Runtime, build.json\n"
            "#   ./reproduce.sh trtexec   the same plan with trtexec (same ONNX, same settings; no validation)\n"
            f"# Either must run in {defaults.NGC_TENSORRT_IMAGE} (TensorRT {plan.server.tensorrt_version}) on a GPU "
            f"of compute capability {cc}.\n"
            "set -euo pipefail\n"
            'if [[ "${1:-}" == "trtexec" ]]; then\n'
            '  cd "$(dirname "$0")"\n'
            f"  {shlex.join(trtexec)}\n"
            "  exit 0\n"
            "fi\n" + build_line)


# --- one model -----------------------------------------------------------------------------------------

def _staged_files(stage: Path) -> list[str]:
    return sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())


def build_model(plan: Plan, model: TritonModel, spec_model: ModelSpec, repo: Path, force: bool = False, *,
                host=None, step: Callable[[str], None] = lambda text: None,
                on_phase: Callable[[str, int, int], None] | None = None,
                source: tuple[Path, str] | None = None, prepared: dict | None = None) -> BuildResult:
    folder = repo / model.name / VERSION
    started = time.perf_counter()
    src, src_sha = source or _source_of(spec_model)
    recipe = _recipe(model, spec_model, src_sha, plan)
    plan_file = None
    names = model.artifacts
    if model.backend == "tensorrt":
        from .trt_settings import builder_settings
        settings = builder_settings(plan, model)
        recipe.update(_tensorrt_recipe(plan, model, spec_model))
        plan_file, names = settings.plan_file, (settings.plan_file,)
    if not force and _is_current(folder, names, recipe, plan_file):
        return BuildResult(model.name, names, "current", 0.0, "(manifest matches the plan)")
    builder = BUILDERS[model.builder]
    folder.mkdir(parents=True, exist_ok=True)
    stage = folder.parent / f".build-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    ctx = BuildContext(plan=plan, model=model, spec_model=spec_model, repo=Path(repo), folder=folder, stage=stage,
                       source=src, source_sha256=src_sha, host=host, step=step, on_phase=on_phase, prepared=prepared)
    try:
        record = builder(ctx)
        files = {name: sha256(stage / name) for name in _staged_files(stage)}
        previous = _read_manifest(folder)
        if plan_file is not None:
            record["plans"][plan_file]["recipe"] = recipe
            for other, entry in (previous.get("plans") or {}).items():   # other GPU architectures' plans stay
                if other != plan_file and (folder / other).is_file() and sha256(folder / other) == entry.get("sha256"):
                    record["plans"].setdefault(other, entry)
                    files.setdefault(other, entry["sha256"])
        manifest = {"model": model.name, "tritonkit": __version__, "recipe": recipe, "files": dict(sorted(files.items())),
                    "source": {"format": spec_model.source.format, "path": spec_model.source.path,
                               **({"factory": spec_model.source.factory} if spec_model.source.factory else {}),
                               "resolved": str(src), "sha256": src_sha},
                    "server": {"name": plan.server.name, "triton": plan.server.triton_version,
                               "tensorrt": plan.server.tensorrt_version},
                    "gpu": None if plan.gpu is None else {"name": plan.gpu.name,
                                                          "compute_capability": list(plan.gpu.compute_capability)},
                    "precision": model.precision, "python": sys.version.split()[0], **record}
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        (stage / REPRODUCE).write_text(reproduce_script(plan, ctx.trtexec))
        (stage / REPRODUCE).chmod(0o755)
        staged = [n for n in _staged_files(stage) if n not in (REPRODUCE, MANIFEST)]
        for name in [*staged, REPRODUCE, MANIFEST]:       # manifest last: it vouches for the files before it
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / name, folder / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    detail = ""
    v = record.get("validation")
    if v:
        ref = v.get("reference", "").split(" on ")[0].split("(")[0].strip()
        detail = f"max abs error {v['max_abs_error']:.2e}" + (
            f", min cosine {v['min_cosine']:.7f}" if v.get("min_cosine") is not None else "") + (
            f", top-10 neighbour overlap {v['neighbour_overlap']:.3f}" if v.get("neighbour_overlap") is not None
            else "") + (f", top-1 agreement {v['top1_agreement']:.3f}" if v.get("top1_agreement") is not None
                        else "") + f" vs {ref}" + (f" at the {'/'.join(v['shapes'])} shapes" if "shapes" in v else "")
        if "quantization" in record:
            q = record["quantization"]
            alpha = q.get("smoothquant", {}).get("alpha")
            detail = (f"INT8 ({q['cpu_unit']}, {q['quantized_matmuls']} MatMuls INT8, {len(q['fp32_matmuls'])} kept "
                      f"FP32" + (f", SmoothQuant alpha {alpha}" if alpha is not None else "") + f"): {detail}")
    elif "smoke" in record or "check" in record:
        detail = "signature matches the spec; ran at the spec's shapes"
    if model.label == "onnxruntime (tensorrt-ep)":
        detail += ("; no TensorRT plan built (plan without TensorRT builds): the server's ONNX Runtime builds "
                   "TensorRT engines at load time")
    return BuildResult(model.name, names, "built", time.perf_counter() - started, detail.lstrip("; "))


def _source_of(spec_model: ModelSpec) -> tuple[Path, str]:
    """The resolved source and its digest; an ONNX model's external-data files are part of its bytes."""
    from .sources import source_sha256
    src = _resolve_source(spec_model)
    digest = source_sha256(src)
    if spec_model.source.format == "onnx":
        data = _external_data(src)
        if data:
            digest = hashlib.sha256(" ".join([digest, *(f"{rel}:{sha256(src.parent / rel)}" for rel in data)])
                                    .encode()).hexdigest()
    return src, digest


# --- the whole plan (or a fleet of plans) --------------------------------------------------------------

def _jobs(plans: tuple[Plan, ...]) -> list[tuple[Plan, TritonModel]]:
    """(plan, model) per artifact set: shared artifacts once (first plan); TensorRT plans once per architecture."""
    jobs, seen = [], set()
    for m in plans[0].models:
        if not m.artifacts:
            continue
        variants = [(p, p.model(m.name)) for p in plans] if m.backend == "tensorrt" else [(plans[0], m)]
        for p, vm in variants:
            key = (vm.name, tuple(p.gpu.compute_capability) if vm.backend == "tensorrt" and p.gpu else None)
            if key not in seen:
                seen.add(key)
                jobs.append((p, vm))
    return jobs


def build(repo: Path, *, force: bool = False, progress: bool = True, spec: Spec | None = None) -> list[BuildResult]:
    """Build what the repository's plan (or every plan of its fleet) names into it; one result per artifact set.

    The plan comes from the repository's plan.json, the spec through the plan (refused if edited since).
    Before any work: the rendered files must still be what the plan renders, and TensorRT plans that are
    not current need this host to run the serving release's TensorRT on a GPU of their architecture
    (nothing else about the host matters). In a fleet, plans for the other architectures are reported
    "skipped" (build them on such a GPU). ``spec``: the spec already loaded by a caller that just planned
    from it (demo), checked against the plan's digest instead of read again.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from . import plan_file
    from .render import check_repository
    repo = Path(repo)
    plans = plan_file.read_plans(repo)
    drift = check_repository(plans, repo)
    if drift.missing or drift.changed:
        raise UserError("the repository's files are not what its plan.json renders (edited by hand?)", where=str(repo),
                        actual=f"differs in {', '.join((drift.missing + drift.changed)[:4])}",
                        expected="the files `tritonkit render` wrote",
                        fix=f"re-render (`tritonkit render --plan {repo / plan_file.PLAN_FILE} --out {repo}`), then build")
    spec = plan_file.load_spec(plans) if spec is None or spec.sha256 != plans[0].spec.sha256 else spec
    sources = {m.name: _source_of(m) for m in spec.models
               if any(tm.source_model == m.name and tm.artifacts for tm in plans[0].models)}
    jobs = _jobs(plans)
    for p, m in jobs:   # every recipe's inputs (e.g. INT8 gate data) readable before any artifact changes
        _recipe(m, spec.model(m.source_model), sources[m.source_model][1], p)
        if m.backend == "tensorrt":     # calibration data too
            _tensorrt_recipe(p, m, spec.model(m.source_model))
    host, skipped, prepared = None, {}, {}
    trt_jobs = [(p, m) for p, m in jobs if m.backend == "tensorrt" and (force or not _plan_current(p, m, spec, repo,
                                                                                                  sources))]
    if trt_jobs:
        from . import trt_engine
        from .trt_settings import PRECISIONS
        fp32: dict[str, dict] = {}
        # Calibrating and gating a Q/DQ graph needs no TensorRT and no GPU: it is done (and recorded) on any host, so
        # the TensorRT container only compiles. Other plans' ONNX is quick to make there, so nothing precedes the check.
        for p, m in (job for job in trt_jobs if PRECISIONS[job[1].precision].onnx == "ptq"):
            ctx = _preparing(p, m, spec.model(m.source_model), repo, sources[m.source_model], progress)
            prepared[_plan_key(p, m)] = _prepare_tensorrt(ctx, fp32.get(m.name))
            fp32[m.name] = prepared[_plan_key(p, m)]["fp32"]
        try:
            host = trt_engine.require_build_host(
                plans[0], sorted({tuple(p.gpu.compute_capability) for p, _ in trt_jobs if p.gpu}), repo=repo)
        except UserError as refusal:
            raise _compile_elsewhere(refusal, repo, [j for j in trt_jobs if _plan_key(*j) in prepared], prepared) \
                from None
        for p, m in trt_jobs:
            if tuple(p.gpu.compute_capability) != tuple(host.gpu.compute_capability):
                skipped[(m.name, tuple(p.gpu.compute_capability))] = p
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), disable=not progress, transient=True) as bar:
        task = bar.add_task("build", total=len(jobs))
        phase = bar.add_task("", total=1, visible=False)

        def on_phase(name: str, done: int, total: int) -> None:
            bar.update(phase, description=f"  TensorRT: {name}", completed=done, total=max(total, 1), visible=True)

        for p, m in jobs:
            cc = tuple(p.gpu.compute_capability) if p.gpu else None
            if (m.name, cc) in skipped:
                results.append(BuildResult(m.name, m.artifacts, "skipped", 0.0,
                                           f"needs a GPU of compute capability {cc[0]}.{cc[1]} (this host: "
                                           f"{host.gpu.name}); run the same build there"))
                bar.advance(task)
                continue
            head = f"build {m.name} ({', '.join(m.artifacts)})"
            bar.update(task, description=head)
            results.append(build_model(p, m, spec.model(m.source_model), repo, force=force, host=host,
                                       step=lambda text, head=head: bar.update(task, description=f"{head}: {text}"),
                                       on_phase=on_phase, source=sources[m.source_model],
                                       prepared=prepared.get((m.name, cc))))
            bar.update(phase, visible=False)
            bar.advance(task)
    return results


def _plan_key(plan: Plan, model: TritonModel) -> tuple:
    return model.name, tuple(plan.gpu.compute_capability)


def _preparing(plan: Plan, model: TritonModel, spec_model: ModelSpec, repo: Path, source: tuple[Path, str],
               progress: bool) -> BuildContext:
    """A context for _prepare_tensorrt, which writes only to the cache (nothing is staged)."""
    folder = Path(repo) / model.name / VERSION
    say = (lambda text: print(f"{model.name}: {text}", file=sys.stderr, flush=True)) if progress else (lambda _: None)
    return BuildContext(plan=plan, model=model, spec_model=spec_model, repo=Path(repo), folder=folder, stage=folder,
                        source=source[0], source_sha256=source[1], step=say)


def _compile_elsewhere(refusal: UserError, repo: Path, jobs: list, prepared: dict) -> UserError:
    """The build host's refusal, once what was made here is recorded in each model's build.json ("prepared": the
    plan's ONNX and its gate; the plan itself is not built here, so nothing about it is verified)."""
    from .qdq import summary
    from .trt_settings import builder_settings
    if not jobs:
        return refusal
    made = []
    for p, m in jobs:
        settings, record = builder_settings(p, m), prepared[_plan_key(p, m)]
        folder = Path(repo) / m.name / VERSION
        manifest = _read_manifest(folder)
        manifest.setdefault("prepared", {})[settings.plan_file] = {
            "onnx": record, "plan": f"not built: {refusal.what}", "tensorrt": settings.tensorrt_version,
            "build_image": settings.build_image, "compute_capability": settings.cc}
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / f".{MANIFEST}.{os.getpid()}"
        staged.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(staged, folder / MANIFEST)
        made.append(f"{m.name}/{VERSION}/{settings.plan_file}: {summary(settings.precision, record['precision'])}")
    return UserError(f"{refusal.what}\n  made here and recorded in build.json (no plan is built here, so none is "
                     "verified):\n" + "\n".join(f"    {line}" for line in made),
                     where=refusal.where, actual=refusal.actual, expected=refusal.expected, fix=refusal.fix)


def _plan_current(plan: Plan, model: TritonModel, spec: Spec, repo: Path, sources: dict) -> bool:
    from .trt_settings import builder_settings
    spec_model = spec.model(model.source_model)
    settings = builder_settings(plan, model)
    recipe = _recipe(model, spec_model, sources[model.source_model][1], plan)
    recipe.update(_tensorrt_recipe(plan, model, spec_model))
    return _is_current(repo / model.name / VERSION, (settings.plan_file,), recipe, settings.plan_file)
