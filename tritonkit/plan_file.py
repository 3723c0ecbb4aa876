"""plan.json: the hand-off between the steps. Written once by `plan`/`render`, read by everything after.

`render` writes it at the repository's root (Triton ignores files there); `tritonkit plan --out F` writes
the same bytes to a file that can be reviewed, diffed, committed and rendered elsewhere
(`render --plan F`). `build`, `serve`, `bench` and `render --check` take a repository and read its plan;
planning flags exist only for planning. The spec is loaded through the plan (recorded path + digest),
so a spec edited after planning is noticed instead of silently built from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path

from . import defaults
from .errors import UserError
from .plan import Plan

PLAN_FILE = "plan.json"          # marks a tritonkit repository
FORMAT = 3                       # 1: before plans were read back (never readable); 2: before fleets had CPU nodes
Plans = tuple[Plan, ...]


def plan_json(plans: Plan | Plans) -> bytes:
    """One plan, or one per GPU type of a fleet, as the bytes of plan.json (sorted keys: diffable)."""
    plans = plans if isinstance(plans, tuple) else (plans,)
    record = {"generator": "tritonkit", "format": FORMAT, "plans": [p.to_dict() for p in plans]}
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def _decode(tp, value, where: str):
    """A JSON value back into the (frozen dataclass) type the plan declares for it."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _decode(next(a for a in args if a is not type(None)), value, where)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        if not isinstance(value, dict) or set(value) - names:
            raise ValueError(f"{where}: unexpected {sorted(set(value) - names) if isinstance(value, dict) else value}")
        return tp(**{k: _decode(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(_decode(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is frozenset:
        return frozenset(_decode(args[0], v, where) for v in value)
    return value


def read_plans(path: Path) -> Plans:
    """The plans in a plan.json file (a repository's, or one written by `tritonkit plan --out`)."""
    path = Path(path)
    if path.is_dir():
        path = path / PLAN_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError("no plan here", where=str(path), actual="no such file",
                        expected=f"a {PLAN_FILE} written by `tritonkit render` or `tritonkit plan --out`",
                        fix=f"render the repository first (`tritonkit render --out {path.parent}`)") from None
    except (OSError, ValueError) as exc:
        raise UserError("plan file is not readable JSON", where=str(path), actual=str(exc),
                        expected="the file tritonkit wrote", fix="re-render, or restore it from version control") from None
    fmt = record.get("format") if isinstance(record, dict) else None
    if fmt != FORMAT:
        raise UserError("plan file was written by another tritonkit version", where=str(path), actual=f"format {fmt}",
                        expected=f"format {FORMAT}", fix="re-render with this tritonkit (the flags you planned with)")
    try:
        plans = tuple(_decode(Plan, p, f"plans[{i}]") for i, p in enumerate(record["plans"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"plan file does not hold a plan: {exc}", where=str(path),
                        expected="the file tritonkit wrote", fix="re-render, or restore it from version control") from None
    if not plans:
        raise UserError("plan file lists no plan", where=str(path), fix="re-render")
    return plans


def spec_path(plans: Plans) -> Path:
    recorded = Path(plans[0].spec.path)
    return recorded if recorded.is_absolute() else defaults.PROJECT_ROOT / recorded


def load_spec(plans: Plans, *, sources: bool = True):
    """The spec the plans were made from, refused if it changed since (later steps never re-plan).
    `sources=False` for a client that measures the server and needs no model files."""
    from .spec import load_spec as load
    path = spec_path(plans)
    if not path.is_file():
        raise UserError("the plan's spec file is gone", where=str(path), actual="no such file",
                        expected=f"the spec the plan was made from (sha256 {plans[0].spec.sha256[:12]}...)",
                        fix="restore it, or plan again from the spec you have")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != plans[0].spec.sha256:
        raise UserError("the spec changed after this plan was made", where=str(path),
                        actual=f"sha256 {digest[:12]}...", expected=f"sha256 {plans[0].spec.sha256[:12]}... (planned)",
                        fix="re-render (`tritonkit render` with the flags you planned with) so the plan follows the spec")
    return load(path, sources=sources)


def replan(plans: Plans) -> Plans:
    """What this tritonkit's policy decides today from the plan's own inputs: its spec, the hardware it is
    for, its server and toolchain facts (never this host's). Equal to `plans` unless policy or spec changed."""
    from .policy import plan_fleet
    hardware = plans[0].hardware
    cores = next((p.hardware.cpu_cores for p in plans if p.hardware.cpu_cores is not None), None)
    features = next((p.hardware.cpu_features for p in plans if p.hardware.cpu_features), ())
    hardware = dataclasses.replace(hardware, cpu_cores=cores, cpu_features=features)
    return plan_fleet(load_spec(plans), hardware, plans[0].server, plans[0].caps)


def plan_differences(recorded: Plans, fresh: Plans) -> list[str]:
    """One line per difference between two plans of the same inputs: decisions first, then any other value."""
    lines: list[str] = []
    if len(recorded) != len(fresh):
        return [f"{len(recorded)} GPU variant(s) planned, {len(fresh)} now"]
    for old, new in zip(recorded, fresh):
        variant = old.gpu.name if old.gpu else "CPU"
        was = {(d.subject, d.key): d.value for d in old.decisions}
        now = {(d.subject, d.key): d.value for d in new.decisions}
        for key in sorted(set(was) | set(now)):
            if was.get(key) != now.get(key):
                lines.append(f"{variant}: {key[0]} {key[1]}: planned {was.get(key)!r}, would now be {now.get(key)!r}")
        if not lines and old.to_dict() != new.to_dict():
            changed = sorted(k for k, v in old.to_dict().items() if new.to_dict().get(k) != v)
            lines.append(f"{variant}: plan values differ in {changed} (same decisions)")
    return lines


def check_serving_host(plans: Plans, repo: Path) -> None:
    """What must hold for the embedded server to serve this plan here; nothing else about the host is checked.
    (TensorRT plans against this host's GPUs: serve.refuse_mismatched_plans.)"""
    plan = plans[0]
    if plan.server.name != "embedded":
        raise UserError(f"the repository was planned for the {plan.server.name} server", where=str(repo),
                        actual=f"backends {sorted({m.backend for m in plan.models})}",
                        expected="a plan for the embedded server (python backend only)",
                        fix="serve it in the NGC image (docker compose up), or re-render with --server embedded")
    if any(m.on_gpu for m in plan.models):
        from .hardware import detect
        host = detect()
        if not host.gpus:
            raise UserError("the plan runs models on a GPU and this host has none", where=str(repo),
                            actual=host.describe(), expected=", ".join(p.gpu.describe() for p in plans if p.gpu),
                            fix="serve on that GPU, or re-render for this host (`tritonkit render --gpu none`)")
