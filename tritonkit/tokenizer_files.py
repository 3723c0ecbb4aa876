"""Step: the tokenizer files a python-backend tokenizer serves with, giving sentence-transformers' token ids.

Heavy imports (tokenizers, transformers) happen inside the functions, so importing this module is instant.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import UserError
from .sources import StLayout, read_json, st_layout


def copy_tokenizer(model_dir: Path, dest_dir: Path) -> list[Path]:
    """Write ``tokenizer.json`` and ``tokenizer_meta.json`` for a python-backend tokenizer; returns both paths.

    The served ids must be identical to sentence-transformers'. Checked for all-MiniLM-L6-v2
    (tokenizers 0.23, transformers 5.23, sentence-transformers 6.2) by comparing
    ``tokenizers.Tokenizer.from_file`` with sentence-transformers' own preprocessing on
    VALIDATION_SENTENCES, accented/CJK text and a 600-word text:

    * The upstream tokenizer.json is NOT usable as is: it carries ``truncation.max_length = 128`` and
      ``padding = Fixed(128)`` (left in the upstream file). Served unchanged, every text of 129..256
      tokens would be cut at 128 (a different embedding than sentence-transformers gives) and every
      request padded to 128. sentence-transformers ignores those settings and uses its own.
    * Truncation: ``max_seq_length`` from sentence_bert_config.json (256), NOT the tokenizer's
      ``model_max_length`` (512). Longest-first, right side, [CLS]/[SEP] counted in the 256
      (so a long text ends ``... [SEP]`` at position 255).
    * Padding: right side, to the longest text of the batch, pad id 0 / "[PAD]", type id 0. (Padding
      length does not change mean-pooled embeddings, the mask removes it; the side must be right
      because position ids are absolute.)
    * Lower-casing and accent stripping happen inside tokenizer.json (BertNormalizer lowercase=true,
      strip_accents=null -> strip with lowercase). sentence_bert_config's ``do_lower_case: false``
      only means sentence-transformers adds no EXTRA Lowercase; when it is true this function puts
      that Lowercase into tokenizer.json itself, so the server never lower-cases in Python.
    * token_type_ids are all zero for single texts; the exported graph makes them itself.

    So this function rewrites tokenizer.json's ``truncation`` and ``padding`` (everything else is kept)
    and writes tokenizer_meta.json: ``{"max_length", "do_lower_case" (effective: true when the
    normalizer lower-cases), "padding_side", "truncation_side", "pad_id", "pad_token",
    "model_input_names", "source"}``. ``Tokenizer.from_file`` then needs no further configuration.
    Each file is written atomically (temporary file + os.replace).
    """
    model_dir, dest_dir = Path(model_dir), Path(dest_dir)
    # A sentence-transformers folder has modules.json; a plain transformers folder is its own transformer
    # (truncation at the tokenizer's model_max_length, capped by the position embeddings).
    layout = (st_layout(model_dir) if (model_dir / "modules.json").is_file()
              else StLayout(transformer_dir=model_dir, normalize=False, max_seq_length=None, do_lower_case=False))
    tdir = layout.transformer_dir
    tok_path = tdir / "tokenizer.json"
    if tok_path.is_file():
        tok = read_json(tok_path)
    else:  # only vocab files: let transformers build the fast tokenizer and take its JSON
        from transformers import AutoTokenizer
        hf = AutoTokenizer.from_pretrained(str(tdir), local_files_only=True)
        if not getattr(hf, "is_fast", False):
            raise UserError("model has no tokenizer.json and no fast tokenizer", where=str(tdir),
                            fix="save the tokenizer with a fast (Rust) tokenizer so tokenizer.json exists")
        tok = json.loads(hf.backend_tokenizer.to_str())

    max_length = layout.max_seq_length or _tokenizer_model_max_length(tdir)
    if not isinstance(max_length, int) or max_length < 2:
        raise UserError("cannot tell the model's max sequence length", where=str(tdir / "sentence_bert_config.json"),
                        actual=max_length, expected="max_seq_length: an int >= 2")
    pad_id, pad_token = _pad_token(tok, tdir)
    if layout.do_lower_case and not _lowercases(tok.get("normalizer")):
        # what sentence-transformers does at load time for do_lower_case=true: Lowercase first
        norm = tok.get("normalizer")
        rest = [] if norm is None else (norm["normalizers"] if norm.get("type") == "Sequence" else [norm])
        tok["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Lowercase"}, *rest]}
    tok["truncation"] = {"direction": "Right", "max_length": max_length, "strategy": "LongestFirst", "stride": 0}
    tok["padding"] = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
                      "pad_id": pad_id, "pad_type_id": 0, "pad_token": pad_token}
    meta = {
        "max_length": max_length,
        "do_lower_case": _lowercases(tok.get("normalizer")),
        "lowercase_in_tokenizer_json": _lowercases(tok.get("normalizer")),
        "padding_side": "right",
        "truncation_side": "right",
        "pad_id": pad_id,
        "pad_token": pad_token,
        "model_input_names": ["input_ids", "attention_mask"],
        "source": str(model_dir),
    }

    dest_dir.mkdir(parents=True, exist_ok=True)
    tok_text = json.dumps(tok, ensure_ascii=False)
    _check_tokenizer_json(tok_text, where=str(tok_path))
    written = [_write_atomic(dest_dir / "tokenizer.json", tok_text),
               _write_atomic(dest_dir / "tokenizer_meta.json", json.dumps(meta, indent=2) + "\n")]
    return written


def _tokenizer_model_max_length(tdir: Path) -> int | None:
    cfg = tdir / "tokenizer_config.json"
    n = read_json(cfg).get("model_max_length") if cfg.is_file() else None
    mcfg = tdir / "config.json"
    pos = read_json(mcfg).get("max_position_embeddings") if mcfg.is_file() else None
    vals = [v for v in (n, pos) if isinstance(v, int) and 0 < v < 10**6]  # HF uses 1e30 for "unbounded"
    return min(vals) if vals else None


def _pad_token(tok: dict, tdir: Path) -> tuple[int, str]:
    pad = tok.get("padding") or {}
    if isinstance(pad.get("pad_id"), int) and pad.get("pad_token"):
        return pad["pad_id"], pad["pad_token"]
    stm = tdir / "special_tokens_map.json"
    name = read_json(stm).get("pad_token") if stm.is_file() else None
    if isinstance(name, dict):
        name = name.get("content")
    for added in tok.get("added_tokens", []):
        if name and added.get("content") == name:
            return int(added["id"]), name
    raise UserError("tokenizer has no padding token", where=str(tdir),
                    fix="set pad_token in special_tokens_map.json / tokenizer.json")


def _lowercases(normalizer: dict | None) -> bool:
    if not normalizer:
        return False
    kind = normalizer.get("type")
    if kind == "Lowercase":
        return True
    if kind == "BertNormalizer":
        return bool(normalizer.get("lowercase"))
    if kind == "Sequence":
        return any(_lowercases(n) for n in normalizer.get("normalizers", []))
    return False


def _check_tokenizer_json(text: str, *, where: str) -> None:
    from tokenizers import Tokenizer
    try:
        Tokenizer.from_str(text)
    except Exception as e:
        raise UserError(f"tokenizer.json does not load in the tokenizers library ({e})", where=where) from None


def _write_atomic(path: Path, data: str | bytes) -> Path:
    """Write to a temporary file in the same folder, then os.replace: readers see old or new, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
