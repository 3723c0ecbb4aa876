#!/usr/bin/env python3
"""The kit's GPU plan vs a naive config, served by the embedded tritonserver on this host's GPU.

Any spec whose model the embedded server runs in PyTorch on the GPU: MiniLM (the default), the sentiment
classifier (examples/sentiment/models.yaml, a Hugging Face folder) or the digits image classifier
(examples/digits/images.yaml, a PyTorch factory), the last two as torch.export programs.

For the GPU found here (detected, so a GPU limited by CUDA MPS shows its real SM count):
  kit    - the plan tritonkit makes for it (precision, torch.compile mode from the SM count,
           instances, dynamic batching),
  naive  - FP32 eager PyTorch, one instance, no dynamic batching (the same model code),
  big    - only when this GPU has fewer SMs than torch's max-autotune threshold: the plan made for
           a full H100 SXM (max-autotune, 2 instances) at the small plan's precision, run on this small GPU.
Each is rendered, built (validated against the source), served and driven with the spec's own
workload (one item per request, gRPC) over a concurrency sweep. The server
log is searched for "Not enough SMs to use max_autotune_gemm mode". Writes JSON + PNG.

    python benchmarks/gpu_plan_vs_naive.py --out reports/gpu [--spec SPEC] [--source DIR] [--concurrency 1,4,16,64]

The server's python models run in this Python's environment unless $TRITONKIT_STUB_PYTHON names another
(it must have NumPy 1: tritonkit/stub_env.py says why).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tritonkit import defaults  # noqa: E402
from tritonkit.policy import TORCH_RUNTIMES  # noqa: E402

SM_WARNING = "Not enough SMs to use max_autotune_gemm mode"


def with_source(spec_path: Path, source: str, out: Path) -> Path:
    """A copy of the spec whose models read their weights from `source` (hosts without the weights package)."""
    import yaml
    data = yaml.safe_load(spec_path.read_text())
    for model in data["models"]:
        model["source"]["path"] = str(Path(source).resolve())
    out.mkdir(parents=True, exist_ok=True)
    path = out / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def torch_model(plan):
    """The plan's model that runs in PyTorch on the GPU (what the configs differ in)."""
    return next(m for m in plan.models if m.runtime in TORCH_RUNTIMES)


def naive(plan):
    """FP32 eager, one GPU instance, no dynamic batching, for every python model of the plan."""
    from tritonkit.plan import InstanceGroup
    models = []
    for m in plan.models:
        if m.backend == "python":
            params = dict(m.parameters)
            if m.runtime in TORCH_RUNTIMES:
                params |= {"precision": "fp32", "compile_mode": "none"}
                m = replace(m, precision="fp32", instances=(InstanceGroup("KIND_GPU", 1),))
            inputs = tuple(replace(t, ragged=False) for t in m.inputs)
            m = replace(m, batching=None, inputs=inputs, parameters=tuple(params.items()))
        models.append(m)
    return replace(plan, models=tuple(models))


