"""tritonkit.trt_settings (plan -> builder settings as data, any machine) and tritonkit.trt_engine (the real
TensorRT calls, where it imports); tritonkit.trt_manifest is tested in tests/test_manifest.py.

TensorRT is not installable from PyPI on this project's machines (its packages download from an unreachable
host; see README.md's support matrix): the settings, the trtexec line, the refusals and the host checks are
tested here for real; the engine build and run are tested at the end of this file, only where
`import tensorrt` works (the NGC TensorRT container on a GPU).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests.tiny_models import cnn_images, write_cnn_spec
from tests.tiny_models import write_cnn_onnx
from tritonkit import defaults
from tritonkit.catalogue import CATALOGUE, GIB
from tritonkit.errors import UserError
from tritonkit.hardware import Hardware, declared
from tritonkit.plan import Profile, plan_filename
from tritonkit.policy import plan, plan_fleet
from tritonkit.servers import SERVERS
from tritonkit.spec import load_spec
from tritonkit.trt_engine import import_tensorrt, require_build_host, run_plan
from tritonkit.trt_manifest import same_tensorrt
from tritonkit.trt_settings import PRECISIONS, builder_settings, require_quantized

ROOT = Path(__file__).resolve().parent.parent
SPEC = load_spec(defaults.DEFAULT_SPEC)
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def encoder(gpu: str = "T4", spec=SPEC):
    p = plan(spec, declared(gpu), SERVERS["ngc"])
    return p, next(m for m in p.models if m.backend == "tensorrt")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cnn")
    return folder, write_cnn_onnx(folder), load_spec(write_cnn_spec(folder))


# --- builder settings per precision (TensorRT 11: strongly typed, the ONNX carries the precision) ------------

EXPECTED = {   # precision -> (how the ONNX gets it, builder flags cleared, trtexec flags, needs a Q/DQ graph)
    "fp32": ("fp32", ("TF32",), ("--stronglyTyped", "--noTF32"), False),
    "tf32": ("fp32", (), ("--stronglyTyped",), False),
    "fp16": ("autocast", (), ("--stronglyTyped",), False),
    "bf16": ("autocast", (), ("--stronglyTyped",), False),
    "int8": ("ptq", (), ("--stronglyTyped",), True),
    "fp8": ("ptq", (), ("--stronglyTyped",), True),
    "fp4": ("prequantized", (), ("--stronglyTyped",), True),
}
# Removed in TensorRT 11 (the 10.x -> 11.x migration guide): a build or trtexec line that names one fails there.
REMOVED_IN_11 = {"builder": {"FP16", "BF16", "INT8", "FP8", "FP4", "INT4", "OBEY_PRECISION_CONSTRAINTS",
                             "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO"},
                 "trtexec": {"--fp16", "--bf16", "--int8", "--fp8", "--fp4", "--int4", "--best", "--calib"}}


@pytest.mark.parametrize("precision", sorted(EXPECTED))
def test_precision_maps_to_a_strongly_typed_build_of_its_onnx(precision):
    """Prevents a TensorRT 10 weak-typing build (BuilderFlag FP16, trtexec --int8) that TensorRT 11 rejects, an FP32
    plan built with TF32 that then misses its 1e-4 tolerance, or an INT8/FP8 plan without the Q/DQ graph it needs."""
    p, m = encoder("H100")
    s = builder_settings(p, dataclasses.replace(m, precision=precision))
    assert (PRECISIONS[precision].onnx, s.cleared_flags, s.trtexec_flags, s.quantized_onnx_required) == \
        EXPECTED[precision]
    assert s.network_flags == ("STRONGLY_TYPED",) and s.onnx == PRECISIONS[precision].note
    argv = s.trtexec_command("a.onnx", "b.plan", "c.cache")
    assert not set(s.cleared_flags) & REMOVED_IN_11["builder"]
    assert not {a.split("=")[0] for a in argv} & REMOVED_IN_11["trtexec"]
    assert set(EXPECTED) == set(PRECISIONS)   # every precision the spec accepts has a row


def test_unknown_precision_is_refused_with_the_choices():
    """A precision without a table row must fail by name, not fall through to an FP32 build."""
    p, m = encoder()
    with pytest.raises(UserError, match="no TensorRT build recipe") as e:
        builder_settings(p, dataclasses.replace(m, precision="int4"))
    assert "fp16" in str(e.value)


# --- profiles from the spec's axes ---------------------------------------------------------------

def test_profiles_span_the_spec_axes_including_batch():
    """Prevents "expected dim 0 between 1 and 1": the batch axis must run 1..max_batch_size and every named
    axis min/opt/max, for every input, in the plan and in what the builder is told."""
    p, m = encoder()
    s = builder_settings(p, m)
    (prof,) = s.profiles
    assert dict(prof.min) == {"input_ids": (1, 1), "attention_mask": (1, 1)}
    assert dict(prof.opt) == {"input_ids": (64, 64), "attention_mask": (64, 64)}
    assert dict(prof.max) == {"input_ids": (64, 256), "attention_mask": (64, 256)}


def test_cnn_profile_keeps_fixed_dims_and_the_declared_batch_range(cnn):
    """Fixed dims (3x32x32) must stay fixed and the declared batch axis (1/8/16) must be used as declared."""
    *_, spec = cnn
    p, m = encoder("T4", spec)
    (prof,) = builder_settings(p, m).profiles
    assert (dict(prof.min)["image"], dict(prof.opt)["image"], dict(prof.max)["image"]) == \
        ((1, 3, 32, 32), (8, 3, 32, 32), (16, 3, 32, 32))


@pytest.mark.parametrize("change,message", [
    (lambda p: Profile(p.min, *(tuple((n, (1,) + d[1:]) for n, d in x) for x in (p.opt, p.max))),
     "expected dim 0 between 1 and 1"),
    (lambda p: Profile(p.min[:1], p.opt, p.max), "name other inputs"),
    (lambda p: Profile(tuple((n, d[:1]) for n, d in p.min), p.opt, p.max), "wrong rank"),
    (lambda p: Profile(tuple((n, (65, 1)) for n, _ in p.min), p.opt, p.max), "min <= opt <= max"),
])
def test_profiles_triton_cannot_serve_are_refused_before_building(change, message):
    """A profile narrower than max_batch_size, missing an input or of the wrong rank fails in seconds here,
    not minutes later in the builder or at the first request in Triton."""
    p, m = encoder()
    bad = dataclasses.replace(m, profiles=(change(m.profiles[0]),))
    with pytest.raises(UserError, match=message):
        builder_settings(p, bad)


def test_a_plan_without_profiles_is_refused_with_re_render():
    """A plan.json from before plans carried profiles must not be built with profiles guessed here (they could
    disagree with the rendered config): the refusal names the model and says to re-render."""
    p, m = encoder()
    with pytest.raises(UserError, match="no TensorRT optimization profile") as e:
        builder_settings(p, dataclasses.replace(m, profiles=()))
    assert m.name in str(e.value) and "re-render" in str(e.value)


def test_fixed_dim_in_a_profile_must_match_the_config(cnn):
    """A profile that varies a dim the config fixes (3 channels) would build a plan Triton feeds wrongly."""
    *_, spec = cnn
    p, m = encoder("T4", spec)
    prof = m.profiles[0]
    four = [tuple((n, (d[0], 4) + d[2:]) for n, d in x) for x in (prof.min, prof.opt, prof.max)]
    bad = Profile(*four)
    with pytest.raises(UserError, match="fixed to 3"):
        builder_settings(p, dataclasses.replace(m, profiles=(bad,)))


# --- workspace, file names, timing cache -----------------------------------------------------------

@pytest.mark.parametrize("gpu,expected", [("T4", 4 * GIB), ("H100", 4 * GIB), ("RTX 3080", int(2.5 * GIB)),
                                          ("sm=16,cc=8.7,mem=6GiB", int(1.5 * GIB)),
                                          ("sm=16,cc=8.7,mem=3GiB", 768 * 2**20)])
def test_workspace_is_a_quarter_of_gpu_memory_capped_at_4_gib(gpu, expected):
    """Prevents a workspace larger than the card (build failure) or a tiny default that rules out fast tactics."""
    p, m = encoder(gpu)
    s = builder_settings(p, m)
    assert s.workspace_bytes == expected and s.workspace_bytes % 2**20 == 0


@pytest.mark.parametrize("gpu,cc,name", [("T4", (7, 5), "model.sm75.plan"), ("A10G", (8, 6), "model.sm86.plan"),
                                         ("L4", (8, 9), "model.sm89.plan"), ("H100", (9, 0), "model.sm90.plan"),
                                         ("B200", (10, 0), "model.sm100.plan")])
def test_plan_file_is_named_by_compute_capability(gpu, cc, name):
    """Each architecture's plan must land in the file cc_model_filenames maps its cc to, or Triton loads
    another GPU's plan ("Magic tag does not match") or none."""
    p, m = encoder(gpu)
    s = builder_settings(p, m)
    assert s.plan_file == name == plan_filename(cc) and s.compute_capability == cc
    assert dict(m.cc_model_filenames)[f"{cc[0]}.{cc[1]}"] == name
    assert s.timing_cache == f"timing-sm{cc[0]}{cc[1]}-trt{defaults.NGC_TENSORRT_VERSION}.cache"


