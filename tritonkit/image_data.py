"""Real images as an image classifier's input tensor, in this process: INT8 calibration and accuracy gates.

The values come from the code the served ensemble runs (templates/python/image_ops.py, copied beside the
pre-processing model.py by render) with the spec's pre-processing, so what is calibrated and gated is what the
classifier receives in serving. Folders name the images: every regular file, sorted by name; a file that is not an
image, or is too large, is refused by name (the server would refuse that request the same way).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import defaults
from .errors import UserError
from .spec import ModelSpec


@lru_cache(maxsize=1)
def image_ops():
    """templates/python/image_ops.py as a module (it is a file render copies, not part of the package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("image_ops", defaults.TEMPLATES_DIR / "python" / "image_ops.py")
    ops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ops)
    return ops


def image_files(folder: Path, where: str) -> list[Path]:
    """The folder's files (sorted, hidden ones left out); refused when there are none."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UserError("the image folder holds no files", where=where, actual=str(folder),
                        expected="encoded images (PNG, JPEG, ...), one per file", fix="point the path at your images")
    return files


def files_digest(files: list[Path]) -> str:
    """sha256 over each file's name and bytes, in order: what a build recipe records for a folder."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def image_values(model: ModelSpec, files: list[Path], where: str) -> dict[str, Any]:
    """{classifier input name: FP32 [len(files), *item dims]}: each file decoded and pre-processed as served."""
    import numpy as np
    ops, prep, tensor = image_ops(), model.image, model.inputs[0]
    item = model.triton_dims_named(tensor)     # the pipeline batches: one request item (all dims fixed)
    rows = []
    for f in files:
        try:
            image = ops.decode(f.read_bytes(), defaults.IMAGE_MAX_BYTES, defaults.IMAGE_MAX_PIXELS)
        except ops.ImageError as exc:
            raise UserError(f"not an image this model takes: {exc}", where=f"{where}: {f.name}", actual=str(f),
                            expected="a JPEG or PNG file", fix="remove the file from the folder") from None
        rows.append(ops.to_values(image, prep.size, prep.crop, prep.mode, prep.mean, prep.std, prep.resample)
                    .reshape(item))
    return {tensor.name: np.stack(rows).astype(np.float32)}


def calibration_images(model: ModelSpec) -> list[Path] | None:
    """The spec's calibration folder (its first `calibration.samples` files), or None when it names none."""
    if not (model.calibration and Path(model.calibration).is_dir()):
        return None
    return image_files(Path(model.calibration), f"model {model.name}: calibration")[:model.calibration_samples]


def gate_images(model: ModelSpec) -> tuple[list[Path], str, list[str]] | None:
    """(files, their digest, the folders) an image classifier's accuracy gate runs on: the calibration images and the
    workload's files (images the calibration never saw), or None when the spec names no images."""
    files = calibration_images(model) or []
    folders = [model.calibration] if files else []
    if model.workload is not None and model.workload.kind == "files":
        seen = {f.resolve() for f in files}
        files += [f for f in image_files(Path(model.workload.path), f"model {model.name}: workload.files")
                  if f.resolve() not in seen]
        folders.append(model.workload.path)
    return (files, files_digest(files), folders) if files else None
