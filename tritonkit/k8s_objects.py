"""Plan -> Kubernetes objects (plain dicts): one Deployment, HPA and PodDisruptionBudget per GPU product
(plus the CPU-only variant), and what they share: a Service, a NetworkPolicy, the repository's claim.

Pure: the plans, their replica counts and the spec's weight sizes in, objects out. Every value that
matters comes from the plan (images and server flags from its server target, the variant each pod
loads, instance counts, the load window) or from defaults.py.
"""

from __future__ import annotations

import math
import shlex

from . import defaults
from .catalogue import GFD_PRODUCTS
from .errors import UserError
from .k8s_sizing import Replicas
from .plan import Plan
from .render import variant_name
from .serve import DEFAULT_RESTRICTED_APIS

APP = {"app.kubernetes.io/name": "tritonkit", "app.kubernetes.io/component": "triton"}
VARIANT_LABEL = "tritonkit.io/variant"
PRODUCT_LABEL = "nvidia.com/gpu.product"          # GPU Feature Discovery
GPU_RESOURCE = "nvidia.com/gpu"                   # NVIDIA device plugin
ADMIN_HEADER = "tritonkit-admin"
ADMIN_SECRET = "tritonkit-admin"                  # optional Secret with key `token`; else a random one per start
RATIO_METRIC = "tritonkit_queue_compute_ratio"    # served by prometheus-adapter (monitoring/)
PORTS = (("http", defaults.HTTP_PORT), ("grpc", defaults.GRPC_PORT), ("metrics", defaults.METRICS_PORT))
REPOSITORY = f"{defaults.K8S_REPOSITORY_MOUNT}/model_repository"
MIB = 1024 ** 2


def check_fleet(plans: tuple[Plan, ...]) -> None:
    """What a plan must be to run on a cluster; UserError (exit 2) otherwise."""
    names = [variant_name(p) for p in plans]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError("two products of the fleet share a variant name", where="--gpu",
                        actual=[p.gpu.name if p.gpu else "CPU" for p in plans if variant_name(p) in dupes],
                        expected="one variant per product", fix="give custom GPUs distinct names (name=...)")
    for p in plans:
        if p.gpu is not None and not GFD_PRODUCTS.get(p.gpu.name):
            raise UserError("GPU without a known GPU Feature Discovery product label", where="--gpu",
                            actual=p.gpu.name, expected=f"one of {sorted(GFD_PRODUCTS)}",
                            fix="plan for a catalogue GPU that nodes label as nvidia.com/gpu.product")
        if p.gpu is not None and p.server.name == "embedded":
            raise UserError("the embedded server's image is CPU-only", where="--server", actual="embedded",
                            expected="ngc for GPU nodes", fix="plan the fleet with --server ngc")
        pinned = sorted({i for m in p.models for g in m.instances for i in g.gpus})
        if pinned:
            raise UserError("the plan pins GPU indexes of one mixed host; a pod sees only its own GPU",
                            where=variant_name(p), actual=f"GPUs {pinned}", expected="no pinned GPUs",
                            fix="plan the fleet by product names: --gpu T4,L4,H100")


def _labels(variant: str) -> dict:
    return {**APP, VARIANT_LABEL: variant}


def _meta(name: str, labels: dict) -> dict:
    return {"name": name, "labels": dict(labels)}


def server_image(plan: Plan) -> str:
    """The pinned NGC image, or the embedded server's CPU image (which the user pushes to a registry)."""
    return defaults.NGC_TRITON_IMAGE if plan.server.name == "ngc" else defaults.K8S_EMBEDDED_IMAGE


def startup_window_s(plan: Plan) -> int:
    """Seconds a pod may take to become ready: the server's start plus its slowest model's load."""
    return defaults.K8S_STARTUP_BASE_S + max(defaults.K8S_STARTUP_S[m.label] for m in plan.models)


def _server_command(plan: Plan, fleet: bool) -> list[str]:
    """The container's command line, as the compose services start the same server."""
    ports = [f"--{name}-port={port}" for name, port in PORTS]
    if plan.server.name == "embedded":   # `tritonkit serve` restricts the admin APIs itself (random token)
        return ["tritonkit", "serve", "--repo", REPOSITORY, "--address", "0.0.0.0",
                *(arg for name, port in PORTS for arg in (f"--{name}-port", str(port)))]
    flags = [f"--model-repository={REPOSITORY}", *([f"--model-config-name={variant_name(plan)}"] if fleet else []),
             *ports, "--model-control-mode=none", "--strict-readiness=true", "--exit-on-error=true",
             f"--exit-timeout-secs={defaults.SERVER_EXIT_TIMEOUT_S}", "--metrics-config=summary_latencies=true"]
    # Same rule as deploy/docker/triton-entrypoint.sh: admin APIs behind a header whose value is the Secret's
    # token, or random per start (nobody can use them) when there is no Secret.
    script = (f'token="${{TRITON_ADMIN_TOKEN:-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d " \\n")}}"; '
              f'rule="{",".join(DEFAULT_RESTRICTED_APIS)}:{ADMIN_HEADER}=$token"; '
              f'exec tritonserver {shlex.join(flags)} --http-restricted-api="$rule" --grpc-restricted-protocol="$rule"')
    return ["/bin/sh", "-c", script]


