#!/usr/bin/env python3
"""The kit's load generator measured side by side with NVIDIA perf_analyzer, on the same running server.

Goal: at every concurrency level, `tritonkit.load.run_bench`'s p50 and p99 within +-10% of
perf_analyzer's and its throughput >= 0.9x perf_analyzer's. perf_analyzer is the independent reference
(NVIDIA's own client, C++); nothing else in the project needs it.

One run, one server: the case's model repository is rendered and built with the kit's own plan, served
by the embedded tritonserver on free loopback ports, and the two tools take turns per level: round 0
sends perf_analyzer then the kit at each level, round 1 the kit first, round 2 perf_analyzer first, ...
Each tool's figures per level are the median over the rounds; the ratios (kit / perf_analyzer) of those
medians decide the verdict.

What each tool is asked to do (same server, same payloads, same sample size):
  * perf_analyzer: `-i grpc -b 1 --concurrency-range N:N --measurement-mode count_windows
    --measurement-request-count ceil(K/3) --percentile=99 -f <csv>`. Why count windows: a window
    closes only once it holds ceil(K/3) requests (checked every 1 s), so every level gets a fixed
    sample size whatever its throughput; time windows would give c=1 and c=32 very different sample
    counts. It reports the 3 windows it measured merged into one figure (>= K requests: a window also
    lasts at least 1 s, so fast levels get more). Its stability gate is off by default (`-s 10000 -r
    3`): with its own defaults (`-s 10 -r 10`: measure until 3 consecutive windows agree within 10% on
    throughput and p99) it gave no figure at all on a shared 2-core host (10 windows at c=1 and c=4,
    none 3 in a row within 10%, while other work used 1.1-1.6 cores), and a gate that sometimes leaves
    no reference is worse than noise that rounds and medians handle, the same way for both tools. Each
    window's throughput and p99 are recorded, so perf_analyzer's own spread is visible;
    `--pa-stability 10` turns its gate back on (a run that does not stabilize is recorded without a
    figure and the level keeps its other rounds). Warm-up: the server is warmed once before round 0
    (an untimed kit run at the highest level); perf_analyzer 2.41 has no warm-up option (its first
    window includes its threads' first requests; they share gRPC channels, several per channel by
    default, TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT).
  * the kit: `run_bench(target, concurrency=(N,), requests_per_level=<perf_analyzer's merged request
    count at this level, K before it has one>, warmup_requests=W)`: the same sample size as the
    reference figure, after W warm-up requests at the same concurrency.
  * payloads: MiniLM: both cycle through the sentences of deploy/sentences.txt (perf_analyzer via
    `--input-data` JSON); minilm-gpu: both send one of them in every request (perf_analyzer's threads walk
    the data in step, so its concurrent requests carry the same sentence; see CASES). MLP: both send
    seeded N(0,1) FP32 vectors (the kit its own 8, perf_analyzer 8 from the JSON written here; its
    default "random" data is random *bytes*, which as FP32 includes NaN/Inf/denormals, and denormals are
    slow on x86 CPUs).
  * CPU, as milliseconds of CPU per request served (Triton's statistics count the requests): the
    client's (perf_analyzer: its rusage from os.wait4, all its windows; the kit: its level's own
    accounting, client_cpu_cores x seconds) and the server's (tritonserver + python stubs, /proc,
    around each tool's run). On a 2-core host client and server share the CPU: throughput <= 2 cores /
    (client + server ms per request). "other" = cores the rest of the machine used during the run.

Cases (`--case`): mlp-cpu (ONNX MLP 256-1024-1024-256 served with the kit's CPU plan), minilm-cpu (the
example spec, MiniLM ensemble, strings in, `--gpu none`), minilm-gpu (the same rendered with `--gpu
auto`; exits 2 on a host where no GPU is detected).

Writes <out>/bench_vs_perf_analyzer.{json,png,txt} (+ raw/: perf_analyzer's CSV and log per run, the
server log) and exits 0 (PASSED), 1 (FAILED) or 2 (perf_analyzer missing, no GPU, or a user error).

    eval "$(bash benchmarks/perf_analyzer_setup.sh)"       # once: perf_analyzer + libcudart into .cache/
    .venv/bin/python benchmarks/bench_vs_perf_analyzer.py --case mlp-cpu [--levels 1,4,16,32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tritonkit import defaults  # noqa: E402

SCHEMA = "tritonkit.bench_vs_perf_analyzer/1"
THROUGHPUT_FLOOR = 0.9          # kit throughput >= 0.9 x perf_analyzer's
LATENCY_TOLERANCE = 0.10        # kit p50 and p99 within +-10% of perf_analyzer's
SETUP_SCRIPT = "benchmarks/perf_analyzer_setup.sh"
SETUP_HINT = (f"get it with `eval \"$(bash {SETUP_SCRIPT})\"` (downloads the tritonclient==2.41.1 and "
              "nvidia-cuda-runtime-cu12 wheels into .cache/perf_analyzer and prints PERF_ANALYZER and "
              "PERF_ANALYZER_CUDA_LIB), then pass --perf-analyzer/--cuda-lib or keep those variables set")
# perf_analyzer's stability gate: off unless asked (see the module doc); its own defaults are -s 10 -r 10.
PA_GATE_OFF = (10000.0, 3)      # (-s, -r): the first 3 windows are always "stable"
PA_GATE_MAX_TRIALS = 10
PA_TIMEOUT_S = 900.0
MLP_VARIANTS = 8                # distinct MLP payloads, as many as the kit cycles through
MLP_SEED = 0


class Unavailable(Exception):
    """Something this benchmark needs is not on this host (perf_analyzer, a GPU): exit 2, one message."""


# --- Cases: one row each ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    gpu: str                    # `tritonkit render --gpu`
    workload: str               # key of WORKLOADS
    levels: tuple[int, ...]
    requests: int               # K: sample size of each tool's figure, per level and round
    warmup: int                 # W: the kit's warm-up requests before each level
    what: str
    text: int | None = None     # both tools send only this one of the spec's texts (None: walk through all)


CASES = {c.name: c for c in (
    Case("mlp-cpu", "none", "mlp", (1, 4, 16, 32), 2000, 100,
         "ONNX MLP 256->1024->1024->256 FP32, the kit's CPU plan (ONNX Runtime in the python backend)"),
    Case("minilm-cpu", "none", "minilm", (1, 4, 16, 32), 600, 50,
         "example spec (MiniLM-L6 ensemble, one sentence per request), the kit's CPU plan"),
    # One sentence (24 tokens) in every request: perf_analyzer 2.41 starts every thread at the first data step
    # and moves each by the thread count, so its requests in flight carry the same sentence, while the kit's
    # carry a mix; the GPU plan's encoder runs each length group of a batch separately, so with the 30
    # sentences the server does less work per batch for perf_analyzer (see the results README).
    Case("minilm-gpu", "auto", "minilm", (16, 64, 128), 3000, 200,
         "example spec (MiniLM-L6 ensemble, the same sentence in every request), the kit's plan for the detected GPU",
         text=2),
)}


# --- Workloads: how a case's spec is written and what both tools send --------------------------------
def _write_mlp_onnx(path: Path) -> None:
    """256 -> 1024 -> 1024 -> 256 (Gemm+Relu x2, Gemm), FP32, fixed-seed weights, dynamic batch."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(MLP_SEED)

    def weight(name: str, a: int, b: int):
        return numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), name)

    def bias(name: str, n: int):
        return numpy_helper.from_array(np.zeros(n, np.float32), name)

    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"]), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("Gemm", ["r2", "w3", "b3"], ["y"])]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])],
        [weight("w1", 256, 1024), bias("b1", 1024), weight("w2", 1024, 1024), bias("b2", 1024),
         weight("w3", 1024, 256), bias("b3", 256)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", defaults.ONNX_OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


MLP_SPEC = """\
# Written by benchmarks/bench_vs_perf_analyzer.py (case mlp-cpu).
models:
  - name: mlp
    source: {format: onnx, path: mlp.onnx}
    inputs: [{name: x, dtype: FP32, dims: [batch, 256]}]
    outputs: [{name: y, dtype: FP32, dims: [batch, 256]}]
    max_batch_size: 64
    latency_budget: {p99_ms: 50}
    tolerance: {fp32: {atol: 1.0e-5}}
"""


def _mlp_spec(work: Path) -> Path:
    _write_mlp_onnx(work / "mlp.onnx")
    spec = work / "mlp.yaml"
    spec.write_text(MLP_SPEC)
    return spec


def _mlp_target(spec: Path, url: str):
    from tritonkit.load import BenchTarget, TensorSpec
    return BenchTarget(model="mlp", inputs=(TensorSpec("x", "FP32", (1, 256)),), outputs=("y",), url=url)


def _minilm_target(spec: Path, url: str):
    from tritonkit.spec import load_spec
    from tritonkit.workload import bench_target
    return bench_target(load_spec(spec, sources=False).models[0], url, "grpc")   # a client needs no weights


@dataclass(frozen=True)
class Workload:
    spec: Callable[[Path], Path]            # work dir -> spec file (written there or the project's)
    target: Callable[[Path, str], object]   # spec, grpc url -> tritonkit.load.BenchTarget


WORKLOADS = {
    "mlp": Workload(spec=_mlp_spec, target=_mlp_target),
    "minilm": Workload(spec=lambda work: defaults.DEFAULT_SPEC, target=_minilm_target),
}


def perf_analyzer_input_data(target) -> dict:
    """perf_analyzer's `--input-data` JSON for what the kit sends to `target`.

    Format (perf_analyzer docs/input_data.md, "Real Input Data"): {"data": [{input: {"content": [...],
    "shape": [...]}}, ...]}, one entry per request, round-robin; "content" is the tensor flattened
    row-major, "shape" excludes the batch dimension (`-b 1` adds it). BYTES content is a list of
    strings. Texts walk through `target.texts` as the kit's payloads do; numeric inputs get
    MLP_VARIANTS seeded N(0,1) tensors.
    """
    import numpy as np

    kinds = {"BYTES": "text", "FP32": "float", "FP16": "float", "FP64": "float"}
    rng = np.random.default_rng(MLP_SEED)
    texts = list(target.texts)
    has_text = any(kinds.get(s.dtype) == "text" for s in target.inputs)
    if has_text and not texts:
        raise ValueError(f"model {target.model!r} takes strings but its bench target has no texts")
    n = len(texts) if has_text else MLP_VARIANTS
    entries = []
    for v in range(n):
        entry = {}
        for s in target.inputs:
            kind = kinds.get(s.dtype)
            if kind is None:
                raise ValueError(f"input {s.name!r}: no perf_analyzer data for datatype {s.dtype}, "
                                 f"expected one of {sorted(kinds)}")
            if s.shape[0] != 1:
                raise ValueError(f"input {s.name!r}: got request shape {list(s.shape)}, expected batch 1")
            shape = list(s.shape[1:])
            size = math.prod(shape)
            content = ([texts[(v * size + k) % len(texts)] for k in range(size)] if kind == "text"
                       else [round(float(x), 7) for x in rng.standard_normal(size)])
            entry[s.name] = {"content": content, "shape": shape}
        entries.append(entry)
    return {"data": entries}


# --- perf_analyzer ------------------------------------------------------------------------------------
# Shared libraries perf_analyzer 2.41.1 needs beyond glibc/libstdc++, and where each comes from.
LIBRARY_FIXES = {
    "libcudart.so.12": "pass --cuda-lib DIR (or set PERF_ANALYZER_CUDA_LIB) to the nvidia/cuda_runtime/lib folder "
                       "of the nvidia-cuda-runtime-cu12 wheel; perf_analyzer links it even without a GPU",
    "libb64.so.0d": "install Debian's libb64-0d (apt-get install -y libb64-0d), or put libb64.so.0d in --cuda-lib",
}


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    cuda_lib: Path | None
    version: str

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.cuda_lib is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (str(self.cuda_lib), env.get("LD_LIBRARY_PATH", "")) if p)
        return env


