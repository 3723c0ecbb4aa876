"""Shared fixtures: the example spec rendered and built once per session (the export takes a while)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tritonkit import defaults
from tritonkit.process import free_ports  # noqa: F401  (tests import it from here)


ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path = ROOT, prefix: tuple[str, ...] = (), timeout: float = 600) -> subprocess.CompletedProcess:
    """`tritonkit ARGS` as a user runs it (a new process; `prefix` e.g. ("taskset", "-c", "0"))."""
    return subprocess.run([*prefix, sys.executable, "-m", "tritonkit.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def bench_example(repo: Path, grpc_port: int | str, model: str, counted: str, reports: Path,
                  requests: int = 200) -> dict:
    """`tritonkit bench` at concurrency 1 and 4 against a running server: every request is answered and the
    server counted `counted`'s executions (the p99 verdict is a timing figure: exit 1 on a loaded machine is
    still a measurement). The JSON report."""
    import json
    r = cli("bench", "--repo", str(repo), "--grpc-port", str(grpc_port), "--concurrency", "1,4",
            "--requests", str(requests), "--no-progress", "--reports", str(reports))
    assert r.returncode in (0, 1), r.stderr
    report = json.loads((reports / f"bench-{model}-grpc.json").read_text())
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 4]
    for level in report["levels"]:
        assert level["errors"] == 0 and level["requests"] == requests
        assert level["server"][counted]["requests"] > 0
    return report


def opaque_gemms_module():
    """templates/python/opaque_gemms.py as model.py loads it: a module from the file beside it."""
    import importlib.util

    from tritonkit import defaults
    spec = importlib.util.spec_from_file_location("opaque_gemms", defaults.TEMPLATES_DIR / "python" / "opaque_gemms.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compile_recording_ops(module):
    """(torch.compile(module, dynamic) whose backend records every op of the graph it is handed, that set)."""
    import torch
    from torch._dynamo.backends.common import aot_autograd
    ops: set[str] = set()

    def record(gm, _example_inputs):
        ops.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm
    torch._dynamo.reset()
    return torch.compile(module, backend=aot_autograd(fw_compiler=record), dynamic=True), ops


def infer_texts_at_once(url: str, model: str, texts, output: str, timeout_s: float = 120):
    """One single-text gRPC request per text, all in flight together (the batcher groups texts of different
    lengths); the outputs stacked in the texts' order. Fails on any error or missing answer."""
    import time

    import numpy as np
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(url)
    results = {}

    def done(i):
        return lambda result, error: results.__setitem__(i, error or result.as_numpy(output))
    for i, text in enumerate(texts):
        tensor = grpcclient.InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
        client.async_infer(model, [tensor], callback=done(i))
    deadline = time.monotonic() + timeout_s
    while len(results) < len(texts) and time.monotonic() < deadline:
        time.sleep(0.05)
    errors = [str(r) for r in results.values() if not isinstance(r, np.ndarray)]
    assert len(results) == len(texts) and not errors, (len(results), errors)
    return np.concatenate([results[i] for i in range(len(texts))])


def live_processes():
    """(pid, command line) of every live (non-zombie) process except this one, via /proc."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            yield int(proc.name), cmdline


@pytest.fixture(scope="session")
def example_plan():
    from tritonkit.hardware import declared
    from tritonkit.policy import plan
    from tritonkit.servers import SERVERS
    from tritonkit.spec import load_spec
    # FP32 on any CI host: the served-vs-sentence-transformers tests hold it to tolerance.fp32; the INT8 path
    # the example spec gets on a CPU with AVX2/VNNI/AMX has its own tests (tests/test_int8.py).
    return plan(load_spec(defaults.DEFAULT_SPEC), declared("none", cpu_features=()), SERVERS["embedded"])


@pytest.fixture(scope="session")
def built_repo(tmp_path_factory, example_plan):
    """The example spec rendered for the embedded server on CPU and built for real (MiniLM -> ONNX)."""
    from tritonkit.build import build
    from tritonkit.render import write_repository
    repo = tmp_path_factory.mktemp("built") / "model_repository"
    write_repository(example_plan, repo)
    results = build(repo, progress=False)
    assert {r.status for r in results} == {"built"}, [r.summary() for r in results]
    return repo


@pytest.fixture(scope="session")
def minilm_server(built_repo, tmp_path_factory):
    """A real embedded tritonserver serving the built example repository on free loopback ports."""
    from tritonkit.serve import EmbeddedServer, ServerOptions
    http, grpc, metrics = free_ports(3)
    log = tmp_path_factory.mktemp("server") / "tritonserver.log"
    with EmbeddedServer(ServerOptions(repository=built_repo, http_port=http, grpc_port=grpc,
                                      metrics_port=metrics, log_file=log)) as server:
        yield server
