"""An ONNX graph as a ``torch.nn.Module`` that torch.export can trace: how an ONNX source reaches the GPU path.

The embedded server has no ONNX Runtime CUDA build for the CUDA 13 of the PyTorch wheels, so an ONNX source on a
GPU runs as a torch.export program like a PyTorch source (tritonkit/torch_program.py). This module interprets the
graph node by node with torch operations. Converters that keep shapes in tensors (onnx2torch) stop torch.export:
``Shape -> Gather -> Concat -> Reshape`` becomes a data-dependent tensor read. Here shape arithmetic runs on Python
values instead: an int64 value of at most one dimension computed from shapes or small constants is a Python
``list`` (or an ``int`` for a scalar) of ints and SymInts, so a dynamic batch stays symbolic and the exported
graph holds only tensor operations. The weights are the module's buffers: ``.to(dtype)`` casts the floating ones
and the graph's casts to float follow them.

The policy plans ONNX Runtime on the CPU for a graph with operators outside ``OPS`` (read when the spec loads,
``spec.onnx_ops``); here they are refused before any tracing, all of them named. The build then proves the program
against ONNX Runtime on the source graph (torch_program.export_program).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .errors import UserError

SHAPE_CONSTANT_MAX = 64     # int64 constants of <= 1 dim and at most this many values are shape-like Python values


def _attrs(node) -> dict[str, Any]:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _is_py(v) -> bool:
    """A Python shape value: an int/SymInt (0-d) or a list of them (1-d)."""
    return not hasattr(v, "dtype")


def _as_tensor(v, like=None):
    import torch
    if not _is_py(v):
        return v
    device = like.device if like is not None and hasattr(like, "device") else None
    def scalar(x):   # a SymInt becomes a tensor by arithmetic: torch.tensor(SymInt) would pin its size
        if isinstance(x, torch.SymInt):
            return torch.ones((), dtype=torch.int64, device=device) * x
        return torch.tensor(x, dtype=torch.bool if isinstance(x, bool) else torch.int64, device=device)
    if isinstance(v, list):
        if any(isinstance(x, torch.SymInt) for x in v):
            return torch.stack([scalar(x) for x in v])
        return torch.tensor(v, dtype=torch.bool if v and isinstance(v[0], bool) else torch.int64, device=device)
    return scalar(v)


def _ints(v) -> list:
    """A shape-like input as a Python list (a tensor here means the graph computes shapes from data)."""
    if _is_py(v):
        return v if isinstance(v, list) else [v]
    if v.numel() <= SHAPE_CONSTANT_MAX and not v.is_floating_point():
        return [int(x) for x in v.reshape(-1).tolist()]
    raise UserError("a shape in the ONNX graph comes from tensor data", actual=f"{v.dtype} {list(v.shape)}",
                    expected="shapes computed from other shapes and constants",
                    fix="serve this model on the CPU path (plan without a GPU), or bring its PyTorch source")


def _elementwise(py: Callable, torch_fn: Callable):
    """An op on Python shape values when all inputs are, else on tensors (Python values become tensors)."""
    def run(ctx, node, *xs):
        if all(_is_py(x) for x in xs):
            lists = [x if isinstance(x, list) else None for x in xs]
            if any(lst is not None for lst in lists):
                n = max(len(lst) for lst in lists if lst is not None)
                cols = [x if isinstance(x, list) and len(x) == n else [x[0] if isinstance(x, list) else x] * n
                        for x in xs]
                return [py(*vals) for vals in zip(*cols)]
            return py(*xs)
        like = next(x for x in xs if not _is_py(x))
        return torch_fn(*[_as_tensor(x, like) for x in xs])
    return run


def _torch_fn(name: str) -> Callable:
    """torch.<name>, a dotted name allowed ("nn.functional.elu")."""
    import torch
    fn: Any = torch
    for part in name.split("."):
        fn = getattr(fn, part)
    return fn


def _unary(fn_name: str):
    def run(ctx, node, x):
        return _torch_fn(fn_name)(x)
    return run


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _shape(ctx, node, x):
    a = _attrs(node)
    dims = list(x.shape) if not _is_py(x) else ([len(x)] if isinstance(x, list) else [])
    return dims[a.get("start", 0):a.get("end", len(dims))]


def _gather(ctx, node, data, indices):
    import torch
    axis = _attrs(node).get("axis", 0)
    if _is_py(data):
        idx = indices if _is_py(indices) else _ints(indices) if indices.dim() else int(indices)
        return [data[i] for i in idx] if isinstance(idx, list) else data[idx]
    axis = _norm_axis(axis, data.dim())
    if _is_py(indices) and not isinstance(indices, list):
        return data.select(axis, indices)
    idx = _as_tensor(indices, data)
    if idx.dim() == 0:
        return data.select(axis, idx)
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    picked = torch.index_select(data, axis, idx.reshape(-1))
    return picked.reshape(*data.shape[:axis], *idx.shape, *data.shape[axis + 1:])


def _axes(node, given, default=None):
    a = _attrs(node)
    if given is not None:
        return _ints(given)
    return list(a["axes"]) if "axes" in a else default


def _unsqueeze(ctx, node, x, axes=None):
    axes = _axes(node, axes)
    if _is_py(x):
        if not isinstance(x, list) and axes in ([0], [-1]):
            return [x]
        raise UserError("Unsqueeze of a shape value beyond 1-d", actual=f"axes {axes}", expected="axes [0]")
    rank = x.dim() + len(axes)
    for a in sorted(_norm_axis(a, rank) for a in axes):
        x = x.unsqueeze(a)
    return x


def _squeeze(ctx, node, x, axes=None):
    axes = _axes(node, axes)
    if _is_py(x):
        return x[0] if isinstance(x, list) and len(x) == 1 else x
    if axes is None:
        return x.squeeze()
    for a in sorted((_norm_axis(a, x.dim()) for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _concat(ctx, node, *xs):
    import torch
    if all(_is_py(x) for x in xs):
        return [v for x in xs for v in (x if isinstance(x, list) else [x])]
    like = next(x for x in xs if not _is_py(x))
    return torch.cat([_as_tensor(x, like) for x in xs], dim=_attrs(node)["axis"])


def _slice(ctx, node, data, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    if any(s < 1 for s in steps):
        raise UserError("Slice with a negative step", actual=steps, expected="steps >= 1")
    big = 2**62
    if _is_py(data):
        (s, e, k), = zip(starts, ends, steps)
        return data[s:None if e >= big else e:k]
    index = [slice(None)] * data.dim()
    for s, e, a, k in zip(starts, ends, axes, steps):
        index[_norm_axis(a, data.dim())] = slice(s, None if e >= big else e, k)
    return data[tuple(index)]


def _reshape(ctx, node, x, shape):
    dims = _ints(shape)
    if _is_py(x):    # a shape value to 0-d ([]) or 1-d
        values = x if isinstance(x, list) else [x]
        return values[0] if not dims else values
    if not _attrs(node).get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _expand(ctx, node, x, shape):
    dims = _ints(shape)
    if _is_py(x):
        x = _as_tensor(x)
    rank = max(x.dim(), len(dims))
    have = [1] * (rank - x.dim()) + list(x.shape)
    want = [1] * (rank - len(dims)) + dims
    # ONNX broadcasting: a 1 in the shape keeps x's size. A symbolic size is never compared with 1 (that would pin
    # the dynamic axis): broadcasting allows only w == h or w == 1, both of which give h unless h is a literal 1.
    out = [(h if w == 1 else w) if isinstance(w, int) else (w if isinstance(h, int) and h == 1 else h)
           for h, w in zip(have, want)]
    return x.reshape(have).expand(out)


def _constant_of_shape(ctx, node, shape):
    import torch
    from onnx import numpy_helper
    value = _attrs(node).get("value")
    fill = numpy_helper.to_array(value).reshape(-1)[0].item() if value is not None else 0.0
    dims = _ints(shape)
    if isinstance(fill, int) and len(dims) == 1 and isinstance(dims[0], int) and dims[0] <= SHAPE_CONSTANT_MAX:
        return [fill] * dims[0]      # a shape-like vector (e.g. the ones of an Expand shape): stays Python
    dtype = ctx.float_dtype if isinstance(fill, float) else torch.int64
    return torch.full(dims, fill, dtype=dtype, device=ctx.device)


def _range(ctx, node, start, limit, delta):
    import torch
    return torch.arange(_scalar(start), _scalar(limit), _scalar(delta), device=ctx.device)


def _scalar(v):
    return v if _is_py(v) else v.item()


def _where(ctx, node, cond, x, y):
    import torch
    if all(_is_py(v) for v in (cond, x, y)):
        n = max(len(v) for v in (cond, x, y) if isinstance(v, list))
        c, a, b = ([v] * n if not isinstance(v, list) else v * (n // len(v)) for v in (cond, x, y))
        return [p if k else q for k, p, q in zip(c, a, b)]
    like = next(v for v in (cond, x, y) if not _is_py(v))
    return torch.where(_as_tensor(cond, like).bool(), _as_tensor(x, like), _as_tensor(y, like))


def _cast(ctx, node, x):
    import torch
    from onnx import TensorProto
    to = _attrs(node)["to"]
    if _is_py(x):
        if to in (TensorProto.INT64, TensorProto.INT32):
            return x
        x = _as_tensor(x, None).to(ctx.device)
    dtype = {TensorProto.FLOAT: ctx.float_dtype, TensorProto.FLOAT16: ctx.float_dtype, TensorProto.BFLOAT16:
             ctx.float_dtype, TensorProto.DOUBLE: ctx.float_dtype, TensorProto.INT64: torch.int64,
             TensorProto.INT32: torch.int32, TensorProto.BOOL: torch.bool, TensorProto.INT8: torch.int8,
             TensorProto.UINT8: torch.uint8}.get(to)
    if dtype is None:
        raise UserError("Cast to an unsupported type", actual=TensorProto.DataType.Name(to),
                        expected="float, int64, int32, bool, int8 or uint8")
    return x.to(dtype)


def _matmul(ctx, node, a, b):
    import torch
    return torch.matmul(a, b)


def _gemm(ctx, node, a, b, c=None):
    at = _attrs(node)
    a = a.transpose(-1, -2) if at.get("transA", 0) else a
    b = b.transpose(-1, -2) if at.get("transB", 0) else b
    y = at.get("alpha", 1.0) * (a @ b)
    return y if c is None else y + at.get("beta", 1.0) * c


def _softmax(log: bool):
    def run(ctx, node, x):
        import torch
        axis = _attrs(node).get("axis", -1)
        return (torch.log_softmax if log else torch.softmax)(x, dim=axis)
    return run


def _layer_norm(ctx, node, x, scale, bias=None):
    import torch
    at = _attrs(node)
    axis = _norm_axis(at.get("axis", -1), x.dim())
    return torch.nn.functional.layer_norm(x, x.shape[axis:], scale, bias, at.get("epsilon", 1e-5))


def _batch_norm(ctx, node, x, scale, bias, mean, var):
    import torch
    return torch.nn.functional.batch_norm(x, mean, var, scale, bias, False, 0.0, _attrs(node).get("epsilon", 1e-5))


def _pads(at: dict, spatial: int) -> tuple[list[int], list[int] | None]:
    """(symmetric padding per spatial dim, or F.pad's list for asymmetric padding)."""
    if at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UserError("auto_pad in a convolution or pool", actual=at["auto_pad"], expected="explicit pads")
    pads = list(at.get("pads", [0] * 2 * spatial))
    begin, end = pads[:spatial], pads[spatial:]
    if begin == end:
        return begin, None
    return [0] * spatial, [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)]


