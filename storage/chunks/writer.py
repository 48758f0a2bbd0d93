"""A writer session: chunks in, packs and index files out.

Terms:
    session   ``with store.writer() as w: ...``. One per thread (a session is
              not thread-safe; the store is).
    pending   the pack being filled, in memory.
    staged    packs already written (durable) whose index files are not yet:
              invisible to every reader, this process included.
    flush     write the pending pack, then the index file of every staged
              pack, then add them to the in-memory index. Only now do the
              chunks become visible. ``__exit__`` flushes unless an exception
              is leaving the block.

Durability order: a pack is durable (``put`` returned) before its index file
is written, so an index file never points at a missing or partial pack. A
crash or exception before flush leaves staged packs without index files:
orphans that ``ChunkStore.delete_unreferenced`` deletes after the grace period.

Deduplication: a chunk whose id is in the index, in a staged pack or in the
pending pack is not stored again. Two sessions writing the same new chunk at
once both store it; the index then keeps one copy and GC drops the other.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING

from .backend import ChunkBackend, parallel_requests
from .codec import ChunkCodec
from .ids import ChunkId, is_zero
from .index_file import IndexFile, encode_index_file
from .layout import index_name, new_pack_id, pack_name
from .pack import PackWriter

if TYPE_CHECKING:
    from .index import ChunkIndex


class ChunkWriter:
    """Adds chunks to a store; see the module docstring."""

    def __init__(
        self,
        backend: ChunkBackend,
        index: ChunkIndex,
        codec: ChunkCodec,
        pack_size: int,
        clock: Callable[[], float],
        on_flush: Callable[[str], None] | None = None,
    ) -> None:
        self._backend = backend
        self._on_flush = on_flush  # told each pack made visible (a capture's lease checks them)
        self._index = index
        self._codec = codec
        self._pack_size = pack_size
        self._clock = clock
        self._pending: PackWriter | None = None
        self._staged: list[IndexFile] = []
        self._staged_ids: set[bytes] = set()  # membership only: a set is 3x faster here
        self._puts: list[Future[None]] = []
        self._putter: ThreadPoolExecutor | None = None
        self._flushed: list[str] = []
        self._closed = False

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            self._closed = True
            self._pending = None
            if self._putter is not None:
                self._putter.shutdown(wait=True)  # no put outlives the session
                self._putter = None

    @property
    def flushed_packs(self) -> list[str]:
        """Names of the packs this session has made visible so far."""
        return list(self._flushed)

    def add(self, data: bytes) -> ChunkId | None:
        """Store ``data`` once; return its id, or ``None`` if it is all zero
        (never stored: record the block as zero). Visible after ``flush``."""
        if is_zero(data):
            return None
        cid = ChunkId(self._codec.identify(data))
        if not self._known(cid):
            self._append(cid, self._codec.compress(data, cid), len(data))
        return cid

    def add_compressed(self, cid: ChunkId, frame: bytes, length: int) -> None:
        """Add a frame that is already compressed and checked (the repack path).

        Unlike ``add`` it does not skip ids the index knows: repacking copies
        exactly those into a new pack."""
        self._append(cid, frame, length)

    def _known(self, cid: ChunkId) -> bool:
        pending = self._pending
        return (
            cid in self._index
            or cid in self._staged_ids
            or (pending is not None and cid in pending)
        )

    def _append(self, cid: ChunkId, frame: bytes, length: int) -> None:
        if self._closed:
            raise ValueError("this writer session is closed")
        if self._pending is None:
            self._pending = PackWriter(self._pack_size)
        self._pending.add(cid, frame, length)
        if self._pending.full:
            self._write_pending()

    def _write_pending(self) -> None:
        pack, self._pending = self._pending, None
        if pack is None or len(pack) == 0:
            return
        pack_id, created = new_pack_id(), self._clock()
        data = pack.finish(created)
        # The put (write + fsync, ~40 ms for 16 MiB locally; ~270 ms to SeaweedFS S3 on
        # loopback) runs on background threads while chunks keep arriving; flush waits
        # for it before any index file. A remote backend takes several puts at once
        # (its ``parallel_requests``); at most twice that many packs, and at least 8
        # (128 MiB), wait in memory: a bound of 2 made local capture ~20% slower.
        workers = parallel_requests(self._backend)
        if self._putter is None:
            self._putter = ThreadPoolExecutor(workers, thread_name_prefix="ckpt-pack-put")
        while len(self._puts) >= max(8, 2 * workers):
            self._puts.pop(0).result()
        self._puts.append(self._putter.submit(self._backend.put, pack_name(pack_id), data))
        f = IndexFile(pack_id, created, len(data), pack.entries)
        self._staged.append(f)
        self._staged_ids.update(e.chunk_id for e in f.entries)

    def flush(self) -> None:
        """Make every chunk added so far durable and visible."""
        if self._closed:
            raise ValueError("this writer session is closed")
        self._write_pending()
        self.wait_for_packs()  # every pack durable before its index file
        for f in self._staged:
            self._backend.put(index_name(f.pack_id), encode_index_file(f))
            self._index.add(f)
            self._flushed.append(pack_name(f.pack_id))
            if self._on_flush is not None:
                self._on_flush(pack_name(f.pack_id))
        self._staged = []
        self._staged_ids = set()

    def wait_for_packs(self) -> None:
        """Block until every full pack written so far is durable (flush does this)."""
        puts, self._puts = self._puts, []
        for future in puts:
            future.result()  # re-raises a failed put here, before any index file
