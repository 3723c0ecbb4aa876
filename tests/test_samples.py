"""The spec's `workload` (tritonkit.spec, tritonkit.workload, tritonkit.samples): what the bench sends is the
user's data, in the shapes and dtypes the model takes, with its length distribution reported."""

from __future__ import annotations

import numpy as np
import pytest

from tritonkit.errors import UserError
from tritonkit.load import BenchTarget, TensorSpec, _request_arrays, payload_summary
from tritonkit.samples import request_arrays
from tritonkit.spec import load_spec
from tritonkit.workload import bench_target

SPEC = """
models:
  - name: mlp
    source: {{format: onnx, path: m.onnx}}
    inputs: [{{name: x, dtype: FP32, dims: [batch, sequence]}}]
    outputs: [{{name: y, dtype: FP32, dims: [batch, 3]}}]
    axes: {{sequence: {{min: 1, opt: 16, max: 64}}}}
    max_batch_size: 8
    latency_budget: {{p99_ms: 50}}
    tolerance: {{fp32: {{atol: 1.0e-5}}}}
    {workload}
"""


def spec_with(tmp_path, workload: str):
    (tmp_path / "m.onnx").write_bytes(b"")
    path = tmp_path / "s.yaml"
    path.write_text(SPEC.format(workload=workload))
    return load_spec(path).models[0]


def test_npz_samples_set_the_request_shapes_and_cycle(tmp_path):
    """Samples of length 24 are sent at length 24 (not the axis' opt 16), 4 per request with --batch 4,
    consecutive requests carry consecutive samples, and the summary reports what was sent."""
    data = np.arange(10 * 24, dtype=np.float32).reshape(10, 24)
    np.savez(tmp_path / "in.npz", x=data)
    model = spec_with(tmp_path, "workload: {data: in.npz}")
    target = bench_target(model, "127.0.0.1:1", "grpc", batch=4)
    assert target.inputs == (TensorSpec("x", "FP32", (4, 24)),)
    variants = _request_arrays(target)
    assert len(variants) == 10
    assert np.array_equal(variants[0]["x"], data[0:4]) and np.array_equal(variants[1]["x"], data[4:8])
    assert np.array_equal(variants[2]["x"], data[[8, 9, 0, 1]])
    summary = payload_summary(target, variants)
    assert summary["source"].startswith("data: ") and summary["inputs"]["x"]["max"] == 96


def test_files_become_bytes_items(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i, size in enumerate((3, 10, 50)):
        (tmp_path / "imgs" / f"{i}.bin").write_bytes(bytes(size))
    spec = TensorSpec("image", "BYTES", (2, 1))
    variants = request_arrays((spec,), "files", str(tmp_path / "imgs"))
    assert [len(x) for x in variants[0]["image"].reshape(-1)] == [3, 10]
    summary = payload_summary(BenchTarget("m", (spec,), (), "h:1", samples=("files", str(tmp_path / "imgs"))),
                              variants)
    assert summary["inputs"]["image"]["unit"] == "bytes per item" and summary["inputs"]["image"]["max"] == 50


def test_bad_sample_data_is_refused_with_what_and_where(tmp_path):
    np.savez(tmp_path / "wrong.npz", y=np.zeros((2, 4), np.float32))
    np.savez(tmp_path / "int.npz", x=np.zeros((2, 4), np.int64))
    spec = TensorSpec("x", "FP32", (1, 4))
    with pytest.raises(UserError, match="sample data lacks inputs") as e:
        request_arrays((spec,), "data", str(tmp_path / "wrong.npz"))
    assert "['y']" in str(e.value) and "['x']" in str(e.value)
    with pytest.raises(UserError, match="has another dtype") as e:
        request_arrays((spec,), "data", str(tmp_path / "int.npz"))
    assert "int64" in str(e.value) and "float32" in str(e.value)
    with pytest.raises(UserError, match="sample data not found"):
        spec_with(tmp_path, "workload: {data: missing.npz}")
    with pytest.raises(UserError, match="name exactly one kind"):
        spec_with(tmp_path, "workload: {data: wrong.npz, texts: wrong.npz}")