def _conv(ctx, node, x, w, b=None):
    import torch.nn.functional as F
    at = _attrs(node)
    spatial = w.dim() - 2
    padding, explicit = _pads(at, spatial)
    if explicit:
        x = F.pad(x, explicit)
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    return conv(x, w, b, stride=at.get("strides", [1] * spatial), padding=padding,
                dilation=at.get("dilations", [1] * spatial), groups=at.get("group", 1))


def _pool(kind: str):
    def run(ctx, node, x):
        import torch.nn.functional as F
        at = _attrs(node)
        spatial = x.dim() - 2
        padding, explicit = _pads(at, spatial)
        if explicit:
            x = F.pad(x, explicit, value=float("-inf") if kind == "max" else 0.0)
        kernel, strides = at["kernel_shape"], at.get("strides", [1] * spatial)
        ceil = bool(at.get("ceil_mode", 0))
        if kind == "max":
            return (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial - 1](
                x, kernel, strides, padding, at.get("dilations", [1] * spatial), ceil)
        return (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial - 1](
            x, kernel, strides, padding, ceil, bool(at.get("count_include_pad", 0)))
    return run


def _global_pool(kind: str):
    def run(ctx, node, x):
        dims = tuple(range(2, x.dim()))
        return x.mean(dim=dims, keepdim=True) if kind == "avg" else x.amax(dim=dims, keepdim=True)
    return run


