"""A capture session: dedup and compression between a capture and a chunk writer.

Terms: a *session* is one capture's path into the chunk store. The capture
loop (``capture.capture``) hands it each block that differs from the parent
chain (``sink``); the session drops the blocks the store or the session
already holds (dedup), compresses new ones in batches on a thread pool, and
hands the frames to the writer in order. ``add`` stores a manifest chunk.

Groups: into a version-2 pack (a format-2 store) consecutive new chunks are
compressed together, up to ``GROUP_TARGET`` (64 KiB) per frame, on the same
pool task that compressed them one by one before (decision 0012); a chunk of
64 KiB or more is a group of its own. A batch never splits a group across two
tasks, so a group holds chunks a capture met one after the other.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Executor, Future

from .chunks.ids import ChunkId
from .chunks.pack import split_groups
from .chunks.store import ChunkStore
from .chunks.writer import ChunkWriter

Group = tuple[bytes, list[tuple[ChunkId, int]]]
"""A compressed frame and its chunks' (id, length), in order."""


class Session:
    """One capture's writer: dedup inside the session too, compression on the pool.

    New blocks are compressed in batches on the worker threads (zstd releases
    the GIL) and handed to the writer in order; ``finish`` drains what is left
    and must run before the writer flushes.
    """

    BATCH = 256  # blocks per compression task: 1 MiB of input, ~3 ms of zstd work

    def __init__(
        self, writer: ChunkWriter, chunks: ChunkStore, pool: Executor | None = None
    ) -> None:
        self.writer = writer
        self.chunks = chunks
        self.pool = pool
        self.codec = chunks.codec
        # SHA-256 ids are computed by the capture's own fast loop; keyed ids by the codec
        self.hasher = self.codec.identify if self.codec.keyed else None
        # ids handed to ``sink`` but not yet to the writer (at most ~5 batches);
        # after that the writer knows them. A set of every new id of a capture
        # grew ~100 B per chunk: 800 MB for a 32 GiB first capture.
        self.seen: set[bytes] = set()
        self.offered: list[tuple[bytes, bytes]] = []  # content blocks not yet looked up
        self.batch: list[tuple[bytes, bytes]] = []  # new chunks, to compress
        self.added_bytes = 0  # bytes of content blocks found new so far
        self.grouped = writer.grouped
        self.pending: deque[Future[list[Group]]] = deque()

    def sink(self, cid: bytes, data: bytes) -> int:
        """Offer a content block. Whether the store holds it already is asked in
        sorted batches of ``BATCH`` (``ChunkWriter.knows_many``: one probe of
        the index per batch; one lookup per block cost 2-4 us on the on-disk
        index, ~25% of a first capture); a new one is counted in
        ``added_bytes`` once decided. Returns 0: the count is the session's."""
        if cid in self.seen:
            return 0
        self.seen.add(cid)
        self.offered.append((cid, data))
        if len(self.offered) >= self.BATCH:
            self._decide()
        return 0

    def store(self, cid: bytes, data: bytes) -> int:
        """Store a manifest chunk (a segment) now, unless held already; not
        counted as added content. Returns 0."""
        if cid in self.seen or self.writer.knows(cid):
            return 0
        self.seen.add(cid)
        self.batch.append((cid, data))
        if len(self.batch) >= self.BATCH:
            self._submit()
        return 0

    def _decide(self) -> None:
        offered, self.offered = self.offered, []
        known = self.writer.knows_many([cid for cid, _ in offered])
        for (cid, data), held in zip(offered, known, strict=True):
            if held:
                self.seen.discard(cid)
                continue
            self.added_bytes += len(data)
            self.batch.append((cid, data))
        if len(self.batch) >= self.BATCH:
            self._submit()

    def _compress(self, batch: list[tuple[bytes, bytes]]) -> list[Group]:
        compress = self.codec.compress
        if not self.grouped:
            return [(compress(data, cid), [(ChunkId(cid), len(data))]) for cid, data in batch]
        out: list[Group] = []
        for group in split_groups(batch):
            datas = [data for _, data in group]
            cids = [cid for cid, _ in group]
            frame = self.codec.compress_group(datas, cids)
            out.append((frame, [(ChunkId(c), len(d)) for c, d in group]))
        return out

    def _submit(self) -> None:
        batch, self.batch = self.batch, []
        if self.pool is None:
            self._hand_over(self._compress(batch))
            return
        self.pending.append(self.pool.submit(self._compress, batch))
        while len(self.pending) > 4:
            self._hand_over(self.pending.popleft().result())

    def _hand_over(self, groups: list[Group]) -> None:
        if not self.grouped:
            for frame, [(cid, length)] in groups:
                self.writer.add_compressed(cid, frame, length)
        else:
            for frame, members in groups:
                self.writer.add_group(frame, members)
        discard = self.seen.discard
        for _, members in groups:
            for cid, _ in members:
                discard(cid)

    def finish(self) -> None:
        if self.offered:
            self._decide()
        if self.batch:
            self._submit()
        while self.pending:
            self._hand_over(self.pending.popleft().result())

    def add(self, data: bytes) -> bytes:
        """Store a manifest (or piece) directly; returns its id."""
        self.finish()
        cid = self.writer.add(data)
        assert cid is not None
        return cid
