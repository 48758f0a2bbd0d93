"""Content of checkpoints: capture into the chunk store, restore out of it, and what refers to what.

Terms: a *source* is a file handed over by a Hyper-V host (a raw disk image as
the VM sees it, the memory image, a VMCX/VMRS/XML/VSV/BIN file). *Capturing*
a disk diffs it against the running chain's present content; *restoring*
folds a chain's manifests and writes the bytes. *References* are the chunks
that the events name, through their manifests: what ``verify`` checks and
what ``gc`` keeps.

Block sizes (docs/decisions/0002-chunking.md): 4 KiB for disks and memory,
the page and file-system block size, so a changed page costs one 4 KiB chunk.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from uuid import UUID

from ckpt.domain import (
    DiskCapture,
    FileCapture,
    FileRole,
    InvalidValue,
    NotFound,
    SourceChanged,
    VirtualMachine,
)
from ckpt.storage import manifest
from ckpt.storage.capture import capture
from ckpt.storage.chunks.backend import parallel_requests
from ckpt.storage.image_formats import VHDX, container_format
from ckpt.storage.manifest import KIND_DISK, KIND_FILE, BlockMap
from ckpt.storage.restore import write_image

DISK_BLOCK = 4096
FILE_BLOCK = 4096
Progress = Callable[[int], None]


class Writer(Protocol):
    def add(self, data: bytes) -> bytes | None: ...


class Chunks(Protocol):
    """What this module needs of ``ckpt.storage.chunks.ChunkStore``."""

    def has(self, cid: bytes) -> bool: ...

    def get(self, cid: bytes) -> bytes: ...


class Session:
    """One capture's writer: dedup inside the session too, compression on the pool.

    New blocks are compressed in batches on the worker threads (zstd releases
    the GIL) and handed to the writer in order; ``finish`` drains what is left
    and must run before the writer flushes.
    """

    BATCH = 256  # blocks per compression task: 1 MiB of input, ~3 ms of zstd work

    def __init__(self, writer: Any, chunks: Chunks, pool: Executor | None = None) -> None:
        from ckpt.storage.chunks.codec import ChunkCodec

        self.writer = writer
        self.chunks = chunks
        self.pool = pool
        codec = getattr(chunks, "codec", None)
        self.codec = codec if isinstance(codec, ChunkCodec) else ChunkCodec()
        # SHA-256 ids are computed by the capture's own fast loop; keyed ids by the codec
        self.hasher = self.codec.identify if self.codec.keyed else None
        self.seen: set[bytes] = set()
        self.batch: list[tuple[bytes, bytes]] = []
        self.pending: deque[tuple[list[tuple[bytes, bytes]], Future[list[bytes]]]] = deque()

    def sink(self, cid: bytes, data: bytes) -> int:
        if cid in self.seen or self.chunks.has(cid):
            return 0
        self.seen.add(cid)
        self.batch.append((cid, data))
        if len(self.batch) >= self.BATCH:
            self._submit()
        return len(data)

    def _compress(self, batch: list[tuple[bytes, bytes]]) -> list[bytes]:
        return [self.codec.compress(data, cid) for cid, data in batch]

    def _submit(self) -> None:
        batch, self.batch = self.batch, []
        if self.pool is None:
            self._hand_over(batch, self._compress(batch))
            return
        self.pending.append((batch, self.pool.submit(self._compress, batch)))
        while len(self.pending) > 4:
            done, future = self.pending.popleft()
            self._hand_over(done, future.result())

    def _hand_over(self, batch: list[tuple[bytes, bytes]], frames: list[bytes]) -> None:
        for (cid, data), frame in zip(batch, frames, strict=True):
            self.writer.add_compressed(cid, frame, len(data))

    def finish(self) -> None:
        if self.batch:
            self._submit()
        while self.pending:
            done, future = self.pending.popleft()
            self._hand_over(done, future.result())

    def add(self, data: bytes) -> bytes:
        """Store a manifest (or piece) directly; returns its id."""
        self.finish()
        cid: bytes | None = self.writer.add(data)
        assert cid is not None
        return cid


class ManifestCache:
    """Decoded manifests by id; a chain is read many times while capturing and verifying."""

    def __init__(self, chunks: Chunks, limit: int = 64) -> None:
        self.chunks = chunks
        self.limit = limit
        self.cache: dict[bytes, BlockMap] = {}

    def load(self, ref: bytes) -> BlockMap:
        bm = self.cache.get(ref)
        if bm is None:
            bm = manifest.load(ref, self.chunks.get)
            if len(self.cache) >= self.limit:
                self.cache.pop(next(iter(self.cache)))
            self.cache[ref] = bm
        return bm

    def load_many(self, refs: list[bytes]) -> list[BlockMap]:
        """``load`` of each; the manifests not cached are fetched with one
        ``get_many`` first (on S3, a chain of 24 manifests cost 24 round trips,
        90 of a capture's 110 ms)."""
        missing = [r for r in dict.fromkeys(refs) if r not in self.cache]
        get_many = getattr(self.chunks, "get_many", None)
        if len(missing) < 2 or get_many is None:
            return [self.load(r) for r in refs]
        fetched = dict(zip(missing, get_many(missing), strict=True))
        loaded = {
            r: manifest.load(r, lambda cid: fetched.get(cid) or self.chunks.get(cid))
            for r in missing
        }
        for r, bm in loaded.items():
            if len(self.cache) >= self.limit:
                self.cache.pop(next(iter(self.cache)))
            self.cache[r] = bm
        return [loaded[r] if r in loaded else self.load(r) for r in refs]


def chain_maps(vm: VirtualMachine, leaf: UUID, cache: ManifestCache) -> list[BlockMap]:
    """Every manifest of the chain from the base disk down to ``leaf``, oldest first."""
    from ckpt.domain.layers import chain

    return cache.load_many(
        [ref for layer in chain(vm.layers, leaf) for ref in vm.contents.get(layer.id, ())]
    )


def _size(src: BinaryIO, where: str) -> int:
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
    kind = container_format(src, _size(src, where))
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


def _fingerprint(src: BinaryIO) -> Fingerprint | None:
    try:
        st = os.fstat(src.fileno())
    except (AttributeError, OSError, ValueError):
        return None  # a stream (a VHDX chain read in Python): nothing to compare
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _check_unchanged(src: BinaryIO, where: str, before: Fingerprint | None) -> None:
    """Refuse a capture whose source changed while it was read: its blocks were
    read at different moments, so they need not belong to one disk state."""
    if before is None:
        return
    after = _fingerprint(src)
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


def _changed(where: str, e: SourceChanged) -> SourceChanged:
    return SourceChanged(f"{where} changed during the capture: {e}; {_UNCHANGED}")


def capture_disk(
    vm: VirtualMachine,
    disk: str,
    src: BinaryIO,
    where: str,
    session: Session,
    cache: ManifestCache,
    extents: Sequence[tuple[int, int]] | None = None,
    progress: Progress | None = None,
    segments: Sequence[tuple[int, int]] | None = None,
) -> DiskCapture:
    """Capture ``src`` (whose path is ``where``) as the disk's running content."""
    if disk not in vm.running:
        known = ", ".join(vm.running)
        raise InvalidValue(f"VM {vm.name!r} has no disk {disk!r} (disks: {known})")
    layer = vm.running[disk]
    # The decoded manifests are needed only for their overlay: a cache of its own,
    # dropped here, keeps them out of the capture's peak memory (benchmark step 4:
    # peak RSS 268-288 MiB with the shared cache, 252 MiB without).
    parent, block_size, parent_size = manifest.overlay(
        chain_maps(vm, layer, ManifestCache(cache.chunks))
    )
    if block_size not in (0, DISK_BLOCK):
        raise InvalidValue(f"disk {disk!r} was captured with {block_size}-byte blocks before")
    before = _fingerprint(src)
    size = _size(src, where)
    if size % 512:
        raise InvalidValue(f"{where}: {size} bytes is not a whole number of 512-byte sectors")
    try:
        result = capture(
            src,
            size,
            DISK_BLOCK,
            parent,
            session.sink,
            extents,
            progress,
            session.pool,
            segments,
            session.hasher,
            parent_size=parent_size,  # 0 for the first capture: all of it is new
        )
    except SourceChanged as e:
        raise _changed(where, e) from None
    _check_unchanged(src, where, before)
    session.finish()
    ref = manifest.store(BlockMap(KIND_DISK, DISK_BLOCK, size, result.entries), session.add)
    return DiskCapture(
        disk=disk,
        layer=layer,
        manifest=ref,
        base=len(vm.contents.get(layer, ())),
        virtual_size=size,
        block_size=DISK_BLOCK,
        changed_blocks=len(result.entries),
        read_bytes=result.read_bytes,
        added_bytes=result.added_bytes,
    )


def capture_file(
    role: FileRole, src: BinaryIO, where: str, session: Session, progress: Progress | None = None
) -> FileCapture:
    before = _fingerprint(src)
    size = _size(src, where)
    try:
        result = capture(
            src, size, FILE_BLOCK, {}, session.sink, None, progress, session.pool, None,
            session.hasher,
        )  # fmt: skip
    except SourceChanged as e:
        raise _changed(where, e) from None
    _check_unchanged(src, where, before)
    session.finish()
    ref = manifest.store(BlockMap(KIND_FILE, FILE_BLOCK, size, result.entries), session.add)
    return FileCapture(role=role, path="", manifest=ref, size=size, added_bytes=result.added_bytes)


def fetcher(chunks: Chunks) -> Callable[[Sequence[bytes]], list[bytes]]:
    """Batched reads when the store has them (``ChunkStore.get_many``)."""
    get_many = getattr(chunks, "get_many", None)
    if get_many is not None:
        return get_many  # type: ignore[no-any-return]

    def fetch(ids: Sequence[bytes]) -> list[bytes]:
        return [chunks.get(cid) for cid in ids]

    return fetch


def restore_maps(
    maps: list[BlockMap], chunks: Chunks, out: BinaryIO, progress: Progress | None = None
) -> int:
    entries, block_size, size = manifest.overlay(maps)
    if not maps:
        return 0
    backend = getattr(chunks, "backend", None)  # a ChunkStore has one; a test double may not
    workers = 1 if backend is None else parallel_requests(backend)
    write_image(entries, size, block_size, fetcher(chunks), out, progress, workers)
    return size


# ------------------------------------------------------------------ references
@dataclass(frozen=True)
class Reference:
    """One capture recorded in the log: which VM, which disk layer or file, at what position."""

    position: int
    vm: str
    what: str  # "disk Boot (layer ...)" or "config file Snapshots/X.vmcx"
    manifest: bytes


def referenced_chunks(
    refs: Iterable[Reference], chunks: Chunks, lenient: bool = False
) -> tuple[dict[bytes, list[Reference]], list[tuple[Reference, str]]]:
    """Every chunk the references need (manifest chunks included) -> who needs it.

    Manifests that cannot be read are returned apart, with the reason. A
    manifest that reads but breaks a rule (restore refuses it) still names its
    chunks, which are kept as needed (conservative); it is returned apart too,
    unless ``lenient`` (gc: its chunks are known, so gc need not stop for it).
    """
    from ckpt.domain import CkptError

    needed: dict[bytes, list[Reference]] = {}
    broken: list[tuple[Reference, str]] = []
    for ref in refs:
        try:
            found = manifest.referenced(ref.manifest, chunks.get)
        except CkptError as e:
            broken.append((ref, str(e)))
            needed.setdefault(ref.manifest, []).append(ref)
            continue
        if found.problem is not None and not lenient:
            broken.append((ref, found.problem))
        for cid in found.own:
            needed.setdefault(cid, []).append(ref)
        for cid in found.blocks:
            lst = needed.get(cid)
            if lst is None:
                needed[cid] = [ref]
            elif lst[-1] is not ref:
                lst.append(ref)
    return needed, broken
