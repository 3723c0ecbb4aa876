"""GPU-specific decisions: torch.compile mode from SM count, TensorRT plan files per architecture,
fleets, the ONNX Runtime TensorRT accelerator, GPU memory, and the quantized precisions (INT8/FP8/FP4)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tritonkit import defaults, render
from tritonkit.catalogue import CATALOGUE
from tritonkit.errors import UserError
from tritonkit.hardware import declared
from tritonkit.plan import plan_filename
from tritonkit.policy import Capabilities, plan, plan_fleet
from tritonkit.servers import SERVERS
from tritonkit.spec import load_spec
from tritonkit.torch_facts import inductor_min_sms, parse_min_sms

SPEC = load_spec(defaults.DEFAULT_SPEC)


def _decision(p, subject, key):
    return next(d for d in p.decisions if d.subject == subject and d.key == key)


@pytest.mark.parametrize("gpu", [g.name for g in CATALOGUE.values()])
def test_compile_mode_follows_the_sm_threshold_for_every_catalogue_gpu(gpu):
    """A GPU below inductor's threshold must never get max-autotune (it prints 'Not enough SMs' and
    wastes the autotuning); a GPU at or above it must get it."""
    p = plan(SPEC, declared(gpu), SERVERS["embedded"])
    sms = CATALOGUE[gpu.lower()].sm_count
    mode = dict(p.model("minilm_encoder").parameters)["compile_mode"]
    assert mode == ("max-autotune" if sms >= 68 else "max-autotune-aten-gemm")
    assert f"{sms} SMs" in _decision(p, "minilm_encoder", "torch_compile").reason


def test_compile_mode_uses_the_threshold_it_is_given():
    """The threshold is an input (read from torch at run time), not a constant buried in the policy."""
    h100 = declared("H100")
    assert dict(plan(SPEC, h100, SERVERS["embedded"], caps=Capabilities(inductor_min_sms=200))
                .model("minilm_encoder").parameters)["compile_mode"] == "max-autotune-aten-gemm"
    mps_limited = declared("sm=38,cc=9.0,mem=80GiB")  # an H100 under CUDA MPS at 30% of its SMs
    p = plan(SPEC, mps_limited, SERVERS["embedded"])
    assert dict(p.model("minilm_encoder").parameters)["compile_mode"] == "max-autotune-aten-gemm"
    assert "Not enough SMs" in _decision(p, "minilm_encoder", "torch_compile").reason


def test_inductor_threshold_is_read_from_the_installed_torch():
    """If torch changes its threshold again, the policy must follow it rather than a stale copy."""
    value, source = inductor_min_sms()
    assert value == 68 and source.startswith("torch ")
    assert parse_min_sms('min_sms = 16 if device.type == "xpu" else 72  # x') == 72
    assert parse_min_sms("if prop.multi_processor_count < 80:") == 80
    assert parse_min_sms("def f(): return True") is None


def test_tensorrt_plan_files_and_profile_follow_the_spec():
    """Plan files must be named per architecture and the profile must span the spec's axes, or
    Triton loads the wrong plan / rejects shapes ("expected dim 0 between 1 and 1")."""
    p = plan(SPEC, declared("T4"), SERVERS["ngc"])
    enc = p.model("minilm_encoder")
    assert enc.artifacts == ("model.sm75.plan",) and enc.cc_model_filenames == (("7.5", "model.sm75.plan"),)
    [profile] = enc.profiles
    assert dict(profile.min) == {"input_ids": (1, 1), "attention_mask": (1, 1)}
    assert dict(profile.opt) == {"input_ids": (64, 64), "attention_mask": (64, 64)}
    assert dict(profile.max) == {"input_ids": (64, 256), "attention_mask": (64, 256)}


def test_fleet_renders_one_variant_per_gpu_and_a_plan_file_per_architecture(tmp_path):
    """One repository must serve a mixed fleet: every variant names the plan file of every fleet cc,
    and those names are exactly what the build step writes (plan_filename)."""
    plans = plan_fleet(SPEC, declared("T4,L4,H100"), SERVERS["ngc"])
    assert [p.gpu.name for p in plans] == ["Tesla T4", "L4", "H100 SXM"]
    files = render.render_files(plans)
    render.validate_files(plans, files)
    expected = {"7.5": plan_filename((7, 5)), "8.9": plan_filename((8, 9)), "9.0": plan_filename((9, 0))}
    for variant in ("tesla-t4", "l4", "h100-sxm"):
        config = model_config_pb2.ModelConfig()
        text_format.Parse(files[f"minilm_encoder/configs/{variant}.pbtxt"].decode(), config)
        assert dict(config.cc_model_filenames) == expected
    t4 = model_config_pb2.ModelConfig()
    text_format.Parse(files["minilm_encoder/configs/tesla-t4.pbtxt"].decode(), t4)
    h100 = model_config_pb2.ModelConfig()
    text_format.Parse(files["minilm_encoder/configs/h100-sxm.pbtxt"].decode(), h100)
    assert (t4.instance_group[0].count, h100.instance_group[0].count) == (2, 2)  # T4: raised for the bounded queue
    assert files["minilm_encoder/config.pbtxt"] == files["minilm_encoder/configs/tesla-t4.pbtxt"]
    render.write_repository(plans, tmp_path / "repo")
    assert render.check_repository(plans, tmp_path / "repo").clean


def test_fleet_of_one_type_is_a_plain_plan():
    """Two GPUs of one type are one variant, not a fleet (no configs/ folder, GPUs not pinned)."""
    plans = plan_fleet(SPEC, declared("H100,H100"), SERVERS["ngc"])
    assert len(plans) == 1
    assert not any("/configs/" in rel for rel in render.render_files(plans))
    assert plans[0].model("minilm_encoder").instances[0].gpus == ()


def test_no_tensorrt_build_uses_the_onnxruntime_tensorrt_accelerator():
    """Where plans cannot be built, the GPU must still be used (ORT + TensorRT EP), with the plan's precision."""
    p = plan(SPEC, declared("L4"), SERVERS["ngc"], caps=Capabilities(tensorrt_build=False))
    enc = p.model("minilm_encoder")
    assert (enc.backend, enc.runtime, enc.precision) == ("onnxruntime", "tensorrt-ep", "fp16")
    config = model_config_pb2.ModelConfig()
    text_format.Parse(render.render_files(p)["minilm_encoder/config.pbtxt"].decode(), config)
    [accel] = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_weights_that_do_not_fit_are_refused_and_instances_are_cut_to_fit():
    """A model too big for the GPU must fail at plan time, not as an OOM at load; a tight fit gets fewer instances."""
    m = SPEC.models[0]
    huge = replace(SPEC, models=(replace(m, weights_bytes=20 * 2**30),))
    with pytest.raises(UserError, match="do not fit"):
        plan(huge, declared("T4"), SERVERS["ngc"])
    tight = replace(SPEC, models=(replace(m, weights_bytes=30 * 2**30),))
    p = plan(tight, declared("H100"), SERVERS["ngc"])
    assert p.model("minilm_encoder").instances[0].count == 1
    assert "cut from 2" in _decision(p, "minilm_encoder", "gpu_memory").reason


