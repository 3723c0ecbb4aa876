"""bert_encoder.opaque_gemms: the small-GPU compile mode keeps every GEMM away from torch.compile.

On a GPU below inductor's SM threshold, lowering a GEMM is what prints "Not enough SMs to use
max_autotune_gemm mode"; tests/test_gpu.py checks the log on a real (MPS-limited) GPU. Here, on the CPU:
the graph torch.compile hands its backend holds no matmul op at all, only tritonkit::linear, across
dynamic shapes, and the numbers are those of the plain module.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import compile_recording_ops
from tritonkit.torch_export import bert_module


@pytest.fixture(scope="module")
def bert():
    return bert_module()


def _encoder(bert):
    config = {"hidden_size": 32, "layer_norm_eps": 1e-12, "vocab_size": 100, "max_position_embeddings": 64,
              "type_vocab_size": 2, "num_attention_heads": 4, "intermediate_size": 64, "num_hidden_layers": 2}
    torch.manual_seed(0)
    return bert.BertEncoder(config).eval()


def _inputs(batch, length):
    ids = torch.randint(1, 100, (batch, length))
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0
    return ids, mask


def test_compiled_graph_has_no_gemm_and_same_numbers(bert):
    plain = _encoder(bert)
    opaque = bert.opaque_gemms(_encoder(bert))
    assert sum(type(m).__name__ == "_OpaqueLinear" for m in opaque.modules()) == 2 * 4
    compiled, ops = compile_recording_ops(opaque)
    with torch.inference_mode():
        for batch, length in ((1, 16), (3, 32), (5, 48)):
            ids, mask = _inputs(batch, length)
            want = plain(ids, mask)
            assert torch.equal(opaque(ids, mask), want)
            torch.testing.assert_close(compiled(ids, mask), want, rtol=1e-5, atol=1e-6)
    assert "tritonkit.linear.default" in ops, sorted(ops)
    gemms = sorted(op for op in ops if any(k in op for k in ("mm", "linear.default", "matmul")) and "tritonkit" not in op)
    assert gemms == [], gemms


def test_loading_the_module_twice_registers_the_op_once(bert):
    again = bert_module()
    assert again is not bert  # a second, fresh import of the same file
    model = again.opaque_gemms(_encoder(again))
    ids, mask = _inputs(2, 16)
    with torch.inference_mode():
        assert torch.equal(model(ids, mask), bert.opaque_gemms(_encoder(bert))(ids, mask))
