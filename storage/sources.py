"""Sources: what a capture reads, opened, sized and checked.

Terms: a *source* is what a Hyper-V host or a backup tool hands over: a raw
disk image as the VM sees it, the memory image, a VMCX/VMRS/XML/VSV/BIN file.
It comes as a path or, in the Python API, as a readable binary stream
(``StreamSource``). Three kinds:

- a *file* (a regular file; a symlink to one is followed): sized by fstat,
  read with pread on the capture's threads, holes skipped (SEEK_DATA);
- a *device* (a block device: an LVM/ZFS snapshot, a loop device, iSCSI):
  sized by seeking to its end (fstat says 0), read with pread, all of it;
- a *one-shot* source (a pipe, a FIFO, a socket, a character device, standard
  input, a stream that cannot seek): read once, in order, until its end or its
  declared size (``capture_stream``); it cannot be read again, so a capture
  that would need a second reading is refused instead.

A *container* (VHDX, VHD, qcow2) is refused where raw bytes are expected. A
file's or device's *fingerprint* (device, inode, size, mtime; a block device's
mtime is not compared, it need not move when the device is written) is taken
before and after reading it: a change in between refuses the capture.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ckpt.domain import InvalidValue, NotFound, SourceChanged

from .image_formats import (
    VHD,
    VHD_FOOTER,
    VHDX,
    container_format,
    container_format_of_head,
    container_format_of_tail,
)


@dataclass(frozen=True)
class StreamSource:
    """A readable binary stream given as a disk image or a file, with its size
    when the stream cannot tell it (a pipe, a socket).

    ``size``: the bytes to capture from the start of the stream; a stream that
    ends before it is refused (``SourceChanged``), one that holds more is read
    no further. None: a stream that can seek is read whole, like a file; one
    that cannot is read until its end. ``name`` says what messages call it
    (default: the stream's ``name``, e.g. ``'<stdin>'``). The stream is read
    from its start (offset 0) when it can seek, and is never closed here.
    """

    stream: BinaryIO
    size: int | None = None
    name: str | None = None


@dataclass
class Source:
    """An opened source: its stream, what messages call it, and how it reads.

    ``one_shot``: read once, in order (no seeks, no reads at offsets);
    ``size``: a size given by the caller, else None (found from the source);
    ``path``: the path it was opened from (None for a given stream), checked
    again after the capture; ``head``: bytes a one-shot source has already
    delivered (to look for a container's signature), read first.
    """

    stream: BinaryIO
    where: str
    one_shot: bool = False
    size: int | None = None
    path: str | None = None
    head: bytes = b""
    # The last bytes a one-shot source delivered: a fixed VHD keeps its footer in
    # its last 512 (511 before Virtual PC 2004) bytes, known only once it has ended.
    tail: bytes = b""

    def peek(self, n: int) -> bytes:
        """The first ``n`` bytes (fewer if the source is shorter), still to be read."""
        if not self.one_shot:
            return read_at(self.stream, 0, n)
        if len(self.head) < n:
            self.head += read_fully(self.stream, n - len(self.head))
        return self.head[:n]

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes of a one-shot source (fewer only at its end)."""
        if not self.head:
            out = read_fully(self.stream, n)
        else:
            out, self.head = self.head[:n], self.head[n:]
            if len(out) < n:
                out += read_fully(self.stream, n - len(out))
        if out:
            self.tail = (self.tail + out[-VHD_FOOTER:])[-VHD_FOOTER:]
        return out


def read_fully(stream: BinaryIO, n: int) -> bytes:
    """``n`` bytes from ``stream``, fewer only at its end: a pipe or socket
    delivers what the writer has written so far (64 KiB at a time for a pipe)."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        data = stream.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_at(src: BinaryIO, offset: int, length: int) -> bytes:
    try:
        return os.pread(src.fileno(), length, offset)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        src.seek(offset)
        return src.read(length) or b""


def _fd(src: BinaryIO) -> int | None:
    try:
        return src.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def is_device(src: BinaryIO) -> bool:
    fd = _fd(src)
    return fd is not None and stat.S_ISBLK(os.fstat(fd).st_mode)


def source_size(src: BinaryIO, where: str) -> int:
    """The size of a file, a block device or a seekable stream."""
    fd = _fd(src)
    if fd is not None:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            return st.st_size
        if stat.S_ISBLK(st.st_mode):  # fstat says 0 for a device: its end says its size
            try:
                return os.lseek(fd, 0, os.SEEK_END)
            except OSError as e:
                raise InvalidValue(
                    f"{where}: cannot find the device's size: {e.strerror}"
                ) from None
    try:
        size = src.seek(0, os.SEEK_END)
        src.seek(0)
    except (OSError, ValueError) as e:
        raise InvalidValue(f"{where}: cannot tell its size ({e}); give it with size=") from None
    if size < 0:
        raise InvalidValue(f"{where}: cannot tell its size; give it with size=")
    return size


def _readable(stream: object) -> bool:
    read = getattr(stream, "read", None)
    if isinstance(stream, io.TextIOBase) or not callable(read):
        return False
    readable = getattr(stream, "readable", None)
    return not callable(readable) or bool(readable())


def _seekable(stream: BinaryIO) -> bool:
    can = getattr(stream, "seekable", None)
    try:
        return callable(can) and bool(can())
    except (OSError, ValueError):
        return False


@contextmanager
def opened(given: str | Path | StreamSource, what: str) -> Iterator[Source]:
    """The source ``given`` (a path or a ``StreamSource``) opened for one capture;
    a path's file is closed afterwards, a given stream is left open."""
    if isinstance(given, StreamSource):
        stream = given.stream
        name = given.name or getattr(stream, "name", None)
        where = str(name) if isinstance(name, str | int) else f"the stream given as {what}"
        if not _readable(stream):
            raise InvalidValue(f"{where} ({what}) is not a binary stream open for reading")
        one_shot = not _seekable(stream)
        if not one_shot:
            fd = _fd(stream)
            if fd is not None and not (
                stat.S_ISREG(os.fstat(fd).st_mode) or stat.S_ISBLK(os.fstat(fd).st_mode)
            ):
                one_shot = True  # sys.stdin.buffer on a pipe may claim seekable: trust fstat
        yield Source(stream, where, one_shot, given.size)
        return
    with open_source(given, what) as f:
        yield Source(f, str(given), not _pread_able(f), None, str(given))


def size_hint(path: str | Path) -> int:
    """The bytes a progress bar may expect from ``path``: a file's or a block device's
    size, 0 when it cannot be told without reading (a pipe) or the path is bad."""
    try:
        st = os.stat(path)
        if not stat.S_ISBLK(st.st_mode):
            return st.st_size if stat.S_ISREG(st.st_mode) else 0
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return 0  # an unreadable source fails clearly when it is opened
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    except OSError:
        return 0
    finally:
        os.close(fd)


def is_fifo(path: str | Path) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def is_one_shot_path(path: str | Path) -> bool:
    """Whether ``path`` names a pipe, FIFO, socket or character device (False when
    it cannot be stat'ed: opening it then says why)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


def _pread_able(f: BinaryIO) -> bool:
    mode = os.fstat(f.fileno()).st_mode
    return stat.S_ISREG(mode) or stat.S_ISBLK(mode)


def open_source(path: str | Path, what: str) -> BinaryIO:
    """A file, block device, pipe, FIFO, socket or character device, opened for reading.

    A directory is refused. A FIFO is opened blocking: that waits for its
    writer, as ``cat`` does (opened non-blocking, a read before the writer came
    would see its end at once: a 0-byte disk; and opening it again after a
    non-blocking open lost what a quick writer had already written, found as a
    hang). Anything else is opened non-blocking, then set to blocking, so that a
    FIFO that the path names only by the time of the open does not hang it.
    """
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)
    nonblock = 0 if is_fifo(path) else getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | nonblock)
    except OSError as e:
        # A path that names nothing is the caller's to fix, like an unknown VM
        # (NotFound, exit 12); unreadable (EACCES, EISDIR...) stays an invalid value.
        cls = NotFound if e.errno == errno.ENOENT else InvalidValue
        raise cls(f"cannot read {what} {str(path)!r}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise InvalidValue(f"{str(path)!r} ({what}) is a directory, not an image or a file")
        if nonblock:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def refuse_container(source: Source, vhdx_hint: str) -> None:
    """Refuse a VHDX, VHD or qcow2 file where a raw image is expected. A one-shot
    source is judged by its first bytes here, and by its last ones once it has
    ended (``refuse_container_tail``: a fixed VHD's footer is at its end)."""
    where = source.where
    if source.one_shot:
        kind = container_format_of_head(source.peek(8))
    else:
        kind = container_format(source.stream, source.size or source_size(source.stream, where))
    _refuse(source, kind, vhdx_hint)


def refuse_container_tail(source: Source) -> None:
    """After a one-shot source has ended: refuse it if its last bytes are a fixed
    VHD's footer (its head said nothing). The capture is not recorded then; its
    chunks, unreferenced, go at the next gc."""
    if source.one_shot and container_format_of_tail(source.tail) is not None:
        _refuse(source, VHD, "")


def _refuse(source: Source, kind: str | None, vhdx_hint: str) -> None:
    where = source.where
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
    fd = _fd(src)
    if fd is None:
        return None  # a stream (a VHDX chain read in Python): nothing to compare
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        # a device's mtime is its node's, not its content's; its size is at its end
        return st.st_dev, st.st_ino, os.lseek(fd, 0, os.SEEK_END), 0
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def check_unchanged(source: Source, before: Fingerprint | None) -> None:
    """Refuse a capture whose source changed while it was read: its blocks were
    read at different moments, so they need not belong to one disk state."""
    if before is None:
        return
    after = fingerprint(source.stream)
    path_is: tuple[int, int] | None = before[:2]
    if source.path is not None:
        try:
            now = os.stat(source.path)
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
        raise SourceChanged(f"{source.where} changed during the capture: {what}; {_UNCHANGED}")


_UNCHANGED = (
    "nothing was recorded. Capture a snapshot of a live image (VSS, LVM, qemu) for a "
    "consistent copy, or capture again once it is quiet"
)


def changed(where: str, e: SourceChanged) -> SourceChanged:
    return SourceChanged(f"{where} changed during the capture: {e}; {_UNCHANGED}")
