#!/usr/bin/env python3
"""How often a request takes >= 400 ms under the current policy, and why: MiniLM ensemble, CPU plan.

Triton 2.51's dynamic batcher re-checks its queue every 500 ms when a queue policy is set and no instance
is parked (triton-inference-server/server#8870): a request can wait for that re-check. The bench counts
requests >= 400 ms per level and attributes each to the model whose queue time, over the statistics
polls around its lifetime, exceeded the level's usual queue time by >= 300 ms (tritonkit.stats).
Closed loop at concurrency 8, 16, 32, 64 on the example spec's plan for this host, N requests each,
then one open-loop rate near the closed-loop peak.

    .venv/bin/python benchmarks/slow_requests.py [--requests 3000] [--out benchmarks/results/slow_requests]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tritonkit import defaults  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--levels", default="8,16,32,64")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "slow_requests")
    args = ap.parse_args()

    from tritonkit.build import build
    from tritonkit.hardware import detect
    from tritonkit.load import run_bench
    from tritonkit.process import free_ports
    from tritonkit.policy import plan_fleet
    from tritonkit.render import write_repository
    from tritonkit.report import print_report, write_report
    from tritonkit.serve import EmbeddedServer, ServerOptions
    from tritonkit.servers import SERVERS
    from tritonkit.spec import load_spec
    from tritonkit.workload import bench_target

    spec = load_spec(defaults.DEFAULT_SPEC)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "model_repository"
        write_repository(plan_fleet(spec, detect(), SERVERS["embedded"]), repo)
        build(repo, spec=spec, progress=False)
        http, grpc, metrics = free_ports(3)
        with EmbeddedServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc,
                                          metrics_port=metrics)) as server:
            model = spec.models[0]
            target = bench_target(model, server.grpc_url, "grpc")
            levels = tuple(int(x) for x in args.levels.split(","))
            closed = run_bench(target, concurrency=levels, requests_per_level=args.requests,
                               budget_p99_ms=model.p99_budget_ms)
            peak = max(lv.throughput_rps for lv in closed.levels)
            opened = run_bench(target, concurrency=(), request_rates=(round(0.8 * peak),),
                               duration_s=args.requests / peak, budget_p99_ms=model.p99_budget_ms)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for report, stem in ((closed, "closed"), (opened, "open")):
        print_report(report)
        write_report(report, args.out, stem=f"slow_requests_{stem}")
        rows += [{"load": lv.label, "mode": lv.mode, "requests": lv.requests, "slow_requests": lv.slow_requests,
                  "slow_causes": lv.slow_causes, "p99_ms": lv.p99_ms, "p999_ms": lv.p999_ms, "max_ms": lv.max_ms,
                  "throughput_rps": lv.throughput_rps} for lv in report.levels]
    (args.out / "slow_requests.json").write_text(json.dumps({"levels": rows}, indent=2) + "\n")
    for r in rows:
        print(f"{r['load']:>8}: {r['slow_requests']} of {r['requests']} requests >= 400 ms "
              f"({', '.join(f'{m}: {n}' for m, n in r['slow_causes'].items()) or 'no cause found'}); "
              f"p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
