"""Step 4: plan -> model repository. Validated with Triton's own schema, written atomically.

`render_files` is pure (plan -> {relative path: bytes}); `write_repository` validates everything, then
replaces the repository in one atomic swap (atomic.py) that carries built artifacts over from the old
one. A failure before the swap leaves the old repository byte-identical.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from . import defaults
from .atomic import replace_folder
from .errors import UserError
from .plan import Plan, TritonModel
from .plan_file import PLAN_FILE, plan_json

README = "README.md"
README_TEXT = b"""This folder is produced by `tritonkit render` (configs, python-backend code, `plan.json`) and
`tritonkit build` (model files with `build.json` and `reproduce.sh`). Do not edit it by hand:
change `deploy/models.yaml` and re-render. `tritonkit render --check` tells whether it is current.
"""
MANIFEST = "build.json"          # written by the build step next to each artifact
VERSION = "1"


def _environment():
    import jinja2

    from .dtypes import dtype
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(defaults.TEMPLATES_DIR)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)  # noqa: S701 - output is pbtxt/Python, not HTML
    env.filters["config_type"] = lambda name: dtype(name).config
    # A protobuf text-format string body: parameters may hold JSON (labels, mean/std), so quotes and
    # backslashes are escaped; non-ASCII stays UTF-8, which the format allows.
    env.filters["pbtxt"] = lambda value: str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return env


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
    files[PLAN_FILE] = plan_json(plans)
    return files


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
    by_variant: dict[str, dict[str, object]] = {}   # "config.pbtxt" or "configs/<v>.pbtxt" -> model -> config
    for m in plans[0].models:
        configs = [f"{m.name}/config.pbtxt"] + sorted(r for r in files if r.startswith(f"{m.name}/configs/"))
        for rel in configs:
            config = validate_config(files[rel], rel, m)
            check_config(config, rel)
            for step in config.ensemble_scheduling.step:
                if step.model_name not in names:
                    raise UserError("ensemble step names a model that is not in the repository", where=rel,
                                    actual=step.model_name, expected=sorted(names))
            by_variant.setdefault(rel.split("/", 1)[1], {})[m.name] = config
    for variant, configs in by_variant.items():
        for name, config in configs.items():
            check_ensemble(config, configs, f"{name}/{variant}")


# Load-time rules of tritonserver 2.51 (checked against the real server in
# tests/reliability/test_bad_configs.py, which lists the server's message for each), so a config the
# server would refuse fails here, before anything is written or launched. Two rules are stricter than
# 2.51, which loads such configs and then misbehaves: repeated tensor names (a request cannot address
# either tensor unambiguously) and a negative instance count (2.51 silently runs one instance).

def _io_problem(kind: str, io) -> str | None:
    from tritonclient.grpc import model_config_pb2
    if io.data_type == model_config_pb2.TYPE_INVALID:
        return f"model {kind} '{io.name}' must specify 'data_type'"
    if not io.dims:
        return f"model {kind} '{io.name}' must specify 'dims'"
    bad = [d for d in io.dims if d != -1 and d < 1]
    if bad:
        return (f"model {kind} '{io.name}' dimension must be integer >= 1, or -1 to indicate a variable-size "
                f"dimension (got {list(io.dims)})")
    return None


_CONFIG_FIX = "fix the config; in a rendered repository this is a template bug or a bad spec value (re-render)"


def check_config(config, where: str) -> None:
    """UserError for the first rule one parsed ModelConfig breaks (see the comment above)."""
    from tritonclient.grpc import model_config_pb2

    def fail(what: str, actual: object = None, expected: object = None) -> None:
        raise UserError(f"config would not load in Triton: {what}", where=where, actual=actual, expected=expected,
                        fix=_CONFIG_FIX)

    if config.max_batch_size < 0:
        fail("'max_batch_size' must be non-negative value", config.max_batch_size, ">= 0")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for io in tensors:
            problem = _io_problem(kind, io)
            if problem:
                fail(problem)
            if io.name in seen:
                fail(f"model {kind} name '{io.name}' appears twice", [t.name for t in tensors], "unique names")
            seen.add(io.name)
    for group in config.instance_group:
        if group.count < 0:
            label = group.name or model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind)
            fail(f"instance group '{label}' has a negative count", group.count,
                 ">= 1 (0 or unset: Triton's default of 1)")
    if config.HasField("dynamic_batching"):
        too_big = [b for b in config.dynamic_batching.preferred_batch_size if b < 1 or b > config.max_batch_size]
        if too_big:
            fail("dynamic batching preferred size must be <= max batch size", too_big,
                 f"sizes in 1..{config.max_batch_size}")


def check_ensemble(config, configs: dict, where: str) -> None:
    """An ensemble's steps against the configs of the models it composes (`configs`: name -> ModelConfig,
    the repository's models). The checks 2.51 makes when it loads an ensemble; no-op for other models."""
    steps = config.ensemble_scheduling.step
    if not steps:
        return

    def fail(what: str, actual: object = None, expected: object = None) -> None:
        raise UserError(f"ensemble would not load in Triton: {what}", where=where, actual=actual, expected=expected,
                        fix=_CONFIG_FIX)

    produced = {t.name for t in config.input}
    for step in steps:
        composing = configs.get(step.model_name)
        if composing is None:
            fail("ensemble step names a model that is not in the repository", step.model_name, sorted(configs))
        inputs, outputs = {t.name for t in composing.input}, {t.name for t in composing.output}
        for key in step.input_map:
            if key not in inputs:
                fail(f"step '{step.model_name}' maps to input '{key}', which that model does not have",
                     key, sorted(inputs))
        for key in step.output_map:
            if key not in outputs:
                fail(f"step '{step.model_name}' maps from output '{key}', which that model does not have",
                     key, sorted(outputs))
        if config.max_batch_size > 0 and composing.max_batch_size < config.max_batch_size:
            fail(f"ensemble allows maximum batch size {config.max_batch_size}, but it contains model "
                 f"'{step.model_name}' which only allows {composing.max_batch_size}",
                 composing.max_batch_size, f">= {config.max_batch_size}")
        produced.update(step.output_map.values())
    consumed = {v for step in steps for v in step.input_map.values()}
    missing = sorted(consumed - produced)
    if missing:
        fail("step input(s) that no ensemble input or step output provides", missing, sorted(produced))
    unused = sorted(t.name for t in config.output if t.name not in produced)
    if unused:
        fail("ensemble output(s) that no step produces", unused, sorted(produced))


