"""Where the kit talks to a Docker engine: one Triton container (`tritonkit serve --docker`) and the facts
of running containers (user, mounts, health) that the compose tests check.

Uses the `docker` Python SDK (extra `compose`: pip install 'tritonkit[compose]'), imported lazily so the
rest of the kit never needs it. The images are the ones deploy/docker/ builds: `tritonkit/triton-cpu`
(the embedded tritonserver, no GPU) and `tritonkit/triton:<NGC release>` (NGC, GPU). An image says what
it needs through its labels: `org.tritonkit.accelerator` (cpu | gpu) and `org.tritonkit.repository`
(where it reads the model repository).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import defaults
from .errors import UserError

CPU_IMAGE = "tritonkit/triton-cpu:local"
GPU_IMAGE = f"tritonkit/triton:{defaults.NGC_RELEASE}"
ACCELERATOR_LABEL = "org.tritonkit.accelerator"
REPOSITORY_LABEL = "org.tritonkit.repository"
SERVE_LABEL = "org.tritonkit.serve"     # containers started by `tritonkit serve --docker`
CONTAINER_USER = "1000:1000"            # every tritonkit image runs as this user, never root
INSTALL_FIX = "pip install 'tritonkit[compose]'  (the docker Python SDK)"
ENGINE_FIX = ("start a Docker engine (as root on Debian: bash deploy/ci/docker-setup.sh) or point DOCKER_HOST "
              "at one")
_LOG_TAIL = 40


def engine():
    """A connected docker SDK client, or UserError saying why there is none (SDK missing, no engine)."""
    try:
        import docker
    except ImportError:
        raise UserError("the docker Python SDK is not installed", fix=INSTALL_FIX) from None
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        raise UserError("no Docker engine is reachable", actual=str(exc).splitlines()[0][:300],
                        expected="a running dockerd on DOCKER_HOST or /var/run/docker.sock", fix=ENGINE_FIX) from None
    return client


def engine_unavailable_reason() -> str | None:
    """None when an engine answers; else the one-line reason (for pytest skips and `doctor`-style checks)."""
    try:
        engine().close()
    except UserError as exc:
        return exc.render().replace("\n", ";")
    return None


# --- facts about a container -----------------------------------------------------------------------

@dataclass(frozen=True)
class Mount:
    source: str          # host path, or the volume name
    destination: str     # path inside the container
    kind: str            # "bind" | "volume" | "tmpfs"
    read_only: bool


@dataclass(frozen=True)
class ContainerFacts:
    name: str
    image: str
    status: str              # created | running | exited | ...
    exit_code: int | None    # None while running
    health: str | None       # starting | healthy | unhealthy; None: the container has no healthcheck
    configured_user: str     # Config.User ("" means the image's default: root unless the image says otherwise)
    uid: int | None          # effective uid of the main process (from /proc inside), None when not running
    network_mode: str
    mounts: tuple[Mount, ...]

    def mount(self, destination: str) -> Mount:
        for m in self.mounts:
            if m.destination == destination:
                return m
        raise KeyError(f"{self.name}: nothing mounted at {destination}; mounts: "
                       f"{[m.destination for m in self.mounts]}")


def exec_in(container, command: list[str]) -> tuple[int, str]:
    """Run `command` in a running container (as its own user); exit code and combined output."""
    result = container.exec_run(command, demux=False)
    return result.exit_code, (result.output or b"").decode("utf-8", "replace")


def inspect(container) -> ContainerFacts:
    """What the engine says about `container` (an SDK Container), read fresh."""
    container.reload()
    attrs: dict[str, Any] = container.attrs
    state = attrs["State"]
    uid = None
    if state.get("Running"):
        # The main process (pid 1 in the container's pid namespace): its real uid, as the kernel sees it.
        code, out = exec_in(container, ["cat", "/proc/1/status"])
        uids = [line.split()[1] for line in out.splitlines() if line.startswith("Uid:")] if code == 0 else []
        uid = int(uids[0]) if uids and uids[0].isdigit() else None
    mounts = tuple(Mount(source=m.get("Name") or m.get("Source", ""), destination=m["Destination"],
                         kind=m.get("Type", ""), read_only=not m.get("RW", True)) for m in attrs.get("Mounts", []))
    return ContainerFacts(
        name=container.name, image=attrs["Config"].get("Image", ""), status=state.get("Status", ""),
        exit_code=None if state.get("Running") else state.get("ExitCode"),
        health=(state.get("Health") or {}).get("Status"), configured_user=attrs["Config"].get("User", ""),
        uid=uid, network_mode=attrs["HostConfig"].get("NetworkMode", ""), mounts=mounts)


def write_probe(container, directory: str) -> tuple[bool, str]:
    """Try to create a file in `directory` inside the running container. (True, "") if it could;
    (False, the error the container printed) if not, which is what a read-only repository must give."""
    probe = f"{directory.rstrip('/')}/.tritonkit-write-probe"
    code, out = exec_in(container, ["sh", "-c", f"touch '{probe}' && rm -f '{probe}'"])
    return code == 0, out.strip()


def logs_tail(container, lines: int = _LOG_TAIL) -> str:
    try:
        return container.logs(tail=lines).decode("utf-8", "replace").rstrip()
    except Exception as exc:  # the container may be gone already: the logs are a courtesy here
        return f"(no logs: {exc})"


def wait_healthy(container, timeout_s: float, *, cancel: threading.Event | None = None,
                 poll_s: float = 0.5) -> float:
    """Block until the container's healthcheck says healthy; seconds waited. UserError (with its log tail)
    when it exits, turns unhealthy or times out. Returns early, without error, once `cancel` is set."""
    t0 = time.monotonic()
    while True:
        container.reload()
        state = container.attrs["State"]
        health = (state.get("Health") or {}).get("Status")
        if health == "healthy":
            return time.monotonic() - t0
        if not state.get("Running") or health == "unhealthy":
            what = (f"exited with code {state.get('ExitCode')}" if not state.get("Running")
                    else "is unhealthy (its healthcheck failed)")
            raise UserError(f"container {container.name} {what} before it was ready; its log:\n"
                            + _indent(logs_tail(container)), fix=f"see `docker logs {container.name}`")
        if cancel is not None and cancel.is_set():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise UserError(f"container {container.name} not healthy after {timeout_s:g} s; its log:\n"
                            + _indent(logs_tail(container)), fix="raise the timeout if models load slowly")
        time.sleep(poll_s)


def _indent(text: str) -> str:
    return "\n".join("  | " + line for line in text.splitlines())


# --- tritonkit serve --docker ----------------------------------------------------------------------

def container_config(options, image_labels: dict[str, str], *, bridge: bool) -> dict[str, Any]:
    """Keyword arguments for `containers.run` that serve `options.repository` with the image described
    by `image_labels`. Pure: tests check it without an engine.

    bridge=True: the server listens on 0.0.0.0 inside its own network namespace and the ports are
    published on `options.address` only. bridge=False (an engine without a bridge, e.g. CI's): host
    networking, the server itself binds `options.address`.
    """
    repository = Path(options.repository).resolve()
    target = image_labels.get(REPOSITORY_LABEL, "/models")
    ports = {"TRITON_HTTP_PORT": options.http_port, "TRITON_GRPC_PORT": options.grpc_port,
             "TRITON_METRICS_PORT": options.metrics_port}
    env = {**{k: str(v) for k, v in ports.items()}, "TRITON_MODEL_REPOSITORY": target,
           "TRITON_BIND": "0.0.0.0" if bridge else options.address}
    config: dict[str, Any] = dict(
        environment=env, user=CONTAINER_USER, detach=True, shm_size="1g",
        volumes={str(repository): {"bind": target, "mode": "ro"}},
        labels={SERVE_LABEL: "1", "org.tritonkit.repository.source": str(repository)},
        ulimits=[{"Name": "stack", "Soft": 67108864, "Hard": 67108864}],
        name=f"tritonkit-serve-{options.http_port}")
    if bridge:
        config["ports"] = {f"{p}/tcp": (options.address, p) for p in ports.values()}
    else:
        config["network_mode"] = "host"
    if image_labels.get(ACCELERATOR_LABEL) == "gpu":
        import docker
        config["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        config["ulimits"].append({"Name": "memlock", "Soft": -1, "Hard": -1})  # pinned host memory for CUDA
    return config


def serve_in_docker(options, image: str | None = None, *, on_ready=None) -> int:
    """`tritonkit serve --docker`: serve `options.repository` (mounted read-only) in one Triton container,
    wait until it is healthy, print the URLs, block until SIGINT/SIGTERM, then stop and remove it.

    A container that exits or turns unhealthy raises UserError with its log; nothing is left behind.
    """
    from .serve import _client_host  # the same client address rules as the embedded server

    if not options.fail_fast:
        raise UserError("--degraded is not available with --docker: the container stops on any model that "
                        "fails to load", fix="fix the model, or serve without --docker")
    if options.stub_python is not None:
        raise UserError("--stub-python is not available with --docker: the image brings its own Python "
                        "environment", where="--stub-python", fix="drop --stub-python, or serve without --docker")
    if not Path(options.repository).is_dir():
        raise UserError("model repository does not exist or is not a directory", where=str(options.repository),
                        fix="render one first (`tritonkit render`) or pass the right --repository")
    client = engine()
    import docker

    image = image or CPU_IMAGE
    try:
        labels = client.images.get(image).labels or {}
    except docker.errors.ImageNotFound:
        raise UserError("container image not found on this engine", actual=image,
                        expected=f"{CPU_IMAGE} or {GPU_IMAGE}",
                        fix="build it: deploy/docker/stage.sh, then `docker compose -f docker-compose.yml "
                            "-f docker-compose.cpu.yml build` (README: deploy/docker/README.md)") from None
    bridge = any(n.name == "bridge" for n in client.networks.list(names=["bridge"]))
    config = container_config(options, labels, bridge=bridge)
    try:
        stale = client.containers.get(config["name"])
    except docker.errors.NotFound:
        stale = None
    if stale is not None:
        if stale.labels.get(SERVE_LABEL) != "1":
            raise UserError("a container with this name exists and was not started by tritonkit",
                            actual=config["name"], fix="remove it, or pass another --http-port")
        stale.remove(force=True)

    stop_requested = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop_requested.set())
    container = None
    try:
        try:
            container = client.containers.run(image, **config)
        except docker.errors.APIError as exc:
            raise UserError("the engine refused to start the container", actual=exc.explanation or str(exc),
                            fix="a port in use: stop its owner or pass other --*-port flags; a GPU image: "
                                "install the NVIDIA Container Toolkit") from None
        seconds = wait_healthy(container, defaults.SERVER_READY_TIMEOUT_S, cancel=stop_requested)
        host = _client_host(options.address)
        if not stop_requested.is_set():
            print(f"tritonkit: Triton ready in container {container.name} ({image}, user {CONTAINER_USER}, "
                  f"{'published on ' + options.address if bridge else 'host network'}) after {seconds:.1f} s: "
                  f"HTTP http://{host}:{options.http_port}  gRPC {host}:{options.grpc_port}  "
                  f"metrics http://{host}:{options.metrics_port}/metrics  (repository {options.repository}, "
                  f"read-only; logs: docker logs {container.name})", flush=True)
            if labels.get(ACCELERATOR_LABEL) != "gpu":
                print(f"WARNING: {image} runs the embedded Triton {defaults.EMBEDDED_TRITON_VERSION}: development "
                      f"and CI only (it predates the 2025 Triton security fixes); serve real traffic with "
                      f"{GPU_IMAGE} (from {defaults.NGC_TRITON_IMAGE}).", file=sys.stderr, flush=True)
            if on_ready is not None:
                on_ready(container)
        while not stop_requested.wait(1.0):
            container.reload()
            if container.status != "running":
                raise UserError(f"container {container.name} exited on its own with code "
                                f"{container.attrs['State'].get('ExitCode')}; its log:\n"
                                + _indent(logs_tail(container)))
        print("tritonkit: stopping the container...", file=sys.stderr, flush=True)
        container.stop(timeout=defaults.SERVER_EXIT_TIMEOUT_S + 10)
        container.reload()
        code = container.attrs["State"].get("ExitCode", 0)
    finally:
        if container is not None:
            try:
                container.remove(force=True)
            except docker.errors.APIError:
                pass
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        client.close()
    if code != 0:
        print(f"tritonkit: the container exited with code {code}", file=sys.stderr, flush=True)
        return 1
    return 0
