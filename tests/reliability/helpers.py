"""What the reliability tests share: tiny python models, a `tritonkit serve` child process, raw HTTP,
/proc readers, and benchmarks/soak.py (its open-loop client and RSS sampler) loaded as a module.

All traffic goes to 127.0.0.1; every wait here is bounded.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_ports, live_processes
from tests.test_serve import BROKEN_MODEL  # noqa: F401 - re-exported for the reliability tests

ROOT = Path(__file__).resolve().parents[2]

# A python model that adds one, after sleeping `delay_s` per execute() (a stand-in for compute whose
# duration the test chooses, so capacity is known and costs no CPU).
SLEEP_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: {count} }} ]
parameters: {{ key: "delay_s" value: {{ string_value: "{delay_s}" }} }}
{extra}
"""
SLEEP_MODEL = """\
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.delay_s = float(params.get("delay_s", {}).get("string_value", "0"))

    def execute(self, requests):
        time.sleep(self.delay_s)
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", (x + 1).astype(np.float32))]))
        return responses
"""


def write_model(repo: Path, name: str, *, delay_s: float = 0.0, max_batch_size: int = 8, count: int = 1,
                extra: str = "", model_py: str = SLEEP_MODEL) -> Path:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(SLEEP_CONFIG.format(
        name=name, max_batch_size=max_batch_size, count=count, delay_s=delay_s, extra=extra))
    (repo / name / "1" / "model.py").write_text(model_py)
    return repo / name


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    key = f"tritonkit_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


def load_soak():
    return load_benchmark("soak")


# --- raw HTTP ------------------------------------------------------------------------------------

def raw_http(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             timeout: float = 30.0) -> tuple[int | str, bytes, float]:
    """One request on a fresh connection: (status or exception name, body, seconds). Never raises."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), time.monotonic() - started
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__, b"", time.monotonic() - started
    finally:
        conn.close()


# --- /proc ---------------------------------------------------------------------------------------

def processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains `text` (e.g. a test's repository path)."""
    return [pid for pid, cmdline in live_processes() if text in cmdline]


def wait_until(predicate, timeout_s: float, interval_s: float = 0.1):
    """Poll `predicate` until it returns something truthy (returned) or `timeout_s` passes (None)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    return None


# --- `tritonkit serve` in a child process -----------------------------------------------------------

class ServeProcess:
    """`python -m tritonkit.cli serve ...` (or a script calling serve()) with stdout read by a thread.

    `ports` = (http, grpc, metrics). The child's tritonserver dies with it (PDEATHSIG), so a kill at
    teardown leaves nothing behind.
    """

    def __init__(self, argv: list[str], ports: tuple[int, int, int], stderr_path: Path):
        self.ports = ports
        self.stderr_path = stderr_path
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        with open(stderr_path, "w") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def cli(cls, repo: Path, tmp_path: Path, *extra: str) -> ServeProcess:
        http, grpc, metrics = free_ports(3)
        argv = [sys.executable, "-m", "tritonkit.cli", "serve", "--repo", str(repo), "--http-port", str(http),
                "--grpc-port", str(grpc), "--metrics-port", str(metrics), *extra]
        return cls(argv, (http, grpc, metrics), tmp_path / "serve.stderr")

    @classmethod
    def script(cls, repo: Path, tmp_path: Path, **options) -> ServeProcess:
        """serve(ServerOptions(repo, **options)) in a child: the CLI's code path with options the CLI
        does not expose (e.g. exit_timeout_s)."""
        http, grpc, metrics = free_ports(3)
        code = ("import sys\nfrom pathlib import Path\n"
                "from tritonkit.serve import ServerOptions, serve\n"
                f"options = ServerOptions(Path({str(repo)!r}), http_port={http}, grpc_port={grpc}, "
                f"metrics_port={metrics}, **{options!r})\n"
                "sys.exit(serve(options))\n")
        return cls([sys.executable, "-c", code], (http, grpc, metrics), tmp_path / "serve.stderr")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.stdout.append(line)
            self.lines.put(line)
        self.lines.put(None)

    @property
    def http_port(self) -> int:
        return self.ports[0]

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports[1]}"

    def wait_ready(self, timeout_s: float = 90.0) -> str:
        """The 'ready:' line; fails the test if the process exits or time runs out first."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"tritonkit serve exited ({self.proc.wait()}) before ready:\n{self.stderr()}")
            if " ready: " in line:
                return line
        pytest.fail(f"tritonkit serve not ready after {timeout_s} s:\n{self.stderr()}")

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout_s)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def tritonserver_pid(self) -> int | None:
        """The tritonserver child of this process (its process group leader)."""
        for pid in processes_naming(f"--http-port={self.http_port}"):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "tritonserver":
                    return pid
            except OSError:
                continue
        return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._reader.join(5)


@pytest.fixture
def serve_process():
    """Factory for ServeProcess; whatever a test leaves running is killed at teardown."""
    started: list[ServeProcess] = []

    def make(factory, *args, **kwargs) -> ServeProcess:
        proc = factory(*args, **kwargs)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.kill()
