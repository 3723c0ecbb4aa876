"""Property 9: a crashed python backend stub is detected, never a silent black hole.

What tritonserver 2.51 does when a `triton_python_backend_stub` is SIGKILLed (measured here, asserted
below): the model stays READY (model and server readiness both answer 200), no new stub is started,
and every request to the model fails with HTTP 500 "Stub process '<instance>' is not healthy." A load
balancer polling readiness keeps sending traffic to it. `tritonkit serve` therefore watches the stubs
itself (`serve._Watchdog`): a model with fewer live stubs than at start for WATCHDOG_GRACE_S stops
serve() with exit code 2 and a message naming the model, so a supervisor restarts the server.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tritonkit.defaults import WATCHDOG_GRACE_S, WATCHDOG_INTERVAL_S, WATCHDOG_STOP_S

from .helpers import ServeProcess, processes_naming, raw_http, wait_until, write_model

pytestmark = pytest.mark.integration

REQUEST = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}).encode()


def test_killed_stub_stops_serve_with_the_model_name(tmp_path, serve_process):
    """Prevents a model whose stub died (OOM killer, segfault in model code) staying 'ready' while failing
    every request, with `tritonkit serve` running on as if all were well."""
    repo = tmp_path / "repo"
    write_model(repo, "victim")
    write_model(repo, "bystander")
    proc = serve_process(ServeProcess.cli, repo, tmp_path)
    proc.wait_ready()
    port = proc.http_port
    assert raw_http(port, "POST", "/v2/models/victim/infer", REQUEST)[0] == 200
    stubs = processes_naming(f"{repo}/victim/1/model.py")
    assert len(stubs) == 1, stubs

    os.kill(stubs[0], signal.SIGKILL)
    killed_at = time.monotonic()
    assert wait_until(lambda: not processes_naming(f"{repo}/victim/1/model.py"), 5)
    # 2.51 during the watchdog's grace period: still "ready", every request an error, nothing restarted.
    assert raw_http(port, "GET", "/v2/models/victim/ready")[0] == 200
    assert raw_http(port, "GET", "/v2/health/ready")[0] == 200
    status, body, _ = raw_http(port, "POST", "/v2/models/victim/infer", REQUEST)
    assert status == 500 and b"Stub process 'victim_0_0' is not healthy" in body, (status, body)
    assert raw_http(port, "POST", "/v2/models/bystander/infer", REQUEST)[0] == 200
    assert processes_naming(f"{repo}/victim/1/model.py") == [], "2.51 restarted the stub: revisit the watchdog"

    limit_s = WATCHDOG_GRACE_S + 2 * WATCHDOG_INTERVAL_S + WATCHDOG_STOP_S + 5  # detect, then a short stop
    code = proc.wait(limit_s + 30)
    detected_after = time.monotonic() - killed_at
    err = proc.stderr()
    assert code == 2, (code, err)
    assert "model victim stopped serving" in err and "python backend stub" in err, err
    assert "bystander stopped serving" not in err
    print(f"\nFIGURE stub crash: serve exited {code} {detected_after:.1f} s after the kill (limit {limit_s:g} s)")
    assert detected_after < limit_s, f"{detected_after:.1f} s: the stop waited out the exit timeout?"
    assert wait_until(lambda: not processes_naming(str(repo)), 15), "tritonserver or a stub outlived serve"
