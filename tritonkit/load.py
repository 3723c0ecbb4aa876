"""Measure step, load generation: drive a running Triton -> BenchReport.

running server -> measured latency report. `run_bench` validates the target against the server
(model ready, input names/dtypes/shapes match its metadata, statistics API reachable), prepares the
payloads once (tritonkit.samples for the spec's own data), warms up, then measures closed-loop levels
(N requests in flight), open-loop rates (requests due on a fixed or Poisson schedule, latency from the
due time) and, on request, the capacity within the p99 budget (tritonkit.capacity). Requests are sent
by tritonkit.drivers (gRPC: pre-serialised, worker processes; HTTP: threads); Triton's statistics are
polled while each level runs, to attribute slow requests to the model that queued them. The figures
and the verdict come from tritonkit.stats, the printed and written reports from tritonkit.report.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from .defaults import (
    BENCH_CONCURRENCY,
    BENCH_OPEN_LOOP_S,
    BENCH_REQUEST_TIMEOUT_S,
    BENCH_REQUESTS_PER_LEVEL,
    BENCH_WARMUP_REQUESTS,
    VALIDATION_SENTENCES,
)
from .capacity import Capacity
from .dtypes import DTYPES, numpy_dtype
from .errors import UserError
from .stats import (SLOW_MS, LevelResult, client_limit, fmt_ms, level_result, server_delta, server_snapshot,
                    settled_snapshot, slow_causes, verdict)

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
    samples: tuple[str, str] = ()  # ("data", .npz/.npy path) or ("files", folder): real payloads instead

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
    capacity: Capacity | None = None   # --find-capacity: the highest rate within the budget (the headline)
    payload: dict = dataclasses.field(default_factory=dict)   # payload_summary: what was sent

    def to_json(self) -> dict:
        """Plain JSON-able dict (tuples -> lists, NaN -> None); `from_json` reads it back."""
        data = dataclasses.asdict(self)
        return {"schema": REPORT_SCHEMA, **_json_clean(data)}

    @classmethod
    def from_json(cls, data: dict) -> "BenchReport":
        t = data["target"]
        target = BenchTarget(
            model=t["model"], url=t["url"], protocol=t["protocol"], texts=tuple(t["texts"]),
            outputs=tuple(t["outputs"]), samples=tuple(t.get("samples", ())),
            inputs=tuple(TensorSpec(i["name"], i["dtype"], tuple(i["shape"])) for i in t["inputs"]))
        floats = {f.name for f in dataclasses.fields(LevelResult) if f.type == "float"}   # NaN was written as null
        levels = []
        for lv in data["levels"]:
            lv = {k: (math.nan if v is None and k in floats else v) for k, v in lv.items()}
            lv["error_samples"] = tuple(lv.get("error_samples", ()))
            levels.append(LevelResult(**lv))
        cap = data.get("capacity")
        capacity = None if cap is None else Capacity(
            rps=cap["rps"], p99_ms=math.nan if cap["p99_ms"] is None else cap["p99_ms"], reason=cap["reason"],
            steps=tuple(tuple(s) for s in cap["steps"]), client_bound=cap.get("client_bound", ""))
        return cls(target=target, levels=tuple(levels), budget_p99_ms=data["budget_p99_ms"],
                   verdict=data["verdict"], verdict_reason=data["verdict_reason"],
                   started_at=data["started_at"], server_version=data["server_version"], capacity=capacity,
                   payload=data.get("payload", {}))


def _json_clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- Protocol adapters (tritonclient) for the admin side: validation and statistics. Requests go through
# tritonkit.wire; one table, one entry per protocol ---------------------------------------------------------
@dataclass(frozen=True)
class _Protocol:
    module: str                                   # tritonclient module
    client_kwargs: Callable[[float], dict]        # timeout -> constructor kwargs
    call_kwargs: Callable[[float], dict]          # timeout -> admin call kwargs
    json_kwargs: dict                             # kwargs for admin calls returning dicts


_PROTOCOLS: dict[str, _Protocol] = {
    "grpc": _Protocol(module="tritonclient.grpc", client_kwargs=lambda t: {},
                      call_kwargs=lambda t: {"client_timeout": t}, json_kwargs={"as_json": True}),
    # tritonclient.http has no per-call client timeout: the client's network timeout bounds a call.
    "http": _Protocol(module="tritonclient.http",
                      client_kwargs=lambda t: {"concurrency": 1, "connection_timeout": t,
                                               "network_timeout": t},
                      call_kwargs=lambda t: {}, json_kwargs={}),
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

    Real samples when the target names them (tritonkit.samples: .npz/.npy arrays or a folder of files);
    else BYTES inputs walk through `texts` so consecutive requests carry different sentences, and other
    dtypes get seeded random data, so two runs send the same bytes.
    """
    import numpy as np

    if target.samples:
        from .samples import request_arrays
        return request_arrays(target.inputs, *target.samples)
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


