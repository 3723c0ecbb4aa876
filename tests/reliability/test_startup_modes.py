"""Property 4: the startup mode is explicit. `tritonkit serve` fails fast by default (exit non-zero
when a model fails to load); `tritonkit serve --degraded` keeps serving the healthy models and reports
the failed one, in its output and as not ready.

tests/test_serve.py checks both modes on EmbeddedServer; these go through the CLI a user runs.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from tritonkit.defaults import WATCHDOG_GRACE_S, WATCHDOG_INTERVAL_S

from .helpers import BROKEN_MODEL, ServeProcess, processes_naming, raw_http, wait_until, write_model

pytestmark = pytest.mark.integration

GOOD_REQUEST = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2],
                                       "data": [1.0, 2.0]}]}).encode()


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "healthy")
    write_model(repo, "broken_model", model_py=BROKEN_MODEL)
    return repo


def test_default_is_fail_fast_with_the_model_and_reason(repo, tmp_path, serve_process):
    """Prevents `tritonkit serve` coming up without one of its models (a partial deployment that passes a
    liveness probe), hanging until the ready timeout, or failing without saying which model and why."""
    started = time.monotonic()
    proc = serve_process(ServeProcess.cli, repo, tmp_path)
    code = proc.wait(90)
    err = proc.stderr()
    assert code == 2, (code, err)
    assert time.monotonic() - started < 60, "waited for the ready timeout instead of failing fast"
    assert "failed to load: broken_model" in err and "boom: deliberately broken model" in err, err
    assert not any(" ready: " in line for line in proc.stdout), proc.stdout
    assert wait_until(lambda: not processes_naming(str(repo)), 15), "tritonserver or a stub outlived the failure"


def test_degraded_serves_the_healthy_model_and_reports_the_failed_one(repo, tmp_path, serve_process):
    """Prevents --degraded hiding a failed model (no warning, reported ready), refusing to serve the healthy
    one, or the stub watchdog later mistaking the model that never loaded for one that died."""
    proc = serve_process(ServeProcess.cli, repo, tmp_path, "--degraded")
    ready = proc.wait_ready()
    assert "models: broken_model, healthy" in ready, ready
    assert wait_until(lambda: "WARNING: model broken_model failed to load" in proc.stderr(), 5), proc.stderr()
    port = proc.http_port
    assert raw_http(port, "GET", "/v2/models/healthy/ready")[0] == 200
    assert raw_http(port, "GET", "/v2/models/broken_model/ready")[0] == 400
    assert raw_http(port, "GET", "/v2/health/ready")[0] == 400, "strict readiness: the server is not all there"
    assert raw_http(port, "GET", "/v2/health/live")[0] == 200
    # Long enough for the watchdog to have acted on the failed model if it (wrongly) watched it.
    deadline = time.monotonic() + WATCHDOG_GRACE_S + 2 * WATCHDOG_INTERVAL_S
    served = 0
    while time.monotonic() < deadline:
        status, body, _ = raw_http(port, "POST", "/v2/models/healthy/infer", GOOD_REQUEST)
        assert status == 200 and json.loads(body)["outputs"][0]["data"] == [2.0, 3.0], (status, body)
        served += 1
        time.sleep(0.2)
    assert proc.proc.poll() is None, f"serve exited while degraded:\n{proc.stderr()}"
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(40) == 0, proc.stderr()
    assert served >= 10
    assert wait_until(lambda: not processes_naming(str(repo)), 15), "tritonserver or a stub outlived the stop"
