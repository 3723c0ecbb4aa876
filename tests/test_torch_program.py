"""The GPU path for a user's own model: the python backend runs the source's torch.export program
(templates/python/program_torch.py.j2, artifact model.pt2 from tritonkit/torch_program.py).

The policy picks it only with a GPU. Here the plan is made for a declared H100 and its classifier moved to one
CPU instance without torch.compile (a test-only change), so the generated model.py (program loading, batching,
bucket padding, ragged token inputs, DLPack hand-off) serves for real on the embedded server in CI.
benchmarks/gpu_plan_vs_naive.py runs the same plans on a real GPU with compilation.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import cli, compile_recording_ops, free_ports, infer_texts_at_once, opaque_gemms_module
from tritonkit.hardware import declared
from tritonkit.plan import InstanceGroup
from tritonkit.policy import plan
from tritonkit.servers import SERVERS
from tritonkit.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
SENTIMENT = ROOT / "examples" / "sentiment" / "models.yaml"
DIGITS_IMAGES = ROOT / "examples" / "digits" / "images.yaml"


def cpu_variant(p, name: str):
    """The GPU plan with model `name` moved to one CPU instance, FP32, no compilation (test-only change)."""
    m = p.model(name)
    params = dict(m.parameters) | {"precision": "fp32", "compile_mode": "none"}
    m = replace(m, precision="fp32", instances=(InstanceGroup("KIND_CPU", 1),), parameters=tuple(params.items()))
    return replace(p, models=tuple(m if x.name == name else x for x in p.models))


@pytest.mark.integration   # the sentiment spec reads the assembled transformers folder
def test_own_models_on_a_gpu_get_the_torch_program_path_with_the_sm_aware_compile_mode():
    """pytorch and huggingface sources run on the GPU (torch.export program)."""
    from tests.test_text_classification import assemble
    assemble()
    for spec_path, name in ((SENTIMENT, "sentiment_classifier"), (DIGITS_IMAGES, "digits_images_classifier")):
        spec = load_spec(spec_path)
        for gpu, mode in (("H100", "max-autotune"), ("T4", "max-autotune-aten-gemm")):
            m = plan(spec, declared(gpu), SERVERS["embedded"]).model(name)
            params = dict(m.parameters)
            assert (m.runtime, m.artifacts, m.instances[0].kind) == ("torch-program", ("model.pt2",), "KIND_GPU")
            assert (params["compile_mode"], params["model_file"]) == (mode, "model.pt2")
            assert m.code_files == ("opaque_gemms.py",)


@pytest.fixture(scope="module")
def sentiment_server(tmp_path_factory):
    from tests.test_text_classification import assemble
    from tritonkit.build import build
    from tritonkit.render import write_repository
    from tritonkit.serve import EmbeddedServer, ServerOptions
    assemble()
    spec = load_spec(SENTIMENT)
    p = cpu_variant(plan(spec, declared("H100"), SERVERS["embedded"]), "sentiment_classifier")
    repo = tmp_path_factory.mktemp("program") / "repo"
    write_repository(p, repo)
    build(repo, spec=spec, progress=False)
    http, grpc, metrics = free_ports(3)
    with EmbeddedServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)) as s:
        s.repo = repo
        yield s


@pytest.mark.integration
def test_the_build_exports_and_proves_the_program(sentiment_server):
    record = json.loads((sentiment_server.repo / "sentiment_classifier" / "1" / "build.json").read_text())
    assert record["tool"].startswith("torch.export") and set(record["files"]) == {"model.pt2"}
    v = record["validation"]
    assert v["reference"].startswith("transformers AutoModelForSequenceClassification")
    assert v["max_abs_error"] <= 1e-4 and v["top1_agreement"] == 1.0


@pytest.mark.integration
def test_concurrent_texts_of_mixed_lengths_match_transformers(sentiment_server):
    """Single-text requests sent at once, so the batcher groups texts of different lengths: padding to the
    buckets and slicing the answers back must not mix up or distort any of them (gRPC and HTTP)."""
    import torch
    import tritonclient.http as httpclient
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from tests.test_text_classification import EXAMPLE, _reviews
    folder = EXAMPLE / "model"
    texts, _ = _reviews("held_out.tsv")
    texts = texts + ["Short.", "word " * 400, "Good.", "It broke after two days and support never answered."]
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True).eval()
    with torch.no_grad():
        expected = torch.softmax(model(**tok(texts, padding=True, truncation=True, max_length=256,
                                             return_tensors="pt")).logits, -1).numpy()
    s = sentiment_server
    np.testing.assert_allclose(infer_texts_at_once(s.grpc_url, "sentiment", texts, "probabilities"), expected, atol=1e-4)
    http = httpclient.InferenceServerClient(s.http_url)
    tensor = httpclient.InferInput("text", [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    np.testing.assert_allclose(http.infer("sentiment", [tensor]).as_numpy("probabilities"), expected, atol=1e-4)


@pytest.mark.integration
def test_small_gpu_mode_hands_every_gemm_of_the_program_to_cublas(sentiment_server):
    """opaque_gemms.py (the T4 plan's compile mode): the graph torch.compile lowers holds no GEMM, only
    tritonkit_gemm ops, and the numbers are the program's."""
    import torch

    from tritonkit.torch_program import load_program
    gemms = opaque_gemms_module()
    program = load_program(sentiment_server.repo / "sentiment_classifier" / "1" / "model.pt2", "cpu")
    ids = torch.randint(1000, 2000, (3, 24))
    mask = torch.ones_like(ids)
    mask[0, 12:] = 0
    with torch.inference_mode():
        want = program(ids, mask)[0]
    gemms.opaque_gemms(program)
    compiled, ops = compile_recording_ops(program)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(ids, mask)[0], want, rtol=1e-5, atol=1e-5)
    assert "tritonkit_gemm.linear.default" in ops, sorted(ops)
    left = sorted(op for op in ops if re.search(r"aten\.(mm|addmm|bmm|matmul|linear)\b", op))
    assert left == [], left