def test_fleet_variants_each_build_their_own_file():
    """In a T4+H100 fleet the T4 build must write model.sm75.plan and the H100 build model.sm90.plan."""
    plans = plan_fleet(SPEC, declared("T4,H100"), SERVERS["ngc"])
    files = {p.gpu.name: builder_settings(p, p.model("minilm_encoder")).plan_file for p in plans}
    assert files == {"Tesla T4": "model.sm75.plan", "H100 SXM": "model.sm90.plan"}


def test_a_plan_without_a_file_for_this_cc_is_refused():
    """Building for a GPU the rendered config names no file for would produce a plan Triton never loads."""
    p, m = encoder("T4")
    with pytest.raises(UserError, match="no TensorRT plan file for compute capability 9.0"):
        builder_settings(p, m, gpu=CATALOGUE["h100 sxm"])


def test_servers_without_tensorrt_and_cpu_plans_get_no_settings():
    """A plan for the embedded server or for no GPU must never reach the TensorRT builder."""
    p, m = encoder("T4")
    with pytest.raises(UserError, match="cannot load TensorRT plans"):
        builder_settings(dataclasses.replace(p, server=SERVERS["embedded"]), m)
    with pytest.raises(UserError, match="needs a GPU target"):
        builder_settings(dataclasses.replace(p, gpu=None), m)


