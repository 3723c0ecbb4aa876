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
    if not ascii_box:  # terminal: fit the width
        compact.update(padding=(0, 1), collapse_padding=True, pad_edge=False)
    out = [head]
    if report.payload:
        sizes = "; ".join(f"{name} {d['unit']} min {d['min']} p50 {d['p50']:g} p90 {d['p90']:g} max {d['max']}"
                          for name, d in report.payload["inputs"].items())
        out.append(Text(f"payload: {report.payload['source']} ({report.payload['variants']} distinct requests); {sizes}"))
    cap = report.capacity
    if cap is not None:
        line = (f"CAPACITY within the {budget:g} ms p99 budget: {cap.rps:.0f} requests/s (p99 {fmt_ms(cap.p99_ms)} ms); "
                f"{cap.reason}" if cap.rps else f"CAPACITY: none: {cap.reason}")
        out.append(Text(line, style="bold"))
        if cap.client_bound:
            out.append(Text(f"  the client limited a step near the top: {cap.client_bound}", style="yellow"))
    client = Table(title="Client side (ms per request; open loop: from each request's due time; "
                         "rate? = a step of the capacity search)", **compact)
    for col in ("load", "reqs", "err", "req/s", "items/s", "p50", "p90", "p99", "p99.9", "max", ">=400ms",
                "client"):
        client.add_column(col, justify="right", no_wrap=True)
    notes = []
    for lv in report.levels:
        over = budget is not None and not (lv.p99_ms <= budget)
        load = f"c{lv.concurrency}" if lv.mode == "closed" else f"{lv.offered_rps:.4g}/s" + \
            ("?" if lv.mode == "search" else "")
        cpu = f"{lv.client_cpu_cores:.2f}c" if lv.client_cpu_cores == lv.client_cpu_cores else "-"
        client.add_row(load, str(lv.requests), Text(str(lv.errors), style="red" if lv.errors else ""),
                       f"{lv.throughput_rps:.1f}", f"{lv.items_per_s:.1f}", fmt_ms(lv.p50_ms), fmt_ms(lv.p90_ms),
                       Text(fmt_ms(lv.p99_ms), style="red" if over else ""), fmt_ms(lv.p999_ms),
                       fmt_ms(lv.max_ms), Text(str(lv.slow_requests), style="yellow" if lv.slow_requests else ""),
                       Text(cpu + ("!" if lv.client_bound else ""), style="yellow" if lv.client_bound else ""))
        if lv.errors_by_kind:
            notes.append(f"{load}: errors by kind: " + ", ".join(f"{k} {v}" for k, v in lv.errors_by_kind.items()))
        if lv.slow_requests:
            causes = ("server-side queueing >= 300 ms above the level's average at " +
                      ", ".join(f"{m} (during {n})" for m, n in lv.slow_causes.items())) if lv.slow_causes else \
                "no model's queue explains them (client, network or compute)"
            notes.append(f"{load}: {lv.slow_requests} requests >= 400 ms; {causes}. A lone ~500 ms wait at a lightly "
                         "loaded model is Triton 2.51's batcher re-check (server#8870); many at a saturated one, "
                         "the load")
        if lv.client_bound:
            notes.append(f"{load}: client-bound: {lv.client_bound}")
    out.append(client)
    out.extend(Text(n, style="yellow") for n in notes)
    server = Table(title="Server side (Triton statistics over each level; avg per request, ms)", **compact)
    for col in ("load", "model", "reqs", "fail", "batch", "queue", "input", "infer", "output", "total"):
        server.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for lv in report.levels:
        load = f"c{lv.concurrency}" if lv.mode == "closed" else f"{lv.offered_rps:.4g}/s"
        # the benchmarked model (e.g. the ensemble) first, then its composing models
        for name, s in sorted(lv.server.items(), key=lambda kv: (kv[0] != t.model, kv[0])):
            server.add_row(load, name, f"{s['requests']:.0f}", f"{s['failures']:.0f}", f"{s['avg_batch_size']:.2f}",
                           *(f"{s[k] / 1e3:.2f}" for k in ("queue_us", "compute_input_us", "compute_infer_us",
                                                            "compute_output_us", "request_us")))
    out.append(server)
    out.append(Text(f"p99 budget: {budget:g} ms" if budget is not None else "p99 budget: none"))
    word = "PASSED" if report.verdict else "FAILED"
    out.append(Text(f"{word}: {report.verdict_reason}", style="bold green" if report.verdict else "bold red"))
    return out