def payload_summary(target: BenchTarget, arrays: list[dict[str, Any]]) -> dict:
    """Where the payloads came from and how long their items are (bytes per BYTES item, elements otherwise)."""
    import numpy as np
    source = f"{target.samples[0]}: {target.samples[1]}" if target.samples else \
        "texts" if target.texts else "generated from dtype and dims"
    out: dict[str, Any] = {"source": source, "variants": len(arrays), "inputs": {}}
    for spec in target.inputs:
        if spec.dtype == TEXT_DTYPE:
            sizes = np.array([len(x) for v in arrays for x in np.asarray(v[spec.name]).reshape(-1)])
            unit = "bytes per item"
        else:
            sizes = np.array([np.asarray(v[spec.name]).size for v in arrays])
            unit = "elements per request"
        out["inputs"][spec.name] = {"unit": unit, "min": int(sizes.min()), "p50": float(np.median(sizes)),
                                    "p90": float(np.percentile(sizes, 90)), "max": int(sizes.max()),
                                    "shape": list(spec.shape)}
    return out


def _raw(spec: TensorSpec, data) -> bytes:
    """A tensor's bytes as Triton's binary protocols carry them (BYTES: 4-byte length + bytes per element)."""
    if spec.dtype == TEXT_DTYPE:
        from tritonclient.utils import serialize_byte_tensor
        raw = serialize_byte_tensor(data)
        return raw.item() if raw.size else b""
    return data.tobytes()


def wire_requests(target: BenchTarget, arrays: list[dict[str, Any]]) -> list:
    """Each payload variant as the request the wire sends, prepared once (tritonkit.wire)."""
    from . import wire
    if target.protocol == "http":
        host = wire.split_url(target.url)[0]
        return [wire.http_request(target.model, host, [(s.name, s.dtype, list(v[s.name].shape), _raw(s, v[s.name]))
                                                       for s in target.inputs], target.outputs) for v in arrays]
    from tritonclient.grpc import service_pb2
    out = []
    for variant in arrays:
        req = service_pb2.ModelInferRequest(model_name=target.model)
        for spec in target.inputs:
            req.inputs.add(name=spec.name, datatype=spec.dtype, shape=list(variant[spec.name].shape))
            req.raw_input_contents.append(_raw(spec, variant[spec.name]))
        for name in target.outputs:
            req.outputs.add(name=name)
        out.append(wire.grpc_request(req.SerializeToString()))
    return out