def run_config(name, plan, spec, work: Path, levels, requests, log, tag=None):
    """Render, build, serve and bench one config; `tag` names this run's files (default: the config)."""
    tag = tag or name
    from tritonkit.build import build
    from tritonkit.load import run_bench
    from tritonkit.render import write_repository
    from tritonkit.report import write_report
    from tritonkit.serve import EmbeddedServer, ServerOptions
    from tritonkit.workload import bench_target

    repo = work / f"{name}_repo"
    write_repository(plan, repo)
    built = build(repo, spec=spec, progress=False)
    log(f"[{tag}] built: " + "; ".join(r.summary() for r in built))
    server = EmbeddedServer(ServerOptions(repository=repo, log_file=work / f"{tag}_server.log"))
    started = time.perf_counter()
    try:
        server.start()
        server.wait_ready(timeout_s=900)
        ready_s = time.perf_counter() - started
        log(f"[{tag}] ready in {ready_s:.0f} s (includes torch.compile warm-up of every bucket)")
        report = run_bench(bench_target(spec.models[0], server.grpc_url, "grpc"), concurrency=levels,
                           requests_per_level=requests, warmup_requests=50, progress=False)
    finally:
        server.stop()
    write_report(report, work, stem=f"bench_{tag}")
    server_log = (work / f"{tag}_server.log").read_text(errors="replace")
    enc = torch_model(plan)
    params = dict(enc.parameters)
    result = {
        "name": name, "ready_seconds": round(ready_s, 1), "sm_warning": SM_WARNING in server_log,
        "precision": enc.precision, "compile_mode": params.get("compile_mode"),
        "instances": enc.instances[0].count, "dynamic_batching": enc.batching is not None,
        "levels": [{k: getattr(lv, k) for k in ("concurrency", "requests", "errors", "items_per_s", "p50_ms",
                                                 "p90_ms", "p99_ms")} | {"server": lv.server} for lv in report.levels],
    }
    best = max(result["levels"], key=lambda lv: lv["items_per_s"])
    log(f"[{tag}] best {best['items_per_s']:.0f}/s at concurrency {best['concurrency']} (p99 {best['p99_ms']:.1f} ms); "
        f"SM warning in log: {result['sm_warning']}")
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "gpu")
    ap.add_argument("--spec", type=Path, default=defaults.DEFAULT_SPEC)
    ap.add_argument("--source", default=None, help="sentence-transformers folder replacing the spec's source")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--configs", default="kit,naive,big", help="which of kit,naive,big to run")
    ap.add_argument("--precision", default=None, help="override the spec's precision request (e.g. fp32)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the configs this many times, order reversed every other round; medians are compared")
    args = ap.parse_args()

    from tritonkit.hardware import declared, detect
    from tritonkit.policy import Capabilities, plan
    from tritonkit.servers import SERVERS
    from tritonkit.spec import load_spec
    from tritonkit.torch_facts import inductor_min_sms

    spec = load_spec(with_source(args.spec, args.source, args.out) if args.source else args.spec)
    if args.precision:
        spec = replace(spec, models=tuple(replace(m, precision=args.precision) for m in spec.models))
    hw = detect()
    if not hw.gpus:
        print(f"no GPU: {hw.note}", file=sys.stderr)
        return 2
    sms, source = inductor_min_sms()
    caps = Capabilities(inductor_min_sms=sms, inductor_source=source)
    args.out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    log(f"hardware: {hw.describe()}; inductor threshold {sms} SMs ({source})")
    kit = plan(spec, hw, SERVERS["embedded"], caps=caps)
    configs = {"kit": kit, "naive": naive(kit)}
    if hw.gpus[0].sm_count < sms:
        # At the small plan's precision: the comparison is about the SM-dependent choices (compile mode,
        # instances), and half precision may be refused here (policy.MPS_UNSAFE_PRECISIONS).
        same = torch_model(kit).precision
        big_spec = replace(spec, models=tuple(replace(m, precision=same) for m in spec.models))
        configs["big"] = plan(big_spec, declared("H100"), SERVERS["embedded"], caps=caps)
    wanted = args.configs.split(",")
    levels = tuple(int(x) for x in args.concurrency.split(","))
    order = [name for name in configs if name in wanted]
    rounds: dict[str, list[dict]] = {name: [] for name in order}
    for i in range(args.rounds):
        for name in (order if i % 2 == 0 else order[::-1]):  # neither config always runs first
            tag = name if args.rounds == 1 else f"{name}_r{i + 1}"
            rounds[name].append(run_config(name, configs[name], spec, args.out, levels, args.requests, log, tag))
    results = {name: merge_rounds(runs) for name, runs in rounds.items()}
    best = {n: max(lv["items_per_s"] for lv in r["levels"]) for n, r in results.items()}
    if args.rounds > 1:
        for name, r in results.items():
            log(f"{name}: best items/s per round {[round(x) for x in r['round_best']]}; levels below are medians")
    summary = {"hardware": hw.describe(), "gpu": hw.gpus[0].__dict__, "inductor_min_sms": sms,
               "decisions": [d.__dict__ for d in kit.decisions], "results": results, "best_items_per_s": best}
    if "naive" in best and "kit" in best:
        summary["kit_over_naive"] = best["kit"] / best["naive"]
        log(f"kit / naive throughput: {summary['kit_over_naive']:.2f}x")
    if "big" in best and "kit" in best:
        summary["kit_over_big"] = best["kit"] / best["big"]
        log(f"small-SM plan / big-GPU plan on this GPU: {summary['kit_over_big']:.2f}x")
    (args.out / "gpu_plan_vs_naive.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (args.out / "gpu_plan_vs_naive.log").write_text("\n".join(lines) + "\n")
    plot(results, args.out / "gpu_plan_vs_naive.png", f"{spec.models[0].name} on {hw.describe().split(';')[0]}")
    return 0


def merge_rounds(runs: list[dict]) -> dict:
    """One config's rounds as one result: per concurrency level the median throughput and latencies
    (server breakdown of the last round); each round's best throughput kept under "round_best"."""
    import statistics
    merged = dict(runs[-1], sm_warning=any(r["sm_warning"] for r in runs),
                  round_best=[max(lv["items_per_s"] for lv in r["levels"]) for r in runs])
    merged["levels"] = []
    for per_round in zip(*(r["levels"] for r in runs)):
        level = dict(per_round[-1])
        for key in ("items_per_s", "p50_ms", "p90_ms", "p99_ms"):
            level[key] = statistics.median(lv[key] for lv in per_round)
        for key in ("requests", "errors"):
            level[key] = sum(lv[key] for lv in per_round)
        merged["levels"].append(level)
    return merged


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    for name, r in results.items():
        c = [lv["concurrency"] for lv in r["levels"]]
        label = f"{name}: {r['precision']}, {r['compile_mode']}, {r['instances']} inst" + \
            (", SM warning" if r["sm_warning"] else "")
        left.plot(c, [lv["items_per_s"] for lv in r["levels"]], "o-", label=label)
        right.plot(c, [lv["p99_ms"] for lv in r["levels"]], "o-", label=name)
    for ax, ylabel in ((left, "items / s"), (right, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("client concurrency (1 item per request, gRPC)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    right.set_yscale("log")
    fig.suptitle(f"{title}: tritonkit plan vs naive", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
