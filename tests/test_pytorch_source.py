"""A PyTorch model brought as a factory (`source: {format: pytorch, path: net.py:make_model}`): exported to
ONNX at the spec's axes, proven against the module, served by the real embedded server, measured.

The example is examples/digits: an MLP trained by its train.py on scikit-learn's digits (which ship inside
scikit-learn). Served logits must match the module's in-process logits, so the served accuracy on the
held-out images is the in-process accuracy.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import bench_example, cli, free_ports

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "digits"

SPEC = """
models:
  - name: net
    source: {{format: pytorch, path: {path}}}
    inputs:
      - {{name: pixels, dtype: FP32, dims: [batch, 64]}}
    outputs:
      - {{name: logits, dtype: FP32, dims: [batch, 10]}}
    max_batch_size: 8
    latency_budget: {{p99_ms: 50}}
    tolerance:
      fp32: {{atol: 1.0e-4, rtol: 1.0e-4}}
"""


def _spec(folder: Path, path: str, code: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if code is not None:
        (folder / "net.py").write_text(textwrap.dedent(code))
    spec = folder / "models.yaml"
    spec.write_text(SPEC.format(path=path))
    return spec


def _tree(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


def test_a_pytorch_path_without_its_factory_is_refused_at_planning(tmp_path):
    """`path: net.py` names no callable: planning must say what the path should look like, exit 2."""
    spec = _spec(tmp_path, "net.py", "def make_model(): pass\n")
    r = cli("plan", "--spec", str(spec), "--gpu", "none")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "file.py:factory_function" in r.stderr and "source.path" in r.stderr, r.stderr


BAD_FACTORIES = {
    "does_not_import": ("import no_such_module_anywhere\ndef make_model(): pass\n",
                        r"does not import: ModuleNotFoundError: No module named 'no_such_module_anywhere'"),
    "not_a_module": ("def make_model():\n    return 42\n", r"make_model\(\) did not return a torch\.nn\.Module.*int"),
    "no_factory": ("def build():\n    pass\n", r"no callable 'make_model' in net\.py.*build"),
    "wrong_signature": ("""
        import torch
        class Net(torch.nn.Module):
            def forward(self, image, mask):
                return image
        def make_model():
            return Net()
        """, r"forward\(\) does not take the spec's inputs.*forward\(image, mask\).*forward\(pixels\)"),
    "wrong_outputs": ("""
        import torch
        class Net(torch.nn.Module):
            def forward(self, pixels):
                return pixels[:, :10], pixels[:, :10]
        def make_model():
            return Net()
        """, r"another number of outputs than the spec lists.*2.*1: \['logits'\]"),
    "wrong_shape": ("""
        import torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(32, 10)
            def forward(self, pixels):
                return self.fc(pixels)
        def make_model():
            return Net()
        """, r"forward\(\) fails on the spec's inputs: RuntimeError.*float32 \[8, 64\]"),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(BAD_FACTORIES))
def test_a_bad_factory_is_refused_by_build_naming_it_and_the_repository_is_untouched(tmp_path, case):
    """Each way a factory can be wrong gets its own message (what, where, actual vs expected), exit 2, no
    traceback, and the rendered repository stays byte-identical."""
    code, message = BAD_FACTORIES[case]
    spec = _spec(tmp_path / "model", "net.py:make_model", code)
    repo = tmp_path / "repo"
    assert cli("render", "--spec", str(spec), "--gpu", "none", "--out", str(repo)).returncode == 0
    before = _tree(repo)
    r = cli("build", "--repo", str(repo))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert re.search(message, " ".join(r.stderr.split()), re.S), r.stderr
    assert "net.py" in r.stderr
    assert _tree(repo) == before


@pytest.fixture(scope="module")
def digits_repo(tmp_path_factory):
    """examples/digits rendered for the embedded server on the CPU and built (export + validation)."""
    folder = tmp_path_factory.mktemp("digits")
    repo = folder / "model_repository"
    r = cli("render", "--spec", str(EXAMPLE / "models.yaml"), "--gpu", "none", "--out", str(repo))
    assert r.returncode == 0, r.stderr
    r = cli("build", "--repo", str(repo))
    assert r.returncode == 0, r.stderr
    return repo


def _in_process():
    import sys
    import torch
    sys.path.insert(0, str(EXAMPLE))
    try:
        from net import make_model
    finally:
        sys.path.remove(str(EXAMPLE))
    data = np.load(EXAMPLE / "digits_test.npz")
    with torch.no_grad():
        logits = make_model()(torch.from_numpy(data["pixels"])).numpy()
    return data["pixels"], data["labels"], logits


@pytest.mark.integration
def test_the_build_records_the_export_and_its_validation_against_the_module(digits_repo):
    """build.json says what the graph was proven against, where (every promised size of the batch axis) and how
    close it came; the factory is part of the recipe, so naming another one rebuilds."""
    record = json.loads((digits_repo / "digits" / "1" / "build.json").read_text())
    v = record["validation"]
    assert v["reference"] == "the PyTorch module (eager, FP32, CPU)"
    assert v["max_abs_error"] <= v["atol"] == 1e-4
    assert {k: s["pixels"][0] for k, s in v["shapes"].items()} == {"min": 1, "opt": 64, "max": 64}
    assert record["source"]["format"] == "pytorch" and record["recipe"]["source"]["factory"] == "make_model"
    assert record["source"]["resolved"] == str(EXAMPLE)   # the folder: its weights are part of the digest


@pytest.mark.integration
def test_served_digits_match_the_module_over_grpc_and_http_and_keep_its_accuracy(digits_repo, tmp_path):
    """Served logits equal the module's (FP32 tolerance) for all 450 held-out images, in batches of up to
    max_batch_size, over both protocols; so the served accuracy is the one train.py measured in-process."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from tritonkit.serve import EmbeddedServer, ServerOptions
    pixels, labels, expected = _in_process()
    in_process = float((expected.argmax(1) == labels).mean())
    assert abs(in_process - json.loads((EXAMPLE / "metrics.json").read_text())["test_accuracy_in_process"]) < 1e-5
    http, grpc, metrics = free_ports(3)
    served = {}
    with EmbeddedServer(ServerOptions(repository=digits_repo, http_port=http, grpc_port=grpc,
                                      metrics_port=metrics, log_file=tmp_path / "server.log")) as s:
        for name, module, url in (("grpc", grpcclient, s.grpc_url), ("http", httpclient, s.http_url)):
            client = module.InferenceServerClient(url)
            rows = []
            for start in range(0, len(pixels), 64):
                batch = pixels[start:start + 64]
                tensor = module.InferInput("pixels", list(batch.shape), "FP32")
                tensor.set_data_from_numpy(batch)
                rows.append(client.infer("digits", [tensor]).as_numpy("logits"))
            served[name] = np.concatenate(rows)
    for name, logits in served.items():
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4, err_msg=name)
        assert float((logits.argmax(1) == labels).mean()) == in_process, name
    assert in_process > 0.9


@pytest.mark.integration
def test_bench_measures_the_served_digits_model_with_the_spec_workload(digits_repo, tmp_path):
    """`tritonkit bench` sends the spec's held-out images (workload: data) and every request is answered and
    counted by the server (the p99 verdict itself is a timing figure: not asserted on a shared machine)."""
    from tritonkit.serve import EmbeddedServer, ServerOptions
    http, grpc, metrics = free_ports(3)
    with EmbeddedServer(ServerOptions(repository=digits_repo, http_port=http, grpc_port=grpc,
                                      metrics_port=metrics)):
        report = bench_example(digits_repo, grpc, "digits", "digits", tmp_path)
    assert report["payload"]["source"] == f"data: {EXAMPLE / 'digits_test.npz'}"
    assert report["payload"]["inputs"]["pixels"]["shape"] == [1, 64]
    for level in report["levels"]:   # no batching across requests here: the server counted each one
        assert level["server"]["digits"]["requests"] == level["requests"]
