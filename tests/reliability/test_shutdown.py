"""Property 8: SIGTERM under load completes the requests in flight, fails readiness before the listeners
close, and exits within the exit timeout.

What tritonserver 2.51 does on SIGTERM (measured, and asserted below):
  * at once, HTTP connections opened after the signal are reset without an answer (a readiness probe on
    a fresh connection fails), and gRPC ServerReady answers UNAVAILABLE "Server exiting" once the HTTP
    side has drained;
  * HTTP connections that were open at the signal keep being served until they close or
    --exit-timeout-secs runs out; only then does it wait for in-flight inferences, unload the models
    (~3 s for python models) and close the gRPC listener;
  * gRPC requests sent after the drain get NOT_FOUND "has no available versions" at once;
  * if keep-alive clients still hold connections when the exit timeout runs out, everything still in
    flight is cut and tritonserver exits non-zero ("Exit timeout expired", at times with SIGSEGV).

So a client that stops sending when readiness fails (a load balancer) loses nothing; a client that
keeps a keep-alive connection busy loses the requests in flight at the cut, never one it sent before
the signal.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from .helpers import ServeProcess, processes_naming, wait_until, write_model

pytestmark = pytest.mark.integration

DELAY_S = 0.5            # per request, 2 instances: requests stay in flight for a while
ACCEPTED_MARGIN_S = 0.05  # a request sent this long before the signal has reached the server
BODY = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]})


@dataclass
class Timeline:
    t0: float = field(default_factory=time.monotonic)
    requests: list = field(default_factory=list)   # (protocol, sent, done, ok, detail)
    ready_failed: float | None = None              # first failed readiness probe on a fresh HTTP connection
    grpc_ready_failed: float | None = None         # first ServerReady that is not True
    grpc_closed: float | None = None               # first refused TCP connect to the gRPC port
    http_closed: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    draining: threading.Event = field(default_factory=threading.Event)  # readiness has failed

    def now(self) -> float:
        return time.monotonic() - self.t0


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


def _poller(tl: Timeline, http_port: int, grpc_url: str) -> None:
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(grpc_url)
    while not tl.stop.is_set():
        t = tl.now()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=1)
            conn.request("GET", "/v2/health/ready")
            ready = conn.getresponse().status == 200
            conn.close()
        except (OSError, http.client.HTTPException):
            ready = False
        if not ready and tl.ready_failed is None:
            tl.ready_failed = t
            tl.draining.set()
        try:
            grpc_ready = client.is_server_ready(client_timeout=1)
        except Exception:  # noqa: BLE001 - any failure is "not ready"
            grpc_ready = False
        if not grpc_ready and tl.grpc_ready_failed is None:
            tl.grpc_ready_failed = t
        if tl.grpc_closed is None and _refused(int(grpc_url.rsplit(":", 1)[1])):
            tl.grpc_closed = t
        if tl.http_closed is None and _refused(http_port):
            tl.http_closed = t
        time.sleep(0.01)
    client.close()


def _grpc_worker(tl: Timeline, url: str, polite: bool) -> None:
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(url)
    x = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
    x.set_data_from_numpy(np.array([[1.0, 2.0]], dtype=np.float32))
    while not tl.stop.is_set() and not (polite and tl.draining.is_set()):
        sent = tl.now()
        try:
            out = client.infer("slow", [x], client_timeout=30).as_numpy("OUTPUT0")
            tl.requests.append(("grpc", sent, tl.now(), out.tolist() == [[2.0, 3.0]], ""))
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, none is raised
            tl.requests.append(("grpc", sent, tl.now(), False, str(exc)[:120]))
            time.sleep(0.05)
    client.close()


def _http_worker(tl: Timeline, port: int, keep_alive: bool, polite: bool) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"} if keep_alive else {"Connection": "close"}
    while not tl.stop.is_set() and not (polite and tl.draining.is_set()):
        sent = tl.now()
        try:
            if not keep_alive:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/v2/models/slow/infer", body=BODY, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            ok = resp.status == 200 and json.loads(body)["outputs"][0]["data"] == [2.0, 3.0]
            tl.requests.append(("http", sent, tl.now(), ok, "" if ok else f"{resp.status} {body[:80]!r}"))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            tl.requests.append(("http", sent, tl.now(), False, repr(exc)[:120]))
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            time.sleep(0.05)
    conn.close()


def _run(proc: ServeProcess, *, keep_alive: bool, polite: bool, exit_limit_s: float):
    """Load, SIGTERM to `tritonkit serve` after 1.5 s, wait for its exit. -> (timeline, signal time, code, exit time)"""
    tl = Timeline()
    threads = [threading.Thread(target=_poller, args=(tl, proc.http_port, proc.grpc_url))]
    threads += [threading.Thread(target=_grpc_worker, args=(tl, proc.grpc_url, polite)) for _ in range(3)]
    threads += [threading.Thread(target=_http_worker, args=(tl, proc.http_port, keep_alive, polite)) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    signalled = tl.now()
    proc.proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(exit_limit_s + 30)
    finally:
        exited = tl.now()
        tl.stop.set()
        for t in threads:
            t.join(40)
    return tl, signalled, code, exited


def _summary(tl: Timeline, signalled: float, exited: float) -> dict:
    before = [r for r in tl.requests if r[1] <= signalled - ACCEPTED_MARGIN_S]
    closed = tl.grpc_closed if tl.grpc_closed is not None else exited
    after = [r for r in tl.requests if signalled - ACCEPTED_MARGIN_S < r[1] < closed]  # sent to a live server
    return {
        "before": len(before), "lost_before": [r for r in before if not r[3]],
        "in_flight_at_signal": sum(r[2] > signalled for r in before),
        "after": len(after), "failed_after": sum(not r[3] for r in after),
        "ready_fails_ms": None if tl.ready_failed is None else round((tl.ready_failed - signalled) * 1000),
        "grpc_ready_fails_ms": None if tl.grpc_ready_failed is None else round((tl.grpc_ready_failed - signalled) * 1000),
        "grpc_closed_ms": None if tl.grpc_closed is None else round((tl.grpc_closed - signalled) * 1000),
        "last_before_done_ms": round((max(r[2] for r in before) - signalled) * 1000),
        "exit_s": round(exited - signalled, 2),
        "failures_after": sorted({f"{r[0]}: {r[4][:50]}" for r in after if not r[3]}),
    }


@pytest.fixture
def slow_repo(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "slow", delay_s=DELAY_S, count=2)
    return repo


def test_sigterm_drains_in_flight_requests_and_fails_readiness_first(slow_repo, tmp_path, serve_process):
    """Prevents a stop (docker stop, a rolling update) dropping requests the server had accepted, closing
    its listeners while it still reports ready (a load balancer keeps sending into a closed port), or
    hanging past its exit timeout. Clients behave like a load balancer: they stop sending once readiness
    fails, and open a connection per HTTP request."""
    proc = serve_process(ServeProcess.cli, slow_repo, tmp_path)
    proc.wait_ready()
    tl, signalled, code, exited = _run(proc, keep_alive=False, polite=True, exit_limit_s=30)
    s = _summary(tl, signalled, exited)
    print(f"\nFIGURE shutdown (polite clients): {s}")
    assert code == 0, proc.stderr()
    assert s["before"] >= 6 and s["in_flight_at_signal"] >= 3, s  # the signal really arrived under load
    assert s["lost_before"] == [], s["lost_before"]
    assert s["ready_fails_ms"] is not None and s["ready_fails_ms"] < 1000, s
    assert s["grpc_closed_ms"] is not None and s["grpc_closed_ms"] > s["ready_fails_ms"], s
    assert s["last_before_done_ms"] < s["grpc_closed_ms"], "an accepted request finished after the listener closed?"
    assert s["exit_s"] < 30, s  # SERVER_EXIT_TIMEOUT_S, the CLI's default
    assert wait_until(lambda: not processes_naming(str(slow_repo)), 15)


def test_sigterm_with_busy_keepalive_clients_cuts_only_requests_sent_after_it(slow_repo, tmp_path, serve_process):
    """Prevents a stop outlasting its exit timeout because clients keep connections open, and pins what
    2.51 does then: requests sent before the signal all complete; keep-alive connections are served until
    the timeout, which cuts what is in flight and exits non-zero (serve() says why)."""
    exit_timeout = 3
    proc = serve_process(ServeProcess.script, slow_repo, tmp_path, exit_timeout_s=exit_timeout)
    proc.wait_ready()
    tl, signalled, code, exited = _run(proc, keep_alive=True, polite=False, exit_limit_s=exit_timeout + 10)
    s = _summary(tl, signalled, exited)
    print(f"\nFIGURE shutdown (keep-alive clients that keep sending, exit timeout {exit_timeout} s): "
          f"{ {k: v for k, v in s.items() if k != 'lost_before'} }, exit code {code}")
    assert s["before"] >= 6 and s["in_flight_at_signal"] >= 3, s
    assert s["lost_before"] == [], s["lost_before"]
    assert s["ready_fails_ms"] is not None and s["ready_fails_ms"] < 1000, s
    assert s["exit_s"] < exit_timeout + 10, s
    assert code == 1 and "--exit-timeout-secs=3 ran out" in proc.stderr(), (code, proc.stderr()[-2000:])
    assert wait_until(lambda: not processes_naming(str(slow_repo)), 15)
