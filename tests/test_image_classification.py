"""The image-classification pipeline: encoded image (BYTES) -> pre-processing (python, Pillow) -> the classifier
-> softmax + label (python), as one ensemble on the real embedded server.

The example is examples/digits/images.yaml: the digits MLP (trained by examples/digits/train.py on
scikit-learn's digits) behind PNG decoding; the 450 held-out images are PNG files in examples/digits/images.
The in-process reference runs the same pre-processing code (templates/python/image_ops.py, which render
copies beside the server's model.py) and the PyTorch module itself.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import bench_example, cli, free_ports
from tritonkit import defaults
from tritonkit.errors import UserError
from tritonkit.image_data import image_ops

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "digits"
SPEC = EXAMPLE / "images.yaml"
LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]




# --- the spec ------------------------------------------------------------------------------------------

GOOD = {"name": "img", "source": {"format": "pytorch", "path": "net.py:make_model"},
        "pipeline": "image-classification",
        "image": {"size": [8, 8], "mode": "L", "mean": [0.0], "std": [0.0625]},
        "labels": LABELS, "inputs": [{"name": "pixels", "dtype": "FP32", "dims": ["batch", 64]}],
        "outputs": [{"name": "logits", "dtype": "FP32", "dims": ["batch", 10]}], "max_batch_size": 8,
        "latency_budget": {"p99_ms": 20}, "tolerance": {"fp32": {"atol": 1e-4}}}


def _load(tmp_path, **change):
    from tritonkit.spec import parse_spec
    model = {**GOOD, **change}
    (tmp_path / "net.py").write_text("def make_model(): pass\n")
    return parse_spec({"models": [{k: v for k, v in model.items() if v is not None}]}, tmp_path / "models.yaml")


def test_the_example_spec_plans_four_models_with_the_ensemble_interface():
    from tritonkit.hardware import declared
    from tritonkit.policy import plan
    from tritonkit.servers import SERVERS
    from tritonkit.spec import load_spec
    p = plan(load_spec(SPEC), declared("none"), SERVERS["embedded"])
    assert [m.name for m in p.models] == ["digits_images", "digits_images_preprocess", "digits_images_classifier",
                                          "digits_images_postprocess"]
    ens = p.models[0]
    assert [(t.name, t.data_type, t.dims) for t in ens.inputs] == [("image", "TYPE_STRING", (1,))]
    assert [(t.name, t.data_type, t.dims) for t in ens.outputs] == [("probabilities", "TYPE_FP32", (10,)),
                                                                    ("label", "TYPE_STRING", (1,))]
    assert all(m.max_batch_size == 64 for m in p.models)
    post = dict(p.models[3].parameters)
    assert json.loads(post["labels"]) == LABELS


@pytest.mark.parametrize("change, message", [
    ({"labels": LABELS[:9]}, r"one FP32 logits tensor, one value per label"),
    ({"inputs": [{"name": "pixels", "dtype": "FP32", "dims": ["batch", 1, 8, 9]}]},
     r"does not hold one pre-processed image.*1 x 8 x 8 = 64"),
    ({"image": None}, r"needs the pre-processing of its images"),
    ({"image": {"size": [8, 8], "mode": "RGB", "mean": [0.5], "std": [0.5]}}, r"one number per channel of mode RGB"),
    ({"image": {"size": [8, 8], "crop": [9, 9], "mode": "L", "mean": [0.5], "std": [0.5]}},
     r"crop is larger than the resized image"),
    ({"image": {"size": 10, "mode": "L", "mean": [0.5], "std": [0.5]}}, r"shortest-edge resize needs a crop"),
    ({"image": {"size": 8, "crop": [9, 8], "mode": "L", "mean": [0.5], "std": [0.5]}},
     r"crop is larger than the resized image.*\[8, 8\]"),
    ({"image": {"size": [8, 8], "mode": "L", "mean": [0.5], "std": [0.5], "resample": "cubic"}},
     r"resample.*not a known value.*bicubic"),
    ({"max_batch_size": 0, "inputs": [{"name": "pixels", "dtype": "FP32", "dims": [64]}],
      "outputs": [{"name": "logits", "dtype": "FP32", "dims": [10]}]}, r"batches requests"),
    ({"labels": None}, r"needs the class names"),
    ({"pipeline": "none"}, r"only the image-classification pipeline takes 'image'"),
])
def test_spec_errors_of_an_image_classifier_name_the_field_and_both_sides(tmp_path, change, message):
    import re
    with pytest.raises(UserError) as err:
        _load(tmp_path, **change)
    assert re.search(message, " ".join(str(err.value).split()), re.S), str(err.value)


def test_the_pre_processing_is_the_training_transform_for_the_digits():
    """PNG of an 8x8 image with values 0..16 (stored as round(v x 255 / 16)) comes back as v within rounding."""
    from PIL import Image
    ops = image_ops()
    values = np.load(EXAMPLE / "digits_test.npz")["pixels"][0].reshape(8, 8)
    buf = io.BytesIO()
    Image.fromarray(np.round(values * 255 / 16).astype(np.uint8), mode="L").save(buf, format="PNG")
    got = ops.to_values(ops.decode(buf.getvalue(), 1 << 20, 1 << 20), [8, 8], [8, 8], "L", [0.0], [0.0625])
    assert got.shape == (1, 8, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], values, atol=16 / 255 / 2 + 1e-6)


def test_images_that_are_not_images_or_too_large_are_refused_with_the_reason():
    from PIL import Image
    ops = image_ops()
    with pytest.raises(ops.ImageError, match="not a decodable image"):
        ops.decode(b"GIF? no, plain text", 1 << 20, 1 << 20)
    with pytest.raises(ops.ImageError, match="larger than the 10 this model accepts"):
        ops.decode(b"x" * 11, 10, 1 << 20)
    buf = io.BytesIO()
    Image.new("L", (300, 200)).save(buf, format="PNG")
    with pytest.raises(ops.ImageError, match=r"300x200 = 60,000 pixels is larger than the 50,000"):
        ops.decode(buf.getvalue(), 1 << 20, 50_000)


# --- served ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_images_server(tmp_path_factory):
    from tritonkit.serve import EmbeddedServer, ServerOptions
    repo = tmp_path_factory.mktemp("digits_images") / "model_repository"
    r = cli("render", "--spec", str(SPEC), "--gpu", "none", "--out", str(repo))
    assert r.returncode == 0, r.stderr
    r = cli("build", "--repo", str(repo))
    assert r.returncode == 0, r.stderr
    http, grpc, metrics = free_ports(3)
    log = tmp_path_factory.mktemp("log") / "tritonserver.log"
    with EmbeddedServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                      log_file=log)) as server:
        server.repo = repo
        yield server


def _in_process(files):
    """The same decode/transform code and the PyTorch module, in this process: probabilities per file."""
    import torch
    ops = image_ops()
    sys.path.insert(0, str(EXAMPLE))
    try:
        from net import make_model
    finally:
        sys.path.remove(str(EXAMPLE))
    x = np.stack([ops.to_values(ops.decode(f.read_bytes(), 1 << 20, 1 << 20), [8, 8], [8, 8], "L", [0.0], [0.0625])
                  .reshape(64) for f in files])
    with torch.no_grad():
        return ops.softmax(make_model()(torch.from_numpy(x)).numpy())


def _request(module, blobs):
    tensor = module.InferInput("image", [len(blobs), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(blobs, dtype=object).reshape(-1, 1))
    return [tensor]


@pytest.mark.integration
def test_served_images_match_the_in_process_pipeline_over_grpc_and_http(digits_images_server):
    """All 450 held-out PNGs, in requests of up to 64 images: probabilities equal the in-process pipeline's,
    labels are the names of their argmax, and the served accuracy is the in-process accuracy."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    files = sorted((EXAMPLE / "images").glob("*.png"))
    labels = np.load(EXAMPLE / "digits_test.npz")["labels"]
    assert len(files) == len(labels) == 450
    expected = _in_process(files)
    in_process = float((expected.argmax(1) == labels).mean())
    s = digits_images_server
    for module, url in ((grpcclient, s.grpc_url), (httpclient, s.http_url)):
        client = module.InferenceServerClient(url)
        probs, names = [], []
        for start in range(0, len(files), 64):
            blobs = [f.read_bytes() for f in files[start:start + 64]]
            result = client.infer("digits_images", _request(module, blobs))
            probs.append(result.as_numpy("probabilities"))
            names.extend(v.decode() for v in result.as_numpy("label").reshape(-1))
        probs = np.concatenate(probs)
        np.testing.assert_allclose(probs, expected, atol=1e-5, err_msg=module.__name__)
        assert names == [LABELS[i] for i in probs.argmax(1)]
        assert float((probs.argmax(1) == labels).mean()) == in_process
    assert in_process > 0.9


