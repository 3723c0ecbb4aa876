#!/usr/bin/env python3
"""Soak: the served MiniLM ensemble at ~70% of its measured capacity for minutes; errors, p99, RSS drift.

Capacity is measured first with the bench step (`tritonkit.load.run_bench`, closed loop, gRPC). Then
an open-loop client sends one sentence per request at `--load` x capacity on a fixed schedule (a
request is due every 1/rate s whether or not earlier ones have answered, as real traffic arrives),
while a sampler reads VmRSS from /proc/<pid>/status of tritonserver and of every process in its
process group (the python backend stubs). Pass/fail:

  * zero errors (every request answered with a result within the request timeout),
  * p99 over the whole run within the spec's latency budget (the p99 of each window is plotted),
  * RSS drift < 5%: mean of the last quarter of samples vs mean of the first quarter, after warmup,
    of tritonserver + stubs together (tritonserver and the stubs alone are reported too).

CPU time is sampled with the RSS: the machine's (/proc/stat) minus that of tritonserver, its stubs and
the client is other work. On a shared machine a latency spike in a window where other work took a
large share of the CPUs (`other_cpu_pct`; and the client falling behind, `late_sends`) is the machine,
not the server.

Writes <out>/soak.json and <out>/soak.png (RSS and p99 over time) and exits 1 on FAILED.

    .venv/bin/python benchmarks/soak.py [--minutes 5] [--load 0.7] [--repo DIR] [--out benchmarks/results/soak]

`open_loop`, `RssSampler` and `run_soak` are also used by tests/reliability (overload, short soak).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tritonkit import defaults  # noqa: E402

RSS_DRIFT_LIMIT_PCT = 5.0
REQUEST_TIMEOUT_S = 10.0
MAX_IN_FLIGHT = 512          # open loop, but bounded: beyond this the client, not the server, is the limit
CHANNELS = 4                 # independent HTTP/2 connections, requests spread round-robin


# --- /proc sampling ------------------------------------------------------------------------------

def vm_rss_kb(pid: int) -> int | None:
    """VmRSS of `pid` in kB, None if it is gone (or a zombie, which has no VmRSS line)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (tritonserver runs in its own group with its stubs)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@dataclass
class RssSample:
    t: float            # seconds since the sampler started
    server_kb: int
    stubs_kb: int
    stubs: int          # how many stub processes were seen
    load1: float        # host 1-minute load average
    busy_ticks: int     # CPU time of the whole machine so far (clock ticks, all CPUs, /proc/stat)...
    ours_ticks: int     # ...and of tritonserver, its stubs and this (client) process: the rest is other work


def _machine_busy_ticks() -> int:
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    return user + nice + system + irq + softirq + steal


def _cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def neighbour_cpu_pct(samples: list[RssSample], start_s: float = 0.0, end_s: float = math.inf) -> float:
    """Share of the machine's CPU (all cores, %) that processes other than the server, its stubs and the
    client used between the first and last sample in [start_s, end_s]. A shared machine shows up here."""
    inside = [s for s in samples if start_s <= s.t <= end_s]
    if len(inside) < 2:
        return float("nan")
    a, b = inside[0], inside[-1]
    capacity = (b.t - a.t) * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
    other = (b.busy_ticks - a.busy_ticks) - (b.ours_ticks - a.ours_ticks)
    return max(0.0, 100.0 * other / capacity) if capacity > 0 else float("nan")


