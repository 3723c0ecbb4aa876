"""The Python environment the embedded server's python backend stub runs models in, checked before launch.

The stub (`triton_python_backend_stub`) embeds libpython and takes its sys.prefix from the first
`python3` on the server's PATH, so that interpreter's site-packages are what models import. Which one:
`--stub-python` (ServerOptions.stub_python), else $TRITONKIT_STUB_PYTHON, else the Python running
tritonkit. Each may name the interpreter or its bin folder. Before launching, that interpreter is run
once to read its version (the stub is picked per Python version) and its NumPy: the 2.51 stub was built
before NumPy 2 and, under NumPy 2, misreads BYTES input tensors (the tokenizer aborts in
pb_utils.deserialize_bytes_tensor with "unpack_from requires a buffer of at least ... bytes"), so such an
environment is refused up front instead of failing every text request.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tritonkit.defaults import STUB_NUMPY_MAX_MAJOR
from tritonkit.errors import UserError

ENV_VAR = "TRITONKIT_STUB_PYTHON"
_PROBE = ("import json, sys\n"
          "try:\n    import numpy; np = numpy.__version__\nexcept Exception as e:\n    np = None; err = repr(e)\n"
          "else:\n    err = None\n"
          "print(json.dumps({'version': list(sys.version_info[:2]), 'prefix': sys.prefix, 'numpy': np, 'error': err}))")
_FIX = (f"point --stub-python (or ${ENV_VAR}) at a Python {{version}} whose environment has numpy<2, e.g. "
        "`python3 -m venv /opt/stub && /opt/stub/bin/pip install 'numpy<2'` plus what the models import, "
        "or use this project's `make venv`")


@dataclass(frozen=True)
class StubEnvironment:
    python: Path                 # the python3 the stub will take its prefix from
    version: tuple[int, int]     # picks the stub binary of the same Python version
    prefix: str
    numpy: str

    @property
    def bin_dir(self) -> Path:
        return self.python.parent


def requested_python(option: Path | None) -> tuple[Path, str]:
    """The interpreter asked for and where the request came from (for messages)."""
    if option is not None:
        return Path(option), "--stub-python"
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    return Path(sys.executable), "the Python running tritonkit"


def resolve(option: Path | None) -> StubEnvironment:
    """Find and probe the stub's interpreter; UserError (exit 2) if it is missing or unusable."""
    asked, origin = requested_python(option)
    folder = asked if asked.is_dir() else asked.parent
    # The stub searches PATH for "python3", so that name must exist in the folder put first.
    python = shutil.which("python3", path=str(folder))
    if python is None:
        raise UserError("no python3 for the python backend stub", where=origin, actual=str(asked),
                        expected="a Python interpreter, or a bin folder holding `python3`",
                        fix=f"pass the interpreter of an environment with the models' packages to {origin}")
    python = Path(python)
    facts = _probe(str(python), python.stat().st_mtime_ns)
    if facts.get("failed"):
        raise UserError("the python backend stub's Python could not be run", where=origin,
                        actual=f"{python}: {facts['failed']}", fix=f"pass a working interpreter to {origin}")
    version = tuple(facts["version"])
    numpy = facts["numpy"]
    if numpy is None:
        raise UserError("NumPy is not importable in the python backend stub's environment (Triton's python "
                        "backend needs it for every model)", where=origin, actual=f"{python}: {facts['error']}",
                        fix=_FIX.format(version=f"{version[0]}.{version[1]}"))
    if int(numpy.split(".")[0]) > STUB_NUMPY_MAX_MAJOR:
        raise UserError("the python backend stub's environment has NumPy 2; the embedded tritonserver's stub "
                        "was built against NumPy 1 and misreads text (BYTES) tensors under NumPy 2, so every "
                        "text request would fail", where=origin, actual=f"numpy {numpy} in {facts['prefix']}",
                        expected=f"numpy < {STUB_NUMPY_MAX_MAJOR + 1}",
                        fix=_FIX.format(version=f"{version[0]}.{version[1]}"))
    return StubEnvironment(python=python, version=version, prefix=facts["prefix"], numpy=numpy)


@functools.lru_cache(maxsize=8)
def _probe(python: str, _mtime_ns: int) -> dict:
    """One run of the interpreter (cached per interpreter file version: servers start often in tests)."""
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": ""})  # the stub ignores PYTHONPATH too
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"failed": str(exc)}
    if done.returncode != 0:
        return {"failed": (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])
