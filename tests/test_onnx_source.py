"""The generic path: a spec that points at an ONNX file, served by the embedded server's python backend."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import free_ports

ROOT = Path(__file__).resolve().parent.parent

SPEC = """
models:
  - name: tiny
    source: {{format: onnx, path: tiny.onnx}}
    inputs:
      - {{name: x, dtype: FP32, dims: [batch, {in_features}]}}
    outputs:
      - {{name: y, dtype: FP32, dims: [batch, 3]}}
    max_batch_size: 8
    latency_budget: {{p99_ms: 100}}
    tolerance:
      fp32: {{atol: 1.0e-6}}
"""


@pytest.fixture()
def tiny_spec(tmp_path):
    from tests.tiny_models import export_tiny_onnx
    export_tiny_onnx(tmp_path / "tiny.onnx")

    def write(in_features: int = 4) -> Path:
        path = tmp_path / f"tiny-{in_features}.yaml"
        path.write_text(SPEC.format(in_features=in_features))
        return path
    return write


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tritonkit.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_spec_dims_that_do_not_fit_the_model_file_are_refused(tiny_spec, tmp_path):
    """A spec saying 5 features for a 4-feature ONNX must fail at build with both numbers, not at request time."""
    repo = tmp_path / "repo"
    spec = tiny_spec(in_features=5)
    assert _cli("render", "--spec", str(spec), "--gpu", "none", "--out", str(repo)).returncode == 0
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    r = _cli("build", "--repo", str(repo))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    # The input, the axis, the file's size and the spec's, then got/expected with both shapes: a message that
    # lost the dims (or swapped file and spec) fails here. (Bare digits would match the tmp path.)
    assert re.search(r"input 'x' dim 1 is 4 in model\.onnx, spec says 5\b", r.stderr), r.stderr
    assert re.search(r"got '?\[batch, 4\]'?, expected '?\[batch, 5\]'?", r.stderr), r.stderr
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before  # no half-built artifact left


def test_build_of_a_hand_edited_repository_is_refused(tiny_spec, tmp_path):
    """Artifacts built for a config its plan.json no longer renders (edited by hand) would be served by a
    config nobody planned: build names the file and the re-render command, and writes nothing."""
    repo = tmp_path / "repo"
    spec = tiny_spec()
    assert _cli("render", "--spec", str(spec), "--gpu", "none", "--out", str(repo)).returncode == 0
    config = repo / "tiny" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 8", "max_batch_size: 4"))
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    r = _cli("build", "--repo", str(repo))
    assert r.returncode == 2 and "not what its plan.json renders" in r.stderr, r.stderr
    assert "tiny/config.pbtxt" in r.stderr and "render --plan" in r.stderr
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before


@pytest.mark.integration
def test_onnx_source_is_served_and_matches_numpy(tiny_spec, tmp_path):
    """The python backend ONNX Runtime model must serve batches and return what the graph computes."""
    from tritonkit.build import build
    from tests.tiny_models import tiny_weights
    from tritonkit.hardware import declared
    from tritonkit.policy import plan
    from tritonkit.render import write_repository
    from tritonkit.serve import EmbeddedServer, ServerOptions
    from tritonkit.servers import SERVERS
    from tritonkit.spec import load_spec
    import tritonclient.grpc as grpcclient

    spec = load_spec(tiny_spec())
    p = plan(spec, declared("none"), SERVERS["embedded"])
    repo = tmp_path / "repo"
    write_repository(p, repo)
    assert [r.status for r in build(repo, spec=spec, progress=False)] == ["built"]
    assert [r.status for r in build(repo, spec=spec, progress=False)] == ["current"]  # manifest honoured
    http, grpc, metrics = free_ports(3)
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 10 - 0.5
    w, b = tiny_weights()
    with EmbeddedServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)) as s:
        client = grpcclient.InferenceServerClient(s.grpc_url)
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        y = client.infer("tiny", [inp]).as_numpy("y")
    np.testing.assert_allclose(y, np.maximum(x @ w + b, 0), atol=1e-6)
