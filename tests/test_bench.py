"""The measure step (tritonkit.load, .stats, .report) against a real embedded tritonserver: no
mocks, real requests, real statistics.

One server (module scope) serves three tiny python-backend models written here by hand:
- echo_sleep: FP32 [-1] -> same tensor, sleeps 2 ms per execution, dynamic batching on;
- echo_ens:   an ensemble around echo_sleep (server breakdown must show both);
- text_check: BYTES [1] -> INT64 length; appends every text it receives to a log file and answers
  an error response for any text containing "FAIL" (real server-side failures).
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tritonkit.errors import UserError
from tritonkit.load import BenchReport, BenchTarget, TensorSpec, run_bench
from tritonkit.report import print_report, write_report
from tritonkit.stats import LevelResult, verdict

SLEEP_MS = 2.0

ECHO_CONFIG = """
name: "echo_sleep"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

ECHO_MODEL = f"""
import time
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        time.sleep({SLEEP_MS / 1000})  # once per execution: every request waits >= {SLEEP_MS} ms
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
        return responses
"""

ENSEMBLE_CONFIG = """
name: "echo_ens"
platform: "ensemble"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
ensemble_scheduling { step [ { model_name: "echo_sleep" model_version: -1
  input_map { key: "INPUT0" value: "X" } output_map { key: "OUTPUT0" value: "Y" } } ] }
"""

TEXT_CONFIG = """
name: "text_check"
backend: "python"
max_batch_size: 4
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "LEN" data_type: TYPE_INT64 dims: [ 1 ] } ]
parameters { key: "log" value: { string_value: "%s" } }
"""

TEXT_MODEL = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.log = json.loads(args["model_config"])["parameters"]["log"]["string_value"]

    def execute(self, requests):
        responses = []
        for request in requests:
            texts = [t.decode("utf-8") for t in
                     pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)]
            with open(self.log, "a", encoding="utf-8") as f:
                f.writelines(t + "\\n" for t in texts)
            if any("FAIL" in t for t in texts):
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("text contains FAIL")))
                continue
            lengths = np.array([[len(t)] for t in texts], dtype=np.int64)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("LEN", lengths)]))
        return responses
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_model(repo: Path, name: str, config: str, model_py: str | None) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)
    if model_py is not None:
        (repo / name / "1" / "model.py").write_text(model_py)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tritonkit.serve import EmbeddedServer, ServerOptions

    root = tmp_path_factory.mktemp("bench")
    repo = root / "repo"
    text_log = root / "texts.log"
    _write_model(repo, "echo_sleep", ECHO_CONFIG, ECHO_MODEL)
    _write_model(repo, "echo_ens", ENSEMBLE_CONFIG, None)
    _write_model(repo, "text_check", TEXT_CONFIG % text_log, TEXT_MODEL)
    ports = {_free_port() for _ in range(3)}
    assert len(ports) == 3
    http, grpc, metrics = ports
    with EmbeddedServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc,
                                      metrics_port=metrics)) as srv:
        srv.text_log = text_log
        yield srv


def _echo(server, protocol: str, model: str = "echo_sleep", **kw) -> BenchTarget:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    name, out = ("INPUT0", "OUTPUT0") if model == "echo_sleep" else ("X", "Y")
    return BenchTarget(model=model, inputs=(TensorSpec(name, "FP32", (1, 16)),), outputs=(out,),
                       url=url, protocol=protocol, **kw)


def _inference_count(server, model: str) -> int:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        stats = c.get_inference_statistics(model_name=model, as_json=True)
    return sum(int(m.get("inference_count", 0)) for m in stats["model_stats"])


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sweep_measures_real_latencies(server, protocol):
    """Prevents a bench that reports made-up or client-only numbers: latencies must include the
    model's real 2 ms, percentiles must be ordered, every request must succeed over both transports,
    and the server breakdown must come from Triton's statistics for the benchmarked model."""
    report = run_bench(_echo(server, protocol), concurrency=(1, 2), requests_per_level=30,
                       warmup_requests=5, progress=False)
    assert [lv.concurrency for lv in report.levels] == [1, 2]
    assert report.server_version == "2.51.0"
    assert report.verdict, report.verdict_reason
    for lv in report.levels:
        assert lv.requests == 30 and lv.errors == 0
        assert lv.p50_ms >= SLEEP_MS, lv
        assert lv.p50_ms <= lv.p90_ms <= lv.p99_ms <= lv.max_ms
        assert lv.throughput_rps > 0 and lv.items_per_s == pytest.approx(lv.throughput_rps)
        stats = lv.server["echo_sleep"]
        assert stats["requests"] == 30, stats
        assert stats["compute_infer_us"] >= SLEEP_MS * 1e3 * 0.9, stats
        assert stats["executions"] >= 1 and stats["avg_batch_size"] >= 1.0
        # the server's own time cannot exceed what the client waited
        assert stats["request_us"] / 1e3 <= lv.max_ms


