"""Tiny real models for build tests, each with the spec that serves it and a check of its numbers.

No torchvision and no downloads: the weights come from a fixed seed, so every run exports the same graph.
"""

from __future__ import annotations

from pathlib import Path

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

    from tritonkit import defaults
    from tritonkit.export import dynamic_axes_for, export_torch_onnx
    model = tiny_cnn()
    return model, export_torch_onnx(model, {"image": torch.from_numpy(cnn_images(2))}, Path(folder) / "cnn.onnx",
                                    output_names=["logits"], dynamic_axes=dynamic_axes_for(CNN_TENSORS),
                                    opset=opset or defaults.ONNX_OPSET)
