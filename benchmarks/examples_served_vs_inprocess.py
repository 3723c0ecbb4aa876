#!/usr/bin/env python3
"""Each bring-your-own-model example served vs the same pre-processing and model in one process, same run.

Examples: examples/digits/models.yaml (pipeline none: 64 pixel values in), examples/digits/images.yaml
(PNG bytes -> Pillow pre-processing -> classifier -> softmax + label), examples/sentiment/models.yaml
(text -> tokenizer -> classifier -> softmax + label; `train.py --assemble` first if its model/ is missing),
examples/digits_vit/models.yaml (the image pipeline with a Hugging Face ViT, pre-processing from its folder);
also digits_4_instances, examples/digits/instances.yaml: the digits MLP with `instances: 4` (not in the default list).

Per example: the spec is rendered for this host's CPU (`--gpu none`) and built. In-process = the built
artifacts in this Python process with no server: the same pre-processing code (templates/python/image_ops.py,
the built tokenizer.json), ONNX Runtime on the built model.onnx, the same softmax/label step; threads x
sessions as the plan's instances run them (2 x 1 here) and 1 x cores, at the fastest batch size, measured
before and after the served run (the best figure is the limit). Served = `tritonkit bench`'s engine over gRPC
with the spec's workload, closed loop at rising concurrency, once with one item per request and once with
requests of max_batch_size items (`--batch`, as a client with many items sends them, and as the in-process
loop runs them). Goal (issue 12): served >= 0.8 x in-process, each at its best concurrency / batch size.
Also reported: the ratio at equal batch size (served requests of b items vs in-process batches of b).

    .venv/bin/python benchmarks/examples_served_vs_inprocess.py [--examples digits,digits_images,sentiment]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tritonkit import defaults  # noqa: E402

GOAL = 0.8
EXAMPLES = {"digits": ROOT / "examples" / "digits" / "models.yaml",
            "digits_4_instances": ROOT / "examples" / "digits" / "instances.yaml",
            "digits_images": ROOT / "examples" / "digits" / "images.yaml",
            "sentiment": ROOT / "examples" / "sentiment" / "models.yaml",
            "digits_vit": ROOT / "examples" / "digits_vit" / "models.yaml"}


def _session(path: Path, threads: int):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def pipelines(name: str, repo: Path, spec_model):
    """(items, make(threads) -> run(batch of items)): what one in-process worker does per batch."""
    import numpy as np
    if spec_model.name == "digits":     # models.yaml and instances.yaml: the MLP on 64 pixel values
        items = list(np.load(ROOT / "examples" / "digits" / "digits_test.npz")["pixels"])

        def make(threads):
            s = _session(repo / "digits" / "1" / "model.onnx", threads)
            return lambda batch: s.run(None, {"pixels": np.stack(batch)})
        return items, make
    from tritonkit.image_data import image_ops
    ops = image_ops()
    labels = np.array([t.encode() for t in spec_model.labels], dtype=object)
    if spec_model.pipeline == "image-classification":
        items = [p.read_bytes() for p in sorted((ROOT / "examples" / "digits" / "images").glob("*.png"))]
        prep, pixels = spec_model.image, spec_model.inputs[0]

        def make(threads):
            s = _session(repo / f"{name}_classifier" / "1" / "model.onnx", threads)

            def run(batch):
                x = np.stack([ops.to_values(ops.decode(b, defaults.IMAGE_MAX_BYTES, defaults.IMAGE_MAX_PIXELS),
                                            prep.size, prep.crop, prep.mode, prep.mean, prep.std, prep.resample)
                              .reshape(pixels.dims[1:]) for b in batch])
                p = ops.softmax(s.run(None, {pixels.name: x})[0])
                return p, labels[p.argmax(1)]
            return run
        return items, make
    from tokenizers import Tokenizer
    items = [line.split("\t", 1)[1] for line in (ROOT / "examples" / "sentiment" / "held_out.tsv").read_text()
             .splitlines() if line.strip()]
    folder = repo / "sentiment_tokenizer" / "1"
    meta = json.loads((folder / "tokenizer_meta.json").read_text())

    def make(threads):
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(min(256, meta["max_length"]))
        s = _session(repo / "sentiment_classifier" / "1" / "model.onnx", threads)

        def run(batch):
            enc = tok.encode_batch(batch)
            length = max(len(e.ids) for e in enc)
            ids = np.full((len(batch), length), meta["pad_id"], np.int64)
            mask = np.zeros_like(ids)
            for i, e in enumerate(enc):
                ids[i, :len(e.ids)], mask[i, :len(e.ids)] = e.ids, 1
            p = ops.softmax(s.run(None, {"input_ids": ids, "attention_mask": mask})[0])
            return p, labels[p.argmax(1)]
        return run
    return items, make


def in_process(items, make, sessions: int, threads: int, sizes, seconds: float) -> dict[int, float]:
    from inprocess import throughput
    return throughput([make(threads) for _ in range(sessions)], items, sizes, seconds)


def kit(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "tritonkit.cli", *argv], cwd=ROOT, check=True)


def measure(name: str, spec_path: Path, args, cores: int) -> dict:
    from tritonkit.load import run_bench
    from tritonkit.plan_file import read_plans
    from tritonkit.process import free_ports
    from tritonkit.serve import EmbeddedServer, ServerOptions
    from tritonkit.spec import load_spec
    from tritonkit.workload import bench_target
    if name == "sentiment" and not (ROOT / "examples" / "sentiment" / "model" / "model.safetensors").is_file():
        subprocess.run([sys.executable, str(ROOT / "examples" / "sentiment" / "train.py"), "--assemble"], check=True)
    repo = Path(tempfile.mkdtemp(prefix=f"tk-ex-{name}-")) / "model_repository"
    kit("render", "--spec", str(spec_path), "--gpu", "none", "--out", str(repo))
    kit("build", "--repo", str(repo))
    model = load_spec(spec_path).models[0]
    items, make = pipelines(name, repo, model)
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    shapes = {f"{cores}x1": (cores, 1), f"1x{cores}": (1, cores)}
    inproc = {k: in_process(items, make, *v, sizes, args.seconds) for k, v in shapes.items()}
    http, grpc, metrics = free_ports(3)
    levels = tuple(int(x) for x in args.concurrency.split(","))
    batches = sorted({1, model.max_batch_size or 1})
    reports = {}
    with EmbeddedServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)) as s:
        for b in batches:   # as many items per level whatever the request size: comparable durations
            reports[b] = run_bench(bench_target(model, s.grpc_url, "grpc", batch=b), concurrency=levels,
                                   requests_per_level=max(100, args.requests // b * 4), warmup_requests=20,
                                   progress=False)
    for k, v in shapes.items():
        again = in_process(items, make, *v, sizes, args.seconds)
        inproc[k] = {bs: max(inproc[k][bs], again[bs]) for bs in sizes}
    served = {b: {lv.concurrency: lv.items_per_s for lv in r.levels} for b, r in reports.items()}
    best_in = max(max(v.values()) for v in inproc.values())
    best_batch, best_concurrency = max(((b, c) for b in served for c in served[b]), key=lambda bc: served[bc[0]][bc[1]])
    best_served = served[best_batch][best_concurrency]
    same_batch = {b: max(served[b].values()) / max(v[b] for v in inproc.values()) for b in batches if b in sizes}
    result = {"spec": str(spec_path.relative_to(ROOT)), "items": len(items),
              "plan": [f"{d.subject} {d.key}: {d.value}" for p in read_plans(repo) for d in p.decisions],
              "in_process_per_s": inproc, "served_per_s": served,
              "errors": {b: {lv.concurrency: lv.errors for lv in r.levels} for b, r in reports.items()},
              "p99_ms": {b: {lv.concurrency: lv.p99_ms for lv in r.levels} for b, r in reports.items()},
              "best_in_process": best_in, "best_served": best_served, "ratio": best_served / best_in,
              "best_request_batch": best_batch, "best_concurrency": best_concurrency,
              "ratio_at_equal_batch": same_batch,
              "ratio_one_item_per_request": max(served[1].values()) / best_in}
    print(f"{name}: in-process best {best_in:.0f}/s, served best {best_served:.0f}/s ({best_batch} items per "
          f"request, concurrency {best_concurrency}): ratio {result['ratio']:.2f} (goal >= {GOAL}); one item per "
          f"request {result['ratio_one_item_per_request']:.2f}; at equal batch "
          + ", ".join(f"{b}: {r:.2f}" for b, r in same_batch.items()), flush=True)
    return result


def plot(results: dict, path: Path, host: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 4.2), dpi=110, squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        for b, served in r["served_per_s"].items():
            ax.plot(list(served), list(served.values()), "o-", label=f"served (gRPC, {b} item(s)/request)")
        ax.axhline(r["best_in_process"], color="gray", ls="--", label=f"best in-process ({r['best_in_process']:.0f}/s)")
        ax.axhline(GOAL * r["best_in_process"], color="red", ls=":", label=f"goal: {GOAL} x in-process")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("requests in flight")
        ax.set_ylabel("items / s")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{name}: served / in-process = {r['ratio']:.2f}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"bring-your-own-model examples on {host}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", default=",".join(n for n in EXAMPLES if n != "digits_4_instances"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "examples_served_vs_inprocess")
    ap.add_argument("--seconds", type=float, default=3.0, help="per in-process batch size")
    ap.add_argument("--requests", type=int, default=1500, help="served requests per concurrency level")
    ap.add_argument("--concurrency", default="1,2,4,8,16,32")
    ap.add_argument("--batch-sizes", default="1,8,32,64")
    args = ap.parse_args()
    from tritonkit.hardware import host_cpu
    cores = host_cpu()[0]
    results = {name: measure(name, EXAMPLES[name], args, cores) for name in args.examples.split(",")}
    args.out.mkdir(parents=True, exist_ok=True)
    import platform
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    host = f"{cores} CPU cores ({cpu})"
    record = {"host": host, "goal": GOAL, "settings": vars(args) | {"out": str(args.out)}, "examples": results,
              "passed": {n: r["ratio"] >= GOAL for n, r in results.items()}}
    (args.out / "examples_served_vs_inprocess.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    plot(results, args.out / "examples_served_vs_inprocess.png", host)
    ok = all(record["passed"].values())
    print(("PASSED" if ok else "FAILED") + ": " + ", ".join(f"{n} {r['ratio']:.2f}" for n, r in results.items()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