@pytest.mark.integration
def test_served_images_on_the_program_path_match_the_in_process_pipeline(tmp_path):
    """The image classifier's program (pytorch source) behind the image pre-processing: all 450 PNGs."""
    import tritonclient.grpc as grpcclient

    from tests.test_image_classification import EXAMPLE, _in_process, _request
    from tritonkit.build import build
    from tritonkit.render import write_repository
    from tritonkit.serve import EmbeddedServer, ServerOptions
    spec = load_spec(DIGITS_IMAGES)
    repo = tmp_path / "repo"
    write_repository(cpu_variant(plan(spec, declared("H100"), SERVERS["embedded"]), "digits_images_classifier"), repo)
    build(repo, spec=spec, progress=False)
    files = sorted((EXAMPLE / "images").glob("*.png"))
    expected = _in_process(files)
    http, grpc, metrics = free_ports(3)
    with EmbeddedServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)) as s:
        client = grpcclient.InferenceServerClient(s.grpc_url)
        got = [client.infer("digits_images", _request(grpcclient, [f.read_bytes() for f in files[k:k + 50]]))
               .as_numpy("probabilities") for k in range(0, len(files), 50)]
    np.testing.assert_allclose(np.concatenate(got), expected, atol=1e-5)


@pytest.mark.integration
def test_a_module_torch_export_cannot_trace_is_refused_and_the_repository_is_untouched(tmp_path):
    """forward() branching on the batch size cannot be one program for every size: exit 2, the exporter's
    reason, no traceback, the rendered repository byte-identical."""
    from tests.test_pytorch_source import _spec, _tree
    spec = _spec(tmp_path / "model", "net.py:make_model", textwrap.dedent("""
        import torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(64, 10)
            def forward(self, pixels):
                if pixels.shape[0] > 4:
                    return self.fc(pixels) * 2
                return self.fc(pixels)
        def make_model():
            return Net()
        """))
    repo = tmp_path / "repo"
    r = cli("render", "--spec", str(spec), "--gpu", "H100", "--out", str(repo))
    assert r.returncode == 0, r.stderr
    before = _tree(repo)
    r = cli("build", "--repo", str(repo))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "torch.export failed" in r.stderr and "net.py" in r.stderr, r.stderr
    assert _tree(repo) == before
