"""Step: a PyTorch source (``file.py:factory`` -> ``nn.Module``) loaded, exported to ONNX at the spec's
axes and proven against the module itself.

``source: {format: pytorch, path: models/net.py:make_model}``: the factory is called with no arguments and
must return an ``nn.Module`` (put in eval mode here); its ``forward`` takes the spec's inputs in order (by
name when it names them) and returns the spec's outputs (one tensor, or a tuple/list/dict of them). The
ONNX graph then serves like an ONNX source. Validation runs module and graph on the same seeded inputs at
the spec's min, opt and max shapes and compares every output with the FP32 tolerance (atol + rtol x |ref|).

Heavy imports (torch, onnxruntime) happen inside the functions.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import time
from pathlib import Path
from typing import Any

from . import defaults
from .errors import UserError

SHAPES = ("min", "opt", "max")   # where the graph is checked: every size each named axis is promised


def load_module(file: Path, name: str, where: str):
    """``name()`` from the Python file, in eval mode. Errors name the file, the factory and what it gave instead."""
    import torch
    file = Path(file)
    if not file.is_file():
        raise UserError("the factory's Python file is not there", where=where, actual=str(file),
                        expected="an existing .py file", fix="fix source.path (relative to the spec's folder)")
    spec = importlib.util.spec_from_file_location(f"tritonkit_source_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(file.parent))      # the factory's own imports (a sibling module) resolve
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's file is reported as theirs
        raise UserError(f"the factory's file does not import: {type(exc).__name__}: {exc}", where=where,
                        actual=str(file), expected="a module that imports without error",
                        fix=f"run `python -c \"import runpy; runpy.run_path('{file}')\"` to see the traceback") from None
    finally:
        sys.path.remove(str(file.parent))
    factory = getattr(module, name, None)
    if not callable(factory):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))[:12]
        raise UserError(f"no callable '{name}' in {file.name}", where=where, actual=found,
                        expected=f"a function {name}() returning a torch.nn.Module")
    try:
        net = factory()
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{name}() raised {type(exc).__name__}: {exc}", where=where,
                        expected="a factory that builds the model without arguments") from None
    if not isinstance(net, torch.nn.Module):
        raise UserError(f"{name}() did not return a torch.nn.Module", where=where,
                        actual=type(net).__name__, expected="torch.nn.Module")
    return net.eval()


def check_forward(net, spec_model, where: str) -> None:
    """forward() must take the spec's inputs by position: as many as it requires and at most as many as it
    has; a forward that names them must name them in the spec's order (a swap would pass silently otherwise)."""
    sig = inspect.signature(net.forward).parameters.values()
    params = [p.name for p in sig if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(1 for p in sig if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty)
    takes_any = any(p.kind == p.VAR_POSITIONAL for p in sig)
    names = [t.name for t in spec_model.inputs]
    count_ok = required <= len(names) and (takes_any or len(names) <= len(params))
    order_ok = params[:len(names)] == names or not set(params) & set(names)
    if not (count_ok and order_ok):
        raise UserError("the module's forward() does not take the spec's inputs", where=where,
                        actual=f"forward({', '.join(params)}{', *args' if takes_any else ''})",
                        expected=f"forward({', '.join(names)})",
                        fix="list the spec's inputs in forward's order (names as its parameters), or wrap the module")


def _outputs(result, spec_model, where: str) -> dict[str, Any]:
    import torch
    names = [t.name for t in spec_model.outputs]
    if isinstance(result, torch.Tensor):
        result = (result,)
    if isinstance(result, dict):
        missing = [n for n in names if n not in result]
        if missing:
            raise UserError("forward() returned a dict without the spec's outputs", where=where,
                            actual=sorted(result), expected=names)
        return {n: result[n] for n in names}
    if not isinstance(result, (tuple, list)) or len(result) != len(names):
        raise UserError("forward() returns another number of outputs than the spec lists", where=where,
                        actual=f"{len(result) if isinstance(result, (tuple, list)) else type(result).__name__}",
                        expected=f"{len(names)}: {names}")
    return dict(zip(names, result))


def _tuple_module(net, spec_model, where: str):
    """forward(*inputs) -> a tuple in the spec's output order: what torch.onnx.export traces."""
    import torch

    class SpecOrder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, *args):
            return tuple(_outputs(self.net(*args), spec_model, where).values())
    return SpecOrder().eval()


