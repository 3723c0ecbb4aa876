"""A Hugging Face image classifier served from its folder: the pre-processing comes from its
preprocessor_config.json (resize, crop, rescale, normalise, resampling filter), the labels from config.json.

The example is examples/digits_vit: a tiny ViT trained by its train.py on scikit-learn's digits (162 kB,
committed). The in-process reference is transformers itself: the folder's ViTImageProcessor and
AutoModelForImageClassification on the same 450 PNG files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import cli, free_ports
from tritonkit.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "digits_vit"
IMAGES = sorted((ROOT / "examples" / "digits" / "images").glob("*.png"))


def test_the_pre_processing_and_labels_come_from_the_folder():
    from tritonkit.hardware import declared
    from tritonkit.policy import plan
    from tritonkit.servers import SERVERS
    from tritonkit.spec import load_spec
    spec = load_spec(EXAMPLE / "models.yaml")
    m = spec.models[0]
    assert (m.image.size, m.image.crop, m.image.mode, m.image.mean, m.image.std, m.image.resample) == \
        ((8, 8), (8, 8), "L", (0.5,), (0.5,), "bilinear")
    assert m.labels[:2] == ("zero", "one") and len(m.labels) == 10
    why = {(d.subject, d.key): d.reason for d in plan(spec, declared("none"), SERVERS["embedded"]).decisions}
    assert "preprocessor_config.json" in why[("digits_vit_preprocess", "backend")]


def _copy(tmp_path: Path, change: dict | None = None, drop: bool = False) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(EXAMPLE / "model", folder)
    proc = folder / "preprocessor_config.json"
    if drop:
        proc.unlink()
    else:
        proc.write_text(json.dumps(json.loads(proc.read_text()) | (change or {})))
    spec = tmp_path / "models.yaml"
    spec.write_text((EXAMPLE / "models.yaml").read_text().replace("../digits/images", str(IMAGES[0].parent)))
    return spec


@pytest.mark.parametrize("change, message", [
    ({"size": {"shortest_edge": 8}}, r"do_center_crop.*got False.*crop_size"),
    ({"rescale_factor": 1.0}, r"rescale_factor.*got 1\.0.*1/255"),
    ({"resample": 4}, r"resample.*got 4"),
    ({"do_pad": True}, r"do_pad.*got True.*resize, crop, rescale and normalise only"),
    ({"do_center_crop": True, "crop_size": {"height": 6, "width": 6}}, r"does not hold one pre-processed image.*36 values"),
    (None, r"no preprocessor_config\.json"),
])
def test_an_image_processor_the_kit_cannot_reproduce_is_refused_naming_the_key(tmp_path, change, message):
    import re

    from tritonkit.spec import load_spec
    spec = _copy(tmp_path, change, drop=change is None)
    with pytest.raises(UserError) as err:
        load_spec(spec)
    assert re.search(message, " ".join(str(err.value).split()), re.S), str(err.value)


CLIP_STYLE = {"size": {"shortest_edge": 8}, "do_center_crop": True, "crop_size": {"height": 8, "width": 8}}
CONVNEXT_STYLE = {"size": {"shortest_edge": 8}, "crop_pct": 0.875}   # edge / crop_pct = 9, then the centre 8 x 8


@pytest.mark.parametrize("style, processor", [(CLIP_STYLE, "CLIPImageProcessor"),
                                              (CONVNEXT_STYLE, "ConvNextImageProcessor")])
def test_shortest_edge_processors_are_read_and_reproduced_exactly(tmp_path, style, processor):
    """A shortest-edge resize (CLIP-style with crop_size, ConvNeXt/ResNet-style with crop_pct): the spec gets an
    int size and a crop, and image_ops (long edge int(size x long / short), Pillow's filter, centre crop) gives the
    processor's own values on non-square images."""
    import transformers
    from PIL import Image

    from tritonkit.image_data import image_ops
    from tritonkit.spec import load_spec
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]
    folder_settings = style | {"resample": 3, "image_mean": mean, "image_std": std}
    spec_path = _copy(tmp_path, folder_settings)
    config = json.loads((tmp_path / "model" / "config.json").read_text()) | {"num_channels": 3}
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    spec_path.write_text(spec_path.read_text().replace("[batch, 1, 8, 8]", "[batch, 3, 8, 8]"))
    image = load_spec(spec_path).models[0].image
    assert (isinstance(image.size, int), image.crop, image.mode, image.resample) == (True, (8, 8), "RGB", "bicubic")
    ops = image_ops()
    reference = getattr(transformers, processor)(**folder_settings)
    rng = np.random.default_rng(0)
    for width, height in ((12, 9), (9, 12), (31, 10), (11, 13), (8, 8), (500, 420)):
        picture = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
        want = reference(picture, return_tensors="np")["pixel_values"][0]
        got = ops.to_values(picture, image.size, image.crop, image.mode, image.mean, image.std, image.resample)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{width}x{height}")