@pytest.mark.integration
def test_ensemble_breakdown_includes_composing_models(server):
    """Prevents a server breakdown that shows only the ensemble: its composing model (where the
    time is actually spent) must appear with its own compute and batching numbers; items/s must
    count the batch of each request."""
    target = BenchTarget(model="echo_ens", inputs=(TensorSpec("X", "FP32", (2, 8)),),
                         outputs=("Y",), url=server.grpc_url)
    report = run_bench(target, concurrency=(2,), requests_per_level=20, warmup_requests=0,
                       progress=False)
    (lv,) = report.levels
    assert lv.errors == 0
    assert set(lv.server) == {"echo_ens", "echo_sleep"}
    assert lv.server["echo_sleep"]["compute_infer_us"] >= SLEEP_MS * 1e3 * 0.9
    assert lv.server["echo_ens"]["requests"] == lv.server["echo_sleep"]["requests"] == 20
    assert lv.items_per_s == pytest.approx(2 * lv.throughput_rps)


@pytest.mark.integration
def test_budget_verdict_names_the_level(server):
    """Prevents a verdict that passes a blown budget (or fails a generous one), and a reason that
    does not say which level broke it."""
    target = _echo(server, "grpc")
    tight = run_bench(target, concurrency=(1, 2), requests_per_level=20, warmup_requests=2,
                      budget_p99_ms=0.5, progress=False)
    assert not tight.verdict
    worst = max(tight.levels, key=lambda lv: lv.p99_ms)
    assert f"at concurrency {worst.concurrency} > budget 0.5 ms" in tight.verdict_reason
    assert tight.verdict_reason.startswith("p99 ")

    loose = run_bench(target, concurrency=(1, 2), requests_per_level=20, warmup_requests=2,
                      budget_p99_ms=10_000, progress=False)
    assert loose.verdict, loose.verdict_reason
    assert "<= budget 10000 ms" in loose.verdict_reason


@pytest.mark.integration
def test_request_timeout_bounds_a_level(server):
    """Prevents a level that waits forever on a slow server: the per-request client timeout cuts
    each request short, and timed-out requests count as errors that fail the verdict."""
    report = run_bench(_echo(server, "grpc"), concurrency=(2,), requests_per_level=6,
                       warmup_requests=0, progress=False, request_timeout_s=0.0005)
    (lv,) = report.levels
    assert lv.errors == lv.requests == 6
    assert lv.error_samples[0].startswith("DEADLINE_EXCEEDED") and lv.errors_by_kind == {"DEADLINE_EXCEEDED": 6}
    assert not report.verdict and "6 of 6 requests failed at concurrency 2" in report.verdict_reason
    # the abandoned requests still run on the server: let them drain before the next test counts
    deadline, count = time.monotonic() + 5, -1
    while time.monotonic() < deadline and count != (count := _inference_count(server, "echo_sleep")):
        time.sleep(0.05)


def level(c, errors, p99):
    """A measured level written by hand, for what needs figures but no server."""
    return LevelResult(concurrency=c, requests=10, errors=errors, seconds=1.0,
                       throughput_rps=10 - errors, items_per_s=10 - errors, p50_ms=1.0,
                       p90_ms=1.0, p99_ms=p99, mean_ms=1.0, max_ms=p99, server={},
                       error_samples=("boom",) if errors else ())