def feeds(spec_model, which: str, seed: int) -> dict:
    """Seeded inputs at the spec's ``which`` shapes (min/opt/max)."""
    from .compare import synthetic_feeds
    return synthetic_feeds(spec_model.inputs, spec_model.shapes(spec_model.inputs, which), seed)


def eager_outputs(module, spec_model, feed: dict) -> dict:
    """``module`` (a spec-order tuple module) on ``feed``, NumPy out by output name (floats as FP32)."""
    import numpy as np
    import torch
    with torch.no_grad():
        got = module(*(torch.from_numpy(np.ascontiguousarray(feed[t.name])) for t in spec_model.inputs))
    return {t.name: (g.float() if g.is_floating_point() else g).detach().cpu().numpy()
            for t, g in zip(spec_model.outputs, got)}


def load_spec_module(spec_model):
    """The source's module with ``forward(*spec inputs) -> tuple of spec outputs``, proven to run at the opt
    shapes; (module, where)."""
    source = spec_model.source
    where = f"{spec_model.name}: source {source.path}:{source.factory}"
    net = load_module(Path(source.path), source.factory, where)
    check_forward(net, spec_model, where)
    wrapped = _tuple_module(net, spec_model, where)
    trace = feeds(spec_model, "opt", defaults.VALIDATION_SEED)
    try:
        eager_outputs(wrapped, spec_model, trace)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's forward on the spec's shapes
        raise UserError(f"forward() fails on the spec's inputs: {type(exc).__name__}: {exc}", where=where,
                        actual={n: f"{v.dtype} {list(v.shape)}" for n, v in trace.items()},
                        expected="a forward that accepts the spec's dtypes and opt shapes",
                        fix="make the spec's inputs (dtype, dims) what the module takes") from None
    return wrapped, where


def export_pytorch(spec_model, out: Path, *, atol: float, rtol: float, opset: int = defaults.ONNX_OPSET) -> dict:
    """Load, export (TorchScript exporter, the spec's named axes dynamic) and validate; the build.json record."""
    wrapped, where = load_spec_module(spec_model)
    return export_module(wrapped, spec_model, out, where, "the PyTorch module (eager, FP32, CPU)",
                         atol=atol, rtol=rtol, opset=opset)


def export_module(wrapped, spec_model, out: Path, where: str, reference: str, *, atol: float, rtol: float,
                  opset: int = defaults.ONNX_OPSET) -> dict:
    """A spec-order module exported to ONNX at ``out`` and checked against itself at the min/opt/max shapes."""
    import torch

    from .compare import compare_outputs, run_onnx
    from .export import EXPORTER, torch_onnx_export
    names = [t.name for t in spec_model.inputs]
    trace = feeds(spec_model, "opt", defaults.VALIDATION_SEED)
    axes = {t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str)}
            for t in (*spec_model.inputs, *spec_model.outputs)}
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch_onnx_export(wrapped, tuple(torch.from_numpy(trace[n]) for n in names), out, input_names=names,
                          output_names=[t.name for t in spec_model.outputs],
                          dynamic_axes={k: v for k, v in axes.items() if v}, opset=opset)
    except Exception as exc:  # noqa: BLE001 - the exporter's message is the most useful thing to show
        raise UserError(f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                        where=where, expected="a module the TorchScript exporter can trace",
                        fix="export it yourself and use source.format: onnx, or simplify forward()") from None
    seconds = time.perf_counter() - started
    worst, checked = None, {}
    for k, which in enumerate(SHAPES):
        feed = feeds(spec_model, which, defaults.VALIDATION_SEED + 1 + k)   # other values than the trace's
        check = compare_outputs(eager_outputs(wrapped, spec_model, feed), run_onnx(out, feed), atol=atol, rtol=rtol)
        checked[which] = {n: list(v.shape) for n, v in feed.items()}
        if worst is None or check.max_abs_error > worst.max_abs_error:
            worst = check
        if not check.passed:
            raise UserError(f"exported ONNX does not match the PyTorch module at the {which} shapes: "
                            f"{'; '.join(check.failures)}", where=where,
                            actual=f"max abs error {check.max_abs_error:.3g}",
                            expected=f"atol {atol:g}" + (f" + rtol {rtol:g} x |ref|" if rtol else ""),
                            fix="loosen tolerance.fp32 only if that error is acceptable, or export it yourself "
                                "(source.format: onnx)")
    return {"tool": EXPORTER, "opset": opset, "export_seconds": round(seconds, 2),
            "validation": {"reference": reference, "shapes": checked,
                           "samples": len(SHAPES), "max_abs_error": worst.max_abs_error, "atol": atol, "rtol": rtol}}
