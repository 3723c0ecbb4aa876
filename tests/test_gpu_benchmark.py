"""benchmarks/gpu_plan_vs_naive.py's pure parts (its GPU runs are in benchmarks/results/gpu/)."""

from __future__ import annotations

import sys

from tritonkit import defaults
from tritonkit.hardware import declared
from tritonkit.policy import plan
from tritonkit.servers import SERVERS
from tritonkit.spec import load_spec

sys.path.insert(0, str(defaults.PROJECT_ROOT / "benchmarks"))
from gpu_plan_vs_naive import merge_rounds, naive  # noqa: E402


def test_naive_is_fp32_eager_one_instance_unbatched():
    kit = plan(load_spec(defaults.DEFAULT_SPEC), declared("H100"), SERVERS["embedded"])
    enc = naive(kit).model("minilm_encoder")
    params = dict(enc.parameters)
    assert (enc.precision, params["precision"], params["compile_mode"]) == ("fp32", "fp32", "none")
    assert [(g.kind, g.count) for g in enc.instances] == [("KIND_GPU", 1)] and enc.batching is None
    assert kit.model("minilm_encoder").batching is not None  # the kit plan itself is untouched


def _run(best_at_64, p99, warn=False):
    return {"sm_warning": warn, "levels": [
        {"concurrency": 1, "requests": 10, "errors": 0, "items_per_s": 100.0, "p50_ms": 1, "p90_ms": 2, "p99_ms": 3},
        {"concurrency": 64, "requests": 10, "errors": 1, "items_per_s": best_at_64, "p50_ms": 5, "p90_ms": 6,
         "p99_ms": p99}]}


def test_rounds_merge_to_per_level_medians():
    merged = merge_rounds([_run(3000.0, 50), _run(3600.0, 40, warn=True), _run(3300.0, 45)])
    top = merged["levels"][1]
    assert (top["items_per_s"], top["p99_ms"], top["requests"], top["errors"]) == (3300.0, 45, 30, 3)
    assert merged["round_best"] == [3000.0, 3600.0, 3300.0] and merged["sm_warning"] is True
