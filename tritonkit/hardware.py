"""Step 2: the hardware the plan is for, as a value: detected on this host or declared by the user.

Detection uses the CUDA driver API through ctypes (no torch): it reports the SMs a process may use,
so a GPU limited by CUDA MPS (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE) shows its real, smaller SM count.
NVML (nvidia-ml-py) is the fallback when the driver API cannot be loaded.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from .catalogue import GIB, GPU, CATALOGUE, close_names, lookup
from .errors import UserError


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[GPU, ...]
    cpu_cores: int | None           # None in a plan whose decisions did not use the CPU's cores
    memory_bytes: int | None        # host RAM: shown by `detect`, used by no decision, so never in a plan
    source: str                     # "detected" or "declared"
    note: str = ""                  # why detection found no GPU, for --explain
    cpu_nodes: bool = False         # a declared fleet that also has CPU-only nodes (--gpu T4,L4,cpu)
    cpu_features: tuple[str, ...] = ()   # of CPU_FEATURES: what the CPU's vector units can do (INT8, BF16)

    def planned(self, uses_cpu_cores: bool, uses_cpu_features: bool = False) -> Hardware:
        """The hardware as a plan records it: only what its decisions read, so a plan made under
        `taskset`, on another host or in a container compares equal to the same plan made here."""
        return replace(self, cpu_cores=self.cpu_cores if uses_cpu_cores else None, memory_bytes=None, note="",
                       cpu_features=self.cpu_features if uses_cpu_features else ())

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def gpu_types(self) -> tuple[GPU, ...]:
        """One GPU per distinct model (a fleet renders one variant per type)."""
        seen: dict[tuple, GPU] = {}
        for g in self.gpus:
            seen.setdefault((g.name, g.sm_count, g.compute_capability, g.memory_bytes), g)
        return tuple(seen.values())

    def describe(self) -> str:
        cpu = ", ".join(part for part in (
            f"{self.cpu_cores} CPU cores" if self.cpu_cores is not None else "",
            f"{self.memory_bytes / GIB:.0f} GiB RAM" if self.memory_bytes is not None else "",
            "+".join(self.cpu_features)) if part)
        if not self.gpus:
            return f"no GPU ({self.source}{': ' + self.note if self.note else ''}); {cpu}"
        gpus = ", ".join(f"GPU{g.index}: {g.describe()}" for g in self.gpus)
        return f"{gpus} ({self.source})" + (f"; {cpu}" if cpu else "")


# CPU instruction sets the policy reads, by their Linux /proc/cpuinfo flag names: INT8 dot products (AVX512-VNNI,
# AVX-VNNI, AMX-INT8 tiles), BF16 tiles (AMX-BF16), and AVX2 (the floor ONNX Runtime's fast kernels assume).
CPU_FEATURES = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")


def host_cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return ()
    return tuple(f for f in CPU_FEATURES if f in flags)


def parse_cpu_features(text: str) -> tuple[str, ...]:
    """`--cpu-features`: "none" or a comma list of CPU_FEATURES (the target's, when it is not this host)."""
    names = [n.strip().lower().replace("-", "_") for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in CPU_FEATURES]
    if unknown:
        raise UserError("unknown CPU feature", where="--cpu-features", actual=unknown,
                        expected=f"none, or some of {', '.join(CPU_FEATURES)} (names as in /proc/cpuinfo)")
    return tuple(f for f in CPU_FEATURES if f in names)


def host_cpu() -> tuple[int, int]:
    """Cores this process may run on (affinity, not the host total) and physical memory in bytes."""
    cores = len(os.sched_getaffinity(0))
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return cores, mem


# --- detection ------------------------------------------------------------------------------------

# cuDeviceGetAttribute ids (cuda.h CUdevice_attribute)
_CU_ATTR_SM_COUNT, _CU_ATTR_CC_MAJOR, _CU_ATTR_CC_MINOR = 16, 75, 76


def _detect_cuda_driver() -> tuple[GPU, ...]:
    lib = ctypes.CDLL("libcuda.so.1")
    if lib.cuInit(0) != 0:
        raise OSError("cuInit failed (no usable NVIDIA driver/GPU)")
    count = ctypes.c_int()
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        raise OSError("cuDeviceGetCount failed")
    gpus = []
    for i in range(count.value):
        dev = ctypes.c_int()
        lib.cuDeviceGet(ctypes.byref(dev), i)
        name = ctypes.create_string_buffer(256)
        lib.cuDeviceGetName(name, 256, dev)
        attrs = {}
        for key, attr in (("sm", _CU_ATTR_SM_COUNT), ("major", _CU_ATTR_CC_MAJOR), ("minor", _CU_ATTR_CC_MINOR)):
            val = ctypes.c_int()
            lib.cuDeviceGetAttribute(ctypes.byref(val), attr, dev)
            attrs[key] = val.value
        mem = ctypes.c_size_t()
        lib.cuDeviceTotalMem_v2(ctypes.byref(mem), dev)
        gpus.append(GPU(name=name.value.decode(), sm_count=attrs["sm"],
                        compute_capability=(attrs["major"], attrs["minor"]), memory_bytes=mem.value, index=i,
                        mps_limited=mps_limited(name.value.decode(), attrs["sm"], os.environ)))
    return tuple(gpus)


def mps_limited(name: str, sm_count: int, env) -> bool:
    """Whether this process sees the GPU through a CUDA MPS thread limit: the driver reports fewer SMs than
    the catalogue's entry for this name. For a GPU the catalogue does not know, the client's own request
    (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE below 100) is the only sign. The variable alone is not enough for a
    known GPU: without an MPS daemon it limits nothing (seen on an H200: 132 of 132 SMs with it set to 30)."""
    known = lookup(name)
    if known is not None:
        return sm_count < known.sm_count
    try:
        return float(env.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "100")) < 100
    except ValueError:
        return False