def _resources(plan: Plan, weights: dict[str, int]) -> tuple[dict, str]:
    """Requests and limits, with the reason. CPU: the cores the plan sized its CPU instances for (or one
    per CPU instance besides the server's), no CPU limit (throttling shows as latency); memory: a base plus
    each CPU instance's copy of its model's weights, limit twice that; one GPU of the product."""
    cpu_instances = sum(g.count for m in plan.models for g in m.instances if g.kind == "KIND_CPU")
    cores = plan.hardware.cpu_cores if plan.gpu is None and plan.hardware.cpu_cores else \
        defaults.K8S_CPU_PER_POD + cpu_instances
    copies = sum(weights.get(m.source_model, 0) * sum(g.count if g.kind == "KIND_CPU" else 1 for g in m.instances)
                 for m in plan.models if m.role in ("encoder", "model"))   # tokenizers load no weights
    memory = math.ceil((defaults.K8S_MEMORY_BASE + copies) / MIB)
    requests = {"cpu": str(cores), "memory": f"{memory}Mi"}
    limits = {"memory": f"{2 * memory}Mi", **({GPU_RESOURCE: 1} if plan.gpu else {})}
    why = (f"cpu {cores} ({'the cores the plan sized its CPU instances for' if plan.gpu is None and plan.hardware.cpu_cores else f'{defaults.K8S_CPU_PER_POD} + {cpu_instances} CPU instance(s)'}; "
           f"no limit), memory {memory} MiB ({defaults.K8S_MEMORY_BASE // MIB} MiB + {math.ceil(copies / MIB)} MiB of "
           f"weights loaded), limit {2 * memory} MiB" + (f", 1 {plan.gpu.name}" if plan.gpu else ""))
    return {"requests": requests, "limits": limits}, why


def _affinity(plan: Plan) -> tuple[dict, list]:
    if plan.gpu is None:   # CPU pods keep off GPU nodes when they can: those cores feed the GPU pods
        term = {"weight": 100, "preference": {"matchExpressions": [{"key": PRODUCT_LABEL, "operator": "DoesNotExist"}]}}
        return {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [term]}}, []
    match = {"key": PRODUCT_LABEL, "operator": "In", "values": list(GFD_PRODUCTS[plan.gpu.name])}
    required = {"nodeSelectorTerms": [{"matchExpressions": [match]}]}
    toleration = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}   # tainted GPU node pools
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}, [toleration]


def deployment(plan: Plan, replicas: Replicas, weights: dict[str, int], fleet: bool) -> tuple[dict, str]:
    variant = variant_name(plan)
    labels = _labels(variant)
    resources, why = _resources(plan, weights)
    affinity, tolerations = _affinity(plan)
    window = startup_window_s(plan)
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}}
    image = server_image(plan)
    env = [{"name": "TRITON_ADMIN_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": ADMIN_SECRET, "key": "token", "optional": True}}}] \
        if plan.server.name == "ngc" else [{"name": "HOME", "value": "/tmp"}, {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"}]
    container = {
        "name": "tritonserver",
        "image": image,
        "command": _server_command(plan, fleet),
        "env": env,
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in PORTS],
        # Loading (TensorRT engines, ONNX sessions, a cold torch compile) may take the whole window; after it,
        # readiness takes a pod out of the Service within seconds and liveness restarts a hung server.
        "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": math.ceil(window / 10)},
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10,
                          "failureThreshold": 3},
        "resources": resources,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "privileged": False,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "model-repository", "mountPath": defaults.K8S_REPOSITORY_MOUNT, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    pod = {
        "automountServiceAccountToken": False,     # Triton never talks to the API server
        "enableServiceLinks": False,
        # Triton lets in-flight requests finish for --exit-timeout-secs after SIGTERM.
        "terminationGracePeriodSeconds": defaults.SERVER_EXIT_TIMEOUT_S + 15,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "affinity": affinity,
        **({"tolerations": tolerations} if tolerations else {}),
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": labels}}],
        "containers": [container],
        "volumes": [
            {"name": "model-repository",
             "persistentVolumeClaim": {"claimName": defaults.K8S_REPOSITORY_CLAIM, "readOnly": True}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": defaults.K8S_SHM_SIZE}},
        ],
    }
    obj = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(f"triton-{variant}", labels),
        "spec": {
            "replicas": replicas.min,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": labels},
            # A new pod must be ready before an old one goes: GPUs are scarce, capacity must not dip.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
    return obj, why


def autoscaler(plan: Plan, replicas: Replicas) -> dict:
    variant = variant_name(plan)
    target = {"type": "AverageValue", "averageValue": f"{round(defaults.K8S_QUEUE_COMPUTE_TARGET * 1000)}m"}
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(f"triton-{variant}", _labels(variant)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"triton-{variant}"},
            "minReplicas": replicas.min, "maxReplicas": replicas.max,
            "metrics": [{"type": "Pods", "pods": {"metric": {"name": RATIO_METRIC}, "target": target}}],
            # Up at once (a queue grows fast), down slowly (a new GPU pod takes minutes to load).
            "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0,
                                     "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]},
                         "scaleDown": {"stabilizationWindowSeconds": 300,
                                       "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]}},
        },
    }


def disruption_budget(plan: Plan) -> dict:
    variant = variant_name(plan)
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _meta(f"triton-{variant}", _labels(variant)),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(variant)}}}


