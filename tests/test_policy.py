"""tritonkit.policy (and tritonkit.servers): plan(spec, hardware, server) -> Plan, every choice with a reason.

Hardware is always declared (a value), so the whole catalogue x both servers x no-GPU is planned on any
machine. Spec variants are the example spec with one field replaced (dataclasses.replace on the frozen
values load_spec returns), each one a spec the parser would also accept.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re

import pytest

from tritonkit import defaults
from tritonkit.catalogue import CATALOGUE, GIB
from tritonkit.errors import UserError
from tritonkit.hardware import Hardware, declared
from tritonkit.plan import Plan
from tritonkit.plan import plan_filename
from tritonkit.build import BUILDERS
from tritonkit.policy import BACKENDS, plan, plan_fleet, queue_timeout_us
from tritonkit.render import render_files
from tritonkit.servers import SERVERS, server_target
from tritonkit.spec import Source, Spec, Tolerance, load_spec

SPEC = load_spec(defaults.DEFAULT_SPEC)
MODEL = SPEC.models[0]
BUDGET_US = MODEL.p99_budget_ms * 1000
CORES = 8

GPU_NAMES = sorted(g.name for g in CATALOGUE.values())

# Instances per GPU, written out per catalogue entry: 1 below 48 SMs, else 2.
# The example spec batches, so its queue is bounded and every model gets >= 2 instances
# (defaults.MIN_INSTANCES_WITH_QUEUE_POLICY); by SM count alone T4 and Orin would get 1.
EXPECTED_GPU_INSTANCES = {
    "Tesla T4": 2, "Jetson AGX Orin": 2,
    "V100": 2, "A10": 2, "A10G": 2, "A100 40GB": 2, "A100 80GB": 2, "L4": 2, "L40S": 2,
    "H100 PCIe": 2, "H100 SXM": 2, "H200": 2, "B200": 2, "RTX 3080": 2, "RTX 4090": 2,
}


def hardware(gpu: str | None, cores: int = CORES) -> Hardware:
    """Declared hardware with a fixed CPU (no INT8 units: FP32 on it), so expectations do not depend on the test
    host; CPU INT8 is tests/test_int8.py's."""
    base = declared(gpu or "none", cpu_features=())
    return dataclasses.replace(base, cpu_cores=cores, memory_bytes=32 * GIB)


def variant(**changes) -> Spec:
    return Spec(path=SPEC.path, models=(dataclasses.replace(MODEL, **changes),))


def tol(*precisions: str) -> dict[str, Tolerance]:
    return {p: Tolerance(atol=1e-2, min_cosine=0.99) for p in precisions}


def decision(p: Plan, subject: str, key: str):
    found = [d for d in p.decisions if (d.subject, d.key) == (subject, key)]
    assert len(found) == 1, f"{subject}.{key}: {len(found)} decisions"
    return found[0]


# --- the whole catalogue x servers x none ------------------------------------------------------------------

# NGC 25.10 supports compute capability >= 7.5 only; older GPUs are refused there (tested below).
UNSUPPORTED_BY_NGC = {g.name for g in CATALOGUE.values() if g.compute_capability < (7, 5)}
COMBINATIONS = [(server, gpu) for server in sorted(SERVERS) for gpu in [None] + GPU_NAMES
                if not (server == "ngc" and gpu in UNSUPPORTED_BY_NGC)]


def test_expected_instance_table_covers_the_catalogue():
    """Prevents a new catalogue GPU escaping the table-driven planning tests below."""
    assert set(EXPECTED_GPU_INSTANCES) == set(GPU_NAMES)
    assert len(COMBINATIONS) == 2 * (len(GPU_NAMES) + 1) - len(UNSUPPORTED_BY_NGC)


@pytest.mark.parametrize("gpu", sorted(UNSUPPORTED_BY_NGC))
def test_gpus_the_ngc_release_does_not_support_are_refused(gpu):
    """Prevents rendering a repository for a GPU the pinned NGC release cannot run (25.10: cc >= 7.5)."""
    with pytest.raises(UserError, match="does not support") as info:
        plan(SPEC, hardware(gpu), server_target("ngc"))
    assert ">= 7.5" in str(info.value)


