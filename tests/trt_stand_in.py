"""A stand-in for the three TensorRT calls tritonkit makes (tritonkit.trt_engine), for machines where TensorRT
cannot be installed.

Only these are replaced: ``require_build_host`` (which TensorRT and GPU this host has),
``build_engine`` (writes a small "plan" file that records its settings instead of an engine) and
``run_plan`` (answers with ONNX Runtime's outputs for the ONNX the plan was built from, optionally
changed by ``perturb``). Everything around them is tritonkit's real code: builder settings, the ONNX export
and checks, the plan's ONNX in its precision (ModelOpt AutoCast / Q/DQ, tritonkit/qdq.py), the Q/DQ check,
validation against ONNX Runtime on the FP32 graph with the plan's tolerance, staging, build.json,
reproduce.sh, and the render/serve refusals. Tests that need the real engine are in tests/test_tensorrt.py
and run where ``tensorrt`` imports.

"Running" a plan answers what its ONNX computes: for an FP32 plan exactly the reference (validation
measures 0.0), for an FP16 plan the AutoCast graph's own rounding. A test of the measured error must
perturb by a known amount and compare with what that ONNX itself gives.

The graph those builds start from is tests/tiny_models.write_cnn_onnx: the tiny CNN's signature (its
CNN_SPEC) built with onnx.helper, so these tests export nothing with torch and stay in the fast suite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tritonkit import defaults
from tritonkit.catalogue import CATALOGUE, GPU


@dataclass
class StandIn:
    version: str = defaults.NGC_TENSORRT_VERSION + ".106"   # what `tensorrt.__version__` would say
    gpu: GPU = CATALOGUE["tesla t4"]               # CUDA device 0 of the build host
    perturb: Callable[[dict], dict] = lambda outputs: outputs
    builds: list = field(default_factory=list)     # (settings, onnx path) per build_engine call


def install(monkeypatch, stand_in: StandIn) -> StandIn:
    from tritonkit import trt_engine
    from tritonkit.compare import run_onnx
    from tritonkit.trt_settings import profile_record

    def require_build_host(plan, targets, *, repo=None):
        return trt_engine.BuildHost(tensorrt_version=stand_in.version, gpu=stand_in.gpu)

    def build_engine(settings, onnx_path, out_path, cache_path, *, on_phase=None):
        if on_phase is not None:
            on_phase("stand-in build", 1, 1)
        out_path.write_bytes(json.dumps({"stand_in_for": "a TensorRT plan", "onnx": str(Path(onnx_path).resolve()),
                                         "settings": settings.record()}, sort_keys=True).encode())
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(b"stand-in timing cache")
        stand_in.builds.append((settings, Path(onnx_path)))
        return trt_engine.EngineReport(seconds=0.0, tensorrt_version=stand_in.version, timing_cache="new",
                                       profiles=[profile_record(p) for p in settings.profiles], io={},
                                       size_bytes=out_path.stat().st_size)

    def run_plan(plan_path, feeds, *, profile=0):
        built_from = json.loads(Path(plan_path).read_bytes())["onnx"]
        return stand_in.perturb(run_onnx(Path(built_from), feeds))

    # build.py looks these up on the module at call time, so they are replaced where it looks.
    monkeypatch.setattr(trt_engine, "require_build_host", require_build_host)
    monkeypatch.setattr(trt_engine, "build_engine", build_engine)
    monkeypatch.setattr(trt_engine, "run_plan", run_plan)
    return stand_in
