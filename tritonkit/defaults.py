"""Every default and every pin, in one place. Other modules import from here; nothing else hard-codes these."""

from __future__ import annotations

from pathlib import Path

# --- Pins that must match each other -------------------------------------------------------------
# NGC release used for the serving image and the TensorRT build image: plans built in
# tensorrt:<release> load in tritonserver:<release> and nowhere else.
# 26.10: CUDA 13.4.3, compute capability 7.5 and later
# (https://docs.nvidia.com/deeplearning/triton-inference-server/release-notes/rel-26-10.html).
NGC_RELEASE = "26.10"
NGC_TRITON_IMAGE = f"nvcr.io/nvidia/tritonserver:{NGC_RELEASE}-py3"
NGC_TENSORRT_IMAGE = f"nvcr.io/nvidia/tensorrt:{NGC_RELEASE}-py3"
# Server version inside NGC_TRITON_IMAGE: Triton's monthly releases number 2.N for container YY.MM (r26.08 is
# 2.72.0; the main branch "tracks 2.73.0 / 26.09", triton-inference-server/server#8931), so 26.10 is 2.74.0.
NGC_TRITON_VERSION = "2.74.0"
# TensorRT inside both NGC images of NGC_RELEASE: 11.4.0, the TensorRT built against CUDA 13.4 when 26.10 came
# out (https://docs.nvidia.com/deeplearning/tensorrt/latest/getting-started/release-notes-11/11.4.0.html;
# PyPI tensorrt 11.4.0.106). Not read from the image here (no registry is reachable): a build by any other
# TensorRT is refused (trt_engine.require_build_host), so a wrong pin fails loudly in the container.
NGC_TENSORRT_VERSION = "11.4.0"
# First NGC release with the fixes of NVIDIA's 2025 Triton security bulletins (CVE-2025-23310/23317/
# 23319 and others, fixed in 25.07): rendering for an older release is refused unless overridden.
NGC_SECURE_FLOOR = "25.07"
# Embedded server: the tritonserver binary bundled in the PyPI wheel nvidia-pytriton==0.7.0.
EMBEDDED_TRITON_VERSION = "2.51.0"  # Triton 24.10 era: development/CI use only (predates 2025 fixes)
# Its python backend stub was built before NumPy 2: under NumPy 2 it misreads BYTES tensors (seen on an
# H100 host: the tokenizer aborted in deserialize_bytes_tensor), so the stub's environment must have NumPy 1.
STUB_NUMPY_MAX_MAJOR = 1

# --- Paths ---------------------------------------------------------------------------------------
PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = PROJECT_ROOT / "templates"
DEFAULT_SPEC = PROJECT_ROOT / "deploy" / "models.yaml"
DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository"
DEFAULT_REPORTS = PROJECT_ROOT / "reports"

# --- Server --------------------------------------------------------------------------------------
BIND_ADDRESS = "127.0.0.1"      # never 0.0.0.0 unless the user asks
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
SERVER_READY_TIMEOUT_S = 600.0  # model loading included: ONNX sessions, warmup, a cold max-autotune compile (~3 min on an H100)
SERVER_EXIT_TIMEOUT_S = 30      # tritonserver --exit-timeout-secs: in-flight requests may finish

# --- Export / build ------------------------------------------------------------------------------
ONNX_OPSET = 17
# Inputs used to validate an export against its source model (real sentences, varied lengths).
VALIDATION_SENTENCES = (
    "Triton serves models from a repository of versioned directories.",
    "A T4 has forty streaming multiprocessors.",
    "Short.",
    "The quick brown fox jumps over the lazy dog while the server batches requests dynamically "
    "to keep the GPU busy and the tail latency inside its budget.",
)

