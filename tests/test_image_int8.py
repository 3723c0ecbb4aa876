"""INT8 for an image classifier, calibrated and gated on real images (tritonkit/image_data.py).

examples/digits_vit/int8.yaml: the digits ViT with tolerance.int8, calibration on 128 training images
(examples/digits/calibration) and the 450 held-out images as its workload. The gate decodes every image with the
served pre-processing code and compares the INT8 graph's logits with the FP32 graph's (top-1 agreement, logit
error). CPU plans quantize with ONNX Runtime (served here for real); T4 plans get a ModelOpt Q/DQ graph.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import cli, free_ports
from tests.test_render import tree_hash
from tritonkit.errors import UserError
from tritonkit.hardware import declared
from tritonkit.policy import NO_GATE_IMAGES, plan
from tritonkit.servers import SERVERS
from tritonkit.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "digits_vit"
SPEC = EXAMPLE / "int8.yaml"
CALIBRATION = ROOT / "examples" / "digits" / "calibration"
HELD_OUT = ROOT / "examples" / "digits" / "images"
AVX2 = ("avx2",)      # the INT8 plan any x86-64 CI host can run (7-bit weights)


def _spec_copy(tmp_path: Path, drop: tuple[str, ...] = (), calibration: Path = CALIBRATION) -> Path:
    """int8.yaml with absolute paths, the lines starting with `drop` removed, calibration pointing elsewhere."""
    text = SPEC.read_text().replace("path: model}", f"path: {EXAMPLE / 'model'}}}")
    text = text.replace("../digits/calibration", str(calibration)).replace("../digits/images", str(HELD_OUT))
    lines = [line for line in text.splitlines() if not line.strip().startswith(drop)] if drop else text.splitlines()
    path = tmp_path / "int8.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _precision(spec_path: Path, features=AVX2):
    p = plan(load_spec(spec_path), declared("none", cpu_features=features), SERVERS["embedded"])
    return next(d for d in p.decisions if d.subject == "digits_vit_classifier" and d.key == "precision")


def test_int8_is_planned_only_where_the_spec_names_images_to_gate_on(tmp_path):
    assert _precision(SPEC).value == "int8"
    assert _precision(_spec_copy(tmp_path, drop=("calibration:",))).value == "int8", "the workload's images suffice"
    none = _precision(_spec_copy(tmp_path, drop=("calibration:", "workload:")))
    assert none.value == "fp32" and NO_GATE_IMAGES in none.reason


def test_image_calibration_is_recorded_by_the_digest_of_its_files():
    from tritonkit.image_data import files_digest
    from tritonkit.qdq import calibration_record
    model = load_spec(SPEC).models[0]
    record = calibration_record(model)
    files = sorted(CALIBRATION.glob("*.png"))
    assert record == {"file": str(CALIBRATION), "kind": "images", "samples": 128, "sha256": files_digest(files)}
    assert len(files) == 128
    changed = files_digest(files[:-1] + [HELD_OUT / "000.png"])
    assert changed != record["sha256"], "another image set must give another recipe"


def test_a_file_that_is_not_an_image_is_refused_by_name(tmp_path):
    folder = tmp_path / "calibration"
    shutil.copytree(CALIBRATION, folder)
    (folder / "notes.txt").write_text("not a picture\n")
    from tritonkit.qdq import calibration_record
    with pytest.raises(UserError, match="not an image this model takes") as e:
        calibration_record(load_spec(_spec_copy(tmp_path, calibration=folder)).models[0])
    assert "notes.txt" in e.value.where and e.value.expected == "a JPEG or PNG file"


def test_a_bad_image_stops_the_cpu_int8_build_and_leaves_the_repository(tmp_path):
    folder = tmp_path / "calibration"
    shutil.copytree(CALIBRATION, folder)
    (folder / "127.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "repo"
    r = cli("render", "--spec", str(_spec_copy(tmp_path, calibration=folder)), "--gpu", "none",
            "--cpu-features", "avx2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    before = tree_hash(out)
    r = cli("build", "--repo", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert re.search(r"not an image this model takes.*127\.png", " ".join(r.stderr.split())), r.stderr
    assert tree_hash(out) == before


@pytest.mark.integration
def test_cpu_int8_is_gated_on_the_images_and_served_as_gated(tmp_path):
    """The INT8 graph passes its gate on 578 real images (128 calibration + 450 held out) and is what the server
    runs: served probabilities equal the same graph in-process on the same batches (dynamic quantization scales
    activations per batch, so the batches must match), and keep the FP32 model's answer on the held-out images."""
    import tritonclient.grpc as grpcclient

    from tests.test_hf_image_classification import IMAGES, _served, _transformers_probabilities
    from tritonkit.build import build
    from tritonkit.compare import run_onnx
    from tritonkit.image_data import image_ops, image_values
    from tritonkit.render import write_repository
    from tritonkit.serve import EmbeddedServer, ServerOptions
    spec = load_spec(SPEC)
    sm = spec.models[0]
    p = plan(spec, declared("none", cpu_features=AVX2), SERVERS["embedded"])
    repo = tmp_path / "repo"
    write_repository(p, repo)
    build(repo, spec=spec, progress=False)
    record = json.loads((repo / "digits_vit_classifier" / "1" / "build.json").read_text())
    data, gate = record["gate_data"], record["quantization"]["gate"]
    assert data["images"] == 578 and data["folders"] == [str(CALIBRATION), str(HELD_OUT)]
    assert gate["samples"] == 578 and gate["top1_agreement"] >= 0.995 and gate["max_abs_error"] <= 0.5 + 0.1 * 20
    assert record["quantization"]["quantized_matmuls"] > 0 and record["validation"]["top1_agreement"] >= 0.995
    graph = repo / "digits_vit_classifier" / "1" / "model.onnx"
    batches = [IMAGES[k:k + 50] for k in range(0, len(IMAGES), 50)]   # _served's requests: 50 images each
    expected = image_ops().softmax(np.concatenate([run_onnx(graph, image_values(sm, b, "test"))["logits"]
                                                    for b in batches]))
    http, grpc, metrics = free_ports(3)
    with EmbeddedServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)) as s:
        probs, labels = _served(s.grpc_url, grpcclient)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    fp32 = _transformers_probabilities()
    assert float(np.mean(probs.argmax(1) == fp32.argmax(1))) >= 0.995
    assert labels == [sm.labels[i] for i in probs.argmax(1)]


