"""tritonkit.capacity on its own (pure): the rule that judges one open-loop step, and the search over steps."""

from __future__ import annotations

from tritonkit import capacity
from tritonkit.stats import LevelResult


def test_judge_names_the_figure_that_failed():
    """The capacity rule, step by step (pure): errors, p99, achieved rate, a growing queue."""
    base = dict(concurrency=0, requests=500, errors=0, seconds=5.0, throughput_rps=100.0, items_per_s=100.0,
                p50_ms=5.0, p90_ms=8.0, p99_ms=20.0, mean_ms=6.0, max_ms=30.0, server={}, mode="search",
                offered_rps=100.0, latency_drift_ms=0.5)
    assert capacity.judge(LevelResult(**base), 50)[0]
    assert "errors" in capacity.judge(LevelResult(**{**base, "errors": 3, "errors_by_kind": {"UNAVAILABLE": 3}}),
                                      50)[1]
    assert "p99" in capacity.judge(LevelResult(**{**base, "p99_ms": 60.0}), 50)[1]
    assert "answered 90/s of 100/s" in capacity.judge(LevelResult(**{**base, "throughput_rps": 90.0}), 50)[1]
    assert "queue building up" in capacity.judge(LevelResult(**{**base, "latency_drift_ms": 12.0}), 50)[1]


def test_capacity_search_on_a_known_curve():
    """The search itself against a stand-in step whose pass/fail boundary is known (330/s): bracket, bisect,
    confirm; and no capacity when even the smallest rate fails."""

    def step(rate: float) -> LevelResult:
        p99 = 10.0 if rate <= 330 else 90.0
        return LevelResult(concurrency=0, requests=int(rate), errors=0, seconds=1.0, throughput_rps=rate,
                           items_per_s=rate, p50_ms=p99 / 2, p90_ms=p99, p99_ms=p99, mean_ms=p99 / 2, max_ms=p99,
                           server={}, mode="search", offered_rps=rate, latency_drift_ms=0.0)
    cap = capacity.find(step, 50.0, start_rps=100.0)
    assert 330 * 0.95 <= cap.rps <= 330 and cap.steps[-1] == (cap.rps, True, cap.steps[-1][2])
    none = capacity.find(lambda r: step(1e9), 50.0, start_rps=100.0)
    assert none.rps == 0 and "no rate" in none.reason


def test_capacity_search_backs_off_when_the_host_slows_after_the_bisection():
    """A host that gets 30% slower once the bisection is over (a noisy neighbour, seen in CI): confirmations
    of the bisected rate keep failing. The search must back off far enough to confirm a rate that holds on the
    slower host, within its step budget, instead of reporting no capacity at all."""
    slow_after = []

    def step(rate: float) -> LevelResult:
        slow_after.append(rate)
        limit = 330 if len(slow_after) <= 7 else 330 * 0.7
        p99 = 10.0 if rate <= limit else 90.0
        return LevelResult(concurrency=0, requests=int(rate), errors=0, seconds=1.0, throughput_rps=rate,
                           items_per_s=rate, p50_ms=p99 / 2, p90_ms=p99, p99_ms=p99, mean_ms=p99 / 2, max_ms=p99,
                           server={}, mode="search", offered_rps=rate, latency_drift_ms=0.0)
    cap = capacity.find(step, 50.0, start_rps=100.0)
    assert 0 < cap.rps <= 330 * 0.7, cap.steps
    assert cap.steps[-1][1] and "passed twice" in cap.reason
