"""`tritonkit bench` as a user runs it: the repository's plan says what to measure; the exit code is the verdict
(0 budget met, 1 missed, 2 bad input), whatever the protocol or load mode."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import cli, free_ports
from tests.tiny_models import export_tiny_onnx

pytestmark = pytest.mark.integration

SPEC = """
models:
  - name: tiny
    source: {format: onnx, path: tiny.onnx}
    inputs: [{name: x, dtype: FP32, dims: [batch, 4]}]
    outputs: [{name: y, dtype: FP32, dims: [batch, 3]}]
    max_batch_size: 8
    latency_budget: {p99_ms: 100}
    tolerance: {fp32: {atol: 1.0e-6}}
    workload: {data: samples.npz}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from tritonkit.serve import EmbeddedServer, ServerOptions
    root = tmp_path_factory.mktemp("bench_cli")
    export_tiny_onnx(root / "tiny.onnx")
    np.savez(root / "samples.npz", x=np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32))
    (root / "tiny.yaml").write_text(SPEC)
    repo = root / "repo"
    assert cli("render", "--spec", str(root / "tiny.yaml"), "--gpu", "none", "--out", str(repo)).returncode == 0
    assert cli("build", "--repo", str(repo)).returncode == 0
    http, grpc, metrics = free_ports(3)
    with EmbeddedServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)) as srv:
        yield repo, srv, root


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_budget_met_is_0_missed_is_1(served, protocol):
    """Prevents a verdict that does not reach the exit code: same server, budget 100 ms (met) and 0.001 ms
    (missed), closed and open loop, both wires; the spec's own samples are what is sent."""
    repo, srv, root = served
    port = ["--grpc-port", str(srv.options.grpc_port)] if protocol == "grpc" else \
        ["--http-port", str(srv.options.http_port)]
    common = ["bench", "--repo", str(repo), "--protocol", protocol, *port, "--no-progress",
              "--reports", str(root / protocol), "--requests", "50", "--concurrency", "1,2",
              "--request-rate", "100", "--duration", "1"]
    met = cli(*common)
    assert met.returncode == 0, met.stdout[-2000:] + met.stderr[-2000:]
    report = json.loads((root / protocol / f"bench-tiny-{protocol}.json").read_text())
    assert [lv["mode"] for lv in report["levels"]] == ["closed", "closed", "open"]
    assert report["payload"]["source"].startswith("data: ") and report["payload"]["inputs"]["x"]["shape"] == [1, 4]
    missed = cli(*common, "--budget-ms", "0.001")
    assert missed.returncode == 1 and "FAILED" in missed.stdout and "> budget 0.001 ms" in missed.stdout


def test_bad_input_is_2_without_a_traceback(served):
    repo, srv, _ = served
    for args, message in ((["--model", "nope"], "no model named 'nope'"),
                          (["--request-rate", "0"], "request rates must be > 0"),
                          (["--find-capacity", "--budget-ms", "-1"], "p99 budget must be > 0 ms")):
        r = cli("bench", "--repo", str(repo), "--grpc-port", str(srv.options.grpc_port), "--no-progress", *args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
