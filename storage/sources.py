"""Sources: the files a capture reads, opened, sized and checked.

Terms: a *source* is a file handed over by a Hyper-V host (a raw disk image as
the VM sees it, the memory image, a VMCX/VMRS/XML/VSV/BIN file). Only regular
files are sources; a *container* (VHDX, VHD, qcow2) is refused where raw bytes
are expected. A source's *fingerprint* (device, inode, size, mtime) is taken
before and after reading it: a change in between refuses the capture.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from ckpt.domain import InvalidValue, NotFound, SourceChanged

from .image_formats import VHDX, container_format


def source_size(src: BinaryIO, where: str) -> int:
    try:
        return os.fstat(src.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        src.seek(0, os.SEEK_END)
        size = src.tell()
        src.seek(0)
        if size < 0:
            raise InvalidValue(f"{where}: cannot tell its size") from None
        return size


_NOT_REGULAR = (
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISFIFO, "a pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def open_source(path: str | Path, what: str) -> BinaryIO:
    """A regular file (a symlink to one is followed) opened for reading.

    Anything else is refused: fstat gives no size for a block device, a pipe or
    /dev/stdin, and such a source was recorded as a 0-byte disk with exit 0
    (issue 11). Opened non-blocking first, so a FIFO without a writer is
    refused instead of hanging the open.
    """
    nonblock = getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, os.O_RDONLY | nonblock | getattr(os, "O_BINARY", 0))
    except OSError as e:
        # A path that names nothing is the caller's to fix, like an unknown VM
        # (NotFound, exit 12); unreadable (EACCES, EISDIR...) stays an invalid value.
        cls = NotFound if e.errno == errno.ENOENT else InvalidValue
        raise cls(f"cannot read {what} {str(path)!r}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((k for test, k in _NOT_REGULAR if test(mode)), "not a regular file")
            raise InvalidValue(
                f"{str(path)!r} ({what}) is {kind}: only regular files can be captured; "
                "devices and pipes are not supported yet (their size cannot be read up front)"
            )
        if nonblock:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def refuse_container(src: BinaryIO, where: str, vhdx_hint: str) -> None:
    """Refuse a VHDX, VHD or qcow2 file where a raw image is expected."""
    kind = container_format(src, source_size(src, where))
    if kind is None:
        return
    how = (
        vhdx_hint
        if kind == VHDX
        else f"convert it to raw with `qemu-img convert -O raw {where} DISK.raw`"
    )
    raise InvalidValue(
        f"{where} is {kind}, not a raw disk image: {how}; "
        "or pass --format raw to capture its bytes as they are"
    )


Fingerprint = tuple[int, int, int, int]  # (device, inode, size, mtime in ns)


def fingerprint(src: BinaryIO) -> Fingerprint | None:
    try:
        st = os.fstat(src.fileno())
    except (AttributeError, OSError, ValueError):
        return None  # a stream (a VHDX chain read in Python): nothing to compare
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def check_unchanged(src: BinaryIO, where: str, before: Fingerprint | None) -> None:
    """Refuse a capture whose source changed while it was read: its blocks were
    read at different moments, so they need not belong to one disk state."""
    if before is None:
        return
    after = fingerprint(src)
    try:
        now = os.stat(where)
        path_is = (now.st_dev, now.st_ino)
    except OSError:
        path_is = None
    what = None
    if after is not None and after[2] != before[2]:
        what = f"its size changed from {before[2]} to {after[2]} bytes"
    elif after is not None and after[3] != before[3]:
        what = "it was written to (its modification time changed)"
    elif path_is != before[:2]:
        what = "the path was removed or now names another file"
    if what is not None:
        raise SourceChanged(f"{where} changed during the capture: {what}; {_UNCHANGED}")


_UNCHANGED = (
    "nothing was recorded. Capture a snapshot of a live image (VSS, LVM, qemu) for a "
    "consistent copy, or capture again once it is quiet"
)


def changed(where: str, e: SourceChanged) -> SourceChanged:
    return SourceChanged(f"{where} changed during the capture: {e}; {_UNCHANGED}")
