"""A capture session: dedup and compression between a capture and a chunk writer.

Terms: a *session* is one capture's path into the chunk store. The capture
loop (``capture.capture``) hands it each block that differs from the parent
chain (``sink``); the session drops the blocks the store or the session
already holds (dedup), compresses new ones in batches on a thread pool, and
hands the frames to the writer in order. ``add`` stores a manifest chunk.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Executor, Future

from .chunks.ids import ChunkId
from .chunks.store import ChunkStore
from .chunks.writer import ChunkWriter


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
            self.writer.add_compressed(ChunkId(cid), frame, len(data))

    def finish(self) -> None:
        if self.batch:
            self._submit()
        while self.pending:
            done, future = self.pending.popleft()
            self._hand_over(done, future.result())

    def add(self, data: bytes) -> bytes:
        """Store a manifest (or piece) directly; returns its id."""
        self.finish()
        cid = self.writer.add(data)
        assert cid is not None
        return cid
