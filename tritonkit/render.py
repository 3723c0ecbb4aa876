"""Step 4: plan -> model repository. Validated with Triton's own schema, written atomically.

`render_files` is pure (plan -> {relative path: bytes}); `write_repository` stages everything in a
sibling folder, validates it, carries built artifacts over from the old repository, then swaps the
two folders with one atomic rename (renameat2 RENAME_EXCHANGE). A failure at any point before the
swap leaves the old repository byte-identical; a kill at any point leaves either the old or the new.
"""

from __future__ import annotations

import ctypes
import difflib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import defaults
from .errors import UserError
from .plan import Plan, TritonModel

PLAN_FILE = "plan.json"          # marks a tritonkit repository; Triton ignores files at the root
README = "README.md"
README_TEXT = b"""This folder is produced by `tritonkit render` (configs, python-backend code, `plan.json`) and
`tritonkit build` (model files with `build.json` and `reproduce.sh`). Do not edit it by hand:
change `deploy/models.yaml` and re-render. `tritonkit render --check` tells whether it is current.
"""
MANIFEST = "build.json"          # written by the build step next to each artifact
VERSION = "1"


def _environment():
    import jinja2
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(defaults.TEMPLATES_DIR)),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              autoescape=False)  # noqa: S701 - output is pbtxt/Python, not HTML


def _tidy(text: str) -> bytes:
    lines = [line.rstrip() for line in text.splitlines()]
    out: list[str] = []
    for line in lines:  # collapse blank runs left by template blocks
        if line or (out and out[-1]):
            out.append(line)
    return ("\n".join(out).strip() + "\n").encode()


Plans = Plan | tuple[Plan, ...]


def _as_tuple(plans: Plans) -> tuple[Plan, ...]:
    return plans if isinstance(plans, tuple) else (plans,)


def variant_name(plan: Plan) -> str:
    """`--model-config-name` of a fleet variant: the GPU name as a slug ("tesla-t4", "h100-sxm")."""
    return re.sub(r"[^a-z0-9]+", "-", plan.gpu.name.lower()).strip("-") if plan.gpu else "cpu"


def render_files(plans: Plans) -> dict[str, bytes]:
    """One plan -> a repository; several (a fleet) -> the first as config.pbtxt and every one as
    configs/<variant>.pbtxt, chosen per server with `tritonserver --model-config-name=<variant>`."""
    plans = _as_tuple(plans)
    env = _environment()
    files: dict[str, bytes] = {}
    for i, plan in enumerate(plans):
        for m in plan.models:
            config = _tidy(env.get_template(m.config_template).render(m=m))
            if i == 0:
                files[f"{m.name}/config.pbtxt"] = config
            if len(plans) > 1:
                files[f"{m.name}/configs/{variant_name(plan)}.pbtxt"] = config
            if m.code_template:
                code = _tidy(env.get_template(f"python/{m.code_template}").render(m=m))
                rel = f"{m.name}/{VERSION}/model.py"
                for name in m.code_files:
                    files[f"{m.name}/{VERSION}/{name}"] = (defaults.TEMPLATES_DIR / "python" / name).read_bytes()
                if files.setdefault(rel, code) != code:
                    raise UserError("fleet variants need different model code for one model", where=m.name,
                                    actual=[variant_name(p) for p in plans], expected="one code path for all GPUs",
                                    fix="render one repository per GPU type")
            elif not m.artifacts:
                files[f"{m.name}/{VERSION}/.keep"] = b""  # Triton needs a version folder even for ensembles
    files[README] = README_TEXT
    record = plan_record(plans[0]) if len(plans) == 1 else {"generator": "tritonkit",
                                                             "fleet": [plan_record(p) for p in plans]}
    files[PLAN_FILE] = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    return files


def plan_record(plan: Plan) -> dict:
    record = plan.to_dict()
    spec = Path(plan.spec_path)
    try:
        record["spec_path"] = str(spec.resolve().relative_to(defaults.PROJECT_ROOT))
    except ValueError:
        record["spec_path"] = str(spec)
    record["generator"] = "tritonkit"
    return record


