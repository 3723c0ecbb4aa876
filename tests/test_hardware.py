"""tritonkit.hardware and tritonkit.catalogue: the GPU the plan is for, detected or declared.

Declared hardware (`--gpu ...`) is tested exhaustively on any machine. Detection is called for real:
on a host without an NVIDIA driver it must explain why it found nothing; the `gpu`-marked test runs
only where a driver is present and cross-checks the two probes against each other and the catalogue.
"""

from __future__ import annotations

import ctypes
import os

import pytest

from tritonkit.catalogue import ALIASES, CATALOGUE, GIB, GPU, PRECISION_MIN_CC, lookup, precisions_for
from tritonkit.errors import UserError
from tritonkit.hardware import (Hardware, _detect_cuda_driver, _visible, declared, detect, host_cpu, mps_limited,
                                resolve)


def _driver_loadable() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


HAS_DRIVER = _driver_loadable()

# Independent record of the datasheet facts (name: SMs, compute capability, GiB), so that a typo in
# the catalogue fails here instead of silently changing instance counts or precisions.
FACTS = {
    "Tesla T4": (40, (7, 5), 16),
    "V100": (80, (7, 0), 32),
    "A10": (72, (8, 6), 24),
    "A10G": (80, (8, 6), 24),
    "A100 40GB": (108, (8, 0), 40),
    "A100 80GB": (108, (8, 0), 80),
    "L4": (58, (8, 9), 24),
    "L40S": (142, (8, 9), 48),
    "H100 PCIe": (114, (9, 0), 80),
    "H100 SXM": (132, (9, 0), 80),
    "H200": (132, (9, 0), 141),
    "B200": (148, (10, 0), 180),
    "RTX 3080": (68, (8, 6), 10),
    "RTX 4090": (128, (8, 9), 24),
    "Jetson AGX Orin": (16, (8, 7), 64),
}


def _facts(gpu: GPU) -> tuple:
    return gpu.sm_count, gpu.compute_capability, gpu.memory_bytes


def _expected(name: str) -> tuple:
    sms, cc, gib = FACTS[name]
    return sms, cc, gib * GIB


# --- declared: none ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["none", "NONE", " none ", "cpu", "Cpu"])
def test_declared_none_has_no_gpu(text):
    """Prevents `--gpu none` being parsed as a GPU name (or failing) on a CPU-only target."""
    hw = declared(text)
    assert hw.gpus == () and not hw.has_gpu
    assert hw.source == "declared"
    assert "no GPU" in hw.describe()


def test_declared_hardware_takes_cpu_facts_from_this_host():
    """Prevents a declared GPU target planning CPU instances for a made-up core count."""
    cores, mem = host_cpu()
    assert cores == len(os.sched_getaffinity(0)) >= 1 and mem > 0
    for text in ("none", "T4", "sm=40,cc=7.5,mem=16GiB"):
        hw = declared(text)
        assert (hw.cpu_cores, hw.memory_bytes) == (cores, mem)


# --- declared: catalogue names and aliases --------------------------------------------------------------

def test_catalogue_matches_the_independent_facts():
    """Prevents a catalogue entry being added or edited without its datasheet facts being checked."""
    assert {g.name for g in CATALOGUE.values()} == set(FACTS)
    for key, gpu in CATALOGUE.items():
        assert key == gpu.name.lower()
        assert _facts(gpu) == _expected(gpu.name), gpu.name


@pytest.mark.parametrize("name", sorted(FACTS))
def test_declared_catalogue_name(name):
    """Prevents `--gpu <catalogue name>` resolving to another entry or losing its SM count / cc / memory."""
    for spelling in (name, name.upper(), name.lower(), f"  {name} "):
        hw = declared(spelling)
        assert len(hw.gpus) == 1
        gpu = hw.gpus[0]
        assert (gpu.name, gpu.index) == (name, 0)
        assert _facts(gpu) == _expected(name)


@pytest.mark.parametrize(("alias", "name"), [
    ("T4", "Tesla T4"), ("t4", "Tesla T4"), ("A100", "A100 80GB"), ("a100-40gb", "A100 40GB"),
    ("A100-80GB", "A100 80GB"), ("H100", "H100 SXM"), ("h100-sxm", "H100 SXM"), ("H100-PCIe", "H100 PCIe"),
    ("3080", "RTX 3080"), ("4090", "RTX 4090"), ("Orin", "Jetson AGX Orin"), ("agx-orin", "Jetson AGX Orin"),
    ("tesla_t4", "Tesla T4"), ("h100 sxm", "H100 SXM"),
])
def test_declared_alias(alias, name):
    """Prevents the short names people type (T4, A100, H100) resolving to the wrong part."""
    gpu = declared(alias).gpus[0]
    assert gpu.name == name
    assert _facts(gpu) == _expected(name)


