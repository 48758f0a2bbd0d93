"""A writer session: chunks in, packs and index files out.

Terms:
    session   ``with store.writer() as w: ...``. One per thread (a session is
              not thread-safe; the store is).
    pending   the pack being filled, in memory.
    staged    packs being written (their put is in flight): invisible to
              every reader, this process included.
    publish   once a staged pack's put has returned (it is durable), write its
              index file and add it to the index: its chunks are visible from
              then on. Packs are published in the order they were written, as
              their puts complete, so a session holds only the packs in flight
              (at most ``max(8, 2 x parallel requests)``), never a list of every
              chunk it wrote: a 32 GiB first capture is ~8 M chunks, ~1.2 GB of
              entries when they were all held until the end.
    flush     write the pending pack, wait for every put, publish the rest.
              ``__exit__`` flushes unless an exception is leaving the block.

Durability order: a pack is durable (``put`` returned) before its index file
is written, so an index file never points at a missing or partial pack. A
crash or exception leaves the packs in flight without index files (orphans)
and the published ones indexed but referenced by no event: gc deletes both
after the grace period, and a live writer's lease keeps gc off them meanwhile.

Pack version: a store of format 2 (``chunks/FORMAT``, format.py) gets
version-2 packs, whose frames are groups (``add_group``; ``add`` makes a
group of one); a format-1 store keeps getting version-1 packs, so hosts still
on the older release read everything this one writes.

Deduplication: a chunk whose id is in the index, in a staged pack or in the
pending pack is not stored again. Two sessions writing the same new chunk at
once both store it; the index then keeps one copy and GC drops the other.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING

from .backend import ChunkBackend, parallel_requests
from .codec import ChunkCodec
from .ids import ChunkId, is_zero
from .index_file import IndexFile, encode_index_file
from .layout import index_name, new_pack_id, pack_name
from .pack import GROUPED, VERSION, PackWriter

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
        version: int = VERSION,
        source: bytes = bytes(16),
    ) -> None:
        self._backend = backend
        self._on_flush = on_flush  # told each pack made visible (a capture's lease checks them)
        self._index = index
        self._codec = codec
        self._pack_size = pack_size
        self._version = version
        self._source = source  # v2 index files: the v1 pack converted (upgrade.py)
        self._clock = clock
        self._pending: PackWriter | None = None
        # packs in flight, oldest first, with their puts; ids for ``_known``
        self._staged: deque[tuple[IndexFile, Future[None]]] = deque()
        self._staged_ids: set[bytes] = set()  # membership only: a set is 3x faster here
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
    def grouped(self) -> bool:
        """True if this session writes version-2 packs (group frames)."""
        return self._version == GROUPED

    @property
    def flushed_packs(self) -> list[str]:
        """Names of the packs this session has made visible so far."""
        return list(self._flushed)

    def add(self, data: bytes) -> ChunkId | None:
        """Store ``data`` once; return its id, or ``None`` if it is all zero
        (never stored: record the block as zero). Visible once its pack is
        published (``flush`` at the latest)."""
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

    def add_group(self, frame: bytes, members: list[tuple[ChunkId, int]]) -> None:
        """Add a group frame (``ChunkCodec.compress_group``) holding ``members``
        (id, length) back to back; version-2 sessions only. Like
        ``add_compressed`` it does not skip known ids (the caller dedups)."""
        if self._closed:
            raise ValueError("this writer session is closed")
        if self._pending is None:
            self._pending = PackWriter(self._pack_size, self._version)
        self._pending.add_group(frame, members)
        if self._pending.full:
            self._write_pending()

    def knows(self, cid: bytes) -> bool:
        """True if the store or this session already holds ``cid`` (indexed,
        in flight or pending): adding it again would store a duplicate."""
        return self._known(ChunkId(cid))

    def knows_many(self, cids: Sequence[bytes]) -> list[bool]:
        """``knows`` of each, the index asked once for the whole batch."""
        pending = self._pending
        staged = self._staged_ids
        return [
            found or cid in staged or (pending is not None and cid in pending)
            for cid, found in zip(cids, self._index.contains_many(cids), strict=True)
        ]

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
            self._pending = PackWriter(self._pack_size, self._version)
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
        put = self._putter.submit(self._backend.put, pack_name(pack_id), data)
        f = IndexFile(pack_id, created, len(data), pack.entries, self._source)
        self._staged.append((f, put))
        self._staged_ids.update(e.chunk_id for e in f.entries)
        self._publish(in_flight=max(8, 2 * workers))

    def _publish(self, in_flight: int) -> None:
        """Publish staged packs oldest first: every one whose put is done, and
        more (waiting for their puts) until at most ``in_flight`` remain."""
        while self._staged and (len(self._staged) > in_flight or self._staged[0][1].done()):
            f, put = self._staged.popleft()
            put.result()  # re-raises a failed put here, before its index file
            self._backend.put(index_name(f.pack_id), encode_index_file(f))
            self._index.add(f)
            self._staged_ids.difference_update(e.chunk_id for e in f.entries)
            self._flushed.append(pack_name(f.pack_id))
            if self._on_flush is not None:
                self._on_flush(pack_name(f.pack_id))

    def flush(self) -> None:
        """Make every chunk added so far durable and visible."""
        if self._closed:
            raise ValueError("this writer session is closed")
        self._write_pending()
        self._publish(in_flight=0)  # every pack durable before its index file

    def wait_for_packs(self) -> None:
        """Block until every full pack written so far is durable and published."""
        self._publish(in_flight=0)