def test_verdict_errors_fail_even_without_budget():
    """Prevents a run with failed requests from passing because latency looked fine."""
    ok, reason = verdict((level(1, 0, 2.0), level(4, 3, 3.0)), None)
    assert not ok and "3 of 10 requests failed at concurrency 4: boom" in reason
    ok, reason = verdict((level(1, 0, 2.0), level(4, 0, 62.14)), 50)
    assert not ok and reason.startswith("p99 62.1 ms at concurrency 4 > budget 50 ms")
    ok, _ = verdict((level(1, 0, 2.0),), None)
    assert ok


@pytest.mark.integration
def test_write_report_files(server, tmp_path, capsys):
    """Prevents unreadable artifacts: the JSON must round-trip to the same report, the txt must be
    a readable table with the verdict, and the PNG must be a real, non-trivial image. Also prevents
    a silent run when stdout is not a terminal (CI logs): one line per level is still printed."""
    report = run_bench(_echo(server, "http"), concurrency=(1, 2), requests_per_level=20,
                       warmup_requests=2, budget_p99_ms=1_000, progress=True)
    log = capsys.readouterr().err  # not a terminal: no bar, one line per level
    assert "concurrency   1: 20 requests, 0 errors" in log and "concurrency   2:" in log
    paths = write_report(report, tmp_path / "out", stem="echo")
    assert set(paths) == {"json", "txt", "png"} and all(p.is_file() for p in paths.values())

    data = json.loads(paths["json"].read_text())
    assert data == report.to_json()
    assert BenchReport.from_json(data) == report

    txt = paths["txt"].read_text()
    assert "p99" in txt and "echo_sleep" in txt and "PASSED" in txt
    for lv in report.levels:
        assert f"{lv.p99_ms:.2f}" in txt

    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # IHDR
    assert width >= 800 and height >= 400 and len(png) > 20_000

    print_report(report)
    out = capsys.readouterr().out
    assert "PASSED" in out and "Client side" in out and "Server side" in out


# A core install: matplotlib (the `bench` extra) cannot be imported.
CORE_INSTALL_WRITE = """
import sys
sys.modules["matplotlib"] = None
import json
from pathlib import Path
from tritonkit.errors import UserError
from tritonkit.load import BenchReport
from tritonkit.report import plot_report, write_report

report = BenchReport.from_json(json.loads(Path(sys.argv[1]).read_text()))
print(json.dumps(sorted(write_report(report, Path(sys.argv[2]), stem="core"))))
try:
    plot_report(report, Path(sys.argv[2]) / "direct.png")
except UserError as exc:
    print(exc.fix)
"""


def test_report_without_matplotlib_skips_only_the_plot(tmp_path):
    """Prevents `tritonkit bench` dying with a traceback on a core install (matplotlib is the
    optional `tritonkit[bench]` extra): the JSON and text reports are still written, the PNG is
    skipped with one line naming the extra, and a direct plot request is a UserError naming it."""
    target = BenchTarget(model="m", inputs=(TensorSpec("X", "FP32", (1, 4)),), outputs=(),
                         url="127.0.0.1:1")
    report = BenchReport(target=target, levels=(level(1, 0, 2.0), level(4, 0, 3.0)),
                         budget_p99_ms=None, verdict=True, verdict_reason="fine",
                         started_at="2026-01-01T00:00:00+00:00", server_version="2.51.0")
    given = tmp_path / "given.json"
    given.write_text(json.dumps(report.to_json()))
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-c", CORE_INSTALL_WRITE, str(given), str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert run.stdout.splitlines() == ['["json", "txt"]', "pip install 'tritonkit[bench]'"]
    (line,) = run.stderr.splitlines()
    assert "core.png skipped" in line and "tritonkit[bench]" in line
    assert sorted(p.name for p in out.iterdir()) == ["core.json", "core.txt"]
    assert BenchReport.from_json(json.loads((out / "core.json").read_text())) == report
    assert "PASSED: fine" in (out / "core.txt").read_text()


