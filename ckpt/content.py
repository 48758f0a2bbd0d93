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

import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from uuid import UUID

from ckpt.domain import DiskCapture, FileCapture, FileRole, InvalidValue, VirtualMachine
from ckpt.storage import manifest
from ckpt.storage.capture import capture
from ckpt.storage.chunks.backend import parallel_requests
from ckpt.storage.manifest import KIND_DISK, KIND_FILE, ZERO_ID, BlockMap
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


def open_source(path: str | Path, what: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as e:
        raise InvalidValue(f"cannot read {what} {str(path)!r}: {e.strerror}") from None


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
    if disk not in vm.running:
        known = ", ".join(vm.running)
        raise InvalidValue(f"VM {vm.name!r} has no disk {disk!r} (disks: {known})")
    layer = vm.running[disk]
    # The decoded manifests are needed only for their overlay: a cache of its own,
    # dropped here, keeps them out of the capture's peak memory (benchmark step 4:
    # peak RSS 268-288 MiB with the shared cache, 252 MiB without).
    parent, block_size, _ = manifest.overlay(chain_maps(vm, layer, ManifestCache(cache.chunks)))
    if block_size not in (0, DISK_BLOCK):
        raise InvalidValue(f"disk {disk!r} was captured with {block_size}-byte blocks before")
    size = _size(src, where)
    if size % 512:
        raise InvalidValue(f"{where}: {size} bytes is not a whole number of 512-byte sectors")
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
    )
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
    size = _size(src, where)
    result = capture(
        src, size, FILE_BLOCK, {}, session.sink, None, progress, session.pool, None, session.hasher
    )
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
    refs: Iterable[Reference], chunks: Chunks
) -> tuple[dict[bytes, list[Reference]], list[tuple[Reference, str]]]:
    """Every chunk the references need (manifest chunks included) -> who needs it.

    Manifests that cannot be read are returned apart, with the reason.
    """
    from ckpt.domain import CkptError

    needed: dict[bytes, list[Reference]] = {}
    broken: list[tuple[Reference, str]] = []
    for ref in refs:
        try:
            own, bm = manifest.chunk_refs(ref.manifest, chunks.get)
        except CkptError as e:
            broken.append((ref, str(e)))
            needed.setdefault(ref.manifest, []).append(ref)
            continue
        for cid in own:
            needed.setdefault(cid, []).append(ref)
        for cid in bm.entries.values():
            if cid != ZERO_ID:
                lst = needed.get(cid)
                if lst is None:
                    needed[cid] = [ref]
                elif lst[-1] is not ref:
                    lst.append(ref)
    return needed, broken
