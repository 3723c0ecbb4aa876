#!/usr/bin/env python3
"""Served MiniLM ensemble vs in-process ONNX Runtime on the same sentences, in the same run.

In-process = the limit for this model on this machine: the same tokenizer and the same ONNX file in
one Python process, no server, no IPC, at the batch size that is fastest. Served = the embedded
tritonserver (tokenizer -> encoder ensemble, dynamic batching) driven over gRPC with one sentence
per request at rising concurrency. Writes JSON + PNG and prints the ratio of the two best figures.

    .venv/bin/python benchmarks/served_vs_inprocess.py [--out benchmarks/results] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tritonkit import defaults  # noqa: E402


def in_process(repo: Path, texts: list[str], sessions: int, threads: int, batch_sizes, seconds: float) -> dict[int, float]:
    """Sentences/s of tokenizer + ONNX Runtime in this process, per batch size.

    `sessions` Python threads each drive their own session (ONNX Runtime releases the GIL while it
    runs), so both shapes the server can take are measured: 1 session x N threads, N x 1.
    """

    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(repo / "minilm_tokenizer/1/tokenizer.json"))
    tok.no_padding()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    model = str(repo / "minilm_encoder/1/model.onnx")
    pool = [ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]) for _ in range(sessions)]

    def run(session, batch):
        enc = tok.encode_batch(batch)
        length = max(len(e.ids) for e in enc)
        ids = np.zeros((len(batch), length), np.int64)
        mask = np.zeros_like(ids)
        for i, e in enumerate(enc):
            ids[i, :len(e.ids)] = e.ids
            mask[i, :len(e.ids)] = 1
        return session.run(None, {"input_ids": ids, "attention_mask": mask})

    from inprocess import throughput
    result = throughput([lambda batch, s=session: run(s, batch) for session in pool], texts, batch_sizes, seconds)
    for bs, rate in result.items():
        print(f"in-process {sessions} session(s) x {threads} thread(s), batch {bs:3d}: {rate:7.1f} sentences/s",
              flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--repo", type=Path, default=None, help="built repository to reuse (default: build one in /tmp)")
    ap.add_argument("--seconds", type=float, default=5.0, help="per in-process batch size")
    ap.add_argument("--requests", type=int, default=600, help="served requests per concurrency level")
    ap.add_argument("--concurrency", default="1,2,4,8,16,32")
    ap.add_argument("--batch-sizes", default="1,4,8,16,32,64")
    ap.add_argument("--request-batch", type=int, default=1, help="sentences per served request")
    args = ap.parse_args()

    from tritonkit.build import build
    from tritonkit.hardware import detect
    from tritonkit.load import run_bench
    from tritonkit.policy import plan
    from tritonkit.render import write_repository
    from tritonkit.report import write_report
    from tritonkit.serve import EmbeddedServer, ServerOptions
    from tritonkit.servers import SERVERS
    from tritonkit.spec import load_spec
    from tritonkit.workload import bench_target, load_texts

    spec = load_spec(defaults.DEFAULT_SPEC)
    hw = detect()
    p = plan(spec, hw, SERVERS["embedded"])
    repo = args.repo or Path(tempfile.mkdtemp(prefix="tk-bench-")) / "model_repository"
    if args.repo is None:
        write_repository(p, repo)
        build(repo, spec=spec, progress=False)
    texts = list(load_texts())

    sizes = [int(x) for x in args.batch_sizes.split(",")]
    cores = hw.cpu_cores
    # Both shapes, before and after the served run: the best figure seen is the limit (machine noise
    # only ever lowers a figure, so the max is the conservative denominator).
    shapes = {f"1x{cores}": (1, cores), f"{cores}x1": (cores, 1)}
    inproc: dict[str, dict[int, float]] = {k: in_process(repo, texts, *v, sizes, args.seconds) for k, v in shapes.items()}
    levels = tuple(int(x) for x in args.concurrency.split(","))
    with EmbeddedServer(ServerOptions(repository=repo)) as server:
        report = run_bench(bench_target(spec.models[0], server.grpc_url, "grpc", batch=args.request_batch),
                           concurrency=levels,
                           requests_per_level=args.requests // args.request_batch, warmup_requests=20,
                           progress=False)
    for k, v in shapes.items():
        again = in_process(repo, texts, *v, sizes, args.seconds)
        inproc[k] = {bs: max(inproc[k][bs], again[bs]) for bs in sizes}
    served = {lv.concurrency: lv.items_per_s for lv in report.levels}
    best_in = max(max(v.values()) for v in inproc.values())
    best_served = max(served.values())
    ratio = best_served / best_in
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "host": {"cpu_cores": hw.cpu_cores, "gpu": hw.describe()},
        "plan": [d.__dict__ for d in p.decisions],
        "in_process_sentences_per_s": inproc, "served_sentences_per_s": served,
        "request_batch": args.request_batch, "best_in_process": best_in, "best_served": best_served, "ratio": ratio, "goal": 0.8,
        "served_levels": [lv.__dict__ for lv in report.levels],
    }
    (args.out / "served_vs_inprocess.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    write_report(report, args.out, stem="served_minilm_grpc")
    host = f"{hw.cpu_cores} CPU cores, " + (", ".join(g.name for g in hw.gpus) or "no GPU")
    record["host"]["label"] = host
    (args.out / "served_vs_inprocess.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    _plot(inproc, served, ratio, args.out / "served_vs_inprocess.png", host, args.request_batch)
    print(f"best in-process {best_in:.1f}/s, best served {best_served:.1f}/s at concurrency "
          f"{max(served, key=served.get)}: ratio {ratio:.2f} (goal >= 0.8)")
    print(("PASSED" if ratio >= 0.8 else "FAILED") + f": served/in-process = {ratio:.2f}")
    return 0 if ratio >= 0.8 else 1


def _plot(inproc: dict, served: dict, ratio: float, path: Path, host: str, request_batch: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    for shape, by_batch in inproc.items():
        left.plot(list(by_batch), list(by_batch.values()), "s--", label=f"in-process, {shape} (sessions x threads)")
    left.set_xscale("log", base=2)
    left.set_xlabel("batch size (in-process)")
    left.set_ylabel("sentences / s")
    left.set_title("in-process ONNX Runtime (no server)", fontsize=9)
    best = max(max(v.values()) for v in inproc.values())
    right.plot(list(served), list(served.values()), "o-",
               label=f"served: Triton ensemble, {request_batch} sentence(s)/request, gRPC")
    right.axhline(best, color="gray", ls="--", label=f"best in-process ({best:.0f}/s)")
    right.axhline(0.8 * best, color="red", ls=":", label="goal: 0.8 x best in-process")
    right.set_xscale("log", base=2)
    right.set_xlabel("client concurrency (served)")
    right.set_title(f"served / best in-process = {ratio:.2f}", fontsize=9)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_ylim(bottom=0)
    fig.suptitle(f"MiniLM-L6 embeddings on {host}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
