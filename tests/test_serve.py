"""tritonkit/serve.py against the real tritonserver 2.51 bundled in nvidia-pytriton (no mocks of it).

Server start is ~2 s and a clean stop ~4 s here (Triton polls its unload once a second), so the tests
that only read from a server share one (module scope) and every lifecycle test owns its own.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import live_processes
from tritonkit.embedded_triton import STUB_NAME, find_embedded_triton
from tritonkit.errors import UserError
from tritonkit.serve import ADMIN_HEADER, EmbeddedServer, ServerOptions

PROJECT_ROOT = Path(__file__).resolve().parent.parent

ADD_ONE_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""
ADD_ONE_MODEL = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (x + 1).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""
BROKEN_MODEL = """\
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("boom: deliberately broken model")

    def execute(self, requests):
        return []
"""


def write_model(repo: Path, name: str, model_py: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(ADD_ONE_CONFIG.format(name=name))
    (repo / name / "1" / "model.py").write_text(model_py)


def free_ports(n: int = 3) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def options_for(repo: Path, **kw) -> ServerOptions:
    http, grpc, metrics = free_ports()
    return ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
                         exit_timeout_s=5, log_file=repo.parent / "tritonserver.log", **kw)


def triton_processes(repo: Path) -> list[str]:
    """tritonserver / python stub processes (not zombies) whose command line names `repo`, via /proc."""
    return [f"{pid}: {cmdline[:200]}" for pid, cmdline in live_processes()
            if str(repo) in cmdline and ("tritonserver" in cmdline or STUB_NAME in cmdline)]


def wait_until_gone(repo: Path, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := triton_processes(repo)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def http(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, method=method, headers=headers or {},
                                 data=b"" if method == "POST" else None)
    try:
        with opener.open(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def listening_addresses(port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Local addresses of LISTEN sockets on `port`, from /proc/net/tcp{,6} (IPv4-mapped -> IPv4)."""
    addrs = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            hex_addr, hex_port = cols[1].split(":")
            if cols[3] != "0A" or int(hex_port, 16) != port:
                continue
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(bytes.fromhex(hex_addr[i:i + 8])[::-1] for i in range(0, width, 8))
            ip = ipaddress.ip_address(raw)
            addrs.append(ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip)
    return addrs


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    """The real bundled server, its backend dir assembled in a test cache (not the user's ~/.cache)."""
    return find_embedded_triton(cache_root=tmp_path_factory.mktemp("xdg_cache") / "tritonkit")


@pytest.fixture(scope="module")
def add_one_server(tmp_path_factory, triton):
    repo = tmp_path_factory.mktemp("shared") / "repo"
    write_model(repo, "add_one", ADD_ONE_MODEL)
    with EmbeddedServer(options_for(repo), triton) as server:
        yield server


# --- options and pre-launch checks (no server starts) -----------------------------------------------

def test_options_reject_clashing_ports_and_unknown_apis(tmp_path):
    """Prevents: a server that dies at bind time on its own port clash, or a typo that leaves an API open."""
    with pytest.raises(UserError, match="must differ"):
        ServerOptions(tmp_path, http_port=9000, grpc_port=9000, metrics_port=9002)
    with pytest.raises(UserError, match="restricted_apis"):
        ServerOptions(tmp_path, restricted_apis=("model-repo",))
    with pytest.raises(UserError, match="IP address"):
        ServerOptions(tmp_path, address="localhost")


def test_missing_repository_is_a_user_error(tmp_path, triton):
    """Prevents: tritonserver starting on a typo'd path and failing later with an obscure log line."""
    missing = tmp_path / "no_such_repo"
    server = EmbeddedServer(options_for(missing), triton)
    with pytest.raises(UserError) as err:
        server.start()
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)
    assert server.pid is None
    a_file = tmp_path / "repo.txt"
    a_file.write_text("")
    with pytest.raises(UserError, match="not a directory"):
        EmbeddedServer(options_for(a_file), triton).start()


def test_port_in_use_names_the_port_and_starts_nothing(tmp_path, triton):
    """Prevents: launching a server that exits with 'Socket already in use' buried in its log (or one
    that half-starts), instead of telling the user which port, who holds it and which flag to change."""
    repo = tmp_path / "repo"
    write_model(repo, "add_one", ADD_ONE_MODEL)
    options = options_for(repo)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", options.grpc_port))
        squatter.listen()
        server = EmbeddedServer(options, triton)
        with pytest.raises(UserError) as err:
            server.start()
    message = str(err.value)
    assert f"grpc port {options.grpc_port}" in message and "--grpc-port" in message
    assert str(os.getpid()) in message  # who holds it: this test process
    assert server.pid is None and triton_processes(repo) == []


# --- a running server ---------------------------------------------------------------------------

