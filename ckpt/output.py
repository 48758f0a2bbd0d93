"""Where ``ckpt restore -o FILE`` writes, and how, for each kind of target.

Terms: the *target* is what FILE names after following its symlinks (a
symlink is kept; its target is written). The kinds (decision record 0007):

- *new or replaced regular file* (one link): written to ``TARGET.ckpt-partial``
  beside it and renamed over it only once every chunk was read and checked,
  so a failed restore never leaves wrong bytes under FILE. A replaced file's
  mode (and owner and group, when we may set them) is carried over.
- *hard-linked regular file* (more than one link): written in place, so every
  name keeps sharing the new bytes; on failure it is emptied (0 bytes), never
  left holding a prefix that looks like an image.
- *block device*: written in place, never truncated, zeros written out
  (``storage.restore`` writes holes only into regular files: a device may
  hold old data); refused when smaller than the image.
- *character device, FIFO or pipe* (``/dev/null``, ``/dev/fd/N``, ``>(cmd)``):
  written in place, front to back, never sought.
- *directory*: refused before anything is written.
- ``-``: standard output.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ckpt.domain import InvalidValue, OutputFailed

PARTIAL_SUFFIX = ".ckpt-partial"


class Kind(enum.Enum):
    STDOUT = "stdout"
    FILE = "file"  # a new file, or one replaced atomically
    LINKED_FILE = "linked file"  # st_nlink > 1: in place
    BLOCK_DEVICE = "block device"
    STREAM = "stream"  # character device, FIFO, pipe: front to back


@dataclass(frozen=True)
class Target:
    given: str  # as the user wrote it (named in messages)
    path: str  # the file written: symlinks followed
    kind: Kind
    existing: os.stat_result | None  # the regular file replaced, if any

    @property
    def seekable(self) -> bool:
        return self.kind in (Kind.FILE, Kind.LINKED_FILE, Kind.BLOCK_DEVICE)


def resolve(given: str) -> Target:
    """Classify ``-o FILE``; refuse a directory before anything is written."""
    if given == "-":
        return Target(given, given, Kind.STDOUT, None)
    try:
        st = os.stat(given)  # through symlinks
    except FileNotFoundError:  # a new file (through a dangling symlink: its target)
        return Target(given, os.path.realpath(given), Kind.FILE, None)
    except OSError as e:
        raise InvalidValue(f"cannot write {given!r}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidValue(
            f"{given!r} is a directory; give a file name, or --state-files -o DIR for state files"
        )
    # Opened by the name given: /dev/fd/N of a pipe is a link to "pipe:[inode]",
    # a name that only opening through the link reaches.
    if stat.S_ISBLK(st.st_mode):
        return Target(given, given, Kind.BLOCK_DEVICE, None)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return Target(given, given, Kind.STREAM, None)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidValue(f"cannot write {given!r}: not a file, device or pipe")
    # A regular file is replaced where it lives: through a symlink, its target.
    path = os.path.realpath(given)
    return Target(given, path, Kind.LINKED_FILE if st.st_nlink > 1 else Kind.FILE, st)


def _open(target: Target) -> tuple[BinaryIO, str | None]:
    """The stream to write, and the partial file's path when there is one."""
    if target.kind is Kind.STDOUT:
        return sys.stdout.buffer, None
    partial = target.path + PARTIAL_SUFFIX if target.kind is Kind.FILE else None
    name = target.given  # the stream's name, for messages from storage.restore

    def opener(_: str, __: int) -> int:
        if partial is None:  # in place: no O_CREAT, no O_TRUNC (a device keeps its node)
            return os.open(target.path, os.O_WRONLY | os.O_CLOEXEC)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)  # a crashed restore's leftover
        # A replaced file's mode from the first byte: a 0600 image is never
        # readable by others, not even while it is being written.
        old = target.existing
        fd = os.open(
            partial,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
            0o666 if old is None else stat.S_IMODE(old.st_mode),
        )
        if old is not None:
            _carry_over(fd, old)
        return fd

    try:
        return open(name, "wb", opener=opener), partial
    except OSError as e:
        if partial is not None:
            with contextlib.suppress(OSError):
                os.unlink(partial)
        raise InvalidValue(f"cannot write {target.given!r}: {e.strerror}") from None


def _carry_over(fd: int, old: os.stat_result) -> None:
    # Owner first: a change of owner clears the set-user/group-id bits. Only root
    # may give a file away; anyone else keeps the file as their own.
    with contextlib.suppress(PermissionError):
        os.fchown(fd, old.st_uid, old.st_gid)
    os.fchmod(fd, stat.S_IMODE(old.st_mode))  # os.open's mode went through the umask


@contextlib.contextmanager
def writing(target: Target) -> Iterator[BinaryIO]:
    """Open the target; on success make the output final (rename a partial file),
    on any failure (Ctrl-C included) remove what was partly written.

    An ``OSError`` while writing (no space, quota, I/O) becomes ``OutputFailed``
    naming the file; errors of the store pass through unchanged.
    """
    stream, partial = _open(target)
    try:
        yield stream
        stream.flush()
        if target.kind is not Kind.STDOUT:
            stream.close()
        if partial is not None:
            os.replace(partial, target.path)
            partial = None
    except BaseException as e:
        _discard(target, stream, partial)
        # The restore use cases wrap the stream's OSError in OutputFailed (for API
        # callers); here the target is known, so say what was left of it.
        cause = e.__cause__ if isinstance(e, OutputFailed) else e
        # A closed reader on standard output is the reader's choice (`| head`): main exits 0.
        if isinstance(cause, BrokenPipeError) and target.kind is Kind.STDOUT:
            raise cause from None
        if isinstance(cause, OSError):
            raise OutputFailed(_failure(target, cause)) from None
        raise


def _failure(target: Target, e: OSError) -> str:
    reason = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
    left = {
        Kind.FILE: "the partial file was removed",
        Kind.LINKED_FILE: "the file (hard-linked, written in place) was emptied",
        Kind.BLOCK_DEVICE: "the device holds a partial image",
        Kind.STREAM: "the reader got a partial image",
        Kind.STDOUT: "the reader got a partial image",
    }[target.kind]
    return f"cannot write {target.given!r}: {reason}; {left}"


def _discard(target: Target, stream: BinaryIO, partial: str | None) -> None:
    if target.kind is Kind.STDOUT:
        return
    if target.kind is Kind.LINKED_FILE and target.existing is not None:
        with contextlib.suppress(OSError, ValueError):
            now = os.fstat(stream.fileno())
            # Untouched (a failure before the first write, e.g. a wrong checkpoint
            # name) keeps the old bytes; a started one must not pass for an image.
            if (now.st_size, now.st_mtime_ns) != (
                target.existing.st_size,
                target.existing.st_mtime_ns,
            ):
                os.ftruncate(stream.fileno(), 0)
    with contextlib.suppress(OSError, ValueError):
        stream.close()  # a full disk may refuse the last flush: the file is removed anyway
    if partial is not None:
        with contextlib.suppress(OSError):
            os.unlink(partial)