def locate_perf_analyzer(binary: str | None, cuda_lib: str | None) -> PerfAnalyzer:
    """The perf_analyzer to use, checked by running `--version`; Unavailable says what and how to get it."""
    if not binary:
        raise Unavailable("perf_analyzer not given: pass --perf-analyzer PATH or set PERF_ANALYZER.\n  "
                          + SETUP_HINT)
    path = Path(binary).expanduser()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise Unavailable(f"perf_analyzer not found or not executable: {path}\n  {SETUP_HINT}")
    lib = Path(cuda_lib).expanduser() if cuda_lib else None
    if lib is not None and not (lib / "libcudart.so.12").exists():
        raise Unavailable(f"--cuda-lib {lib} has no libcudart.so.12 (perf_analyzer 2.41.1 links it even "
                          f"without a GPU)\n  {SETUP_HINT}")
    pa = PerfAnalyzer(path, lib, "")
    try:
        out = subprocess.run([str(path), "--version"], env=pa.env(), capture_output=True, text=True, timeout=30)
    except OSError as exc:
        raise Unavailable(f"perf_analyzer at {path} cannot run: {exc}\n  {SETUP_HINT}") from None
    text = (out.stdout + out.stderr).strip()
    if out.returncode != 0 or "Version" not in text:
        missing = re.search(r"error while loading shared libraries: (\S+?):", text)
        why = (f"it cannot load {missing.group(1)}"
               + (f": {LIBRARY_FIXES[missing.group(1)]}" if missing.group(1) in LIBRARY_FIXES else "")) \
            if missing else f"`{path} --version` exited {out.returncode}: {text[-300:]}"
        raise Unavailable(f"perf_analyzer at {path} does not run: {why}\n  {SETUP_HINT}")
    return dataclasses.replace(pa, version=text.splitlines()[-1].strip())


