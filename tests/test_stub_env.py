"""The python backend stub's environment: chosen by --stub-python / $TRITONKIT_STUB_PYTHON / this Python,
probed before launch, refused with exit 2 when it cannot serve text (NumPy 2) or has no NumPy at all.

The NumPy 2 environment is real (numpy from PyPI installed into a fresh venv that also sees this
project's packages), and one test serves the example with the check lifted to pin the Triton 2.51
defect it guards against: when the embedded server reads BYTES tensors under NumPy 2, drop the check.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import free_ports, live_processes
from tritonkit import stub_env
from tritonkit.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
NUMPY2 = "2.2.6"  # any NumPy 2 release with a wheel for this Python


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path / "bin" / "python3"


def _site(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@pytest.fixture(scope="module")
def numpy2_python(tmp_path_factory):
    """A venv with NumPy 2 first and this project's packages (tokenizers, onnxruntime) after it."""
    python = _venv(tmp_path_factory.mktemp("np2") / "venv")
    site = _site(python)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                    "--target", str(site), f"numpy=={NUMPY2}"], check=True)
    (site / "zz_project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _serve(repo: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, list[int]]:
    ports = free_ports(3)
    args = [sys.executable, "-m", "tritonkit.cli", "serve", "--repo", str(repo), "--http-port", str(ports[0]),
            "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), *extra]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, **(env or {})})
    return done, ports


def _no_server_on(ports: list[int]) -> bool:
    return not any(f"--http-port={ports[0]}" in cmd for _, cmd in live_processes())


def test_default_is_this_python_and_its_numpy():
    env = stub_env.resolve(None)
    assert env.version == sys.version_info[:2]
    assert env.numpy == np.__version__ and int(env.numpy.split(".")[0]) == 1
    assert env.bin_dir == Path(sys.executable).parent or (env.bin_dir / "python3").samefile(sys.executable)


def test_a_bin_folder_is_accepted_like_its_interpreter():
    by_folder = stub_env.resolve(Path(sys.executable).parent)
    assert by_folder.numpy == stub_env.resolve(Path(sys.executable)).numpy


@pytest.mark.integration  # built_repo: the example exported to ONNX
def test_serve_refuses_a_numpy2_environment_before_launching(numpy2_python, built_repo):
    done, ports = _serve(built_repo, "--stub-python", str(numpy2_python))
    assert done.returncode == 2, done.stderr
    assert "NumPy 2" in done.stderr and f"numpy {NUMPY2}" in done.stderr and "numpy<2" in done.stderr
    assert "--stub-python" in done.stderr and "Traceback" not in done.stderr
    assert _no_server_on(ports)


@pytest.mark.integration  # built_repo: the example exported to ONNX
def test_the_environment_variable_names_the_stub_python(numpy2_python, built_repo):
    """$TRITONKIT_STUB_PYTHON (here a bin folder) is used when --stub-python is absent, and named in the error."""
    done, ports = _serve(built_repo, env={stub_env.ENV_VAR: str(numpy2_python.parent)})
    assert done.returncode == 2, done.stderr
    assert f"${stub_env.ENV_VAR}" in done.stderr and f"numpy {NUMPY2}" in done.stderr
    assert _no_server_on(ports)


@pytest.mark.integration  # built_repo: the example exported to ONNX
def test_an_environment_without_numpy_is_refused(tmp_path, built_repo):
    bare = _venv(tmp_path / "bare")
    done, _ = _serve(built_repo, "--stub-python", str(bare))
    assert done.returncode == 2, done.stderr
    assert "NumPy is not importable" in done.stderr and "ModuleNotFoundError" in done.stderr


def test_a_folder_without_python3_is_refused(tmp_path):
    with pytest.raises(UserError) as err:
        stub_env.resolve(tmp_path)
    assert "no python3" in str(err.value) and str(tmp_path) in str(err.value)


@pytest.mark.integration
def test_numpy2_stub_still_misreads_text_tensors(numpy2_python, built_repo, tmp_path, monkeypatch):
    """Why the check exists: with it lifted, the 2.51 stub under NumPy 2 aborts on the first text request
    (the tokenizer dies in deserialize_bytes_tensor). If this starts passing requests, drop the check."""
    import tritonclient.grpc as grpcclient
    from tritonkit.serve import EmbeddedServer, ServerOptions
    monkeypatch.setattr(stub_env, "STUB_NUMPY_MAX_MAJOR", 2)
    http, grpc, metrics = free_ports(3)
    log = tmp_path / "server.log"
    with EmbeddedServer(ServerOptions(repository=built_repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                      log_file=log, stub_python=numpy2_python, exit_timeout_s=3)) as server:
        assert server.stub_environment.numpy == NUMPY2
        inp = grpcclient.InferInput("text", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b"a sentence for the tokenizer"]], dtype=object))
        with pytest.raises(Exception) as err:
            grpcclient.InferenceServerClient(server.grpc_url).infer("minilm", [inp], client_timeout=30)
    assert "not healthy" in str(err.value) or "unpack_from" in str(err.value)
    assert "unpack_from requires a buffer" in log.read_text(errors="replace")


def test_stub_python_with_docker_is_refused(tmp_path):
    """The container brings its own Python: --stub-python there would be silently ignored."""
    from tritonkit.containers import serve_in_docker
    from tritonkit.serve import ServerOptions
    with pytest.raises(UserError) as err:
        serve_in_docker(ServerOptions(repository=tmp_path, stub_python=Path(sys.executable)))
    assert "--stub-python is not available with --docker" in str(err.value)
