"""Measure step, figures: Triton's statistics over a level, per-level latency figures, the verdict.

Client latency percentiles come from the latencies the load step timed; the server-side breakdown
is the delta of Triton's statistics API over the level, for every model that saw traffic (an
ensemble and its composing models). Nothing here talks a protocol: the caller hands in the admin
client and its call arguments.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

# Triton updates statistics when a request is released, which can trail the response slightly.
STATS_SETTLE_S = 2.0
_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


# A request this slow is an outlier worth a cause: Triton 2.51's batcher re-check alone is 500 ms (server#8870).
SLOW_MS = 400.0
# ...and a model that queued requests this much longer than usual during its lifetime is named as the cause.
SLOW_QUEUE_MS = 300.0
# The client was the limit when one of its processes was this busy (a Python process does not go faster)...
CLIENT_BUSY_SHARE = 0.9
# ...or, open loop, when it sent requests this late (p99) after their due time, and that lateness is a good
# part of the p99 it measured (lateness is inside the measured latency, which counts from the due time).
CLIENT_LATE_MS = 5.0
CLIENT_LATE_SHARE = 0.25


@dataclass(frozen=True)
class LevelResult:
    concurrency: int       # closed loop: requests in flight; 0 for an open-loop level
    requests: int          # requests sent (successes + errors)
    errors: int
    seconds: float         # wall time of the level
    throughput_rps: float  # successful responses per second
    items_per_s: float     # throughput_rps * batch size of one request
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    # model -> averages over the level (Triton statistics deltas): requests, failures, inferences,
    # (`failures` is the server's view: Triton 2.51's python backend counts an error response as a
    # success there, so `errors` above, counted by the client, is the authoritative failure count)
    # executions, avg_batch_size, request_us, queue_us, compute_input_us, compute_infer_us,
    # compute_output_us. Ensemble and composing models each have an entry.
    server: dict[str, dict[str, float]]
    error_samples: tuple[str, ...] = ()  # first few distinct error messages of the level
    mode: str = "closed"                 # "closed" (concurrency) | "open" (offered rate, latency from due time)
                                         # | "search" (an open-loop step of the capacity search)
    offered_rps: float = math.nan        # open loop: the schedule's rate
    p999_ms: float = math.nan
    errors_by_kind: dict[str, int] = field(default_factory=dict)   # gRPC status (UNAVAILABLE = shed) -> count
    client_processes: int = 1
    client_cpu_cores: float = math.nan   # CPU the client used (all its processes), in cores
    client_busiest: float = math.nan     # the busiest client process's share of one core
    send_lag_p99_ms: float = math.nan    # open loop: how late requests left after their due time
    client_bound: str = ""               # why the client, not the server, limited this level ("" = it did not)
    latency_drift_ms: float = math.nan   # p50 of the last third of the level minus that of the first third
    slow_requests: int = 0               # requests >= SLOW_MS
    slow_causes: dict[str, int] = field(default_factory=dict)  # model -> slow requests during its queue waits

    @property
    def label(self) -> str:
        return str(self.concurrency) if self.mode == "closed" else f"{self.offered_rps:g}/s"


# --- Server statistics -----------------------------------------------------------------------------
def server_snapshot(admin, **call) -> dict[str, dict[str, int]]:
    """model name -> summed counters over its versions (grpc JSON gives ints as strings).

    `call`: the protocol's keyword arguments for a JSON answer within a timeout.
    """
    raw = admin.get_inference_statistics(model_name="", **call)
    snap: dict[str, dict[str, int]] = {}
    for m in raw.get("model_stats", []):
        acc = snap.setdefault(m["name"], {})
        counters = {"inference_count": m.get("inference_count", 0),
                    "execution_count": m.get("execution_count", 0)}
        stats = m.get("inference_stats", {})
        for phase in _PHASES:
            counters[f"{phase}_count"] = stats.get(phase, {}).get("count", 0)
            counters[f"{phase}_ns"] = stats.get(phase, {}).get("ns", 0)
        for key, value in counters.items():
            acc[key] = acc.get(key, 0) + int(value)
    return snap


def server_delta(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Per-model averages between two snapshots, for the models that saw requests in between."""
    def avg_us(d: dict, phase: str) -> float:
        n = d[f"{phase}_count"]
        return d[f"{phase}_ns"] / n / 1e3 if n else 0.0

    out = {}
    for name, now in sorted(after.items()):
        was = before.get(name, {})
        d = {k: v - was.get(k, 0) for k, v in now.items()}
        if d["success_count"] == 0 and d["fail_count"] == 0:
            continue
        out[name] = {
            "requests": float(d["success_count"]),
            "failures": float(d["fail_count"]),
            "inferences": float(d["inference_count"]),
            "executions": float(d["execution_count"]),
            "avg_batch_size": d["inference_count"] / d["execution_count"] if d["execution_count"] else 0.0,
            "request_us": avg_us(d, "success"),
            "queue_us": avg_us(d, "queue"),
            "compute_input_us": avg_us(d, "compute_input"),
            "compute_infer_us": avg_us(d, "compute_infer"),
            "compute_output_us": avg_us(d, "compute_output"),
        }
    return out