def test_request_data_follows_the_dtype_table(monkeypatch):
    """Prevents a second datatype table in the bench drifting from tritonkit.dtypes: every
    datatype with a NumPy array is sent as exactly that dtype with seeded data of its kind, BYTES
    as the given texts, BF16 (no NumPy array) is refused with the list, and a datatype the table
    drops is refused too."""
    import numpy as np

    from tritonkit.dtypes import DTYPES
    from tritonkit.load import _request_arrays

    numeric = [name for name, d in DTYPES.items() if d.numpy]
    assert {"BOOL", "UINT8", "INT64", "FP16", "FP32"} <= set(numeric)
    texts = ("a", "b", "c")
    target = BenchTarget(model="m", url="127.0.0.1:1", outputs=(), texts=texts,
                         inputs=(*(TensorSpec(n, n, (2, 3)) for n in numeric),
                                 TensorSpec("TEXT", "BYTES", (2, 1))))
    variants = _request_arrays(target)
    for name in numeric:
        arrays = [v[name] for v in variants]
        assert {(a.dtype, a.shape) for a in arrays} == {(np.dtype(DTYPES[name].numpy), (2, 3))}
        assert len({a.tobytes() for a in arrays}) > 1, f"{name}: one constant tensor"
        values = np.concatenate([a.ravel() for a in arrays]).astype(np.float64)
        if arrays[0].dtype.kind in "biu":
            assert values.min() >= 0 and values.max() < 100, name
        assert np.isfinite(values).all(), name
    assert {x for v in variants for x in v["TEXT"].ravel()} == {t.encode() for t in texts}
    again = _request_arrays(target)  # seeded: two runs send the same bytes
    assert all(a[n].tobytes() == b[n].tobytes() for a, b in zip(variants, again) for n in numeric)

    with pytest.raises(UserError, match="unsupported datatype") as err:
        TensorSpec("X", "BF16", (1, 4))
    assert "BF16" not in err.value.expected and "BYTES" in err.value.expected
    monkeypatch.delitem(DTYPES, "UINT16")
    with pytest.raises(UserError, match="unsupported datatype"):
        TensorSpec("X", "UINT16", (1, 4))


@pytest.mark.integration
@pytest.mark.parametrize("spec, message", [
    (TensorSpec("WRONG", "FP32", (1, 16)), "input 'WRONG' is not an input of the model"),
    (TensorSpec("INPUT0", "INT64", (1, 16)), "input 'INPUT0' has the wrong datatype"),
    (TensorSpec("INPUT0", "FP32", (1, 4, 4)), "input 'INPUT0' has the wrong shape"),
    (TensorSpec("INPUT0", "FP32", (9, 16)), "batch size exceeds the model's max_batch_size"),
])
def test_input_mismatch_is_user_error_before_load(server, spec, message):
    """Prevents a sweep of hundreds of 400 errors (or a traceback) when the target does not match
    the model: the mismatch is reported up front, naming the input with got vs expected, and no
    request reaches the model."""
    before = _inference_count(server, "echo_sleep")
    target = BenchTarget(model="echo_sleep", inputs=(spec,), outputs=("OUTPUT0",),
                         url=server.grpc_url)
    with pytest.raises(UserError, match="got .*expected") as err:
        run_bench(target, concurrency=(1,), requests_per_level=10, progress=False)
    assert message in str(err.value)
    assert _inference_count(server, "echo_sleep") == before


@pytest.mark.integration
def test_unknown_model_and_output_are_user_errors(server):
    """Prevents a typo in the model or output name from surfacing as a raw client exception."""
    missing = BenchTarget(model="nope", inputs=(TensorSpec("INPUT0", "FP32", (1, 4)),),
                          outputs=(), url=server.http_url, protocol="http")
    with pytest.raises(UserError, match="model is not loaded or not ready"):
        run_bench(missing, concurrency=(1,), requests_per_level=1, progress=False)
    target = BenchTarget(model="echo_sleep", inputs=(TensorSpec("INPUT0", "FP32", (1, 4)),),
                         outputs=("OUT",), url=server.grpc_url)
    with pytest.raises(UserError, match="output 'OUT' is not an output"):
        run_bench(target, concurrency=(1,), requests_per_level=1, progress=False)