@pytest.mark.parametrize(("server", "gpu"), COMBINATIONS, ids=[f"{s}-{g or 'none'}" for s, g in COMBINATIONS])
def test_example_spec_plans_everywhere(server, gpu):
    """Prevents any catalogue GPU / server combination failing to plan, or planning the wrong backend,
    precision, placement, batching or tokenizer padding for the example spec."""
    hw = hardware(gpu)
    p = plan(SPEC, hw, server_target(server))
    assert [m.name for m in p.models] == ["minilm", "minilm_tokenizer", "minilm_encoder"]
    assert [m.role for m in p.models] == ["ensemble", "tokenizer", "encoder"]
    ens, tok, enc = p.models
    assert p.gpu == (hw.gpus[0] if gpu else None)

    if server == "ngc" and gpu:
        backend, precision, kind, count = "tensorrt", "fp16", "KIND_GPU", EXPECTED_GPU_INSTANCES[gpu]
    elif server == "ngc":
        backend, precision, kind, count = "onnxruntime", "fp32", "KIND_CPU", 8
    elif gpu:  # embedded + GPU: python backend running the encoder in PyTorch on the GPU
        backend, precision, kind, count = "python", "fp16", "KIND_GPU", 2  # python backend: 2 on any GPU
    else:  # embedded, no GPU: python backend running ONNX Runtime on the CPU
        backend, precision, kind, count = "python", "fp32", "KIND_CPU", 8
    assert (enc.backend, enc.precision) == (backend, precision)
    assert [(g.kind, g.count, g.gpus) for g in enc.instances] == [(kind, count, ())]
    expected_files = (plan_filename(hw.gpus[0].compute_capability),) if backend == "tensorrt" else \
        next(r.artifacts for r in BACKENDS if r.label == enc.label)
    assert enc.artifacts == expected_files
    params = dict(enc.parameters)
    if kind == "KIND_CPU":
        assert params["intra_op_thread_count"] == "1", "8 cores = 8 instances x 1 thread"
    else:
        assert "intra_op_thread_count" not in params

    ragged = server == "embedded"
    assert [t.ragged for t in enc.inputs] == [ragged, ragged]
    assert not any(t.ragged for t in enc.outputs)
    if server == "embedded":
        runtime = "torch" if gpu else "onnxruntime"
        assert enc.runtime == runtime
        assert params["runtime"] == runtime and params["precision"] == precision
        assert enc.code_template == f"encoder_{runtime}.py.j2"
        assert decision(p, "minilm_encoder", "ragged_batch").value == "on"
        assert decision(p, "minilm_encoder", "backend").value == f"python ({runtime})"
        if gpu:
            threshold = defaults.INDUCTOR_MIN_SMS
            mode = "max-autotune" if hw.gpus[0].sm_count >= threshold else "max-autotune-aten-gemm"
            assert params["compile_mode"] == decision(p, "minilm_encoder", "torch_compile").value == mode
    else:
        assert not any(d.key == "ragged_batch" for d in p.decisions)
        assert decision(p, "minilm_encoder", "backend").value == backend
    assert decision(p, "minilm_encoder", "precision").value == precision
    assert decision(p, "minilm_encoder", "instances").value == f"{count} x {kind}"

    # Dynamic batching: short wait, bounded queue, requests older than the budget are shed.
    for m in (enc, tok):
        q = m.batching
        assert q is not None
        assert 0 <= q.max_queue_delay_us <= defaults.QUEUE_DELAY_MAX_US
        assert q.max_queue_delay_us <= defaults.QUEUE_DELAY_BUDGET_SHARE * BUDGET_US
        assert 0 < q.max_queue_size <= 64 * 4 * 4
        assert q.timeout_us == queue_timeout_us(BUDGET_US / 1000) == 750_000  # re-check 500 ms + 250 ms budget

    # Tokenizer: pads to buckets only where the encoder batches equal shapes only.
    tparams = dict(tok.parameters)
    assert tparams["max_length"] == "256"
    assert tparams["pad_to_multiple_of"] == ("1" if server == "embedded" else "16")
    assert [(g.kind, g.count) for g in tok.instances] == [("KIND_CPU", defaults.MIN_INSTANCES_WITH_QUEUE_POLICY)]

    # Every decision explained; the plan is a plain, JSON-able value.
    assert p.decisions and all(d.reason.strip() for d in p.decisions), [d for d in p.decisions if not d.reason]
    json.dumps(p.to_dict())