class RssSampler:
    """Samples tritonserver (`pid`, also its process group id) and its stubs every `interval_s`: their
    RSS, and CPU time (theirs, this process's and the machine's) to tell other work on the machine apart."""

    def __init__(self, pid: int, interval_s: float = 0.5):
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[RssSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._t0 = time.monotonic()

    def sample(self) -> RssSample | None:
        server = vm_rss_kb(self.pid)
        if server is None:
            return None
        members = group_members(self.pid)
        stubs = [kb for p in members if p != self.pid and (kb := vm_rss_kb(p)) is not None]
        # CPU of stubs that exit between samples is lost: counted as other work, never hidden.
        ours = sum(_cpu_ticks(p) for p in members) + _cpu_ticks(os.getpid())
        return RssSample(round(time.monotonic() - self._t0, 3), server, sum(stubs), len(stubs), os.getloadavg()[0],
                         _machine_busy_ticks(), ours)

    def _run(self) -> None:
        while not self._stop.is_set():
            s = self.sample()
            if s is not None:
                self.samples.append(s)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def drift_pct(samples: list[RssSample], after_s: float, key) -> float:
    """Last-quarter mean vs first-quarter mean of key(sample), for samples taken after `after_s`, in %."""
    values = [key(s) for s in samples if s.t >= after_s]
    if len(values) < 8:
        raise ValueError(f"too few RSS samples after warmup to measure drift: {len(values)}")
    q = len(values) // 4
    first, last = sum(values[:q]) / q, sum(values[-q:]) / q
    return 100.0 * (last - first) / first


# --- open-loop load ------------------------------------------------------------------------------

@dataclass
class Outcome:
    sent: float                 # seconds since the run started, when the request was sent
    latency_s: float | None     # None: no answer (client timeout or client backlog)
    status: str                 # "OK" or the gRPC status code name ("UNAVAILABLE", ...)
    detail: str = ""


@dataclass
class LoadRun:
    rate_rps: float
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    late_sends: int = 0         # sends more than 50 ms behind schedule (the client could not keep up)

    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "OK"]

    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != "OK"]

    def by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        return counts


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))]


def text_requests(model: str, input_name: str, texts, batch: int = 1) -> list[bytes]:
    """Serialized ModelInferRequest messages, one per text (BYTES [batch, 1]), built once."""
    import struct

    from tritonclient.grpc import service_pb2
    out = []
    for i in range(len(texts)):
        req = service_pb2.ModelInferRequest(model_name=model)
        t = req.inputs.add()
        t.name, t.datatype = input_name, "BYTES"
        t.shape.extend([batch, 1])
        raw = b"".join(struct.pack("<I", len(b)) + b
                       for b in (texts[(i + j) % len(texts)].encode() for j in range(batch)))
        req.raw_input_contents.append(raw)
        out.append(req.SerializeToString())
    return out


def open_loop(url: str, requests: list[bytes], rate_rps: float, seconds: float, *,
              timeout_s: float = REQUEST_TIMEOUT_S, max_in_flight: int = MAX_IN_FLIGHT,
              stop: threading.Event | None = None) -> LoadRun:
    """Send `requests` (cycled) at `rate_rps` for `seconds` over gRPC, open loop; wait for every answer.

    Bounded in count (rate x seconds) and time (seconds + timeout_s). A request that would exceed
    `max_in_flight` is not sent and counts as status "CLIENT_BACKLOG".
    """
    import grpc

    channels = [grpc.insecure_channel(url, options=[("grpc.use_local_subchannel_pool", 1),
                                                    ("grpc.max_receive_message_length", 64 << 20)])
                for _ in range(CHANNELS)]
    calls = [ch.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                            request_serializer=lambda b: b, response_deserializer=lambda b: b)
             for ch in channels]
    for ch in channels:
        grpc.channel_ready_future(ch).result(timeout=10)
    run = LoadRun(rate_rps, seconds)
    lock = threading.Lock()
    in_flight = threading.Semaphore(max_in_flight)
    pending = [0]
    all_done = threading.Event()
    total = int(rate_rps * seconds)
    t0 = time.perf_counter()

    def finish(outcome: Outcome) -> None:
        with lock:
            run.outcomes.append(outcome)
            pending[0] -= 1
            if pending[0] == 0 and sent_all[0]:
                all_done.set()

    def on_done(fut, sent_at: float) -> None:
        latency = time.perf_counter() - t0 - sent_at
        in_flight.release()
        exc = fut.exception()
        if exc is None:
            finish(Outcome(sent_at, latency, "OK"))
        else:
            code = exc.code().name if hasattr(exc, "code") else type(exc).__name__
            details = exc.details() if hasattr(exc, "details") else str(exc)
            finish(Outcome(sent_at, None if code == "DEADLINE_EXCEEDED" else latency, code, (details or "")[:200]))

    sent_all = [False]
    try:
        for i in range(total):
            if stop is not None and stop.is_set():
                break
            due = i / rate_rps
            now = time.perf_counter() - t0
            if due > now:
                time.sleep(due - now)
            elif now - due > 0.05:
                run.late_sends += 1
            sent_at = time.perf_counter() - t0
            if not in_flight.acquire(blocking=False):
                with lock:
                    run.outcomes.append(Outcome(sent_at, None, "CLIENT_BACKLOG"))
                continue
            with lock:
                pending[0] += 1
            fut = calls[i % len(calls)].future(requests[i % len(requests)], timeout=timeout_s)
            fut.add_done_callback(lambda f, s=sent_at: on_done(f, s))
        with lock:
            sent_all[0] = True
            if pending[0] == 0:
                all_done.set()
        all_done.wait(timeout_s + 5)
    finally:
        for ch in channels:
            ch.close()
    run.outcomes.sort(key=lambda o: o.sent)
    return run


