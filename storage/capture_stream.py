"""Sequential capture: a one-shot source read once, in order, into a block map.

Terms: a *one-shot* source (storage/sources.py) is a pipe, a FIFO, a socket,
standard input or a stream that cannot seek: its bytes come once, in order, and
its size is what it delivers before its end (or a size the caller declared).
This reads it in ``READ`` buffers on the calling thread, hashes each buffer on
the capture's pool (SHA-256 releases the GIL) and compares the ids with the
parent map in order (``capture.compare``), as a capture of a file does; only
the reading differs: no pread at offsets, no holes asked for, no changed
extents (they would need seeks). Memory stays bounded: at most ``AHEAD``
buffers in flight, 4 x 4 MiB.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future

from ckpt.domain.errors import SourceChanged

from .capture import (
    AHEAD,
    READ,
    CaptureResult,
    Consume,
    Progress,
    Sink,
    compare,
    hash_blocks,
)
from .sources import Source

Hashed = tuple[bytes, list[bytes | None]]


def capture_stream(
    source: Source,
    block_size: int,
    parent: Mapping[int, bytes],
    sink: Sink,
    progress: Progress | None = None,
    pool: Executor | None = None,
    hasher: Callable[[bytes], bytes] | None = None,
) -> tuple[CaptureResult, int]:
    """Read ``source`` to its end (or its declared size); return what differs
    from ``parent`` and the size read.

    Blocks of ``parent`` at or beyond the size read get no entry (the fold
    drops them, as for a disk that shrank); every block before it was read, so
    no hole needs zeroing. A source that ends before its declared size raises
    ``SourceChanged``; the caller records nothing then.
    """
    result = CaptureResult()

    def consume(pos: int, buf: bytes, ids: list[bytes | None]) -> None:
        compare(result, pos, buf, ids, block_size, parent, sink)

    return result, stream_into(source, block_size, consume, progress, pool, hasher)


def stream_into(
    source: Source,
    block_size: int,
    consume: Consume,
    progress: Progress | None = None,
    pool: Executor | None = None,
    hasher: Callable[[bytes], bytes] | None = None,
) -> int:
    """Read ``source`` to its end (or declared size), handing each hashed buffer
    to ``consume`` in order; the size read. ``SourceChanged`` if it ends early."""
    declared = source.size
    pending: deque[tuple[int, Future[Hashed] | Hashed]] = deque()
    pos = 0

    def settle() -> None:
        at, done = pending.popleft()
        buf, ids = done.result() if isinstance(done, Future) else done
        consume(at, buf, ids)
        if progress is not None:
            progress(len(buf))

    while declared is None or pos < declared:
        want = READ if declared is None else min(READ, declared - pos)
        buf = source.read(want)
        if buf:
            job: Future[Hashed] | Hashed = (
                hash_blocks(buf, block_size, hasher)
                if pool is None
                else pool.submit(hash_blocks, buf, block_size, hasher)
            )
            pending.append((pos, job))
            pos += len(buf)
            if len(pending) >= AHEAD:
                settle()
        if len(buf) < want:
            break
    while pending:
        settle()
    if declared is not None and pos < declared:
        raise SourceChanged(
            f"the stream ended at byte {pos:,}, before its declared size of {declared:,} bytes"
        )
    return pos
