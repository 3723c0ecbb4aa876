"""Step: rendered model repository -> running server (the tritonserver bundled in nvidia-pytriton).

The embedded server is a real `tritonserver` 2.51 with only the python backend. It is for development
and CI: it predates the 2025 security fixes, so it binds 127.0.0.1 by default and `serve()` says so.

Where the server comes from is tritonkit.embedded_triton, how its process is started and stopped
tritonkit.process, and what stops a server whose model stopped serving tritonkit.watchdog.

Stdlib only (urllib for health polling) so `tritonkit serve --help` and this import stay fast.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from tritonkit import process, stub_env
from tritonkit.defaults import (
    BIND_ADDRESS,
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    NGC_TRITON_IMAGE,
    SERVER_EXIT_TIMEOUT_S,
    SERVER_READY_TIMEOUT_S,
    WATCHDOG_STOP_S,
)
from tritonkit.embedded_triton import PYTRITON_DIST, STUB_NAME, EmbeddedTriton, find_embedded_triton
from tritonkit.errors import UserError
from tritonkit.stub_env import StubEnvironment
from tritonkit.watchdog import ModelStoppedServing, Watchdog

LOG = logging.getLogger(__name__)

# APIs that 2.51 can restrict (`tritonserver --help`: --http-restricted-api / --grpc-restricted-protocol).
RESTRICTABLE_APIS = frozenset({"health", "metadata", "inference", "shared-memory", "model-config",
                               "model-repository", "statistics", "trace", "logging"})
# Default: restrict the APIs that change the server or read/write its memory (model load/unload and
# repository index, shared-memory registration, trace and log settings). Left open on purpose:
# `statistics` and `model-config`, because the bench step reads per-model queue/compute statistics and
# the served config, and tritonclient's perf tools call both without custom headers. Health, metadata
# and inference are the serving surface itself.
# The header value is a random token per server; it is visible in /proc/<pid>/cmdline to local users,
# so this is defence in depth behind the 127.0.0.1 bind, not an authentication scheme.
DEFAULT_RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
ADMIN_HEADER = "tritonkit-admin"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # 2.51 prepends this to the key for gRPC metadata

_STOP_MARGIN_S = 10.0      # beyond --exit-timeout-secs: model unload and stub shutdown after the timeout
_POLL_INTERVAL_S = 0.1
_LOG_TAIL_LINES = 30
# Lines of a tritonserver log that explain a failure ("E1124 04:09:40.010 ..." severity prefix, or the
# final "error: creating server: ..." line). Logged on every start without a GPU, and harmless there:
# the CUDA/NVML/DCGM messages below, which must not be mistaken for the cause of a failure.
_ERROR_LINE = re.compile(r"^(E\d{4} |error: )|failed to load|Failed to (start|create)|already in use")
_NO_GPU_NOISE = re.compile(r"CudaDriverHelper has not been initialized|Failed to initialize NVML|DCGM unable to start")
_FAILED_MODEL = re.compile(r"failed to load '([^']+)'")


# --- Options ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerOptions:
    """How to run the embedded server. Validated on construction; the repository is checked in start()."""

    repository: Path
    address: str = BIND_ADDRESS     # http, grpc and metrics all bind here; 0.0.0.0 only if the user asks
    http_port: int = HTTP_PORT
    grpc_port: int = GRPC_PORT
    metrics_port: int = METRICS_PORT
    fail_fast: bool = True          # --exit-on-error: a model that fails to load stops the server (exit 1)
    exit_timeout_s: int = SERVER_EXIT_TIMEOUT_S
    log_verbose: int = 0
    log_file: Path | None = None    # tritonserver stdout+stderr; default: <tmp>/tritonkit-serve-*/tritonserver.log
    extra_env: Mapping[str, str] = field(default_factory=dict, hash=False)  # added to the server's env
    restricted_apis: tuple[str, ...] = DEFAULT_RESTRICTED_APIS  # see DEFAULT_RESTRICTED_APIS for the why
    strict_model_config: bool = False  # --disable-auto-complete-config: config.pbtxt must be complete
    stub_python: Path | None = None    # Python whose environment the python backend stub uses (tritonkit.stub_env)

    def __post_init__(self) -> None:
        object.__setattr__(self, "repository", Path(self.repository))
        for name in ("log_file", "stub_python"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "restricted_apis", tuple(self.restricted_apis))
        object.__setattr__(self, "extra_env", MappingProxyType(dict(self.extra_env)))  # read-only copy
        ports = {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}
        for name, port in ports.items():
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise UserError(f"invalid {name} port", actual=port, expected="an integer in 1..65535",
                                fix=f"pass another --{name}-port")
        if len(set(ports.values())) != 3:
            raise UserError("http, grpc and metrics ports must differ", actual=ports,
                            expected="three distinct ports")
        if self.exit_timeout_s < 0 or self.log_verbose < 0:
            raise UserError("exit timeout and log verbosity must be >= 0",
                            actual=(self.exit_timeout_s, self.log_verbose), expected=">= 0")
        unknown = sorted(set(self.restricted_apis) - RESTRICTABLE_APIS)
        if unknown:
            raise UserError("unknown API in restricted_apis", actual=unknown,
                            expected=f"names from {sorted(RESTRICTABLE_APIS)}")
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            raise UserError("the bind address must be an IP address", actual=self.address,
                            expected="e.g. 127.0.0.1 (loopback only) or 0.0.0.0 (all interfaces)") from None


def _client_host(address: str) -> str:
    """Where a local client connects for a server bound to `address` (a wildcard means loopback)."""
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified:
        return "127.0.0.1" if ip.version == 4 else "[::1]"
    return address if ip.version == 4 else f"[{address}]"


# --- TensorRT plans must match the server and the GPUs that load them --------------------------------

def refuse_mismatched_plans(repository: Path) -> None:
    """UserError (exit 2) before launch when a built TensorRT plan would not load here.

    Reads the repository's plan.json (nothing to check without one or without TensorRT models): every
    plan's build.json must name the target server's TensorRT (current pin) and the compute capability
    its config maps it to, and each GPU detected on this host needs a plan built for its cc.
    """
    plan_file = Path(repository) / "plan.json"
    try:
        plan_json = json.loads(plan_file.read_text())
    except (OSError, ValueError):
        return
    from tritonkit.trt_manifest import check_built_plans, expected_plans, plan_records
    if not expected_plans(plan_records(plan_json)):
        return
    from tritonkit.hardware import detect
    ccs = sorted({f"{g.compute_capability[0]}.{g.compute_capability[1]}" for g in detect().gpus})
    check_built_plans(Path(repository), plan_json, action="serve", gpu_ccs=ccs)


# --- The server process ----------------------------------------------------------------------------

class EmbeddedServer:
    """One real tritonserver process: start() -> wait_ready() -> ... -> stop(). A context manager too."""

    def __init__(self, options: ServerOptions, triton: EmbeddedTriton | None = None):
        self.options = options
        self._triton = triton
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._log_offset = 0
        self._token = secrets.token_urlsafe(24)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        self.server_version: str | None = None
        self.models: dict[str, str] = {}          # name -> state, from the repository index once ready
        self.failed_models: dict[str, str] = {}   # name -> reason (only possible with fail_fast=False)
        self._healthy: dict[str, int] | None = None  # model -> stub count, set by mark_healthy()
        self._stub_env: StubEnvironment | None = None

    # -- addresses
    @property
    def http_url(self) -> str:
        return f"{_client_host(self.options.address)}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_client_host(self.options.address)}:{self.options.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"{_client_host(self.options.address)}:{self.options.metrics_port}"

    @property
    def admin_headers(self) -> dict[str, str]:
        """Headers that unlock the restricted APIs of this server, for HTTP and gRPC clients alike.

        2.51 checks the HTTP header `<key>` but the gRPC metadata key `triton-grpc-protocol-<key>`
        ("This protocol is restricted, expecting header 'triton-grpc-protocol-tritonkit-admin'"); each
        transport ignores the other's key, so one dict serves both.
        """
        return {ADMIN_HEADER: self._token, f"{GRPC_HEADER_PREFIX}{ADMIN_HEADER}": self._token}

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        """tritonserver's exit code; None while it runs (or before start)."""
        return self._proc.poll() if self._proc else None

    @property
    def stub_environment(self) -> StubEnvironment:
        """The Python the python backend stub will run models in, probed once (UserError if unusable)."""
        if self._stub_env is None:
            self._stub_env = stub_env.resolve(self.options.stub_python)
        return self._stub_env

    @property
    def triton(self) -> EmbeddedTriton:
        if self._triton is None:
            self._triton = find_embedded_triton(python_version=self.stub_environment.version)
        return self._triton

    def command(self) -> list[str]:
        """The exact tritonserver command line (also written at the top of the log)."""
        o, t = self.options, self.triton
        cmd = [
            str(t.binary),
            f"--model-repository={o.repository.resolve()}",
            f"--backend-directory={t.backend_dir}",
            f"--http-address={o.address}", f"--http-port={o.http_port}",
            f"--grpc-address={o.address}", f"--grpc-port={o.grpc_port}",
            # 2.51 defaults metrics to the HTTP address; explicit anyway, in case a build has no HTTP.
            f"--metrics-address={o.address}", f"--metrics-port={o.metrics_port}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            f"--exit-on-error={'true' if o.fail_fast else 'false'}",
            f"--exit-timeout-secs={o.exit_timeout_s}",
            f"--log-verbose={o.log_verbose}",
        ]
        if t.cache_dir is not None:
            cmd.append(f"--cache-directory={t.cache_dir}")
        if o.strict_model_config:
            cmd.append("--disable-auto-complete-config")
        if o.restricted_apis:
            # 2.51 syntax is "<api>,<api>:<header>=<value>"; its --help text says "," before the
            # header, but only ":" parses ("option format is '<config name>:<setting>=<value>'").
            rule = f"{','.join(o.restricted_apis)}:{ADMIN_HEADER}={self._token}"
            cmd += [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
        return cmd

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(self.triton.lib_dir), env.get("LD_LIBRARY_PATH", "")) if p)
        env.update(self.options.extra_env)
        # The python backend stub embeds libpython and takes its sys.prefix from the first `python3`
        # on PATH: the checked environment goes first (tritonkit.stub_env).
        env["PATH"] = os.pathsep.join(p for p in (str(self.stub_environment.bin_dir), env.get("PATH", "")) if p)
        return env

    # -- lifecycle
    def start(self) -> None:
        """Check the repository and the ports, then launch. Raises UserError before launching anything."""
        if self._proc is not None:
            raise RuntimeError("EmbeddedServer.start() called twice; create a new EmbeddedServer")
        o = self.options
        if not o.repository.is_dir():
            what = "is not a directory" if o.repository.exists() else "does not exist"
            raise UserError(f"model repository {what}", where=str(o.repository),
                            fix="render one first (`tritonkit render`) or pass the right --repository")
        refuse_mismatched_plans(o.repository)
        self._check_configs()
        for name, port in (("http", o.http_port), ("grpc", o.grpc_port), ("metrics", o.metrics_port)):
            process.check_port_free(o.address, port, name)
        triton = self.triton  # may raise UserError (not installed; stub environment unusable)

        if o.log_file is not None:
            self._log_path = o.log_file
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self._log_path = Path(tempfile.mkdtemp(prefix="tritonkit-serve-")) / "tritonserver.log"
        cmd = self.command()
        with open(self._log_path, "ab") as log:
            shown = " ".join(cmd).replace(self._token, "<token>")  # the log may be shared, the token not
            log.write(f"# tritonkit: Triton {triton.version}: {shown}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self._env(),
                start_new_session=True,  # own process group: stop() kills the python backend stubs too
                pass_fds=() if triton.lock_fd is None else (triton.lock_fd,),  # the backend folder's lock
                preexec_fn=process.pdeathsig_preexec(os.getpid()))
        LOG.info("tritonserver pid %d, log %s", self._proc.pid, self._log_path)

    def _check_configs(self) -> None:
        """Every config.pbtxt against the rules tritonserver applies at load (tritonkit.render's checks),
        before launching: fail fast names each bad model and why; degraded mode warns and lets Triton
        fail those models (they are then reported not ready)."""
        from tritonkit.render import validate_repository
        problems = validate_repository(self.options.repository)
        if not problems:
            return
        text = "\n".join(str(p) for p in problems)
        if self.options.fail_fast:
            raise UserError(f"{len(problems)} model config(s) would not load; tritonserver not started:\n{text}",
                            where=str(self.options.repository),
                            fix="fix the config(s) above, or pass --degraded to serve the other models")
        LOG.warning("model config(s) that will fail to load (degraded mode: serving the others):\n%s", text)

    def _request(self, method: str, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://{self.http_url}{path}", method=method, headers=self.admin_headers,
                                     data=b"" if method == "POST" else None)
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def _poll(self) -> bool:
        """True once the server says ready and every model in its index is READY (or, with
        fail_fast=False, every model has finished loading: READY or UNAVAILABLE with a reason)."""
        try:
            live, _ = self._request("GET", "/v2/health/live")
            if live != 200:
                return False
            ready, _ = self._request("GET", "/v2/health/ready")
            status, body = self._request("POST", "/v2/repository/index")
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False
        if status != 200:
            return False
        index = json.loads(body or b"[]")
        models = {m["name"]: m.get("state", "") for m in index}
        if ready == 200 and all(state == "READY" for state in models.values()):
            self.models, self.failed_models = models, {}
            return True
        if not self.options.fail_fast and all(m.get("state") in ("READY", "UNAVAILABLE") for m in index):
            self.models = models
            self.failed_models = {m["name"]: m.get("reason", "") for m in index if m.get("state") != "READY"}
            return True
        self.models = models
        return False

    def wait_ready(self, timeout_s: float = SERVER_READY_TIMEOUT_S, *,
                   cancel: threading.Event | None = None) -> None:
        """Block until ready. UserError (with the log excerpt) if the process dies or time runs out.

        `cancel` (set from a signal handler) makes it return early without error.
        """
        if self._proc is None:
            raise RuntimeError("EmbeddedServer.wait_ready() before start()")
        deadline = time.monotonic() + timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                process.kill_group(self._proc.pid)
                log = self._read_log()
                failed = sorted(set(_FAILED_MODEL.findall(log)))
                what = f"tritonserver exited with code {code} before it was ready"
                if failed:
                    what += f": model(s) failed to load: {', '.join(failed)}"
                fix = "fix the model named above (its config.pbtxt or model.py)"
                if "ModuleNotFoundError" in log:
                    fix = f"install the missing module into the Python that runs the models ({self.stub_environment.python})"
                raise UserError(f"{what}\n{self.log_excerpt()}", where=str(self.options.repository),
                                fix=f"{fix}; full log: {self._log_path}")
            if self._poll():
                break
            if cancel is not None and cancel.is_set():
                return
            if time.monotonic() >= deadline:
                pending = {n: s for n, s in self.models.items() if s != "READY"} or "server not ready"
                raise UserError(f"tritonserver not ready after {timeout_s:g} s (not ready: {pending})\n"
                                f"{self.log_excerpt()}", where=str(self.options.repository),
                                fix=f"raise the ready timeout if models load slowly; full log: {self._log_path}")
            time.sleep(_POLL_INTERVAL_S)
        try:
            status, body = self._request("GET", "/v2")
            if status == 200:
                self.server_version = json.loads(body).get("version")
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if self.server_version and self.server_version != self.triton.version:
            LOG.warning("tritonserver reports version %s, expected %s", self.server_version, self.triton.version)
        for name, reason in self.failed_models.items():
            LOG.warning("model %s failed to load (fail_fast is off, serving the others): %s", name, reason)

    # -- health (what serve()'s watchdog checks)
    def stub_pids(self) -> dict[str, set[int]]:
        """Live python backend stubs of this server, by model name (the stub's command line names
        <repository>/<model>/<version>/model.py)."""
        if self._proc is None:
            return {}
        root = self.options.repository.resolve()
        stubs: dict[str, set[int]] = {}
        for pid in process.group_members(self._proc.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(argv) < 2 or not argv[0].endswith(STUB_NAME.encode()):
                continue
            model_py = Path(os.fsdecode(argv[1]))
            try:
                name = model_py.resolve().relative_to(root).parts[0]
            except ValueError:
                name = model_py.parts[-3] if len(model_py.parts) >= 3 else str(model_py)
            stubs.setdefault(name, set()).add(pid)
        return stubs

    def mark_healthy(self) -> None:
        """Take the current state as the reference: the models that are READY now and how many stubs
        each runs. `unhealthy_models` compares against it (serve() calls this once the server is ready)."""
        self._healthy = {name: len(pids) for name, pids in self.stub_pids().items()}
        for name, state in self.models.items():
            if state == "READY":
                self._healthy.setdefault(name, 0)

    def unhealthy_models(self) -> dict[str, str]:
        """Models that were healthy at `mark_healthy` and are not now: name -> why.

        Two checks, because 2.51 reports only the first: the model's own readiness endpoint, and that
        as many python backend stubs run for it as did then. A stub killed by a signal leaves its model
        READY in 2.51; every request to it then fails with "Stub process '<instance>' is not healthy".
        """
        if self._proc is None or self._healthy is None:
            return {}
        stubs = self.stub_pids()
        problems: dict[str, str] = {}
        for name, expected in self._healthy.items():
            alive = len(stubs.get(name, ()))
            if alive < expected:
                problems[name] = (f"{expected - alive} of its {expected} python backend stub process(es) died "
                                  f"(tritonserver {self.triton.version} neither restarts them nor marks the model "
                                  "not ready; its requests fail)")
                continue
            path = f"/v2/models/{urllib.parse.quote(name, safe='')}/ready"
            try:
                status, _ = self._request("GET", path, timeout=1.0)
            except (urllib.error.URLError, OSError):
                continue  # the server itself is checked separately (its process exit)
            if status != 200:
                problems[name] = f"tritonserver reports it not ready (HTTP {status} from its ready endpoint)"
        return problems

    def stop(self, grace_s: float | None = None) -> int:
        """SIGTERM, wait `grace_s` (default: exit_timeout_s + margin), then SIGKILL the whole group.
        Returns the exit code (negative: killed by that signal; 0 if never started). Idempotent."""
        if self._proc is None:
            return 0
        grace = self.options.exit_timeout_s + _STOP_MARGIN_S if grace_s is None else grace_s
        return process.stop_group(self._proc, grace)  # on SIGTERM tritonserver unloads models, ends its stubs

    # -- logs
    def _read_log(self) -> str:
        if self._log_path is None:
            return ""
        try:
            with open(self._log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_excerpt(self, tail: int = _LOG_TAIL_LINES) -> str:
        """Error lines of this run's log (a failing model is reported long before the last lines),
        then its last `tail` lines. Each line is cut at 600 characters."""
        # Tables (options, model states) are wide and say nothing the error lines do not.
        lines = [ln for ln in self._read_log().splitlines() if ln.strip() and ln.lstrip()[:1] not in "+|"]
        errors = [ln for ln in lines if _ERROR_LINE.search(ln) and not _NO_GPU_NOISE.search(ln)][:10]
        last = lines[-tail:]
        errors = [ln for ln in errors if ln not in last]

        def cut(line: str) -> str:
            return line if len(line) <= 600 else line[:600] + " [...]"

        parts = []
        if errors:
            parts += ["errors in the tritonserver log:", *map(cut, errors)]
        parts += [f"last {len(last)} lines of {self._log_path}:", *map(cut, last)]
        return "\n".join("  | " + p if i else p for i, p in enumerate(parts))

    def __enter__(self) -> EmbeddedServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- The CLI step ----------------------------------------------------------------------------------

def _security_warning(version: str, address: str) -> str:
    exposure = ("bound to loopback only" if ipaddress.ip_address(address).is_loopback
                else f"bound to {address}: reachable from the network, do not do this outside a lab")
    return (f"WARNING: embedded Triton {version} (from the {PYTRITON_DIST} wheel) is for development and CI "
            f"only: it predates the 2025 Triton security fixes (e.g. CVE-2025-23310/23317/23319, fixed in "
            f"25.07+). It is {exposure}. Serve real traffic with {NGC_TRITON_IMAGE}.")


def serve(options: ServerOptions, *, on_ready: Callable[[EmbeddedServer], None] | None = None) -> int:
    """Start, wait ready, print the URLs and the security warning, block until SIGINT/SIGTERM, stop.

    Returns 0 after a clean stop (1 if tritonserver had to be killed). A server that dies on its
    own, or never gets ready, raises UserError with its log excerpt; nothing is left running. So does
    a model that stops serving while the server runs (`tritonkit.watchdog`: e.g. its python stub was killed).
    """
    stop_requested = threading.Event()
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop_requested.set())
    server = EmbeddedServer(options)
    try:
        server.start()
        server.wait_ready(cancel=stop_requested)
        # The watchdog counts each model's stubs before "ready" is announced: a stub killed right after the
        # announcement would otherwise be counted as none and never missed.
        watchdog = None if stop_requested.is_set() else Watchdog(server)
        if watchdog is not None:
            models = ", ".join(sorted(server.models)) or "none"
            print(f"tritonkit: Triton {server.triton.version} ready: HTTP http://{server.http_url}  "
                  f"gRPC {server.grpc_url}  metrics http://{server.metrics_url}/metrics  "
                  f"(models: {models}; log: {server.log_path})", flush=True)
            print(_security_warning(server.triton.version, options.address), file=sys.stderr, flush=True)
            for name, reason in server.failed_models.items():
                print(f"WARNING: model {name} failed to load: {reason}", file=sys.stderr, flush=True)
            if on_ready is not None:
                on_ready(server)
        while not stop_requested.wait(0.5):
            code = server.returncode
            if code is not None:
                raise UserError(f"tritonserver exited on its own with code {code}{_signal_note(code)}\n"
                                f"{server.log_excerpt()}", fix=f"see the full log: {server.log_path}")
            watchdog.check()
        print("tritonkit: stopping tritonserver...", file=sys.stderr, flush=True)
    except ModelStoppedServing:
        # 2.51 never finishes unloading a model whose stub died ("Found 1 live models" until the exit
        # timeout), so a graceful stop would only delay the restart by exit_timeout_s; in-flight requests
        # to the healthy models get WATCHDOG_STOP_S.
        server.stop(grace_s=min(WATCHDOG_STOP_S, options.exit_timeout_s + _STOP_MARGIN_S))
        raise
    finally:
        code = server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if code != 0:
        why = _signal_note(code)
        if "Exit timeout expired" in server._read_log():
            why += (f"; requests or HTTP connections were still open when --exit-timeout-secs="
                    f"{options.exit_timeout_s} ran out, and tritonserver cut them")
        print(f"tritonkit: tritonserver exit code {code}{why} (see {server.log_path})", file=sys.stderr, flush=True)
        return 1
    return 0


def _signal_note(code: int) -> str:
    """' (killed by SIGSEGV)' for a negative exit code, '' otherwise."""
    if code >= 0:
        return ""
    try:
        return f" (killed by {signal.Signals(-code).name})"
    except ValueError:
        return f" (killed by signal {-code})"