def test_every_alias_points_at_a_catalogue_entry():
    """Prevents an alias whose target key is misspelt (KeyError at lookup time, or a silent None)."""
    for alias, key in ALIASES.items():
        assert key in CATALOGUE, alias
        assert lookup(alias) is CATALOGUE[key]


# --- driver-reported names --------------------------------------------------------------------------------

@pytest.mark.parametrize(("driver_name", "name"), [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA B200", "B200"),
    ("Tesla T4", "Tesla T4"),
    ("Tesla V100-SXM2-32GB", "V100"),
    ("NVIDIA A10G", "A10G"),
    ("NVIDIA A10", "A10"),                 # must not become A10G (nor A100)
    ("NVIDIA L4", "L4"),                   # must not become L40S or A10
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA A100-SXM4-40GB", "A100 40GB"),
    ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB"),
    ("NVIDIA A100 80GB PCIe", "A100 80GB"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ("NVIDIA GeForce RTX 3080", "RTX 3080"),
    ("Orin (nvgpu)", "Jetson AGX Orin"),
])
def test_lookup_driver_name(driver_name, name):
    """Prevents NVML-detected GPUs getting another part's SM count (NVML has none; the catalogue supplies it)."""
    gpu = lookup(driver_name)
    assert gpu is not None, driver_name
    assert gpu.name == name
    assert _facts(gpu) == _expected(name)


@pytest.mark.parametrize("driver_name", [
    "NVIDIA A40",
    "NVIDIA RTX A6000",
    "NVIDIA GeForce GTX 1080",
    "Quadro RTX 8000",
    "NVIDIA L40",
    "NVIDIA RTX A1000",
    "NVIDIA T400",
])
def test_lookup_unknown_driver_name_is_none(driver_name):
    """Prevents an uncatalogued GPU borrowing a different GPU's facts through a loose substring match."""
    assert lookup(driver_name) is None


# --- declared: custom descriptions ----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "name", "sms", "cc", "mem"), [
    ("sm=40,cc=7.5,mem=16GiB", "custom sm40 cc7.5", 40, (7, 5), 16 * GIB),
    ("sm=40, cc=7.5, mem=16 GiB", "custom sm40 cc7.5", 40, (7, 5), 16 * GIB),
    ("mem=16GiB,cc=7.5,sm=40", "custom sm40 cc7.5", 40, (7, 5), 16 * GIB),
    ("sm=20,cc=6.1,mem=8", "custom sm20 cc6.1", 20, (6, 1), 8 * GIB),
    ("sm=108,cc=8.0,mem=40gb", "custom sm108 cc8.0", 108, (8, 0), 40 * GIB),
    ("sm=16,cc=8.7,mem=0.5g", "custom sm16 cc8.7", 16, (8, 7), GIB // 2),
    ("name=P4,sm=20,cc=6.1,mem=8GiB", "P4", 20, (6, 1), 8 * GIB),
    ("sm=170,cc=12.0,mem=32GiB", "custom sm170 cc12.0", 170, (12, 0), 32 * GIB),
])
def test_declared_custom_gpu(text, name, sms, cc, mem):
    """Prevents a GPU missing from the catalogue being unplannable, or its fields being misread."""
    hw = declared(text)
    assert hw.source == "declared"
    assert hw.gpus == (GPU(name=name, sm_count=sms, compute_capability=cc, memory_bytes=mem, index=0),)


@pytest.mark.parametrize("text", [
    "sm=40,cc=7.5",                          # mem missing
    "cc=7.5,mem=16GiB",                      # sm missing
    "sm=40,cc=7.5,mem=16GiB,tdp=70",         # unknown field
    "sm=0,cc=7.5,mem=16GiB",
    "sm=-4,cc=7.5,mem=16GiB",
    "sm=forty,cc=7.5,mem=16GiB",
    "sm=40.5,cc=7.5,mem=16GiB",
    "sm=40,cc=75,mem=16GiB",
    "sm=40,cc=7.5.1,mem=16GiB",
    "sm=40,cc=seven,mem=16GiB",
    "sm=40,cc=7.5,mem=16TB",
    "sm=40,cc=7.5,mem=lots",
    "sm=40,cc=7.5,mem=",
    "sm=40,cc=7.5,mem=0GiB",
    "sm=40,cc=-1.5,mem=16GiB",
])
def test_declared_bad_custom_gpu_is_a_user_error(text):
    """Prevents a malformed `--gpu sm=...` becoming a traceback or a GPU with nonsense facts."""
    with pytest.raises(UserError) as info:
        declared(text)
    message = str(info.value)
    assert message.startswith("--gpu: ")
    assert "sm=40,cc=7.5,mem=16GiB" in message, "the message shows a working example"


