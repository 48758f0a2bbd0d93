"""The chunk backend port and its memory and local-directory adapters.

Terms:
    backend  a flat store of named, immutable-in-practice byte objects (a
             directory, an S3 bucket, a dict). The chunk store keeps two kinds
             of object in it: packs (``packs/ab/<32 hex>.pack``) and index files
             (``index/<32 hex>.idx``), see ``layout``.
    name     a relative, ``/``-separated object name. Each component is
             ``[A-Za-z0-9_-][A-Za-z0-9._-]*``: no empty, ``.``, ``..`` or hidden
             component, so a name can never escape a directory root, and temp
             files (``.name.<random>.tmp``) can never collide with a real name.

The port is deliberately narrow (six verbs) so an S3 adapter is a page of code.
Every adapter passes the same contract tests (tests/unit/chunks/test_chunk_backend.py).
Missing names raise ``ChunkMissing`` naming the object and the backend.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, Protocol

from ckpt.domain.errors import ChunkMissing, StorageError, StoreIOError, StoreReadOnly
from ckpt.storage.durable import fsync_dir, make_dirs
from ckpt.storage.no_space import is_no_space, os_reason, store_full

_COMPONENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_PREFIX = re.compile(rf"(?:{_COMPONENT}/)*[A-Za-z0-9._-]*")
# 1,024 bytes is S3's key limit; ours are < 60 bytes.
MAX_NAME = 1024


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid object name, else raise ``ValueError``."""
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise ValueError(f"invalid chunk backend object name {name!r}")
    return name


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can start a valid name (``""`` lists all)."""
    if len(prefix) > MAX_NAME or not _PREFIX.fullmatch(prefix) or prefix.startswith("."):
        raise ValueError(f"invalid chunk backend name prefix {prefix!r}")
    if any(part.startswith(".") for part in prefix.split("/")[:-1]):
        raise ValueError(f"invalid chunk backend name prefix {prefix!r}")
    return prefix


def check_range(offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"invalid range: offset {offset}, length {length}")


class ChunkBackend(Protocol):
    """Where packs and index files live. All methods may be called from threads."""

    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name``, replacing any object of that name.

        Atomic (a reader sees the old object or the whole new one, never part)
        and durable when it returns (it survives a power cut)."""

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """The bytes ``[offset, offset + length)`` of the object, clipped at its
        end (so a short result means the object is shorter than asked for).
        ``length=None`` reads to the end. ``ChunkMissing`` if there is none."""
        ...

    def exists(self, name: str) -> bool:
        """Whether an object of that name exists."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Names of all objects starting with ``prefix`` (a plain string prefix,
        as in S3), in sorted order."""
        ...

    def delete(self, name: str) -> None:
        """Remove the object, durably. ``ChunkMissing`` if there is none."""

    def size(self, name: str) -> int:
        """Length of the object in bytes. ``ChunkMissing`` if there is none."""
        ...


def parallel_requests(backend: ChunkBackend) -> int:
    """How many requests at once pay off on ``backend``: an adapter may say so
    with a ``parallel_requests`` attribute (S3: latency-bound, several); local
    files are CPU- and disk-bound, and one at a time measured fastest."""
    value = getattr(backend, "parallel_requests", 1)
    return value if isinstance(value, int) and value > 0 else 1


