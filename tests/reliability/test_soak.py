"""Property 7 (CI version): sustained load at ~70% of measured capacity, zero errors, p99 within the
spec's budget, tritonserver + stub RSS drift < 5%. benchmarks/soak.py runs the same for minutes
(`--minutes`); this is its short form on the shared server, writing its JSON + PNG to a temp folder.

On a machine shared with other work the verdict can be the neighbours' (a CPU-heavy build stalls the
server past its queue timeout, and requests are rejected): the soak measures the CPU the other
processes take, and a failed verdict with more than NOISY_NEIGHBOUR_PCT of it is a skip that prints the
figures, not a pass.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from tritonkit import defaults
from tritonkit.spec import load_spec

from .helpers import load_soak

pytestmark = pytest.mark.integration

SECONDS = 60.0  # long enough that one 0.5 s hiccup of a shared machine does not decide the p99
# Above this share of the machine's CPUs taken by other processes during the run, a failed verdict says
# more about the machine than about the server: the test is skipped with the figures instead of failing.
# CI runs the suite alone, where this is ~0 and the verdict stands.
NOISY_NEIGHBOUR_PCT = 15.0


def test_short_soak_at_70_percent_of_capacity(minilm_server, minilm_capacity, example_plan, tmp_path):
    """Prevents a leak (RSS creeping per request in tritonserver or a stub), errors that only appear after
    thousands of requests, and a p99 that holds for a bench level but not for sustained traffic."""
    soak = load_soak()
    model = load_spec(defaults.DEFAULT_SPEC).models[0]
    result = soak.run_soak(minilm_server.pid, minilm_server.grpc_url, model, capacity_rps=minilm_capacity,
                           load_share=0.7, seconds=SECONDS, warmup_s=10.0, window_s=5.0)
    (tmp_path / "soak.json").write_text(json.dumps(asdict(result)))
    png = soak.plot(result, tmp_path / "soak.png", "CI soak")
    print(f"\nFIGURE soak {SECONDS:g} s: {result.requests} requests at {result.rate_rps}/s, {result.errors} errors, "
          f"p50 {result.p50_ms} ms, p99 {result.p99_ms} ms (worst window "
          f"{result.worst_window_p99_ms} ms), RSS drift total {result.drift_total_pct:+.2f}% "
          f"server {result.drift_server_pct:+.2f}% stubs {result.drift_stubs_pct:+.2f}%, late sends {result.late_sends}, "
          f"other work {result.other_cpu_pct}% of the CPUs")
    if not result.passed and result.other_cpu_pct > NOISY_NEIGHBOUR_PCT:
        pytest.skip(f"other processes used {result.other_cpu_pct:.0f}% of the CPUs during the soak (windows: "
                    f"{[w['other_cpu_pct'] for w in result.windows]}): not a measurement of the server; "
                    f"verdict was {result.reasons}")
    assert png.stat().st_size > 10_000
    assert result.requests >= 0.95 * result.rate_rps * SECONDS
    stubs = sum(g.count for m in example_plan.models if m.backend == "python" for g in m.instances)
    assert {s["stubs"] for s in result.rss} == {stubs}, f"expected the {stubs} python-backend stubs in every sample"
    assert result.errors == 0, result.errors_by_status
    assert result.passed, result.reasons