# --- Policy knobs --------------------------------------------------------------------------------
# Dynamic batching may spend this share of the p99 budget waiting for a batch to fill...
QUEUE_DELAY_BUDGET_SHARE = 0.05
# ...but never more than this (beyond it batching buys little and tail latency pays).
QUEUE_DELAY_MAX_US = 2_000
# Bounded queue: this many full batches may wait (beyond it, requests are rejected at once).
QUEUE_BATCHES = 4
# A bounded queue (any default_queue_policy) turns off the dynamic batcher's prefetching: it then wakes
# for a new request only while an instance is parked waiting for work, and requests that arrive while
# every instance is busy can sit until its idle re-check, every 500 ms (hard-coded in Triton's
# dynamic_batch_scheduler.cc; upstream: triton-inference-server/server#8870). Measured on 2.51, bursts of
# 2-12 requests after idle (benchmarks/queue_policy_bursts.py): with one tokenizer instance 7-8% were
# rejected by a 500 ms queue timeout; two instances make the wait rare, and a timeout above the re-check
# turns it into a late answer instead of an error.
TRITON_BATCHER_RECHECK_US = 500_000
MIN_INSTANCES_WITH_QUEUE_POLICY = 2
SPEC_INSTANCES_MAX = 64            # a spec's `instances:` (each is a process for the python backend)
# Requests queued longer than this multiple of the p99 budget are rejected (shed load, don't queue
# forever), but never sooner than the batcher's re-check plus the budget (above). Not 1x: a request that
# is merely slow should be answered late rather than failed.
QUEUE_TIMEOUT_BUDGET_SHARE = 2.0

# torch._inductor's SM threshold for max_autotune GEMMs (utils.is_big_gpu); read from the installed
# torch at run time when it imports (tritonkit/torch_facts.py), this value only when it does not.
INDUCTOR_MIN_SMS = 68
# GPU memory the policy lets weights of all instances take (the rest: activations, workspace, CUDA).
GPU_WEIGHTS_MEMORY_SHARE = 0.5

# Image pipelines refuse a request whose image is larger than this (bytes, or pixels once its header is read):
# a decompression bomb must cost one error, not the server's memory.
IMAGE_MAX_BYTES = 20 * 2**20
IMAGE_MAX_PIXELS = 40_000_000

# --- Bench ---------------------------------------------------------------------------------------
BENCH_CONCURRENCY = (1, 2, 4, 8)
BENCH_REQUESTS_PER_LEVEL = 200
BENCH_WARMUP_REQUESTS = 20
BENCH_REQUEST_TIMEOUT_S = 30.0  # per request: bounds every level in time
# Open loop (--request-rate, --find-capacity): each rate is offered this long (rate x this many requests).
BENCH_OPEN_LOOP_S = 5.0
# Capacity search: grow the rate by this factor until a step fails, then bisect to this relative precision;
# at most this many steps (each BENCH_OPEN_LOOP_S) before the confirming re-run.
CAPACITY_GROWTH = 1.5
CAPACITY_PRECISION = 0.05
CAPACITY_MAX_STEPS = 12
# Confirming the best rate: up to this many tries, each CAPACITY_PRECISION lower (0.95^12 = 0.54 of it).
CAPACITY_CONFIRM_STEPS = 12

# --- TensorRT build ------------------------------------------------------------------------------
# builderOptimizationLevel: 0..5; 3 is TensorRT's own default (higher: longer builds, sometimes faster plans).
TRT_BUILDER_OPTIMIZATION_LEVEL = 3
# Workspace memory pool: min(this cap, this share of the GPU's memory).
TRT_WORKSPACE_MAX_BYTES = 4 * 1024**3
TRT_WORKSPACE_MEMORY_SHARE = 0.25
# Timing caches and intermediate ONNX files live here, next to the model repository (git-ignored).
TRT_CACHE_DIR = ".cache/tritonkit"
# Seed of the synthetic inputs a plan is validated on when the spec has no real ones (non-text models).
VALIDATION_SEED = 0
# The INT8/FP8 Q/DQ graph TensorRT 11 builds from (tritonkit/qdq.py: NVIDIA ModelOpt ONNX PTQ, then gated on the CPU).
# Chosen by measurement on MiniLM-L6 (30 calibration sentences deploy/sentences.txt + the 4 held-out validation
# sentences, gate of tolerance.int8 vs SentenceTransformer.encode: min cosine 0.99, neighbour overlap 0.9):
# - only the GEMM-like ops get Q/DQ (TensorRT's INT8/FP8 kernels): ModelOpt's default INT8 set (Add, Mul too, so the
#   residual stream) gave min cosine 0.772;
# - "max" calibration: 0.962 before any op was kept, 7 ops kept to pass (0.9902); "entropy": 0.970, but 8 kept to
#   pass (0.9908). Percentile is no option of ModelOpt's ONNX PTQ;
# - ops left unquantized are FP16 in the graph, which TensorRT 11 obeys: FP32 there would make the INT8 plan slower
#   than the FP16 plan it replaces (and needed 8 kept ops instead of 7).
QDQ_OP_TYPES = ("MatMul", "Gemm", "Conv")
QDQ_CALIBRATION_METHOD = "max"
QDQ_HIGH_PRECISION = "fp16"

