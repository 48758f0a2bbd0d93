"""Making file-system changes survive a power cut, on POSIX file systems.

Terms:
    durable     still there after a power cut. A file's bytes are durable after
                ``fsync`` of the file; a new, renamed or removed *name* only after
                ``fsync`` of the directory that holds it (POSIX requires both;
                ext4's ordered mode often hides a missing directory sync, other
                file systems and the power-loss suite, tests/powerloss, do not).

Every write ckpt needs to keep goes through these: a whole file is written to a
temporary name, synced, renamed over the target, and the directory synced; a
directory ckpt creates is synced into its parent before anything is put in it.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make the names in ``directory`` (creates, renames, unlinks so far) durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(directory: Path) -> None:
    """``mkdir -p`` whose every new directory is durable in its parent, top-down,
    before this returns (a pack put inside a directory whose own entry was lost
    would be lost with it)."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_dir(d.parent)


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably: a crash leaves the
    old file or the new one, never a mix, and once this returns the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