def _transformers_probabilities():
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification
    processor = AutoImageProcessor.from_pretrained(str(EXAMPLE / "model"))
    model = AutoModelForImageClassification.from_pretrained(str(EXAMPLE / "model")).eval()
    with torch.no_grad():
        return torch.softmax(model(**processor([Image.open(f) for f in IMAGES], return_tensors="pt")).logits,
                             -1).numpy()


def _served(url: str, module, model: str = "digits_vit") -> tuple[np.ndarray, list[str]]:
    client = module.InferenceServerClient(url)
    probs, labels = [], []
    for k in range(0, len(IMAGES), 50):
        blobs = [f.read_bytes() for f in IMAGES[k:k + 50]]
        tensor = module.InferInput("image", [len(blobs), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(blobs, dtype=object).reshape(-1, 1))
        result = client.infer(model, [tensor])
        probs.append(result.as_numpy("probabilities"))
        labels += [v.decode() for v in result.as_numpy("label").reshape(-1)]
    return np.concatenate(probs), labels


@pytest.mark.integration
@pytest.mark.parametrize("target", ["cpu", "gpu-plan"])
def test_served_probabilities_equal_transformers_on_the_held_out_pngs(tmp_path, target):
    """The CPU plan (ONNX) and the GPU plan's torch.export program (on a CPU instance here), over gRPC and
    HTTP: probabilities equal transformers' processor + model for all 450 PNGs, labels are the argmax's
    names, so the served accuracy is the in-process one (metrics.json)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from tests.test_torch_program import cpu_variant
    from tritonkit.build import build
    from tritonkit.hardware import declared
    from tritonkit.policy import plan
    from tritonkit.render import write_repository
    from tritonkit.serve import EmbeddedServer, ServerOptions
    from tritonkit.servers import SERVERS
    from tritonkit.spec import load_spec
    spec = load_spec(EXAMPLE / "models.yaml")
    p = plan(spec, declared("none" if target == "cpu" else "H100"), SERVERS["embedded"])
    if target != "cpu":
        p = cpu_variant(p, "digits_vit_classifier")
    repo = tmp_path / "repo"
    write_repository(p, repo)
    build(repo, spec=spec, progress=False)
    record = json.loads((repo / "digits_vit_classifier" / "1" / "build.json").read_text())
    assert record["validation"]["reference"].startswith("transformers AutoModelForImageClassification")
    expected = _transformers_probabilities()
    names = list(spec.models[0].labels)
    http, grpc, metrics = free_ports(3)
    with EmbeddedServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)) as s:
        for module, url in ((grpcclient, s.grpc_url), (httpclient, s.http_url)):
            probs, labels = _served(url, module)
            np.testing.assert_allclose(probs, expected, atol=1e-4, err_msg=module.__name__)
            assert labels == [names[i] for i in expected.argmax(1)]
    truth = np.load(ROOT / "examples" / "digits" / "digits_test.npz")["labels"]
    accuracy = float(np.mean(expected.argmax(1) == truth))
    assert accuracy == json.loads((EXAMPLE / "metrics.json").read_text())["held_out_accuracy_in_process"]


@pytest.mark.integration
def test_bench_sends_the_image_files(tmp_path):
    from tests.conftest import bench_example
    from tritonkit.serve import EmbeddedServer, ServerOptions
    repo = tmp_path / "repo"
    assert cli("render", "--spec", str(EXAMPLE / "models.yaml"), "--gpu", "none", "--out", str(repo)).returncode == 0
    r = cli("build", "--repo", str(repo))
    assert r.returncode == 0, r.stderr
    http, grpc, metrics = free_ports(3)
    with EmbeddedServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)):
        report = bench_example(repo, grpc, "digits_vit", "digits_vit_classifier", tmp_path)
    assert report["payload"]["source"] == f"files: {IMAGES[0].parent}"


@pytest.mark.integration
def test_small_gpu_mode_also_keeps_the_patch_convolution_from_inductor(tmp_path):
    """A ViT starts with a convolution; inductor's conv templates make the same SM check as its GEMMs (an H200
    limited to 38 SMs printed the warning for this model). After opaque_gemms the compiled graph holds neither,
    and the numbers are the program's."""
    import re

    import torch

    from tests.conftest import compile_recording_ops, opaque_gemms_module
    from tritonkit.spec import load_spec
    from tritonkit.torch_program import export_program, load_program
    sm = load_spec(EXAMPLE / "models.yaml").models[0]
    export_program(sm, EXAMPLE / "model", tmp_path / "model.pt2", "fp32", atol=1e-4, rtol=1e-4)
    program = load_program(tmp_path / "model.pt2", "cpu")
    gemms = opaque_gemms_module()
    x = torch.randn(5, 1, 8, 8)
    with torch.inference_mode():
        want = program(x)[0]
    gemms.opaque_gemms(program)
    compiled, ops = compile_recording_ops(program)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x)[0], want, rtol=1e-5, atol=1e-5)
    assert {"tritonkit_gemm.conv2d.default", "tritonkit_gemm.linear.default"} <= ops, sorted(ops)
    left = sorted(op for op in ops if re.search(r"aten\.(mm|addmm|bmm|matmul|linear|conv\w*|convolution)\b", op))
    assert left == [], left
