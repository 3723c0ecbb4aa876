"""Measure step, the headline: the highest request rate the server sustains within the p99 budget.

Open-loop steps (tritonkit.drivers.Open): grow the rate until a step fails, then bisect between the last
pass and the first failure, then measure the best rate once more (a pass must repeat; if it does not,
step down 5% per miss, up to CAPACITY_CONFIRM_STEPS times: misses that persist mean the host slowed). A step passes when it has no errors, its p99 (from due times, so queueing counts) is within
the budget, it achieved the offered rate, and latency did not keep growing through the step (a queue
that builds up passes a short step and fails a long one).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .defaults import CAPACITY_CONFIRM_STEPS, CAPACITY_GROWTH, CAPACITY_MAX_STEPS, CAPACITY_PRECISION
from .stats import LevelResult

ACHIEVED_SHARE = 0.95     # answered per second over offered per second: below it the server fell behind
# Latency growing through a step (median of its last third minus its first) by more than this share of the
# budget (and more than its own p50) is a queue building up: random queueing near capacity stays below it.
DRIFT_BUDGET_SHARE = 0.2


@dataclass(frozen=True)
class Capacity:
    rps: float                                   # highest offered rate that passed (0: none did)
    p99_ms: float                                # its p99
    reason: str                                  # how it was found, or why none passed
    steps: tuple[tuple[float, bool, str], ...]   # (offered rate, passed, why) in the order measured
    client_bound: str = ""                       # set when the client limited a step near the top


def judge(lv: LevelResult, budget_ms: float) -> tuple[bool, str]:
    """Whether one open-loop step passes, and the figure that decided it."""
    if lv.errors:
        return False, f"{lv.errors} errors ({', '.join(f'{k} {v}' for k, v in lv.errors_by_kind.items())})"
    if not lv.p99_ms <= budget_ms:
        return False, f"p99 {lv.p99_ms:.1f} ms > budget {budget_ms:g} ms"
    if lv.throughput_rps < ACHIEVED_SHARE * lv.offered_rps:
        return False, f"answered {lv.throughput_rps:.0f}/s of {lv.offered_rps:.0f}/s offered"
    if lv.latency_drift_ms > max(lv.p50_ms, DRIFT_BUDGET_SHARE * budget_ms):
        return False, f"latency grew {lv.latency_drift_ms:.1f} ms through the step (a queue building up)"
    return True, f"p99 {lv.p99_ms:.1f} ms, {lv.throughput_rps:.0f}/s answered"


def find(measure: Callable[[float], LevelResult], budget_ms: float, *, start_rps: float,
         max_steps: int = CAPACITY_MAX_STEPS, precision: float = CAPACITY_PRECISION,
         on_step: Callable[[LevelResult], None] | None = None) -> Capacity:
    """`measure(rate)` runs one open-loop step; `start_rps` a first guess (e.g. 0.8 x closed-loop peak)."""
    steps: list[tuple[float, bool, str]] = []
    last: LevelResult | None = None
    client = ""

    def step(rate: float) -> bool:
        nonlocal last, client
        last = measure(rate)
        if on_step:
            on_step(last)
        ok, why = judge(last, budget_ms)
        steps.append((rate, ok, why))
        if last.client_bound and (ok or not client):
            client = last.client_bound
        return ok

    lo, hi, rate = 0.0, math.inf, start_rps
    while len(steps) < max_steps and math.isinf(hi):           # grow (or shrink) to bracket the capacity
        if step(rate):
            lo, rate = rate, rate * CAPACITY_GROWTH
        else:
            hi = rate
            if lo == 0.0:
                rate = rate / CAPACITY_GROWTH ** 2
                hi = math.inf if rate >= 1.0 else hi
                if rate < 1.0:
                    break
    while len(steps) < max_steps - 1 and lo > 0 and hi / lo - 1 > precision:   # bisect
        mid = (lo * hi) ** 0.5
        if step(mid):
            lo = mid
        else:
            hi = mid
    confirmed = False
    for _ in range(CAPACITY_CONFIRM_STEPS):                      # the best pass must repeat
        if lo <= 0 or (confirmed := step(lo)):
            break
        # Just below, again and again: near the capacity one miss is noise, and misses that persist mean the
        # host got slower since the bisection (a noisy neighbour), so the walk goes on down to a rate that holds.
        lo = lo * (1 - precision)
    if not confirmed:
        return Capacity(0.0, math.nan, f"no rate down to {steps[-1][0]:.1f}/s stayed within the budget "
                        f"({steps[-1][2]})", tuple(steps), client)
    bracket = f"< {hi:.0f}/s" if math.isfinite(hi) else "no failing rate found within the step limit"
    return Capacity(lo, last.p99_ms, f"{lo:.0f}/s passed twice ({bracket} failed); {len(steps)} open-loop steps",
                    tuple(steps), client)
