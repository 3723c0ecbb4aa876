"""What each serving Triton can run: the policy reads this table, it never guesses."""

from __future__ import annotations

from dataclasses import dataclass

from . import defaults


@dataclass(frozen=True)
class ServerTarget:
    name: str
    triton_version: str
    backends: frozenset[str]
    image: str | None              # container image; None = a local process
    tensorrt_version: str | None   # TensorRT the server loads plans with; None = cannot serve plans
    development_only: bool
    note: str


SERVERS: dict[str, ServerTarget] = {
    "ngc": ServerTarget(
        name="ngc", triton_version=defaults.NGC_TRITON_VERSION,
        backends=frozenset({"tensorrt", "onnxruntime", "pytorch", "python", "ensemble"}),
        image=defaults.NGC_TRITON_IMAGE, tensorrt_version=defaults.NGC_TENSORRT_VERSION, development_only=False,
        note=f"NGC {defaults.NGC_TRITON_IMAGE}; plans are built in {defaults.NGC_TENSORRT_IMAGE} (same TensorRT)"),
    "embedded": ServerTarget(
        name="embedded", triton_version=defaults.EMBEDDED_TRITON_VERSION,
        backends=frozenset({"python", "ensemble"}), image=None, tensorrt_version=None, development_only=True,
        note=f"tritonserver {defaults.EMBEDDED_TRITON_VERSION} from the PyPI wheel nvidia-pytriton (python backend "
             "only); development/CI use: it predates the 2025 Triton security fixes"),
}


def server_target(name: str) -> ServerTarget:
    from .errors import UserError
    if name not in SERVERS:
        raise UserError("unknown server", where="--server", actual=name, expected=f"one of {sorted(SERVERS)}")
    return SERVERS[name]