class MemoryChunkBackend:
    """A backend in a dict: for tests and for throw-away stores."""

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryChunkBackend(<{len(self._objects)} objects at {id(self):#x}>)"

    def _missing(self, name: str) -> ChunkMissing:
        return ChunkMissing(f"no object {name!r} in {self!r}")

    def put(self, name: str, data: bytes) -> None:
        check_name(name)
        with self._lock:
            self._objects[name] = bytes(data)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        check_name(name)
        check_range(offset, length)
        try:
            data = self._objects[name]
        except KeyError:
            raise self._missing(name) from None
        end = len(data) if length is None else offset + length
        return data[offset:end]

    def exists(self, name: str) -> bool:
        return check_name(name) in self._objects

    def list(self, prefix: str) -> Iterator[str]:
        check_prefix(prefix)
        with self._lock:
            names = sorted(n for n in self._objects if n.startswith(prefix))
        return iter(names)

    def delete(self, name: str) -> None:
        check_name(name)
        with self._lock:
            if self._objects.pop(name, None) is None:
                raise self._missing(name)

    def size(self, name: str) -> int:
        check_name(name)
        try:
            return len(self._objects[name])
        except KeyError:
            raise self._missing(name) from None


# Errors that mean "there is no object of that name": the file is absent, the
# name is a directory, or a directory on the way is a file.
_ABSENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError)
# Errors of the medium itself, not of the name: a sector that cannot be read
# (EIO), a device that went away (ENXIO, ENOMEDIUM), a remote block device's
# failure (EREMOTEIO), a damaged file system (EUCLEAN: ext4's and XFS's
# "structure needs cleaning"). Retrying does not help; another copy might.
MEDIA_ERRNOS = frozenset({errno.EIO, errno.ENXIO, errno.EREMOTEIO, errno.ENOMEDIUM, errno.EUCLEAN})


def media_error(error: OSError, what: str, name: str | None, path: Path) -> StorageError | None:
    """The ckpt error for an ``OSError`` of the store's medium, or None for any
    other: ``StoreIOError`` (exit 39) naming the object and its file,
    ``StoreReadOnly`` (exit 38) for a write refused by a read-only mount."""
    reason = error.strerror or str(error)
    if error.errno in MEDIA_ERRNOS:
        where = f"{name!r} ({path})" if name is not None else str(path)
        return StoreIOError(
            f"I/O error: cannot {what} {where}: {reason} (errno {error.errno}): "
            "the store's disk or file system failed",
            name,
            str(path),
        )
    if error.errno == errno.EROFS:
        return StoreReadOnly(f"cannot {what} {path}: the store is on a read-only file system")
    return None


class LocalChunkBackend:
    """A backend in a local directory: object ``a/b/c`` is file ``root/a/b/c``.

    ``put`` writes ``.c.<random>.tmp`` next to the target, fsyncs it, renames it
    over the target and fsyncs the directory: rename is atomic on POSIX file
    systems, and the directory fsync makes the rename itself survive a power
    cut. A put refused for room (ENOSPC, EDQUOT, EFBIG) removes its temp file and
    raises ``StoreFull`` with the object's size (storage/no_space.py).
    ``delete`` fsyncs the directory too, because the chunk store relies on
    the order of deletes (index file before pack) surviving a crash.
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(root)

    def __repr__(self) -> str:
        return f"LocalChunkBackend({str(self._root)!r})"

    @property
    def root(self) -> Path:
        return self._root

    def _path(self, name: str) -> Path:
        return self._root.joinpath(*check_name(name).split("/"))

    def _fail(self, verb: str, name: str, error: OSError) -> NoReturn:
        if isinstance(error, _ABSENT):
            raise ChunkMissing(f"no object {name!r} in {self!r}") from error
        media = media_error(error, verb, name, self._path(name))
        if media is not None:
            raise media from error
        raise StorageError(f"cannot {verb} {name!r} in {self!r}: {error}") from error

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            make_dirs(path.parent)
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)  # a partial temp file would hold the space it got
            if is_no_space(e):
                raise store_full(
                    repr(name), str(self._root), len(data), os_reason(e), self._root
                ) from e
            media = media_error(e, "write", name, path)
            if media is not None:
                raise media from e
            raise StorageError(f"cannot put {name!r} in {self!r}: {e}") from e

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(name)
        check_range(offset, length)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read() if length is None else f.read(length)
        except OSError as e:
            self._fail("read", name, e)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def list(self, prefix: str) -> Iterator[str]:
        # Walk only the deepest directory the prefix names: listing "packs/"
        # never reads "index/" (thousands of files on a large store).
        directory, _, _ = check_prefix(prefix).rpartition("/")
        start = self._root.joinpath(*directory.split("/")) if directory else self._root
        base = f"{directory}/" if directory else ""
        names = sorted(n for n in _walk(start, base) if n.startswith(prefix))
        return iter(names)

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink()
            fsync_dir(path.parent)
        except OSError as e:
            self._fail("delete", name, e)

    def size(self, name: str) -> int:
        path = self._path(name)
        try:
            if not path.is_file():
                raise FileNotFoundError(str(path))
            return path.stat().st_size
        except OSError as e:
            self._fail("stat", name, e)


def _walk(directory: Path, base: str) -> Iterator[str]:
    try:
        entries = list(os.scandir(directory))
    except _ABSENT:
        return
    for entry in entries:
        if entry.name.startswith("."):  # temp files and anything hidden
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), f"{base}{entry.name}/")
        elif entry.is_file(follow_symlinks=False):
            yield f"{base}{entry.name}"
