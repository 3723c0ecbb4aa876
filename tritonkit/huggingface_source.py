"""Step: a local Hugging Face transformers folder as a model source (never a hub id).

``source: {format: huggingface, path: ./my-model}``: config.json, the weights and, for text pipelines, the
tokenizer files. :func:`folder_facts` is what the spec reads (cheap JSON: labels, whether a tokenizer is
there); :func:`export_sequence_classifier` loads the model with transformers, exports ``forward(input_ids,
attention_mask) -> logits`` to ONNX (token_type_ids are zeros inside the graph, as for a single text) and
proves the graph against the model on real sentences: max logit error and top-1 agreement.

Heavy imports (torch, transformers, onnxruntime) happen inside the functions.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from . import defaults
from .errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")   # a fast tokenizer's file, or the vocabulary to build one


@dataclass(frozen=True)
class FolderFacts:
    labels: tuple[str, ...]          # config.id2label by index (empty: the config has none)
    has_tokenizer: bool
    max_length: int | None           # the tokenizer's model_max_length, capped by max_position_embeddings


def folder_facts(folder: Path) -> FolderFacts:
    folder = Path(folder)
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("not a Hugging Face model folder (no config.json)", where=str(folder),
                        actual=sorted(p.name for p in folder.iterdir())[:12] if folder.is_dir() else "no folder",
                        expected="a folder written by save_pretrained(): config.json, weights, tokenizer files",
                        fix="save the model and its tokenizer with save_pretrained(path) and point source.path "
                            "there") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"config.json is not readable JSON: {exc}", where=str(config_path)) from None
    id2label = config.get("id2label") or {}
    labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int)) if id2label else ()
    limit = None
    try:
        tok_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        limit = tok_config.get("model_max_length")
    except (OSError, ValueError):
        pass
    positions = config.get("max_position_embeddings")
    sizes = [v for v in (limit, positions) if isinstance(v, int) and 2 <= v < 10**6]
    return FolderFacts(labels=labels, has_tokenizer=any((folder / f).is_file() for f in TOKENIZER_FILES),
                       max_length=min(sizes) if sizes else None)


# Pillow's resampling numbers, as Hugging Face image processors store them -> the spec's filter names.
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
CHANNEL_MODES = {1: "L", 3: "RGB"}
# Image-processor steps that change the pixels and that image_ops does not do: a folder that turns one on is refused.
UNSUPPORTED_STEPS = ("do_pad", "do_flip_channel_order", "do_color_quantize")


def image_settings(folder: Path, where: str) -> dict:
    """The spec's ``image`` block from the folder's preprocessor_config.json (and config.json num_channels):
    resize to {height, width}, optional centre crop, x * 1/255, (x - mean) / std. What the kit's pre-processing
    cannot reproduce exactly is refused, naming the key."""
    folder = Path(folder)
    try:
        proc = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("the Hugging Face folder has no preprocessor_config.json", where=str(folder),
                        expected="the image processor saved beside the model (processor.save_pretrained(path))",
                        fix="save it, or give the transforms in the spec: image: {size, crop, mode, mean, std}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"preprocessor_config.json is not readable JSON: {exc}", where=where) from None
    channels = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("num_channels", 3)

    def refuse(key, actual, expected):
        raise UserError("the image processor does something the kit's pre-processing does not", where=f"{where}: {key}",
                        actual=actual, expected=expected, fix="give the transforms in the spec instead: "
                        "image: {size: [h, w], crop: [h, w], mode, mean, std, resample}")

    def pair(key):
        value = proc.get(key)
        if not (isinstance(value, dict) and {"height", "width"} <= set(value)):
            refuse(key, value, "{height, width}")
        return [value["height"], value["width"]]
    for key in UNSUPPORTED_STEPS:
        if proc.get(key):
            refuse(key, proc[key], "false: the kit's pre-processing does resize, crop, rescale and normalise only")
    if not proc.get("do_resize", True):
        refuse("do_resize", False, "true: the classifier takes one fixed size")
    size = proc.get("size")
    if isinstance(size, dict) and set(size) == {"shortest_edge"} and proc.get("crop_pct") is not None:
        # ConvNeXt/ResNet processors: below 384 the shortest edge goes to edge / crop_pct and the centre
        # edge x edge is kept; from 384 the image is resized to edge x edge (transformers' ConvNextImageProcessor)
        edge = size["shortest_edge"]
        if edge < 384:
            size, crop = int(edge / proc["crop_pct"]), [edge, edge]
        else:
            size = crop = [edge, edge]
    elif isinstance(size, dict) and set(size) == {"shortest_edge"}:
        size = size["shortest_edge"]
        if not proc.get("do_center_crop", False):
            refuse("do_center_crop", False, "true with crop_size: a shortest-edge resize leaves images of other shapes")
        crop = pair("crop_size")
    else:
        size = pair("size")
        crop = pair("crop_size") if proc.get("do_center_crop", False) else size
    factor = proc.get("rescale_factor", 1 / 255)
    if not proc.get("do_rescale", True) or abs(factor - 1 / 255) > 1e-9:
        refuse("rescale_factor", factor if proc.get("do_rescale", True) else "do_rescale: false", "1/255")
    if channels not in CHANNEL_MODES:
        refuse("num_channels (config.json)", channels, list(CHANNEL_MODES))
    resample = proc.get("resample", 2)
    if resample not in PIL_RESAMPLE:
        refuse("resample", resample, {k: v for k, v in PIL_RESAMPLE.items()})
    normalize = proc.get("do_normalize", True)
    mean = proc.get("image_mean") if normalize else [0.0] * channels
    std = proc.get("image_std") if normalize else [1.0] * channels
    return {"size": size, "crop": crop, "mode": CHANNEL_MODES[channels], "mean": mean, "std": std,
            "resample": PIL_RESAMPLE[resample]}


def load_image_classifier(folder: Path):
    """``forward(pixel_values) -> logits`` of AutoModelForImageClassification, in eval mode."""
    import torch
    from transformers import AutoModelForImageClassification

    from .sources import quiet_transformers
    quiet_transformers()
    try:
        model = AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True,
                                                                attn_implementation="eager").eval()
    except (OSError, ValueError) as exc:
        raise UserError(f"transformers cannot load the folder: {str(exc).splitlines()[0][:300]}",
                        where=f"source {folder}",
                        expected="an image-classification model saved with save_pretrained()") from None

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):   # spec order, like every module the exports take: (pixel_values,)
            return (self.model(pixel_values=args[0]).logits,)
    return Logits().eval()


def _logits_module(model):
    """``forward(input_ids, attention_mask) -> logits``; token_type_ids (all zeros: one text) only for models that
    take them (BERT does; DistilBERT's forward has no such argument)."""
    import inspect

    import torch
    segments = "token_type_ids" in inspect.signature(model.forward).parameters

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            extra = {"token_type_ids": torch.zeros_like(input_ids)} if segments else {}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
    return Logits().eval()


def load_classifier(folder: Path, attn_implementation: str = "eager"):
    """(``forward(input_ids, attention_mask) -> logits`` module in eval mode, the folder's tokenizer)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .sources import quiet_transformers
    quiet_transformers()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True,
                                                                   attn_implementation=attn_implementation).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"transformers cannot load the folder: {str(exc).splitlines()[0][:300]}",
                        where=f"source {folder}",
                        expected="a sequence-classification model saved with save_pretrained()") from None
    return _logits_module(model), tokenizer


def token_feeds(tokenizer, texts, input_names: tuple[str, str], max_length: int) -> dict:
    """The classifier's inputs for ``texts`` (int64 NumPy), padded to the longest, as the served tokenizer does."""
    import numpy as np
    t = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    ids, mask = input_names
    return {ids: t["input_ids"].astype(np.int64), mask: t["attention_mask"].astype(np.int64)}


def spec_token_feeds(sm, tokenizer, texts) -> dict:
    """token_feeds under the spec's input names, truncated at its sequence axis's max (as the served tokenizer)."""
    return token_feeds(tokenizer, texts, (sm.inputs[0].name, sm.inputs[1].name), sm.size(sm.inputs[0].dims[-1], "max"))


def export_sequence_classifier(folder: Path, out: Path, texts: list[str], *, input_names: tuple[str, str],
                               output_name: str, atol: float, rtol: float, max_length: int,
                               opset: int = defaults.ONNX_OPSET) -> dict:
    """transformers' AutoModelForSequenceClassification -> ONNX at ``out``, proven on ``texts``; the build.json
    record."""
    import torch

    from .compare import compare_outputs, run_onnx
    from .export import EXPORTER, torch_onnx_export
    where = f"source {folder}"
    module, tokenizer = load_classifier(folder)
    ids, mask = input_names

    def tokens(texts):
        return token_feeds(tokenizer, texts, input_names, max_length)

    def eager(feed):
        with torch.no_grad():
            return {output_name: module(torch.from_numpy(feed[ids]), torch.from_numpy(feed[mask])).numpy()}

    trace = tokens(defaults.VALIDATION_SENTENCES[:2])
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    axes = {ids: {0: "batch", 1: "sequence"}, mask: {0: "batch", 1: "sequence"}, output_name: {0: "batch"}}
    torch_onnx_export(module, (torch.from_numpy(trace[ids]), torch.from_numpy(trace[mask])), out,
                      input_names=list(input_names), output_names=[output_name], dynamic_axes=axes, opset=opset)
    seconds = time.perf_counter() - started
    feed = tokens(texts)       # other batch size and lengths than the trace
    reference, got = eager(feed), run_onnx(out, feed)
    check = compare_outputs(reference, got, atol=atol, rtol=rtol)
    agree = float((reference[output_name].argmax(-1) == got[output_name].argmax(-1)).mean())
    if not check.passed or agree < 1.0:
        raise UserError("exported ONNX does not match the transformers model: " + "; ".join(
            list(check.failures) + ([f"top-1 agreement {agree:.3f} < 1"] if agree < 1 else [])), where=where,
            actual=f"max logit error {check.max_abs_error:.3g}, top-1 agreement {agree:.3f}",
            expected=f"atol {atol:g}" + (f" + rtol {rtol:g} x |ref|" if rtol else "") + ", top-1 agreement 1",
            fix="loosen tolerance.fp32 only if that error is acceptable, or export it yourself (format: onnx)")
    return {"tool": EXPORTER, "opset": opset, "export_seconds": round(seconds, 2),
            "validation": {"reference": "transformers AutoModelForSequenceClassification (eager, FP32, CPU)",
                           "samples": int(feed[ids].shape[0]), "max_abs_error": check.max_abs_error,
                           "top1_agreement": agree, "atol": atol, "rtol": rtol}}