@pytest.mark.integration
def test_infer_over_http_and_grpc(add_one_server):
    """Prevents: a server that reports ready but cannot run the model (wrong PATH/LD_LIBRARY_PATH for the
    stub, numpy not importable), or URLs in a form tritonclient cannot use."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x = np.array([[1.0, 2.5, -3.0]], dtype=np.float32)
    assert add_one_server.http_url == f"127.0.0.1:{add_one_server.options.http_port}"
    assert add_one_server.models == {"add_one": "READY"} and add_one_server.server_version == "2.51.0"

    client = httpclient.InferenceServerClient(add_one_server.http_url)
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("add_one", [inp]).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(out, x + 1)
    client.close()

    gclient = grpcclient.InferenceServerClient(add_one_server.grpc_url)
    ginp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    ginp.set_data_from_numpy(x)
    gout = gclient.infer("add_one", [ginp]).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(gout, x + 1)
    gclient.close()

    status, body = http("GET", f"http://{add_one_server.metrics_url}/metrics")
    assert status == 200 and 'nv_inference_request_success{model="add_one"' in body


@pytest.mark.integration
def test_listens_on_loopback_only(add_one_server):
    """Prevents: the embedded (pre-2025-fixes) server listening on 0.0.0.0 or ::, i.e. on the network."""
    o = add_one_server.options
    for port in (o.http_port, o.grpc_port, o.metrics_port):
        addrs = listening_addresses(port)
        assert addrs and all(a == ipaddress.ip_address("127.0.0.1") for a in addrs), (port, addrs)
    with socket.create_connection(("127.0.0.1", o.http_port), timeout=2):
        pass  # reachable on the bound address...
    for port in (o.http_port, o.grpc_port, o.metrics_port):
        with pytest.raises(ConnectionRefusedError):  # ...and not on another local address
            socket.create_connection(("127.0.0.2", port), timeout=2).close()


@pytest.mark.integration
def test_admin_apis_restricted_bench_apis_open(add_one_server):
    """Prevents: anyone on the host loading/unloading models, registering shared memory or changing log
    and trace settings without the admin header; and over-restricting what the bench step reads."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    base = f"http://{add_one_server.http_url}"
    for method, path in (("POST", "/v2/repository/index"), ("POST", "/v2/repository/models/add_one/unload"),
                         ("GET", "/v2/systemsharedmemory/status"), ("GET", "/v2/logging"),
                         ("GET", "/v2/trace/setting")):
        status, body = http(method, base + path)
        assert status >= 400 and "This API is restricted" in body, (path, status, body)
    status, body = http("POST", base + "/v2/repository/index", add_one_server.admin_headers)
    assert status == 200 and '"add_one"' in body

    grpc = grpcclient.InferenceServerClient(add_one_server.grpc_url)
    with pytest.raises(InferenceServerException, match="restricted"):
        grpc.get_model_repository_index()
    index = grpc.get_model_repository_index(headers=add_one_server.admin_headers)
    assert [m.name for m in index.models] == ["add_one"]
    assert grpc.get_inference_statistics("add_one").model_stats[0].name == "add_one"
    grpc.close()

    client = httpclient.InferenceServerClient(add_one_server.http_url)
    assert client.get_model_config("add_one")["max_batch_size"] == 8
    assert client.get_inference_statistics("add_one")["model_stats"][0]["name"] == "add_one"
    assert client.is_model_ready("add_one")  # still loaded: the unload above was refused
    client.close()
    assert ADMIN_HEADER in add_one_server.admin_headers
    assert f"triton-grpc-protocol-{ADMIN_HEADER}" in add_one_server.admin_headers


# --- lifecycle ----------------------------------------------------------------------------------

@pytest.mark.integration
def test_stop_leaves_no_processes(tmp_path, triton):
    """Prevents: orphaned tritonserver or python backend stub processes holding ports and memory."""
    repo = tmp_path / "repo"
    write_model(repo, "add_one", ADD_ONE_MODEL)
    server = EmbeddedServer(options_for(repo), triton)
    server.start()
    server.wait_ready(60)
    running = triton_processes(repo)
    assert any(STUB_NAME in p for p in running) and any("tritonserver" in p for p in running)
    assert server.stop() == 0
    assert triton_processes(repo) == []
    assert server.stop() == 0  # idempotent
    assert listening_addresses(server.options.http_port) == []


@pytest.mark.integration
def test_model_failing_to_load_fails_fast_with_log(tmp_path, triton):
    """Prevents: a server that comes up without one of its models (or hangs to the timeout), and an
    error that says 'not ready' without which model failed and why."""
    repo = tmp_path / "repo"
    write_model(repo, "add_one", ADD_ONE_MODEL)
    write_model(repo, "broken_model", BROKEN_MODEL)
    server = EmbeddedServer(options_for(repo), triton)
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        with server:
            pass
    message = str(err.value)
    assert "failed to load: broken_model" in message
    assert "boom: deliberately broken model" in message  # the reason, from the log
    assert "last " in message and str(server.log_path) in message
    assert "CudaDriverHelper" not in message.split("last ")[0]  # no-GPU noise is not offered as a cause
    assert time.monotonic() - started < 60  # exited on its own, not the 180 s ready timeout
    assert server.stop() == 1  # tritonserver's own exit code for "failed to load all models"
    assert triton_processes(repo) == []