def settled_snapshot(snapshot: Callable[[], dict], model: str, before: dict, expect: int) -> dict:
    """Statistics after a batch of requests, once Triton has finished counting them.

    Triton records statistics when a request is released, which can trail its response: wait until
    `model` has counted the `expect` requests that got a response (failed ones may never have
    reached it) and two snapshots in a row agree (composing models of an ensemble settle too).
    Bounded by STATS_SETTLE_S either way.
    """
    deadline = time.monotonic() + STATS_SETTLE_S
    previous = None
    while True:
        after = snapshot()
        now, was = after.get(model, {}), before.get(model, {})
        seen = sum(now.get(k, 0) - was.get(k, 0) for k in ("success_count", "fail_count"))
        if (seen >= expect and after == previous) or time.monotonic() > deadline:
            return after
        previous = after
        time.sleep(0.005)


# --- Figures of one level --------------------------------------------------------------------------
def level_result(concurrency: int, latencies_s, errors: list[str], seconds: float,
                 items_per_request: int, server: dict, **extra) -> LevelResult:
    """Percentiles (ms) of the successful requests; errors never count as a latency."""
    import numpy as np

    seconds = max(seconds, 1e-9)
    lat = np.asarray(latencies_s, dtype=float) * 1e3
    ok = len(lat)
    if ok:
        # nearest rank (the smallest latency that q of the requests did not exceed), as perf_analyzer reports
        p50, p90, p99, p999 = (float(x) for x in np.percentile(lat, [50, 90, 99, 99.9], method="inverted_cdf"))
        mean, worst = float(lat.mean()), float(lat.max())
    else:
        p50 = p90 = p99 = p999 = mean = worst = math.nan
    kinds: dict[str, int] = {}
    for e in errors:
        kind = e.split(":", 1)[0] if e[:1].isupper() and ":" in e[:40] else "other"
        kinds[kind] = kinds.get(kind, 0) + 1
    samples = tuple(dict.fromkeys(errors))[:5]
    return LevelResult(concurrency=concurrency, requests=ok + len(errors), errors=len(errors),
                       seconds=seconds, throughput_rps=ok / seconds,
                       items_per_s=ok * items_per_request / seconds, p50_ms=p50, p90_ms=p90,
                       p99_ms=p99, mean_ms=mean, max_ms=worst, server=server,
                       error_samples=samples, p999_ms=p999, errors_by_kind=kinds,
                       slow_requests=int((lat >= SLOW_MS).sum()), **extra)