@pytest.mark.parametrize(("server", "gpu"), COMBINATIONS, ids=[f"{s}-{g or 'none'}" for s, g in COMBINATIONS])
def test_pipeline_tensors_agree_between_steps(server, gpu):
    """Prevents an ensemble whose tokenizer outputs, encoder inputs and ensemble output disagree in name,
    type or dims (Triton refuses to load such an ensemble)."""
    ens, tok, enc = plan(SPEC, hardware(gpu), server_target(server)).models
    sig = lambda ts: [(t.name, t.dtype, t.dims) for t in ts]  # noqa: E731
    assert sig(tok.outputs) == sig(enc.inputs) == [("input_ids", "INT64", (-1,)), ("attention_mask", "INT64", (-1,))]
    assert sig(ens.outputs) == sig(enc.outputs) == [("embedding", "FP32", (384,))]
    assert sig(ens.inputs) == sig(tok.inputs) == [("text", "BYTES", (1,))]
    assert [(s.model, s.input_map, s.output_map) for s in ens.steps] == [
        ("minilm_tokenizer", (("text", "text"),), (("input_ids", "input_ids"), ("attention_mask", "attention_mask"))),
        ("minilm_encoder", (("input_ids", "input_ids"), ("attention_mask", "attention_mask")),
         (("embedding", "embedding"),)),
    ]
    # Warmup uses each axis's opt size, inside its declared range.
    assert enc.warmup.inputs == (("input_ids", "INT64", (64,)), ("attention_mask", "INT64", (64,)))


@pytest.mark.parametrize(("server", "gpu"), [("ngc", "T4"), ("ngc", None), ("embedded", None), ("embedded", "H100")])
def test_planned_templates_exist(server, gpu):
    """Prevents the policy choosing a backend or model.py template that the render step has no file for."""
    for m in plan(SPEC, hardware(gpu), server_target(server)).models:
        assert (defaults.TEMPLATES_DIR / m.config_template).is_file(), m.config_template
        if m.code_template:
            assert (defaults.TEMPLATES_DIR / "python" / m.code_template).is_file(), m.code_template


# --- instances -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("sms", "count"), [(1, 1), (16, 1), (40, 1), (47, 1), (48, 2), (58, 2), (132, 2)])
def test_gpu_instances_by_sm_count(sms, count):
    """Prevents two instances splitting a small GPU (or one instance leaving a big one idle between requests).
    Unbatched, so no queue policy raises the count (next test)."""
    p = plan(variant(max_batch_size=0), hardware(f"sm={sms},cc=8.0,mem=16GiB"), server_target("ngc"))
    assert p.model("minilm_encoder").instances[0].count == count
    assert f"{sms} SMs" in decision(p, "minilm_encoder", "instances").reason


@pytest.mark.parametrize(("server", "gpu", "cores"), [("ngc", "T4", 8), ("ngc", "sm=16,cc=8.0,mem=16GiB", 8),
                                                      ("ngc", None, 1), ("embedded", None, 1)])
def test_bounded_queue_gets_a_second_instance(server, gpu, cores):
    """Prevents a bounded queue in front of a lone instance: Triton's batcher then leaves a burst waiting for
    its 500 ms idle re-check and rejects it at the queue timeout (benchmarks/queue_policy_bursts.py)."""
    p = plan(SPEC, hardware(gpu, cores=cores), server_target(server))
    for name in ("minilm_encoder", "minilm_tokenizer"):
        m = p.model(name)
        assert m.batching.max_queue_size > 0 and m.instances[0].count == defaults.MIN_INSTANCES_WITH_QUEUE_POLICY
        assert "500 ms idle re-check" in decision(p, name, "instances").reason


@pytest.mark.parametrize(("cores", "count", "threads"), [
    (1, 2, 1), (2, 2, 1), (3, 3, 1), (4, 4, 1), (6, 6, 1), (8, 8, 1), (16, 8, 2), (64, 8, 8),
])
@pytest.mark.parametrize(("server", "gpu"), [("ngc", None), ("embedded", None)])
def test_cpu_instances_never_oversubscribe(server, gpu, cores, count, threads):
    """Prevents CPU instances x intra-op threads exceeding the cores the server may use (thrashing tail latency);
    a single core still gets the bounded queue's second instance (one thread each)."""
    p = plan(SPEC, hardware(gpu, cores=cores), server_target(server))
    enc = p.model("minilm_encoder")
    [group] = enc.instances
    got_threads = int(dict(enc.parameters)["intra_op_thread_count"])
    assert (group.kind, group.count, got_threads) == ("KIND_CPU", count, threads)
    assert group.count * got_threads <= max(cores, defaults.MIN_INSTANCES_WITH_QUEUE_POLICY)
    assert f"of {cores} cores" in decision(p, "minilm_encoder", "instances").reason


# --- batching ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("budget_ms", "timeout_us"), [(0.1, 500_100), (10, 510_000), (250, 750_000), (500, 1_000_000),
                                                      (5000, 10_000_000)])
def test_queue_timeout_leaves_room_for_the_batchers_recheck(budget_ms, timeout_us):
    """Prevents a queue timeout inside Triton's 500 ms batcher re-check turning a late pick-up into an error."""
    assert queue_timeout_us(budget_ms) == timeout_us


