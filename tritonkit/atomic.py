"""Replace a folder with new contents, all or nothing (render's repositories, k8s's manifest trees).

Everything is staged in a sibling folder and fsynced, then the two folders are swapped with one atomic
rename (Linux renameat2 RENAME_EXCHANGE). A failure at any point before the swap leaves the old folder
byte-identical; a kill at any point leaves either the old folder or the new one.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path
from typing import Iterable

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2). False where the kernel/filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _fsync_tree(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_folder(out: Path, files: dict[str, bytes], keep: Iterable[str] = ()) -> None:
    """Make `out` hold exactly `files` ({relative path: bytes}) plus the files of the old `out` named in
    `keep` (hard-linked where possible: built artifacts are large)."""
    out = Path(out).absolute()
    stage = out.with_name(f".{out.name}.render-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        for rel, data in files.items():
            path = stage / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for rel in keep:
            old = out / rel
            if old.is_file():
                (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(old, stage / rel)
                except OSError:
                    shutil.copy2(old, stage / rel)
        _fsync_tree(stage)
        if out.exists():
            if not _exchange(stage, out):
                backup = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.rename(out, backup)                # fallback: two renames, a short window without `out`
                os.rename(stage, out)
                stage = backup
        else:
            os.rename(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)      # the staged tree, or the old one after the swap
