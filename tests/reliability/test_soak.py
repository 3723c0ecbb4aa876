"""Property 7 (CI version): sustained load at ~70% of measured capacity, zero errors, p99 within the
spec's budget, tritonserver + stub RSS drift < 5%. benchmarks/soak.py runs the same for minutes
(`--minutes`); this is its short form on the shared server, writing its JSON + PNG to a temp folder.

On a machine shared with other work the verdict can be the neighbours' (a CPU-heavy build stalls the
server past its queue timeout, and requests are rejected): the soak measures the CPU the other
processes take, and a failed latency/error verdict with more than NOISY_NEIGHBOUR_PCT of it is an
xfail that prints the figures, never a pass or a skip. RSS drift and the load-independent facts fail
whatever the neighbours did.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import pytest

from tritonkit import defaults
from tritonkit.spec import load_spec

from .helpers import load_soak

pytestmark = pytest.mark.integration

SECONDS = 60.0  # long enough that one 0.5 s hiccup of a shared machine does not decide the p99
# Above this share of the machine's CPUs taken by other processes during the run, a failed latency or
# error verdict says more about the machine than about the server. CI runs the suite alone, where this is
# ~0 and the verdict stands (a failure fails).
NOISY_NEIGHBOUR_PCT = 15.0
# Verdict reasons that CPU taken by other processes can cause (time: queue timeouts, p99, a client that
# fell behind its schedule). RSS drift is memory growth per request: no neighbour explains it away.
# (the wording of benchmarks/soak.py's run_soak reasons; any other reason fails).
LOAD_SENSITIVE = re.compile(r"\d+ errors: |p99 \S+ ms over the |the client fell behind its schedule")


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
    # What holds however loaded the machine is: the plot was drawn, every python-backend stub was sampled
    # in every sample, and tritonserver + stubs did not grow.
    assert png.stat().st_size > 10_000
    stubs = sum(g.count for m in example_plan.models if m.backend == "python" for g in m.instances)
    assert {s["stubs"] for s in result.rss} == {stubs}, f"expected the {stubs} python-backend stubs in every sample"
    assert abs(result.drift_total_pct) < soak.RSS_DRIFT_LIMIT_PCT, result.reasons

    if not result.passed:
        figures = (f"{result.reasons}; {result.requests} requests at {result.rate_rps}/s, errors "
                   f"{result.errors_by_status}, p99 {result.p99_ms} ms (budget {result.budget_p99_ms:g} ms, worst "
                   f"window {result.worst_window_p99_ms} ms), late sends {result.late_sends}; other processes used "
                   f"{result.other_cpu_pct}% of the CPUs (per window: {[w['other_cpu_pct'] for w in result.windows]})")
        # xfail, not skip and not fail, when other processes demonstrably took > NOISY_NEIGHBOUR_PCT of the
        # CPUs (measured from /proc during the run; NaN, i.e. not measured, is not > 15 and fails): the
        # verdict then measured the machine, so failing would blame the server for its neighbours, while a
        # skip would read as "not run". An xfail is reported with these figures in the -ra summary and is
        # never counted as a pass; a pass only ever means the soak's verdict held.
        if result.other_cpu_pct > NOISY_NEIGHBOUR_PCT and all(LOAD_SENSITIVE.match(r) for r in result.reasons):
            pytest.xfail(f"soak verdict failed on a loaded machine, not a measurement of the server: {figures}")
        pytest.fail(f"soak FAILED: {figures}")
    assert result.requests >= 0.95 * result.rate_rps * SECONDS
    assert result.errors == 0, result.errors_by_status