def print_report(report: BenchReport, console=None) -> None:
    """Client table, server breakdown, then a PASSED/FAILED line with the reason."""
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and pipes: wide enough that the tables keep every column
            console = Console(width=160)
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
    """PNG: latency percentiles (and budget) and throughput, per closed-loop concurrency and per open-loop
    rate; the capacity within the budget is the title and a marked line."""
    Figure = _figure_class()
    if Figure is None:
        raise UserError("the PNG plot needs matplotlib, which is not installed",
                        fix=f"pip install '{PLOT_EXTRA}'")
    closed = [lv for lv in report.levels if lv.mode == "closed"]
    opened = sorted((lv for lv in report.levels if lv.mode != "closed"), key=lambda lv: lv.offered_rps)
    rows = [(lvs, x) for lvs, x in ((closed, "concurrency (requests in flight)"),
                                    (opened, "offered rate (requests/s, open loop)")) if lvs]
    fig = Figure(figsize=(12, 4.6 * len(rows)), dpi=110, layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False)
    budget, cap = report.budget_p99_ms, report.capacity
    for (levels, xlabel), (ax_lat, ax_thr) in zip(rows, axes):
        xs = [lv.concurrency if lv.mode == "closed" else lv.offered_rps for lv in levels]
        for key, label, style in (("p50_ms", "p50", "o-"), ("p99_ms", "p99", "^-"), ("p999_ms", "p99.9", "v:"),
                                  ("max_ms", "max", "x:")):
            ax_lat.plot(xs, [getattr(lv, key) for lv in levels], style, label=label)
        finite = [lv.p99_ms for lv in levels if math.isfinite(lv.p99_ms)] or [1.0]
        top = max(finite) * 1.3
        if budget is not None and budget <= 3 * max(finite):
            ax_lat.axhline(budget, color="tab:red", linestyle="--", label=f"p99 budget {budget:g} ms")
            top = max(top, budget * 1.15)
        elif budget is not None:  # drawing it would squash the curves flat: say where it is instead
            ax_lat.plot([], [], color="tab:red", linestyle="--", label=f"p99 budget {budget:g} ms (far above)")
        for x, lv in zip(xs, levels):
            if lv.errors:
                ax_lat.plot([x], [0], "X", color="tab:red", markersize=10, clip_on=False)
                ax_lat.annotate(f"{lv.errors} err", (x, 0), xycoords=("data", "axes fraction"), xytext=(0, 10),
                                textcoords="offset points", color="tab:red", ha="center", fontsize=8)
        ax_lat.set(xlabel=xlabel, ylabel="client latency (ms)", title="Latency per request")
        ax_lat.set_ylim(0, top)
        ax_thr.plot(xs, [lv.throughput_rps for lv in levels], "o-", color="tab:green", label="answered/s")
        if levels[0].mode != "closed":
            ax_thr.plot(xs, xs, ":", color="gray", label="offered/s")
        for x, lv in zip(xs, levels):
            ax_thr.annotate(f"{lv.throughput_rps:.0f}" + ("*" if lv.client_bound else ""), (x, lv.throughput_rps),
                            xytext=(0, 6), textcoords="offset points", ha="center", fontsize=8)
        ax_thr.set(xlabel=xlabel, ylabel="requests per second", title="Throughput (* = client-bound)")
        ax_thr.set_ylim(0, max([lv.throughput_rps for lv in levels] + [max(xs) if levels[0].mode != "closed" else 1.0])
                        * 1.15)
        if cap is not None and cap.rps and levels[0].mode != "closed":
            for ax in (ax_lat, ax_thr):
                ax.axvline(cap.rps, color="tab:purple", linestyle="-.", label=f"capacity {cap.rps:.0f}/s")
        for ax in (ax_lat, ax_thr):
            if levels[0].mode == "closed" and len(xs) > 2 and min(xs) > 0 and max(xs) / min(xs) >= 4:
                ax.set_xscale("log", base=2)
                ax.set_xticks(xs, [str(x) for x in xs])
            ax.grid(True, alpha=0.3)
            ax.legend(loc="best", fontsize=8)
    word = "PASSED" if report.verdict else "FAILED"
    headline = (f"capacity {cap.rps:.0f} req/s within p99 {budget:g} ms - " if cap is not None and cap.rps else
                "no rate within the budget - " if cap is not None else "")
    fig.suptitle(f"{report.target.model} via {report.target.protocol} - {headline}Triton {report.server_version} - "
                 f"{word}", fontweight="bold", color="tab:green" if report.verdict else "tab:red")
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
