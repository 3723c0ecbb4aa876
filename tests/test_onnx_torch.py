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
    k = helper.make_tensor("k", TensorProto.INT64, [1], [2])
    graph = helper.make_graph([helper.make_node("TopK", ["x", "k"], ["y", "i"]),
                               helper.make_node("Hardmax", ["y"], ["z"])], "g", [x], [y], [k])
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    from tritonkit.onnx_torch import load_onnx_module
    with pytest.raises(UserError, match="operators the GPU path cannot run") as e:
        load_onnx_module(path, ("x",), ("y",), "model odd")
    assert e.value.actual == ["Hardmax", "TopK"] and "CPU path" in e.value.fix


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