@pytest.mark.parametrize(("budget_ms", "delay_us"), [(0.1, 5), (10, 500), (40, 2000), (250, 2000), (5000, 2000)])
def test_queue_delay_is_a_small_share_of_the_budget(budget_ms, delay_us):
    """Prevents the batcher waiting longer than 5% of the p99 budget (or more than 2 ms) for a batch to fill."""
    p = plan(variant(p99_budget_ms=budget_ms), hardware("T4"), server_target("ngc"))
    q = p.model("minilm_encoder").batching
    assert q.max_queue_delay_us == delay_us
    assert q.timeout_us == queue_timeout_us(budget_ms)
    assert str(delay_us) in decision(p, "minilm_encoder", "dynamic_batching").reason


@pytest.mark.parametrize("server", ["embedded", "ngc"])
def test_cpu_batching_has_no_delay_but_a_bounded_queue(server):
    """Prevents CPU requests waiting for a batch to fill while an instance sits idle (pure added latency)."""
    p = plan(SPEC, hardware(None), server_target(server))
    for name in ("minilm_encoder", "minilm_tokenizer"):
        q = p.model(name).batching
        assert q.max_queue_delay_us == 0 and q.max_queue_size > 0
        assert q.timeout_us == queue_timeout_us(SPEC.models[0].p99_budget_ms)
    assert "no batching delay" in decision(p, "minilm_encoder", "dynamic_batching").reason


def test_unbatched_model_has_no_batcher():
    """Prevents dynamic_batching being configured for max_batch_size 0 (Triton rejects the config)."""
    p = plan(variant(max_batch_size=0), hardware(None), server_target("embedded"))
    ens, tok, enc = p.models
    assert enc.batching is None and tok.batching is None
    assert tok.instances[0].count == 1, "no bounded queue, no second instance"
    assert enc.max_batch_size == tok.max_batch_size == ens.max_batch_size == 0
    assert not any(t.ragged for t in enc.inputs), "no batching, nothing to pad"
    assert not any(d.key in ("dynamic_batching", "ragged_batch") for d in p.decisions)
    assert decision(p, "minilm_encoder", "max_batch_size").value == "0"
    assert ens.inputs[0].dims == (-1,)
    assert enc.inputs[0].dims == (-1, -1), "the batch dim stays a real (dynamic) dim"


# --- precision -----------------------------------------------------------------------------------------------

def test_no_reduced_precision_tolerance_means_fp32_even_on_h100():
    """Prevents FP16/BF16 being chosen for a model whose spec never said it tolerates them."""
    p = plan(variant(tolerance=tol("fp32")), hardware("H100"), server_target("ngc"))
    assert p.model("minilm_encoder").precision == "fp32"
    reason = decision(p, "minilm_encoder", "precision").reason
    assert "not fp16: no tolerance for it in the spec" in reason and "not bf16" in reason


def _mps_h100(sms: int = 38) -> Hardware:
    base = hardware("H100")
    gpu = dataclasses.replace(base.gpus[0], sm_count=sms, mps_limited=True)
    return dataclasses.replace(base, gpus=(gpu,))


def test_mps_limited_gpu_gets_fp32_with_the_measured_reason():
    """Prevents auto choosing FP16/BF16 where they were measured wrong (H100 under a CUDA MPS thread limit)."""
    p = plan(load_spec(defaults.DEFAULT_SPEC), _mps_h100(), server_target("embedded"))
    assert p.model("minilm_encoder").precision == "fp32"
    reason = decision(p, "minilm_encoder", "precision").reason
    assert "not fp16: the GPU's SMs are limited by CUDA MPS" in reason and "not bf16" in reason
    assert "SMs limited by CUDA MPS" in decision(p, "server", "hardware").value


def test_mps_limited_gpu_still_honours_a_requested_fp16():
    """The rule only steers the automatic choice: a spec that asks for FP16 gets it (the build validates it)."""
    p = plan(variant(precision="fp16"), _mps_h100(), server_target("embedded"))
    assert p.model("minilm_encoder").precision == "fp16"


def test_bf16_only_tolerance_on_h100_gives_bf16():
    """Prevents a BF16 tolerance being ignored on a GPU with BF16 tensor cores."""
    p = plan(variant(tolerance=tol("bf16")), hardware("H100"), server_target("ngc"))
    assert p.model("minilm_encoder").precision == "bf16"


def test_bf16_only_tolerance_on_t4_is_refused():
    """Prevents BF16 being planned on a T4 (cc 7.5: no BF16 tensor cores) or FP32 being used untested."""
    with pytest.raises(UserError) as info:
        plan(variant(tolerance=tol("bf16")), hardware("T4"), server_target("ngc"))
    e = info.value
    assert e.where == "model minilm: tolerance"
    assert e.actual == ["bf16"]
    assert "fp32 always is" in e.fix


