"""build.json and reproduce.sh for TensorRT plans, and the refusals that read them (render, serve, build).

TensorRT is not installable from PyPI on this machine (its packages download from an unreachable host; see
README.md's support matrix): tests/trt_stand_in.py replaces only the engine build and run (the plan file it
writes records its settings; "running" it answers with ONNX Runtime's outputs). The settings, ONNX checks,
validation with the plan's tolerance, staging, manifests (tritonkit.trt_manifest), scripts and refusals
below are tritonkit's real code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_models import write_cnn_spec
from tests.tiny_models import write_cnn_onnx
from tests.trt_stand_in import StandIn, install
from tritonkit import defaults, servers
from tritonkit.build import build
from tritonkit.catalogue import CATALOGUE
from tritonkit.errors import UserError
from tritonkit.hardware import declared
from tritonkit.policy import plan_fleet
from tritonkit.render import write_repository
from tritonkit.spec import load_spec
from tritonkit.trt_manifest import check_built_plans

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "tritonkit.cli"]
BUILT_WITH = defaults.NGC_TENSORRT_VERSION + ".9"       # what TensorRT of the pinned release reports


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cnn")
    write_cnn_onnx(folder)
    return folder


@pytest.fixture()
def spec_path(cnn_dir, request):
    return write_cnn_spec(cnn_dir, name=f"{request.node.name[:40]}.yaml")


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def the_plans(spec_path: Path, gpus: str = "T4"):
    plans = plan_fleet(load_spec(spec_path), declared(gpus), servers.SERVERS["ngc"])
    return plans if len(plans) > 1 else plans[0]


def build_with_stand_in(monkeypatch, spec_path: Path, repo: Path, *, gpus: str = "T4", host: str = "tesla t4",
                        version: str = BUILT_WITH, perturb=None, force: bool = False):
    plans = the_plans(spec_path, gpus)
    if not repo.exists():
        write_repository(plans, repo)
    install(monkeypatch, StandIn(version=version, gpu=CATALOGUE[host],
                                 **({"perturb": perturb} if perturb else {})))
    return build(repo, progress=False, force=force)


def entry_profile(entry: dict):
    """The plan's recorded profile 0 as (input, shape) pairs per min/opt/max."""
    from tritonkit.plan import Profile
    return Profile(*(tuple((n, tuple(d)) for n, d in entry["profiles"][0][w].items()) for w in ("min", "opt", "max")))


def manifest(repo: Path) -> dict:
    return json.loads((repo / "cnn" / "1" / "build.json").read_text())


# --- what build.json records -------------------------------------------------------------------------

