"""Restore: write the bytes a block map describes, exactly, to a stream.

Terms: *entries* is the folded map of a disk or file (``manifest.overlay``);
*fetch* returns the verified bytes of chunks (the chunk store checks every
chunk's SHA-256 against its id, so a wrong byte stops the restore with an
error instead of reaching the output).

Zero runs become holes when the output can seek (a sparse file); on a pipe
(``-o -``) they are written as zeros. Chunk reads run in a small thread pool
one batch ahead of the writer: zstd decompression and SHA-256 both release
the GIL, so the second core is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from .manifest import present

BATCH = 256  # blocks per fetch task: 1 MiB of 4 KiB blocks, ~50 us of pool overhead per task
WRITE = 4 << 20  # coalesce contiguous blocks into writes of up to 4 MiB
Fetch = Callable[[Sequence[bytes]], list[bytes]]
Progress = Callable[[int], None]


def _batches(fetch: Fetch, ids: list[bytes], workers: int) -> Iterator[list[bytes]]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: list[Future[list[bytes]]] = []
        for start in range(0, len(ids), BATCH):
            pending.append(pool.submit(fetch, ids[start : start + BATCH]))
            if len(pending) > 2 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def write_image(
    entries: Mapping[int, bytes],
    size: int,
    block_size: int,
    fetch: Fetch,
    out: BinaryIO,
    progress: Progress | None = None,
    workers: int = 2,
) -> int:
    """Write ``size`` bytes to ``out``; return how many bytes came from chunks."""
    blocks = [(i, cid) for i, cid in present(entries) if i * block_size < size]
    sparse = _seekable(out)
    start_at = out.tell() if sparse else 0
    written = 0  # bytes of the image emitted so far (holes included)
    pending = bytearray()
    pending_at = 0

    def emit_zeros(upto: int) -> None:
        nonlocal written
        if upto <= written:
            return
        if sparse:
            out.seek(start_at + upto)
        else:
            gap = upto - written
            zero = bytes(min(gap, WRITE))
            while gap:
                out.write(zero[: min(gap, WRITE)])
                gap -= min(gap, WRITE)
        if progress is not None:
            progress(upto - written)
        written = upto

    def flush() -> None:
        nonlocal written, pending
        if not pending:
            return
        emit_zeros(pending_at)
        out.write(pending)
        if progress is not None:
            progress(len(pending))
        written = pending_at + len(pending)
        pending = bytearray()

    data_bytes = 0
    ids = [cid for _, cid in blocks]
    position = 0
    for batch in _batches(fetch, ids, workers):
        for data in batch:
            index = blocks[position][0]
            position += 1
            offset = index * block_size
            if len(data) != block_size:
                raise ValueError(f"block {index} is {len(data)} bytes, expected {block_size}")
            if pending and (offset != pending_at + len(pending) or len(pending) >= WRITE):
                flush()
            if not pending:
                pending_at = offset
            if offset + block_size > size:  # the last block is partial: drop its padding
                data = data[: size - offset]
            pending += data
            data_bytes += len(data)
    flush()
    if sparse and written < size:  # trailing zeros: a hole, then one zero byte at the end
        out.seek(start_at + size - 1)  # (truncate cannot grow every stream; BytesIO cannot)
        out.write(b"\0")
        if progress is not None:
            progress(size - written)
    else:
        emit_zeros(size)
    return data_bytes


def _seekable(out: BinaryIO) -> bool:
    try:
        return out.seekable() and out.tell() == 0
    except (OSError, ValueError):
        return False
