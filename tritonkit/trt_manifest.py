"""Which built TensorRT plans a server and its GPUs can load: build.json records, and the refusals that read them.

A plan (serialized engine) loads only with the TensorRT version and the GPU architecture that built it;
anything else fails at load time ("Magic tag does not match", "The engine plan file is not compatible
with this version of TensorRT"). So every plan's build.json entry records its TensorRT version and
compute capability (:func:`plan_entry`), and render and serve refuse a plan whose record does not
match the server that will load it (:func:`check_built_plans`), with the command that rebuilds it.
Pure apart from reading build.json files.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import defaults
from .errors import UserError
from .plan import plan_filename
from .plan_file import FORMAT
from .servers import SERVERS
from .trt_settings import BuilderSettings, cc_text, parse_cc

MANIFEST = "build.json"          # same name as render.MANIFEST (render imports this module lazily)
VERSION = "1"
PLANS_KEY = "plans"              # build.json: {"plans": {file name: what built it}}


def same_tensorrt(built: str | None, server: str | None) -> bool:
    """'11.4.0.106' (what a build reports) matches the pin '11.4.0': compare the pin's components. A plan of
    TensorRT 10 does not load in 11 either: only engines built version-compatible do, and the kit builds none."""
    if not built or not server:
        return False
    want = server.split(".")
    return built.split(".")[:len(want)] == want


def plan_entry(settings: BuilderSettings, *, tensorrt_version: str, gpu_name: str, sha256: str, onnx: dict,
               validation: dict, engine: dict, recipe: dict) -> dict:
    """build.json's record of one plan file (``plans[<file>]``): what built it and how close it measured."""
    return {**settings.record(), "tensorrt": tensorrt_version, "tensorrt_pin": settings.tensorrt_version,
            "gpu": gpu_name, "sha256": sha256, "onnx": onnx, "validation": validation, "engine": engine,
            "recipe": recipe}


def rebuild_command(repo: Path | str, *, force: bool = True) -> str:
    """The build in the serving release's TensorRT image, on this host's GPU (the repository's plan.json says
    what to build; paths relative to $PWD work)."""
    cmd = ["tritonkit", "build", "--repo", str(repo), *(["--force"] if force else [])]
    return (f"docker run --rm --gpus all -v \"$PWD\":/workspace -w /workspace {defaults.NGC_TENSORRT_IMAGE} "
            + shlex.join(cmd))


