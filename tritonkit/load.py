"""Measure step, load generation: drive a running Triton over a concurrency sweep -> BenchReport.

running server -> measured latency report. `run_bench` validates the target against the server
(model ready, input names/dtypes/shapes match its metadata, statistics API reachable), warms up,
then for each concurrency level N runs N closed-loop workers (each keeps exactly one request in
flight) until `requests_per_level` requests have been sent. Client latency is taken per request
with `time.perf_counter`; the figures and the verdict come from tritonkit.stats, the printed and
written reports from tritonkit.report.

Threading model: one OS thread per worker, each owning its own tritonclient client for the whole
run (connected before any timing starts). gRPC: a sync client per thread on its own channel with a
local subchannel pool, so N workers are N independent HTTP/2 connections, like N real clients.
HTTP: tritonclient.http is gevent-based and explicitly not thread-safe, so each worker thread
creates and uses its own client (one pooled connection each: N workers = N connections, the
same as one client with a pool of N, without sharing a gevent hub between threads).
Blocking calls release the GIL, so threads overlap real network waits.

Heavy imports (numpy, tritonclient, rich) happen inside functions.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from .defaults import (
    BENCH_CONCURRENCY,
    BENCH_REQUEST_TIMEOUT_S,
    BENCH_REQUESTS_PER_LEVEL,
    BENCH_WARMUP_REQUESTS,
    VALIDATION_SENTENCES,
)
from .dtypes import DTYPES, numpy_dtype
from .errors import UserError
from .stats import (LevelResult, fmt_ms, level_result, server_delta, server_snapshot,
                    settled_snapshot, verdict)

# Per-request client timeout: bounds a level in time (worst case requests/concurrency * this).
REQUEST_TIMEOUT_S = BENCH_REQUEST_TIMEOUT_S
# How long a worker may take to connect before the sweep starts.
CONNECT_TIMEOUT_S = 10.0
REPORT_SCHEMA = "tritonkit.bench/1"
PROTOCOLS = ("grpc", "http")
SERVE_HINT = "is the server running? start it with `tritonkit serve`"
DATA_VARIANTS = 8  # distinct random tensors per input, cycled through requests
DATA_SEED = 0


# --- Public data model -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str               # Triton datatype name: "FP32", "INT64", "BYTES", ...
    shape: tuple[int, ...]   # full request shape, batch dimension included

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.dtype not in sendable_dtypes():
            raise UserError(f"input {self.name!r}: unsupported datatype", actual=self.dtype,
                            expected=f"one of {sendable_dtypes()}")
        if not self.shape or any(d <= 0 for d in self.shape):
            raise UserError(f"input {self.name!r}: shape must be concrete (every dim >= 1)",
                            actual=list(self.shape), expected="e.g. [1, 16] (batch included)",
                            fix="replace -1 dims by the sizes to send")


@dataclass(frozen=True)
class BenchTarget:
    model: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    url: str                       # "127.0.0.1:8001" for grpc, "127.0.0.1:8000" for http
    protocol: str = "grpc"
    texts: tuple[str, ...] = ()    # BYTES inputs cycle through these (default: VALIDATION_SENTENCES)

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "texts", tuple(self.texts))
        if self.protocol not in PROTOCOLS:
            raise UserError("unknown protocol", actual=self.protocol, expected=f"one of {PROTOCOLS}")
        if "://" in self.url or ":" not in self.url:
            raise UserError("server URL must be host:port without a scheme", actual=self.url,
                            expected="e.g. 127.0.0.1:8001 (grpc) or 127.0.0.1:8000 (http)")
        if not self.inputs:
            raise UserError(f"model {self.model!r}: no inputs given", fix="pass at least one input")
        names = [t.name for t in self.inputs]
        if len(set(names)) != len(names):
            raise UserError("input names repeat", actual=names)


@dataclass(frozen=True)
class BenchReport:
    target: BenchTarget
    levels: tuple[LevelResult, ...]
    budget_p99_ms: float | None
    verdict: bool
    verdict_reason: str
    started_at: str
    server_version: str

    def to_json(self) -> dict:
        """Plain JSON-able dict (tuples -> lists, NaN -> None); `from_json` reads it back."""
        data = dataclasses.asdict(self)
        return {"schema": REPORT_SCHEMA, **_json_clean(data)}

    @classmethod
    def from_json(cls, data: dict) -> "BenchReport":
        t = data["target"]
        target = BenchTarget(
            model=t["model"], url=t["url"], protocol=t["protocol"], texts=tuple(t["texts"]),
            outputs=tuple(t["outputs"]),
            inputs=tuple(TensorSpec(i["name"], i["dtype"], tuple(i["shape"])) for i in t["inputs"]))
        levels = []
        for lv in data["levels"]:
            lv = {k: (math.nan if v is None and k.endswith("_ms") else v) for k, v in lv.items()}
            lv["error_samples"] = tuple(lv.get("error_samples", ()))
            levels.append(LevelResult(**lv))
        return cls(target=target, levels=tuple(levels), budget_p99_ms=data["budget_p99_ms"],
                   verdict=data["verdict"], verdict_reason=data["verdict_reason"],
                   started_at=data["started_at"], server_version=data["server_version"])


def _json_clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- Protocol adapters: one table, one entry per protocol --------------------------------------------
@dataclass(frozen=True)
class _Protocol:
    module: str                                   # tritonclient module
    client_kwargs: Callable[[float], dict]        # timeout -> constructor kwargs
    call_kwargs: Callable[[float], dict]          # timeout -> infer()/admin call kwargs
    json_kwargs: dict                             # kwargs for admin calls returning dicts
    binary: bool                                  # pass binary_data=True to inputs/outputs


def _grpc_client_kwargs(timeout: float) -> dict:
    import tritonclient.grpc as grpcclient

    ka = grpcclient.KeepAliveOptions()
    # tritonclient's own channel options, plus a local subchannel pool: without it gRPC shares one
    # TCP connection between all channels to the same target and N workers are not N clients.
    return {"channel_args": [
        ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", ka.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", ka.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", ka.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", ka.http2_max_pings_without_data),
        ("grpc.use_local_subchannel_pool", 1),
    ]}


_PROTOCOLS: dict[str, _Protocol] = {
    "grpc": _Protocol(module="tritonclient.grpc", client_kwargs=_grpc_client_kwargs,
                      call_kwargs=lambda t: {"client_timeout": t}, json_kwargs={"as_json": True},
                      binary=False),
    # tritonclient.http has no per-call client timeout: the client's network timeout bounds a call.
    "http": _Protocol(module="tritonclient.http",
                      client_kwargs=lambda t: {"concurrency": 1, "connection_timeout": t,
                                               "network_timeout": t},
                      call_kwargs=lambda t: {}, json_kwargs={}, binary=True),
}


def _module(protocol: str):
    import importlib

    return importlib.import_module(_PROTOCOLS[protocol].module)


def _connect(target: BenchTarget, timeout: float):
    proto = _PROTOCOLS[target.protocol]
    return _module(target.protocol).InferenceServerClient(target.url, **proto.client_kwargs(timeout))


# --- Validation ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ModelInfo:
    server_version: str
    max_batch_size: int
    items_per_request: int


def _check_server(target: BenchTarget, admin) -> str:
    """Live and reachable -> server version; anything else -> UserError naming the URL."""
    proto = _PROTOCOLS[target.protocol]
    try:
        live = admin.is_server_live(**proto.call_kwargs(CONNECT_TIMEOUT_S))
        meta = admin.get_server_metadata(**proto.json_kwargs, **proto.call_kwargs(CONNECT_TIMEOUT_S))
    except Exception as exc:  # refused, timeout, DNS, TLS...: all mean "no server there" to the user
        raise UserError(f"cannot reach Triton at {target.url} over {target.protocol} ({exc})",
                        fix=SERVE_HINT) from exc
    if not live:
        raise UserError(f"Triton at {target.url} is not live", fix=SERVE_HINT)
    return str(meta.get("version", "unknown"))


def _validate(target: BenchTarget, admin) -> _ModelInfo:
    from tritonclient.utils import InferenceServerException

    proto = _PROTOCOLS[target.protocol]
    call = proto.call_kwargs(CONNECT_TIMEOUT_S)
    version = _check_server(target, admin)
    where = f"model {target.model!r} at {target.url}"

    if not admin.is_model_ready(target.model, **call):
        try:
            index = admin.get_model_repository_index(**proto.json_kwargs, **call)
            models = index.get("models", []) if isinstance(index, dict) else index
            ready = sorted({m["name"] for m in models if m.get("state") == "READY"})
        except InferenceServerException:
            ready = "unknown (repository index not available)"
        raise UserError("model is not loaded or not ready", where=where, actual=target.model,
                        expected=f"one of the ready models {ready}",
                        fix="check the model name; see the server log for load errors")

    meta = admin.get_model_metadata(target.model, **proto.json_kwargs, **call)
    config = admin.get_model_config(target.model, **proto.json_kwargs, **call)
    config = config.get("config", config)  # grpc wraps the config, http does not
    max_batch = int(config.get("max_batch_size", 0))

    expected = {i["name"]: i for i in meta.get("inputs", [])}
    for spec in target.inputs:
        if spec.name not in expected:
            raise UserError(f"input {spec.name!r} is not an input of the model", where=where,
                            actual=spec.name, expected=f"one of {sorted(expected)}")
        exp = expected[spec.name]
        if spec.dtype != exp["datatype"]:
            raise UserError(f"input {spec.name!r} has the wrong datatype", where=where,
                            actual=spec.dtype, expected=exp["datatype"])
        exp_shape = [int(d) for d in exp["shape"]]
        if len(spec.shape) != len(exp_shape) or any(
                e != -1 and e != g for g, e in zip(spec.shape, exp_shape)):
            raise UserError(f"input {spec.name!r} has the wrong shape", where=where,
                            actual=list(spec.shape),
                            expected=f"{exp_shape} (-1: any size; batch dim first when batching)")
        if max_batch > 0 and spec.shape[0] > max_batch:
            raise UserError(f"input {spec.name!r}: batch size exceeds the model's max_batch_size",
                            where=where, actual=spec.shape[0], expected=f"<= {max_batch}")
    required = {i["name"] for i in config.get("input", []) if not i.get("optional", False)}
    missing = sorted(required - {s.name for s in target.inputs})
    if missing:
        raise UserError(f"required input(s) {missing} not given", where=where,
                        actual=[s.name for s in target.inputs], expected=sorted(required))
    out_names = {o["name"] for o in meta.get("outputs", [])}
    for out in target.outputs:
        if out not in out_names:
            raise UserError(f"output {out!r} is not an output of the model", where=where,
                            actual=out, expected=f"one of {sorted(out_names)}")

    try:
        admin.get_inference_statistics(model_name="", **proto.json_kwargs, **call)
    except InferenceServerException as exc:
        raise UserError(f"Triton's statistics API is not reachable at {target.url} ({exc})",
                        fix="do not restrict the 'statistics' protocol/API on the server "
                            "(--grpc-restricted-protocol / --http-restricted-api)") from exc

    items = target.inputs[0].shape[0] if max_batch > 0 else 1
    return _ModelInfo(server_version=version, max_batch_size=max_batch, items_per_request=items)


# --- Request data: per datatype, derived from the one table (tritonkit.dtypes) -----------------------
# BYTES has no NumPy dtype: its data is text (see _text_array). BF16 has none either, and is refused.
TEXT_DTYPE = "BYTES"


def _small_ints(rng, shape, dt):
    # small and non-negative: fits every int width and stays a valid id or index
    return rng.integers(0, 100, size=shape).astype(dt)


# NumPy kind -> seeded random data; keyed by kind so a datatype added to the table needs no row here.
_RANDOM_BY_KIND: dict[str, Callable] = {
    "b": lambda rng, shape, dt: rng.integers(0, 2, size=shape).astype(dt),
    "u": _small_ints,
    "i": _small_ints,
    "f": lambda rng, shape, dt: rng.standard_normal(size=shape).astype(dt),
}


def sendable_dtypes() -> list[str]:
    """Datatypes a request can carry: every one with a NumPy array, and BYTES (texts)."""
    return [name for name, d in DTYPES.items() if d.numpy or name == TEXT_DTYPE]


def _random_array(rng, dtype: str, shape: tuple[int, ...]):
    import numpy as np

    np_dtype = np.dtype(numpy_dtype(dtype))
    return _RANDOM_BY_KIND[np_dtype.kind](rng, shape, np_dtype)


def _text_array(texts: tuple[str, ...], shape: tuple[int, ...], offset: int):
    import numpy as np

    size = math.prod(shape)
    flat = [texts[(offset + k) % len(texts)].encode("utf-8") for k in range(size)]
    return np.array(flat, dtype=np.object_).reshape(shape)


def _request_arrays(target: BenchTarget) -> list[dict[str, Any]]:
    """Distinct request payloads (name -> numpy array), cycled through the requests.

    BYTES inputs walk through `texts` so consecutive requests carry different sentences; other
    dtypes get seeded random data, so two runs send the same bytes.
    """
    import numpy as np

    rng = np.random.default_rng(DATA_SEED)
    texts = target.texts or VALIDATION_SENTENCES
    has_text = any(s.dtype == TEXT_DTYPE for s in target.inputs)
    n = max(DATA_VARIANTS, min(len(texts), 256)) if has_text else DATA_VARIANTS
    variants = []
    for v in range(n):
        arrays = {}
        for spec in target.inputs:
            if spec.dtype == TEXT_DTYPE:
                arrays[spec.name] = _text_array(texts, spec.shape, v * math.prod(spec.shape))
            else:
                arrays[spec.name] = _random_array(rng, spec.dtype, spec.shape)
        variants.append(arrays)
    return variants


def _build_inputs(target: BenchTarget, arrays: list[dict[str, Any]]):
    mod = _module(target.protocol)
    binary = _PROTOCOLS[target.protocol].binary
    built = []
    for variant in arrays:
        inputs = []
        for spec in target.inputs:
            inp = mod.InferInput(spec.name, list(spec.shape), spec.dtype)
            if binary:
                inp.set_data_from_numpy(variant[spec.name], binary_data=True)
            else:
                inp.set_data_from_numpy(variant[spec.name])
            inputs.append(inp)
        built.append(inputs)
    outputs = None
    if target.outputs:
        outputs = [mod.InferRequestedOutput(o, binary_data=True) if binary
                   else mod.InferRequestedOutput(o) for o in target.outputs]
    return built, outputs


# --- Closed-loop workers ---------------------------------------------------------------------------
class _Level:
    """Shared state of one level: a request budget handed out one at a time, and the outcomes."""

    def __init__(self, workers: int, total: int, first_index: int):
        self.total, self.first_index = total, first_index
        self._lock = threading.Lock()
        self._issued = 0
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.t_start = 0.0
        self.t_end = 0.0
        self._running = workers
        self.finished = threading.Event()
        self.barrier = threading.Barrier(workers, action=self._start)

    def _start(self):
        self.t_start = time.perf_counter()

    def take(self) -> int | None:
        with self._lock:
            if self._issued >= self.total:
                return None
            self._issued += 1
            return self.first_index + self._issued - 1

    def record(self, latency: float | None, error: str | None):
        with self._lock:
            if error is None:
                self.latencies.append(latency)
            else:
                self.errors.append(error)

    def cancel(self):
        """Hand out no more requests (in-flight ones finish, bounded by the request timeout)."""
        with self._lock:
            self.total = self._issued

    def worker_done(self):
        with self._lock:
            self._running -= 1
            if self._running == 0:
                self.t_end = time.perf_counter()
                self.finished.set()

    @property
    def completed(self) -> int:
        with self._lock:
            return len(self.latencies) + len(self.errors)


class _Workers:
    """`size` threads, each with its own client, connected once and reused by every level."""

    def __init__(self, target: BenchTarget, size: int, timeout: float):
        self.target, self.timeout = target, timeout
        self._arrays = _request_arrays(target)
        self._inboxes = [queue.Queue() for _ in range(size)]
        self._ready: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._main, args=(i,), daemon=True,
                                          name=f"tritonkit-bench-{i}") for i in range(size)]
        self._next_index = 0
        self._current: _Level | None = None

    def __enter__(self):
        for t in self._threads:
            t.start()
        failures = []
        for _ in self._threads:
            try:
                err = self._ready.get(timeout=CONNECT_TIMEOUT_S + 5)
            except queue.Empty:
                err = "worker did not connect in time"
            if err is not None:
                failures.append(err)
        if failures:
            self.__exit__(None, None, None)
            raise UserError(f"{len(failures)} bench worker(s) could not connect to {self.target.url}",
                            actual=failures[0], fix=SERVE_HINT)
        return self

    def __exit__(self, *exc):
        if self._current is not None:  # e.g. Ctrl-C mid-level: stop handing out requests
            self._current.cancel()
        for box in self._inboxes:
            box.put(None)
        for t in self._threads:
            t.join(timeout=self.timeout + 5)

    def _main(self, i: int):
        # The client is created, used and closed in this thread only (tritonclient.http is not
        # thread-safe and binds to this thread's gevent hub).
        proto = _PROTOCOLS[self.target.protocol]
        try:
            client = _connect(self.target, self.timeout)
            client.is_server_ready(**proto.call_kwargs(CONNECT_TIMEOUT_S))  # opens the connection
            inputs, outputs = _build_inputs(self.target, self._arrays)
        except Exception as exc:  # reported to the main thread, which raises UserError
            self._ready.put(f"{type(exc).__name__}: {exc}")
            return
        self._ready.put(None)
        call = proto.call_kwargs(self.timeout)
        wanted = self.target.outputs
        try:
            while (level := self._inboxes[i].get()) is not None:
                try:
                    level.barrier.wait()
                    while (k := level.take()) is not None:
                        request = inputs[k % len(inputs)]
                        t0 = time.perf_counter()
                        try:
                            result = client.infer(self.target.model, request, outputs=outputs,
                                                  **call)
                        except Exception as exc:  # a failed request is an error, never a latency
                            level.record(None, _short_error(exc))
                            continue
                        latency = time.perf_counter() - t0
                        missing = [o for o in wanted if result.as_numpy(o) is None]
                        level.record(latency,
                                     f"response lacks output(s) {missing}" if missing else None)
                finally:  # even on a bug here, the level ends instead of hanging the main thread
                    level.worker_done()
        finally:
            client.close()

    def run(self, concurrency: int, requests: int, on_tick: Callable[[int], None] | None = None,
            ) -> _Level:
        level = _Level(concurrency, requests, self._next_index)
        self._next_index += requests  # later levels continue through the data (and texts)
        self._current = level
        for box in self._inboxes[:concurrency]:
            box.put(level)
        while not level.finished.wait(0.1):
            if on_tick:
                on_tick(level.completed)
            if not all(t.is_alive() for t in self._threads[:concurrency]):
                level.cancel()
                raise RuntimeError("a bench worker thread died (traceback above); this is a bug")
        self._current = None
        if on_tick:
            on_tick(level.completed)
        return level


def _short_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --- The measure step ------------------------------------------------------------------------------
def run_bench(target: BenchTarget, *, concurrency=BENCH_CONCURRENCY,
              requests_per_level: int = BENCH_REQUESTS_PER_LEVEL,
              warmup_requests: int = BENCH_WARMUP_REQUESTS, budget_p99_ms: float | None = None,
              progress: bool = True, request_timeout_s: float = REQUEST_TIMEOUT_S) -> BenchReport:
    """Validate `target` against the running server, then measure each concurrency level."""
    levels_n = tuple(int(c) for c in concurrency)
    if not levels_n or any(c < 1 for c in levels_n):
        raise UserError("concurrency levels must be integers >= 1", actual=list(levels_n))
    if requests_per_level < 1:
        raise UserError("requests per level must be >= 1", actual=requests_per_level)
    if warmup_requests < 0:
        raise UserError("warmup requests must be >= 0", actual=warmup_requests)
    if budget_p99_ms is not None and budget_p99_ms <= 0:
        raise UserError("p99 budget must be > 0 ms", actual=budget_p99_ms)

    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    admin = _connect(target, CONNECT_TIMEOUT_S)
    proto = _PROTOCOLS[target.protocol]
    call = {**proto.json_kwargs, **proto.call_kwargs(CONNECT_TIMEOUT_S)}

    def snapshot_now() -> dict:
        return server_snapshot(admin, **call)

    try:
        info = _validate(target, admin)
        log = _Log(progress, levels_n, requests_per_level, warmup_requests)
        results = []
        with _Workers(target, max(levels_n), request_timeout_s) as workers, log:
            snapshot = snapshot_now()
            if warmup_requests:
                warm = workers.run(max(levels_n), warmup_requests, log.tick_warmup)
                if warm.errors and not warm.latencies:
                    raise UserError(f"every warmup request to model {target.model!r} failed",
                                    actual=warm.errors[0],
                                    fix="check the input shapes/data against the model")
                # settled, so no warmup request is counted in the first level
                snapshot = settled_snapshot(snapshot_now, target.model, snapshot,
                                            len(warm.latencies))
            for n in levels_n:
                before = snapshot
                level = workers.run(n, requests_per_level, log.tick)
                snapshot = settled_snapshot(snapshot_now, target.model, before,
                                            len(level.latencies))
                result = level_result(n, level.latencies, level.errors,
                                      level.t_end - level.t_start, info.items_per_request,
                                      server_delta(before, snapshot))
                results.append(result)
                log.level_done(result, budget_p99_ms)
    finally:
        admin.close()
    levels = tuple(results)
    passed, reason = verdict(levels, budget_p99_ms)
    return BenchReport(target=target, levels=levels, budget_p99_ms=budget_p99_ms, verdict=passed,
                       verdict_reason=reason, started_at=started_at,
                       server_version=info.server_version)


class _Log:
    """Progress bar on a terminal (stderr), one line per level always (unless progress=False)."""

    def __init__(self, enabled: bool, levels: tuple[int, ...], per_level: int, warmup: int):
        self.enabled = enabled
        self._levels, self._per_level, self._warmup = levels, per_level, warmup
        self._bar = None
        self._done = 0

    def __enter__(self):
        if not self.enabled:
            return self
        from rich.console import Console

        self.console = Console(stderr=True)
        if self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn)

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=self.console,
                                 transient=True)
            self._bar.__enter__()
            total = self._warmup + self._per_level * len(self._levels)
            self._task = self._bar.add_task("warmup", total=total)
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def tick_warmup(self, completed: int):
        if self._bar is not None:
            self._bar.update(self._task, completed=completed)
        if completed >= self._warmup:
            self._done = self._warmup

    def tick(self, completed: int):
        if self._bar is not None:
            self._bar.update(self._task, completed=self._done + completed,
                             description=f"concurrency {self._current()}")

    def _current(self) -> int:
        idx = (self._done - self._warmup) // self._per_level
        return self._levels[min(idx, len(self._levels) - 1)]

    def level_done(self, r: LevelResult, budget: float | None):
        self._done += self._per_level
        if not self.enabled:
            return
        over = budget is not None and not (r.p99_ms <= budget)
        style = "red" if r.errors or over else "green"
        self.console.print(
            f"[{style}]concurrency {r.concurrency:>3}[/]: {r.requests} requests, {r.errors} errors, "
            f"{r.throughput_rps:.1f} req/s, p50 {fmt_ms(r.p50_ms)} ms, p99 {fmt_ms(r.p99_ms)} ms",
            highlight=False)
