"""Render step: every config passes Triton's schema, writes are atomic, --check sees drift."""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tritonkit import defaults, render
from tritonkit.catalogue import CATALOGUE
from tritonkit.errors import UserError
from tritonkit.hardware import declared
from tritonkit.policy import plan, queue_timeout_us
from tritonkit.servers import SERVERS
from tritonkit.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
SPEC = load_spec(defaults.DEFAULT_SPEC)
TARGETS = [(gpu, server) for server in SERVERS for gpu in ["none", *(g.name for g in CATALOGUE.values())]
           if not (server == "ngc" and gpu != "none" and CATALOGUE[gpu.lower()].compute_capability
                   < SERVERS["ngc"].min_compute_capability)]


def tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_plan(gpu: str = "none", server: str = "embedded"):
    return plan(SPEC, declared(gpu), SERVERS[server])


@pytest.mark.parametrize("gpu,server", TARGETS)
def test_every_rendered_config_parses_with_tritons_schema(gpu, server):
    """A template or policy change that produces a config Triton would reject fails here, not at server start."""
    p = make_plan(gpu, server)
    files = render.render_files(p)
    configs = {rel: data for rel, data in files.items() if rel.endswith("config.pbtxt")}
    assert len(configs) == len(p.models) == 3
    for rel, data in configs.items():
        config = model_config_pb2.ModelConfig()
        text_format.Parse(data.decode(), config)
        assert config.name == rel.split("/")[0]
        assert config.max_batch_size == SPEC.models[0].max_batch_size
        assert "{{" not in data.decode() and "{%" not in data.decode()


def test_encoder_config_carries_the_plan():
    """The config must say what the plan decided (backend, instances, bounded queue), not template defaults."""
    p = make_plan("T4", "ngc")
    config = model_config_pb2.ModelConfig()
    text_format.Parse(render.render_files(p)["minilm_encoder/config.pbtxt"].decode(), config)
    enc = p.model("minilm_encoder")
    assert config.backend == "tensorrt" and config.default_model_filename == "model.sm75.plan"
    assert dict(config.cc_model_filenames) == {"7.5": "model.sm75.plan"}
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert config.instance_group[0].count == enc.instances[0].count
    q = config.dynamic_batching.default_queue_policy
    assert q.max_queue_size == enc.batching.max_queue_size > 0
    assert q.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    assert q.default_timeout_microseconds == queue_timeout_us(SPEC.models[0].p99_budget_ms)
    assert [i.name for i in config.input] == ["input_ids", "attention_mask"]
    assert list(config.input[0].dims) == [-1]
    assert config.model_warmup[0].inputs["input_ids"].zero_data


def test_ensemble_wires_tokenizer_to_encoder():
    """A broken ensemble map (wrong tensor names) loads in Triton only to fail on the first request."""
    config = model_config_pb2.ModelConfig()
    text_format.Parse(render.render_files(make_plan())["minilm/config.pbtxt"].decode(), config)
    steps = config.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["minilm_tokenizer", "minilm_encoder"]
    assert dict(steps[0].input_map) == {"text": "text"}
    assert set(steps[0].output_map.values()) == set(steps[1].input_map.values()) == {"input_ids", "attention_mask"}
    assert config.input[0].data_type == model_config_pb2.TYPE_STRING


def test_python_models_are_rendered_and_compile():
    """Generated model.py must at least be valid Python; a template typo would only show at model load."""
    files = render.render_files(make_plan())
    for rel in ("minilm_encoder/1/model.py", "minilm_tokenizer/1/model.py"):
        compile(files[rel].decode(), rel, "exec")


def test_render_is_deterministic():
    """`render --check` compares bytes: any nondeterminism (dict order, timestamps) would report false drift."""
    assert render.render_files(make_plan("H100", "ngc")) == render.render_files(make_plan("H100", "ngc"))


def test_validator_rejects_unknown_fields():
    """The schema check must actually reject: a typo'd field passing silently would make the check decorative."""
    with pytest.raises(UserError, match="model_config schema"):
        render.validate_config('name: "x"\nmax_batch_sizee: 4\n', "x/config.pbtxt")
    with pytest.raises(UserError, match="model_config schema"):
        render.validate_config('name: "x"\ninstance_group [{ kind: KIND_TPU }]\n', "x/config.pbtxt")


def test_write_then_check_clean_then_drift(tmp_path):
    """--check must be clean right after a render and must notice a hand edit."""
    out = tmp_path / "repo"
    p = make_plan()
    render.write_repository(p, out)
    assert render.check_repository(p, out).clean
    cfg = out / "minilm_encoder" / "config.pbtxt"
    cfg.write_text(re.sub(r"count: \d+", "count: 77", cfg.read_text(), count=1))
    drift = render.check_repository(p, out)
    assert drift.changed == ("minilm_encoder/config.pbtxt",) and "count: 77" in drift.diff
    (out / "stray.txt").write_text("x")
    assert render.check_repository(p, out).extra == ("stray.txt",)