def test_requested_fp8_on_t4_and_int8_without_calibration_are_refused():
    """Impossible precision requests must be refused with the reason, never silently downgraded."""
    m = SPEC.models[0]
    fp8 = replace(SPEC, models=(replace(m, precision="fp8", tolerance={**m.tolerance, "fp8": m.tolerance["fp16"]},
                                        calibration="/calib"),))
    with pytest.raises(UserError, match="compute capability"):
        plan(fp8, declared("T4"), SERVERS["ngc"])
    int8 = replace(SPEC, models=(replace(m, precision="int8", tolerance={**m.tolerance, "int8": m.tolerance["fp16"]}),))
    with pytest.raises(UserError, match="calibration"):
        plan(int8, declared("T4"), SERVERS["ngc"])


def _quantizable(calibration: str | None = "/calib/texts.txt", spec=SPEC):
    """The example spec with int8, fp8 and fp4 tolerated (the int8 one) and, by default, calibration data."""
    m = spec.models[0]
    tol = {**m.tolerance, "fp8": m.tolerance["int8"], "fp4": m.tolerance["int8"]}
    return replace(spec, models=(replace(m, tolerance=tol, calibration=calibration),))


@pytest.mark.parametrize(("gpu", "precision", "reason"), [
    ("T4", "int8", "not fp8: Tesla T4 is cc 7.5, FP8 needs >= 8.9"),
    ("A10G", "int8", "not fp8: A10G is cc 8.6, FP8 needs >= 8.9"),
    ("L4", "fp8", "not fp4: L4 is cc 8.9, FP4 needs >= 10.0"),
    ("H100", "fp8", "not fp4: H100 SXM is cc 9.0, FP4 needs >= 10.0"),
    ("B200", "fp8", "not fp4: ModelOpt's ONNX PTQ makes no FP4 graph"),
])
def test_quantized_precision_follows_the_compute_capability(gpu, precision, reason):
    """INT8 from cc 7.5, FP8 from 8.9; FP4 (10.0) never automatically, since no tool here makes an FP4 graph: the
    fewest bits the GPU runs, the spec tolerates and the build can make."""
    p = plan(_quantizable(), declared(gpu), SERVERS["ngc"])
    decision = _decision(p, "minilm_encoder", "precision")
    assert (decision.value, p.model("minilm_encoder").precision) == (precision, precision)
    assert reason in decision.reason