# --- capacity and soak ---------------------------------------------------------------------------

def measure_capacity(url: str, model_spec, *, concurrency=(4, 8), requests: int = 300) -> float:
    """Requests/s the server sustains, closed loop (the bench step): the best level's successful responses/s.

    A few rejections at the top level are saturation, not failure (the queue policy sheds requests that
    waited past the budget, which a noisy neighbour on a small machine can cause); more than 2% means
    the measurement is not a capacity and it raises.
    """
    from tritonkit.load import run_bench
    from tritonkit.workload import bench_target
    report = run_bench(bench_target(model_spec, url, "grpc"), concurrency=concurrency,
                       requests_per_level=requests, warmup_requests=20, progress=False)
    for lv in report.levels:
        if lv.errors > 0.02 * lv.requests:
            raise RuntimeError(f"{lv.errors} of {lv.requests} requests failed at concurrency {lv.concurrency} "
                               f"while measuring capacity: {lv.error_samples}")
    return max(lv.throughput_rps for lv in report.levels)


@dataclass
class SoakResult:
    capacity_rps: float
    load_share: float
    rate_rps: float
    seconds: float
    warmup_s: float
    budget_p99_ms: float
    requests: int
    errors: int
    errors_by_status: dict
    late_sends: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    worst_window_p99_ms: float
    windows: list               # [{"t": end of window s, "requests", "errors", "p99_ms"}]
    rss: list                   # [asdict(RssSample)]
    drift_total_pct: float
    drift_server_pct: float
    drift_stubs_pct: float
    other_cpu_pct: float        # CPU share of other processes on the machine during the run (after warmup)
    passed: bool
    reasons: list


