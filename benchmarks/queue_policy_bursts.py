#!/usr/bin/env python3
"""Bursts after idle against bounded queues: why queued models get >= 2 instances and a timeout > 500 ms.

A bounded queue (`dynamic_batching.default_queue_policy` with a timeout or a size) turns off Triton's
batcher prefetching; the batcher then wakes for a new request only while an instance is parked waiting
for work. Requests that arrive while every instance is busy can wait for the batcher's 500 ms idle
re-check, and a queue timeout of 2x the 250 ms budget rejects them: "Request timeout expired".
Upstream: triton-inference-server/server#8870.

The MiniLM ensemble as the policy renders it for this host is served three ways on the embedded
tritonserver, each driven with bursts of `width` simultaneous requests (one sentence each, gRPC) with
`--gap` seconds of idle between bursts:

  * plan:            the kit's plan: bounded queues, >= 2 instances each, timeout 500 ms + budget
  * previous:        the plan before these rules: one tokenizer instance, timeouts 2x the budget (500 ms)
  * unbounded_queue: no queue policy anywhere (Triton's defaults; overload is then not shed at all)

Writes <out>/queue_policy_bursts.json and .png; exits 1 when the kit's plan rejects any request.

    .venv/bin/python benchmarks/queue_policy_bursts.py [--rounds 60] [--widths 1,2,5,12] [--gap 0.3]

`bursts` and `previous_rules` are also used by tests/reliability/test_bursts.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tritonkit import defaults  # noqa: E402

VARIANTS = ("plan", "previous", "unbounded_queue")
REQUEST_TIMEOUT_S = 10.0


@dataclass
class BurstRun:
    width: int
    gap_s: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        lat = sorted(self.latencies_ms)
        def pct(q): return round(lat[max(0, min(len(lat) - 1, int(q / 100 * len(lat) + 0.999999) - 1))], 1)
        return {"width": self.width, "gap_s": self.gap_s, "requests": len(lat), "errors": len(self.errors),
                "error_pct": round(100 * len(self.errors) / max(1, len(lat)), 1), "p50_ms": pct(50),
                "p99_ms": pct(99), "max_ms": round(lat[-1], 1), "over_400ms": sum(x > 400 for x in lat),
                "error_messages": sorted(set(self.errors))}


def bursts(url: str, requests: list[bytes], rounds: int, width: int, gap_s: float,
           on_round=None) -> BurstRun:
    """`rounds` times: send `width` requests at once over gRPC, wait for all answers, idle `gap_s`."""
    import grpc

    channel = grpc.insecure_channel(url, options=[("grpc.max_receive_message_length", 64 << 20)])
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
    grpc.channel_ready_future(channel).result(timeout=10)
    run = BurstRun(width, gap_s)
    try:
        for r in range(rounds):
            done = threading.Semaphore(0)
            lock = threading.Lock()
            t0 = time.perf_counter()

            def finish(fut):
                latency = (time.perf_counter() - t0) * 1000
                exc = fut.exception()
                with lock:
                    run.latencies_ms.append(latency)
                    if exc is not None:
                        run.errors.append(f"{exc.code().name}: {exc.details()}" if hasattr(exc, "code") else repr(exc))
                done.release()
            for i in range(width):
                call.future(requests[(r * width + i) % len(requests)], timeout=REQUEST_TIMEOUT_S).add_done_callback(finish)
            for _ in range(width):
                done.acquire(timeout=REQUEST_TIMEOUT_S + 5)
            if on_round is not None:
                on_round()
            time.sleep(gap_s)
    finally:
        channel.close()
    return run


def previous_rules(p, budget_ms: float):
    """The plan as the rules before this benchmark made it: one tokenizer instance, queue timeouts 2x the
    budget."""
    timeout = int(budget_ms * 1000 * defaults.QUEUE_TIMEOUT_BUDGET_SHARE)
    def change(m):
        if m.batching is None:
            return m
        instances = (replace(m.instances[0], count=1),) if m.role == "tokenizer" else m.instances
        return replace(m, instances=instances, batching=replace(m.batching, timeout_us=timeout))
    return replace(p, models=tuple(change(m) for m in p.models))


def unbounded(p):
    """The plan with no queue policy anywhere."""
    return replace(p, models=tuple(m if m.batching is None else replace(m, batching=replace(
        m.batching, max_queue_size=0, timeout_us=0)) for m in p.models))


def plot(record: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = [r["width"] for r in record["results"][VARIANTS[0]]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    step = 0.8 / len(VARIANTS)
    for k, name in enumerate(VARIANTS):
        rows = record["results"][name]
        xs = [i + (k - (len(VARIANTS) - 1) / 2) * step for i in range(len(widths))]
        left.bar(xs, [r["error_pct"] for r in rows], step, label=name)
        right.bar(xs, [r["max_ms"] for r in rows], step, label=name)
    for ax, label in ((left, "requests rejected (%)"), (right, "slowest request (ms)")):
        ax.set_xticks(range(len(widths)), [str(w) for w in widths])
        ax.set_xlabel("requests per burst")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    right.axhline(500, color="gray", ls=":", lw=1)
    fig.suptitle(f"bursts after {record['gap_s']:g} s idle, {record['rounds']} per width: MiniLM ensemble on "
                 f"embedded Triton {record['triton']} ({record['host']})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60, help="bursts per width (default: %(default)s)")
    ap.add_argument("--widths", default="1,2,5,12", help="requests per burst (default: %(default)s)")
    ap.add_argument("--gap", type=float, default=0.3, help="idle seconds between bursts (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "queue_policy")
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]

    from rich.progress import Progress

    from tritonkit.build import build
    from tritonkit.hardware import detect
    from tritonkit.policy import plan
    from tritonkit.render import write_repository
    from tritonkit.serve import EmbeddedServer, ServerOptions
    from tritonkit.servers import SERVERS
    from tritonkit.spec import load_spec
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from soak import _free_ports, text_requests
    from tritonkit.workload import load_texts

    spec = load_spec(defaults.DEFAULT_SPEC)
    model = spec.models[0]
    hw = detect()
    base = plan(spec, hw, SERVERS["embedded"])
    plans = {"plan": base, "previous": previous_rules(base, model.p99_budget_ms), "unbounded_queue": unbounded(base)}
    requests = text_requests(model.name, model.text_input, load_texts())
    work = Path(tempfile.mkdtemp(prefix="tk-bursts-"))
    results, version = {}, "?"
    try:
        with Progress() as progress:
            task = progress.add_task("bursts", total=len(VARIANTS) * len(widths) * args.rounds)
            for name in VARIANTS:
                repo = work / name / "model_repository"
                write_repository(plans[name], repo)
                build(repo, spec=spec, progress=False)
                ports = _free_ports(3)
                options = ServerOptions(repository=repo, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2])
                with EmbeddedServer(options) as server:
                    version = server.server_version
                    results[name] = []
                    for width in widths:
                        progress.update(task, description=f"{name}, bursts of {width}")
                        run = bursts(server.grpc_url, requests, args.rounds, width, args.gap,
                                     on_round=lambda: progress.advance(task))
                        results[name].append(run.summary())
    finally:
        shutil.rmtree(work, ignore_errors=True)

    host = f"{hw.cpu_cores} CPU cores, " + (", ".join(g.name for g in hw.gpus) or "no GPU")
    record = {"host": host, "platform": platform.platform(), "triton": version, "model": model.name,
              "rounds": args.rounds, "gap_s": args.gap, "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "queue_policy_bursts.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(record, args.out / "queue_policy_bursts.png")
    print(f"{'variant':16} {'width':>5} {'reqs':>5} {'errors':>6} {'p50':>7} {'p99':>7} {'max':>7}")
    for name in VARIANTS:
        for r in results[name]:
            print(f"{name:16} {r['width']:5} {r['requests']:5} {r['errors']:6} {r['p50_ms']:7} {r['p99_ms']:7} {r['max_ms']:7}")
    print(f"wrote {args.out / 'queue_policy_bursts.json'} and .png")
    failed = sum(r["errors"] for r in results["plan"])
    print("PASSED: the plan rejected no request" if not failed else f"FAILED: the plan rejected {failed} requests")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
