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
    min_compute_capability: tuple[int, int] = (0, 0)   # oldest GPU the server's CUDA build supports


# Oldest GPU each NGC release supports, from its release notes' "GPU Requirements" ("Release YY.MM supports CUDA
# compute capability X and later"), newest first; a release takes the first row at or below it.
# 25.03 .. 26.10: 7.5 (docs.nvidia.com/deeplearning/triton-inference-server/release-notes/rel-25-03.html ... rel-26-10.html)
# 24.10 and before: 6.0 (.../rel-24-10.html); 24.11-25.02 were not checked and are taken as 24.10.
NGC_MIN_COMPUTE_CAPABILITY = (((25, 3), (7, 5)), ((0, 0), (6, 0)))


def min_compute_capability(release: tuple[int, int]) -> tuple[int, int]:
    return next(cc for first, cc in NGC_MIN_COMPUTE_CAPABILITY if release >= first)


def _release(text: str) -> tuple[int, int]:
    import re

    from .errors import UserError
    m = re.fullmatch(r"(\d{2})\.(\d{2})", text)
    if not m:
        raise UserError("not an NGC release", where="--ngc-release", actual=text, expected="YY.MM, e.g. 26.10")
    return int(m.group(1)), int(m.group(2))


SERVERS: dict[str, ServerTarget] = {
    "ngc": ServerTarget(
        name="ngc", triton_version=defaults.NGC_TRITON_VERSION,
        backends=frozenset({"tensorrt", "onnxruntime", "pytorch", "python", "ensemble"}),
        image=defaults.NGC_TRITON_IMAGE, tensorrt_version=defaults.NGC_TENSORRT_VERSION, development_only=False,
        note=f"NGC {defaults.NGC_TRITON_IMAGE}; plans are built in {defaults.NGC_TENSORRT_IMAGE} (same TensorRT "
             f"{defaults.NGC_TENSORRT_VERSION})",
        min_compute_capability=min_compute_capability(_release(defaults.NGC_RELEASE))),
    "embedded": ServerTarget(
        name="embedded", triton_version=defaults.EMBEDDED_TRITON_VERSION,
        backends=frozenset({"python", "ensemble"}), image=None, tensorrt_version=None, development_only=True,
        note=f"tritonserver {defaults.EMBEDDED_TRITON_VERSION} from the PyPI wheel nvidia-pytriton (python backend "
             "only); development/CI use: it predates the 2025 Triton security fixes"),
}


def server_target(name: str, ngc_release: str | None = None, allow_insecure: bool = False) -> ServerTarget:
    """The serving Triton. `ngc_release` other than the pinned one: its image tag, versions unverified
    (so no TensorRT plans), and refused below the security floor unless `allow_insecure`."""
    from dataclasses import replace

    from .errors import UserError
    if name not in SERVERS:
        raise UserError("unknown server", where="--server", actual=name, expected=f"one of {sorted(SERVERS)}")
    target = SERVERS[name]
    if name != "ngc" or ngc_release in (None, defaults.NGC_RELEASE):
        return target
    if _release(ngc_release) < _release(defaults.NGC_SECURE_FLOOR) and not allow_insecure:
        raise UserError("this NGC release predates the fixes of the 2025 Triton security bulletins",
                        where="--ngc-release", actual=ngc_release, expected=f">= {defaults.NGC_SECURE_FLOOR}",
                        fix=f"use {defaults.NGC_RELEASE} (the pinned, tested release), or pass --allow-insecure-release "
                            "if you accept the risk (e.g. an air-gapped lab)")
    image = f"nvcr.io/nvidia/tritonserver:{ngc_release}-py3"
    insecure = " BELOW THE SECURITY FLOOR (overridden)" if _release(ngc_release) < _release(defaults.NGC_SECURE_FLOOR) else ""
    return replace(target, image=image, triton_version=f"unknown ({ngc_release})", tensorrt_version=None,
                   min_compute_capability=min_compute_capability(_release(ngc_release)),
                   note=f"NGC {image}{insecure}; not the pinned {defaults.NGC_RELEASE}: its TensorRT version is not "
                        "verified here, so no TensorRT plans are built for it")
