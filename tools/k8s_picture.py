#!/usr/bin/env python3
"""Draw the objects of a `tritonkit k8s` tree as a PNG (default: deploy/k8s -> docs/k8s-fleet.png).

Read from the tree itself (`kubectl kustomize` output is not needed: the files are complete objects), so
the picture shows what would be applied: one box per product with its node label, replicas and GPU.
"""
import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def products(tree: Path) -> list[dict]:
    rows = []
    for overlay in sorted((tree / "overlays").iterdir()):
        dep, hpa = _load(overlay / "deployment.yaml"), _load(overlay / "hpa.yaml")
        pod = dep["spec"]["template"]["spec"]
        required = pod["affinity"]["nodeAffinity"].get("requiredDuringSchedulingIgnoredDuringExecution")
        node = ", ".join(required["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]) if required else \
            "no GPU label preferred"
        limits = pod["containers"][0]["resources"]["limits"]
        rows.append({"name": dep["metadata"]["name"], "node": node, "gpu": limits.get("nvidia.com/gpu", 0),
                     "min": hpa["spec"]["minReplicas"], "max": hpa["spec"]["maxReplicas"]})
    return rows


def draw(tree: Path, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    rows = products(tree)
    height = 1.8 + 1.3 * len(rows)
    fig, ax = plt.subplots(figsize=(13, height))
    ax.set_xlim(0, 13)
    ax.set_ylim(0, height)
    ax.axis("off")

    def box(x, y, w, h, text, color):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=color, ec="0.3"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)

    def arrow(x0, y0, x1, y1, text=""):
        ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "color": "0.35"})
        if text:
            ax.text((x0 + x1) / 2 + 0.1, (y0 + y1) / 2, text, ha="left", va="center", fontsize=7.5, color="0.3")

    ys = [height - 1.3 - 1.3 * i for i in range(len(rows))]
    mid = (ys[0] + ys[-1]) / 2 + 0.5
    box(0.2, mid - 0.45, 1.8, 0.9, "clients\nHTTP 8000 / gRPC 8001", "#eeeeee")
    box(2.6, mid - 0.55, 2.0, 1.1, "Service triton\n(+ triton-headless)\nacross products", "#dbe9f6")
    arrow(2.0, mid, 2.6, mid)
    box(5.3, 0.15, 3.4, 0.7, "PVC (ReadWriteMany): the model repository", "#fdf2d0")
    arrow(7.0, 0.85, 7.0, ys[-1], "mounted read-only by every pod")
    box(10.7, mid - 0.5, 2.1, 1.0, "Prometheus (ServiceMonitor)\n-> prometheus-adapter:\nqueue/compute ratio", "#e4f4e4")
    for y, r in zip(ys, rows):
        gpu = f"{r['gpu']} x nvidia.com/gpu" if r["gpu"] else "CPU only"
        box(5.3, y, 3.4, 1.0, f"Deployment {r['name']}\nnode: {r['node']}\n{gpu}", "#dbe9f6" if r["gpu"] else "#eeeeee")
        box(9.1, y + 0.2, 1.2, 0.6, f"HPA {r['min']}-{r['max']}\n+ PDB", "#f6dede")
        arrow(4.6, mid, 5.3, y + 0.5)
        arrow(9.1, y + 0.5, 8.7, y + 0.5)
        arrow(10.7, mid, 10.3, y + 0.5)
    ax.set_title(f"tritonkit k8s: {tree.relative_to(ROOT) if tree.is_relative_to(ROOT) else tree}"
                 " (NetworkPolicy: clients on 8000/8001, metrics from the monitoring namespace, no egress)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tree", nargs="?", type=Path, default=ROOT / "deploy" / "k8s")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "k8s-fleet.png")
    args = ap.parse_args(argv)
    draw(args.tree.resolve(), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