@pytest.mark.integration
def test_a_request_that_is_not_an_image_fails_alone_and_the_server_keeps_serving(digits_images_server):
    """Text instead of an image, and an image over the pixel limit (a decompression bomb's shape): each gets
    its own error naming the input and the reason; the next good request is answered."""
    from PIL import Image
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException
    client = grpcclient.InferenceServerClient(digits_images_server.grpc_url)
    with pytest.raises(InferenceServerException, match=r"input 'image': not a decodable image"):
        client.infer("digits_images", _request(grpcclient, [b"this is not an image"]))
    side = int((defaults.IMAGE_MAX_PIXELS + 1) ** 0.5) + 1
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG")      # compresses to a few kB: the header must stop it
    assert len(buf.getvalue()) < defaults.IMAGE_MAX_BYTES
    with pytest.raises(InferenceServerException, match=rf"{side}x{side} = .* pixels is larger than the "
                                                       rf"{defaults.IMAGE_MAX_PIXELS:,}"):
        client.infer("digits_images", _request(grpcclient, [buf.getvalue()]))
    good = (EXAMPLE / "images" / "000.png").read_bytes()
    result = client.infer("digits_images", _request(grpcclient, [good]))
    assert result.as_numpy("label").reshape(-1)[0].decode() in LABELS


@pytest.mark.integration
def test_bench_sends_the_spec_images(digits_images_server, tmp_path):
    """`tritonkit bench` measures the ensemble with the spec's image files; every request is answered."""
    s = digits_images_server
    report = bench_example(s.repo, s.grpc_url.rsplit(":", 1)[1], "digits_images", "digits_images_classifier", tmp_path)
    assert report["payload"]["source"] == f"files: {EXAMPLE / 'images'}"
