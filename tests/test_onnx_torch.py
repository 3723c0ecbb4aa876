"""tritonkit/onnx_torch.py: an ONNX graph interpreted in torch, so an ONNX source can take the GPU path as a
torch.export program. The point is the shape arithmetic ONNX exporters write (Shape -> Gather -> Concat ->
Reshape, Equal/Where/Expand for a broadcast): it must stay symbolic so the exported program keeps its dynamic
axes, and the numbers must be ONNX Runtime's at every size the spec promises.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import free_ports
from tritonkit.errors import UserError

pytestmark = pytest.mark.integration   # torch.export of real graphs

ROOT = Path(__file__).resolve().parent.parent
VIT = ROOT / "examples" / "digits_vit" / "vit.onnx"
SPEC = ROOT / "examples" / "digits_vit" / "onnx.yaml"


def _export(module, examples: tuple, dims: tuple[dict, ...]):
    import torch
    return torch.export.export(module, examples, dynamic_shapes=(dims,)).module()


def _ort(path: Path, feed: dict) -> np.ndarray:
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_the_vit_graph_exports_with_a_dynamic_batch_and_matches_onnx_runtime():
    """The ViT's graph broadcasts its class token with Shape/ConstantOfShape/Equal/Where/Expand on the batch size:
    interpreted on Python values, the program keeps the batch dynamic (1 and 64 from one export of 2)."""
    import onnx
    import torch
    from torch.export import Dim

    from tritonkit.onnx_torch import load_onnx_module
    ops = Counter(n.op_type for n in onnx.load(str(VIT)).graph.node)
    assert {"Shape", "ConstantOfShape", "Equal", "Where", "Expand", "Conv"} <= set(ops), ops
    module = load_onnx_module(VIT, ("pixel_values",), ("logits",), "test")
    rng = np.random.default_rng(0)
    program = _export(module, (torch.randn(2, 1, 8, 8),), ({0: Dim("batch", min=1, max=64)},))
    for batch in (1, 5, 64):
        x = rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)
        got = program(torch.from_numpy(x))[0].detach().numpy()
        np.testing.assert_allclose(got, _ort(VIT, {"pixel_values": x}), atol=2e-5, err_msg=f"batch {batch}")


def test_a_bert_graph_keeps_batch_and_sequence_dynamic(tmp_path):
    """A BERT encoder exported by the kit's exporter (TorchScript, opset 17): attention-mask arithmetic and
    position slicing on the sequence length. One program must serve 1 x 3, 5 x 40 and 64 x 256 tokens."""
    import torch
    from torch.export import Dim
    from transformers import BertConfig, BertModel

    from tritonkit.export import torch_onnx_export
    from tritonkit.onnx_torch import load_onnx_module
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=256), add_pooling_layer=False).eval()

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    path = tmp_path / "bert.onnx"
    ids = torch.randint(1, 100, (2, 7))
    axes = {0: "batch", 1: "sequence"}
    torch_onnx_export(Hidden().eval(), (ids, torch.ones_like(ids)), path, input_names=["input_ids", "attention_mask"],
                      output_names=["hidden"], dynamic_axes={"input_ids": axes, "attention_mask": axes, "hidden": axes},
                      opset=17)
    module = load_onnx_module(path, ("input_ids", "attention_mask"), ("hidden",), "test")
    batch, seq = Dim("batch", min=1, max=64), Dim("sequence", min=1, max=256)
    program = _export(module, (ids, torch.ones_like(ids)), ({0: batch, 1: seq}, {0: batch, 1: seq}))
    rng = np.random.default_rng(1)
    for b, s in ((1, 3), (5, 40), (64, 256)):
        feed = {"input_ids": rng.integers(1, 100, (b, s)), "attention_mask": np.ones((b, s), np.int64)}
        feed["attention_mask"][0, s // 2:] = 0     # padding: the mask arithmetic must matter
        got = program(*(torch.from_numpy(feed[k]) for k in ("input_ids", "attention_mask")))[0].detach().numpy()
        np.testing.assert_allclose(got, _ort(path, feed), atol=1e-4, err_msg=f"{b} x {s}")


def test_operators_it_cannot_run_are_refused_by_name(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("NonZero", ["x"], ["i"]),     # data-dependent output shape
                               helper.make_node("Hardmax", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    from tritonkit.onnx_torch import load_onnx_module
    with pytest.raises(UserError, match="operators the GPU path cannot run") as e:
        load_onnx_module(path, ("x",), ("y",), "model odd")
    assert e.value.actual == ["Hardmax", "NonZero"] and "CPU path" in e.value.fix


def test_an_onnx_image_classifier_planned_for_a_gpu_is_built_and_served_as_a_program(tmp_path):
    """examples/digits_vit/onnx.yaml planned for an H100 gets the torch-program path; its build proves the program
    against ONNX Runtime, and served (one CPU instance, a test-only change) it gives ONNX Runtime's probabilities
    for the 450 held-out PNGs, over gRPC."""
    import tritonclient.grpc as grpcclient

    from tests.test_hf_image_classification import IMAGES, _served
    from tests.test_torch_program import cpu_variant
    from tritonkit.build import build
    from tritonkit.hardware import declared
    from tritonkit.image_data import image_ops, image_values
    from tritonkit.policy import plan
    from tritonkit.render import write_repository
    from tritonkit.serve import EmbeddedServer, ServerOptions
    from tritonkit.servers import SERVERS
    from tritonkit.spec import load_spec
    spec = load_spec(SPEC)
    sm = spec.models[0]
    p = plan(spec, declared("H100"), SERVERS["embedded"])
    m = p.model("digits_vit_onnx_classifier")
    assert (m.runtime, m.artifacts, m.instances[0].kind, m.precision) == ("torch-program", ("model.pt2",),
                                                                          "KIND_GPU", "fp16")
    p = cpu_variant(p, "digits_vit_onnx_classifier")
    repo = tmp_path / "repo"
    write_repository(p, repo)
    build(repo, spec=spec, progress=False)
    record = json.loads((repo / "digits_vit_onnx_classifier" / "1" / "build.json").read_text())
    assert record["converter"] == "tritonkit.onnx_torch" and record["tool"].startswith("torch.export")
    assert record["validation"]["reference"] == "ONNX Runtime (CPU) on the ONNX source"
    assert record["validation"]["max_abs_error"] <= 1e-4 and record["validation"]["top1_agreement"] == 1.0
    expected = image_ops().softmax(np.concatenate([_ort(VIT, image_values(sm, IMAGES[k:k + 50], "test"))
                                                    for k in range(0, 450, 50)]))
    http, grpc, metrics = free_ports(3)
    with EmbeddedServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)) as s:
        probs, labels = _served(s.grpc_url, grpcclient, model="digits_vit_onnx")
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert labels == [sm.labels[i] for i in expected.argmax(1)]


# One node per case, checked against ONNX Runtime eagerly and as a torch.export program with a dynamic batch:
# the operators added for CNNs (MobileNet's HardSwish, U-Net's ConvTranspose and Resize, super-resolution's
# DepthToSpace), masks (Trilu, CumSum) and heads (TopK). (id, op, input shapes, constants, attributes, opset,
# outputs). A constant named "" is an omitted optional input (ONNX's empty input name).
R = np.random.default_rng(7)
F32 = np.float32
OP_CASES = [
    ("hard-sigmoid", "HardSigmoid", {"x": [2, 5]}, {}, {"alpha": 0.3, "beta": 0.4}, 17, 1),
    ("hard-swish", "HardSwish", {"x": [2, 5]}, {}, {}, 17, 1),
    ("elu", "Elu", {"x": [2, 5]}, {}, {"alpha": 0.7}, 17, 1),
    ("selu", "Selu", {"x": [2, 5]}, {}, {}, 17, 1),
    ("softplus", "Softplus", {"x": [2, 5]}, {}, {}, 17, 1),
    ("softsign", "Softsign", {"x": [2, 5]}, {}, {}, 17, 1),
    ("mish", "Mish", {"x": [2, 5]}, {}, {}, 18, 1),
    ("prelu", "PRelu", {"x": [2, 3, 4, 4]}, {"slope": R.random((3, 1, 1), F32)}, {}, 17, 1),
    ("clip-constants", "Clip", {"x": [2, 6]}, {"lo": np.array(-0.5, F32), "hi": np.array(0.5, F32)}, {}, 17, 1),
    ("trilu-lower", "Trilu", {"x": [2, 5, 5]}, {"k": np.array(1, np.int64)}, {"upper": 0}, 17, 1),
    ("trilu-upper", "Trilu", {"x": [2, 4, 6]}, {}, {}, 17, 1),
    ("pad-constant", "Pad", {"x": [2, 3, 4, 4]}, {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1]),
                                                  "value": np.array(0.5, F32)}, {}, 17, 1),
    ("pad-reflect", "Pad", {"x": [2, 3, 4, 4]}, {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1])},
     {"mode": "reflect"}, 17, 1),
    ("pad-edge-axes", "Pad", {"x": [2, 3, 4, 4]}, {"pads": np.array([1, 2, 2, 1]), "": None,
                                                   "axes": np.array([2, 3])}, {"mode": "edge"}, 18, 1),
    ("tile", "Tile", {"x": [2, 3]}, {"repeats": np.array([1, 2])}, {}, 17, 1),
    ("cumsum", "CumSum", {"x": [2, 5]}, {"axis": np.array(1)}, {"exclusive": 1, "reverse": 1}, 17, 1),
    ("einsum", "Einsum", {"x": [2, 3, 4], "y": [2, 4, 5]}, {}, {"equation": "bij,bjk->bik"}, 17, 1),
    ("instance-norm", "InstanceNormalization", {"x": [2, 3, 4, 4]},
     {"scale": R.random(3, F32), "bias": R.random(3, F32)}, {}, 17, 1),
    ("conv-transpose", "ConvTranspose", {"x": [2, 3, 5, 5]}, {"w": R.standard_normal((3, 2, 3, 3), F32)},
     {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, 17, 1),
    ("resize-nearest", "Resize", {"x": [2, 3, 4, 5]}, {"": None, "scales": np.array([1, 1, 2, 1.5], F32)},
     {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, 17, 1),
    ("resize-bilinear", "Resize", {"x": [2, 3, 4, 5]}, {"": None, "scales": np.array([1, 1, 2, 1.5], F32)},
     {"mode": "linear"}, 17, 1),
    ("resize-align-corners", "Resize", {"x": [2, 3, 4, 5]}, {"": None, "scales": np.array([1, 1, 2, 2], F32)},
     {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, 17, 1),
    ("resize-bicubic", "Resize", {"x": [2, 3, 4, 5]}, {"": None, "scales": np.array([1, 1, 2, 2], F32)},
     {"mode": "cubic", "cubic_coeff_a": -0.75}, 17, 1),
    ("topk", "TopK", {"x": [2, 7]}, {"k": np.array([3])}, {}, 17, 2),
    ("reduce-prod", "ReduceProd", {"x": [2, 3, 4]}, {}, {"axes": [1, 2], "keepdims": 0}, 17, 1),
    ("reduce-logsumexp", "ReduceLogSumExp", {"x": [2, 3, 4]}, {"axes": np.array([-1])}, {}, 18, 1),
    ("reduce-sum-square", "ReduceSumSquare", {"x": [2, 3, 4]}, {}, {"axes": [1]}, 17, 1),
    ("reduce-l1", "ReduceL1", {"x": [2, 3, 4]}, {}, {"axes": [2], "keepdims": 0}, 17, 1),
    ("mod-fmod", "Mod", {"x": [2, 5], "y": [2, 5]}, {}, {"fmod": 1}, 17, 1),
    ("round", "Round", {"x": [2, 5]}, {}, {}, 17, 1),
    ("atan", "Atan", {"x": [2, 5]}, {}, {}, 17, 1),
    ("max-of-three", "Max", {"x": [2, 5], "y": [2, 5], "z": [2, 5]}, {}, {}, 17, 1),
    ("sum-of-three", "Sum", {"x": [2, 5], "y": [2, 5], "z": [2, 5]}, {}, {}, 17, 1),
    ("mean-of-two", "Mean", {"x": [2, 5], "y": [2, 5]}, {}, {}, 17, 1),
    ("depth-to-space-dcr", "DepthToSpace", {"x": [2, 8, 3, 3]}, {}, {"blocksize": 2}, 17, 1),
    ("depth-to-space-crd", "DepthToSpace", {"x": [2, 8, 3, 3]}, {}, {"blocksize": 2, "mode": "CRD"}, 17, 1),
    ("space-to-depth", "SpaceToDepth", {"x": [2, 2, 4, 6]}, {}, {"blocksize": 2}, 17, 1),
]


def _one_node_model(tmp_path, op, shapes, constants, attrs, opset, n_out) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch"] + s[1:]) for n, s in shapes.items()]
    outs = [f"out{k}" for k in range(n_out)]
    inits = [numpy_helper.from_array(a, n) for n, a in constants.items() if n]
    node = helper.make_node(op, list(shapes) + list(constants), outs, **attrs)
    graph = helper.make_graph([node], op, inputs, [helper.make_empty_tensor_value_info(o) for o in outs], inits)
    path = tmp_path / f"{op}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


@pytest.mark.parametrize("case", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_each_operator_matches_onnx_runtime_eagerly_and_exported(tmp_path, case):
    import onnxruntime as ort
    import torch
    from torch.export import Dim

    from tritonkit.onnx_torch import load_onnx_module
    _, op, shapes, constants, attrs, opset, n_out = case
    path = _one_node_model(tmp_path, op, shapes, constants, attrs, opset, n_out)
    outs = tuple(f"out{k}" for k in range(n_out))
    module = load_onnx_module(path, tuple(shapes), outs, "test")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)

    def feed(batch):
        return {n: (rng.standard_normal([batch] + s[1:]) * 2).astype(F32) for n, s in shapes.items()}

    batch = Dim("batch", min=1, max=64)
    examples = tuple(torch.from_numpy(v) for v in feed(2).values())
    program = torch.export.export(module, examples, dynamic_shapes=(tuple({0: batch} for _ in shapes),)).module()
    for run, b in ((module, 2), (program, 3), (program, 1)):
        x = feed(b)
        got = run(*(torch.from_numpy(v) for v in x.values()))
        for name, g, want in zip(outs, got, session.run(list(outs), x)):
            np.testing.assert_allclose(g.detach().numpy(), want, rtol=1e-5, atol=1e-5, err_msg=f"{op} {name} batch {b}")


def test_cnn_graphs_as_torch_onnx_writes_them_keep_a_dynamic_batch(tmp_path):
    """Blocks of MobileNetV3 (ReLU6 as Clip, HardSwish, a squeeze-excite with HardSigmoid, depthwise
    convolution, batch norm), a U-Net decoder (ConvTranspose, nearest and bilinear Upsample, GroupNorm) and a
    super-resolution head (PixelShuffle as DepthToSpace), exported by the kit's exporter: one program from an
    export at batch 2 equals ONNX Runtime at batch 1, 3 and 16."""
    import onnx
    import torch
    from torch.export import Dim

    from tests.tiny_models import write_cnn_blocks
    from tritonkit.onnx_torch import load_onnx_module
    path = write_cnn_blocks(tmp_path)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Clip", "HardSwish", "HardSigmoid", "ConvTranspose", "Resize", "DepthToSpace"} <= ops, ops
    module = load_onnx_module(path, ("x",), ("y",), "test")
    program = _export(module, (torch.randn(2, 3, 32, 32),), ({0: Dim("batch", min=1, max=64)},))
    rng = np.random.default_rng(0)
    for batch in (1, 3, 16):
        x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        got = program(torch.from_numpy(x))[0].detach().numpy()
        np.testing.assert_allclose(got, _ort(path, {"x": x}), rtol=1e-4, atol=1e-4, err_msg=f"batch {batch}")

    # The small-GPU compile mode: inductor checks the SM count when it lowers a convolution, transposed ones
    # included, so opaque_gemms hands them all to cuDNN; the compiled graph then holds none.
    import re

    from tests.conftest import compile_recording_ops, opaque_gemms_module
    gemms = opaque_gemms_module()
    gemms.opaque_gemms(program)
    compiled, ops = compile_recording_ops(program)
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        np.testing.assert_allclose(compiled(torch.from_numpy(x))[0].numpy(), _ort(path, {"x": x}), rtol=1e-4, atol=1e-4)
    assert {"tritonkit_gemm.conv2d.default", "tritonkit_gemm.conv_transpose2d.default"} <= ops, sorted(ops)
    left = sorted(op for op in ops if re.search(r"aten\.(mm|addmm|bmm|matmul|linear|conv\w*|convolution)\b", op))
    assert left == [], left