def validate_repository(root: Path) -> list[UserError]:
    """Every <model>/config.pbtxt of a model repository on disk, checked as a render is: Triton's schema,
    the folder name, `check_config` and `check_ensemble`. One UserError per bad model; [] if all pass.
    Models without a config.pbtxt (Triton auto-completes those) are not checked."""
    root = Path(root)
    problems: list[UserError] = []
    configs: dict[str, object] = {}
    broken: set[str] = set()
    for path in sorted(root.glob("*/config.pbtxt")):
        folder, where = path.parent.name, str(path)
        try:
            config = validate_config(path.read_bytes(), where)
            if config.name and config.name != folder:
                raise UserError("config name does not match its folder (Triton: directory name must equal "
                                "model name)", where=where, actual=config.name, expected=folder)
            check_config(config, where)
        except UserError as exc:
            problems.append(exc)
            broken.add(folder)
            continue
        configs[folder] = config
    for folder, config in configs.items():
        if any(step.model_name in broken for step in config.ensemble_scheduling.step):
            continue  # its composing model's own problem is reported; checking against it says nothing
        try:
            check_ensemble(config, configs, str(root / folder / "config.pbtxt"))
        except UserError as exc:
            problems.append(exc)
    return problems


# --- atomic write ----------------------------------------------------------------------------------

def _carried(plans: Plans, out: Path) -> list[str]:
    """Built artifacts (and their manifests) that re-rendering keeps: rendering never forces a rebuild.
    Besides the files the plan names, every file the old build.json lists (e.g. an ONNX model's
    external-data files), which only the build knows about."""
    names = set()
    for m in {m.name: m for plan in _as_tuple(plans) for m in plan.models if m.artifacts}.values():
        folder = Path(out) / m.name / VERSION
        try:
            built = json.loads((folder / MANIFEST).read_text()).get("files") or {}
        except (OSError, ValueError):
            built = {}
        for plan in _as_tuple(plans):
            pm = plan.model(m.name)
            names.update(f"{m.name}/{VERSION}/{n}" for n in (*pm.artifacts, *(f for _, f in pm.cc_model_filenames)))
        names.update(f"{m.name}/{VERSION}/{n}" for n in (*built, MANIFEST, "reproduce.sh"))
    return sorted(names)


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError("output exists and is not a folder", where=str(out), fix="choose another --out")
    if out.is_dir() and {p.name for p in out.iterdir()} - {README} and not (out / PLAN_FILE).exists():
        raise UserError("folder is not empty and was not rendered by tritonkit; refusing to replace it",
                        where=str(out), actual=sorted(p.name for p in out.iterdir())[:5],
                        expected=f"an empty folder or one with {PLAN_FILE}",
                        fix="choose another --out or move that folder away")


def check_built_plans(plans: Plans, out: Path) -> None:
    """Refuse to carry TensorRT plans over that the target server would not load (UserError, exit 2).

    A plan built by another TensorRT than the server's (the pin in defaults, through the plan's
    ServerTarget) or for another compute capability than the config maps its file to fails at load
    time ("Magic tag does not match"); the message names each file and the command that rebuilds it.
    """
    if not (Path(out) / PLAN_FILE).is_file():
        return
    from .trt_manifest import check_built_plans as check
    check(Path(out), json.loads(plan_json(plans)), action="render")


def write_repository(plan: Plans, out: Path, files: dict[str, bytes] | None = None) -> dict[str, bytes]:
    out = Path(out).absolute()
    _check_target(out)
    check_built_plans(plan, out)                         # stale TensorRT plans: refuse, leave `out` as it is
    files = render_files(plan) if files is None else files
    validate_files(plan, files)                          # nothing is written unless everything is valid
    replace_folder(out, files, keep=_carried(plan, out))
    return files


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
    return tree_drift(files, Path(out), ignore=set(_carried(plan, out)))


def tree_drift(files: dict[str, bytes], out: Path, ignore: set[str] = frozenset()) -> Drift:
    """What differs between `files` ({relative path: bytes}) and the folder `out`, besides `ignore`."""
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} if out.is_dir() else set()
    missing = sorted(set(files) - on_disk)
    changed = sorted(rel for rel in set(files) & on_disk if (out / rel).read_bytes() != files[rel])
    extra = sorted(on_disk - set(files) - ignore)
    diff = "".join(
        "".join(difflib.unified_diff((out / rel).read_text().splitlines(True), files[rel].decode().splitlines(True),
                                     f"on disk: {rel}", f"rendered: {rel}"))
        for rel in changed)
    return Drift(tuple(missing), tuple(changed), tuple(extra), diff)