def _wait_with_rusage(proc: subprocess.Popen, timeout_s: float):
    """Reap `proc` with os.wait4 (its own rusage: exactly its CPU), killing it after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage, False
        if time.monotonic() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage, True
        time.sleep(0.05)


def run_perf_analyzer(pa: PerfAnalyzer, url: str, model: str, concurrency: int, window_requests: int,
                      extra: list[str], raw: Path, tag: str, stability: float, max_trials: int) -> dict:
    """One perf_analyzer run at one concurrency; its CSV (-f) parsed into ms and requests/s."""
    csv_path, log_path = raw / f"{tag}.csv", raw / f"{tag}.log"
    cmd = [str(pa.binary), "-i", "grpc", "-u", url, "-m", model, "-b", "1",
           "--concurrency-range", f"{concurrency}:{concurrency}",
           "--measurement-mode", "count_windows", "--measurement-request-count", str(window_requests),
           "--percentile=99", "-s", f"{stability:g}", "-r", str(max_trials), "-v", "-f", str(csv_path), *extra]
    csv_path.unlink(missing_ok=True)
    with log_path.open("w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=pa.env())
        rc, usage, timed_out = _wait_with_rusage(proc, PA_TIMEOUT_S)
        wall = time.perf_counter() - started
    text = log_path.read_text(errors="replace")
    passes = [(float(t), int(p) / 1e3) for t, p in
              re.findall(r"^\s*Pass \[\d+\] throughput: ([\d.]+) infer/sec\. p99 latency: (\d+) usec", text, re.M)]
    windows = len(re.findall(r"^\s*Pass \[\d+\]", text, re.M))
    cpu_s = usage.ru_utime + usage.ru_stime
    result = {"command": shlex.join(cmd), "rc": rc, "wall_s": wall, "cpu_s": cpu_s, "cpu_cores": cpu_s / wall,
              "windows": windows, "window_throughput_rps": [t for t, _ in passes],
              "window_p99_ms": [p for _, p in passes], "csv": csv_path.name, "log": log_path.name}
    if rc != 0 or not csv_path.exists():
        tail = [ln.strip() for ln in text.splitlines() if ln.strip()][-2:]
        result["unstable"] = "Failed to obtain stable measurement" in text
        result["error"] = (f"timed out after {PA_TIMEOUT_S:.0f} s" if timed_out else
                           f"unstable: no 3 consecutive windows of {windows} within {stability:g}% (exit {rc})"
                           if result["unstable"] else f"exit {rc}: " + " | ".join(tail))
        return result
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != 1:
        raise RuntimeError(f"{csv_path}: got {len(rows)} rows, expected 1 (one concurrency level)")
    row = rows[0]
    missing = [c for c in ("Concurrency", "Inferences/Second", "p50 latency", "p99 latency") if c not in row]
    if missing:
        raise RuntimeError(f"{csv_path}: columns {missing} missing, got {list(row)}")
    if int(row["Concurrency"]) != concurrency:
        raise RuntimeError(f"{csv_path}: got concurrency {row['Concurrency']}, expected {concurrency}")
    count = re.search(r"Client:\s*\n\s*Request count:\s*(\d+)", text)
    result.update(
        throughput_rps=float(row["Inferences/Second"]),   # -b 1: inferences = requests
        p50_ms=float(row["p50 latency"]) / 1e3, p90_ms=float(row["p90 latency"]) / 1e3,
        p99_ms=float(row["p99 latency"]) / 1e3,            # CSV latencies are in microseconds
        requests=int(count.group(1)) if count else None, csv_row=row)
    return result


# --- CPU accounting from /proc -------------------------------------------------------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()   # after "(comm)": state, ppid, ...


def split_cores(server: list[int]) -> dict[str, list[int]]:
    """--split-cores: the server's processes (every thread) on the first half of this process's cores, this
    process and everything it starts later (kit workers, perf_analyzer) on the other half."""
    cores = sorted(os.sched_getaffinity(0))
    half = {"server": cores[:len(cores) // 2], "clients": cores[len(cores) // 2:]}
    for pid in server:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                os.sched_setaffinity(int(task.name), half["server"])
            except OSError:     # a thread that just ended
                pass
    os.sched_setaffinity(0, half["clients"])
    return half


def server_pids() -> list[int]:
    """tritonserver processes started by this process, with all their descendants (the python stubs)."""
    parents: dict[int, int] = {}
    comms: dict[int, str] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            fields = _stat_fields(int(p.name))
            if fields:
                parents[int(p.name)] = int(fields[1])
                try:
                    comms[int(p.name)] = (p / "comm").read_text().strip()
                except OSError:
                    pass
    roots = [pid for pid, ppid in parents.items() if ppid == os.getpid() and comms.get(pid) == "tritonserver"]
    tree, todo = set(roots), list(roots)
    while todo:
        parent = todo.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(kids)
        todo.extend(kids)
    return sorted(tree)


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])   # utime, stime (stat fields 14, 15)
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    return (sum(vals[:8]) - vals[3] - vals[4]) / CLK_TCK


def served_requests(url: str, model: str) -> int:
    """Requests `model` has answered so far (Triton's statistics: success + failure, all versions)."""
    from tritonclient.grpc import InferenceServerClient
    client = InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(model_name=model, as_json=True)
    finally:
        client.close()
    return sum(int(st["inference_stats"].get(k, {}).get("count", 0))
               for st in stats.get("model_stats", []) for k in ("success", "fail"))


class Meter:
    """Around one tool run: wall time, requests the server answered, CPU seconds of the server (tritonserver
    + stubs), of the whole machine, and of this process and its reaped children."""

    def __init__(self, pids: list[int], url: str, model: str):
        self.pids, self.url, self.model = pids, url, model

    def _now(self):
        t = os.times()
        return (time.perf_counter(), served_requests(self.url, self.model), cpu_seconds(self.pids),
                machine_busy_seconds(), t[0] + t[1], t[2] + t[3])

    def __enter__(self):
        self.start = self._now()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            end = self._now()
            (self.wall, self.served, self.server, self.machine, self.this_process,
             self.children) = (b - a for a, b in zip(self.start, end))
        return None

    def figures(self, client_s: float) -> dict:
        """client_s: CPU seconds of the tool's client during the run."""
        per_req = 1e3 / self.served if self.served else math.nan
        return {"wall_s": self.wall, "served_requests": self.served,
                "server_cpu_s": self.server, "server_ms_per_request": self.server * per_req,
                "machine_busy_cores": self.machine / self.wall,
                "other_cores": max(0.0, (self.machine - self.server - client_s) / self.wall)}


# --- One round of one tool at one level ---------------------------------------------------------------
def measure_kit(target, concurrency: int, requests: int, warmup: int, processes: int | None, pids) -> dict:
    from tritonkit.load import run_bench
    with Meter(pids, target.url, target.model) as meter:
        report = run_bench(target, concurrency=(concurrency,), requests_per_level=requests,
                           warmup_requests=warmup, progress=False, processes=processes)
    lv = report.levels[0]
    # The kit's client over the call = this process (main thread, statistics poller) + its driver
    # processes (reaped when run_bench returns): spawn, imports and warm-up included.
    call_client_s = meter.this_process + meter.children
    level_client_s = lv.client_cpu_cores * lv.seconds
    return {"throughput_rps": lv.throughput_rps, "p50_ms": lv.p50_ms, "p90_ms": lv.p90_ms, "p99_ms": lv.p99_ms,
            "requests": lv.requests, "errors": lv.errors, "seconds": lv.seconds,
            "client_cpu_cores": lv.client_cpu_cores, "client_processes": lv.client_processes,
            "client_ms_per_request": 1e3 * level_client_s / lv.requests if lv.requests else math.nan,
            "client_cpu_s_call": call_client_s, "client_bound": lv.client_bound,
            "server_version": report.server_version, **meter.figures(call_client_s),
            "level": _clean(dataclasses.asdict(lv))}


def measure_pa(pa, url: str, target, concurrency: int, window_requests: int, extra, raw: Path, tag: str,
               args, pids) -> dict:
    with Meter(pids, url, target.model) as meter:
        r = run_perf_analyzer(pa, url, target.model, concurrency, window_requests, extra, raw, tag, *args.pa_gate)
    r.update(meter.figures(r["cpu_s"]))
    # perf_analyzer's client CPU over all its windows (and its start-up, which is small) per request sent
    r["client_ms_per_request"] = 1e3 * r["cpu_s"] / meter.served if meter.served else math.nan
    return r


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


# --- Verdict ----------------------------------------------------------------------------------------------
def _median(xs: list[float]) -> float:
    xs = sorted(x for x in xs if x is not None and math.isfinite(x))
    if not xs:
        return math.nan
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def _spread(xs: list[float]) -> float:
    """(max - min) / median over the rounds: how much a tool disagrees with itself."""
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return (max(xs) - min(xs)) / _median(xs) if len(xs) > 1 and _median(xs) > 0 else math.nan


METRICS = ("throughput_rps", "p50_ms", "p99_ms")
# metric -> (test on kit / perf_analyzer, how the target reads)
TARGETS = {
    "throughput_rps": (lambda r: r >= THROUGHPUT_FLOOR, f">= {THROUGHPUT_FLOOR}x"),
    "p50_ms": (lambda r: abs(r - 1) <= LATENCY_TOLERANCE, f"within +-{LATENCY_TOLERANCE:.0%}"),
    "p99_ms": (lambda r: abs(r - 1) <= LATENCY_TOLERANCE, f"within +-{LATENCY_TOLERANCE:.0%}"),
}


def summarize_level(concurrency: int, rounds: list[dict]) -> dict:
    pa_ok = [r["perf_analyzer"] for r in rounds if "throughput_rps" in r["perf_analyzer"]]
    kit_ok = [r["kit"] for r in rounds if "throughput_rps" in r["kit"]]
    out: dict = {"concurrency": concurrency, "rounds": len(rounds), "perf_analyzer_rounds": len(pa_ok),
                 "perf_analyzer": {}, "kit": {}, "ratio": {}, "paired_ratio_median": {}, "pass": {}}
    for m in METRICS + ("p90_ms", "cpu_cores", "client_ms_per_request", "server_ms_per_request", "other_cores"):
        out["perf_analyzer"][m] = _median([r.get(m) for r in pa_ok])
    for m in METRICS + ("p90_ms", "client_cpu_cores", "client_ms_per_request", "server_ms_per_request",
                        "other_cores"):
        out["kit"][m] = _median([r.get(m) for r in kit_ok])
    for m in METRICS:
        out["perf_analyzer"][m + "_spread"] = _spread([r[m] for r in pa_ok])
        out["kit"][m + "_spread"] = _spread([r[m] for r in kit_ok])
        ratio = out["kit"][m] / out["perf_analyzer"][m] if out["perf_analyzer"][m] > 0 else math.nan
        out["ratio"][m] = ratio
        out["paired_ratio_median"][m] = _median(
            [r["kit"][m] / r["perf_analyzer"][m] for r in rounds
             if "throughput_rps" in r["perf_analyzer"] and "throughput_rps" in r["kit"]])
        out["pass"][m] = bool(math.isfinite(ratio) and TARGETS[m][0](ratio))
    out["client_bound"] = sorted({r["kit"].get("client_bound") for r in rounds if r["kit"].get("client_bound")})
    out["perf_analyzer_failures"] = [r["perf_analyzer"].get("error") for r in rounds
                                     if "throughput_rps" not in r["perf_analyzer"]]
    out["kit_errors"] = sum(r["kit"].get("errors", 0) for r in rounds)   # a level with errors compares nothing
    out["passed"] = bool(pa_ok) and all(out["pass"].values()) and out["kit_errors"] == 0
    return out


# --- Output --------------------------------------------------------------------------------------------
def _fmt(x: float, digits: int = 1) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


TABLE_WIDTH = 150


def table(levels: list[dict], title: str):
    """The per-level medians as a rich Table (ratios green when their target is met)."""
    from rich.table import Table
    t = Table(title=title, title_justify="left", caption_justify="left")
    heads = ("c", "req/s PA", "kit", "kit/PA", "p50 ms PA", "kit", "kit/PA", "p99 ms PA", "kit", "kit/PA",
             "client CPU ms/req PA", "kit", "server ms/req PA", "kit", "other cores", "verdict")
    for head in heads:
        t.add_column(head, justify="left" if head == "verdict" else "right", no_wrap=head == "verdict")
    notes = []
    for lv in levels:
        pa, kit, ratio, ok = lv["perf_analyzer"], lv["kit"], lv["ratio"], lv["pass"]

        def r(m):
            return f"[{'green' if ok[m] else 'red'}]{_fmt(ratio[m], 2)}[/]"
        verdict = "[green]PASS[/]" if lv["passed"] else \
            ("[red]no reference[/]" if not lv["perf_analyzer_rounds"] else "[red]FAIL[/]")
        if lv["client_bound"]:
            notes.append(f"c={lv['concurrency']}: the kit says its client was the limit: {'; '.join(lv['client_bound'])}")
        if lv["kit_errors"]:
            notes.append(f"c={lv['concurrency']}: the kit saw {lv['kit_errors']} failed request(s)")
        if lv["perf_analyzer_failures"]:
            notes.append(f"c={lv['concurrency']}: perf_analyzer gave no figure in {len(lv['perf_analyzer_failures'])} "
                         f"round(s): {lv['perf_analyzer_failures'][0]}")
        t.add_row(str(lv["concurrency"]), _fmt(pa["throughput_rps"]), _fmt(kit["throughput_rps"]), r("throughput_rps"),
                  _fmt(pa["p50_ms"], 2), _fmt(kit["p50_ms"], 2), r("p50_ms"),
                  _fmt(pa["p99_ms"], 2), _fmt(kit["p99_ms"], 2), r("p99_ms"),
                  _fmt(pa["client_ms_per_request"], 3), _fmt(kit["client_ms_per_request"], 3),
                  _fmt(pa["server_ms_per_request"], 3), _fmt(kit["server_ms_per_request"], 3),
                  _fmt(_median([pa["other_cores"], kit["other_cores"]]), 2), verdict)
    t.caption = "\n".join(notes) or None
    return t


def plot(levels: list[dict], rounds: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [lv["concurrency"] for lv in levels]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), dpi=120)
    panels = (("throughput_rps", "requests / s", f"throughput (target: kit >= {THROUGHPUT_FLOOR}x perf_analyzer)"),
              ("p50_ms", "ms", f"p50 latency (target: within +-{LATENCY_TOLERANCE:.0%})"),
              ("p99_ms", "ms", f"p99 latency (target: within +-{LATENCY_TOLERANCE:.0%})"))
    for ax, (m, unit, name) in zip(axes, panels):
        pa = [lv["perf_analyzer"][m] for lv in levels]
        kit = [lv["kit"][m] for lv in levels]
        lo = [v * (THROUGHPUT_FLOOR if m == "throughput_rps" else 1 - LATENCY_TOLERANCE) for v in pa]
        hi = pa if m == "throughput_rps" else [v * (1 + LATENCY_TOLERANCE) for v in pa]
        band = (f"{THROUGHPUT_FLOOR}x..1x perf_analyzer" if m == "throughput_rps"
                else f"perf_analyzer +-{LATENCY_TOLERANCE:.0%}")
        ax.fill_between(xs, lo, hi, color="tab:orange", alpha=0.18, label=band)
        if m == "throughput_rps":
            ax.plot(xs, lo, ":", color="tab:orange", lw=1)
        ax.plot(xs, pa, "s-", color="tab:orange", label="perf_analyzer 2.41.1 (median of rounds)")
        ax.plot(xs, kit, "o-", color="tab:blue", label="tritonkit run_bench (median of rounds)")
        for tool, color, marker in (("perf_analyzer", "tab:orange", "s"), ("kit", "tab:blue", "o")):
            pts = [(r["concurrency"], r[tool][m]) for r in rounds if r[tool].get(m) is not None]
            if pts:
                ax.scatter(*zip(*pts), s=12, color=color, alpha=0.35, marker=marker)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel(unit)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title + "   (faint points: single rounds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- Host and versions -------------------------------------------------------------------------------------
