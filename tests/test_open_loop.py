"""Open-loop load and the capacity search, against a real embedded tritonserver and python models whose
service time is known: what the bench reports must be what the server did, not what the client could send."""

from __future__ import annotations

import pytest

from tests.conftest import free_ports
from tritonkit.load import BenchTarget, TensorSpec, run_bench

pytestmark = pytest.mark.integration

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [{{ name: "X", data_type: TYPE_FP32, dims: [4] }}]
output [{{ name: "Y", data_type: TYPE_FP32, dims: [4] }}]
instance_group [{{ count: 1, kind: KIND_CPU }}]
"""

MODEL = """
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.seen, self.last_end = 0, 0.0

    def execute(self, requests):
        out = []
        for r in requests:
            start = time.perf_counter()
            self.seen += 1
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
{body}
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x)]))
        return out
"""
BODIES = {
    "fast": "            pass",
    # one instance, no batching, 5 ms per request: back to back, answers leave exactly 5 ms apart (Triton's own
    # per-request overhead between two executes is absorbed), so it serves 200 requests/s at most
    "fixed_5ms": "            self.last_end = max(self.last_end + 0.005, start + 0.003)\n"
                 "            time.sleep(max(0.0, self.last_end - time.perf_counter()))",
    # answers at once, except every 500th request (the 100th, 600th, ...), which stalls the only instance for 1 s
    "stall_once": "            time.sleep(1.0 if self.seen % 500 == 100 else 0.0)",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tritonkit.serve import EmbeddedServer, ServerOptions
    repo = tmp_path_factory.mktemp("open_loop") / "repo"
    for name, body in BODIES.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name))
        (repo / name / "1" / "model.py").write_text(MODEL.format(body=body))
    http, grpc, metrics = free_ports(3)
    with EmbeddedServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)) as srv:
        yield srv


def target(server, model: str) -> BenchTarget:
    return BenchTarget(model=model, inputs=(TensorSpec("X", "FP32", (4,)),), outputs=("Y",), url=server.grpc_url)


@pytest.mark.parametrize("arrival", ["poisson", "constant"])
def test_open_loop_offers_the_rate_asked_for(server, arrival):
    """Prevents an open loop that sends at the client's pace: against a fast model the achieved rate is the
    requested one (within 5%), and latency counts from the due time, so it is never below the service time."""
    report = run_bench(target(server, "fast"), concurrency=(), request_rates=(150,), duration_s=4,
                       warmup_requests=5, progress=False, poisson=arrival == "poisson", processes=1)
    (lv,) = report.levels
    assert lv.mode == "open" and lv.requests == 600 and lv.errors == 0
    assert abs(lv.throughput_rps - 150) <= 0.05 * 150, lv
    assert lv.p50_ms <= lv.p99_ms <= lv.p999_ms <= lv.max_ms


def test_capacity_search_finds_the_service_rate(server):
    """A model that takes 5 ms per request on one instance without batching answers 200 requests/s at most:
    kept busy by 4 closed-loop clients it serves 200 (+-10%), and the search must land within 10% of 200 and of
    what it served there; its steps must bracket it."""
    report = run_bench(target(server, "fixed_5ms"), concurrency=(4,), requests_per_level=600, duration_s=3,
                       warmup_requests=5,
                       budget_p99_ms=500, find_capacity=True, progress=False, processes=1)
    saturated = report.levels[0].throughput_rps
    assert 180 <= saturated <= 220, report.levels[0]
    cap = report.capacity
    assert cap is not None and 180 <= cap.rps <= 220 and 0.9 * saturated <= cap.rps <= 1.1 * saturated, \
        (saturated, cap, [(lv.offered_rps, lv.p99_ms) for lv in report.levels])
    assert any(not ok for _, ok, _ in cap.steps), cap.steps          # something above it failed
    assert report.verdict, report.verdict_reason
    search = [lv for lv in report.levels if lv.mode == "search"]
    assert search and all(lv.requests == round(lv.offered_rps * 3) for lv in search)


def test_a_one_second_stall_shows_in_open_loop_p999(server):
    """Coordinated omission: a closed loop waits out a stall and records one slow request; the open loop keeps
    sending, so everything due during the stall is late, and p99.9 (nearest rank of 500) is at least the stall."""
    report = run_bench(target(server, "stall_once"), concurrency=(), request_rates=(100,), duration_s=5,
                       warmup_requests=0, progress=False, processes=1)
    (lv,) = report.levels
    assert lv.requests == 500 and lv.errors == 0
    assert lv.p999_ms >= 1000, lv
    assert lv.slow_requests >= 30, lv            # ~100 were due during the 1 s stall; the first ~half wait >= 400 ms
    assert lv.slow_causes == {"stall_once": lv.slow_requests}   # attributed to the model that queued them
    closed = run_bench(target(server, "stall_once"), concurrency=(1,), requests_per_level=500, warmup_requests=0,
                       progress=False, processes=1).levels[0]   # requests 501..1000: the stall at the 600th
    assert closed.max_ms >= 1000 and closed.slow_requests == 1, closed
