"""GEMMs of a torch.export program kept away from torch.compile, for GPUs below inductor's SM threshold.

Copied beside model.py by render (templates/python/program_torch.py.j2 loads it); tests import it from here.
"""

from typing import List, Optional

import torch
import torch.nn.functional as F

# GEMM-like ATen ops handed to cuBLAS as opaque ops.
GEMMS = ("linear", "mm", "addmm", "bmm", "matmul")
# Convolutions, handed to cuDNN the same way: inductor's conv templates make the same SM check (a ViT's patch
# embedding printed the warning on an H200 limited to 38 SMs). Spatial dims of each; defaults of the ATen
# schema filled in for the arguments a graph node leaves out.
CONVOLUTIONS = {"conv1d": 1, "conv2d": 2, "conv3d": 3}
# Transposed convolutions (U-Net decoders, upsampling heads) take the same route. (ATen name: spatial dims.)
TRANSPOSED = {"conv_transpose1d": 1, "conv_transpose2d": 2, "conv_transpose3d": 3}


def opaque_gemms(graph_module):
    """Route every GEMM-like ATen call of the program through an op torch.compile cannot look into (cuBLAS
    at run time, like eager). Inductor still fuses and graph-captures everything around them, but never
    lowers a GEMM: that lowering is where it checks the SM count (torch._inductor.utils.is_big_gpu) and, on a
    GPU below its threshold, prints "Not enough SMs to use max_autotune_gemm mode" before choosing cuBLAS
    anyway. Same numbers as eager (the same cuBLAS calls)."""
    ops = _register_gemms()
    aten = {getattr(torch.ops.aten, name).default: name for name in (*GEMMS, *CONVOLUTIONS)}
    aten.update({getattr(getattr(torch.ops.aten, name), overload): name for name in TRANSPOSED
                 for overload in getattr(torch.ops.aten, name).overloads()})   # "default" or "input", by dims
    for gm in graph_module.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        changed = False
        for node in gm.graph.nodes:
            name = aten.get(node.target) if node.op == "call_function" else None
            if name and not node.kwargs:
                node.target = ops[name]
                node.args = tuple(node.args) + _defaults(name)[len(node.args):]
                changed = True
        if changed:
            gm.recompile()


def _register_gemms():
    """tritonkit_gemm::<op> for each of GEMMS: the eager op behind a custom-op wall."""
    lib = torch.ops.tritonkit_gemm
    if not hasattr(lib, "linear"):   # this module may be loaded more than once per process
        @torch.library.custom_op("tritonkit_gemm::linear", mutates_args=())
        def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
            return F.linear(x, weight, bias)

        @torch.library.custom_op("tritonkit_gemm::addmm", mutates_args=())
        def addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.addmm(bias, a, b)

        linear.register_fake(F.linear)
        addmm.register_fake(torch.addmm)
        for name in CONVOLUTIONS:
            fn = getattr(F, name)
            op = torch.library.custom_op(f"tritonkit_gemm::{name}", _convolution(fn), mutates_args=())
            op.register_fake(fn)
        for name in TRANSPOSED:
            fn = getattr(F, name)
            op = torch.library.custom_op(f"tritonkit_gemm::{name}", _transposed(fn), mutates_args=())
            op.register_fake(fn)
        for name in ("mm", "bmm", "matmul"):
            fn = getattr(torch, name)
            op = torch.library.custom_op(f"tritonkit_gemm::{name}", _two_operands(fn), mutates_args=())
            op.register_fake(fn)
    return {name: getattr(lib, name).default for name in (*GEMMS, *CONVOLUTIONS, *TRANSPOSED)}


def _two_operands(fn):
    def op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fn(a, b)
    return op


def _defaults(name):
    """Every argument of the custom op, with the ATen default where a node may leave it out (None: required)."""
    if name == "linear":
        return (None, None, None)                                     # x, weight, bias
    if name in CONVOLUTIONS:
        n = CONVOLUTIONS[name]
        return (None, None, None, [1] * n, [0] * n, [1] * n, 1)      # x, weight, bias, stride, padding, dilation, groups
    if name in TRANSPOSED:
        n = TRANSPOSED[name]
        return (None, None, None, [1] * n, [0] * n, [0] * n, 1, [1] * n)  # ..., output_padding, groups, dilation
    return ()


def _convolution(fn):
    def op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: List[int],
           padding: List[int], dilation: List[int], groups: int) -> torch.Tensor:
        return fn(x, weight, bias, stride, padding, dilation, groups)
    return op


def _transposed(fn):
    def op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: List[int],
           padding: List[int], output_padding: List[int], groups: int, dilation: List[int]) -> torch.Tensor:
        return fn(x, weight, bias, stride, padding, output_padding, groups, dilation)
    return op