@pytest.mark.integration
def test_without_fail_fast_serves_the_models_that_loaded(tmp_path, triton):
    """Prevents: fail_fast=False waiting forever for a model that will never be ready, or hiding it."""
    import tritonclient.http as httpclient

    repo = tmp_path / "repo"
    write_model(repo, "add_one", ADD_ONE_MODEL)
    write_model(repo, "broken_model", BROKEN_MODEL)
    options = options_for(repo, fail_fast=False, strict_model_config=True)  # also: complete configs load
    with EmbeddedServer(options, triton) as server:
        assert "--disable-auto-complete-config" in server.command()
        assert list(server.failed_models) == ["broken_model"]
        assert "boom" in server.failed_models["broken_model"]
        client = httpclient.InferenceServerClient(server.http_url)
        assert client.is_model_ready("add_one") and not client.is_model_ready("broken_model")
        assert not client.is_server_ready()  # strict readiness: health checks still see the failure
        client.close()
    assert triton_processes(repo) == []


SERVE_SCRIPT = textwrap.dedent("""\
    import sys
    from pathlib import Path
    from tritonkit.serve import ServerOptions, serve
    http, grpc, metrics = map(int, sys.argv[2:5])
    options = ServerOptions(Path(sys.argv[1]), http_port=http, grpc_port=grpc, metrics_port=metrics,
                            exit_timeout_s=5)
    sys.exit(serve(options, on_ready=lambda s: print("TRITON_PID", s.pid, flush=True)))
""")


@pytest.fixture
def launch_serve(tmp_path, triton):
    """Run serve() in a child Python; returns once on_ready ran (the ready line is printed before it).
    Whatever a failing test leaves running is SIGKILLed (the server then dies with its parent)."""
    procs: list[subprocess.Popen[str]] = []

    def launch() -> tuple[subprocess.Popen[str], list[str], Path, Path]:
        repo = tmp_path / "repo"
        write_model(repo, "add_one", ADD_ONE_MODEL)
        stderr = tmp_path / "serve.stderr"
        env = dict(os.environ, XDG_CACHE_HOME=str(triton.backend_dir.parents[3]))  # reuse the test cache
        with open(stderr, "w") as err:
            proc = subprocess.Popen([sys.executable, "-c", SERVE_SCRIPT, str(repo), *map(str, free_ports())],
                                    stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=PROJECT_ROOT)
        procs.append(proc)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("TRITON_PID"):
                return proc, lines, repo, stderr
        proc.wait()
        pytest.fail(f"serve() never got ready: {''.join(lines)}{stderr.read_text()}")

    yield launch
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


@pytest.mark.integration
def test_serve_stops_cleanly_on_sigterm(launch_serve):
    """Prevents: `tritonkit serve` ignoring SIGTERM (docker stop / CI kill), exiting non-zero, leaving the
    server behind, or not telling the user the embedded server is for development only."""
    proc, lines, repo, stderr = launch_serve()
    ready = [ln for ln in lines if "ready:" in ln]
    assert len(ready) == 1 and "HTTP http://127.0.0.1:" in ready[0] and "models: add_one" in ready[0]
    assert triton_processes(repo)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0
    assert triton_processes(repo) == []
    err = stderr.read_text()
    assert "development and CI only" in err and "CVE-2025" in err, err


@pytest.mark.integration
def test_server_dies_with_its_parent(launch_serve):
    """Prevents: an orphaned tritonserver (and its stubs) after the Python process is SIGKILLed or crashes,
    which would hold the ports and fail the next start."""
    proc, _, repo, _ = launch_serve()
    assert triton_processes(repo)
    proc.kill()  # no chance to run stop()
    proc.wait(timeout=10)
    assert wait_until_gone(repo, timeout_s=30) == [], "tritonserver outlived its parent"


@pytest.mark.integration
def test_stop_after_crash_reports_signal_and_cleans_up(tmp_path, triton):
    """Prevents: stop() hanging or raising on a server that already died, or hiding that it was killed."""
    repo = tmp_path / "repo"
    write_model(repo, "add_one", ADD_ONE_MODEL)
    server = EmbeddedServer(options_for(repo), triton)
    server.start()
    server.wait_ready(60)
    os.kill(server.pid, signal.SIGKILL)  # a crash: no graceful unload of the python stub
    assert server.stop() == -signal.SIGKILL
    assert triton_processes(repo) == []
    assert server.returncode == -signal.SIGKILL
