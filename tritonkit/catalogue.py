"""GPU facts the policy decides from: SM count, compute capability, memory, tensor-core precisions.

Sources: NVIDIA product briefs / datasheets and the CUDA programming guide's compute-capability
table (https://developer.nvidia.com/cuda-gpus); SM counts from the architecture whitepapers
(Turing TU104: T4 = 40 SMs; Volta GV100: V100 = 80; Ampere GA100: A100 = 108, GA102: A10 = 72,
A10G = 80, RTX 3080 = 68; Ada AD104: L4 = 58, AD102: L40S = 142, RTX 4090 = 128; Hopper GH100:
H100 PCIe = 114, H100 SXM5 = 132, H200 = 132; Blackwell B200 = 148; Jetson AGX Orin: 2048 CUDA
cores / 128 per SM = 16 SMs).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

GIB = 1024 ** 3


@dataclass(frozen=True)
class GPU:
    name: str
    sm_count: int
    compute_capability: tuple[int, int]
    memory_bytes: int
    index: int = 0
    mps_limited: bool = False   # detected with fewer SMs than the device has: a CUDA MPS thread limit

    @property
    def cc(self) -> float:
        return self.compute_capability[0] + self.compute_capability[1] / 10

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB

    @property
    def precisions(self) -> tuple[str, ...]:
        return precisions_for(self.compute_capability)

    def describe(self) -> str:
        mps = ", SMs limited by CUDA MPS" if self.mps_limited else ""
        return (f"{self.name} ({self.sm_count} SMs{mps}, cc {self.compute_capability[0]}.{self.compute_capability[1]}, "
                f"{self.memory_gib:.0f} GiB)")


# Precisions with hardware support, by the first compute capability that has them
# (CUDA programming guide; TensorRT support matrix). INT8 from 6.1 (dp4a), FP16 tensor cores from 7.0,
# BF16/TF32 tensor cores from 8.0, FP8 from 8.9 (Ada) / 9.0 (Hopper), FP4 from 10.0 (Blackwell).
PRECISION_MIN_CC: dict[str, tuple[int, int]] = {
    "fp32": (0, 0),
    "int8": (6, 1),
    "fp16": (7, 0),
    "bf16": (8, 0),
    "tf32": (8, 0),
    "fp8": (8, 9),
    "fp4": (10, 0),
}


def precisions_for(cc: tuple[int, int]) -> tuple[str, ...]:
    return tuple(p for p, need in PRECISION_MIN_CC.items() if cc >= need)


def _gpu(name: str, sms: int, cc: tuple[int, int], gib: float) -> GPU:
    return GPU(name=name, sm_count=sms, compute_capability=cc, memory_bytes=int(gib * GIB))


CATALOGUE: dict[str, GPU] = {g.name.lower(): g for g in (
    _gpu("Tesla T4", 40, (7, 5), 16),
    _gpu("V100", 80, (7, 0), 32),
    _gpu("A10", 72, (8, 6), 24),
    _gpu("A10G", 80, (8, 6), 24),
    _gpu("A100 40GB", 108, (8, 0), 40),
    _gpu("A100 80GB", 108, (8, 0), 80),
    _gpu("L4", 58, (8, 9), 24),
    _gpu("L40S", 142, (8, 9), 48),
    _gpu("H100 PCIe", 114, (9, 0), 80),
    _gpu("H100 SXM", 132, (9, 0), 80),
    _gpu("H200", 132, (9, 0), 141),
    _gpu("B200", 148, (10, 0), 180),
    _gpu("RTX 3080", 68, (8, 6), 10),
    _gpu("RTX 4090", 128, (8, 9), 24),
    _gpu("Jetson AGX Orin", 16, (8, 7), 64),
)}

# Kubernetes node labels of each GPU product, as NVIDIA GPU Feature Discovery writes them
# (`nvidia.com/gpu.product`: the NVML device name with spaces as dashes, e.g. "Tesla-T4",
# "NVIDIA-H100-80GB-HBM3"). One catalogue GPU can ship as several products (SXM and PCIe boards); a
# node matches any of them. Compute capability is not a usable key: T4 and RTX 2080 share 7.5
# (server#5164). A GPU without labels here is not schedulable by product (tritonkit k8s refuses it).
GFD_PRODUCTS: dict[str, tuple[str, ...]] = {
    "Tesla T4": ("Tesla-T4",),
    "V100": ("Tesla-V100-SXM2-32GB", "Tesla-V100-PCIE-32GB", "Tesla-V100S-PCIE-32GB"),
    "A10": ("NVIDIA-A10",),
    "A10G": ("NVIDIA-A10G",),
    "A100 40GB": ("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB"),
    "A100 80GB": ("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"),
    "L4": ("NVIDIA-L4",),
    "L40S": ("NVIDIA-L40S",),
    "H100 PCIe": ("NVIDIA-H100-PCIe",),
    "H100 SXM": ("NVIDIA-H100-80GB-HBM3",),
    "H200": ("NVIDIA-H200",),
    "B200": ("NVIDIA-B200",),
    "RTX 3080": ("NVIDIA-GeForce-RTX-3080",),
    "RTX 4090": ("NVIDIA-GeForce-RTX-4090",),
    # Jetson AGX Orin: integrated GPU, no GPU Feature Discovery product label.
}


# Short names people type. "H100" means the SXM part (what clouds rent as "H100 80GB HBM3").
ALIASES = {
    "t4": "tesla t4", "a100": "a100 80gb", "a100-40gb": "a100 40gb", "a100-80gb": "a100 80gb",
    "h100": "h100 sxm", "h100-sxm": "h100 sxm", "h100-pcie": "h100 pcie", "3080": "rtx 3080",
    "4090": "rtx 4090", "orin": "jetson agx orin", "agx-orin": "jetson agx orin",
}


def _key(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").split())


def lookup(name: str) -> GPU | None:
    """Catalogue entry for a user-typed or driver-reported name, or None."""
    key = _key(name)
    key = ALIASES.get(key.replace(" ", "-"), ALIASES.get(key, key))
    if key in CATALOGUE:
        return CATALOGUE[key]
    # Driver names: "NVIDIA H100 80GB HBM3", "Tesla T4", "NVIDIA A10G", "NVIDIA GeForce RTX 4090".
    bare = key.replace("nvidia ", "").replace("geforce ", "")
    if bare in CATALOGUE:
        return CATALOGUE[bare]
    for pattern, entry in DRIVER_NAME_HINTS:
        # whole tokens only: "l4" must not match "l40", nor "a100" "a1000", nor "t4" "t400"
        if re.search(rf"(?<![a-z0-9]){re.escape(pattern)}(?![a-z0-9])", bare):
            return CATALOGUE[entry]
    return None


# Substrings of driver-reported names, most specific first.
DRIVER_NAME_HINTS = (
    ("h100 pcie", "h100 pcie"), ("h100 nvl", "h100 pcie"), ("h100", "h100 sxm"), ("h200", "h200"),
    ("b200", "b200"), ("a100-sxm4-40gb", "a100 40gb"), ("a100-pcie-40gb", "a100 40gb"), ("a100", "a100 80gb"),
    ("a10g", "a10g"), ("l40s", "l40s"), ("rtx 4090", "rtx 4090"), ("rtx 3080", "rtx 3080"), ("t4", "tesla t4"),
    ("v100", "v100"), ("orin", "jetson agx orin"), ("l4", "l4"), ("a10", "a10"),
)


def close_names(name: str, n: int = 3) -> list[str]:
    """Catalogue names close to a mistyped one; short aliases count ("T5" is close to "t4")."""
    candidates = {g.name.lower(): g.name for g in CATALOGUE.values()}
    candidates.update({alias: CATALOGUE[key].name for alias, key in ALIASES.items()})
    found = difflib.get_close_matches(_key(name), list(candidates), n=n * 2, cutoff=0.4)
    return list(dict.fromkeys(candidates[m] for m in found))[:n]
