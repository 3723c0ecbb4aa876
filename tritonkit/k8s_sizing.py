"""Replica counts per GPU product: from the spec's traffic target and measured capacity, else defaults.

Pure decisions (figures in, replicas with their reasons out). A capacity figure is what
`tritonkit bench --find-capacity` measured on one host of a product: the highest request rate whose
p99 stayed within the spec's budget with no errors. Each product is sized to carry the peak alone at
K8S_CAPACITY_SHARE of that rate: the Service spreads requests over every product's pods, so a product
whose pods run short is covered by the others, and the HPA keeps the actual count to what the load needs.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from . import defaults
from .errors import UserError


@dataclass(frozen=True)
class CapacityFigure:
    variant: str                  # the plan variant (GPU product) it was measured on
    model: str                    # spec model name
    rps: float                    # requests/s within the budget (bench --find-capacity)
    p99_ms: float
    budget_p99_ms: float          # the budget it was measured against
    file: str                     # report file name, for the record
    sha256: str


@dataclass(frozen=True)
class Replicas:
    variant: str
    min: int
    max: int
    reason: str


def read_capacity(text: str, variants: tuple[str, ...]) -> list[CapacityFigure]:
    """`--capacity [VARIANT=]FILE`: a `tritonkit bench --find-capacity` JSON report, for one variant of the plan."""
    variant, _, path = text.rpartition("=")
    if not variant:
        if len(variants) > 1:
            raise UserError("a fleet's capacity figure must name its variant", where="--capacity", actual=text,
                            expected=f"VARIANT=FILE with VARIANT one of {list(variants)}",
                            fix=f"e.g. --capacity {variants[0]}={path}")
        variant = variants[0]
    if variant not in variants:
        raise UserError("capacity for a variant the plan does not have", where="--capacity", actual=variant,
                        expected=f"one of {list(variants)}")
    file = Path(path)
    try:
        raw = file.read_bytes()
        data = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise UserError("capacity report is not readable JSON", where=str(file), actual=str(exc),
                        expected="the .json report `tritonkit bench --find-capacity` writes") from None
    cap = data.get("capacity") if isinstance(data, dict) else None
    if not str(data.get("schema", "") if isinstance(data, dict) else "").startswith("tritonkit.bench/") or cap is None:
        raise UserError("report holds no capacity figure", where=str(file),
                        actual="no 'capacity'" if isinstance(data, dict) else type(data).__name__,
                        expected="a report of `tritonkit bench --find-capacity`",
                        fix=f"measure on a {variant} host: tritonkit bench --repo R --find-capacity")
    if not cap.get("rps"):
        raise UserError("the capacity search found no rate within the budget", where=str(file),
                        actual=cap.get("reason"), expected="a rate > 0 req/s",
                        fix="fix the latency first (plan, budget, hardware), then measure again")
    return [CapacityFigure(variant=variant, model=data["target"]["model"], rps=float(cap["rps"]),
                           p99_ms=float(cap["p99_ms"]), budget_p99_ms=float(data["budget_p99_ms"]), file=file.name,
                           sha256=hashlib.sha256(raw).hexdigest())]


def size(variants: tuple[str, ...], peaks: dict[str, float], budgets: dict[str, float],
         figures: tuple[CapacityFigure, ...]) -> tuple[Replicas, ...]:
    """Replicas per variant. `peaks`: spec model -> traffic.peak_rps (models without one absent);
    `budgets`: spec model -> p99 budget (a figure measured against another budget is stale)."""
    lo, hi = defaults.K8S_MIN_REPLICAS, defaults.K8S_MAX_REPLICAS
    for f in figures:
        if f.model not in budgets:
            raise UserError("capacity measured for a model the spec does not serve", where=f.file, actual=f.model,
                            expected=f"one of {sorted(budgets)}")
        if f.budget_p99_ms != budgets[f.model]:
            raise UserError("capacity was measured against another latency budget", where=f.file,
                            actual=f"p99 {f.budget_p99_ms:g} ms", expected=f"p99 {budgets[f.model]:g} ms (the spec's)",
                            fix="measure again with the spec's budget: tritonkit bench --repo R --find-capacity")
    if not peaks:
        why = "no traffic target in the spec (traffic.peak_rps)" + (
            "; the capacity figures given are recorded but size nothing" if figures else "")
        return tuple(Replicas(v, lo, hi, f"defaults: {lo} keep serving through a node drain, at most {hi} ({why})")
                     for v in variants)
    known = {(f.variant, f.model): f for f in figures}
    missing = [f"{v}/{m}" for v in variants for m in sorted(peaks) if (v, m) not in known]
    if missing:
        raise UserError("a traffic target needs a measured capacity for every product and model", where="--capacity",
                        actual=f"none for {', '.join(missing)}", expected="one figure per variant and model",
                        fix="on a host of each product: tritonkit bench --repo R --find-capacity, then "
                            "--capacity VARIANT=reports/bench-MODEL-grpc.json")
    out = []
    for v in variants:
        need = {m: math.ceil(peak / (known[v, m].rps * defaults.K8S_CAPACITY_SHARE)) for m, peak in peaks.items()}
        worst = max(need, key=need.get)
        f = known[v, worst]
        pods = max(need[worst], lo)
        out.append(Replicas(v, lo, pods, (
            f"{worst}: peak {peaks[worst]:g} req/s / ({f.rps:.0f} req/s per pod within p99 {f.budget_p99_ms:g} ms "
            f"({f.file}) x {defaults.K8S_CAPACITY_SHARE:g}) = {need[worst]} pod(s): this product alone carries the peak; "
            f"at least {lo} through a node drain")))
    return tuple(out)