@pytest.mark.integration
def test_a_t4_int8_plan_gets_a_qdq_graph_calibrated_and_gated_on_the_images(tmp_path):
    """Without TensorRT here the build stops before the plan, but the Q/DQ ONNX it would be built from is made from
    the calibration images, gated on all 578 and recorded."""
    from tests.test_qdq import HAS_TENSORRT
    if HAS_TENSORRT:
        pytest.skip("a TensorRT host would go on to build the plan")
    out = tmp_path / "repo"
    r = cli("render", "--spec", str(_spec_copy(tmp_path)), "--gpu", "T4", "--server", "ngc", "--out", str(out))
    assert r.returncode == 0, r.stderr
    r = cli("build", "--repo", str(out))
    assert r.returncode == 2 and "TensorRT is not installed" in r.stderr, r.stderr
    assert re.search(r"INT8 ONNX .*top-1 agreement (0\.99[5-9]\d|1\.0000) over 578", " ".join(r.stderr.split()))
    record = json.loads((out / "digits_vit_classifier" / "1" / "build.json").read_text())
    made = record["prepared"]["model.sm75.plan"]["onnx"]["precision"]
    assert made["calibration"]["kind"] == "images" and made["calibration"]["samples"] == 128
    assert made["gate_data"]["images"] == 578 and made["gate"]["top1_agreement"] >= 0.995