def test_quantized_precisions_need_calibration_data_and_a_tensorrt_build():
    """Without calibration data, or without TensorRT plans to build (--no-tensorrt: ONNX Runtime's accelerator gets
    no Q/DQ graph), INT8/FP8 are passed over with the reason, never chosen blind."""
    p = plan(_quantizable(calibration=None), declared("H100"), SERVERS["ngc"])
    decision = _decision(p, "minilm_encoder", "precision")
    assert decision.value == "fp16" and "not fp8: no calibration data in the spec" in decision.reason
    p = plan(_quantizable(), declared("H100"), SERVERS["ngc"], caps=Capabilities(tensorrt_build=False))
    decision = _decision(p, "minilm_encoder", "precision")
    assert decision.value == "fp16" and "the onnxruntime (tensorrt-ep) backend cannot run it" in decision.reason
    assert plan(SPEC, declared("T4"), SERVERS["ngc"]).model("minilm_encoder").precision == "fp16"   # int8, no data


def test_each_ngc_release_supports_the_gpus_its_release_notes_name():
    """26.10 (the pin) and every release from 25.03 support cc >= 7.5; 24.10 still ran a V100 (cc 7.0). A render for
    an older release must not refuse a GPU that release supports, nor a newer one accept it."""
    from tritonkit.servers import server_target
    assert SERVERS["ngc"].min_compute_capability == (7, 5)
    with pytest.raises(UserError, match="does not support V100"):
        plan(SPEC, declared("V100"), server_target("ngc", "25.07"))
    assert plan(SPEC, declared("V100"), server_target("ngc", "24.10", allow_insecure=True)).gpu.name == "V100"


def test_ngc_release_below_the_security_floor_is_refused_unless_overridden(tmp_path):
    """Rendering for a Triton image without the 2025 security fixes must be a deliberate choice."""
    import subprocess
    import sys
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "repo"
    cmd = [sys.executable, str(root / "tools" / "render.py"), "--server", "ngc", "--gpu", "T4", "--out", str(out)]
    r = subprocess.run(cmd + ["--ngc-release", "24.10"], capture_output=True, text=True)
    assert r.returncode == 2 and "security" in r.stderr and "25.07" in r.stderr and not out.exists(), r.stderr
    r = subprocess.run(cmd + ["--ngc-release", "24.10", "--allow-insecure-release", "--explain"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "BELOW THE SECURITY FLOOR" in r.stdout
    # an unverified release gets no TensorRT plans: ONNX Runtime with the TensorRT accelerator instead
    assert "onnxruntime (tensorrt-ep)" in r.stdout
    r = subprocess.run(cmd + ["--ngc-release", "2510"], capture_output=True, text=True)
    assert r.returncode == 2 and "YY.MM" in r.stderr