def test_failed_validation_leaves_old_repository_byte_identical(tmp_path):
    """A render that fails validation must not touch the repository that is serving."""
    out = tmp_path / "repo"
    render.write_repository(make_plan(), out)
    before = tree_hash(out)
    p = make_plan("T4", "ngc")
    files = render.render_files(p)
    files["minilm_encoder/config.pbtxt"] += b"not_a_field: 1\n"   # fault injection: a broken template output
    with pytest.raises(UserError):
        render.write_repository(p, out, files)
    assert tree_hash(out) == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["repo"]  # no staging folder left behind


def test_failed_write_leaves_old_repository_byte_identical(tmp_path, monkeypatch):
    """A disk error half-way through writing must not leave a half-new repository."""
    out = tmp_path / "repo"
    render.write_repository(make_plan(), out)
    before = tree_hash(out)
    real = Path.write_bytes
    calls = {"n": 0}

    def flaky(self, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(self, data)
    monkeypatch.setattr(Path, "write_bytes", flaky)  # fault injection: the disk fills up mid-render
    with pytest.raises(OSError):
        render.write_repository(make_plan("T4", "ngc"), out)
    monkeypatch.undo()
    assert tree_hash(out) == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["repo"]


def test_built_artifacts_survive_a_re_render(tmp_path):
    """Re-rendering (e.g. a changed queue delay) must not throw away a model that took minutes to build."""
    out = tmp_path / "repo"
    p = make_plan()
    render.write_repository(p, out)
    artifact = out / "minilm_encoder" / "1" / "model.onnx"
    artifact.write_bytes(b"pretend-onnx")
    (artifact.parent / render.MANIFEST).write_text("{}")
    render.write_repository(p, out)
    assert artifact.read_bytes() == b"pretend-onnx"
    assert (artifact.parent / render.MANIFEST).read_text() == "{}"
    assert render.check_repository(p, out).clean


def test_refuses_to_replace_a_folder_it_did_not_render(tmp_path):
    """Pointing --out at the wrong folder must not delete someone's files."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="not rendered by tritonkit"):
        render.write_repository(make_plan(), out)
    assert (out / "notes.txt").read_text() == "precious"


def test_strict_undefined_catches_missing_template_values(tmp_path, monkeypatch):
    """A template that references a missing value must fail, never render an empty string."""
    tpl = tmp_path / "templates"
    (tpl / "config").mkdir(parents=True)
    (tpl / "python").mkdir()
    for src in (ROOT / "templates").rglob("*.j2"):
        (tpl / src.relative_to(ROOT / "templates")).write_text(src.read_text())
    (tpl / "config" / "python.pbtxt.j2").write_text('name: "{{ m.name }}"\nbackend: "{{ m.no_such_field }}"\n')
    monkeypatch.setattr(defaults, "TEMPLATES_DIR", tpl)
    import jinja2
    with pytest.raises(jinja2.UndefinedError):
        render.render_files(make_plan())


KILL_SCRIPT = """
import sys
from pathlib import Path
from tritonkit import defaults, render
from tritonkit.hardware import declared
from tritonkit.policy import plan
from tritonkit.servers import SERVERS
from tritonkit.spec import load_spec
spec = load_spec(defaults.DEFAULT_SPEC)
gpus = ["none", "T4"]
i = 0
while True:
    render.write_repository(plan(spec, declared(gpus[i % 2]), SERVERS["embedded" if i % 2 == 0 else "ngc"]),
                            Path(sys.argv[1]))
    i += 1
"""


def test_render_killed_at_random_points_leaves_a_loadable_repository(tmp_path):
    """SIGKILL during a render (OOM killer, Ctrl-\\) must leave the old or the new repository, never a mix."""
    import random
    out = tmp_path / "repo"
    render.write_repository(make_plan(), out)
    valid = {frozenset(render.render_files(make_plan()).items()), frozenset(render.render_files(make_plan("T4", "ngc")).items())}
    rng = random.Random(7)
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out)], cwd=ROOT)
        time.sleep(0.6 + rng.random() * 0.6)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert out.is_dir(), "the repository vanished"
        on_disk = frozenset((rel, (out / rel).read_bytes()) for rel in tree_hash(out))
        assert on_disk in valid, "a killed render left a mix of two repositories"
        for cfg in out.glob("*/config.pbtxt"):
            render.validate_config(cfg.read_bytes(), str(cfg))
        for leftover in tmp_path.glob(".repo.*"):  # staging folders of killed runs are garbage, never the repo
            assert leftover.name.startswith(".repo.render-")


def test_cli_bad_input_exit_2_without_traceback(tmp_path):
    """Users must get one clear line and exit code 2, never a Python traceback, and nothing written."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - name: x\n    source: {format: onnx, path: missing.onnx}\n")
    out = tmp_path / "repo"
    cases = [
        ["--spec", str(bad), "--out", str(out)],
        ["--spec", str(tmp_path / "nope.yaml"), "--out", str(out)],
        ["--gpu", "T5", "--out", str(out)],
        ["--gpu", "sm=40,cc=x,mem=16GiB", "--out", str(out)],
    ]
    for args in cases:
        r = subprocess.run([sys.executable, str(ROOT / "tools" / "render.py"), *args], capture_output=True, text=True)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.startswith("error: "), r.stderr
        assert not out.exists()
