"""Real payloads for the bench, from the spec's `workload`: arrays from .npz/.npy, or the bytes of files.

`.npz`: one array per input name, first axis = samples (`np.savez(f, input_ids=..., attention_mask=...)`);
`.npy`: the same for a model with a single input. A folder: each file's bytes is one item of the model's
BYTES input (encoded images, documents). A request carries `batch` consecutive samples when the model
batches; requests cycle through the samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .dtypes import numpy_dtype
from .errors import UserError

MAX_VARIANTS = 256   # distinct requests prepared (each serialised once); more samples are not sent


def read_arrays(path: str, names: tuple[str, ...]) -> dict[str, Any]:
    """name -> array with samples on the first axis; refused unless every input has one of equal length."""
    import numpy as np
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError("sample data is not readable", where=path, actual=str(exc)[:200],
                        expected="a .npz of arrays by input name, or a .npy for a one-input model") from None
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise UserError("a .npy holds one array, the model takes several inputs", where=path,
                            actual=1, expected=f"a .npz with {list(names)}")
        arrays = {names[0]: loaded}
    else:
        arrays = {k: loaded[k] for k in loaded.files}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UserError("sample data lacks inputs", where=path, actual=sorted(arrays), expected=list(names))
    counts = {n: len(arrays[n]) for n in names}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise UserError("every input needs the same number of samples (first axis)", where=path, actual=counts)
    return {n: arrays[n] for n in names}


def item_shapes(path: str, names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    return {n: tuple(a.shape[1:]) for n, a in read_arrays(path, names).items()}


def request_arrays(inputs, kind: str, path: str) -> list[dict[str, Any]]:
    """Request payload variants for `inputs` (load.TensorSpec: name, dtype, full request shape)."""
    import numpy as np
    if kind == "files":
        files = sorted(p for p in Path(path).iterdir() if p.is_file())
        texts = [s for s in inputs if s.dtype == "BYTES"]
        if not files or len(texts) != 1 or len(inputs) != 1:
            raise UserError("a folder of files feeds a model with one BYTES input", where=path,
                            actual=f"{len(files)} files, inputs {[(s.name, s.dtype) for s in inputs]}",
                            expected="files, and one BYTES input")
        spec = texts[0]
        per = int(np.prod(spec.shape))
        blobs = [f.read_bytes() for f in files[:MAX_VARIANTS * per]]
        return [{spec.name: np.array([blobs[(v * per + i) % len(blobs)] for i in range(per)],
                                     dtype=np.object_).reshape(spec.shape)}
                for v in range(min(MAX_VARIANTS, -(-len(blobs) // per)))]   # every file sent, cycling
    arrays = read_arrays(path, tuple(s.name for s in inputs))
    count = len(next(iter(arrays.values())))
    variants = []
    for v in range(min(MAX_VARIANTS, count)):
        variant = {}
        for spec in inputs:
            data = arrays[spec.name]
            item = tuple(data.shape[1:])
            batch = spec.shape[0] if tuple(spec.shape[1:]) == item and len(spec.shape) == len(item) + 1 else None
            rows = data[[(v * (batch or 1) + i) % count for i in range(batch or 1)]]
            want = np.dtype(numpy_dtype(spec.dtype, where=f"input {spec.name}"))
            if rows.dtype != want:
                raise UserError(f"sample data for input '{spec.name}' has another dtype", where=path,
                                actual=str(rows.dtype), expected=f"{want} ({spec.dtype})")
            variant[spec.name] = rows if batch else rows[0].reshape(spec.shape)
        variants.append(variant)
    return variants