def expected_plans(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """From plan records (one per GPU type of a fleet): TensorRT model -> {plan file: compute capability}."""
    out: dict[str, dict[str, str]] = {}
    for rec in records:
        gpu = rec.get("gpu") or {}
        for m in rec.get("models", []):
            if m.get("backend") != "tensorrt":
                continue
            files = out.setdefault(m["name"], {})
            for cc, name in m.get("cc_model_filenames") or []:
                files[name] = cc
            if gpu.get("compute_capability"):
                for name in m.get("artifacts") or []:
                    files.setdefault(name, cc_text(gpu["compute_capability"]))
    return out


def plan_records(plan_json: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """plan.json's plan records (plan_file.plan_json); a plan.json of another format holds none we can read."""
    fmt = plan_json.get("format")
    if fmt != FORMAT:
        raise UserError("plan.json was written by another tritonkit version", actual=f"format {fmt}",
                        expected=f"format {FORMAT}", fix="re-render with this tritonkit (the flags you planned with)")
    return list(plan_json["plans"])


@dataclass(frozen=True)
class PlanMismatch:
    path: str            # "minilm_encoder/1/model.sm75.plan"
    problem: str         # one line: what was built vs what the server needs


def plan_mismatches(repo: Path, expected: Mapping[str, Mapping[str, str]], *, tensorrt_version: str | None,
                    server: str, gpu_ccs: Sequence[str] = ()) -> list[PlanMismatch]:
    """Every built plan under ``repo`` that the server would refuse (or load on the wrong GPU).

    ``expected``: model -> {plan file: the cc the config maps it to}. A plan file present on disk must
    have a build.json entry recording TensorRT == ``tensorrt_version`` (the server's) and that cc.
    ``gpu_ccs``: the GPUs that will load it (serve: detected); each needs a plan built for its cc.
    """
    problems: list[PlanMismatch] = []
    for model, files in sorted(expected.items()):
        folder = Path(repo) / model / VERSION
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = {}
        entries = manifest.get(PLANS_KEY) or {}
        built_ccs = set()
        for name, cc in sorted(files.items()):
            rel = f"{model}/{VERSION}/{name}"
            if not (folder / name).is_file():
                continue
            entry = entries.get(name)
            if entry is None:
                problems.append(PlanMismatch(rel, "no build.json record of which TensorRT and GPU built it"))
                continue
            if not same_tensorrt(entry.get("tensorrt"), tensorrt_version):
                problems.append(PlanMismatch(rel, f"built with TensorRT {entry.get('tensorrt')}; the {server} server "
                                                  f"loads plans with TensorRT {tensorrt_version} ('Magic tag does not "
                                                  "match' / 'not compatible with this version of TensorRT')"))
            if entry.get("compute_capability") != cc:
                problems.append(PlanMismatch(rel, f"built for compute capability {entry.get('compute_capability')} "
                                                  f"({entry.get('gpu')}); the config loads it on cc {cc} GPUs"))
            else:
                built_ccs.add(cc)
        for cc in sorted(set(gpu_ccs)):
            if cc not in built_ccs:
                mapped = [n for n, c in files.items() if c == cc]
                problems.append(PlanMismatch(f"{model}/{VERSION}/{mapped[0] if mapped else plan_filename(parse_cc(cc))}",
                                             f"this host has a cc {cc} GPU and no matching plan was built for it"))
    return problems


def check_built_plans(repo: Path, plan_json: Mapping[str, Any], *, action: str,
                      gpu_ccs: Sequence[str] = ()) -> None:
    """Raise UserError (exit 2) naming each plan the target server would refuse, and how to rebuild it.

    The server's TensorRT comes from the current pins (servers.SERVERS[name].tensorrt_version), not from
    what plan.json recorded: a bumped NGC release makes every old plan stale, which is the point.
    """
    records = plan_records(plan_json)
    expected = expected_plans(records)
    if not expected:
        return
    server_name = records[0].get("server", {}).get("name", "ngc")
    target = SERVERS.get(server_name)
    tensorrt_version = target.tensorrt_version if target else None
    mismatches = plan_mismatches(repo, expected, tensorrt_version=tensorrt_version, server=server_name,
                                 gpu_ccs=gpu_ccs)
    if not mismatches:
        return
    lines = "\n".join(f"    {m.path}: {m.problem}" for m in mismatches)
    stale = " ".join(shlex.quote(str(Path(repo) / m.path)) for m in mismatches if (Path(repo) / m.path).is_file())
    ccs = sorted({c for files in expected.values() for c in files.values()})
    rebuild = rebuild_command(repo)
    if action == "render":
        fix = (f"the repository is unchanged. Remove the stale plan(s){f' (rm {stale})' if stale else ''}, render "
               f"again, then rebuild on a GPU of compute capability {', '.join(ccs)}: {rebuild}")
    else:
        fix = f"rebuild on a GPU of compute capability {', '.join(ccs)}, in the serving release's TensorRT image: {rebuild}"
    raise UserError(f"{len(mismatches)} TensorRT plan(s) would not load in the {server_name} server "
                    f"(Triton {target.triton_version if target else '?'}, TensorRT {tensorrt_version}); "
                    f"refusing to {action}:\n{lines}", where=str(repo),
                    actual="plans built for another TensorRT or GPU",
                    expected=f"TensorRT {tensorrt_version} ({defaults.NGC_TENSORRT_IMAGE}) and the config's cc",
                    fix=fix)