# --- the trtexec line --------------------------------------------------------------------------------

def parse_trtexec(argv: list[str]) -> dict:
    """trtexec's --key=value flags -> {key: [values]} (repeated keys keep order), bare flags -> True."""
    assert argv[0] == "trtexec"
    out: dict = {}
    for arg in argv[1:]:
        key, _, value = arg[2:].partition("=")
        out.setdefault(key, []).append(value if value else True)
    return out


def shapes(text: str) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(d) for d in dims.split("x"))
            for name, dims in (item.rsplit(":", 1) for item in text.split(","))}


@pytest.mark.parametrize("precision", ["fp16", "fp32", "int8"])
def test_trtexec_line_says_what_the_builder_was_told(precision):
    """reproduce.sh's trtexec line must rebuild the same plan: same shapes, precision, optimization level,
    workspace and timing cache; a drifting line would "reproduce" a different engine."""
    p, m = encoder()
    s = builder_settings(p, dataclasses.replace(m, precision=precision))
    argv = s.trtexec_command("../../.cache/x.onnx", s.plan_file, "../../.cache/t.cache")
    f = parse_trtexec(shlex.split(shlex.join(argv)))
    assert f["onnx"] == ["../../.cache/x.onnx"] and f["saveEngine"] == ["model.sm75.plan"]
    (prof,) = s.profiles
    assert shapes(f["minShapes"][0]) == dict(prof.min) and shapes(f["optShapes"][0]) == dict(prof.opt)
    assert shapes(f["maxShapes"][0]) == dict(prof.max)
    assert f["builderOptimizationLevel"] == ["3"] and f["timingCacheFile"] == ["../../.cache/t.cache"]
    assert f["memPoolSize"] == [f"workspace:{s.workspace_bytes // 2**20}"] == ["workspace:4096"]
    assert f["skipInference"] == [True]
    assert {k for k in f if k in ("fp16", "int8", "noTF32", "bf16", "fp8", "stronglyTyped", "best", "calib")} == \
        {flag[2:] for flag in EXPECTED[precision][2]}


def test_two_profiles_give_two_shape_triples_in_order():
    """trtexec makes one profile per --minShapes/--optShapes/--maxShapes triple; their order is the profile index."""
    p, m = encoder()
    small = Profile(m.profiles[0].min, m.profiles[0].min, tuple((n, (64, 32)) for n, _ in m.profiles[0].min))
    s = builder_settings(p, dataclasses.replace(m, profiles=(small, m.profiles[0])))
    f = parse_trtexec(s.trtexec_command("a.onnx", "b.plan", "c.cache"))
    assert [shapes(x)["input_ids"] for x in f["maxShapes"]] == [(64, 32), (64, 256)]