def client_limit(cpu_s: tuple[float, ...], wall_s: float, send_lag_p99_ms: float,
                 p99_ms: float = math.nan) -> tuple[float, float, str]:
    """(cores used, busiest process's share of a core, why the client was the limit or "")."""
    wall_s = max(wall_s, 1e-9)
    busiest = max(cpu_s) / wall_s if cpu_s else math.nan
    why = ""
    if busiest >= CLIENT_BUSY_SHARE:
        why = (f"a client process used {busiest:.0%} of a core: the client, not the server, set this pace "
               "(more client processes: --client-processes, on a host with spare cores)")
    elif math.isfinite(send_lag_p99_ms) and send_lag_p99_ms > max(CLIENT_LATE_MS, CLIENT_LATE_SHARE * p99_ms):
        why = (f"requests left {send_lag_p99_ms:.1f} ms (p99) after their due time: the client fell behind "
               "its schedule")
    return sum(cpu_s) / wall_s, busiest, why


def slow_causes(sent, done, slow: list[int], timeline: list[tuple[float, dict]], level: dict) -> dict[str, int]:
    """For each slow request, the models that queued requests for SLOW_QUEUE_MS more than usual while it was in
    flight: model -> how many slow requests that explains. Triton counts queue time per model, not per request,
    so over the statistics polls around the request's lifetime the queue time beyond the level's average (`level`:
    server_delta over the whole level) is what one stuck request adds, e.g. Triton 2.51's 500 ms re-check."""
    import bisect
    causes: dict[str, int] = {}
    times = [t for t, _ in timeline]
    for k in slow:
        i = max(0, bisect.bisect_right(times, sent[k]) - 1)
        j = min(len(timeline) - 1, bisect.bisect_left(times, done[k] + 0.1))   # stats trail the response
        if j <= i:
            continue
        for model, figures in server_delta(timeline[i][1], timeline[j][1]).items():
            usual = level.get(model, {}).get("queue_us", 0.0)
            excess_ms = (figures["queue_us"] - usual) * figures["requests"] / 1e3
            if excess_ms >= SLOW_QUEUE_MS:
                causes[model] = causes.get(model, 0) + 1
    return causes


def fmt_ms(x: float) -> str:
    """A latency for tables and progress lines; '-' for a level without a successful request."""
    if not math.isfinite(x):
        return "-"
    return f"{x:.2f}" if x < 100 else f"{x:.1f}"


def _sig3(x: float) -> str:
    """About 3 significant digits, never scientific: 0.43, 3.01, 62.1, 1234."""
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


# --- Verdict ---------------------------------------------------------------------------------------
def _where(lv: LevelResult) -> str:
    return f"concurrency {lv.concurrency}" if lv.mode == "closed" else f"{lv.offered_rps:g} requests/s (open loop)"


def verdict(levels: tuple[LevelResult, ...], budget_p99_ms: float | None) -> tuple[bool, str]:
    """(passed, reason). Errors fail first; then the worst p99 against the budget."""
    total = sum(lv.requests for lv in levels)
    if not levels:
        return False, "no level was measured"
    errored = [lv for lv in levels if lv.errors]
    if errored:
        lv = max(errored, key=lambda x: x.errors)
        first = f": {lv.error_samples[0]}" if lv.error_samples else ""
        more = f" (errors at {len(errored)} levels)" if len(errored) > 1 else ""
        reason = f"{lv.errors} of {lv.requests} requests failed at {_where(lv)}{more}{first}"
        measured = [x for x in levels if math.isfinite(x.p99_ms)]
        worst = max(measured, key=lambda x: x.p99_ms, default=None)
        if budget_p99_ms is not None and worst is not None and worst.p99_ms > budget_p99_ms:
            reason += f"; also p99 {_sig3(worst.p99_ms)} ms at {_where(worst)} > budget {budget_p99_ms:g} ms"
        return False, reason
    worst = max(levels, key=lambda x: x.p99_ms)
    if budget_p99_ms is None:
        return True, (f"0 errors in {total} requests (no p99 budget given; worst p99 "
                      f"{_sig3(worst.p99_ms)} ms at {_where(worst)})")
    at = f"p99 {_sig3(worst.p99_ms)} ms at {_where(worst)}"
    if worst.p99_ms > budget_p99_ms:
        return False, f"{at} > budget {budget_p99_ms:g} ms"
    return True, f"worst {at} <= budget {budget_p99_ms:g} ms, 0 errors in {total} requests"