def host_info() -> dict:
    from tritonkit.hardware import detect
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    hw = detect()
    return {"cpu_cores": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "cpu_model": model,
            "gpu": hw.describe(), "has_gpu": hw.has_gpu, "gpu_note": hw.note,
            "gpus": [g.name for g in hw.gpus], "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg()}


def versions(pa: PerfAnalyzer) -> dict:
    from importlib import metadata

    import tritonkit
    out = {"python": platform.python_version(), "tritonkit": tritonkit.__version__, "perf_analyzer": pa.version}
    for dist in ("tritonclient", "grpcio", "numpy", "onnxruntime", "onnx", "nvidia-pytriton", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    # The kit's load generator may be uncommitted work: tie the figures to the exact source measured.
    import hashlib
    sources = sorted((ROOT / "tritonkit").glob("*.py"))
    out["tritonkit_source_sha256"] = hashlib.sha256(b"".join(f.name.encode() + f.read_bytes() for f in sources)).hexdigest()
    out["tritonkit_load_sha256"] = {f: hashlib.sha256((ROOT / "tritonkit" / f).read_bytes()).hexdigest()[:16]
                                    for f in ("load.py", "drivers.py", "stats.py") if (ROOT / "tritonkit" / f).exists()}
    try:
        out["git_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                           text=True, timeout=10).stdout.strip()
        out["git_dirty"] = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                                               capture_output=True, text=True, timeout=10).stdout.strip())
    except OSError:
        pass
    return out


# --- Setup: spec -> render -> build -------------------------------------------------------------------------
def kit(*argv: str) -> None:
    """`tritonkit <argv>` as a user runs it (this interpreter), its output shown; a failure stops the run."""
    cmd = [sys.executable, "-m", "tritonkit.cli", *argv]
    print("$ tritonkit " + shlex.join(argv), flush=True)
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    if rc != 0:
        raise SystemExit(f"`tritonkit {shlex.join(argv)}` exited {rc}; see its output above. "
                         f"Command to reproduce error: {shlex.join(cmd)}")


def unbound_queues(repo: Path) -> None:
    """--queue unbounded: the rendered plan re-written without any queue policy (and plan.json says so)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from queue_policy_bursts import unbounded

    from tritonkit.plan_file import read_plans
    from tritonkit.render import write_repository
    print("queues: unbounded (the plan's default_queue_policy removed)", flush=True)
    write_repository(tuple(unbounded(p) for p in read_plans(repo)), repo)


# --- Main ------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=sorted(CASES), required=True)
    ap.add_argument("--levels", default=None, help="concurrency levels, e.g. 1,4,16,32 (default: the case's)")
    ap.add_argument("--requests", type=int, default=None,
                    help="K: sample size of each tool's figure per level and round (default: the case's)")
    ap.add_argument("--warmup", type=int, default=None, help="the kit's warm-up requests per level (default: the case's)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per level, tools alternating first (default 3)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: benchmarks/results/bench_vs_perf_analyzer/<case>/")
    ap.add_argument("--work", type=Path, default=None, help="where the spec and repository go (default: a new /tmp dir)")
    ap.add_argument("--repo", type=Path, default=None, help="an already built repository of this case (skips render/build)")
    ap.add_argument("--processes", type=int, default=None, help="the kit's client processes (default: run_bench's)")
    ap.add_argument("--queue", choices=("plan", "unbounded"), default="plan",
                    help="the server's queues: as the kit's plan bounds them, or unbounded (no default_queue_policy: "
                         "Triton 2.51's batcher then prefetches and never parks a request for its 500 ms re-check, "
                         "server#8870), so a very fast model measures the load generators, not that server bug")
    ap.add_argument("--split-cores", action="store_true",
                    help="server on one half of the cores, both clients on the other: neither tool's own CPU can "
                         "then slow the server it measures (on a small host the one using less CPU otherwise "
                         "measures a faster server)")
    pa = ap.add_argument_group("perf_analyzer")
    pa.add_argument("--perf-analyzer", default=os.environ.get("PERF_ANALYZER"),
                    help="perf_analyzer binary (default: $PERF_ANALYZER); see " + SETUP_SCRIPT)
    pa.add_argument("--cuda-lib", default=os.environ.get("PERF_ANALYZER_CUDA_LIB"),
                    help="folder with libcudart.so.12 (default: $PERF_ANALYZER_CUDA_LIB)")
    pa.add_argument("--pa-async", action="store_true",
                    help="perf_analyzer's --async mode (requests in flight driven by a few threads with completion "
                         "queues) instead of its default synchronous mode (one thread per request in flight)")
    pa.add_argument("--pa-stability", type=float, default=None,
                    help="turn perf_analyzer's stability gate on: -s PCT (its own default is 10); default: off, "
                         "its first 3 windows are the figure")
    pa.add_argument("--pa-max-trials", type=int, default=PA_GATE_MAX_TRIALS,
                    help=f"with --pa-stability: -r, windows before it gives up (default {PA_GATE_MAX_TRIALS})")
    args = ap.parse_args(argv)
    case = CASES[args.case]
    args.levels = tuple(int(x) for x in args.levels.split(",")) if args.levels else case.levels
    args.requests = args.requests or case.requests
    args.warmup = case.warmup if args.warmup is None else args.warmup
    args.pa_gate = (args.pa_stability, args.pa_max_trials) if args.pa_stability is not None else PA_GATE_OFF
    args.out = args.out or ROOT / "benchmarks" / "results" / "bench_vs_perf_analyzer" / (
        case.name + ("-unbounded-queue" if args.queue == "unbounded" else ""))
    if min(args.levels) < 1 or args.requests < 3 or args.rounds < 1 or args.warmup < 0:
        ap.error("levels >= 1, --requests >= 3, --rounds >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).name, str(Path(__file__).relative_to(ROOT)),
                          *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args, command)
    except Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from tritonkit.errors import UserError
        if isinstance(exc, UserError):
            print(f"error: {exc}\nCommand to reproduce error: {command}", file=sys.stderr)
            return exc.exit_code
        raise


def run(args: argparse.Namespace, command: str) -> int:
    case = CASES[args.case]
    pa = locate_perf_analyzer(args.perf_analyzer, args.cuda_lib)
    print(f"perf_analyzer: {pa.binary} ({pa.version})", flush=True)
    host = host_info()
    if case.gpu == "auto" and not host["has_gpu"]:
        raise Unavailable(f"no GPU detected on this host ({host['gpu_note']}): case {case.name} renders for "
                          "the detected GPU; "
                          "run it on a GPU host, or run mlp-cpu / minilm-cpu here")

    from rich.console import Console

    from tritonkit.serve import EmbeddedServer, ServerOptions

    work = args.work or Path(tempfile.mkdtemp(prefix=f"tk-bvp-{case.name}-"))
    work.mkdir(parents=True, exist_ok=True)
    workload = WORKLOADS[case.workload]
    spec = workload.spec(work)
    repo = args.repo
    if repo is None:
        repo = work / "model_repository"
        kit("render", "--spec", str(spec), "--gpu", case.gpu, "--out", str(repo))
        if args.queue == "unbounded":
            unbound_queues(repo)
        kit("build", "--repo", str(repo))
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / "raw"
    raw.mkdir(exist_ok=True)
    for old in raw.glob("pa-*"):
        old.unlink()

    window = math.ceil(args.requests / 3)      # 3 merged windows >= K requests
    from tritonkit.process import free_ports
    http, grpc, metrics = free_ports(3)
    opts = ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
                         log_file=raw / "tritonserver.log")
    rounds: list[dict] = []
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with EmbeddedServer(opts) as server:
        target = workload.target(spec, server.grpc_url)
        if case.text is not None:
            target = dataclasses.replace(target, texts=(target.texts[case.text],))
        data = raw / f"{case.workload}_input_data.json"   # next to the logs whose commands name it
        data.write_text(json.dumps(perf_analyzer_input_data(target)))
        extra = ["--async"] * args.pa_async + ["--input-data", str(data)] + sum((["--shape", f"{s.name}:{','.join(map(str, s.shape[1:]))}"]
                                                   for s in target.inputs if s.dtype != "BYTES"), [])
        pids = server_pids()
        cores = split_cores(pids) if args.split_cores else None
        if cores:
            print(f"cores: server {cores['server']}, clients {cores['clients']}", flush=True)
        print(f"server {server.server_version} on gRPC {server.grpc_url} (pids {pids}), repository {repo} "
              f"(reuse it with --repo); case {case.name}: "
              f"levels {list(args.levels)}, K={args.requests} requests per figure "
              f"(perf_analyzer windows of >= {window}), kit warm-up {args.warmup}, {args.rounds} round(s)",
              flush=True)
        # Untimed: warms the server (sessions, batcher, stubs) so round 0 measures what round 1 does.
        measure_kit(target, max(args.levels), args.requests, args.warmup, args.processes, pids)
        pa_requests: dict[int, int] = {}
        for rnd in range(args.rounds):
            for n in args.levels:
                order = ("perf_analyzer", "kit") if rnd % 2 == 0 else ("kit", "perf_analyzer")
                entry: dict = {"round": rnd, "concurrency": n, "order": list(order)}
                for tool in order:
                    if tool == "perf_analyzer":
                        r = measure_pa(pa, server.grpc_url, target, n, window, extra, raw, f"pa-r{rnd}-c{n}",
                                       args, pids)
                        if r.get("requests"):
                            pa_requests[n] = r["requests"]
                        shown = (f"{r['throughput_rps']:.1f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f}"
                                 f" ms, {r['requests']} requests in {r['windows']} windows, "
                                 f"{r['cpu_cores']:.2f} cores" if "throughput_rps" in r else f"no figure: {r['error']}")
                        shown += f"; {r['served_requests']} requests served in {r['wall_s']:.1f} s"
                    else:
                        k = pa_requests.get(n, args.requests)
                        r = measure_kit(target, n, k, args.warmup, args.processes, pids)
                        shown = (f"{r['throughput_rps']:.1f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                                 f"{r['requests']} requests, {r['errors']} errors, {r['client_cpu_cores']:.2f} cores"
                                 + (f", client-bound: {r['client_bound']}" if r["client_bound"] else ""))
                    entry[tool] = r
                    print(f"round {rnd} c={n:<3} {tool:>13}: {shown}; CPU ms/request: client "
                          f"{_fmt(r['client_ms_per_request'], 3)}, server {_fmt(r['server_ms_per_request'], 3)}; "
                          f"other {r['other_cores']:.2f} cores", flush=True)
                rounds.append(entry)
        server_version = server.server_version

    levels = [summarize_level(n, [r for r in rounds if r["concurrency"] == n]) for n in args.levels]
    passed = all(lv["passed"] for lv in levels)
    label = (f"{case.name}: {case.what}; {host['cpu_cores']} cores ({host['cpu_model'] or 'CPU'}), "
             f"{', '.join(host['gpus']) or 'no GPU'}; Triton {server_version}, gRPC, K={args.requests}, "
             f"{args.rounds} round(s)" + (", queues unbounded" if args.queue == "unbounded" else ""))
    record = {
        "schema": SCHEMA, "case": case.name, "description": case.what, "command": command, "started_at": started,
        "host": host, "versions": versions(pa),
        "settings": {"levels": list(args.levels), "requests_per_figure": args.requests,
                     "perf_analyzer_window_requests": window, "kit_warmup_requests": args.warmup,
                     "rounds": args.rounds, "kit_processes": args.processes, "split_cores": cores,
                     "queue": args.queue,
                     "perf_analyzer_stability_pct": args.pa_gate[0], "perf_analyzer_max_trials": args.pa_gate[1],
                     "perf_analyzer_gate": "on" if args.pa_stability is not None else "off",
                     "perf_analyzer_args": extra, "texts": list(target.texts), "repository": str(repo),
                     "spec": str(spec),
                     "server_version": server_version},
        "targets": {m: TARGETS[m][1] + " of perf_analyzer's" for m in METRICS},
        "levels": _clean(levels), "rounds": _clean(rounds), "passed": passed,
    }
    (args.out / "bench_vs_perf_analyzer.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(levels, rounds, args.out / "bench_vs_perf_analyzer.png", label)
    tbl = table(levels, label)
    Console(width=max(Console().width, TABLE_WIDTH)).print(tbl)
    buf = io.StringIO()
    Console(file=buf, width=TABLE_WIDTH, no_color=True, force_terminal=False).print(tbl)
    notes = (f"Medians over {args.rounds} round(s); ratios are kit / perf_analyzer of those medians; targets: "
             f"throughput {TARGETS['throughput_rps'][1]}, p50 and p99 {TARGETS['p50_ms'][1]}.\n"
             "CPU ms/req: CPU time per request served (client: perf_analyzer's rusage over all its windows, the "
             "kit's level accounting; server: tritonserver + python stubs); other cores: the rest of the machine.\n")
    (args.out / "bench_vs_perf_analyzer.txt").write_text(buf.getvalue() + notes)
    print(f"wrote {args.out}/bench_vs_perf_analyzer.{{json,png,txt}} (raw perf_analyzer CSV/logs in {raw})")
    print(("PASSED" if passed else "FAILED") + f": {command}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
