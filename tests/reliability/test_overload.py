"""Property 6: overload is shed, not queued forever.

The MiniLM ensemble as the policy renders it (tokenizer and encoder each with a bounded queue, 4 full
batches, that REJECTs requests older than the batcher's 500 ms re-check + the 250 ms p99 budget) is driven
open loop at 2x the capacity the bench step measured, then at half of it. Under overload some requests must be answered UNAVAILABLE
instead of waiting, every request must get an answer within a bound, the server's RSS must stay flat
(no per-request growth), and at half load right after, nothing may fail.

Measured on tritonserver 2.51: rejections are "Request timeout expired" (the queue timeout is checked
when a batch is formed, so a request waits its queue timeout plus up to one batch in each of the two
stages) or "Exceeds maximum queue size"; goodput under 2x stays at or above the closed-loop capacity
because the encoder then runs bigger batches. Without a queue policy 2.51 executes every queued request
even after its client gave up (measured: goodput fell to 0 in the second 5 s at 2x), so the bound stays.
"""

from __future__ import annotations

import time

import pytest

from tritonkit import defaults
from tritonkit.policy import queue_timeout_us
from tritonkit.spec import load_spec

from .helpers import load_soak

pytestmark = pytest.mark.integration

OVERLOAD_S = 5.0         # per phase; two phases, so RSS growth in the second shows what overload costs
RECOVERY_S = 4.0
# An answer (result or rejection) must come within this: 2 queues x their timeout, plus execution of the
# batches in front. An unbounded queue at 2x would make the wait grow by ~0.5 s per second of overload.
ANSWER_BOUND_S = 2 * queue_timeout_us(load_spec(defaults.DEFAULT_SPEC).models[0].p99_budget_ms) / 1e6 + 1.0
RSS_GROWTH_LIMIT_PCT = 5.0
NOISY_NEIGHBOUR_PCT = 15.0  # see test_soak.py: beyond this, a slow recovery says more about the machine
CLIENT_ATTEMPTS = 2         # an overload measurement whose sender fell behind its schedule is repeated once


def test_twice_the_capacity_is_shed_quickly_and_the_server_recovers(minilm_server, minilm_capacity):
    """Prevents overload building an unbounded queue (latency and memory growing for as long as it lasts),
    requests that never get an answer, a server that stays degraded after the load drops, and a shedding
    mechanism that is configured but never fires."""
    soak = load_soak()
    model = load_spec(defaults.DEFAULT_SPEC).models[0]
    from tritonkit.workload import load_texts
    requests = soak.text_requests(model.name, model.text_input, load_texts())

    for attempt in range(CLIENT_ATTEMPTS):
        phases, peaks = [], []
        for _ in range(2):  # the first phase reaches the high-water mark (queues full, bigger batches)...
            with soak.RssSampler(minilm_server.pid, interval_s=0.2) as rss:
                phases.append(soak.open_loop(minilm_server.grpc_url, requests, 2 * minilm_capacity, OVERLOAD_S))
            peaks.append(max(s.server_kb + s.stubs_kb for s in rss.samples))
            time.sleep(0.5)
        late = sum(run.late_sends for run in phases)
        if late < 0.05 * sum(len(run.outcomes) for run in phases):
            break
        # The sender shares the 2 cores with a server at twice its capacity: when the machine starves it, this
        # attempt measured the client, not the server. The next one starts from drained queues.
        print(f"\noverload attempt {attempt + 1}: the client sent {late} requests over 50 ms late; measuring again")
        time.sleep(2.0)
    growth = 100.0 * (peaks[1] - peaks[0]) / peaks[0]  # ...the second must not go beyond it
    time.sleep(1.0)  # the queues drain
    with soak.RssSampler(minilm_server.pid, interval_s=0.5) as machine:
        calm = soak.open_loop(minilm_server.grpc_url, requests, 0.5 * minilm_capacity, RECOVERY_S)
    other_cpu = soak.neighbour_cpu_pct(machine.samples)

    outcomes = [o for run in phases for o in run.outcomes]
    statuses = {k: sum(run.by_status().get(k, 0) for run in phases) for k in {o.status for o in outcomes}}
    rejected = [o for o in outcomes if o.status == "UNAVAILABLE"]
    answered = [o.latency_s for o in outcomes if o.latency_s is not None]
    rej_ms = [o.latency_s * 1000 for o in rejected]
    ok_ms = [o.latency_s * 1000 for o in outcomes if o.status == "OK"]
    goodput = len(ok_ms) / (2 * OVERLOAD_S)
    calm_ms = [o.latency_s * 1000 for o in calm.ok()]

    def pct(values, q):  # an empty list (nothing shed, nothing answered) prints as nan instead of raising
        return soak.percentile(values, q) if values else float("nan")

    calm_p99 = pct(calm_ms, 99)
    print(f"\nFIGURE overload: capacity {minilm_capacity:.0f}/s, offered {phases[0].rate_rps:.0f}/s for 2 x {OVERLOAD_S:g} s: "
          f"{statuses}, goodput {goodput:.0f}/s, rejection p50/p99/max "
          f"{pct(rej_ms, 50):.0f}/{pct(rej_ms, 99):.0f}/{pct(rej_ms, 100):.0f} ms, ok p50/p99 "
          f"{pct(ok_ms, 50):.0f}/{pct(ok_ms, 99):.0f} ms, RSS peak (server + stubs) "
          f"{peaks[0] / 1024:.1f} -> {peaks[1] / 1024:.1f} MiB ({growth:+.2f}%), reasons "
          f"{sorted({o.detail.split(']')[-1].strip()[-40:] for o in rejected})}; recovery at {calm.rate_rps:.0f}/s: "
          f"{calm.by_status()}, p99 {calm_p99:.0f} ms (other work: {other_cpu:.0f}% of the CPUs)")

    assert sum(run.late_sends for run in phases) < 0.05 * len(outcomes), "the client could not offer 2x"
    assert set(statuses) <= {"OK", "UNAVAILABLE"}, statuses  # no client timeouts, no other failures
    assert len(rejected) >= 0.05 * len(outcomes), f"2x capacity was not shed: {statuses}"
    assert len(answered) == len(outcomes) and max(answered) < ANSWER_BOUND_S, max(answered)
    assert goodput >= 0.5 * minilm_capacity, f"goodput collapsed to {goodput:.0f}/s under overload"
    assert growth < RSS_GROWTH_LIMIT_PCT, f"RSS kept growing under sustained overload: {growth:+.2f}%"

    recovered = bool(calm_ms) and calm.by_status() == {"OK": len(calm.outcomes)} and calm_p99 < model.p99_budget_ms
    if not recovered:
        figures = (f"recovery at {calm.rate_rps:.0f}/s for {RECOVERY_S:g} s: {calm.by_status()}, p99 {calm_p99:.0f} ms "
                   f"(budget {model.p99_budget_ms:g} ms); other processes used {other_cpu:.0f}% of the CPUs")
        # Only the recovery half is judged this way (the shedding asserts above stand whatever the load). xfail,
        # not skip and not fail, when other processes demonstrably took > NOISY_NEIGHBOUR_PCT of the CPUs
        # during the calm phase (measured from /proc; NaN, not measured, is not > 15 and fails): the slow
        # recovery then measured the machine, failing would blame the server, a skip would read as "not run".
        # The xfail carries the figures into the -ra summary and never counts as a pass: a pass means the
        # server recovered.
        if other_cpu > NOISY_NEIGHBOUR_PCT:
            pytest.xfail(f"recovery failed on a loaded machine, not a measurement of the server: {figures}")
        pytest.fail(f"the server did not recover after the overload: {figures}")
