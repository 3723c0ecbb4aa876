#!/usr/bin/env python3
"""Served INT8 plan vs served FP32 plan of the example spec on this CPU, side by side in one run (and BF16).

Both plans come from deploy/models.yaml for this host: FP32 as a CPU without INT8 units gets it
(`--cpu-features none`), INT8 with this host's features (ONNX Runtime dynamic quantization, gated).
Each repository is built, then served in turn by the embedded tritonserver (rounds alternate which goes
first) and swept closed-loop over concurrency with one sentence per request over gRPC. The figure is the
ratio of the best throughputs (also given within the spec's p99 budget). The served INT8 embeddings of the gate texts
(30 bench sentences + 4) and of 60 held-out product reviews (examples/sentiment/reviews.tsv, used by no calibration, gate
or SmoothQuant choice) are held against SentenceTransformer.encode (FP32): min cosine and top-10 neighbour overlap.

    .venv/bin/python benchmarks/int8_vs_fp32.py [--out benchmarks/results/int8_cpu] [--rounds 2] [--bf16]

--bf16 adds a third plan on a CPU with AMX-BF16: the same spec without its int8 tolerance, which this host's
features then plan in BF16 (PyTorch in the python backend, oneDNN's AMX kernels); its ratio to FP32 is reported
beside INT8's and its embeddings are held against sentence-transformers the same way.

Targets (issue 14, for a CPU with VNNI/AMX): ratio >= 2.2, min cosine >= 0.99, overlap >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tritonkit import defaults  # noqa: E402

TARGET_RATIO, TARGET_COSINE, TARGET_OVERLAP = 2.2, 0.99, 0.9
HELD_OUT = ROOT / "examples" / "sentiment" / "reviews.tsv"   # texts the INT8 build never saw


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def served_embeddings(url: str, texts: list[str]):
    import numpy as np
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(url)
    rows = []
    for t in texts:
        tensor = grpcclient.InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[t.encode()]], dtype=object))
        rows.append(client.infer("minilm", [tensor]).as_numpy("embedding")[0])
    return np.stack(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int8_cpu")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", default="1,4,8,16,32,64")
    ap.add_argument("--requests", type=int, default=600, help="requests per concurrency level")
    ap.add_argument("--bf16", action="store_true", help="also the BF16 plan (a CPU with AMX-BF16)")
    args = ap.parse_args()

    from tritonkit.build import build
    from tritonkit.compare import st_reference
    from tritonkit.hardware import declared, host_cpu_features
    from tritonkit.load import run_bench
    from tritonkit.policy import plan
    from tritonkit.quantize import embedding_gate, gate_texts
    from tritonkit.render import write_repository
    from tritonkit.serve import EmbeddedServer, ServerOptions
    from tritonkit.servers import SERVERS
    from tritonkit.sources import resolve_sentence_transformer
    from tritonkit.spec import load_spec
    from tritonkit.workload import bench_target

    spec = load_spec(defaults.DEFAULT_SPEC)
    features = host_cpu_features()
    work = Path(tempfile.mkdtemp(prefix="tk-int8-"))
    specs = {"fp32": spec, "int8": spec}
    if args.bf16:    # the spec a user without INT8 tolerance has: BF16 is then this CPU's best
        no_int8 = work / "bf16.yaml"
        no_int8.write_text("".join(line for line in defaults.DEFAULT_SPEC.read_text().splitlines(keepends=True)
                                   if not line.strip().startswith("int8:")))
        specs["bf16"] = load_spec(no_int8)
    plans = {"fp32": plan(spec, declared("none", cpu_features=()), SERVERS["embedded"])}
    plans.update({name: plan(specs[name], declared("none", cpu_features=features), SERVERS["embedded"])
                  for name in specs if name != "fp32"})
    for name, p in plans.items():
        if p.model("minilm_encoder").precision != name:
            print(f"this CPU ({cpu_model()}, features {features}) gets no {name.upper()} plan: nothing to compare",
                  file=sys.stderr)
            return 2
    repos, builds = {}, {}
    for name, p in plans.items():
        repos[name] = work / name / "model_repository"
        write_repository(p, repos[name])
        for r in build(repos[name], spec=specs[name], progress=False):
            print(r.summary())
        builds[name] = json.loads((repos[name] / "minilm_encoder/1/build.json").read_text())
    levels = tuple(int(x) for x in args.concurrency.split(","))
    texts = gate_texts(spec.models[0])[0]     # the 30 bench sentences + the 4 validation ones (short, truncated)
    source = resolve_sentence_transformer(spec.models[0].source.path)
    reference, _ = st_reference(source, texts, normalize=True)
    held_out = [line.split("\t", 1)[1].strip() for line in HELD_OUT.read_text().splitlines() if "\t" in line]
    held_reference, _ = st_reference(source, held_out, normalize=True)
    runs, accuracy, held_accuracy = [], {}, {}
    for rnd in range(args.rounds):
        order = list(plans)
        for name in order[rnd % len(order):] + order[:rnd % len(order)]:    # each plan goes first in turn
            with EmbeddedServer(ServerOptions(repository=repos[name])) as server:
                if name not in accuracy:
                    gate = embedding_gate(reference, served_embeddings(server.grpc_url, texts),
                                          spec.models[0].tolerance[name])
                    accuracy[name] = {"min_cosine": gate.min_cosine, "mean_cosine": gate.mean_cosine,
                                      "neighbour_overlap": gate.neighbour_overlap, "max_abs_error": gate.max_abs_error}
                    gate = embedding_gate(held_reference, served_embeddings(server.grpc_url, held_out),
                                          spec.models[0].tolerance[name])
                    held_accuracy[name] = {"min_cosine": gate.min_cosine, "mean_cosine": gate.mean_cosine,
                                           "neighbour_overlap": gate.neighbour_overlap, "passed": gate.passed}
                report = run_bench(bench_target(spec.models[0], server.grpc_url, "grpc"), concurrency=levels,
                                   requests_per_level=args.requests, warmup_requests=20, progress=False)
            for lv in report.levels:
                runs.append({"round": rnd, "plan": name, "concurrency": lv.concurrency, "sentences_per_s": lv.items_per_s,
                             "p50_ms": lv.p50_ms, "p99_ms": lv.p99_ms, "errors": lv.errors})
            print(f"round {rnd} {name}: " + ", ".join(f"c{r['concurrency']} {r['sentences_per_s']:.0f}/s"
                                                      for r in runs if r["round"] == rnd and r["plan"] == name))
    best = {name: max(r["sentences_per_s"] for r in runs if r["plan"] == name) for name in plans}
    ratio = best["int8"] / best["fp32"]
    ratios = {name: best[name] / best["fp32"] for name in plans if name != "fp32"}
    budget = spec.models[0].p99_budget_ms
    within = {name: max((r["sentences_per_s"] for r in runs if r["plan"] == name and r["p99_ms"] <= budget
                         and not r["errors"]), default=0.0) for name in plans}
    acc = accuracy["int8"]
    checks = {"ratio": ratio >= TARGET_RATIO, "min_cosine": acc["min_cosine"] >= TARGET_COSINE,
              "neighbour_overlap": acc["neighbour_overlap"] >= TARGET_OVERLAP}
    host = {"cpu": cpu_model(), "cores": plans["fp32"].hardware.cpu_cores or len(__import__("os").sched_getaffinity(0)),
            "features": list(features)}
    record = {"host": host, "best_sentences_per_s": best, "ratio": ratio, "ratios_to_fp32": ratios,
              "served_accuracy_vs_sentence_transformers": accuracy,
              "within_budget": {"p99_ms": budget, "best_sentences_per_s": within,
                                "ratio": within["int8"] / within["fp32"] if within["fp32"] else None},
              "held_out_accuracy": {"texts": f"{HELD_OUT.relative_to(ROOT)} ({len(held_out)} reviews: in no "
                                             "calibration, gate or SmoothQuant choice)", **held_accuracy},
              "targets": {"ratio": TARGET_RATIO, "min_cosine": TARGET_COSINE, "neighbour_overlap": TARGET_OVERLAP},
              "met": checks, "runs": runs,
              "int8_build": {k: builds["int8"][k] for k in ("quantization", "validation", "gate_data")},
              "decisions": {name: [d.__dict__ for d in p.decisions if d.subject == "minilm_encoder"]
                            for name, p in plans.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_vs_fp32.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    _plot(runs, best, ratios, acc, host, args.out / "int8_vs_fp32.png")
    print(f"{host['cpu']} ({', '.join(features)}): best FP32 {best['fp32']:.0f}/s, INT8 {best['int8']:.0f}/s, "
          f"ratio {ratio:.2f} (target >= {TARGET_RATIO}); served INT8 vs sentence-transformers: min cosine "
          f"{acc['min_cosine']:.4f}, top-10 overlap {acc['neighbour_overlap']:.3f}; {len(held_out)} held-out reviews: "
          f"min cosine {held_accuracy['int8']['min_cosine']:.4f}, overlap {held_accuracy['int8']['neighbour_overlap']:.3f}; "
          f"within the {budget:g} ms p99 budget: ratio {record['within_budget']['ratio'] or 0:.2f}")
    if "bf16" in plans:
        b = accuracy["bf16"]
        print(f"BF16 plan (spec without tolerance.int8): best {best['bf16']:.0f}/s, {ratios['bf16']:.2f}x FP32; min "
              f"cosine {b['min_cosine']:.5f}, top-10 overlap {b['neighbour_overlap']:.3f}; held-out min cosine "
              f"{held_accuracy['bf16']['min_cosine']:.5f}")
    print(", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in checks.items()))
    return 0 if all(checks.values()) else 1


def _plot(runs, best, ratios, acc, host, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, color in (("fp32", "tab:blue"), ("int8", "tab:orange"), ("bf16", "tab:green")):
        for rnd in sorted({r["round"] for r in runs if r["plan"] == name}):
            pts = sorted((r["concurrency"], r["sentences_per_s"]) for r in runs if r["plan"] == name and r["round"] == rnd)
            ax.plot(*zip(*pts), marker="o", color=color, alpha=1.0 if rnd == 0 else 0.45,
                    label=f"{name.upper()} plan" + (f" ({ratios[name]:.2f}x FP32)" if name in ratios else "")
                    if rnd == 0 else None)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("requests in flight (one sentence each, gRPC)")
    ax.set_ylabel("sentences/s")
    ax.set_title(f"served INT8 / FP32 = {ratios['int8']:.2f} (best {best['int8']:.0f} vs {best['fp32']:.0f}/s); INT8 vs "
                 f"sentence-transformers: min cos {acc['min_cosine']:.4f}, top-10 overlap {acc['neighbour_overlap']:.2f}\n"
                 f"{host['cpu']}, {host['cores']} cores, {'+'.join(host['features'])}", fontsize=8.5)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