# --- declared: unknown names ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "bad", "suggestion"), [
    ("T5", "T5", "'Tesla T4'"),
    ("L5", "L5", "'L4'"),
    ("V10", "V10", "'V100'"),
    ("B20", "B20", "'B200'"),
    ("A1000", "A1000", "'A100 80GB'"),
    ("H10", "H10", "'H100 SXM'"),
    ("RTX4090", "RTX4090", "'RTX 4090'"),
    ("T4,T5", "T5", "'Tesla T4'"),           # the bad element of a fleet is the one named
    ("foo", "foo", None),
    ("", "", None),
    ("T4,,L4", "", None),
])
def test_declared_unknown_name_suggests_close_names(text, bad, suggestion):
    """Prevents a typo'd GPU name failing without saying which name was wrong or what was meant."""
    with pytest.raises(UserError) as info:
        declared(text)
    e = info.value
    assert e.where == "--gpu" and e.actual == bad
    assert "unknown GPU name" in str(e)
    assert "Tesla T4" in str(e.expected), "the message lists the catalogue"
    if suggestion:
        did_you_mean = e.fix.split("?")[0]
        assert did_you_mean.startswith("did you mean ") and suggestion in did_you_mean, e.fix
    else:
        assert "did you mean" not in e.fix
    assert "--gpu sm=40,cc=7.5,mem=16GiB" in e.fix, "an uncatalogued GPU can still be described"


# --- fleets -----------------------------------------------------------------------------------------------

def test_declared_fleet_indexes_gpus_in_order():
    """Prevents a fleet declaration losing GPUs or giving them indexes that do not match the order typed."""
    hw = declared("T4,L4,H100")
    assert [(g.index, g.name) for g in hw.gpus] == [(0, "Tesla T4"), (1, "L4"), (2, "H100 SXM")]
    assert [_facts(g) for g in hw.gpus] == [_expected("Tesla T4"), _expected("L4"), _expected("H100 SXM")]
    assert [g.name for g in hw.gpu_types()] == ["Tesla T4", "L4", "H100 SXM"]
    assert "GPU2: H100 SXM (132 SMs, cc 9.0, 80 GiB)" in hw.describe()


def test_declared_fleet_of_one_type_is_one_type():
    """Prevents two identical GPUs counting as two types (which would make planning refuse the host)."""
    hw = declared("T4, t4")
    assert [g.index for g in hw.gpus] == [0, 1]
    assert [g.name for g in hw.gpu_types()] == ["Tesla T4"]


# --- precisions -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("cc", "has", "lacks"), [
    ((5, 2), {"fp32"}, {"int8", "fp16", "bf16", "tf32", "fp8", "fp4"}),
    ((6, 0), {"fp32"}, {"int8", "fp16"}),
    ((6, 1), {"fp32", "int8"}, {"fp16", "bf16"}),
    ((7, 0), {"fp32", "int8", "fp16"}, {"bf16", "tf32", "fp8"}),
    ((7, 5), {"fp32", "int8", "fp16"}, {"bf16", "tf32", "fp8"}),
    ((8, 0), {"fp16", "bf16", "tf32"}, {"fp8", "fp4"}),
    ((8, 6), {"fp16", "bf16", "tf32"}, {"fp8", "fp4"}),
    ((8, 7), {"bf16"}, {"fp8"}),
    ((8, 9), {"bf16", "fp8"}, {"fp4"}),
    ((9, 0), {"bf16", "fp8"}, {"fp4"}),
    ((10, 0), {"fp8", "fp4", "bf16", "fp16", "int8"}, set()),
    ((12, 0), {"fp8", "fp4"}, set()),
])
def test_precisions_for_compute_capability(cc, has, lacks):
    """Prevents the policy choosing a precision the GPU has no hardware for (or skipping one it has)."""
    got = set(precisions_for(cc))
    assert has <= got, f"cc {cc}: missing {has - got}"
    assert not (lacks & got), f"cc {cc}: should lack {lacks & got}"
    assert got <= set(PRECISION_MIN_CC)


def test_gpu_value_properties():
    """Prevents cc / memory / precisions derived from a GPU value disagreeing with its fields."""
    t4 = declared("T4").gpus[0]
    assert t4.cc == 7.5 and t4.memory_gib == 16.0
    assert t4.precisions == ("fp32", "int8", "fp16")
    assert t4.describe() == "Tesla T4 (40 SMs, cc 7.5, 16 GiB)"
    assert declared("B200").gpus[0].cc == 10.0


# --- detection (real calls) ---------------------------------------------------------------------------------