def validate_config(text: bytes | str, where: str, model: TritonModel | None = None):
    """Parse with Triton's own schema (model_config.proto): unknown fields and bad enums fail here."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text.decode() if isinstance(text, bytes) else text, config)
    except text_format.ParseError as exc:
        raise UserError(f"config rejected by Triton's model_config schema: {exc}", where=where,
                        fix="this is a template bug or a bad value in the spec; see the line above") from None
    if model is not None and config.name != model.name:
        raise UserError("config name does not match its folder", where=where, actual=config.name,
                        expected=model.name)
    return config


def validate_files(plans: Plans, files: dict[str, bytes]) -> None:
    plans = _as_tuple(plans)
    names = {m.name for m in plans[0].models}
    for m in plans[0].models:
        configs = [f"{m.name}/config.pbtxt"] + sorted(r for r in files if r.startswith(f"{m.name}/configs/"))
        for rel in configs:
            config = validate_config(files[rel], rel, m)
            for step in config.ensemble_scheduling.step:
                if step.model_name not in names:
                    raise UserError("ensemble step names a model that is not in the repository", where=rel,
                                    actual=step.model_name, expected=sorted(names))


# --- atomic write ----------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2). False where the kernel/filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _carried(plans: Plans) -> list[str]:
    """Built artifacts (and their manifests) that re-rendering keeps: rendering never forces a rebuild."""
    return sorted({f"{m.name}/{VERSION}/{name}" for plan in _as_tuple(plans) for m in plan.models
                   for name in (*m.artifacts, *(f for _, f in m.cc_model_filenames), MANIFEST, "reproduce.sh")
                   if m.artifacts})


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError("output exists and is not a folder", where=str(out), fix="choose another --out")
    if out.is_dir() and {p.name for p in out.iterdir()} - {README} and not (out / PLAN_FILE).exists():
        raise UserError("folder is not empty and was not rendered by tritonkit; refusing to replace it",
                        where=str(out), actual=sorted(p.name for p in out.iterdir())[:5],
                        expected=f"an empty folder or one with {PLAN_FILE}",
                        fix="choose another --out or move that folder away")


def write_repository(plan: Plans, out: Path, files: dict[str, bytes] | None = None) -> dict[str, bytes]:
    out = Path(out).absolute()
    _check_target(out)
    files = render_files(plan) if files is None else files
    validate_files(plan, files)                          # nothing is written unless everything is valid
    stage = out.with_name(f".{out.name}.render-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        for rel, data in files.items():
            path = stage / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for rel in _carried(plan):
            old = out / rel
            if old.is_file():
                (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(old, stage / rel)         # artifacts are large: share, don't copy
                except OSError:
                    shutil.copy2(old, stage / rel)
        _fsync_tree(stage)
        if out.exists():
            if not _exchange(stage, out):
                backup = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.rename(out, backup)                # fallback: two renames, a short window without `out`
                os.rename(stage, out)
                stage = backup
        else:
            os.rename(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)          # the staged tree, or the old one after the swap
    return files


def _fsync_tree(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- check -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Drift:
    missing: tuple[str, ...]
    changed: tuple[str, ...]
    extra: tuple[str, ...]
    diff: str

    @property
    def clean(self) -> bool:
        return not (self.missing or self.changed or self.extra)


def check_repository(plan: Plans, out: Path, files: dict[str, bytes] | None = None) -> Drift:
    """Compare what would be rendered with what is on disk (built artifacts are not rendered, so ignored)."""
    files = render_files(plan) if files is None else files
    out = Path(out)
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} if out.is_dir() else set()
    carried = set(_carried(plan))
    missing = sorted(set(files) - on_disk)
    changed = sorted(rel for rel in set(files) & on_disk if (out / rel).read_bytes() != files[rel])
    extra = sorted(on_disk - set(files) - carried)
    diff = "".join(
        "".join(difflib.unified_diff((out / rel).read_text().splitlines(True), files[rel].decode().splitlines(True),
                                     f"on disk: {rel}", f"rendered: {rel}"))
        for rel in changed)
    return Drift(tuple(missing), tuple(changed), tuple(extra), diff)