def run_soak(server_pid: int, url: str, model_spec, *, capacity_rps: float, load_share: float = 0.7,
             seconds: float = 300.0, warmup_s: float | None = None, window_s: float | None = None,
             budget_p99_ms: float | None = None) -> SoakResult:
    """Drive `load_share` x `capacity_rps` for `seconds` and judge errors, p99 and RSS drift."""
    from tritonkit.workload import load_texts

    warmup_s = warmup_s if warmup_s is not None else min(30.0, seconds / 5)
    window_s = window_s if window_s is not None else max(5.0, seconds / 30)
    budget = budget_p99_ms if budget_p99_ms is not None else model_spec.p99_budget_ms
    rate = capacity_rps * load_share
    requests = text_requests(model_spec.name, model_spec.text_input, load_texts())
    with RssSampler(server_pid) as sampler:
        run = open_loop(url, requests, rate, seconds)
    windows = []
    n_windows = max(1, int(round(seconds / window_s)))
    for w in range(n_windows):
        lo, hi = w * window_s, (w + 1) * window_s
        inside = [o for o in run.outcomes if lo <= o.sent < hi]
        lat = [o.latency_s * 1000 for o in inside if o.status == "OK"]
        windows.append({"t": round(hi, 1), "requests": len(inside),
                        "errors": sum(o.status != "OK" for o in inside),
                        "p99_ms": round(percentile(lat, 99), 2) if lat else None,
                        "other_cpu_pct": round(neighbour_cpu_pct(sampler.samples, lo, hi), 1)})
    ok = [o.latency_s * 1000 for o in run.ok()]
    samples = sampler.samples
    drift_total = drift_pct(samples, warmup_s, lambda s: s.server_kb + s.stubs_kb)
    drift_server = drift_pct(samples, warmup_s, lambda s: s.server_kb)
    drift_stubs = drift_pct(samples, warmup_s, lambda s: s.stubs_kb)
    reasons = []
    errors = len(run.errors())
    if errors:
        reasons.append(f"{errors} errors: {run.by_status()}")
    p99 = percentile(ok, 99) if ok else float("inf")
    if p99 > budget:
        reasons.append(f"p99 {p99:.1f} ms over the {budget:g} ms budget")
    if abs(drift_total) >= RSS_DRIFT_LIMIT_PCT:
        reasons.append(f"tritonserver + stubs RSS drift {drift_total:+.2f}% (limit {RSS_DRIFT_LIMIT_PCT}%)")
    if run.late_sends > 0.01 * len(run.outcomes):
        reasons.append(f"the client fell behind its schedule on {run.late_sends} sends: load was not as offered")
    return SoakResult(
        capacity_rps=round(capacity_rps, 1), load_share=load_share, rate_rps=round(rate, 1), seconds=seconds,
        warmup_s=warmup_s, budget_p99_ms=budget, requests=len(run.outcomes), errors=errors,
        errors_by_status={k: v for k, v in run.by_status().items() if k != "OK"}, late_sends=run.late_sends,
        p50_ms=round(percentile(ok, 50), 2) if ok else float("nan"),
        p99_ms=round(percentile(ok, 99), 2) if ok else float("nan"),
        max_ms=round(max(ok), 2) if ok else float("nan"),
        worst_window_p99_ms=max((w["p99_ms"] for w in windows if w["p99_ms"] is not None), default=float("nan")),
        windows=windows, rss=[asdict(s) for s in samples],
        drift_total_pct=round(drift_total, 3), drift_server_pct=round(drift_server, 3),
        drift_stubs_pct=round(drift_stubs, 3),
        other_cpu_pct=round(neighbour_cpu_pct(samples, warmup_s), 1), passed=not reasons, reasons=reasons)


