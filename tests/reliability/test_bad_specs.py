"""Property 1: every malformed spec fails through the real CLI with its specific message, and the
repository it was pointed at stays byte-identical.

The corpus is tests/specs/ (68 files, each the valid spec broken in one place, its expected field path
and message fragments in its header; see tests/specs/README.md), reused as-is from tests/test_spec.py.
Here each one goes through `tools/render.py --spec BAD --out REPO` as a separate process, against a
repository that a previous render wrote, and the tree is hashed before and after.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.test_render import tree_hash
from tests.test_spec import CORPUS
from tritonkit.render import PLAN_FILE

from .helpers import ROOT

RENDER = str(ROOT / "tools" / "render.py")


def _tree(root):
    """Every path (folders included) with the hash of each file: a removed empty folder counts too."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")), tree_hash(root)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A repository written by the real CLI from the example spec, as a user would have it."""
    out = tmp_path_factory.mktemp("bad_specs") / "model_repository"
    r = subprocess.run([sys.executable, RENDER, "--gpu", "none", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out / PLAN_FILE).is_file() and list(out.glob("*/config.pbtxt"))
    return out


def test_corpus_is_reused_and_large_enough():
    """Prevents this property silently testing a handful of specs (or none) if the corpus moves."""
    assert len(CORPUS) >= 20, len(CORPUS)


@pytest.mark.parametrize(("path", "where", "says"), CORPUS)
def test_bad_spec_through_the_cli_names_the_field_and_writes_nothing(rendered, path, where, says):
    """Prevents a malformed spec that is accepted, crashes with a traceback, blames the wrong field, or
    touches (half-rewrites, deletes, leaves staging folders next to) the repository being served."""
    before = _tree(rendered)
    r = subprocess.run([sys.executable, RENDER, "--spec", str(path), "--gpu", "none", "--out", str(rendered)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == "", r.stderr
    prefix = f"error: {path}{where}" if where.startswith(":") else f"error: {path}: {where}: "
    assert r.stderr.startswith(prefix), f"expected stderr to start with {prefix!r}:\n{r.stderr}"
    for fragment in says:
        assert fragment in r.stderr, f"{fragment!r} not in:\n{r.stderr}"
    assert _tree(rendered) == before, "a failed render changed the repository"
    assert sorted(p.name for p in rendered.parent.iterdir()) == [rendered.name], "staging folder left behind"