def test_plan_manifest_records_what_built_it_and_how_close_it_measured(monkeypatch, spec_path, tmp_path, cnn_dir):
    """A plan must say which source bytes, TensorRT, GPU/cc, precision, profiles, ONNX and tolerances made it, and
    the error it measured: without that nobody can tell whether it will load or why it differs."""
    from tritonkit.compare import run_onnx, synthetic_feeds
    from tritonkit.spec import load_spec
    repo = tmp_path / "repo"
    offset = 1e-3     # the stand-in's plan answers its ONNX's outputs + offset: part of the error to be measured
    (result,) = build_with_stand_in(monkeypatch, spec_path, repo,
                                    perturb=lambda outs: {k: v + offset for k, v in outs.items()})
    assert result.status == "built" and result.artifacts == ("model.sm75.plan",), result.summary()
    m = manifest(repo)
    entry = m["plans"]["model.sm75.plan"]
    assert entry["tensorrt"] == BUILT_WITH and entry["tensorrt_pin"] == defaults.NGC_TENSORRT_VERSION
    assert (entry["gpu"], entry["compute_capability"], entry["precision"]) == ("Tesla T4", "7.5", "fp16")
    assert entry["network_flags"] == ["STRONGLY_TYPED"] and entry["cleared_flags"] == []
    assert entry["builder_optimization_level"] == 3 and entry["workspace_bytes"] == 4 * 2**30
    assert entry["profiles"] == [{"min": {"image": [1, 3, 32, 32]}, "opt": {"image": [8, 3, 32, 32]},
                                  "max": {"image": [16, 3, 32, 32]}}]
    source_sha = hashlib.sha256((cnn_dir / "cnn.onnx").read_bytes()).hexdigest()
    assert m["source"]["sha256"] == source_sha == entry["onnx"]["fp32"]["sha256"] == \
        entry["recipe"]["source"]["sha256"] == entry["onnx"]["precision"]["recipe"]["fp32_sha256"]
    fp16 = entry["onnx"]["precision"]          # TensorRT 11 built the plan from this AutoCast graph, gated first
    assert fp16["mode"] == "fp16" and fp16["gate"]["failures"] == [] and entry["onnx_precision"].startswith("ModelOpt")
    assert fp16["sha256"] == hashlib.sha256(Path(fp16["path"]).read_bytes()).hexdigest()
    assert entry["sha256"] == m["files"]["model.sm75.plan"] == \
        hashlib.sha256((repo / "cnn" / "1" / "model.sm75.plan").read_bytes()).hexdigest()
    v = entry["validation"]
    assert v["reference"].startswith("ONNX Runtime") and [r["inputs"] for r in v["runs"]] == \
        ["profile 0 min shapes", "profile 0 opt shapes", "profile 0 max shapes"]
    assert v["atol"] == 2e-2 and v["rtol"] == 1e-2
    # measured by validation, per run: the plan's outputs (its FP16 graph + offset) against the FP32 graph
    spec_model = load_spec(spec_path).models[0]
    for run, which in zip(v["runs"], ("min", "opt", "max")):
        feeds = synthetic_feeds(spec_model.inputs, dict(getattr(entry_profile(entry), which)), defaults.VALIDATION_SEED)
        want = float(np.abs(run_onnx(Path(fp16["path"]), feeds)["logits"] + offset
                            - run_onnx(cnn_dir / "cnn.onnx", feeds)["logits"]).max())
        assert run["max_abs_error"] == pytest.approx(want, rel=1e-6) and run["max_abs_error"] > offset / 2
    assert v["max_abs_error"] == max(r["max_abs_error"] for r in v["runs"])
    assert m["recipe"]["tolerance"] == {
        "fp16": {"atol": 2e-2, "rtol": 1e-2, "min_cosine": 0.999, "min_neighbour_overlap": None,
                 "min_top1_agreement": None},
        "fp32": {"atol": 1e-5, "rtol": 1e-4, "min_cosine": None, "min_neighbour_overlap": None,
                 "min_top1_agreement": None}}
    assert build(repo, progress=False)[0].status == "current"


