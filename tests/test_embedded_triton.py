"""tritonkit/embedded_triton.py: locating the wheel's tritonserver and its backend folder under the cache,
which several installations (virtual environments) on one machine share."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.test_serve import ADD_ONE_MODEL, PROJECT_ROOT, options_for, write_model
from tritonkit.embedded_triton import STUB_NAME, find_embedded_triton
from tritonkit.errors import UserError
from tritonkit.serve import EmbeddedServer


def _fake_site(site: Path, stub_bytes: bytes, wheel_version: str = "0.7.0") -> None:
    root = site / "pytriton" / "tritonserver"
    for rel, data in {"bin/tritonserver": b"#!/bin/sh\n", "backends/python/libtriton_python.so": b"so",
                      "backends/python/triton_python_backend_utils.py": b"# utils\n",
                      f"python_backend_stubs/3.11/{STUB_NAME}": stub_bytes}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (site / "nvidia_pytriton.libs").mkdir(exist_ok=True)
    info = site / "nvidia_pytriton-0.7.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: nvidia-pytriton\nVersion: {wheel_version}\n")


# Another process locating a fake installation, as `tritonkit serve` does before it starts tritonserver.
LOCATE_SCRIPT = """\
import sys, time
from pathlib import Path
from tritonkit.embedded_triton import STUB_NAME, find_embedded_triton
site, cache, go = map(Path, sys.argv[1:4])
while not go.exists():
    time.sleep(0.001)
triton = find_embedded_triton(site_dir=site, cache_root=cache, python_version=(3, 11))
stub = site / "pytriton" / "tritonserver" / "python_backend_stubs" / "3.11" / STUB_NAME
whole = (triton.backend_dir / "python" / STUB_NAME).read_bytes() == stub.read_bytes()
print(triton.backend_dir, "whole" if whole else "PARTIAL", flush=True)
sys.stdin.read()  # uses the key until the test closes stdin
"""


@contextmanager
def located_elsewhere(site: Path, cache: Path, count: int = 1):
    """`count` processes that each located `site`'s backend folder (started together) and still run:
    yields what each printed, (backend_dir, 'whole' or 'PARTIAL'); they exit when the block ends."""
    go = cache.parent / f"go-{time.monotonic_ns()}"
    procs = [subprocess.Popen([sys.executable, "-c", LOCATE_SCRIPT, str(site), str(cache), str(go)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
             for _ in range(count)]
    try:
        go.touch()
        lines = [p.stdout.readline().split() for p in procs]
        assert all(len(line) == 2 for line in lines), f"a locating process failed: {lines}"
        yield [(Path(path), state) for path, state in lines]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=30)
            p.stdout.close()


# --- locating and assembling -----------------------------------------------------------------------

def test_find_embedded_triton_assembles_backend_for_this_python(tmp_path):
    """Prevents: a backend dir without the stub matching this interpreter (models fail to load with
    'triton_python_backend_stub: not found' or crash on an ABI mismatch), and a cache rebuilt every call."""
    triton = find_embedded_triton(cache_root=tmp_path / "cache")
    stub = triton.backend_dir / "python" / STUB_NAME
    major, minor = sys.version_info[:2]
    source_stub = triton.binary.parent.parent / "python_backend_stubs" / f"{major}.{minor}" / STUB_NAME
    assert triton.version == "2.51.0"
    assert os.access(triton.binary, os.X_OK) and os.access(stub, os.X_OK)
    assert stub.read_bytes() == source_stub.read_bytes()
    assert (triton.backend_dir / "python" / "libtriton_python.so").is_file()
    assert (triton.backend_dir / "python" / "triton_python_backend_utils.py").is_file()
    assert any(triton.lib_dir.glob("libtritonserver*.so"))
    inode = stub.stat().st_ino
    again = find_embedded_triton(cache_root=tmp_path / "cache")
    assert again == triton and stub.stat().st_ino == inode  # reused, not copied again


def test_backend_cache_rebuilt_when_wheel_changes(tmp_path):
    """Prevents: a stale stub copy surviving a reinstall/upgrade of nvidia-pytriton (old stub, new backend),
    and copies of old installs (no process uses them any more) piling up in the cache."""
    site, cache = tmp_path / "site", tmp_path / "cache"
    _fake_site(site, b"stub v1")
    with located_elsewhere(site, cache) as [(first, _)]:
        assert (first / "python" / STUB_NAME).read_bytes() == b"stub v1"
    _fake_site(site, b"stub v2, reinstalled")
    second = find_embedded_triton(site_dir=site, cache_root=cache, python_version=(3, 11))
    assert second.backend_dir != first
    assert (second.backend_dir / "python" / STUB_NAME).read_bytes() == b"stub v2, reinstalled"
    key = second.backend_dir.parent.name
    assert sorted(p.name for p in second.backend_dir.parents[1].iterdir()) == [f".{key}.lock", key]  # pruned


def test_assembling_another_key_keeps_a_key_in_use(tmp_path):
    """Prevents: a second installation on the machine (a CI checkout beside a development venv) deleting
    the backend folder another process serves from: its tritonserver then fails with 'Failed to give
    execute permission to triton_python_backend_stub'. The folder goes once no process uses it."""
    cache = tmp_path / "cache"
    site_a, site_b = tmp_path / "site_a", tmp_path / "site_b"
    _fake_site(site_a, b"stub of installation A")
    _fake_site(site_b, b"stub of the other installation, B")
    with located_elsewhere(site_a, cache) as [(in_use, _)]:
        b = find_embedded_triton(site_dir=site_b, cache_root=cache, python_version=(3, 11))
        assert b.backend_dir != in_use
        assert (in_use / "python" / STUB_NAME).read_bytes() == b"stub of installation A"
    _fake_site(site_b, b"stub of installation B, upgraded")  # a new key: assembling it prunes
    find_embedded_triton(site_dir=site_b, cache_root=cache, python_version=(3, 11))
    assert not in_use.exists()  # no process holds A any more
    assert (b.backend_dir / "python" / STUB_NAME).is_file()  # this process still holds B's first key


