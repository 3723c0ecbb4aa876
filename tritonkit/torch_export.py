"""Build step for the PyTorch path: the encoder's weights saved in the plan's precision, then proven.

The served model.py (templates/python/encoder_torch.py.j2) loads `hf/` with bert_encoder.py (plain
PyTorch, the source's pooling + L2 normalisation included); validation runs that same module on the saved files and
compares it with SentenceTransformer.encode(normalize_embeddings=True) within the spec's tolerance
for the precision. On a machine with CUDA it validates on the GPU, otherwise on the CPU.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from .defaults import VALIDATION_SENTENCES
from .dtypes import TORCH_PRECISIONS
from .errors import UserError
from .sources import load_sentence_transformer, quiet_transformers, st_layout


@dataclass(frozen=True)
class TorchExport:
    folder: Path
    precision: str
    device: str
    max_abs_error: float
    min_cosine: float
    seconds: float


def _transformer_dir(model_dir: Path) -> Path:
    """sentence-transformers keeps the HF transformer at the root or in a `0_Transformer` module folder."""
    modules = model_dir / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text()):
            if module.get("type", "").endswith("Transformer"):
                return model_dir / module.get("path", "")
    return model_dir


def bert_module():
    """templates/python/bert_encoder.py: the module model.py serves, imported here to validate it."""
    import importlib.util

    from .defaults import TEMPLATES_DIR
    spec = importlib.util.spec_from_file_location("tritonkit_bert_encoder", TEMPLATES_DIR / "python" / "bert_encoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pooled_embeddings(folder: Path, sentences, precision: str, device: str, tokenizer_dir: Path):
    """What model.py computes, on `sentences`, float32 out."""
    import torch
    from transformers import AutoTokenizer

    encoder = bert_module().BertEncoder.from_folder(str(folder), getattr(torch, TORCH_PRECISIONS[precision]), device)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    batch = tok(list(sentences), padding=True, truncation=True, max_length=256, return_tensors="pt").to(device)
    with torch.inference_mode():
        return encoder(batch["input_ids"], batch["attention_mask"]).float().cpu().numpy()


def export_torch_encoder(model_dir: Path, dest: Path, precision: str, *, atol: float, min_cosine: float,
                         sentences=VALIDATION_SENTENCES, on_gpu: bool = True) -> TorchExport:
    """Save the transformer of a sentence-transformers folder to dest (config.json + model.safetensors), validated
    where it will run: this host's GPU for a GPU plan (the CPU when it has none), the CPU for CPU instances."""
    import numpy as np
    import torch
    from transformers import AutoModel
    quiet_transformers()

    if precision not in TORCH_PRECISIONS:
        raise UserError("precision not supported by the PyTorch path", where=str(model_dir), actual=precision,
                        expected=sorted(TORCH_PRECISIONS))
    start = time.perf_counter()
    source = _transformer_dir(Path(model_dir))
    model = AutoModel.from_pretrained(str(source), dtype=getattr(torch, TORCH_PRECISIONS[precision]))
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dest), safe_serialization=True)
    for extra in dest.glob("generation_config.json"):
        extra.unlink()
    config = json.loads((dest / "config.json").read_text())     # the pooling model.py applies (bert_encoder.py)
    config["tritonkit_pooling"] = st_layout(Path(model_dir)).pooling
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    try:
        bert_module().BertEncoder.from_folder(str(dest))
    except ValueError as exc:
        raise UserError(str(exc), where=str(model_dir), expected="a BERT-family encoder for the PyTorch path",
                        fix="serve this model through the ONNX path (a server with onnxruntime or no GPU)") from None

    device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # as model.py serves it
    got = pooled_embeddings(dest, sentences, precision, device, source)
    ref = load_sentence_transformer(model_dir).encode(list(sentences), normalize_embeddings=True,
                                                      convert_to_numpy=True)
    err = float(np.abs(got - ref).max())
    cos = float((np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))).min())
    if not (err <= atol and cos >= min_cosine):
        raise UserError(f"the {precision.upper()} PyTorch encoder does not match sentence-transformers",
                        where=str(dest), actual=f"max abs error {err:.3g}, min cosine {cos:.6f} on {device}",
                        expected=f"<= {atol:g} and >= {min_cosine:g} (tolerance.{precision} in the spec)",
                        fix="loosen that tolerance only if the difference is acceptable, or use another precision")
    return TorchExport(dest, precision, device, err, cos, time.perf_counter() - start)