# --- The measure step ------------------------------------------------------------------------------
class _Timeline:
    """Triton's statistics polled every POLL_S while a level runs, by a thread with its own client
    (tritonclient.http's client is bound to the thread that made it): what slow requests waited on."""
    # Each poll costs the server CPU: at 0.1 s the kit's p99 at concurrency 1 on the 2-core CI host was 4.2-4.5 ms
    # against perf_analyzer's 3.9-4.3 (no poller); at 0.5 s 4.0-4.1 against 3.9-4.1 (same server, alternating;
    # 2026-11-30). A stall of 400 ms+ still spans a poll or two.
    POLL_S = 0.5

    def __init__(self, target: BenchTarget, call: dict):
        self._target, self._call, self.points = target, call, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tritonkit-stats")

    def _run(self):
        client = _connect(self._target, CONNECT_TIMEOUT_S)
        try:
            while not self._stop.is_set():
                try:
                    self.points.append((time.monotonic(), server_snapshot(client, **self._call)))
                except Exception:  # noqa: BLE001 - a missed poll only blurs the attribution
                    pass
                self._stop.wait(self.POLL_S)
        finally:
            client.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def run_bench(target: BenchTarget, *, concurrency=BENCH_CONCURRENCY, request_rates=(),
              requests_per_level: int = BENCH_REQUESTS_PER_LEVEL, duration_s: float = BENCH_OPEN_LOOP_S,
              warmup_requests: int = BENCH_WARMUP_REQUESTS, budget_p99_ms: float | None = None,
              progress: bool = True, request_timeout_s: float = REQUEST_TIMEOUT_S, poisson: bool = True,
              find_capacity: bool = False, processes: int | None = None) -> BenchReport:
    """Validate `target` against the running server, then measure: each concurrency level (closed loop),
    each request rate (open loop, `duration_s` each), and with `find_capacity` the highest rate whose p99
    stays within the budget with no errors (tritonkit.capacity)."""
    import numpy as np

    from . import capacity as capacity_search
    from .drivers import Closed, Driver, Open, default_processes

    levels_n = tuple(int(c) for c in concurrency)
    rates = tuple(float(r) for r in request_rates)
    if any(c < 1 for c in levels_n):
        raise UserError("concurrency levels must be integers >= 1", actual=list(levels_n))
    if any(not r > 0 for r in rates):
        raise UserError("request rates must be > 0 per second", actual=list(rates))
    if not (levels_n or rates or find_capacity):
        raise UserError("nothing to measure", expected="concurrency levels, request rates or --find-capacity")
    if requests_per_level < 1:
        raise UserError("requests per level must be >= 1", actual=requests_per_level)
    if warmup_requests < 0:
        raise UserError("warmup requests must be >= 0", actual=warmup_requests)
    if budget_p99_ms is not None and budget_p99_ms <= 0:
        raise UserError("p99 budget must be > 0 ms", actual=budget_p99_ms)
    if find_capacity and budget_p99_ms is None:
        raise UserError("finding the capacity needs a p99 budget", where="--find-capacity",
                        fix="give --budget-ms or a latency_budget in the spec")

    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    admin = _connect(target, CONNECT_TIMEOUT_S)
    proto = _PROTOCOLS[target.protocol]
    call = {**proto.json_kwargs, **proto.call_kwargs(CONNECT_TIMEOUT_S)}

    def snapshot_now() -> dict:
        return server_snapshot(admin, **call)

    try:
        info = _validate(target, admin)
        arrays = _request_arrays(target)
        width = max(levels_n or (1,))
        driver = Driver(target.protocol, target.url, wire_requests(target, arrays), target.outputs,
                        processes=processes or default_processes(max(width, 8 if rates or find_capacity else 1)),
                        timeout=request_timeout_s)
        log = _Log(progress)
        results: list[LevelResult] = []

        def measure(level, search: bool = False) -> LevelResult:
            before = snapshot_now()
            with _Timeline(target, call) as timeline, log.level(level):
                samples = driver.run(level)
            ok = len(samples.done) - len(samples.errors)
            after = settled_snapshot(snapshot_now, target.model, before, ok)
            timeline.points.append((time.monotonic(), after))
            opened = isinstance(level, Open)
            waited = (samples.done - samples.scheduled) * 1e3       # ms from due time to answer, every request
            ok_mask = np.ones(len(waited), dtype=bool)
            ok_mask[list(samples.errors)] = False
            lat = waited[ok_mask] / 1e3
            lag = float(np.percentile((samples.sent - samples.scheduled) * 1e3, 99)) if opened else math.nan
            p99 = float(np.percentile(waited[ok_mask], 99, method="inverted_cdf")) if ok_mask.any() else math.nan
            cores, busiest, why = client_limit(samples.cpu_s, samples.wall_s, lag, p99)
            slow = np.flatnonzero(ok_mask & (waited >= SLOW_MS)).tolist()
            order = np.argsort(samples.scheduled)
            third = max(1, len(order) // 3)
            drift = float(np.median(waited[order[-third:]]) - np.median(waited[order[:third]]))
            server = server_delta(before, after)
            result = level_result(
                0 if opened else level.concurrency, lat, list(samples.errors.values()), samples.wall_s,
                info.items_per_request, server,
                mode="search" if search else "open" if opened else "closed",
                offered_rps=level.rate if opened else math.nan, client_processes=len(samples.cpu_s),
                client_cpu_cores=cores, client_busiest=busiest, send_lag_p99_ms=lag, client_bound=why, latency_drift_ms=drift,
                slow_causes=slow_causes(samples.sent, samples.done, slow, timeline.points, server))
            log.done(result, budget_p99_ms)
            return result

        with driver, log:
            if warmup_requests:
                warm = driver.run(Closed(width, warmup_requests))
                if len(warm.errors) == len(warm.done):
                    raise UserError(f"every warmup request to model {target.model!r} failed",
                                    actual=next(iter(warm.errors.values())),
                                    fix="check the input shapes/data against the model")
            for n in levels_n:
                results.append(measure(Closed(n, requests_per_level)))
            for r in rates:
                results.append(measure(Open(r, max(1, round(r * duration_s)), poisson=poisson)))
            found = None
            if find_capacity:
                closed = [lv.throughput_rps for lv in results if lv.mode == "closed" and not lv.errors]
                start = max(closed) * 0.8 if closed else None
                found = capacity_search.find(
                    lambda rate: measure(Open(rate, max(1, round(rate * duration_s)), poisson=poisson,
                                              seed=len(results)), search=True),
                    budget_p99_ms, start_rps=start or 50.0, on_step=results.append)
    finally:
        admin.close()
    levels = tuple(results)
    measured = tuple(lv for lv in levels if lv.mode != "search")   # search steps probe past the budget on purpose
    if measured:
        passed, reason = verdict(measured, budget_p99_ms)
    else:
        passed, reason = True, "capacity search only"
    if found is not None and found.rps == 0:
        passed, reason = False, f"{reason}; {found.reason}" if measured else found.reason
    elif found is not None:
        reason += f"; capacity {found.rps:.0f} requests/s within the {budget_p99_ms:g} ms p99 budget"
    return BenchReport(target=target, levels=levels, budget_p99_ms=budget_p99_ms, verdict=passed,
                       verdict_reason=reason, started_at=started_at, server_version=info.server_version,
                       capacity=found, payload=payload_summary(target, arrays))


class _Log:
    """A spinner per level on a terminal (stderr), and one line per level always (unless progress=False)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.console = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            self.console = Console(stderr=True, highlight=False)
        return self

    def __exit__(self, *exc):
        return None

    def level(self, level):
        import contextlib
        if self.console is None or not self.console.is_terminal:
            return contextlib.nullcontext()
        what = (f"{level.rate:g} requests/s, open loop" if hasattr(level, "rate")
                else f"concurrency {level.concurrency}")
        return self.console.status(f"{what}: {level.requests} requests")

    def done(self, r: LevelResult, budget: float | None):
        if self.console is None:
            return
        over = budget is not None and not (r.p99_ms <= budget)
        style = "red" if r.errors or over else "green"
        what = f"concurrency {r.concurrency:>3}" if r.mode == "closed" else \
            f"{'search' if r.mode == 'search' else 'rate'} {r.offered_rps:>7.1f}/s"
        client = f"  [yellow]client-bound: {r.client_bound}[/]" if r.client_bound else ""
        self.console.print(
            f"[{style}]{what}[/]: {r.requests} requests, {r.errors} errors, {r.throughput_rps:.1f} req/s, "
            f"p50 {fmt_ms(r.p50_ms)} ms, p99 {fmt_ms(r.p99_ms)} ms, max {fmt_ms(r.max_ms)} ms, "
            f"client {r.client_cpu_cores:.2f} cores{client}")
