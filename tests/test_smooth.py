"""SmoothQuant scaling before dynamic INT8 (smooth.py): exact in FP32, and what it is for, less INT8 error when
a few activation channels carry outliers (as after GELU and LayerNorm in BERT-family encoders)."""

from __future__ import annotations

import numpy as np
import pytest

from tritonkit.smooth import activation_ranges, smooth


def _two_matmuls(path, rng, k=64, n=32):
    """y1 = x W1, y2 = relu(x) W2: two constant-weight MatMuls, one shared activation, one with its own."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w1 = rng.normal(size=(k, n)).astype(np.float32)
    w2 = rng.normal(size=(k, n)).astype(np.float32)
    w3 = rng.normal(size=(k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["y1"], name="mm1"),
         helper.make_node("MatMul", ["x", "w3"], ["y3"], name="mm3"),
         helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["y2"], name="mm2")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["rows", n]) for y in ("y1", "y2", "y3")],
        [numpy_helper.from_array(w, name) for w, name in ((w1, "w1"), (w2, "w2"), (w3, "w3"))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _activations(rng, rows=256, k=64):
    x = rng.normal(size=(rows, k)).astype(np.float32)
    x[:, :3] *= 60.0                     # three outlier channels
    return x


def test_smoothing_is_exact_in_fp32_and_lowers_int8_error(tmp_path):
    from tritonkit.compare import run_onnx
    from tritonkit.quantize import quantize
    rng = np.random.default_rng(0)
    plain, scaled = tmp_path / "plain.onnx", tmp_path / "smoothed.onnx"
    _two_matmuls(plain, rng)
    calibration, held_out = _activations(rng), _activations(rng)
    ranges = activation_ranges(plain, {"x": calibration})
    assert set(ranges) == {"x", "r"} and ranges["x"].shape == (64,)
    assert smooth(plain, scaled, ranges, alpha=0.7) == 2          # one Mul per distinct activation
    reference = run_onnx(plain, {"x": held_out})
    for name, value in run_onnx(scaled, {"x": held_out}).items():
        np.testing.assert_allclose(value, reference[name], rtol=1e-4, atol=1e-3)

    def int8_error(graph):
        q = tmp_path / f"{graph.stem}-int8.onnx"
        quantize(graph, q, reduce_range=False)
        got = run_onnx(q, {"x": held_out})
        return max(float(np.abs(got[k] - reference[k]).max() / np.abs(reference[k]).max()) for k in reference)
    assert int8_error(scaled) < 0.5 * int8_error(plain)


def test_ranges_of_a_tensor_the_graph_already_outputs(tmp_path):
    """An activation that is also a graph output is read once, not added twice (ONNX Runtime refuses duplicates)."""
    import onnx
    rng = np.random.default_rng(1)
    path = tmp_path / "g.onnx"
    _two_matmuls(path, rng)
    model = onnx.load(str(path))
    model.graph.output.append(onnx.helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, ["rows", 64]))
    onnx.save(model, str(path))
    ranges = activation_ranges(path, {"x": _activations(rng)})
    assert ranges["r"].min() >= 0.0 and ranges["x"].max() > 50.0


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_extreme_alphas_stay_exact(tmp_path, alpha):
    from tritonkit.compare import run_onnx
    rng = np.random.default_rng(2)
    plain, scaled = tmp_path / "plain.onnx", tmp_path / "s.onnx"
    _two_matmuls(plain, rng)
    x = _activations(rng)
    smooth(plain, scaled, activation_ranges(plain, {"x": x}), alpha)
    ref, got = run_onnx(plain, {"x": x}), run_onnx(scaled, {"x": x})
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-2)
