"""Tiny real models for build tests, each with the spec that serves it and a check of its numbers.

No torchvision and no downloads: the weights come from a fixed seed, so every run exports the same graph.
The exporters here (any torch.nn.Module -> ONNX, an onnx.helper graph) serve tests only; tritonkit's own
export is tritonkit.export.export_sentence_embedding.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tritonkit.compare import ValidationResult, compare_outputs, run_onnx
from tritonkit.defaults import ONNX_OPSET
from tritonkit.errors import UserError
from tritonkit.export import EXPORTER, ExportResult, check_opset, read_onnx_signature, torch_onnx_export
from tritonkit.spec import Tensor

# The CNN's tensors as the spec declares them (batch axis named): the same values drive the YAML below,
# the ONNX dynamic axes and, through the plan, the TensorRT profiles.
CNN_TENSORS = (Tensor("image", "FP32", ("batch", 3, 32, 32)), Tensor("logits", "FP32", ("batch", 10)))

CNN_SPEC = """
models:
  - name: cnn
    source: {{format: onnx, path: {onnx}}}
    inputs:
      - {{name: image, dtype: FP32, dims: [batch, 3, 32, 32]}}
    outputs:
      - {{name: logits, dtype: FP32, dims: [batch, 10]}}
    max_batch_size: 16
    precision: {precision}
    axes: {{batch: {{min: 1, opt: 8, max: 16}}}}
    latency_budget: {{p99_ms: 50}}
    tolerance:
      fp32: {{atol: 1.0e-5, rtol: 1.0e-4}}
      fp16: {{atol: 2.0e-2, rtol: 1.0e-2, min_cosine: 0.999}}
"""


def tiny_cnn(seed: int = 0):
    """Conv(3->8) ReLU MaxPool Conv(8->16) ReLU MaxPool Conv(16->16) ReLU global-avg-pool Linear(16->10)."""
    import torch
    from torch import nn

    class TinyCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
            self.head = nn.Linear(16, 10)

        def forward(self, image):
            return self.head(self.features(image).flatten(1))

    torch.manual_seed(seed)
    return TinyCNN().eval()


def cnn_images(batch: int, seed: int = 1):
    """Image-like inputs: seeded uniform [0, 1) in NCHW, FP32."""
    import numpy as np
    return np.random.default_rng(seed).random((batch, 3, 32, 32), dtype=np.float32)


def write_cnn_spec(folder: Path, onnx_name: str = "cnn.onnx", precision: str = "auto",
                   name: str = "cnn.yaml") -> Path:
    path = Path(folder) / name
    path.write_text(CNN_SPEC.format(onnx=onnx_name, precision=precision))
    return path


def export_cnn(folder: Path, *, opset: int | None = None):
    """The CNN exported to ``folder/cnn.onnx``; the spec's named axes (CNN_TENSORS) are its ONNX dynamic axes."""
    import torch

    model = tiny_cnn()
    return model, export_torch_onnx(model, {"image": torch.from_numpy(cnn_images(2))}, Path(folder) / "cnn.onnx",
                                    output_names=["logits"], dynamic_axes=dynamic_axes_for(CNN_TENSORS),
                                    opset=opset or ONNX_OPSET)


# --------------------------------------------------------------------------------------------------
# Any torch.nn.Module -> ONNX, validated against the module (the tiny CNN's path)
# --------------------------------------------------------------------------------------------------
def dynamic_axes_for(tensors: Sequence[Any]) -> dict[str, dict[int, str]]:
    """The spec's named axes as torch.onnx ``dynamic_axes``: ``{tensor: {dim index: axis name}}``.

    ``tensors`` are spec.Tensor / TensorSig (batch axis included). One set of names drives ONNX, the
    TensorRT profiles and Triton's -1 dims, so they cannot disagree.
    """
    return {t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str)} for t in tensors
            if any(isinstance(d, str) for d in t.dims)}


