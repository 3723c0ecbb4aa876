"""docs/policy.md's decision table is generated from the policy; it must never describe old rules."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_policy_doc_table_is_current():
    """A policy change without `python tools/policy_doc.py` would leave the docs stating old decisions."""
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "policy_doc.py"), "--check"])
    assert r.returncode == 0, "docs/policy.md is stale: run `python tools/policy_doc.py`"
