"""Report step: a BenchReport as a terminal table, and as files (JSON, text table, PNG plot).

measured latency report -> what a person reads. The PNG needs matplotlib, the optional
`tritonkit[bench]` extra: a core install writes the JSON and the text table and says the plot was
skipped. rich and matplotlib are imported inside the functions that use them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from .errors import UserError
from .load import BenchReport
from .stats import fmt_ms

PLOT_EXTRA = "tritonkit[bench]"


# --- Table -----------------------------------------------------------------------------------------
def _renderables(report: BenchReport, ascii_box: bool = False):
    from rich import box
    from rich.table import Table
    from rich.text import Text

    style = box.ASCII2 if ascii_box else box.SIMPLE_HEAVY
    t = report.target
    head = Text(f"tritonkit bench: model {t.model!r} via {t.protocol} at {t.url}, Triton "
                f"{report.server_version}, started {report.started_at}")
    budget = report.budget_p99_ms
    compact = {"box": style, "title_justify": "left"}
    if not ascii_box:  # terminal: fit 80 columns
        compact.update(padding=(0, 1), collapse_padding=True, pad_edge=False)
    client = Table(title="Client side (latency per request, ms)", **compact)
    for col in ("conc", "reqs", "errors", "req/s", "items/s", "p50", "p90", "p99", "mean", "max"):
        client.add_column(col, justify="right", no_wrap=True)
    for lv in report.levels:
        over = budget is not None and not (lv.p99_ms <= budget)
        client.add_row(str(lv.concurrency), str(lv.requests),
                       Text(str(lv.errors), style="red" if lv.errors else ""),
                       f"{lv.throughput_rps:.1f}", f"{lv.items_per_s:.1f}", fmt_ms(lv.p50_ms),
                       fmt_ms(lv.p90_ms), Text(fmt_ms(lv.p99_ms), style="red" if over else ""),
                       fmt_ms(lv.mean_ms), fmt_ms(lv.max_ms))
    server = Table(title="Server side (Triton statistics over each level; avg per request, ms)",
                   **compact)
    for col in ("conc", "model", "reqs", "fail", "batch", "queue", "input", "infer", "output",
                "total"):
        server.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for lv in report.levels:
        # the benchmarked model (e.g. the ensemble) first, then its composing models
        for name, s in sorted(lv.server.items(), key=lambda kv: (kv[0] != t.model, kv[0])):
            server.add_row(str(lv.concurrency), name, f"{s['requests']:.0f}",
                           f"{s['failures']:.0f}", f"{s['avg_batch_size']:.2f}",
                           *(f"{s[k] / 1e3:.2f}" for k in ("queue_us", "compute_input_us",
                                                            "compute_infer_us", "compute_output_us",
                                                            "request_us")))
    budget_line = Text(f"p99 budget: {budget:g} ms" if budget is not None else "p99 budget: none")
    word = "PASSED" if report.verdict else "FAILED"
    final = Text(f"{word}: {report.verdict_reason}",
                 style="bold green" if report.verdict else "bold red")
    return [head, client, server, budget_line, final]


def print_report(report: BenchReport, console=None) -> None:
    """Client table, server breakdown, then a PASSED/FAILED line with the reason."""
    from rich.console import Console

    console = console or Console()
    for item in _renderables(report):
        console.print(item, highlight=False)


def _report_text(report: BenchReport) -> str:
    import io

    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=132, color_system=None, force_terminal=False,
                      legacy_windows=False)
    for item in _renderables(report, ascii_box=True):
        console.print(item, highlight=False)
    return buf.getvalue()


# --- Plot ------------------------------------------------------------------------------------------
def _figure_class():
    """matplotlib's Figure (Agg canvas, no pyplot global state); None on a core install."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def plot_report(report: BenchReport, path: Path) -> Path:
    """PNG: latency percentiles (and budget) vs concurrency | throughput vs concurrency."""
    Figure = _figure_class()
    if Figure is None:
        raise UserError("the PNG plot needs matplotlib, which is not installed",
                        fix=f"pip install '{PLOT_EXTRA}'")
    levels = report.levels
    xs = [lv.concurrency for lv in levels]
    fig = Figure(figsize=(12, 4.8), dpi=110, layout="constrained")
    ax_lat, ax_thr = fig.subplots(1, 2)
    for key, label, style in (("p50_ms", "p50", "o-"), ("p90_ms", "p90", "s-"),
                              ("p99_ms", "p99", "^-")):
        ax_lat.plot(xs, [getattr(lv, key) for lv in levels], style, label=label)
    finite = [lv.p99_ms for lv in levels if math.isfinite(lv.p99_ms)] or [1.0]
    top = max(finite) * 1.15
    budget = report.budget_p99_ms
    if budget is not None and budget <= 3 * max(finite):
        ax_lat.axhline(budget, color="tab:red", linestyle="--", label=f"p99 budget {budget:g} ms")
        top = max(top, budget * 1.15)
    elif budget is not None:  # drawing it would squash the curves flat: say where it is instead
        ax_lat.plot([], [], color="tab:red", linestyle="--",
                    label=f"p99 budget {budget:g} ms (far above)")
    for i, lv in enumerate(levels):
        if lv.errors:
            ha = "left" if i == 0 else "right" if i == len(levels) - 1 else "center"
            ax_lat.plot([lv.concurrency], [0], "X", color="tab:red", markersize=10, clip_on=False)
            ax_lat.annotate(f"{lv.errors} errors", (lv.concurrency, 0),
                            xycoords=("data", "axes fraction"), xytext=(0, 10),
                            textcoords="offset points", color="tab:red", ha=ha)
    ax_lat.set(xlabel="concurrency (requests in flight)", ylabel="client latency (ms)",
               title="Latency per request")
    ax_lat.set_ylim(0, top)
    ax_lat.legend(loc="best")

    ax_thr.plot(xs, [lv.throughput_rps for lv in levels], "o-", color="tab:green", label="requests/s")
    items = [lv.items_per_s for lv in levels]
    if any(abs(i - lv.throughput_rps) > 1e-9 for i, lv in zip(items, levels)):
        ax_thr.plot(xs, items, "s--", color="tab:olive", label="items/s")
    for lv in levels:
        ax_thr.annotate(f"{lv.throughput_rps:.0f}", (lv.concurrency, lv.throughput_rps),
                        xytext=(0, 6), textcoords="offset points", ha="center", fontsize=8)
    ax_thr.set(xlabel="concurrency (requests in flight)", ylabel="throughput (per second)",
               title="Throughput")
    ax_thr.set_ylim(0, max([lv.throughput_rps for lv in levels] + items + [1.0]) * 1.15)
    ax_thr.legend(loc="best")
    for ax in (ax_lat, ax_thr):
        if len(xs) > 2 and min(xs) > 0 and max(xs) / min(xs) >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.grid(True, alpha=0.3)
    word = "PASSED" if report.verdict else "FAILED"
    fig.suptitle(f"{report.target.model} via {report.target.protocol} - Triton "
                 f"{report.server_version} - {word}", fontweight="bold",
                 color="tab:green" if report.verdict else "tab:red")
    fig.savefig(path, format="png")
    return path


# --- Files -----------------------------------------------------------------------------------------
def write_report(report: BenchReport, out_dir: Path, *, stem: str = "bench") -> dict[str, Path]:
    """Write <stem>.json (round-trips via BenchReport.from_json), <stem>.txt and <stem>.png.

    Without matplotlib the PNG is skipped with one line on stderr: every figure is in the others.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "txt": out_dir / f"{stem}.txt",
             "png": out_dir / f"{stem}.png"}
    paths["json"].write_text(json.dumps(report.to_json(), indent=2, allow_nan=False) + "\n")
    paths["txt"].write_text(_report_text(report))
    if _figure_class() is None:
        png = paths.pop("png")
        png.unlink(missing_ok=True)  # a plot left by an earlier run would not match these figures
        print(f"{png.name} skipped: the plot needs matplotlib (pip install '{PLOT_EXTRA}')",
              file=sys.stderr)
    else:
        plot_report(report, paths["png"])
    return paths