# --- Reliability ---------------------------------------------------------------------------------
# `tritonkit serve` watches what tritonserver 2.51 does not report: a python backend stub that died
# (kill -9, OOM killer) leaves its model READY while every request to it fails ("Stub process ... is
# not healthy"), and 2.51 never restarts the stub. Every WATCHDOG_INTERVAL_S serve() checks each model
# that was ready at start (its readiness, and that its stubs are alive); a model still unhealthy after
# WATCHDOG_GRACE_S (time for a server that recovers on its own) stops serve() with exit code 2.
WATCHDOG_INTERVAL_S = 1.0
WATCHDOG_GRACE_S = 3.0
# ...and then stops tritonserver with this much grace instead of the exit timeout: 2.51 never finishes
# unloading a model whose stub died, so a graceful stop would always run the full SERVER_EXIT_TIMEOUT_S.
WATCHDOG_STOP_S = 5.0

# --- Kubernetes fleet (tritonkit k8s) --------------------------------------------------------------
# The model repository reaches the pods on a PersistentVolumeClaim (ReadWriteMany: NFS, CephFS, EFS,
# Filestore...), filled once through the loader pod and mounted read-only by every product's pods.
K8S_REPOSITORY_CLAIM = "tritonkit-model-repository"
K8S_REPOSITORY_SIZE = "20Gi"
K8S_REPOSITORY_MOUNT = "/models"            # the repository is <mount>/model_repository
# The CPU-only image of the embedded server (deploy/docker/triton-cpu.Dockerfile): push it to a registry
# the cluster pulls from and name it in the kustomization's `images:`.
K8S_EMBEDDED_IMAGE = "tritonkit/triton-cpu:local"
# Triton's metrics port is scraped by Prometheus in this namespace (NetworkPolicy); clients reach 8000/8001.
K8S_MONITORING_NAMESPACE = "monitoring"
K8S_SHM_SIZE = "1Gi"                        # python backend tensors travel through /dev/shm (Kubernetes gives 64 MiB)
# HPA: add pods when requests wait in Triton's queues as long as they compute (queue/compute ratio 1, the
# ratio Triton's autoscaling tutorials scale on); Prometheus rate window of the adapter rule.
K8S_QUEUE_COMPUTE_TARGET = 1.0
K8S_RATE_WINDOW = "1m"
# Replicas: without a measured capacity, this many per product (two keep serving through a node drain)...
K8S_MIN_REPLICAS = 2
K8S_MAX_REPLICAS = 4
# ...with one, each product can carry the peak alone at this share of its measured capacity (headroom for
# the minute the HPA needs to add pods, and for a pod lost).
K8S_CAPACITY_SHARE = 0.7
# Startup window: a pod that is not ready after this long is restarted. Base (server start, python stubs)
# plus the slowest model's load, by what it loads: plan deserialisation, ONNX sessions, a cold torch compile.
K8S_STARTUP_BASE_S = 60
K8S_STARTUP_S = {   # by TritonModel.label
    "ensemble": 0, "python (tokenizers)": 30, "onnxruntime": 60, "python (onnxruntime)": 60, "tensorrt": 120,
    "pytorch": 120, "onnxruntime (tensorrt-ep)": 600, "python (torch)": 600,   # engines built / compiled at load
    "python (torch-program)": 600,
}
# Requests per pod: a core per CPU instance (ONNX Runtime threads) and this much memory, plus 2x the built
# artifacts when the repository is built (weights are loaded per instance, plus the runtime's copies).
K8S_CPU_PER_POD = 1                         # server, gRPC/HTTP frontends, python stubs
K8S_MEMORY_BASE = 2 * 1024**3