def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):    # torch.prod takes one dim at a time
        x = x.prod(dim=d, keepdim=keep)
    return x


REDUCERS: dict[str, Callable] = {
    "ReduceMean": lambda x, d, k: x.mean(dim=d, keepdim=k), "ReduceSum": lambda x, d, k: x.sum(dim=d, keepdim=k),
    "ReduceMax": lambda x, d, k: x.amax(dim=d, keepdim=k), "ReduceMin": lambda x, d, k: x.amin(dim=d, keepdim=k),
    "ReduceL2": lambda x, d, k: x.norm(p=2, dim=d, keepdim=k),
    "ReduceL1": lambda x, d, k: x.abs().sum(dim=d, keepdim=k),
    "ReduceSumSquare": lambda x, d, k: (x * x).sum(dim=d, keepdim=k), "ReduceProd": _prod,
    "ReduceLogSumExp": lambda x, d, k: x.logsumexp(dim=d, keepdim=k),
}


def _reduce(op: str):
    def run(ctx, node, x, axes=None):
        at = _attrs(node)
        axes = _axes(node, axes, default=list(range(x.dim())))
        if not axes and at.get("noop_with_empty_axes", 0):
            return x
        dims = tuple(_norm_axis(a, x.dim()) for a in (axes or range(x.dim())))
        return REDUCERS[op](x, dims, bool(at.get("keepdims", 1)))
    return run


