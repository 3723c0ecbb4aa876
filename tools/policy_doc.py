#!/usr/bin/env python3
"""Regenerate the decision table in docs/policy.md from the policy itself (`--check`: exit 1 if stale).

The table is what `tritonkit plan` decides for the example spec on every catalogue GPU, for both
servers, so the document can never drift from the code (tests/test_policy_doc.py runs --check).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tritonkit import defaults  # noqa: E402
from tritonkit.catalogue import CATALOGUE  # noqa: E402
from tritonkit.errors import UserError  # noqa: E402
from tritonkit.hardware import Hardware  # noqa: E402
from tritonkit.policy import Capabilities, plan  # noqa: E402
from tritonkit.servers import SERVERS  # noqa: E402
from tritonkit.spec import load_spec  # noqa: E402

DOC = ROOT / "docs" / "policy.md"
BEGIN, END = "<!-- BEGIN GENERATED TABLE -->", "<!-- END GENERATED TABLE -->"


def table() -> str:
    spec = load_spec(defaults.DEFAULT_SPEC)
    caps = Capabilities()  # inductor threshold: tritonkit's default (68, torch 2.4-2.13)
    rows = ["| GPU | SMs | cc | memory | server | encoder backend | precision | instances | torch.compile | "
            "queue delay | plan files |", "|" + "---|" * 11]
    for gpu in [None, *CATALOGUE.values()]:
        hw = Hardware(gpus=(gpu,) if gpu else (), cpu_cores=8, memory_bytes=64 * 2**30, source="declared")
        facts = (f"| {gpu.name if gpu else 'none (8 cores)'} | {gpu.sm_count if gpu else '-'} | "
                 f"{gpu.cc if gpu else '-'} | {f'{gpu.memory_gib:.0f} GiB' if gpu else '-'} |")
        for server in ("ngc", "embedded"):
            try:
                p = plan(spec, hw, SERVERS[server], caps=caps)
            except UserError as exc:
                rows.append(f"{facts} {server} | refused: {exc.what}; {exc.expected} | | | | | |")
                continue
            enc = p.model("minilm_encoder")
            params = dict(enc.parameters)
            g = enc.instances[0]
            threads = f" x {params['intra_op_thread_count']} thr" if "intra_op_thread_count" in params else ""
            rows.append(f"{facts} {server} | {enc.label} | {enc.precision} | {g.count} x {g.kind}{threads} | "
                        f"{params.get('compile_mode', '-')} | {enc.batching.max_queue_delay_us} us | "
                        f"{', '.join(f for _, f in enc.cc_model_filenames) or '-'} |")
    return "\n".join(rows)


def render(text: str) -> str:
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    current = DOC.read_text()
    new = render(current)
    if "--check" in sys.argv:
        sys.exit(0 if new == current else 1)
    DOC.write_text(new)