# --- quantized precisions need a Q/DQ graph -----------------------------------------------------------

def qdq_onnx(path: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    g = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                     numpy_helper.from_array(np.array(0, np.int8), "z")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_int8_plan_from_an_unquantized_graph_is_refused(cnn, tmp_path):
    """TensorRT 11 has no implicit INT8 (no calibrator, no INT8 flag): an INT8 build of a plain FP32 graph must stop
    and say how to get a Q/DQ graph (calibration data for ModelOpt), not build a plan of another precision."""
    from tritonkit.export import quantize_ops
    _, unquantized, _ = cnn
    p, m = encoder()
    s = builder_settings(p, dataclasses.replace(m, precision="int8"))
    with pytest.raises(UserError, match="explicitly quantized") as e:
        require_quantized(s, quantize_ops(unquantized), where="cnn")
    assert "calibration data" in str(e.value) and "ModelOpt" in str(e.value)
    require_quantized(s, quantize_ops(qdq_onnx(tmp_path / "qdq.onnx")), where="qdq")
    require_quantized(builder_settings(p, m), {}, where="fp16 needs none")


# --- versions and the build host -----------------------------------------------------------------------

@pytest.mark.parametrize("built,pin,same", [("11.4.0.106", "11.4.0", True), ("11.4.0", "11.4.0", True),
                                            ("11.4.1.5", "11.4.0", False), ("11.40.0.1", "11.4.0", False),
                                            ("10.13.3.9", "11.4.0", False), ("10.1.3", "10.13.3", False),
                                            (None, "11.4.0", False), ("11.4.0.106", None, False)])
def test_tensorrt_versions_match_by_the_pins_components(built, pin, same):
    """'10.1' must not pass for '10.13' nor '11.40' for '11.4' (string prefix), a TensorRT 10 plan is not an 11 one,
    and a build's 4-part version must match a 3-part pin."""
    assert same_tensorrt(built, pin) is same


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the no-TensorRT path; this host has TensorRT")
def test_build_without_tensorrt_stops_before_any_work_and_names_the_container(cnn, tmp_path):
    """`tritonkit build` of an NGC repository (an FP16 plan) on a host without TensorRT must exit 2 with the container
    command, before exporting or writing anything (not a traceback, not a half-built repository). INT8/FP8 plans
    first get their Q/DQ graph made and gated: tests/test_qdq.py."""
    folder, *_ = cnn
    spec, repo = write_cnn_spec(folder, name="cli.yaml"), tmp_path / "repo"
    cli = [sys.executable, "-m", "tritonkit.cli"]
    r = subprocess.run([*cli, "render", "--spec", str(spec), "--gpu", "T4", "--server", "ngc", "--out", str(repo)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    r = subprocess.run([*cli, "build", "--repo", str(repo)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "TensorRT is not installed" in r.stderr and defaults.NGC_TENSORRT_IMAGE in r.stderr
    assert f"{defaults.NGC_TENSORRT_IMAGE} tritonkit build --repo {repo}" in r.stderr
    assert "--no-tensorrt" in r.stderr                 # the explicit fallback: re-plan with ONNX Runtime
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before
    assert not (tmp_path / ".cache").exists()


def fake_tensorrt(monkeypatch, version: str):
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module.Builder = object
    monkeypatch.setitem(sys.modules, "tensorrt", module)


def test_build_host_with_another_tensorrt_is_refused(monkeypatch):
    """A plan built by TensorRT 10.13 (NGC 25.10) fails to load in Triton 26.10 (TensorRT 11.4): refuse to build it."""
    fake_tensorrt(monkeypatch, "10.13.3.9")
    p, _ = encoder()
    with pytest.raises(UserError, match="cannot load") as e:
        require_build_host(p, [(7, 5)])
    assert "10.13.3.9" in str(e.value) and defaults.NGC_TENSORRT_VERSION in str(e.value)
    assert defaults.NGC_TENSORRT_IMAGE in str(e.value)


def test_build_host_without_gpu_or_with_another_architecture_is_refused(monkeypatch):
    """A plan is tied to the architecture that built it: no GPU, or an H100 building for a T4, must stop."""
    from tritonkit import hardware
    fake_tensorrt(monkeypatch, defaults.NGC_TENSORRT_VERSION + ".9")
    p, _ = encoder()
    monkeypatch.setattr(hardware, "detect", lambda: Hardware((), 2, 8 * GIB, "detected"))
    with pytest.raises(UserError, match="this host has none"):
        require_build_host(p, [(7, 5)])
    monkeypatch.setattr(hardware, "detect", lambda: Hardware((CATALOGUE["h100 sxm"],), 2, 8 * GIB, "detected"))
    with pytest.raises(UserError, match="another architecture") as e:
        require_build_host(p, [(7, 5)])
    assert "cc 9.0" in str(e.value) and "cc 7.5" in str(e.value)
    # Accepted on any GPU of the target's cc; the host reports what it has (device 0, the TensorRT it runs),
    # not what the plan names: build.json records those.
    other_t4_class = declared("sm=40,cc=7.5,mem=16GiB").gpus[0]
    monkeypatch.setattr(hardware, "detect", lambda: Hardware((other_t4_class,), 2, 8 * GIB, "detected"))
    host = require_build_host(p, [(7, 5)])
    assert host.gpu == other_t4_class != p.gpu
    assert host.tensorrt_version == defaults.NGC_TENSORRT_VERSION + ".9"     # what it runs, not the pin


def test_network_flags_are_the_members_this_tensorrt_has_or_a_refusal():
    """The strongly typed network is asked for by the enum member's bit (TensorRT's `1 << int(flag)`); a TensorRT
    without the member (older than 9) must be refused naming the image, not fail as an AttributeError mid-build."""
    import enum

    from tritonkit.trt_engine import _bits
    p, m = encoder()
    s = builder_settings(p, m)
    trt = types.SimpleNamespace(__version__="8.6.1")
    flags = enum.IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    assert _bits(trt, flags, s.network_flags, s) == 2
    older = enum.IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0})
    with pytest.raises(UserError, match="no NetworkDefinitionCreationFlag.STRONGLY_TYPED") as e:
        _bits(trt, older, s.network_flags, s)
    assert "8.6.1" in str(e.value) and defaults.NGC_TENSORRT_IMAGE in str(e.value)


def test_placeholder_tensorrt_package_is_recognised(monkeypatch):
    """PyPI's 'tensorrt' placeholder imports but has no API: say so instead of an AttributeError mid-build."""
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(UserError, match="placeholder"):
        import_tensorrt()


# --- the real TensorRT calls (NGC TensorRT container on a GPU) -----------------------------------------

@pytest.fixture()
def trt():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installable from PyPI on this machine (its "
                                                 "packages download from an unreachable host); runs in the NGC "
                                                 "TensorRT container")
    from tritonkit.hardware import detect
    if not detect().gpus:
        pytest.skip("TensorRT builds need a GPU")
    return trt


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cnn_plan_is_built_validated_and_recorded(trt, cnn, tmp_path, precision):
    """The whole TensorRT path on a real engine: settings -> build -> run -> within the precision's tolerance
    of ONNX Runtime -> build.json with the TensorRT version and cc; a second build reuses it, a forced one the
    timing cache."""
    import json

    from tritonkit.build import build
    from tritonkit.hardware import detect
    from tritonkit.render import write_repository
    folder, *_ = cnn
    spec = load_spec(write_cnn_spec(folder, precision=precision, name=f"{precision}.yaml"))
    p = plan(spec, detect(), SERVERS["ngc"])       # --gpu auto: the plan targets this host's GPU
    repo = tmp_path / "repo"
    write_repository(p, repo)
    (result,) = build(repo, progress=False)
    assert result.status == "built", result.summary()
    s = builder_settings(p, p.model("cnn"))
    manifest = json.loads((repo / "cnn" / "1" / "build.json").read_text())
    entry = manifest["plans"][s.plan_file]
    assert same_tensorrt(entry["tensorrt"], defaults.NGC_TENSORRT_VERSION)
    assert entry["compute_capability"] == s.cc and entry["precision"] == precision
    assert entry["validation"]["max_abs_error"] <= spec.models[0].tolerance[precision].atol + 1e-2
    assert entry["engine"]["profiles"][0]["image"] == [[1, 3, 32, 32], [8, 3, 32, 32], [16, 3, 32, 32]]
    out = run_plan(repo / "cnn" / "1" / s.plan_file, {"image": cnn_images(3)})
    assert out["logits"].shape == (3, 10)
    assert build(repo, progress=False)[0].status == "current"
    (again,) = build(repo, progress=False, force=True)
    manifest = json.loads((repo / "cnn" / "1" / "build.json").read_text())
    assert manifest["plans"][s.plan_file]["engine"]["timing_cache"] == "loaded", again.summary()