def test_reproduce_sh_runs_the_same_trtexec_and_tritonkit_build(monkeypatch, spec_path, tmp_path, cnn_dir):
    """reproduce.sh must actually run, and run the same build: its trtexec line with the plan's shapes,
    precision, level, workspace and timing cache, and the tritonkit line that rebuilds this repository."""
    repo = tmp_path / "repo"
    build_with_stand_in(monkeypatch, spec_path, repo)
    folder = repo / "cnn" / "1"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("trtexec", "tritonkit"):
        (bin_dir / tool).write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_DIR/{tool}"\n')
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ARGS_DIR": str(tmp_path)}
    for mode in (["trtexec"], []):
        r = subprocess.run(["bash", str(folder / "reproduce.sh"), *mode], capture_output=True, text=True, env=env,
                           cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    args = dict(a[2:].partition("=")[::2] for a in (tmp_path / "trtexec").read_text().splitlines())
    assert args["saveEngine"] == "model.sm75.plan" and args["stronglyTyped"] == "" and "fp16" not in args
    assert (folder / args["onnx"]).resolve() == Path(manifest(repo)["plans"]["model.sm75.plan"]["onnx"]["precision"]
                                                     ["path"]).resolve()      # the FP16 graph it was built from
    assert (args["minShapes"], args["optShapes"], args["maxShapes"]) == \
        ("image:1x3x32x32", "image:8x3x32x32", "image:16x3x32x32")
    assert args["builderOptimizationLevel"] == "3" and args["memPoolSize"] == "workspace:4096"
    assert (folder / args["timingCacheFile"]).resolve() == \
        (tmp_path / ".cache" / "tritonkit" / f"timing-sm75-trt{defaults.NGC_TENSORRT_VERSION}.cache").resolve()
    assert (folder / args["timingCacheFile"]).is_file()       # the build saved the cache there
    command, flag, where, force = (tmp_path / "tritonkit").read_text().splitlines()
    assert (command, flag, Path(where).resolve(), force) == ("build", "--repo", repo.resolve(), "--force")
    assert defaults.NGC_TENSORRT_IMAGE in (folder / "reproduce.sh").read_text()
    recorded = manifest(repo)["plans"]["model.sm75.plan"]["trtexec"]    # per plan, for fleets
    assert recorded in (folder / "reproduce.sh").read_text()


# --- render refuses stale plans --------------------------------------------------------------------

def test_render_refuses_a_plan_built_by_another_tensorrt_and_leaves_the_repository_as_it_was(
        monkeypatch, spec_path, tmp_path):
    """A plan from TensorRT 10.13 (NGC 25.10) in a 26.10 (TensorRT 11.4) repository fails with "Magic tag does not
    match" at load time; render must refuse it by name, say how to rebuild, exit 2 and change nothing."""
    repo = tmp_path / "repo"
    build_with_stand_in(monkeypatch, spec_path, repo, version="10.13.3.9")
    before = tree(repo)
    r = subprocess.run([*CLI, "render", "--spec", str(spec_path), "--gpu", "T4", "--server", "ngc", "--out", str(repo)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "cnn/1/model.sm75.plan: built with TensorRT 10.13.3.9" in r.stderr
    assert f"loads plans with TensorRT {defaults.NGC_TENSORRT_VERSION}" in r.stderr
    assert f"{defaults.NGC_TENSORRT_IMAGE} tritonkit build" in r.stderr and "rm " in r.stderr
    assert tree(repo) == before


def test_render_refuses_plans_once_the_serving_release_moves_on(monkeypatch, spec_path, tmp_path):
    """Bumping the NGC pin (new Triton, new TensorRT) makes every existing plan stale: the next render must
    say so instead of shipping a repository whose plans the new server cannot load."""
    repo = tmp_path / "repo"
    build_with_stand_in(monkeypatch, spec_path, repo)
    before = tree(repo)
    bumped = dataclasses.replace(servers.SERVERS["ngc"], tensorrt_version="11.5.0", triton_version="2.75.0")
    monkeypatch.setitem(servers.SERVERS, "ngc", bumped)
    with pytest.raises(UserError, match="TensorRT 11.5.0") as e:
        write_repository(the_plans(spec_path), repo)
    assert f"built with TensorRT {BUILT_WITH}" in str(e.value)
    assert tree(repo) == before
    monkeypatch.setitem(servers.SERVERS, "ngc", dataclasses.replace(bumped, tensorrt_version=defaults.NGC_TENSORRT_VERSION))
    write_repository(the_plans(spec_path), repo)      # the pin it was built for: carried over unchanged
    assert tree(repo)["cnn/1/model.sm75.plan"] == before["cnn/1/model.sm75.plan"]


def test_render_refuses_a_plan_recorded_for_another_compute_capability(monkeypatch, spec_path, tmp_path):
    """An L4 (cc 8.9) plan copied in as the T4 file would be loaded on T4s by cc_model_filenames and fail."""
    repo = tmp_path / "repo"
    build_with_stand_in(monkeypatch, spec_path, repo)
    m = manifest(repo)
    m["plans"]["model.sm75.plan"].update(compute_capability="8.9", gpu="NVIDIA L4")
    (repo / "cnn" / "1" / "build.json").write_text(json.dumps(m))
    before = tree(repo)
    with pytest.raises(UserError, match=r"built for compute capability 8\.9 \(NVIDIA L4\); the config loads it on "
                                        r"cc 7\.5 GPUs"):
        write_repository(the_plans(spec_path), repo)
    assert tree(repo) == before


def test_a_plan_file_without_a_build_record_is_refused(monkeypatch, spec_path, tmp_path):
    """A plan dropped in by hand has no record of its TensorRT or GPU: refuse it rather than guess."""
    repo = tmp_path / "repo"
    build_with_stand_in(monkeypatch, spec_path, repo)
    (repo / "cnn" / "1" / "build.json").unlink()
    with pytest.raises(UserError, match="no build.json record"):
        write_repository(the_plans(spec_path), repo)


# --- serve refuses them too ---------------------------------------------------------------------------

def test_serve_refuses_a_mismatched_plan_with_the_rebuild_command(monkeypatch, spec_path, tmp_path):
    """serve's check of the repository (serve.refuse_mismatched_plans, which EmbeddedServer.start runs before
    launching) must refuse a stale plan by name with the command that rebuilds it (UserError: exit 2)."""
    from tritonkit.serve import refuse_mismatched_plans
    repo = tmp_path / "repo"
    build_with_stand_in(monkeypatch, spec_path, repo, version="10.13.3.9")
    with pytest.raises(UserError, match="refusing to serve") as e:
        refuse_mismatched_plans(repo)
    assert "cnn/1/model.sm75.plan: built with TensorRT 10.13.3.9" in str(e.value)
    assert f"{defaults.NGC_TENSORRT_IMAGE} tritonkit build --repo {repo}" in str(e.value)


def test_serve_refuses_a_gpu_without_a_plan_for_its_architecture(monkeypatch, spec_path, tmp_path):
    """On an H100 host, a repository holding only the T4 plan cannot serve: say which cc is missing."""
    repo = tmp_path / "repo"
    build_with_stand_in(monkeypatch, spec_path, repo)
    plan_json = json.loads((repo / "plan.json").read_text())
    check_built_plans(repo, plan_json, action="serve", gpu_ccs=["7.5"])          # the T4 it was built for
    with pytest.raises(UserError, match="cc 9.0 GPU and no matching plan"):
        check_built_plans(repo, plan_json, action="serve", gpu_ccs=["7.5", "9.0"])


def test_a_plan_json_of_another_format_is_refused_not_read_as_planning_no_plans(monkeypatch, spec_path, tmp_path):
    """A plan.json this tritonkit cannot read (an older format) must not pass as "no TensorRT models", which
    would wave a stale plan through to the server."""
    repo = tmp_path / "repo"
    build_with_stand_in(monkeypatch, spec_path, repo, version="10.13.3.9")
    plan_json = json.loads((repo / "plan.json").read_text())
    older = {**plan_json["plans"][0], "generator": "tritonkit"}      # format 1: one bare plan record
    with pytest.raises(UserError, match="another tritonkit version"):
        check_built_plans(repo, older, action="serve")


# --- fleets, failures, and builds without TensorRT ---------------------------------------------------------

def test_fleet_builds_each_architecture_on_its_own_gpu_and_keeps_the_others(monkeypatch, spec_path, tmp_path):
    """A T4+H100 repository is built on a T4 and on an H100: each build adds its plan and keeps the other's
    record, the other architecture is reported as skipped (not silently missing), and render keeps both."""
    repo = tmp_path / "repo"
    results = build_with_stand_in(monkeypatch, spec_path, repo, gpus="T4,H100", host="tesla t4")
    assert [(r.artifacts, r.status) for r in results] == [(("model.sm75.plan",), "built"),
                                                          (("model.sm90.plan",), "skipped")]
    assert "compute capability 9.0" in results[1].detail
    results = build_with_stand_in(monkeypatch, spec_path, repo, gpus="T4,H100", host="h100 sxm")
    assert [r.status for r in results] == ["current", "built"]
    entries = manifest(repo)["plans"]
    assert {f: (e["compute_capability"], e["gpu"]) for f, e in entries.items()} == \
        {"model.sm75.plan": ("7.5", "Tesla T4"), "model.sm90.plan": ("9.0", "H100 SXM")}
    before = tree(repo)
    write_repository(the_plans(spec_path, "T4,H100"), repo)
    assert {k: v for k, v in tree(repo).items() if k.startswith("cnn/1/")} == \
        {k: v for k, v in before.items() if k.startswith("cnn/1/")}
    check_built_plans(repo, json.loads((repo / "plan.json").read_text()), action="serve", gpu_ccs=["7.5", "9.0"])


def test_failed_plan_validation_leaves_the_previous_plan_and_manifest_byte_identical(monkeypatch, spec_path,
                                                                                     tmp_path):
    """A rebuild whose plan is off by more than the tolerance must fail (exit 2) and keep serving the old,
    validated plan: nothing half-written, nothing replaced."""
    repo = tmp_path / "repo"
    build_with_stand_in(monkeypatch, spec_path, repo)
    before = tree(repo)
    with pytest.raises(UserError, match="does not match ONNX Runtime") as e:
        build_with_stand_in(monkeypatch, spec_path, repo, force=True,
                            perturb=lambda outs: {k: v + 0.5 for k, v in outs.items()})
    assert "tolerance.fp16" in str(e.value)
    assert tree(repo) == before
    assert not [p for p in (repo / "cnn").iterdir() if p.name.startswith(".build-")]


def test_plans_are_held_to_their_own_precisions_tolerance(monkeypatch, cnn_dir, tmp_path):
    """FP16 rounding is within tolerance.fp16 but not tolerance.fp32: an FP16 plan with that error passes, an
    FP32 plan with the same error must be refused (it would mean TensorRT did not build what was asked)."""
    fp16_rounding = lambda outs: {k: v.astype(np.float16).astype(np.float32) for k, v in outs.items()}  # noqa: E731
    spec16 = write_cnn_spec(cnn_dir, precision="fp16", name="p16.yaml")
    (r,) = build_with_stand_in(monkeypatch, spec16, tmp_path / "r16", perturb=fp16_rounding)
    err = manifest(tmp_path / "r16")["plans"]["model.sm75.plan"]["validation"]["max_abs_error"]
    assert r.status == "built" and 0 < err < 2e-2
    spec32 = write_cnn_spec(cnn_dir, precision="fp32", name="p32.yaml")
    with pytest.raises(UserError, match="FP32 plan does not match ONNX Runtime") as e:
        build_with_stand_in(monkeypatch, spec32, tmp_path / "r32", perturb=fp16_rounding)
    assert "tolerance.fp32" in str(e.value)


def test_a_current_plan_needs_no_tensorrt_but_a_rebuild_does(monkeypatch, spec_path, tmp_path):
    """`tritonkit build` on a laptop after the plan was built in the container must report it current, not
    demand TensorRT; --force there must refuse with the container command."""
    repo = tmp_path / "repo"
    build_with_stand_in(monkeypatch, spec_path, repo)
    monkeypatch.undo()                     # the real TensorRT functions again
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("this host has TensorRT: the no-TensorRT half of this test does not apply")
    assert [r.status for r in build(repo, progress=False)] == ["current"]
    with pytest.raises(UserError, match="TensorRT is not installed") as e:
        build(repo, progress=False, force=True)
    assert defaults.NGC_TENSORRT_IMAGE in str(e.value)