def test_bf16_only_tolerance_on_t4_error_names_the_gpu_limit():
    """Prevents a contradictory refusal ("got bf16, expected one of [bf16, ...]") that hides the real cause."""
    with pytest.raises(UserError) as info:
        plan(variant(tolerance=tol("bf16")), hardware("T4"), server_target("ngc"))
    message = str(info.value)
    assert "bf16: Tesla T4 is cc 7.5, BF16 needs >= 8.0" in message
    assert "fp32: no tolerance for it in the spec" in message


def test_old_gpu_falls_back_to_fp32_with_reason():
    """Prevents FP16 being planned on a GPU below cc 7.0 (no FP16 tensor cores)."""
    p = plan(SPEC, hardware("sm=20,cc=6.1,mem=8GiB"), server_target("embedded"))
    assert p.model("minilm_encoder").precision == "fp32"
    assert "FP16 needs >= 7.0" in decision(p, "minilm_encoder", "precision").reason


# An FP16-only tolerance: on the CPU (FP32 only) nothing could validate the model, so the plan is refused
# with the missing FP32 entry named; on a GPU with FP16 tensor cores FP16 is planned and its tolerance applies.
NO_FP32_TOLERANCE = "runs on the CPU in FP32, but the spec gives no FP32 tolerance"


@pytest.mark.parametrize(("server", "gpu", "refused", "precision"), [
    ("ngc", None, NO_FP32_TOLERANCE, None),
    ("embedded", None, NO_FP32_TOLERANCE, None),
    ("embedded", "H100", None, "fp16"),
], ids=["ngc-cpu-refused", "embedded-cpu-refused", "embedded-H100-fp16"])
def test_plan_uses_only_a_tolerated_precision(server, gpu, refused, precision):
    """Prevents a plan choosing a precision the spec gives no tolerance for (nothing can validate it): the
    CPU path (FP32 only) must refuse an FP16-only spec and say which entry is missing, the GPU path must
    plan the tolerated FP16."""
    spec = variant(tolerance=tol("fp16"))
    if refused:
        with pytest.raises(UserError, match=re.escape(refused)) as info:
            plan(spec, hardware(gpu), server_target(server))
        e = info.value
        assert (e.where, e.actual) == ("model minilm: tolerance", ["fp16"]), (e.where, e.actual)
        assert "tolerance.fp32" in e.fix
        return
    p = plan(spec, hardware(gpu), server_target(server))
    assert p.model("minilm_encoder").precision == precision
    assert precision in spec.models[0].tolerance


@pytest.mark.parametrize(("precision", "gpu", "need"), [
    ("fp8", "T4", ">= 8.9"), ("fp8", "A100", ">= 8.9"), ("bf16", "T4", ">= 8.0"), ("fp4", "H100", ">= 10.0"),
    ("fp16", "sm=20,cc=6.1,mem=8GiB", ">= 7.0"),
])
def test_requested_precision_beyond_the_gpu_is_refused(precision, gpu, need):
    """Prevents a precision the GPU cannot execute being planned (the TensorRT build would fail or fall back)."""
    spec = variant(precision=precision, tolerance=tol("fp32", precision), calibration="/data/calib")
    server = "embedded" if gpu.startswith("sm=") else "ngc"  # NGC 25.10 refuses cc < 7.5 before precision
    with pytest.raises(UserError) as info:
        plan(spec, hardware(gpu), server_target(server))
    message = str(info.value)
    assert "compute capability" in message and need in message
    assert precision.upper() in message


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_requested_quantized_precision_without_calibration_is_refused(precision):
    """Prevents INT8/FP8 engines being built without calibration data (silently wrong numbers)."""
    spec = variant(precision=precision, tolerance=tol("fp32", precision), calibration=None)
    gpu = "T4" if precision == "int8" else "H100"
    with pytest.raises(UserError) as info:
        plan(spec, hardware(gpu), server_target("ngc"))
    assert "calibration" in str(info.value)


@pytest.mark.parametrize(("precision", "gpu"), [("fp8", "H100"), ("fp8", "L4"), ("int8", "T4"), ("fp4", "B200"),
                                                ("fp32", "T4"), ("bf16", "A10G"), ("tf32", "A100")])
