"""`tritonkit demo` (what `make demo` runs): plan -> render -> build -> embedded server -> bench -> stop, in one go."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_ports

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_demo_runs_the_whole_chain_over_the_protocol_asked_for(tmp_path):
    """Prevents the main job breaking unnoticed, and its report naming another protocol than it measured
    (it printed "over gRPC" for --protocol http)."""
    http, grpc, metrics = free_ports(3)
    r = subprocess.run([sys.executable, "-m", "tritonkit.cli", "demo", "--gpu", "none", "--protocol", "http",
                        "--repo", str(tmp_path / "repo"), "--reports", str(tmp_path / "reports"),
                        "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
                        "--concurrency", "1,2", "--requests", "30", "--no-progress"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[4/4] measuring minilm over HTTP" in r.stdout and "over gRPC" not in r.stdout
    assert "PASSED" in r.stdout and "server stopped" in r.stdout
    assert (tmp_path / "reports" / "bench-minilm-http.json").is_file()
    assert (tmp_path / "repo" / "plan.json").is_file()