@pytest.mark.skipif(HAS_DRIVER, reason="an NVIDIA driver is loadable here; see the gpu-marked test")
def test_detect_without_driver_explains_why():
    """Prevents detection on a CPU host crashing, inventing a GPU, or giving no reason for finding none."""
    hw = detect()
    assert hw.gpus == () and not hw.has_gpu
    assert hw.source == "detected"
    assert (hw.cpu_cores, hw.memory_bytes) == host_cpu()
    assert "cuda_driver:" in hw.note and "nvml:" in hw.note, hw.note
    assert "libcuda" in hw.note, "the driver-API probe names the library it could not load"
    assert hw.note in hw.describe()
    assert resolve("auto") == hw == resolve(" AUTO ")


def test_detect_with_empty_cuda_visible_devices_sees_no_gpu(monkeypatch):
    """Prevents CUDA_VISIBLE_DEVICES="" (the user hiding all GPUs) being ignored by detection."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    hw = detect()
    assert hw.gpus == ()
    assert hw.note, "an empty result still says why"


@pytest.mark.parametrize(("env", "visible"), [(None, 2), ("", 0), ("0", 2), ("1,0", 2)])
def test_visible_filter(monkeypatch, env, visible):
    """Prevents the NVML fallback (which ignores CUDA_VISIBLE_DEVICES) reporting GPUs the user hid."""
    gpus = declared("T4,L4").gpus
    if env is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert len(_visible(gpus)) == visible


def test_resolve_declared_equals_declared():
    """Prevents `--gpu T4` going through a different path than `declared('T4')`."""
    assert resolve("T4") == declared("T4")
    assert resolve("none") == declared("none")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_DRIVER, reason="needs an NVIDIA driver (libcuda.so.1)")
def test_detect_on_a_gpu_host():
    """Prevents the ctypes driver probe misreading SMs/cc/memory, and NVML's catalogue fallback disagreeing."""
    hw = detect()
    assert hw.has_gpu, hw.note
    assert [g.index for g in hw.gpus] == list(range(len(hw.gpus)))
    for g in hw.gpus:
        assert g.sm_count > 0 and g.compute_capability >= (3, 0) and g.memory_bytes > GIB
        # Under CUDA MPS with CUDA_MPS_ACTIVE_THREAD_PERCENTAGE < 100 (or a limit set in the daemon) the
        # driver reports only the SMs this client may use: the catalogue's count is then the ceiling, not
        # the value, and detection must flag the GPU so the policy knows.
        assert g.mps_limited is mps_limited(g.name, g.sm_count, os.environ), g
        known = lookup(g.name)
        if known is None:
            continue
        assert known.compute_capability == g.compute_capability, g.name
        if g.mps_limited:
            assert g.sm_count < known.sm_count, (f"{g.name}: flagged as limited by CUDA MPS but the driver reports "
                                                 f"{g.sm_count} SMs, the catalogue's {known.sm_count}")
        else:
            assert g.sm_count == known.sm_count, g.name
    driver = _detect_cuda_driver()
    assert driver == hw.gpus
    # nvidia-ml-py is a core dependency (pyproject.toml): a broken install fails here instead of skipping.
    from tritonkit.hardware import _detect_nvml
    nvml = _detect_nvml()
    assert [(g.name, g.compute_capability) for g in nvml] == [(g.name, g.compute_capability) for g in driver]
    for n, d in zip(nvml, driver):
        assert abs(n.memory_bytes - d.memory_bytes) <= 0.05 * d.memory_bytes, (n, d)


def test_hardware_value_is_frozen_and_comparable():
    """Prevents plans built from equal hardware comparing unequal (render --check relies on it)."""
    a = Hardware(gpus=declared("T4").gpus, cpu_cores=8, memory_bytes=GIB, source="declared")
    b = Hardware(gpus=declared("T4").gpus, cpu_cores=8, memory_bytes=GIB, source="declared")
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.cpu_cores = 1  # type: ignore[misc]


@pytest.mark.parametrize(("name", "sms", "env", "limited"), [
    ("NVIDIA H100 80GB HBM3", 132, {}, False),
    ("NVIDIA H100 80GB HBM3", 38, {}, True),                                        # limit set in the daemon
    # The variable without an MPS daemon limits nothing (H200: 132 of 132 SMs with it at 30): not limited.
    ("NVIDIA H100 80GB HBM3", 132, {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "30"}, False),
    ("Some Future GPU", 10, {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "30"}, True),       # unknown: the request counts
    ("NVIDIA H100 80GB HBM3", 132, {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "100"}, False),
    ("NVIDIA H100 80GB HBM3", 132, {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "lots"}, False),
    ("Some Future GPU", 10, {}, False),                                               # unknown: no evidence
    ("Tesla T4", 40, {}, False),
])
def test_mps_limit_is_recognised(name, sms, env, limited):
    """Prevents a GPU that is not limited from being planned as if it were (FP32 for no reason), and a limited
    one from getting the FP16 that returned NaN under MPS."""
    assert mps_limited(name, sms, env) is limited