@pytest.mark.integration
def test_restricted_statistics_api_is_user_error(tmp_path):
    """Prevents a bench that silently reports an empty server breakdown (or crashes mid-sweep)
    when the server restricts its statistics API: it is refused up front with the fix."""
    from tritonkit.serve import DEFAULT_RESTRICTED_APIS, EmbeddedServer, ServerOptions

    repo = tmp_path / "repo"
    _write_model(repo, "echo_sleep", ECHO_CONFIG, ECHO_MODEL)
    http, grpc, metrics = {_free_port() for _ in range(3)}
    options = ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
                            restricted_apis=(*DEFAULT_RESTRICTED_APIS, "statistics"))
    with EmbeddedServer(options) as srv:
        for protocol, url in (("grpc", srv.grpc_url), ("http", srv.http_url)):
            target = BenchTarget(model="echo_sleep", inputs=(TensorSpec("INPUT0", "FP32", (1, 4)),),
                                 outputs=("OUTPUT0",), url=url, protocol=protocol)
            with pytest.raises(UserError, match="statistics API is not reachable") as err:
                run_bench(target, concurrency=(1,), requests_per_level=5, progress=False)
            assert "restricted" in str(err.value)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unreachable_server_is_user_error(protocol):
    """Prevents a connection traceback (or a hang) when no server listens: the message names the
    URL and tells the user to start one."""
    url = f"127.0.0.1:{_free_port()}"
    target = BenchTarget(model="m", inputs=(TensorSpec("X", "FP32", (1, 4)),), outputs=(),
                         url=url, protocol=protocol)
    with pytest.raises(UserError) as err:
        run_bench(target, concurrency=(1,), requests_per_level=1, progress=False)
    assert url in str(err.value) and "tritonkit serve" in str(err.value)


def test_target_validates_itself():
    """Prevents a bad protocol, a URL with a scheme or a symbolic shape from reaching the clients."""
    x = (TensorSpec("X", "FP32", (1, 4)),)
    with pytest.raises(UserError, match="unknown protocol"):
        BenchTarget(model="m", inputs=x, outputs=(), url="127.0.0.1:1", protocol="tcp")
    with pytest.raises(UserError, match="without a scheme"):
        BenchTarget(model="m", inputs=x, outputs=(), url="http://127.0.0.1:8000", protocol="http")
    with pytest.raises(UserError, match="shape must be concrete"):
        TensorSpec("X", "FP32", (-1, 4))
    with pytest.raises(UserError, match="unsupported datatype"):
        TensorSpec("X", "FP8", (1, 4))


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bytes_input_cycles_texts_and_counts_errors(server, protocol):
    """Prevents BYTES inputs from being sent as garbage or as one repeated string: every given
    sentence must reach the model; and prevents server-side failures from being dropped: requests
    the model rejects are errors that fail the verdict."""
    url = server.grpc_url if protocol == "grpc" else server.http_url
    texts = ("Triton batches requests.", "Short.", "A longer sentence about tail latency.",
             "Ünïcode survives the wire.", "Five.")
    server.text_log.write_text("")
    target = BenchTarget(model="text_check", inputs=(TensorSpec("TEXT", "BYTES", (2, 1)),),
                         outputs=("LEN",), url=url, protocol=protocol, texts=texts)
    report = run_bench(target, concurrency=(1, 2), requests_per_level=10, warmup_requests=0,
                       progress=False)
    assert report.verdict, report.verdict_reason
    assert all(lv.errors == 0 and lv.p50_ms > 0 for lv in report.levels)
    seen = server.text_log.read_text(encoding="utf-8").splitlines()
    assert len(seen) == 2 * 10 * 2  # 2 texts per request, 10 requests, 2 levels
    assert set(seen) == set(texts)

    bad = BenchTarget(model="text_check", inputs=(TensorSpec("TEXT", "BYTES", (1, 1)),),
                      outputs=("LEN",), url=url, protocol=protocol, texts=("fine.", "FAIL here."))
    failing = run_bench(bad, concurrency=(2,), requests_per_level=10, warmup_requests=0,
                        budget_p99_ms=10_000, progress=False)
    (lv,) = failing.levels
    assert lv.requests == 10 and lv.errors == 5
    # Triton 2.51's python backend reports an error *response* as a successful request in the
    # statistics API, so only the client-side count can see these failures: it is authoritative.
    server_side = lv.server["text_check"]
    assert server_side["requests"] + server_side["failures"] == 10, lv.server
    assert not failing.verdict
    assert "5 of 10 requests failed at concurrency 2" in failing.verdict_reason
    assert "text contains FAIL" in failing.verdict_reason