def export_torch_onnx(module, example_inputs: Mapping[str, Any], out_path: Path, *, output_names: Sequence[str],
                      dynamic_axes: Mapping[str, Mapping[int, str]], opset: int = ONNX_OPSET) -> ExportResult:
    """``module(*example_inputs.values())`` -> one checked ONNX file (the same exporter call as MiniLM's).

    ``example_inputs`` maps graph input names to example tensors, in the order ``forward`` takes them.
    Every axis named in ``dynamic_axes`` is dynamic in the file (``dim_param`` = the axis name). The file
    passes ``onnx.checker`` (full check) and appears at ``out_path`` atomically, or not at all.
    """
    started = time.perf_counter()
    out_path = Path(out_path)
    check_opset(opset)
    unknown = sorted(set(dynamic_axes) - set(example_inputs) - set(output_names))
    if unknown:
        raise UserError("dynamic_axes names tensors the export does not have", actual=unknown,
                        expected=f"some of {[*example_inputs, *output_names]}")
    import onnx
    import torch
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent))
    try:
        raw = tmp_dir / "raw.onnx"
        torch_onnx_export(module.eval(), tuple(example_inputs.values()), raw,
                          input_names=list(example_inputs), output_names=list(output_names),
                          dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()}, opset=opset)
        model = onnx.load(str(raw))
        model.metadata_props.add(key="tritonkit.exporter", value=f"{EXPORTER} torch {torch.__version__}")
        onnx.checker.check_model(model, full_check=True)
        final = tmp_dir / "model.onnx"
        onnx.save(model, str(final), save_as_external_data=False)
        os.replace(final, out_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    inputs, outputs = read_onnx_signature(out_path)
    return ExportResult(path=out_path, opset=opset, exporter=f"{EXPORTER} torch {torch.__version__}",
                        inputs=inputs, outputs=outputs, seconds=time.perf_counter() - started)


def validate_onnx_against_torch(onnx_path: Path, module, feeds: Mapping[str, Any], *, atol: float, rtol: float = 0.0,
                                min_cosine: float = 0.0) -> ValidationResult:
    """Run ``module`` (PyTorch, FP32) and the ONNX file (ONNX Runtime) on the same ``feeds`` and compare.

    ``feeds``: numpy arrays by graph input name, in ``forward``'s argument order; axis 0 = samples.
    Outputs are matched by position (torch returns a tensor or a tuple) and compared by name.
    """
    import numpy as np
    import torch
    with torch.no_grad():
        out = module.eval()(*(torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    candidate = run_onnx(onnx_path, feeds)
    if len(outs) != len(candidate):
        raise UserError("the ONNX graph has another number of outputs than the module", where=str(onnx_path),
                        actual=len(candidate), expected=len(outs))
    reference = {name: o.detach().cpu().numpy() for name, o in zip(candidate, outs)}
    return compare_outputs(reference, candidate, atol=atol, rtol=rtol, min_cosine=min_cosine)


# --------------------------------------------------------------------------------------------------
# y = relu(x @ W + b), built with onnx.helper (no torch): the fast serving tests' model
# --------------------------------------------------------------------------------------------------
def tiny_weights(in_features: int = 4, out_features: int = 3, seed: int = 0):
    """The fixed weights of :func:`export_tiny_onnx` (W: [in, out], b: [out], float32)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((in_features, out_features)).astype(np.float32)
    b = rng.standard_normal(out_features).astype(np.float32)
    return w, b


def export_tiny_onnx(out_path: Path, *, input_name: str = "x", output_name: str = "y", batch_axis: str = "batch",
                     in_features: int = 4, out_features: int = 3, seed: int = 0,
                     opset: int = ONNX_OPSET) -> ExportResult:
    """``y = relu(x @ W + b)``: FP32 [batch, in] -> FP32 [batch, out], weights from :func:`tiny_weights`.

    Deterministic (same arguments -> same bytes) and checked. IR version is the lowest that supports
    ``opset``, so older runtimes load it.
    """
    started = time.perf_counter()
    out_path = Path(out_path)
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w, b = tiny_weights(in_features, out_features, seed)
    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "W"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["xwb"]),
         helper.make_node("Relu", ["xwb"], [output_name])],
        "tiny_relu_linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch_axis, in_features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch_axis, out_features])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="tritonkit",
                              ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model, full_check=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(model.SerializeToString())
    inputs, outputs = read_onnx_signature(out_path)
    return ExportResult(path=out_path, opset=opset, exporter=f"onnx.helper onnx {onnx.__version__}",
                        inputs=inputs, outputs=outputs, seconds=time.perf_counter() - started)


def write_cnn_onnx(folder: Path, name: str = "cnn.onnx", seed: int = 0) -> Path:
    """image FP32 [batch, 3, 32, 32] -> Conv 3x3 (8) ReLU GlobalAveragePool Flatten MatMul+Add -> logits [batch, 10].

    Fixed-seed weights: logits of magnitude ~1, so FP16 rounding shows (~1e-3) and stays inside tolerance.fp16."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tritonkit.defaults import ONNX_OPSET
    rng = np.random.default_rng(seed)
    weights = {"conv_w": rng.standard_normal((8, 3, 3, 3)) / 3, "conv_b": rng.standard_normal(8) / 10,
               "fc_w": rng.standard_normal((8, 10)) / 2, "fc_b": rng.standard_normal(10) / 10}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv"], ["relu"]),
         helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
         helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "fc_w"], ["fc"]),
         helper.make_node("Add", ["fc", "fc_b"], ["logits"])], "tiny_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()])
    opsets = [helper.make_opsetid("", ONNX_OPSET)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model, full_check=True)
    path = Path(folder) / name
    path.write_bytes(model.SerializeToString())
    return path