def test_requested_precision_is_honoured(precision, gpu):
    """Prevents a valid, calibrated precision request being replaced by the auto choice."""
    spec = variant(precision=precision, tolerance=tol("fp32", precision), calibration="/data/calib")
    p = plan(spec, hardware(gpu), server_target("ngc"))
    assert p.model("minilm_encoder").precision == precision
    assert "requested in the spec" in decision(p, "minilm_encoder", "precision").reason


@pytest.mark.parametrize(("server", "gpu"), [("ngc", None), ("embedded", None)])
def test_requested_reduced_precision_on_cpu_is_refused(server, gpu):
    """Prevents FP16 being promised where the encoder runs on the CPU (ONNX Runtime CPU path is FP32)."""
    spec = variant(precision="fp16")
    with pytest.raises(UserError) as info:
        plan(spec, hardware(gpu), server_target(server))
    assert "cannot run on the CPU" in str(info.value)


# --- backends ------------------------------------------------------------------------------------------------

def _single(fmt: str, path: str) -> Spec:
    return variant(source=Source(fmt, path), pipeline="none", name="clf")


@pytest.mark.parametrize(("fmt", "server", "gpu", "backend", "kind", "precision"), [
    ("onnx", "ngc", "T4", "tensorrt", "KIND_GPU", "fp16"),
    ("onnx", "ngc", None, "onnxruntime", "KIND_CPU", "fp32"),
    ("onnx", "embedded", "T4", "python", "KIND_GPU", "fp16"),   # the graph as a torch.export program (onnx_torch)
    ("onnx", "embedded", None, "python", "KIND_CPU", "fp32"),
    ("torchscript", "ngc", "T4", "pytorch", "KIND_GPU", "fp32"),   # run as saved: nothing casts TorchScript
    ("torchscript", "ngc", None, "pytorch", "KIND_CPU", "fp32"),
])
def test_single_model_backend_table(fmt, server, gpu, backend, kind, precision):
    """Prevents a source format being routed to a backend that cannot load it, or to the wrong device."""
    p = plan(_single(fmt, "/models/model.bin"), hardware(gpu), server_target(server))
    [m] = p.models
    assert (m.name, m.role, m.backend, m.instances[0].kind, m.precision) == ("clf", "model", backend, kind, precision)
    assert not any(t.ragged for t in m.inputs), "zero padding is only inert behind an attention mask"


def test_onnx_operators_the_gpu_path_cannot_interpret_plan_the_cpu_with_the_reason():
    """An ONNX graph with an operator outside onnx_torch's table would be refused at build time on the GPU path:
    the plan takes ONNX Runtime on the CPU instead and names the operators. A graph within the table keeps the
    GPU; unknown operators (no onnx installed at planning) keep it too, and the build still refuses by name."""
    gpu = hardware("T4")
    for ops, backend, kind in ((("MatMul", "NonZero", "Relu", "com.microsoft::FusedGemm"), "python", "KIND_CPU"),
                               (("MatMul", "Relu", "TopK"), "python", "KIND_GPU"), ((), "python", "KIND_GPU")):
        spec = variant(source=Source("onnx", "/models/model.onnx"), pipeline="none", name="clf", onnx_ops=ops)
        p = plan(spec, gpu, server_target("embedded"))
        [m] = p.models
        assert (m.backend, m.instances[0].kind, m.runtime) == (
            backend, kind, "onnxruntime" if kind == "KIND_CPU" else "torch-program"), ops
        why = decision(p, "clf", "backend").reason
        assert ("cannot interpret for the GPU (NonZero, com.microsoft::FusedGemm)" in why) == (kind == "KIND_CPU"), why


def test_an_onnx_sources_operators_are_read_when_the_spec_loads(tmp_path):
    """The policy's fact comes from the file: op_names of the graph, contrib domains prefixed. A file that does not
    parse leaves it unknown (the build refuses that file)."""
    import onnx
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]),
                               helper.make_node("Gelu", ["r"], ["y"], domain="com.microsoft")], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.microsoft", 1)]),
              str(tmp_path / "model.onnx"))
    (tmp_path / "models.yaml").write_text("""models:
  - name: clf
    source: {format: onnx, path: model.onnx}
    inputs: [{name: x, dtype: FP32, dims: [batch, 4]}]
    outputs: [{name: y, dtype: FP32, dims: [batch, 4]}]
    max_batch_size: 8
    latency_budget: {p99_ms: 50}
    tolerance: {fp32: {atol: 1.0e-4}}
""")
    assert load_spec(tmp_path / "models.yaml").models[0].onnx_ops == ("Relu", "com.microsoft::Gelu")
    (tmp_path / "model.onnx").write_bytes(b"not a protobuf at all \xff\xff")
    assert load_spec(tmp_path / "models.yaml").models[0].onnx_ops == ()