def plot(result: SoakResult, path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), dpi=110, sharex=True)
    t = [s["t"] for s in result.rss]
    top.plot(t, [s["server_kb"] / 1024 for s in result.rss], label="tritonserver")
    top.plot(t, [s["stubs_kb"] / 1024 for s in result.rss], label="python backend stubs")
    top.plot(t, [(s["server_kb"] + s["stubs_kb"]) / 1024 for s in result.rss], label="total", lw=2)
    top.axvline(result.warmup_s, color="gray", ls=":", label=f"end of warmup ({result.warmup_s:g} s)")
    top.set_ylabel("RSS (MiB)")
    top.set_ylim(bottom=0)
    top.set_title(f"RSS drift after warmup: total {result.drift_total_pct:+.2f}%, tritonserver "
                  f"{result.drift_server_pct:+.2f}%, stubs {result.drift_stubs_pct:+.2f}% (limit ±{RSS_DRIFT_LIMIT_PCT:g}%)",
                  fontsize=9)
    wt = [w["t"] for w in result.windows]
    bottom.plot(wt, [w["p99_ms"] for w in result.windows], "o-", label="p99 per window")
    bottom.axhline(result.budget_p99_ms, color="red", ls="--", label=f"budget {result.budget_p99_ms:g} ms")
    other = bottom.twinx()
    other.step(wt, [w["other_cpu_pct"] for w in result.windows], where="pre", color="gray", alpha=0.6, lw=1,
               label="CPU used by other work on the machine (%)")
    other.set_ylabel("other work (% of all CPUs)", color="gray")
    other.set_ylim(0, 100)
    other.legend(fontsize=7, loc="upper right")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds")
    bottom.set_ylim(bottom=0)
    bottom.set_title(f"{result.requests} requests at {result.rate_rps:g}/s ({result.load_share:.0%} of "
                     f"{result.capacity_rps:g}/s measured), {result.errors} errors, overall p99 {result.p99_ms:g} ms; "
                     f"other work used {result.other_cpu_pct:.0f}% of the CPUs", fontsize=9)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _free_ports(n: int) -> list[int]:
    import socket
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((defaults.BIND_ADDRESS, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="soak duration (default: %(default)s)")
    ap.add_argument("--load", type=float, default=0.7, help="share of the measured capacity (default: %(default)s)")
    ap.add_argument("--repo", type=Path, default=None, help="built repository to serve (default: render + build one in /tmp)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak")
    args = ap.parse_args()
    if not 0 < args.load <= 1 or args.minutes <= 0:
        ap.error("--load must be in (0, 1] and --minutes > 0")

    from tritonkit.build import build
    from tritonkit.hardware import detect
    from tritonkit.policy import plan
    from tritonkit.render import write_repository
    from tritonkit.serve import EmbeddedServer, ServerOptions
    from tritonkit.servers import SERVERS
    from tritonkit.spec import load_spec

    spec = load_spec(defaults.DEFAULT_SPEC)
    model = spec.models[0]
    hw = detect()
    repo = args.repo
    if repo is None:
        p = plan(spec, hw, SERVERS["embedded"])
        repo = Path(tempfile.mkdtemp(prefix="tk-soak-")) / "model_repository"
        write_repository(p, repo)
        build(repo, spec=spec, progress=False)
    ports = _free_ports(3)  # not 8000-8002: a server the user runs may hold those
    options = ServerOptions(repository=repo, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2])
    with EmbeddedServer(options) as server:
        capacity = measure_capacity(server.grpc_url, model)
        print(f"capacity (closed loop, bench step): {capacity:.1f} requests/s; soaking at {args.load:.0%} "
              f"= {capacity * args.load:.1f}/s for {args.minutes:g} min", flush=True)
        result = run_soak(server.pid, server.grpc_url, model, capacity_rps=capacity, load_share=args.load,
                          seconds=args.minutes * 60)
        version = server.server_version
    host = f"{hw.cpu_cores} CPU cores, " + (", ".join(g.name for g in hw.gpus) or "no GPU")
    record = {"host": host, "platform": platform.platform(), "triton": version, "model": model.name,
              "command": " ".join([Path(sys.executable).name, *sys.argv]), **asdict(result)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(result, args.out / "soak.png", f"soak: {model.name} on embedded Triton {version}, {host}")
    print(f"{result.requests} requests, {result.errors} errors, p50 {result.p50_ms} ms, p99 {result.p99_ms} ms "
          f"(budget {result.budget_p99_ms:g}), RSS drift total {result.drift_total_pct:+.2f}% / server "
          f"{result.drift_server_pct:+.2f}% / stubs {result.drift_stubs_pct:+.2f}%; other work on the machine used "
          f"{result.other_cpu_pct:.0f}% of its CPUs")
    print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.png'}")
    print("PASSED" if result.passed else "FAILED: " + "; ".join(result.reasons))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