def _detect_nvml() -> tuple[GPU, ...]:
    import pynvml
    pynvml.nvmlInit()
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            # NVML has no SM count; take it from the catalogue (0 = unknown, policy treats it as small).
            known = lookup(name)
            gpus.append(GPU(name=name, sm_count=known.sm_count if known else 0, compute_capability=(major, minor),
                            memory_bytes=pynvml.nvmlDeviceGetMemoryInfo(h).total, index=i))
        return tuple(gpus)
    finally:
        pynvml.nvmlShutdown()


def detect() -> Hardware:
    cores, mem = host_cpu()
    reasons = []
    for probe in (_detect_cuda_driver, _detect_nvml):
        try:
            gpus = probe()
        except Exception as exc:  # noqa: BLE001 - any failure of a probe means "this probe saw no GPU"
            reasons.append(f"{probe.__name__.removeprefix('_detect_')}: {exc}")
            continue
        visible = _visible(gpus)
        if visible:
            return Hardware(gpus=visible, cpu_cores=cores, memory_bytes=mem, source="detected",
                            cpu_features=host_cpu_features())
        reasons.append(f"{probe.__name__.removeprefix('_detect_')}: no devices")
    return Hardware(gpus=(), cpu_cores=cores, memory_bytes=mem, source="detected", note="; ".join(reasons),
                    cpu_features=host_cpu_features())


def _visible(gpus: tuple[GPU, ...]) -> tuple[GPU, ...]:
    # The driver API already honours CUDA_VISIBLE_DEVICES; an explicit empty value means "no GPU".
    return () if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "" else gpus


# --- declared targets -----------------------------------------------------------------------------

_CUSTOM = re.compile(r"^(\w+=[^,]+)(,\w+=[^,]+)*$")
_MEM = re.compile(r"^(\d+(?:\.\d+)?)\s*(gib|gb|g)?$", re.IGNORECASE)


