"""Locate the tritonserver bundled in the nvidia-pytriton wheel and assemble its backend folder.

The backend folder lives under ~/.cache/tritonkit, one per installation of the wheel (a key: the
fingerprint of its sources). Several installations share that cache (a CI checkout beside a development
venv), so a key is never deleted while a process may use it: every process that located a key holds a
shared flock on `.<key>.lock` until it exits (and passes it on to its tritonserver); pruning a stale key
needs the exclusive lock, taken without waiting, so a key in use is skipped.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tritonkit.defaults import EMBEDDED_TRITON_VERSION
from tritonkit.errors import UserError

PYTRITON_DIST = "nvidia-pytriton"
PYTRITON_PIN = "0.7.0"
INSTALL_FIX = f"pip install {PYTRITON_DIST}=={PYTRITON_PIN}  (or `make venv`, which installs tritonkit[embedded])"
# Which tritonserver each supported wheel bundles. A wheel not listed here bundles a server whose flags
# and quirks nobody checked, so it is refused rather than assumed compatible.
_TRITON_IN_WHEEL = {PYTRITON_PIN: EMBEDDED_TRITON_VERSION}

STUB_NAME = "triton_python_backend_stub"

# Lock file -> descriptor holding its shared lock, kept open until this process exits: a process that
# located a key may start a server from it at any time.
_HELD: dict[Path, int] = {}


@dataclass(frozen=True)
class EmbeddedTriton:
    """Where the bundled server lives on this machine; built by `find_embedded_triton`, never assumed."""

    binary: Path        # .../pytriton/tritonserver/bin/tritonserver
    backend_dir: Path   # assembled: <cache>/.../backends, holding python/ with the matching stub
    lib_dir: Path       # .../nvidia_pytriton.libs (prepended to LD_LIBRARY_PATH)
    version: str        # tritonserver version bundled in the wheel, e.g. "2.51.0"
    cache_dir: Path | None = None  # .../pytriton/tritonserver/caches (response cache plugins)
    # Descriptor of the shared lock on backend_dir's key; a server inherits it so the key outlives no user.
    lock_fd: int | None = field(default=None, compare=False, repr=False)


def _default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tritonkit"


def _locate_site_dir() -> Path | None:
    """The directory holding the `pytriton` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent


def _wheel_version(site_dir: Path) -> str | None:
    for dist in importlib.metadata.distributions(path=[str(site_dir)]):
        if (dist.metadata["Name"] or "").lower().replace("_", "-") == PYTRITON_DIST:
            return dist.version
    return None


