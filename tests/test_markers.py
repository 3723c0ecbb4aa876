"""`make test-fast` (`pytest -m "not integration"`) starts no server, exports no model and builds no image.

The rule, checked on exactly what `pytest -m "not integration"` collects (a child pytest run with
`--collect-only` that loads this module as a plugin, so every test is seen with its markers and its fixture
closure, whichever file it lives in):

1. Fixtures. No collected test may use, directly or through other fixtures (pytest's fixture closure), a
   fixture that starts a server, exports a model or builds an image: the ones in HEAVY_FIXTURES (the shared
   `built_repo` / `minilm_server` of tests/conftest.py and the like), and any other fixture whose code
   reaches a heavy entry point (rule 2).
2. Code. No collected test's code may reach a heavy entry point: a name in HEAVY_NAMES (EmbeddedServer,
   ServeProcess, the MiniLM / torch.onnx export functions, ...) or torch.onnx.export / torch.jit.trace. The
   code looked at is the test function, the functions nested in it, and every function or class of the
   tests package that it names, followed transitively.
3. Exceptions are the tests named in STARTS_NOTHING, each with the reason it reaches an entry point
   without running it (a refusal before launch, a command line built and never run).

Names are matched in the bytecode (`co_names`), so an entry point reached only through an alias or
getattr escapes rule 2; rule 1 still catches the shared fixtures, whatever their code looks like. A
module that fails to collect fails its check: its tests cannot be vouched for. Prevents a slow, stateful
test (a MiniLM export, a tritonserver start, a `docker compose build`) slipping into the fast suite
because its author forgot `@pytest.mark.integration`.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
REPORT_ENV = "TRITONKIT_MARKER_REPORT"  # set only in the child pytest: where the plugin writes its report

# Fixtures that start a server, export a model or build an image, whatever their code looks like.
HEAVY_FIXTURES = {
    "built_repo": "exports MiniLM to ONNX (tests/conftest.py)",
    "minilm_server": "starts tritonserver (tests/conftest.py)",
    "minilm_capacity": "measures the running minilm_server (tests/reliability/conftest.py)",
    "serve_process": "runs `tritonkit serve` children (tests/reliability/helpers.py)",
    "add_one_server": "starts tritonserver (tests/test_serve.py)",
    "launch_serve": "runs serve() in a child (tests/test_serve.py)",
    "stack": "builds the compose images and runs `docker compose up` (tests/test_compose.py)",
}
# Entry points that start a server, export a model with torch or start a container.
HEAVY_NAMES = {
    "EmbeddedServer": "starts tritonserver",
    "ServeProcess": "runs `tritonkit serve`",
    "serve_in_docker": "starts a Triton container",
    "export_sentence_embedding": "exports MiniLM to ONNX",
    "export_sentence_embedding_torchscript": "traces MiniLM with torch.jit",
    "export_torch_onnx": "exports a torch module with torch.onnx",
    "_torch_onnx_export": "torch.onnx export",
    "export_cnn": "exports the tiny CNN with torch.onnx",
}
HEAVY_NAME_GROUPS = {  # attribute chains: all of these names in one code object
    ("torch", "onnx", "export"): "torch.onnx.export",
    ("torch", "jit", "trace"): "torch.jit.trace",
}
# Tests that reach an entry point without running it. Node ids without parameters.
STARTS_NOTHING = {
    "tests/test_serve.py::test_missing_repository_is_a_user_error":
        "EmbeddedServer.start() refuses a missing repository before launching",
    "tests/test_serve.py::test_port_in_use_names_the_port_and_starts_nothing":
        "EmbeddedServer.start() refuses a taken port before launching",
    "tests/reliability/test_exposure.py::test_cli_defaults_are_loopback_restricted_and_model_control_none":
        "builds EmbeddedServer's command line, never runs it",
    "tests/test_stub_env.py::test_stub_python_with_docker_is_refused":
        "serve_in_docker refuses --stub-python before it contacts a Docker engine",
    "tests/test_build.py::test_unpinned_or_unverified_opset_is_refused":
        "export_torch_onnx refuses the opset before torch.onnx runs",
    "tests/test_export.py::test_export_rejects_bad_arguments_before_loading_anything":
        "export_sentence_embedding refuses the arguments before loading the model",
    "tests/test_export.py::test_export_with_bad_model_dir_leaves_existing_file_untouched":
        "export_sentence_embedding refuses a missing model folder before loading anything",
    "tests/test_export.py::test_export_with_truncated_weights_is_a_user_error":
        "loading the cut-short weights fails before torch.onnx runs",
    "tests/test_export.py::test_export_crash_midway_leaves_existing_file_untouched":
        "torch.onnx.export is replaced by a stand-in that writes a partial file and raises",
    "tests/test_markers.py::test_the_detector_sees_entry_points_directly_nested_and_through_helpers":
        "inspects the bytecode of heavy-looking functions, never calls them",
}


# --- the detector --------------------------------------------------------------------------------------

def _code_objects(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _callables_of(obj) -> list:
    """The functions whose code `obj` (a function or class of the tests package) runs."""
    if inspect.isclass(obj):
        found = []
        for value in vars(obj).values():
            value = getattr(value, "__func__", value)              # staticmethod / classmethod
            value = getattr(value, "fget", value)                  # property
            if inspect.isfunction(value):
                found.append(value)
        return found
    return [obj] if inspect.isfunction(obj) else []


def heavy_entry_points(func, _seen: set | None = None) -> set[str]:
    """'<entry point>: <what it does> (in <function>)' for each heavy entry point `func` reaches."""
    seen = set() if _seen is None else _seen
    func = inspect.unwrap(func)
    if not inspect.isfunction(func) or func.__code__ in seen:
        return set()
    seen.add(func.__code__)
    hits = set()
    for code in _code_objects(func.__code__):
        names = set(code.co_names)
        hits |= {f"{n}: {HEAVY_NAMES[n]} (in {func.__qualname__})" for n in names & set(HEAVY_NAMES)}
        hits |= {f"{label} (in {func.__qualname__})" for group, label in HEAVY_NAME_GROUPS.items()
                 if set(group) <= names}
        for name in names:
            target = func.__globals__.get(name)
            if target is None or not (getattr(target, "__module__", None) or "").startswith("tests"):
                continue
            for callee in _callables_of(target):
                hits |= heavy_entry_points(callee, seen)
    return hits


def item_findings(item) -> list[str]:
    """Why `item` (a collected pytest item) may not run in the fast suite; empty when it may."""
    if item.nodeid.split("[")[0] in STARTS_NOTHING:
        return []
    findings = []
    name2defs = item._fixtureinfo.name2fixturedefs  # AttributeError (a pytest change) fails the guard loudly
    for name in item.fixturenames:
        if name in HEAVY_FIXTURES:
            findings.append(f"fixture {name}: {HEAVY_FIXTURES[name]}")
            continue
        defs = name2defs.get(name)
        if defs:
            for hit in sorted(heavy_entry_points(defs[-1].func)):
                findings.append(f"fixture {name} reaches {hit}")
    function = getattr(item, "function", None)
    findings += [f"reaches {hit}" for hit in sorted(heavy_entry_points(getattr(function, "__func__", function)))]
    return findings


# --- the child pytest's plugin (`-p tests.test_markers`; inert in an ordinary run) ---------------------

_COLLECT_ERRORS: list[str] = []


def pytest_collectreport(report):
    if os.environ.get(REPORT_ENV) and report.failed:
        _COLLECT_ERRORS.append(f"{report.nodeid}: {str(report.longrepr).strip().splitlines()[-1]}")


def pytest_collection_finish(session):
    out = os.environ.get(REPORT_ENV)
    if not out:
        return
    items = [{"nodeid": item.nodeid, "integration": item.get_closest_marker("integration") is not None,
              "findings": item_findings(item)} for item in session.items]
    Path(out).write_text(json.dumps({"items": items, "collect_errors": _COLLECT_ERRORS}))


# --- the checks ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fast_suite(tmp_path_factory) -> dict:
    """What `pytest -m "not integration"` collects, each test with its findings."""
    report = tmp_path_factory.mktemp("markers") / "report.json"
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "tests.test_markers",
           "--continue-on-collection-errors", "-m", "not integration", "tests"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, REPORT_ENV: str(report)})
    assert report.is_file(), f"the child pytest wrote no report (exit {done.returncode}):\n{done.stdout[-3000:]}" \
                             f"\n{done.stderr[-3000:]}"
    return json.loads(report.read_text())


MODULES = sorted(str(p.relative_to(ROOT)) for p in TESTS.rglob("test_*.py"))


def test_the_child_collects_the_fast_suite_and_only_it(fast_suite):
    """Prevents the guard passing on an empty or wrong collection (a broken -m expression, a plugin that
    never ran): known fast tests are in it, known integration tests are not."""
    ids = {i["nodeid"] for i in fast_suite["items"]}
    assert len(ids) > 300, len(ids)
    assert not any(i["integration"] for i in fast_suite["items"])
    assert not any(n.startswith("tests/test_pipeline.py::") for n in ids), "test_pipeline is all integration"
    assert "tests/test_markers.py::test_the_child_collects_the_fast_suite_and_only_it" in ids


@pytest.mark.parametrize("module", MODULES)
def test_fast_tests_start_no_server_export_no_model_build_no_image(fast_suite, module):
    """Per test module: no test that `make test-fast` runs uses a heavy fixture or reaches a heavy entry
    point (the rule is in this module's docstring); the fix is `@pytest.mark.integration` on the test."""
    errors = [e for e in fast_suite["collect_errors"] if e.startswith(module)]
    assert not errors, f"{module} does not collect, so its tests cannot be checked: {errors}"
    bad = {i["nodeid"]: i["findings"] for i in fast_suite["items"]
           if i["nodeid"].startswith(module + "::") and i["findings"]}
    assert not bad, "not marked integration but heavy:\n" + "\n".join(
        f"  {nodeid}: {'; '.join(findings)}" for nodeid, findings in sorted(bad.items()))


# --- the detector can fail (on functions written to trip it) ---------------------------------------------

def _starts_a_server(options):
    from tritonkit.serve import EmbeddedServer
    with EmbeddedServer(options) as server:
        return server.pid


def _calls_a_helper_that_starts_one(options):
    return _starts_a_server(options)


def _traces_with_torch(module, example):
    import torch
    return torch.jit.trace(module, example)


def _pure(a, b):
    return sorted([a, b])


def test_the_detector_sees_entry_points_directly_nested_and_through_helpers():
    """Prevents a guard that can never fail: each heavy shape is found, a pure function is not."""
    assert any(h.startswith("EmbeddedServer: ") for h in heavy_entry_points(_starts_a_server))
    assert any("_starts_a_server" in h for h in heavy_entry_points(_calls_a_helper_that_starts_one))
    assert any(h.startswith("torch.jit.trace") for h in heavy_entry_points(_traces_with_torch))

    def nested():
        return lambda: _calls_a_helper_that_starts_one(None)
    assert heavy_entry_points(nested)
    assert heavy_entry_points(_pure) == set()


def test_exceptions_name_tests_that_exist(fast_suite):
    """Prevents STARTS_NOTHING keeping an exception for a test that was renamed or removed (it would then
    excuse whatever later takes its name)."""
    ids = {i["nodeid"].split("[")[0] for i in fast_suite["items"]}
    assert set(STARTS_NOTHING) <= ids, f"not in the fast suite (renamed, removed or now integration): " \
                                       f"{sorted(set(STARTS_NOTHING) - ids)}"
