"""Capture: read a disk image or a file into blocks and their ids.

``capture_into`` hands every hashed buffer to a consumer (a segment builder,
``segment_builder.py``: how ckpt captures); ``capture`` diffs against a parent
map held whole (a v1 block map of what changed: tests and tools).

Terms:
- *parent map*: the blocks the chain holds now (``{index: chunk id}``,
  ``ZERO_ID`` or absent = zeros). A capture records only the blocks whose id
  differs from it, so a recorded layer is a true differencing layer.
- *regions*: the byte ranges read. By default every data segment of the
  source (holes of a sparse file are found with SEEK_DATA/SEEK_HOLE and never
  read: a 2 TiB sparse disk with 1 GiB written reads 1 GiB); with changed
  extents (Hyper-V RCT, QEMU dirty bitmaps) only those extents, and every
  block outside them is taken as unchanged.
- *sink*: where new blocks go: ``add(chunk_id, data) -> bytes added to the
  store`` (0 when the store already had it).

"This block is unchanged" is decided by SHA-256 ids, never by a weaker hash:
the guest chooses the bytes, so a collision must be out of its reach.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import BinaryIO

from ckpt.domain.errors import InvalidValue, SourceChanged

from .extents import merge
from .manifest import ZERO_ID

READ = 4 << 20  # 4 MiB reads: 1,024 pages per syscall, small enough to bound memory
Sink = Callable[[bytes, bytes], int]
Progress = Callable[[int], None]


@dataclass
class CaptureResult:
    entries: dict[int, bytes] = field(default_factory=dict)
    read_bytes: int = 0
    added_bytes: int = 0


def _zeros(n: int, cache: dict[int, bytes] = {}) -> bytes:  # noqa: B006 - a deliberate cache
    buf = cache.get(n)
    if buf is None:
        buf = cache[n] = bytes(n)
    return buf


def data_segments(src: BinaryIO, size: int) -> list[tuple[int, int]]:
    """The ranges of ``src`` that hold data (all of it when holes cannot be asked for)."""
    try:
        fd = src.fileno()
    except (AttributeError, OSError, ValueError):
        return [(0, size)] if size else []
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a device: no holes to ask for, read it all
        return [(0, size)] if size else []
    segments: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            segments.append((start, end))
            pos = end
    except OSError as e:
        if e.errno == 6:  # ENXIO: no data after pos
            return segments
        return [(0, size)] if size else []  # the file system cannot tell: read everything
    return segments


def align(extents: Iterable[tuple[int, int]], block_size: int, size: int) -> list[tuple[int, int]]:
    """Extents (offset, length) widened to whole blocks, clipped to ``size``, merged."""
    spans = []
    for offset, length in extents:
        if offset < 0 or length < 0:
            raise InvalidValue(f"changed extent ({offset}, {length}) is negative")
        if length == 0:
            continue
        start = offset // block_size * block_size
        end = min(-(-(offset + length) // block_size) * block_size, size)
        if start < end:
            spans.append((start, end))
    return merge(spans)


def _has_fd(src: BinaryIO) -> bool:
    try:
        src.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _read(src: BinaryIO, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset``; a source that ends before them changed
    under the capture (it was truncated): refused, never padded with zeros."""
    try:
        fd = src.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
        src.seek(offset)
    parts: list[bytes] = []
    got = 0
    while got < length:  # a read may return less than asked before the end
        data = os.pread(fd, length - got, offset + got) if fd >= 0 else src.read(length - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    if got < length:
        raise SourceChanged(
            f"the source ended at byte {offset + got} while {offset + length} were expected: "
            "it shrank during the capture"
        )
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _digests(
    src: BinaryIO,
    pos: int,
    n: int,
    block_size: int,
    hasher: Callable[[bytes], bytes] | None = None,
) -> tuple[bytes, list[bytes | None]]:
    """Read one buffer and hash its blocks (None for a zero block); runs in a worker.

    Reading and SHA-256 release the GIL, so two workers use both cores.
    """
    return hash_blocks(_read(src, pos, n), block_size, hasher)


def hash_blocks(
    buf: bytes, block_size: int, hasher: Callable[[bytes], bytes] | None = None
) -> tuple[bytes, list[bytes | None]]:
    """``buf`` and the id of each of its blocks (None for a zero block)."""
    n = len(buf)
    if buf == _zeros(n):
        return buf, [None] * (-(-n // block_size))
    zero = _zeros(block_size)
    sha256 = hashlib.sha256
    ids: list[bytes | None] = []
    if hasher is not None:  # an encrypted store's keyed ids
        for k in range(0, n, block_size):
            block = buf[k : k + block_size]
            if len(block) < block_size:
                block += zero[len(block) :]
            ids.append(None if block == zero else hasher(block))
        return buf, ids
    for k in range(0, n, block_size):
        # A bytes slice copies 4 KiB (~0.1 us) but then compares with memcmp;
        # a memoryview compares element by element, 30x slower.
        block = buf[k : k + block_size]
        if len(block) < block_size:  # the last, partial block: pad with zeros
            block += zero[len(block) :]
        ids.append(None if block == zero else sha256(block).digest())
    return buf, ids


def capture(
    src: BinaryIO,
    size: int,
    block_size: int,
    parent: Mapping[int, bytes],
    sink: Sink,
    extents: Iterable[tuple[int, int]] | None = None,
    progress: Progress | None = None,
    pool: Executor | None = None,
    segments: Sequence[tuple[int, int]] | None = None,
    hasher: Callable[[bytes], bytes] | None = None,
    parent_size: int | None = None,
) -> CaptureResult:
    """Compare ``src`` with ``parent`` block by block; send new blocks to ``sink``.

    ``parent_size`` is the size the parent map was folded at (None: the same
    as ``size``). When it differs, the disk was resized: no entry is recorded
    at or beyond ``size``, and with changed ``extents`` the blocks between the
    old and the new end are read too (extents need not cover a resize, and the
    partial block at either end changes with it).

    With a ``pool``, buffers are read and hashed in its threads, up to
    ``AHEAD`` buffers ahead of the comparison, which stays in this thread.
    ``segments`` ((start, end) byte ranges) say where a source that cannot be
    asked for holes (a VHDX read through its reader) holds data; the rest
    reads as zeros, as holes do.
    """
    result = CaptureResult()
    regions = _regions(src, size, block_size, extents, segments, parent_size)

    def consume(pos: int, buf: bytes, ids: list[bytes | None]) -> None:
        compare(result, pos, buf, ids, block_size, parent, sink)

    read_regions(src, regions, block_size, consume, progress, pool, hasher)
    if extents is None:
        _zero_the_holes(parent, regions, block_size, size, result.entries)
    return result


def _regions(
    src: BinaryIO,
    size: int,
    block_size: int,
    extents: Iterable[tuple[int, int]] | None,
    segments: Sequence[tuple[int, int]] | None,
    parent_size: int | None,
) -> list[tuple[int, int]]:
    """The byte ranges to read: the changed extents (widened by a resize), or
    the source's data segments; whole blocks, clipped to ``size``, merged."""
    if extents is not None:
        if parent_size is not None and parent_size != size:
            low = min(parent_size, size) // block_size * block_size
            extents = [*extents, (low, max(parent_size, size) - low)]
        return align(extents, block_size, size)
    found = data_segments(src, size) if segments is None else segments
    regions = [(s // block_size * block_size, e) for s, e in found]
    return align(((s, e - s) for s, e in regions), block_size, size)


Consume = Callable[[int, bytes, list[bytes | None]], None]


def read_regions(
    src: BinaryIO,
    regions: list[tuple[int, int]],
    block_size: int,
    consume: Consume,
    progress: Progress | None = None,
    pool: Executor | None = None,
    hasher: Callable[[bytes], bytes] | None = None,
) -> None:
    """Read and hash ``regions`` in order, handing each buffer to ``consume``."""
    spans = [
        (pos, min(READ, end - pos)) for start, end in regions for pos in range(start, end, READ)
    ]
    if pool is not None and not _has_fd(src):
        # seek + read on one shared stream cannot run in several threads: the
        # workers would read each other's offsets (found as a flaky import test)
        pool = None
    for pos, n, (buf, ids) in _hashed(src, spans, block_size, pool, hasher):
        consume(pos, buf, ids)
        if progress is not None:
            progress(n)


def capture_into(
    consume: Consume,
    src: BinaryIO,
    size: int,
    block_size: int,
    extents: Iterable[tuple[int, int]] | None = None,
    progress: Progress | None = None,
    pool: Executor | None = None,
    segments: Sequence[tuple[int, int]] | None = None,
    hasher: Callable[[bytes], bytes] | None = None,
    parent_size: int | None = None,
) -> None:
    """As ``capture``, but every buffer read goes to ``consume`` (a segment
    builder, ``segment_builder.py``), which decides what is new."""
    regions = _regions(src, size, block_size, extents, segments, parent_size)
    read_regions(src, regions, block_size, consume, progress, pool, hasher)


def compare(
    result: CaptureResult,
    pos: int,
    buf: bytes,
    ids: list[bytes | None],
    block_size: int,
    parent: Mapping[int, bytes],
    sink: Sink,
) -> None:
    """Record the blocks of ``buf`` (read at ``pos``) whose ids differ from ``parent``'s."""
    result.read_bytes += len(buf)
    zero_block = _zeros(block_size)
    entries = result.entries
    first = pos // block_size
    for k, cid in enumerate(ids):
        index = first + k
        if cid is None:
            if parent.get(index, ZERO_ID) != ZERO_ID:
                entries[index] = ZERO_ID
            continue
        if parent.get(index) != cid:
            entries[index] = cid
            block = buf[k * block_size : (k + 1) * block_size]
            if len(block) < block_size:
                block += zero_block[len(block) :]
            result.added_bytes += sink(cid, block)


AHEAD = 4  # buffers in flight: 4 x 4 MiB of memory, enough to keep two workers busy


def _hashed(
    src: BinaryIO,
    spans: list[tuple[int, int]],
    block_size: int,
    pool: Executor | None,
    hasher: Callable[[bytes], bytes] | None = None,
) -> Iterator[tuple[int, int, tuple[bytes, list[bytes | None]]]]:
    if pool is None:
        for pos, n in spans:
            yield pos, n, _digests(src, pos, n, block_size, hasher)
        return
    pending: deque[tuple[int, int, Future[tuple[bytes, list[bytes | None]]]]] = deque()
    for pos, n in spans:
        pending.append((pos, n, pool.submit(_digests, src, pos, n, block_size, hasher)))
        if len(pending) >= AHEAD:
            p, m, future = pending.popleft()
            yield p, m, future.result()
    while pending:
        p, m, future = pending.popleft()
        yield p, m, future.result()


def _zero_the_holes(
    parent: Mapping[int, bytes],
    regions: list[tuple[int, int]],
    block_size: int,
    size: int,
    entries: dict[int, bytes],
) -> None:
    """Blocks the parent held that now fall in a hole of the source read as zeros.

    Blocks at or beyond the new end get no entry: a map never names a block
    beyond its size, and the fold drops the parent's blocks there (a disk
    that shrank; recording them broke every later read, issue 11).
    """
    starts = [s // block_size for s, _ in regions]
    ends = [-(-e // block_size) for _, e in regions]
    blocks = -(-size // block_size)
    for index, cid in parent.items():
        if cid == ZERO_ID or index in entries or index >= blocks:
            continue
        k = bisect.bisect_right(starts, index) - 1
        if k < 0 or index >= ends[k]:
            entries[index] = ZERO_ID


def parse_extents(text: str, where: str) -> list[tuple[int, int]]:
    """Changed extents, one ``OFFSET LENGTH`` pair per line (decimal or 0x hex; # comments)."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            out.append((int(parts[0], 0), int(parts[1], 0)))
        except ValueError:
            raise InvalidValue(
                f"{where} line {number}: expected 'OFFSET LENGTH', got {line!r}"
            ) from None
    return out