def test_the_specs_instance_count_overrides_the_policys_and_says_both():
    """A cheap model served 20-28% faster with 4 CPU instances than the policy's 2 (README, "Bounded queues"): the
    spec's `instances` wins, the threads follow it, and the reason keeps the policy's own choice; on a GPU it is per
    GPU and memory may still cut it."""
    cpu = plan(variant(instances=4), declared("none", cpu_cores=2, cpu_features=()), server_target("embedded"))
    enc = cpu.model("minilm_encoder")
    assert (enc.instances[0].count, dict(enc.parameters)["intra_op_thread_count"]) == (4, "1")
    why = decision(cpu, "minilm_encoder", "instances").reason
    assert why.startswith("from the spec, 1 intra-op thread(s) each (the policy's choice: 2 instance(s)"), why
    one = plan(variant(instances=1), declared("none", cpu_cores=8, cpu_features=()), server_target("embedded"))
    assert dict(one.model("minilm_encoder").parameters)["intra_op_thread_count"] == "8"
    gpu = plan(variant(instances=3), hardware("T4"), server_target("ngc"))
    assert gpu.model("minilm_encoder").instances[0].count == 3
    assert "from the spec (the policy's choice: 2" in decision(gpu, "minilm_encoder", "instances").reason
    assert gpu.model("minilm_tokenizer").instances[0].count == 2       # pre-processing keeps its own count
    huge = dataclasses.replace(MODEL, instances=64, weights_bytes=4 * GIB)
    cut = plan(Spec(path=SPEC.path, models=(huge,)), hardware("T4"), server_target("ngc"))
    assert cut.model("minilm_encoder").instances[0].count < 64         # 64 x 4 GiB do not fit a T4's 16 GiB
    example = load_spec(defaults.PROJECT_ROOT / "examples" / "digits" / "instances.yaml")
    digits = plan(example, declared("none", cpu_cores=2, cpu_features=()), server_target("embedded")).model("digits")
    assert digits.instances[0].count == 4


def test_torchscript_on_embedded_server_is_refused():
    """Prevents planning a TorchScript model for a server that has no pytorch backend."""
    with pytest.raises(UserError) as info:
        plan(_single("torchscript", "/models/model.pt"), hardware(None), server_target("embedded"))
    assert "no backend of the embedded server can run a torchscript model" in str(info.value)


def test_policy_tables_are_consistent():
    """Prevents a backend row whose artifacts nobody builds or that can run no precision."""
    for row in BACKENDS:
        assert row.builder in BUILDERS, row
        assert row.precisions == {"bf16"} if row.cpu_bf16 else "fp32" in row.precisions, row
        assert row.artifacts or row.backend == "tensorrt", row  # plans are named per cc
        assert any(row.backend in s.backends for s in SERVERS.values()), row.backend
        assert row.reason.strip()


def test_text_embedding_with_fixed_sequence_length(tmp_path):
    """Prevents a spec that validation accepts crashing the planner with a KeyError traceback."""
    text = defaults.DEFAULT_SPEC.read_text()
    text = text.replace("dims: [batch, sequence]", "dims: [batch, 128]")
    text = text.replace("    axes:\n      sequence: {min: 1, opt: 64, max: 256}  # 256 = the model's max_seq_length\n",
                        "")
    assert "sequence" not in text.split("models:")[1].split("latency_budget")[0]
    path = tmp_path / "fixed.yaml"
    path.write_text(text)
    spec = load_spec(path)  # the parser accepts a fixed sequence length: the planner must too
    p = plan(spec, hardware(None), server_target("ngc"))
    assert dict(p.model("minilm_tokenizer").parameters)["max_length"] == "128"
    assert [t.dims for t in p.model("minilm_encoder").inputs] == [(128,), (128,)]


# --- fleets, determinism -------------------------------------------------------------------------------------

def test_mixed_fleet_needs_one_plan_per_gpu_type():
    """Prevents one plan silently targeting only the first GPU type of a mixed host."""
    with pytest.raises(UserError) as info:
        plan(SPEC, hardware("T4,H100"), server_target("ngc"))
    e = info.value
    assert e.where == "--gpu" and e.actual == ["Tesla T4", "H100 SXM"]
    assert "several GPU types" in str(e)


def test_mixed_host_plan_for_one_type_pins_its_gpus():
    """Prevents a per-type plan on a detected mixed host placing instances on the other type's GPUs."""
    hw = dataclasses.replace(hardware("T4,H100,T4"), source="detected")
    t4 = hw.gpus[0]
    p = plan(SPEC, hw, server_target("ngc"), gpu=t4)
    [group] = p.model("minilm_encoder").instances
    assert (group.kind, group.count, group.gpus) == ("KIND_GPU", 2, (0, 2))  # 2: bounded queue


