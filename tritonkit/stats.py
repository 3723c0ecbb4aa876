"""Measure step, figures: Triton's statistics over a level, per-level latency figures, the verdict.

Client latency percentiles come from the latencies the load step timed; the server-side breakdown
is the delta of Triton's statistics API over the level, for every model that saw traffic (an
ensemble and its composing models). Nothing here talks a protocol: the caller hands in the admin
client and its call arguments.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

# Triton updates statistics when a request is released, which can trail the response slightly.
STATS_SETTLE_S = 2.0
_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
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
def level_result(concurrency: int, latencies_s: list[float], errors: list[str], seconds: float,
                 items_per_request: int, server: dict) -> LevelResult:
    """Percentiles (ms) of the successful requests; errors never count as a latency."""
    import numpy as np

    seconds = max(seconds, 1e-9)
    ok = len(latencies_s)
    if ok:
        lat = np.asarray(latencies_s) * 1e3
        p50, p90, p99 = (float(x) for x in np.percentile(lat, [50, 90, 99]))
        mean, worst = float(lat.mean()), float(lat.max())
    else:
        p50 = p90 = p99 = mean = worst = math.nan
    samples = tuple(dict.fromkeys(errors))[:5]
    return LevelResult(concurrency=concurrency, requests=ok + len(errors), errors=len(errors),
                       seconds=seconds, throughput_rps=ok / seconds,
                       items_per_s=ok * items_per_request / seconds, p50_ms=p50, p90_ms=p90,
                       p99_ms=p99, mean_ms=mean, max_ms=worst, server=server,
                       error_samples=samples)


def fmt_ms(x: float) -> str:
    """A latency for tables and progress lines; '-' for a level without a successful request."""
    if not math.isfinite(x):
        return "-"
    return f"{x:.2f}" if x < 100 else f"{x:.1f}"


def _sig3(x: float) -> str:
    """About 3 significant digits, never scientific: 0.43, 3.01, 62.1, 1234."""
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


# --- Verdict ---------------------------------------------------------------------------------------
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
        reason = (f"{lv.errors} of {lv.requests} requests failed at concurrency "
                  f"{lv.concurrency}{more}{first}")
        measured = [x for x in levels if math.isfinite(x.p99_ms)]
        worst = max(measured, key=lambda x: x.p99_ms, default=None)
        if budget_p99_ms is not None and worst is not None and worst.p99_ms > budget_p99_ms:
            reason += (f"; also p99 {_sig3(worst.p99_ms)} ms at concurrency {worst.concurrency} "
                       f"> budget {budget_p99_ms:g} ms")
        return False, reason
    worst = max(levels, key=lambda x: x.p99_ms)
    if budget_p99_ms is None:
        return True, (f"0 errors in {total} requests (no p99 budget given; worst p99 "
                      f"{_sig3(worst.p99_ms)} ms at concurrency {worst.concurrency})")
    at = f"p99 {_sig3(worst.p99_ms)} ms at concurrency {worst.concurrency}"
    if worst.p99_ms > budget_p99_ms:
        return False, f"{at} > budget {budget_p99_ms:g} ms"
    return True, f"worst {at} <= budget {budget_p99_ms:g} ms, 0 errors in {total} requests"
