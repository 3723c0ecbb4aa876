"""Facts about the installed PyTorch that the policy needs, read at run time (never hard-coded twice).

torch._inductor refuses max-autotune GEMMs below an SM count it keeps as a literal inside
`torch._inductor.utils.is_big_gpu` ("Not enough SMs to use max_autotune_gemm mode"); it has changed
between releases, so it is read from the source of the installed torch.
"""

from __future__ import annotations

import re

from . import defaults

# `min_sms = 16 if device.type == "xpu" else 68  # 3080` (torch 2.4 .. 2.13); older: `if prop.multi_processor_count < 80`
_PATTERNS = (re.compile(r"min_sms\s*=\s*(?:\d+\s+if\s+[^\n]*?\s+else\s+)?(\d+)"),
             re.compile(r"multi_processor_count\s*<\s*(\d+)"))


def parse_min_sms(source: str) -> int | None:
    for pattern in _PATTERNS:
        match = pattern.search(source)
        if match:
            return int(match.group(1))
    return None


def inductor_min_sms() -> tuple[int, str]:
    """(threshold, where it came from). Falls back to defaults.INDUCTOR_MIN_SMS when torch is absent."""
    try:
        import inspect

        import torch
        from torch._inductor import utils
        found = parse_min_sms(inspect.getsource(utils.is_big_gpu))
    except Exception:  # noqa: BLE001 - no torch, or a torch without this function: use the default
        return defaults.INDUCTOR_MIN_SMS, "tritonkit default; torch not importable"
    if found is None:
        return defaults.INDUCTOR_MIN_SMS, f"tritonkit default; not found in torch {torch.__version__}"
    return found, f"torch {torch.__version__} inductor threshold"