def test_declared_fleet_is_not_pinned():
    """Prevents a fleet's variant naming GPU indexes of a host it never runs on: each host (a Kubernetes pod)
    of a declared fleet sees its own GPUs from index 0, so an L4 variant pinned to GPU 1 would not load."""
    for p in plan_fleet(SPEC, hardware("T4,L4,H100"), server_target("ngc")):
        assert p.model("minilm_encoder").instances[0].gpus == ()


def test_fleet_with_cpu_nodes_adds_a_cpu_variant():
    """`--gpu T4,L4,cpu`: one variant per GPU type plus one for CPU-only nodes, in one repository."""
    plans = plan_fleet(SPEC, hardware("T4,L4,cpu"), server_target("ngc"))
    assert [p.gpu.name if p.gpu else None for p in plans] == ["Tesla T4", "L4", None]
    assert plans[2].model("minilm_encoder").instances[0].kind == "KIND_CPU"
    assert plans[2].model("minilm_encoder").backend == "onnxruntime"
    files = render_files(plans)
    assert {"minilm_encoder/configs/tesla-t4.pbtxt", "minilm_encoder/configs/l4.pbtxt",
            "minilm_encoder/configs/cpu.pbtxt"} <= set(files)


def test_single_type_fleet_is_not_pinned():
    """Prevents a homogeneous host's config being tied to GPU indexes (not portable to other hosts)."""
    p = plan(SPEC, hardware("T4,T4"), server_target("ngc"))
    assert p.model("minilm_encoder").instances[0].gpus == ()


@pytest.mark.parametrize(("server", "gpu"), [("ngc", "L4"), ("ngc", None), ("embedded", "H100")])
def test_plan_is_deterministic(server, gpu):
    """Prevents `render --check` reporting drift because two plans of the same inputs differ."""
    a = plan(SPEC, hardware(gpu), server_target(server))
    b = plan(load_spec(defaults.DEFAULT_SPEC), hardware(gpu), server_target(server))
    assert a == b
    assert json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)
    d = json.loads(json.dumps(a.to_dict()))
    assert d["server"]["backends"] == sorted(SERVERS[server].backends)
    assert d["spec"] == {"path": "deploy/models.yaml", "sha256": SPEC.sha256}   # no path of this host


def test_plan_does_not_touch_its_inputs():
    """Prevents planning mutating the spec or hardware values it was given."""
    spec_before = copy.deepcopy(MODEL)
    hw = hardware("T4")
    hw_before = copy.deepcopy(hw)
    plan(SPEC, hw, server_target("ngc"))
    assert MODEL == spec_before and hw == hw_before


def test_server_decisions_name_the_target():
    """Prevents the plan hiding which Triton (and which hardware) it was made for."""
    p = plan(SPEC, hardware("T4"), server_target("embedded"))
    assert decision(p, "server", "target").value == f"embedded (Triton {defaults.EMBEDDED_TRITON_VERSION})"
    assert "development" in decision(p, "server", "target").reason
    assert decision(p, "server", "hardware").value == "Tesla T4 (40 SMs, cc 7.5, 16 GiB)"


# --- servers -------------------------------------------------------------------------------------------------

def test_server_target_lookup():
    """Prevents `--server` typos reaching the policy as a KeyError."""
    assert server_target("ngc") is SERVERS["ngc"]
    assert server_target("embedded") is SERVERS["embedded"]
    with pytest.raises(UserError) as info:
        server_target("triton")
    assert info.value.where == "--server" and "['embedded', 'ngc']" in str(info.value)


def test_server_table_facts():
    """Prevents TensorRT plans being planned for a server that cannot load them, or built with another TensorRT."""
    ngc, emb = SERVERS["ngc"], SERVERS["embedded"]
    assert ngc.tensorrt_version == defaults.NGC_TENSORRT_VERSION
    assert defaults.NGC_RELEASE in ngc.image and ngc.image == defaults.NGC_TRITON_IMAGE
    assert ngc.triton_version == defaults.NGC_TRITON_VERSION and not ngc.development_only
    assert {"tensorrt", "onnxruntime", "python", "ensemble"} <= ngc.backends
    assert emb.backends == frozenset({"python", "ensemble"})
    assert emb.tensorrt_version is None and emb.image is None and emb.development_only
    assert emb.triton_version == defaults.EMBEDDED_TRITON_VERSION
    for s in SERVERS.values():
        assert s.name in SERVERS and SERVERS[s.name] is s
        assert s.note.strip()