# The ops onnx_torch.py added for CNNs, in the shapes torch.onnx writes them: blocks of MobileNetV3 (ReLU6 as Clip,
# HardSwish, squeeze-excite with HardSigmoid, depthwise convolution, batch norm), a U-Net decoder (ConvTranspose,
# nearest and bilinear Upsample as Resize, GroupNorm as InstanceNormalization) and a super-resolution head
# (PixelShuffle as DepthToSpace). image FP32 [batch, 3, 32, 32] -> FP32 [batch, 3, 64, 64]; seeded weights.
CNN_BLOCKS_SPEC = """# Random-weight CNN blocks (tests/tiny_models.py cnn_blocks): a systems check of the GPU path for an ONNX
# source with these operators, not a model anyone serves.
models:
  - name: cnn_blocks
    source: {format: onnx, path: cnn_blocks.onnx}
    inputs: [{name: x, dtype: FP32, dims: [batch, 3, 32, 32]}]
    outputs: [{name: y, dtype: FP32, dims: [batch, 3, 64, 64]}]
    max_batch_size: 32
    latency_budget: {p99_ms: 50}
    tolerance:
      fp32: {atol: 1.0e-4, rtol: 1.0e-4}
      fp16: {atol: 5.0e-2, rtol: 5.0e-2}
"""


def cnn_blocks(seed: int = 0):
    import torch
    from torch import nn

    class CnnBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6())
            self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.Hardswish())
            self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 16, 1),
                                    nn.Hardsigmoid())
            self.up = nn.Sequential(nn.ConvTranspose2d(16, 8, 2, 2), nn.GroupNorm(2, 8), nn.SiLU(),
                                    nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(8, 12, 3, 1, 1),
                                    nn.Upsample(scale_factor=0.5, mode="bilinear"), nn.PixelShuffle(2))

        def forward(self, x):
            h = self.dw(self.stem(x))
            return self.up(h * self.se(h))

    torch.manual_seed(seed)
    net = CnnBlocks().eval()
    for m in net.modules():     # batch norm with statistics of its own, not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    return net


def write_cnn_blocks(folder: Path) -> Path:
    """cnn_blocks exported by the kit's exporter to folder/cnn_blocks.onnx (batch axis dynamic), with its spec
    folder/models.yaml; returns the ONNX path."""
    import torch
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cnn_blocks.onnx"
    torch_onnx_export(cnn_blocks(), (torch.randn(2, 3, 32, 32),), path, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset=ONNX_OPSET)
    (folder / "models.yaml").write_text(CNN_BLOCKS_SPEC)
    return path