def services() -> list[dict]:
    """One Service across every product; a headless twin for gRPC clients that balance per request
    (a ClusterIP balances connections, and a gRPC channel is one long-lived connection)."""
    ports = [{"name": name, "port": port, "targetPort": name, "protocol": "TCP"} for name, port in PORTS]
    plain = {"apiVersion": "v1", "kind": "Service", "metadata": _meta("triton", APP),
             "spec": {"type": "ClusterIP", "selector": dict(APP), "ports": ports}}
    headless = {"apiVersion": "v1", "kind": "Service", "metadata": _meta("triton-headless", APP),
                "spec": {"clusterIP": "None", "selector": dict(APP), "ports": ports}}
    return [plain, headless]


def network_policy() -> dict:
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": defaults.K8S_MONITORING_NAMESPACE}}}
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta("triton", APP),
        "spec": {
            "podSelector": {"matchLabels": dict(APP)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"ports": [{"protocol": "TCP", "port": defaults.HTTP_PORT}, {"protocol": "TCP", "port": defaults.GRPC_PORT}]},
                {"from": [monitoring], "ports": [{"protocol": "TCP", "port": defaults.METRICS_PORT}]},
            ],
            "egress": [],   # Triton opens no connection: the repository is a volume, nothing is downloaded
        },
    }


def repository_claim() -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _meta(defaults.K8S_REPOSITORY_CLAIM, {"app.kubernetes.io/name": "tritonkit"}),
            "spec": {"accessModes": ["ReadWriteMany"],   # the loader writes once; Triton pods mount it read-only
                     "resources": {"requests": {"storage": defaults.K8S_REPOSITORY_SIZE}}}}


def loader_pod(plan: Plan) -> dict:
    """A pod that mounts the claim read-write, for `kubectl cp` of the built repository (it holds `tar`)."""
    image = server_image(plan)
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": _meta("tritonkit-repository-loader", {"app.kubernetes.io/name": "tritonkit",
                                                          "app.kubernetes.io/component": "repository-loader"}),
        "spec": {
            "automountServiceAccountToken": False, "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "loader", "image": image, "command": ["sleep", "3600"],
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
                "volumeMounts": [{"name": "model-repository", "mountPath": defaults.K8S_REPOSITORY_MOUNT}],
            }],
            "volumes": [{"name": "model-repository",
                         "persistentVolumeClaim": {"claimName": defaults.K8S_REPOSITORY_CLAIM}}],
        },
    }


def service_monitor() -> dict:
    """Prometheus Operator scrape of every Triton pod's metrics port (a CRD: kubectl apply -k monitoring/)."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": _meta("triton", APP),
            "spec": {"selector": {"matchLabels": dict(APP)},
                     "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}]}}


# Triton counters the autoscaling ratio reads (cumulative microseconds per model); the test checks each name
# against a real server's /metrics.
QUEUE_METRIC = "nv_inference_queue_duration_us"
COMPUTE_METRIC = "nv_inference_compute_infer_duration_us"


def adapter_rules(plans: tuple[Plan, ...]) -> dict:
    """prometheus-adapter rule (helm values of prometheus-community/prometheus-adapter): per pod, the time
    requests waited in Triton's queues per unit of compute time. Summed over the composing models only: an
    ensemble's own counters repeat its steps' (server#8979: averages over many loaded models mislead)."""
    models = sorted({m.name for p in plans for m in p.models if m.backend != "ensemble"})
    match = f'<<.LabelMatchers>>,model=~"{"|".join(models)}"'
    window = defaults.K8S_RATE_WINDOW
    query = (f"sum by (<<.GroupBy>>) (rate({QUEUE_METRIC}{{{match}}}[{window}]))"
             f" / clamp_min(sum by (<<.GroupBy>>) (rate({COMPUTE_METRIC}{{{match}}}[{window}])), 1)")
    rule = {"seriesQuery": f'{QUEUE_METRIC}{{namespace!="",pod!=""}}',
            "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
            "name": {"matches": f"^{QUEUE_METRIC}$", "as": RATIO_METRIC},
            "metricsQuery": query}
    return {"rules": {"default": False, "custom": [rule]}}