def _custom_gpu(text: str) -> GPU:
    fields = dict(part.split("=", 1) for part in text.split(","))
    allowed = {"sm", "cc", "mem", "name"}
    unknown = set(fields) - allowed
    if unknown or not {"sm", "cc", "mem"} <= set(fields):
        raise UserError("a custom GPU needs sm=, cc= and mem= (and optionally name=)", where="--gpu",
                        actual=text, expected="e.g. sm=40,cc=7.5,mem=16GiB")
    try:
        sm = int(fields["sm"])
        major, minor = (int(x) for x in fields["cc"].split("."))
        m = _MEM.match(fields["mem"].strip())
        if not m or sm < 1 or major < 1 or minor < 0 or float(m.group(1)) <= 0:
            raise ValueError
        mem = int(float(m.group(1)) * GIB)
    except ValueError:
        raise UserError("cannot parse custom GPU", where="--gpu", actual=text,
                        expected="sm=<int>,cc=<major.minor>,mem=<N>GiB, e.g. sm=40,cc=7.5,mem=16GiB") from None
    return GPU(name=fields.get("name", f"custom sm{sm} cc{major}.{minor}"), sm_count=sm,
               compute_capability=(major, minor), memory_bytes=mem)


def declared(text: str, cpu_cores: int | None = None, cpu_features: tuple[str, ...] | None = None) -> Hardware:
    """`--gpu` values: "none", a catalogue name ("T4"), a fleet ("T4,L4,H100"; "cpu" in it adds CPU-only nodes),
    or "sm=40,cc=7.5,mem=16GiB".

    CPU cores and features: `cpu_cores` (`--cpus`) and `cpu_features` (`--cpu-features`) when given, else this
    host's (they matter only to models planned on the CPU).
    """
    cores, mem = host_cpu()
    cores = cpu_cores or cores
    features = host_cpu_features() if cpu_features is None else cpu_features
    text = text.strip()
    if text.lower() in ("none", "cpu"):
        return Hardware(gpus=(), cpu_cores=cores, memory_bytes=mem, source="declared", note="--gpu none",
                        cpu_features=features)
    if "=" in text and _CUSTOM.match(text.replace(" ", "")):
        return Hardware(gpus=(_custom_gpu(text.replace(" ", "")),), cpu_cores=cores, memory_bytes=mem,
                        source="declared", cpu_features=features)
    gpus = []
    names = [n.strip() for n in text.split(",")]
    cpu_nodes = any(n.lower() in ("none", "cpu") for n in names)
    for i, name in enumerate(n for n in names if n.lower() not in ("none", "cpu")):
        gpu = lookup(name) if name else None
        if gpu is None:
            close = close_names(name)
            raise UserError("unknown GPU name", where="--gpu", actual=name,
                            expected=f"a catalogue name ({', '.join(g.name for g in CATALOGUE.values())})",
                            fix=(f"did you mean {' or '.join(repr(c) for c in close)}? " if close else "")
                            + "or describe it: --gpu sm=40,cc=7.5,mem=16GiB")
        gpus.append(GPU(name=gpu.name, sm_count=gpu.sm_count, compute_capability=gpu.compute_capability,
                        memory_bytes=gpu.memory_bytes, index=i))
    return Hardware(gpus=tuple(gpus), cpu_cores=cores, memory_bytes=mem, source="declared", cpu_nodes=cpu_nodes,
                    cpu_features=features)


def resolve(gpu_arg: str = "auto", cpu_cores: int | None = None, cpu_features: tuple[str, ...] | None = None) -> Hardware:
    """`--gpu`, `--cpus` and `--cpu-features` as one value: detected GPUs for "auto", else declared ones."""
    if gpu_arg.strip().lower() != "auto":
        return declared(gpu_arg, cpu_cores, cpu_features)
    hw = detect()
    hw = replace(hw, cpu_cores=cpu_cores) if cpu_cores else hw
    return replace(hw, cpu_features=cpu_features) if cpu_features is not None else hw