def _fingerprint(files: list[Path], root: Path) -> str:
    """Changes whenever a source file is replaced (reinstall, upgrade): path, size and mtime of each."""
    digest = hashlib.sha256()
    for path in sorted(files):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def find_embedded_triton(*, site_dir: Path | None = None, cache_root: Path | None = None,
                         python_version: tuple[int, int] | None = None) -> EmbeddedTriton:
    """Locate the tritonserver of nvidia-pytriton and assemble a backend directory for this Python.

    Triton loads `<backend-directory>/python/libtriton_python.so`, which starts
    `<backend-directory>/python/triton_python_backend_stub`; the wheel ships one stub per Python
    version, so the directory is assembled (copied) under the cache, keyed by a fingerprint of its
    sources: a reinstalled or upgraded wheel gets a fresh copy. `site_dir`, `cache_root` and
    `python_version` default to this interpreter's; tests pass them to inject faults.
    This process holds the key's shared lock from here until it exits (see the module docstring).
    """
    site_dir = site_dir if site_dir is not None else _locate_site_dir()
    server_root = site_dir / "pytriton" / "tritonserver" if site_dir is not None else None
    if server_root is None or not (server_root / "bin" / "tritonserver").is_file():
        raise UserError("the embedded tritonserver is not installed (it ships in the nvidia-pytriton wheel)",
                        where=str(server_root) if server_root else "python -c 'import pytriton'",
                        fix=INSTALL_FIX)
    wheel_version = _wheel_version(site_dir)
    if wheel_version not in _TRITON_IN_WHEEL:
        raise UserError(f"unsupported {PYTRITON_DIST} version: its bundled tritonserver is unchecked",
                        where=str(site_dir), actual=wheel_version, expected=PYTRITON_PIN, fix=INSTALL_FIX)
    lib_dir = site_dir / "nvidia_pytriton.libs"
    python_src = server_root / "backends" / "python"
    if not lib_dir.is_dir() or not (python_src / "libtriton_python.so").is_file():
        raise UserError(f"the {PYTRITON_DIST} installation is incomplete (libraries or python backend missing)",
                        where=str(site_dir), fix=f"reinstall: {INSTALL_FIX}")

    major, minor = python_version or sys.version_info[:2]
    stubs_dir = server_root / "python_backend_stubs"
    stub = stubs_dir / f"{major}.{minor}" / STUB_NAME
    if not stub.is_file():
        available = sorted((p.parent.name for p in stubs_dir.glob(f"*/{STUB_NAME}")),
                           key=lambda v: tuple(int(x) for x in v.split(".")))
        raise UserError("the embedded tritonserver has no python backend stub for this Python version",
                        where=str(stubs_dir), actual=f"{major}.{minor}", expected=f"one of {available}",
                        fix=f"create the venv with one of Python {', '.join(available)}")

    sources = [p for p in python_src.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    key = _fingerprint(sources + [stub], server_root)
    root = (cache_root or _default_cache_root()) / f"embedded-triton-{_TRITON_IN_WHEEL[wheel_version]}"\
        f"-py{major}.{minor}"
    root.mkdir(parents=True, exist_ok=True)
    lock_fd = _hold(_lock_file(root, key))  # before the check: a pruner cannot remove the key after it
    backend_dir = root / key / "backends"
    if not (backend_dir / "python" / STUB_NAME).is_file():
        _assemble_backend_dir(backend_dir, sources, python_src, stub)
        _prune_unused_keys(root, keep=key)  # copies of a previous install of the wheel
    caches = server_root / "caches"
    return EmbeddedTriton(binary=server_root / "bin" / "tritonserver", backend_dir=backend_dir, lib_dir=lib_dir,
                          version=_TRITON_IN_WHEEL[wheel_version], cache_dir=caches if caches.is_dir() else None,
                          lock_fd=lock_fd)


def _assemble_backend_dir(backend_dir: Path, sources: list[Path], python_src: Path, stub: Path) -> None:
    """Build in a temporary sibling, then rename: a concurrent process sees all of it or none of it."""
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=backend_dir.parent.parent))
    try:
        python_dst = tmp / "backends" / "python"
        for src in sources:
            dst = python_dst / src.relative_to(python_src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        shutil.copy2(stub, python_dst / STUB_NAME)
        try:
            tmp.rename(backend_dir.parent)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):  # else: another process won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- Which keys are in use ---------------------------------------------------------------------------

def _lock_file(root: Path, key: str) -> Path:
    return root / f".{key}.lock"  # a dot name: never taken for a key (nor pruned by older tritonkits)


def _lock(path: Path, operation: int) -> int | None:
    """Open `path` and flock it; the descriptor, or None if LOCK_NB was given and another process holds it.

    flock, not fcntl/lockf: closing another descriptor of the same file keeps this lock. A pruner unlinks
    the lock file it held; a process that waited on that file locked a dead inode, so it opens the path again.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, operation)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except BlockingIOError:
            os.close(fd)
            return None
        except FileNotFoundError:
            pass
        os.close(fd)


def _hold(lock_file: Path) -> int:
    """A shared lock on `lock_file`, taken once per process and held until it exits."""
    lock_file = lock_file.absolute()
    if lock_file not in _HELD:
        _HELD[lock_file] = _lock(lock_file, fcntl.LOCK_SH)
    return _HELD[lock_file]


def _prune_unused_keys(root: Path, keep: str) -> None:
    """Delete every other key that no process holds (its exclusive lock is free); skip the others."""
    keys = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    keys |= {p.name[1:-len(".lock")] for p in root.iterdir() if p.name.startswith(".") and p.name.endswith(".lock")}
    for key in sorted(keys - {keep}):
        lock_file = _lock_file(root, key)
        fd = _lock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if fd is None:
            continue  # a process that located this key may be serving from it
        doomed = None
        try:
            if (root / key).is_dir():
                # Out of sight in one rename, so no one finds half a folder if the removal stops midway.
                doomed = Path(tempfile.mkdtemp(prefix=".prune-", dir=root)) / key
                (root / key).rename(doomed)
            lock_file.unlink()
        except OSError:
            pass  # pruning only saves disk space: a key it cannot remove stays
        finally:
            os.close(fd)
        if doomed is not None:
            shutil.rmtree(doomed.parent, ignore_errors=True)
