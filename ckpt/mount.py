"""``ckpt mount DIR``: the store as a read-only FUSE file system (mfusepy).

Terms: the *view* and its naming rule are ``mount_tree.py``'s. A *handle* is
one ``open`` of a file: a number FUSE passes back to ``read`` and ``release``;
the file's ``DiskReader`` is shared by its handles and closed with the last.

mfusepy loads libfuse 2 (Debian's ``libfuse2``, with ``fusermount`` from
``fuse``) or else libfuse 3. It runs FUSE's loop in this thread, multithreaded
(reads of several files or of one file at once: ``DiskReader.pread`` is
thread-safe), in the foreground. It gives SIGINT back to libfuse, which then
unmounts and returns; SIGTERM likewise, where nothing else holds it (the CLI
does not); ``fusermount -u DIR`` from outside ends the loop as well.

Refusals, before anything is mounted: DIR missing, not a directory, not empty
or already a mount point (``InvalidValue``); FUSE unavailable: no
``/dev/fuse``, not permitted to open it, no libfuse, or the mount itself
refused (``OutputFailed``: the mount point is this command's output).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ckpt.domain import CkptError, InvalidValue, OutputFailed

from . import mount_tree
from .mount_tree import DirNode, FileNode
from .unit_of_work import UnitOfWork

DEV_FUSE = "/dev/fuse"
TOLD = 1000  # distinct read errors written to stderr; later ones only fail with EIO
TIMEOUT = 60.0  # s the kernel may cache names and sizes: the view never changes while mounted


def _unavailable(directory: str, why: str) -> OutputFailed:
    return OutputFailed(f"cannot mount at {directory!r}: FUSE is unavailable here: {why}")


def check_directory(directory: str) -> None:
    """DIR must be an empty directory that is not a mount point already."""
    path = Path(directory)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise InvalidValue(f"cannot mount at {directory!r}: it {what}; give an empty directory")
    if os.path.ismount(path):
        raise InvalidValue(
            f"cannot mount at {directory!r}: something is mounted there already "
            f"(one a killed `ckpt mount` left behind goes with `fusermount -u {directory}`)"
        )
    try:
        if any(path.iterdir()):
            raise InvalidValue(f"cannot mount at {directory!r}: it is not empty")
    except PermissionError as e:
        raise InvalidValue(f"cannot mount at {directory!r}: {e.strerror}") from None


def load_fuse(directory: str) -> Any:
    """The mfusepy module, once this machine can mount FUSE (else ``OutputFailed``)."""
    try:
        fd = os.open(DEV_FUSE, os.O_RDWR)
    except OSError as e:
        hint = (
            "load the fuse module, or give the container --device /dev/fuse"
            if e.errno == errno.ENOENT
            else "run as a user allowed to use FUSE"
        )
        raise _unavailable(directory, f"{DEV_FUSE}: {e.strerror} ({hint})") from None
    os.close(fd)
    try:
        import mfusepy
    except ImportError:
        raise _unavailable(directory, "the mfusepy package is not installed") from None
    except OSError as e:  # mfusepy found no libfuse to load
        raise _unavailable(
            directory, f"{e} (Debian: apt-get install libfuse2 fuse, or fuse3)"
        ) from None
    return mfusepy


class CheckpointFS:
    """The FUSE operations over a view (mfusepy calls these by name)."""

    use_ns = True  # times in nanoseconds (mfusepy's current convention)

    def __init__(self, root: DirNode, uow: UnitOfWork, fuse: Any, err: Any) -> None:
        self.root = root
        self.chunks = uow.chunks
        self.fuse = fuse
        self.err = err
        self.uid, self.gid = os.getuid(), os.getgid()
        self._handles: dict[int, FileNode] = {}
        self._next = 1
        self._lock = threading.Lock()
        self._told: set[str] = set()

    def _fail(self, code: int) -> OSError:
        err: OSError = self.fuse.FuseOSError(code)
        return err

    def _node(self, path: str) -> DirNode | FileNode:
        node = mount_tree.lookup(self.root, path)
        if node is None:
            raise self._fail(errno.ENOENT)
        return node

    def _io(self, path: str, work: Callable[[], Any]) -> Any:
        """Run ``work``; a store error is the reader's EIO, told once on stderr."""
        try:
            return work()
        except CkptError as e:
            message = f"ckpt: error: reading {path}: {e}\n"
            with self._lock:  # the kernel retries a failed read: say it once
                told = message in self._told or len(self._told) >= TOLD
                self._told.add(message)
            if not told:
                self.err.write(message)
                self.err.flush()
            raise self._fail(errno.EIO) from None

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        node = self._node(path)
        ns = int(node.mtime * 1e9)
        attrs = {"st_uid": self.uid, "st_gid": self.gid}
        attrs |= {"st_atime": ns, "st_mtime": ns, "st_ctime": ns}
        if isinstance(node, DirNode):
            return attrs | {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
        size = self._io(path, lambda: node.stat_size(self.chunks))
        return attrs | {
            "st_mode": stat.S_IFREG | 0o444,
            "st_nlink": 1,
            "st_size": size,
            "st_blocks": -(-size // 512),
            "st_blksize": 1 << 20,  # `cp` then reads 1 MiB at a time
        }

    def readdir(self, path: str, fh: int) -> list[str]:
        node = self._node(path)
        if not isinstance(node, DirNode):
            raise self._fail(errno.ENOTDIR)
        return [".", "..", *node.children]

    def open(self, path: str, flags: int) -> int:
        node = self._node(path)
        if isinstance(node, DirNode):
            raise self._fail(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise self._fail(errno.EROFS)
        self._io(path, lambda: node.acquire(self.chunks))
        with self._lock:
            fh, self._next = self._next, self._next + 1
            self._handles[fh] = node
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._lock:
            node = self._handles.get(fh)
        reader = None if node is None else node.reader
        if reader is None:
            raise self._fail(errno.EBADF)
        data: bytes = self._io(path, lambda: reader.pread(offset, size))
        return data

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            node = self._handles.pop(fh, None)
        if node is not None:
            node.release()
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}


def mount(
    uow: UnitOfWork,
    directory: str,
    at: str | int | None = None,
    vm: str | None = None,
    ready: Callable[[], None] | None = None,
    err: Any = sys.stderr,
) -> None:
    """Mount the view at ``directory`` and serve it until unmounted (SIGINT,
    SIGTERM, ``fusermount -u``). ``ready``: called just before the mount."""
    check_directory(directory)
    fuse = load_fuse(directory)
    root = mount_tree.build(uow, time.time(), at, vm)
    operations = CheckpointFS(root, uow, fuse, err)
    # libfuse takes over SIGTERM (to unmount) only where it is left at its default
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if ready is not None:
        ready()
    try:
        fuse.FUSE(
            operations, directory, foreground=True, ro=True, fsname="ckpt", subtype="ckpt",
            default_permissions=True, entry_timeout=TIMEOUT, attr_timeout=TIMEOUT,
            kernel_cache=True,
        )  # fmt: skip
    except RuntimeError as e:  # fuse_main's error: libfuse printed its reason above
        raise OutputFailed(
            f"cannot mount at {directory!r}: the FUSE mount failed (fuse_main returned {e})"
        ) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