def _transpose(ctx, node, x):
    perm = _attrs(node).get("perm", list(reversed(range(x.dim()))))
    return x.permute(*perm)


def _flatten(ctx, node, x):
    axis = _norm_axis(_attrs(node).get("axis", 1), x.dim())
    import math
    return x.reshape(math.prod(x.shape[:axis]), -1)     # torch.Size.numel() would pin symbolic sizes


def _gather_elements(ctx, node, data, indices):
    import torch
    axis = _norm_axis(_attrs(node).get("axis", 0), data.dim())
    idx = _as_tensor(indices, data)
    return torch.gather(data, axis, torch.where(idx < 0, idx + data.shape[axis], idx))


def _split(ctx, node, x, split=None):
    at = _attrs(node)
    axis = at.get("axis", 0)
    sizes = _ints(split) if split is not None else at.get("split")
    if sizes is None:
        n = at.get("num_outputs", len(node.output))
        sizes = [-(-x.shape[axis] // n)] * (n - 1)
        sizes.append(x.shape[axis] - sum(sizes))
    return tuple(x.split(list(sizes), dim=axis))


def _clip(ctx, node, x, low=None, high=None):
    low, high = (None if v is None else _floats(ctx, node, i, v)[0] for i, v in ((1, low), (2, high)))
    return x.clamp(min=low, max=high)


def _gelu(ctx, node, x):
    import torch
    approx = _attrs(node).get("approximate", b"none")
    return torch.nn.functional.gelu(x, approximate=approx.decode() if isinstance(approx, bytes) else approx)


def _argmax(ctx, node, x):
    at = _attrs(node)
    return x.argmax(dim=at.get("axis", 0), keepdim=bool(at.get("keepdims", 1)))


def _leaky_relu(ctx, node, x):
    import torch
    return torch.nn.functional.leaky_relu(x, _attrs(node).get("alpha", 0.01))


def _torch(fn: str):
    def run(ctx, node, *xs):
        like = next((x for x in xs if not _is_py(x)), None)
        return _torch_fn(fn)(*[_as_tensor(x, like) for x in xs])
    return run


def _variadic(fn: str, mean: bool = False):
    """Max/Min/Sum/Mean of one or more inputs, broadcasting pairwise."""
    def run(ctx, node, *xs):
        import functools
        like = next((x for x in xs if not _is_py(x)), None)
        out = functools.reduce(_torch_fn(fn), [_as_tensor(x, like) for x in xs])
        return out / len(xs) if mean else out
    return run


def _activation(fn: Callable):
    """An activation whose ONNX attributes (with their ONNX defaults) become keyword arguments of ``fn``."""
    def run(ctx, node, x):
        return fn(x, **_attrs(node))
    return run


def _hard_sigmoid(x, alpha=0.2, beta=0.5):
    return (x * alpha + beta).clamp(0, 1)


def _elu(x, alpha=1.0):
    return _torch_fn("nn.functional.elu")(x, alpha)


def _selu(x, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    import torch
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


def _einsum(ctx, node, *xs):
    return _torch_fn("einsum")(_text(_attrs(node)["equation"]), *xs)


def _tile(ctx, node, x, repeats):
    return x.repeat(*_ints(repeats))


def _prelu(ctx, node, x, slope):
    import torch
    return torch.where(x >= 0, x, x * slope)


def _trilu(ctx, node, x, k=None):
    import torch
    k = 0 if k is None else _ints(k)[0]
    return (torch.triu if _attrs(node).get("upper", 1) else torch.tril)(x, k)


PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


def _pad(ctx, node, x, pads, value=None, axes=None):
    import torch.nn.functional as F
    at = _attrs(node)
    mode = _text(at.get("mode", "constant"))
    pads = _ints(pads)
    rank = x.dim()
    axes = [_norm_axis(a, rank) for a in (_ints(axes) if axes is not None else range(rank))]
    n = len(axes)
    begin, end = dict(zip(axes, pads[:n])), dict(zip(axes, pads[n:]))
    if mode not in PAD_MODES:
        raise UserError("Pad mode", actual=mode, expected=sorted(PAD_MODES))
    first = min([a for a in axes if begin[a] or end[a]], default=rank)
    if mode != "constant" and rank - first > 3:
        raise UserError("Pad in reflect/edge mode over more than the last 3 axes", actual=f"axes from {first}",
                        expected="padding of at most the last 3 axes")
    torch_pads = [p for a in reversed(range(first, rank)) for p in (begin.get(a, 0), end.get(a, 0))]
    fill = 0.0 if value is None else _floats(ctx, node, 2, value)[0]
    if mode == "constant":
        return F.pad(x, torch_pads, value=fill)
    return F.pad(x, torch_pads, mode=PAD_MODES[mode])


def _cumsum(ctx, node, x, axis):
    at = _attrs(node)
    dim = _norm_axis(_ints(axis)[0], x.dim())
    if at.get("reverse", 0):
        x = x.flip(dim)
    out = x.cumsum(dim)
    if at.get("exclusive", 0):
        out = out - x
    return out.flip(dim) if at.get("reverse", 0) else out


def _instance_norm(ctx, node, x, scale, bias):
    import torch
    return torch.nn.functional.instance_norm(x, weight=scale, bias=bias, eps=_attrs(node).get("epsilon", 1e-5))


def _conv_transpose(ctx, node, x, w, b=None):
    import torch.nn.functional as F
    at = _attrs(node)
    spatial = w.dim() - 2
    padding, explicit = _pads(at, spatial)
    if explicit or "output_shape" in at:
        raise UserError("ConvTranspose with asymmetric pads or an output_shape", actual=sorted(at),
                        expected="symmetric pads (what torch.onnx writes)")
    conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[spatial - 1]
    return conv(x, w, b, stride=at.get("strides", [1] * spatial), padding=padding,
                output_padding=at.get("output_padding", [0] * spatial), groups=at.get("group", 1),
                dilation=at.get("dilations", [1] * spatial))


# Resize attribute sets that are one torch interpolation: (mode, coordinate transformation, nearest mode or cubic
# coefficient) -> (torch mode prefix, align_corners). These are what torch.onnx writes for nn.Upsample/interpolate.
RESIZE_MODES = {
    ("nearest", "asymmetric", "floor"): ("nearest", None),
    ("linear", "half_pixel", None): ("linear", False), ("linear", "pytorch_half_pixel", None): ("linear", False),
    ("linear", "align_corners", None): ("linear", True),
    ("cubic", "half_pixel", -0.75): ("cubic", False), ("cubic", "pytorch_half_pixel", -0.75): ("cubic", False),
    ("cubic", "align_corners", -0.75): ("cubic", True),
}
# torch.nn.functional.interpolate's mode for each prefix, by the number of spatial axes (1, 2, 3).
INTERPOLATE_MODES = {"linear": ("linear", "bilinear", "trilinear"), "cubic": (None, "bicubic", None),
                     "nearest": ("nearest", "nearest", "nearest")}


def _resize(ctx, node, x, roi=None, scales=None, sizes=None):
    import torch.nn.functional as F
    at = _attrs(node)
    mode = _text(at.get("mode", "nearest"))
    detail = {"nearest": _text(at.get("nearest_mode", "round_prefer_floor")), "linear": None,
              "cubic": round(float(at.get("cubic_coeff_a", -0.75)), 4)}.get(mode)
    key = (mode, _text(at.get("coordinate_transformation_mode", "half_pixel")), detail)
    spatial = x.dim() - 2
    kind = RESIZE_MODES.get(key)
    torch_mode = INTERPOLATE_MODES[kind[0]][spatial - 1] if kind and 1 <= spatial <= 3 else None
    if torch_mode is None:
        raise UserError("a Resize torch cannot reproduce", actual=f"{key}, {spatial} spatial axes",
                        expected=f"one of {sorted(map(str, RESIZE_MODES))} over 1-3 spatial axes")
    align = kind[1]
    if sizes is not None:
        return F.interpolate(x, size=_ints(sizes)[2:], mode=torch_mode, align_corners=align)
    factors = _floats(ctx, node, 2, scales)
    if factors[:2] != [1.0, 1.0]:
        raise UserError("a Resize of the batch or channel axis", actual=factors, expected="scales [1, 1, ...]")
    return F.interpolate(x, scale_factor=factors[2:], mode=torch_mode, align_corners=align)


def _topk(ctx, node, x, k):
    at = _attrs(node)
    return tuple(x.topk(_ints(k)[0], dim=at.get("axis", -1), largest=bool(at.get("largest", 1)),
                        sorted=bool(at.get("sorted", 1))))     # (values, indices)


def _depth_to_space(ctx, node, x):
    at = _attrs(node)
    b = at["blocksize"]
    n, c, h, w = x.shape
    if _text(at.get("mode", "DCR")) == "CRD":
        return x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // (b * b), h * b, w * b)
    return x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c // (b * b), h * b, w * b)


def _space_to_depth(ctx, node, x):
    b = _attrs(node)["blocksize"]
    n, c, h, w = x.shape
    return x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4).reshape(n, c * b * b, h // b, w // b)


def _mod(ctx, node, a, b):
    import torch
    if _is_py(a) and _is_py(b) and not isinstance(a, list) and not isinstance(b, list):
        return a % b
    like = a if not _is_py(a) else b
    fn = torch.fmod if _attrs(node).get("fmod", 0) else torch.remainder
    return fn(_as_tensor(a, like), _as_tensor(b, like))


def _size(ctx, node, x):
    import math
    return math.prod(x.shape)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _floats(ctx, node, i: int, v) -> list[float]:
    """Input ``i`` as Python floats: a small constant of the graph, or a Python shape value."""
    name = node.input[i] if i < len(node.input) else ""
    if name in ctx.small:
        return [float(f) for f in ctx.small[name].reshape(-1)]
    if _is_py(v):
        return [float(f) for f in (v if isinstance(v, list) else [v])]
    raise UserError("a scale or bound in the ONNX graph comes from tensor data", actual=f"input {name!r}",
                    expected="a constant of the graph",
                    fix="serve this model on the CPU path (plan without a GPU), or bring its PyTorch source")


def _div(a, b):
    return a // b if isinstance(a, int) or hasattr(a, "node") else a / b


def _tensor_div(a, b):
    import torch
    return torch.div(a, b, rounding_mode="trunc") if not a.is_floating_point() else a / b


# ONNX operator -> run(ctx, node, *inputs). Missing inputs (empty names) are passed as None.
OPS: dict[str, Callable] = {
    "Identity": lambda ctx, node, x: x, "Dropout": lambda ctx, node, x, *_: x,
    "Shape": _shape, "Gather": _gather, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Concat": _concat,
    "Slice": _slice, "Reshape": _reshape, "Expand": _expand, "ConstantOfShape": _constant_of_shape,
    "Range": _range, "Where": _where, "Cast": _cast, "Transpose": _transpose, "Flatten": _flatten, "Split": _split,
    "Add": _elementwise(lambda a, b: a + b, lambda a, b: a + b),
    "Sub": _elementwise(lambda a, b: a - b, lambda a, b: a - b),
    "Mul": _elementwise(lambda a, b: a * b, lambda a, b: a * b),
    "Div": _elementwise(_div, _tensor_div),
    "Equal": _elementwise(lambda a, b: a == b, lambda a, b: a == b),
    "Less": _elementwise(lambda a, b: a < b, lambda a, b: a < b),
    "Greater": _elementwise(lambda a, b: a > b, lambda a, b: a > b),
    "GreaterOrEqual": _elementwise(lambda a, b: a >= b, lambda a, b: a >= b),
    "LessOrEqual": _elementwise(lambda a, b: a <= b, lambda a, b: a <= b),
    "And": _elementwise(lambda a, b: a and b, lambda a, b: a & b),
    "Or": _elementwise(lambda a, b: a or b, lambda a, b: a | b),
    "Not": _elementwise(lambda a: not a, lambda a: ~a),
    "Xor": _elementwise(lambda a, b: a != b, lambda a, b: a ^ b), "Mod": _mod, "Size": _size,
    "Max": _variadic("maximum"), "Min": _variadic("minimum"), "Sum": _variadic("add"),
    "Mean": _variadic("add", mean=True), "Pow": _torch("pow"),
    "Neg": _unary("neg"), "Abs": _unary("abs"), "Sqrt": _unary("sqrt"), "Exp": _unary("exp"), "Log": _unary("log"),
    "Erf": _unary("erf"), "Tanh": _unary("tanh"), "Sigmoid": _unary("sigmoid"), "Relu": _unary("relu"),
    "Reciprocal": _unary("reciprocal"), "Floor": _unary("floor"), "Ceil": _unary("ceil"), "Sin": _unary("sin"),
    "Cos": _unary("cos"), "IsNaN": _unary("isnan"), "IsInf": _unary("isinf"), "Sign": _unary("sign"),
    "GatherElements": _gather_elements, "Gelu": _gelu, "LeakyRelu": _leaky_relu, "Clip": _clip, "ArgMax": _argmax,
    "MatMul": _matmul, "Gemm": _gemm, "Softmax": _softmax(False), "LogSoftmax": _softmax(True),
    "LayerNormalization": _layer_norm, "BatchNormalization": _batch_norm, "Conv": _conv,
    "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
    "GlobalAveragePool": _global_pool("avg"), "GlobalMaxPool": _global_pool("max"),
    **{op: _reduce(op) for op in REDUCERS},
    "Round": _unary("round"), "Atan": _unary("atan"), "Tan": _unary("tan"),
    "Softsign": _unary("nn.functional.softsign"), "HardSwish": _unary("nn.functional.hardswish"),
    "Mish": _unary("nn.functional.mish"), "Softplus": _unary("nn.functional.softplus"),
    "HardSigmoid": _activation(_hard_sigmoid), "Elu": _activation(_elu), "Selu": _activation(_selu),
    "PRelu": _prelu, "Trilu": _trilu, "Pad": _pad, "CumSum": _cumsum, "Tile": _tile, "Einsum": _einsum,
    "InstanceNormalization": _instance_norm, "ConvTranspose": _conv_transpose, "Resize": _resize, "TopK": _topk,
    "DepthToSpace": _depth_to_space, "SpaceToDepth": _space_to_depth,
}


def op_names(graph) -> tuple[str, ...]:
    """The graph's operators: "Op" for the default domain, "domain::Op" for others (contrib, custom)."""
    return tuple(sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                         for n in graph.node}))


def unsupported(ops) -> list[str]:
    """The operators among ``ops`` (op_names) this module cannot run."""
    return sorted(op for op in ops if op not in OPS and op != "Constant")


def load_onnx_module(path: Path, input_names: tuple[str, ...], output_names: tuple[str, ...], where: str):
    """The ONNX file at ``path`` as a module: forward(*inputs in ``input_names`` order) -> tuple of the outputs in
    ``output_names`` order. Refuses unsupported operators and names that are not the graph's."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    model = onnx.load(str(path))   # external data files beside it are read too
    graph = model.graph
    missing = unsupported(op_names(graph))
    if missing:
        raise UserError("the ONNX graph uses operators the GPU path cannot run", where=where, actual=missing,
                        expected=f"operators among {len(OPS)} supported ones (tritonkit/onnx_torch.py OPS)",
                        fix="serve this model on the CPU path (plan without a GPU: ONNX Runtime runs any operator), "
                            "or bring its PyTorch source")
    feeds = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if sorted(feeds) != sorted(input_names) or not set(output_names) <= {o.name for o in graph.output}:
        raise UserError("the ONNX graph's inputs and outputs are not the spec's", where=where,
                        actual=f"inputs {feeds}, outputs {[o.name for o in graph.output]}",
                        expected=f"inputs {list(input_names)}, outputs {list(output_names)}")
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            a = _attrs(n)
            if "value" not in a:
                raise UserError("a Constant node without a tensor value", where=where, actual=sorted(a),
                                expected="value")
            constants[n.output[0]] = numpy_helper.to_array(a["value"])
    nodes = [n for n in graph.node if n.op_type != "Constant"]

    class OnnxModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.shape_values: dict[str, Any] = {}
            self.names: dict[str, str] = {}
            self.small = {name: a for name, a in constants.items()
                          if a.dtype.kind == "f" and a.size <= SHAPE_CONSTANT_MAX}
            for k, (name, array) in enumerate(constants.items()):
                if array.dtype == np.int64 and array.ndim <= 1 and array.size <= SHAPE_CONSTANT_MAX:
                    self.shape_values[name] = array.tolist()    # shape-like: stays a Python value
                    continue
                self.names[name] = f"c{k}"
                self.register_buffer(f"c{k}", torch.from_numpy(np.array(array)), persistent=True)

        def forward(self, *inputs):
            values: dict[str, Any] = dict(self.shape_values)
            values.update({name: getattr(self, buf) for name, buf in self.names.items()})
            values.update(zip(input_names, inputs))
            first = inputs[0]
            ctx = _Context(first.device, next((b.dtype for b in self.buffers() if b.is_floating_point()),
                                              torch.float32), self.small)
            for node in nodes:
                args = [values[i] if i else None for i in node.input]
                out = OPS[node.op_type](ctx, node, *args)
                for name, v in zip(node.output, out if isinstance(out, tuple) else (out,)):
                    values[name] = v
            return tuple(_as_tensor(values[n], first) for n in output_names)

    return OnnxModule().eval()


class _Context:
    """What an op needs besides its inputs: the device of the inputs, the module's float dtype (ONNX casts to
    float follow the module, so an FP16 program stays FP16) and the graph's small float constants as NumPy arrays
    (scales and bounds an op needs as Python numbers, not traced tensors)."""
    def __init__(self, device, float_dtype, small):
        self.device, self.float_dtype, self.small = device, float_dtype, small
