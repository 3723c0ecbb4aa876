"""Build step for the GPU path of a PyTorch, Hugging Face or ONNX source: a torch.export program (``model.pt2``).

The embedded server's python backend serves it with templates/python/program_torch.py.j2 (CUDA, the plan's
precision, torch.compile by SM count, bucketed shapes, CUDA graphs, DLPack). Here the source module is cast to
the plan's precision, exported with the spec's named axes as dynamic dimensions (one ``Dim`` per axis name, so
inputs that share an axis share it in the program), saved, loaded back and run as the server will run it: on
this host's GPU when it has one, else on the CPU. Every output is compared with the FP32 source module (eager,
CPU; for an ONNX source, ONNX Runtime on the graph) within the spec's tolerance for the precision; classification
pipelines must also agree on the top-1 class everywhere.

| source      | module                                       | validation inputs                         |
|-------------|----------------------------------------------|-------------------------------------------|
| pytorch     | the factory's module, outputs in spec order  | seeded tensors at the spec's min/opt/max  |
| huggingface image classifier | ``forward(pixel_values) -> logits`` | the same                       |
| huggingface | ``forward(input_ids, attention_mask) -> logits`` | the gate texts (quantize.gate_texts) tokenized, |
|             |                                              | then the 8 shortest alone (other sizes)   |
| onnx        | the graph interpreted in torch (onnx_torch.py) | seeded tensors; reference: ONNX Runtime  |

Heavy imports (torch, transformers) happen inside the functions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from . import defaults
from .dtypes import TORCH_PRECISIONS
from .errors import UserError
from .spec import ModelSpec

CLASSIFYING = ("text-classification", "image-classification")   # pipelines whose gate includes top-1 agreement


def _source(sm: ModelSpec, source: Path) -> tuple[object, list[tuple[str, dict]], str, dict, Callable | None]:
    """(module returning the spec's outputs as a tuple, [(label, feed)], reference name, record extras, reference:
    feed -> outputs, or None for the module itself in eager FP32 on the CPU)."""
    from .pytorch_source import SHAPES, feeds
    synthetic = [(which, feeds(sm, which, defaults.VALIDATION_SEED + 1 + k)) for k, which in enumerate(SHAPES)]
    if sm.source.format == "onnx":
        from .compare import run_onnx
        from .onnx_torch import load_onnx_module
        module = load_onnx_module(source, tuple(t.name for t in sm.inputs), tuple(t.name for t in sm.outputs),
                                  where=f"model {sm.name}: source {sm.source.path}")
        return (module, synthetic, "ONNX Runtime (CPU) on the ONNX source", {"converter": "tritonkit.onnx_torch"},
                lambda feed: run_onnx(source, feed))
    if sm.source.format == "pytorch":
        from .pytorch_source import load_spec_module
        return load_spec_module(sm)[0], synthetic, "the PyTorch module (eager, FP32, CPU)", {}, None
    if sm.source.format == "huggingface" and sm.pipeline == "image-classification":
        from .huggingface_source import load_image_classifier
        return (load_image_classifier(source), synthetic,
                "transformers AutoModelForImageClassification (eager, FP32, CPU)", {}, None)
    if sm.source.format == "huggingface":
        from .huggingface_source import load_classifier, spec_token_feeds
        from .quantize import gate_texts
        # Eager attention (matmul + softmax, fused by inductor): exported on a GPU, SDPA's kernel choice checks the
        # sequence length's alignment, which an H200 refused as "Constraints violated (sequence)" in FP32.
        module, tokenizer = load_classifier(source, attn_implementation="eager")
        texts, digest, origin = gate_texts(sm)
        shortest = sorted(texts, key=len)[:8]     # a second batch and sequence size: the axes stay dynamic
        checks = [(f"{len(texts)} texts", spec_token_feeds(sm, tokenizer, texts)),
                  (f"the {len(shortest)} shortest texts", spec_token_feeds(sm, tokenizer, shortest))]
        return (_one_output(module), checks, "transformers AutoModelForSequenceClassification (eager, FP32, CPU)",
                {"validation_texts": {"file": origin, "sha256": digest}}, None)
    raise UserError("no torch.export path for this source format", where=f"model {sm.name}",
                    actual=sm.source.format, expected="pytorch, huggingface or onnx")


def _one_output(module):
    """``module`` returning its single output as a one-tuple (the spec-order form every path runs)."""
    import torch

    class OneOutput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = module

        def forward(self, *args):
            return (self.module(*args),)
    return OneOutput().eval()


def _dynamic_shapes(sm: ModelSpec) -> dict:
    """One torch.export Dim per named axis (min/max from the spec), shared by every input that names it."""
    from torch.export import Dim
    dims = {name: Dim(name.replace("-", "_"), min=max(1, axis.min), max=axis.max) for name, axis in sm.axes.items()}
    return {t.name: {i: dims[d] for i, d in enumerate(t.dims) if isinstance(d, str)} or None for t in sm.inputs}


def _example(sm: ModelSpec, feed: dict):
    """Export example inputs: the opt shapes, each named axis at least 2 (a size-1 example would specialize it)."""
    import numpy as np
    import torch
    shapes = {t.name: tuple(max(2, s) if isinstance(d, str) else s for d, s in zip(t.dims, feed[t.name].shape))
              for t in sm.inputs}
    return tuple(torch.from_numpy(np.ascontiguousarray(np.resize(feed[t.name], shapes[t.name]))) for t in sm.inputs)


def _to_device(feed: dict, sm: ModelSpec, dtype, device):
    import numpy as np
    import torch
    out = []
    for t in sm.inputs:
        x = torch.from_numpy(np.ascontiguousarray(feed[t.name])).to(device)
        out.append(x.to(dtype) if x.is_floating_point() else x)
    return out


def run_program(module, sm: ModelSpec, feed: dict, dtype, device) -> dict:
    """A loaded program (or module) on ``feed``, as the runner calls it; NumPy out, floats as FP32."""
    import torch
    with torch.inference_mode():
        got = module(*_to_device(feed, sm, dtype, device))
    return {t.name: (g.float() if g.is_floating_point() else g).cpu().numpy() for t, g in zip(sm.outputs, got)}


def load_program(path: Path, device: str):
    """The saved program moved to ``device`` (its recorded device constants too), as the runner loads it."""
    import torch
    from torch.export.passes import move_to_device_pass
    return move_to_device_pass(torch.export.load(str(path)), device).module()


def export_program(sm: ModelSpec, source: Path, out: Path, precision: str, *, atol: float, rtol: float,
                   on_gpu: bool = True) -> dict:
    """Export the source to ``out`` in ``precision``, validate the saved program; the build.json record. Exported
    and validated where it will run: this host's GPU for a GPU plan (the CPU when it has none), else the CPU."""
    import copy

    import torch

    from .compare import compare_outputs
    if precision not in TORCH_PRECISIONS:
        raise UserError("precision not supported by the torch.export path", where=f"model {sm.name}",
                        actual=precision, expected=sorted(TORCH_PRECISIONS))
    device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, TORCH_PRECISIONS[precision])
    module, checks, reference_name, extras, reference = _source(sm, source)
    # FP32 means FP32: TF32 would change the numbers this validation is about
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    references = [reference(feed) if reference else run_program(module, sm, feed, torch.float32, "cpu")
                  for _, feed in checks]
    cast = copy.deepcopy(module).to(device=device, dtype=dtype)
    started = time.perf_counter()
    example = tuple(x.to(device, dtype) if x.is_floating_point() else x.to(device)
                    for x in _example(sm, checks[0][1]))
    try:
        # both wrappers take forward(*args): their inputs are one tuple, and so are the dynamic shapes
        program = torch.export.export(cast, example, dynamic_shapes=(tuple(_dynamic_shapes(sm).values()),))
    except Exception as exc:  # noqa: BLE001 - the exporter's message is the most useful thing to show
        raise UserError(f"torch.export failed: {type(exc).__name__}: {' '.join(str(exc).split())[:600]}",
                        where=f"model {sm.name}: source {sm.source.path}",
                        expected="a module torch.export can trace with the spec's named axes dynamic",
                        fix="make forward() free of data-dependent Python control flow, or serve it on the "
                            "CPU path (plan without a GPU)") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(out))
    seconds = time.perf_counter() - started
    served = load_program(out, device)
    worst, agreement, shapes = None, 1.0, {}
    for (label, feed), reference in zip(checks, references):
        got = run_program(served, sm, feed, dtype, device)
        check = compare_outputs(reference, got, atol=atol, rtol=rtol)
        shapes[label] = {n: list(v.shape) for n, v in feed.items()}
        if sm.pipeline in CLASSIFYING:
            first = sm.outputs[0].name
            agreement = min(agreement, float((reference[first].argmax(-1) == got[first].argmax(-1)).mean()))
        if worst is None or check.max_abs_error > worst.max_abs_error:
            worst = check
        if not check.passed or agreement < 1.0:
            raise UserError(f"the {precision.upper()} program does not match the source at {label}: " + "; ".join(
                list(check.failures) + ([f"top-1 agreement {agreement:.3f} < 1"] if agreement < 1 else [])),
                where=f"model {sm.name}", actual=f"max abs error {check.max_abs_error:.3g}" + (
                    f", top-1 agreement {agreement:.3f}" if sm.pipeline in CLASSIFYING else ""),
                expected=f"tolerance.{precision}: atol {atol:g}" + (f" + rtol {rtol:g} x |ref|" if rtol else ""),
                fix=f"loosen tolerance.{precision} only if that error is acceptable, or drop it from the spec "
                    "(the plan then takes a wider precision)")
    samples = sum(feed[sm.inputs[0].name].shape[0] for _, feed in checks)
    validation = {"reference": reference_name, "device": device, "shapes": shapes, "samples": samples,
                  "max_abs_error": worst.max_abs_error, "atol": atol, "rtol": rtol}
    if sm.pipeline in CLASSIFYING:
        validation["top1_agreement"] = agreement
    return {"tool": f"torch.export {torch.__version__} ({precision})", "export_seconds": round(seconds, 2),
            "exported_on": device, **extras, "validation": validation}