def test_processes_assembling_one_key_at_once_each_get_a_whole_folder(tmp_path):
    """Prevents: a process starting tritonserver from a half-copied backend folder while another one
    assembles the same key (two test runs after a fresh install), or failing on the other's rename."""
    site, cache = tmp_path / "site", tmp_path / "cache"
    _fake_site(site, np.random.default_rng(0).bytes(16 << 20))  # big enough that the copies overlap
    with located_elsewhere(site, cache, count=4) as located:
        assert [state for _, state in located] == ["whole"] * 4
        assert len({path for path, _ in located}) == 1
        root = located[0][0].parents[1]
        assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [located[0][0].parent.name]  # no leftovers


def test_find_embedded_triton_without_wheel_says_how_to_install(tmp_path):
    """Prevents: a FileNotFoundError/traceback when nvidia-pytriton is missing instead of the install command."""
    with pytest.raises(UserError) as err:
        find_embedded_triton(site_dir=tmp_path, cache_root=tmp_path / "cache")
    assert "pip install nvidia-pytriton==0.7.0" in str(err.value)


def test_find_embedded_triton_refuses_unchecked_wheel_version(tmp_path):
    """Prevents: silently running a different bundled Triton whose flags and quirks were never checked."""
    _fake_site(tmp_path, b"stub", wheel_version="0.6.0")
    with pytest.raises(UserError) as err:
        find_embedded_triton(site_dir=tmp_path, cache_root=tmp_path / "cache", python_version=(3, 11))
    assert "0.6.0" in str(err.value) and "nvidia-pytriton==0.7.0" in str(err.value)


def test_find_embedded_triton_python_without_stub(tmp_path):
    """Prevents: starting a server whose python models can never load because no stub fits this Python."""
    with pytest.raises(UserError) as err:
        find_embedded_triton(cache_root=tmp_path, python_version=(3, 7))
    message = str(err.value)
    assert "'3.7'" in message and "3.11" in message


# --- two installations serving side by side -------------------------------------------------------

def _second_installation(site: Path, dest: Path) -> Path:
    """Another install of the same wheel: the backend and this Python's stub copied with new mtimes (a new
    key, as a reinstall gets), the server binary and libraries linked to the originals."""
    server_root, new_root = site / "pytriton" / "tritonserver", dest / "pytriton" / "tritonserver"
    stubs = Path("python_backend_stubs") / f"{sys.version_info[0]}.{sys.version_info[1]}"
    shutil.copytree(server_root / "backends", new_root / "backends", copy_function=shutil.copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(server_root / stubs, new_root / stubs, copy_function=shutil.copy)
    for rel in (Path("pytriton/tritonserver/bin"), Path("pytriton/tritonserver/caches"), Path("nvidia_pytriton.libs")):
        (dest / rel).symlink_to(site / rel)
    for info in site.glob("nvidia_pytriton-*.dist-info"):
        shutil.copytree(info, dest / info.name)
    return dest


@pytest.mark.integration
def test_two_installations_serve_side_by_side(tmp_path):
    """Prevents: the second of two virtual environments deleting the first one's backend folder, so the
    first server cannot start its python models; and a server not holding its folder's lock itself."""
    import tritonclient.http as httpclient

    cache = tmp_path / "cache"
    first = find_embedded_triton(cache_root=cache)
    second = find_embedded_triton(site_dir=_second_installation(first.binary.parents[3], tmp_path / "site_b"),
                                  cache_root=cache)
    assert second.backend_dir != first.backend_dir and second.backend_dir.parents[1] == first.backend_dir.parents[1]
    repos = [tmp_path / name / "repo" for name in ("a", "b")]
    for repo in repos:
        write_model(repo, "add_one", ADD_ONE_MODEL)
    x = np.array([[1.0, 2.5, -3.0]], dtype=np.float32)
    with EmbeddedServer(options_for(repos[0]), first) as a, EmbeddedServer(options_for(repos[1]), second) as b:
        for server, triton in ((a, first), (b, second)):
            client = httpclient.InferenceServerClient(server.http_url)
            inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            np.testing.assert_array_equal(client.infer("add_one", [inp]).as_numpy("OUTPUT0"), x + 1)
            client.close()
            lock = os.readlink(f"/proc/self/fd/{triton.lock_fd}")
            assert lock in {os.readlink(fd) for fd in Path(f"/proc/{server.pid}/fd").iterdir()}
