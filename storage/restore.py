"""Restore: write the bytes a block map describes, exactly, to a stream.

Terms: *entries* is the state of a disk or file: its non-zero blocks in
block order, streamed segment by segment (``disk_state.State.present``), or
a folded v1 map (``manifest.overlay``);
*fetch* returns the verified bytes of chunks (the chunk store checks every
chunk's SHA-256 against its id, so a wrong byte stops the restore with an
error instead of reaching the output).

Zero runs become holes in a regular file (a sparse file); on a pipe
(``-o -``) or a device they are written as zeros: a hole is only a zero where
it reads back as one, and a device keeps whatever it held before. Into a
regular file, threads fetch and check chunks while another ``pwrite``s them
(see ``_write_parallel``).
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from ckpt.domain.errors import InvalidValue

from .chunks.codec import Chunk
from .manifest import present

BATCH = 256  # blocks per fetch task: 1 MiB of 4 KiB blocks, ~50 us of pool overhead per task
WRITE = 4 << 20  # coalesce contiguous blocks into writes of up to 4 MiB
Fetch = Callable[[Sequence[bytes]], Sequence[Chunk]]
Progress = Callable[[int], None]


Blocks = list[tuple[int, bytes]]


def _grouped(blocks: Iterable[tuple[int, bytes]], size: int, block_size: int) -> Iterator[Blocks]:
    """``blocks`` (sorted, non-zero) in lists of ``BATCH``, those past ``size`` dropped."""
    batch: Blocks = []
    for index, cid in blocks:
        if index * block_size >= size:
            break
        batch.append((index, cid))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _fetched(
    fetch: Fetch, batches: Iterator[Blocks], workers: int
) -> Iterator[tuple[Blocks, Sequence[Chunk]]]:
    """Each batch with its chunks, in order; with ``workers`` > 1 fetched on a pool,
    at most ``2 x workers`` batches ahead (memory stays bounded, not O(disk))."""
    if workers <= 1:
        for batch in batches:
            yield batch, fetch([cid for _, cid in batch])
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[tuple[Blocks, Future[Sequence[Chunk]]]] = deque()
        for batch in batches:
            pending.append((batch, pool.submit(fetch, [cid for _, cid in batch])))
            if len(pending) > 2 * workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def _regular_fd(out: BinaryIO) -> int | None:
    """The descriptor of a regular file positioned at 0, else None."""
    try:
        fd = out.fileno()
        if out.tell() != 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
    except (AttributeError, OSError, ValueError):
        return None
    return fd


def _runs(
    batch: list[tuple[int, bytes]], datas: Sequence[Chunk], block_size: int, size: int
) -> Iterator[tuple[int, bytes]]:
    """Contiguous blocks joined into (offset, bytes) runs, the last block cut to ``size``."""
    first, last = batch[0][0], batch[-1][0]
    if (
        last - first == len(batch) - 1  # ``present`` sorts the distinct indices: no gap
        and len(datas) == len(batch)
        and (last + 1) * block_size <= size
        and sum(map(len, datas)) == len(batch) * block_size
        and min(map(len, datas)) == block_size
    ):  # the common case, one run: checked in C, not per block (0.7 us a block)
        yield first * block_size, b"".join(datas)
        return
    run: list[Chunk] = []
    run_at = run_end = -1
    for (index, _), data in zip(batch, datas, strict=True):
        if len(data) != block_size:
            raise ValueError(f"block {index} is {len(data)} bytes, expected {block_size}")
        offset = index * block_size
        if offset + block_size > size:
            data = data[: size - offset]
        if run and offset != run_end:
            yield run_at, b"".join(run)
            run = []
        if not run:
            run_at = offset
        run.append(data)
        run_end = offset + len(data)
    if run:
        yield run_at, b"".join(run)


def _write_parallel(
    fd: int,
    batches: Iterator[Blocks],
    size: int,
    block_size: int,
    fetch: Fetch,
    progress: Progress | None,
    workers: int = 1,
) -> int:
    """Fetch and check batches on ``workers`` threads, ``pwrite`` on another.

    The copy into the page cache (0.3-2 s per GiB here, varying with the
    kernel's dirty-page throttling) holds no GIL, nor do zstd's multi-frame
    decompression and SHA-256, ~60% of a batch's CPU: so batches are fetched
    on two threads where two cores are free (manifest_restore.py has the
    figures) and on more for a latency-bound backend (S3), whose fetches wait
    on the network; results are written in order.
    """
    os.ftruncate(fd, 0)
    data_bytes = 0
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: deque[Future[int]] = deque()
        for batch, datas in _fetched(fetch, batches, workers):
            for offset, run in _runs(batch, datas, block_size, size):
                pending.append(writer.submit(os.pwrite, fd, run, offset))
                data_bytes += len(run)
            while len(pending) > 8:  # bound the bytes waiting to be written (~8 MiB)
                pending.popleft().result()
            if progress is not None:
                progress(len(batch) * block_size)
        for future in pending:
            future.result()
    os.ftruncate(fd, size)  # the tail after the last data block: a hole
    return data_bytes


def write_image(
    entries: Mapping[int, bytes] | Iterable[tuple[int, bytes]],
    size: int,
    block_size: int,
    fetch: Fetch,
    out: BinaryIO,
    progress: Progress | None = None,
    workers: int = 1,
) -> int:
    """Write ``size`` bytes to ``out``; return how many bytes came from chunks.

    ``entries``: a folded map, or the non-zero (block index, chunk id) pairs in
    block order as a stream (``disk_state.State.present``): never held whole."""
    blocks = present(entries) if isinstance(entries, Mapping) else entries
    batches = _grouped(blocks, size, block_size)
    _check_room(out, size)
    fd = _regular_fd(out)
    if fd is not None:
        out.flush()
        data_bytes = _write_parallel(fd, batches, size, block_size, fetch, progress, workers)
        out.seek(size)
        return data_bytes
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
    for batch, datas in _fetched(fetch, batches, workers):
        for (index, _), data in zip(batch, datas, strict=True):
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
    """May zero runs be skipped? Only in a regular file or a stream without a
    descriptor (BytesIO): a block device may hold old data, a character device
    (``/dev/null``, a tape) reports seekable without reading back holes."""
    try:
        if not (out.seekable() and out.tell() == 0):
            return False
    except (OSError, ValueError):
        return False
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: BytesIO
        return True
    return stat.S_ISREG(os.fstat(fd).st_mode)


def _check_room(out: BinaryIO, size: int) -> None:
    """Refuse a block device smaller than the image before writing a byte to it."""
    try:
        fd = out.fileno()
        if not stat.S_ISBLK(os.fstat(fd).st_mode):
            return
    except (AttributeError, OSError, ValueError):
        return
    capacity = os.lseek(fd, 0, os.SEEK_END)  # a block device's size (as BLKGETSIZE64)
    os.lseek(fd, 0, os.SEEK_SET)
    if capacity < size:
        name = getattr(out, "name", "the output")
        raise InvalidValue(
            f"{name!r} is a block device of {capacity:,} bytes, smaller than the "
            f"{size:,} bytes to restore; nothing was written"
        )
