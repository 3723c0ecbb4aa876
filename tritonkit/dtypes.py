"""One table of tensor datatypes: the spec's name, Triton's config type, NumPy's and ONNX's names.

Every module that converts between them reads this table; a dtype missing here is refused, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class DType:
    name: str            # Triton datatype name as the spec and the inference protocol write it ("FP32")
    config: str          # model_config.proto data_type ("TYPE_FP32"; BYTES is TYPE_STRING)
    numpy: str | None    # NumPy dtype name; None: NumPy has none (BF16) or it is an object array (BYTES)
    onnx: str            # onnx.TensorProto element type name


DTYPES: dict[str, DType] = {d.name: d for d in (
    DType("BOOL", "TYPE_BOOL", "bool", "BOOL"),
    DType("UINT8", "TYPE_UINT8", "uint8", "UINT8"),
    DType("UINT16", "TYPE_UINT16", "uint16", "UINT16"),
    DType("UINT32", "TYPE_UINT32", "uint32", "UINT32"),
    DType("UINT64", "TYPE_UINT64", "uint64", "UINT64"),
    DType("INT8", "TYPE_INT8", "int8", "INT8"),
    DType("INT16", "TYPE_INT16", "int16", "INT16"),
    DType("INT32", "TYPE_INT32", "int32", "INT32"),
    DType("INT64", "TYPE_INT64", "int64", "INT64"),
    DType("FP16", "TYPE_FP16", "float16", "FLOAT16"),
    DType("FP32", "TYPE_FP32", "float32", "FLOAT"),
    DType("FP64", "TYPE_FP64", "float64", "DOUBLE"),
    DType("BF16", "TYPE_BF16", None, "BFLOAT16"),
    DType("BYTES", "TYPE_STRING", None, "STRING"),
)}

# Spellings a spec may use for each name (case-insensitive).
ALIASES: dict[str, str] = {
    **{d.lower(): d for d in DTYPES},
    "float16": "FP16", "half": "FP16", "float32": "FP32", "float": "FP32", "float64": "FP64",
    "double": "FP64", "bfloat16": "BF16", "string": "BYTES", "str": "BYTES", "bytes": "BYTES",
}

BY_ONNX: dict[str, DType] = {d.onnx: d for d in DTYPES.values()}

# Plan precision -> the torch dtype the PyTorch paths run in.
TORCH_PRECISIONS: dict[str, str] = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def dtype(name: str, *, where: str | None = None) -> DType:
    try:
        return DTYPES[name]
    except KeyError:
        raise UserError("unknown datatype", where=where, actual=name, expected=f"one of {list(DTYPES)}") from None


def numpy_dtype(name: str, *, where: str | None = None) -> str:
    """NumPy dtype name for a datatype that has a plain NumPy array (not BYTES, not BF16)."""
    np_name = dtype(name, where=where).numpy
    if np_name is None:
        raise UserError("no plain NumPy array for this datatype", where=where, actual=name,
                        expected=f"one of {[d.name for d in DTYPES.values() if d.numpy]}")
    return np_name


def from_onnx(onnx_name: str, *, where: str | None = None) -> str:
    """The datatype name of an ONNX element type ("FLOAT" -> "FP32")."""
    try:
        return BY_ONNX[onnx_name].name
    except KeyError:
        raise UserError("ONNX element type has no Triton datatype", where=where, actual=onnx_name,
                        expected=f"one of {sorted(BY_ONNX)}") from None
