"""Random access to a disk (or file) as of a capture, without restoring it.

Terms:
- *block*: ``block_size`` bytes at a multiple of it (4 KiB on disks, the
  manifest's block size on a memory image); each non-zero block is one stored
  chunk, found in the block's *segment* (``disk_state.State.entries``). A block
  without an entry is a *hole*: it reads as zeros and is fetched from nowhere.
- *extent*: a run ``(start, length, is_zero)`` of blocks of one kind (data or
  hole), clipped to the range asked for. Extents come from the segment entries
  alone, never from chunk bytes, so a client (NBD block status, ``qemu-img
  map``) learns the holes of a 2 TiB disk from a few MiB of segments.
- *stream*: a run of reads each starting where the last one ended. The reader
  remembers the ends of the last ``STREAMS`` reads; a read continuing one also
  fetches the next *read-ahead* bytes, 128 KiB at first and doubling per read up
  to 4 MiB, in the same batch (one ``get_views``: frames that lie together in a
  pack are read with one ranged read). restic's mount got 5x faster with 128 KiB
  of read-ahead; several NBD connections each reading on keep their own stream.

Caches, both LRU: decompressed chunks by id (``cache_bytes``, 64 MiB by
default: 16 times the largest read-ahead, so a read's own blocks are never
evicted by the blocks it prefetched) and decoded segments (``SEGMENTS`` of up
to 4,096 entries, ~0.5 MiB each). One lock guards them and the ``State``
(which is not thread-safe); chunks are fetched outside it, so many threads
read at once (``ChunkStore.get_views`` is thread-safe: restore calls it from
a pool). A segment is loaded under the lock: one small read per 16 MiB of disk.
"""

from __future__ import annotations

import bisect
import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ckpt.domain.errors import CkptError, StoreCorrupt

from .chunks.codec import Chunk
from .disk_state import State

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

Fetch = Callable[[Sequence[bytes]], Sequence[Chunk]]
Extent = tuple[int, int, bool]

CACHE_BYTES = 64 << 20
AHEAD_FIRST = 128 << 10  # restic: 128 KiB of read-ahead made its mount 5x faster
AHEAD_MAX = 4 << 20  # as restore's largest write: a batch of ~1,000 4 KiB chunks
SEGMENTS = 16  # decoded segments kept: 256 MiB of disk around the reads, ~8 MiB
STREAMS = 16  # sequential readers told apart (NBD clients, FUSE readers)
BATCH = 1024  # chunks per get_views: 4 MiB of 4 KiB blocks


class DiskReader(io.RawIOBase):
    """A read-only, seekable file over a ``State``'s bytes (see the module docstring)."""

    def __init__(
        self, state: State, fetch: Fetch, cache_bytes: int = CACHE_BYTES, name: str = ""
    ) -> None:
        super().__init__()
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, not {cache_bytes}")
        self.name = name
        self._state = state
        self._fetch = fetch
        self._size = state.size
        self._block = state.block_size
        self._span = state.span
        self._limit = cache_bytes // self._block  # chunks the cache holds
        # read-ahead never exceeds half the cache: its blocks would evict each other
        self._ahead_max = min(AHEAD_MAX, (self._limit // 2) * self._block)
        self._lock = threading.Lock()
        self._chunks: OrderedDict[bytes, bytes] = OrderedDict()
        self._segments: OrderedDict[int, dict[int, bytes]] = OrderedDict()
        self._orders: dict[int, list[int]] = {}  # segment -> its entries' offsets, sorted
        self._streams: OrderedDict[int, tuple[int, int]] = OrderedDict()  # read end ->
        # (read-ahead, fetched up to)
        self._pos = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def block_size(self) -> int:
        return self._block

    @property
    def cached_chunks(self) -> int:
        """Decompressed chunks held now (at most ``cache_bytes // block_size``)."""
        return len(self._chunks)

    @property
    def cached_segments(self) -> int:
        return len(self._segments)

    # ------------------------------------------------------------ io.RawIOBase
    def readable(self) -> bool:
        self._checkClosed()
        return True

    def seekable(self) -> bool:
        self._checkClosed()
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.pread(self._pos, len(view))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        parts = []
        while chunk := self.pread(self._pos, AHEAD_MAX):
            parts.append(chunk)
            self._pos += len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._segments.clear()
            self._streams.clear()
        super().close()

    # ----------------------------------------------------------------- reads
    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer only at the end); the position stays."""
        self._checkClosed()
        if offset < 0 or length < 0:
            raise ValueError(f"pread of {length} bytes at {offset}: both must be >= 0")
        end = min(offset + length, self._size)
        if offset >= end:
            return b""
        bs = self._block
        first, last = offset // bs, (end - 1) // bs
        with self._lock:
            ahead_lo, ahead_hi = self._stream(offset, end)
            ids = self._ids(first, last + 1)
            if ahead_hi > ahead_lo:
                ids += self._ids(max(ahead_lo // bs, last + 1), -(-ahead_hi // bs))
            have: dict[bytes, bytes] = {}
            want: dict[bytes, None] = {}  # ordered: in block order, as packed
            for index, cid in ids:
                if cid in have or cid in want:
                    continue
                found = self._chunks.get(cid)
                if found is not None:
                    self._chunks.move_to_end(cid)
                    have[cid] = found
                elif index <= last or len(want) < self._limit // 2:
                    want[cid] = None
        try:
            fetched = self._get(list(want))
        except CkptError:
            # a damaged chunk ahead must not fail a read of good blocks: fetch
            # only what was asked (its own damage then fails it, naming the chunk)
            needed = {cid for index, cid in ids if index <= last and cid not in have}
            if len(needed) == len(want):
                raise
            fetched = self._get([cid for cid in want if cid in needed])
        have.update(fetched)
        if fetched:
            with self._lock:
                for cid, data in fetched.items():
                    self._chunks[cid] = data
                    self._chunks.move_to_end(cid)
                while len(self._chunks) > self._limit:
                    self._chunks.popitem(last=False)
        out = bytearray(end - offset)
        for index, cid in ids:
            if index > last:
                break
            data = have[cid]
            at = index * bs
            lo, hi = max(at, offset), min(at + bs, end)
            out[lo - offset : hi - offset] = data[lo - at : hi - at]
        return bytes(out)

    def _stream(self, offset: int, end: int) -> tuple[int, int]:
        """The bytes to read ahead of a read of [offset, end) (lock held): none
        unless it continues a stream, then a window refilled when less than half
        of it is left, so each fetch is a batch and not one block per read."""
        found = self._streams.pop(offset, None)
        ahead, until = (0, end) if found is None else found
        if found is not None:
            ahead = min(max(2 * ahead, AHEAD_FIRST), self._ahead_max)
        lo = max(until, end)
        hi = min(end + ahead, self._size) if ahead and lo - end <= ahead // 2 else lo
        self._streams[end] = (ahead, max(lo, hi))
        while len(self._streams) > STREAMS:
            self._streams.popitem(last=False)
        return lo, hi

    def _get(self, want: list[bytes]) -> dict[bytes, bytes]:
        """Fetch chunks (no lock held), copied out of the batch buffers so the
        cache holds only what it counts."""
        out: dict[bytes, bytes] = {}
        bs = self._block
        for at in range(0, len(want), BATCH):
            part = want[at : at + BATCH]
            for cid, data in zip(part, self._fetch(part), strict=True):
                if len(data) != bs:
                    raise StoreCorrupt(
                        f"chunk {cid.hex()[:16]} of {self.name or 'the disk'} is "
                        f"{len(data)} bytes, not a {bs}-byte block"
                    )
                out[cid] = bytes(data)
        return out

    def _entries(self, k: int) -> dict[int, bytes]:
        """Segment ``k``'s entries (offset in segment -> chunk id); lock held."""
        found = self._segments.get(k)
        if found is None:
            found = self._state.entries(k, ahead=False)
            self._segments[k] = found
            while len(self._segments) > SEGMENTS:
                gone, _ = self._segments.popitem(last=False)
                self._orders.pop(gone, None)
        else:
            self._segments.move_to_end(k)
        return found

    def _offsets(self, k: int) -> list[int]:
        """Segment ``k``'s data offsets in order, sorted once per load; lock held."""
        entries = self._entries(k)
        found = self._orders.get(k)
        if found is None:
            found = self._orders[k] = sorted(entries)
        return found

    def _ids(self, first: int, stop: int) -> list[tuple[int, bytes]]:
        """(block, chunk id) of the data blocks in [first, stop), in order; lock held."""
        span = self._span
        out: list[tuple[int, bytes]] = []
        for k in range(first // span, (stop - 1) // span + 1):
            entries = self._entries(k)
            if not entries:
                continue
            base = k * span
            lo, hi = max(first - base, 0), min(stop - base, span)
            if hi - lo <= len(entries):
                out.extend(
                    (base + o, cid) for o in range(lo, hi) if (cid := entries.get(o)) is not None
                )
            else:
                out.extend((base + o, entries[o]) for o in sorted(entries) if lo <= o < hi)
        return out

    # --------------------------------------------------------------- extents
    def extents(self, offset: int, length: int, limit: int | None = None) -> list[Extent]:
        """Data and hole runs covering [offset, min(offset + length, size)),
        from the segment entries alone (no chunk is read). With ``limit``, only
        the first ``limit`` runs: what an NBD client asking for one extent at a
        time (qemu does) costs is then that run, not the range it names. A
        segment's offsets are sorted once per load and searched by bisection:
        sorting them per call made qemu-img's walk of a 1 GiB disk with a hole
        every 4th block take minutes."""
        self._checkClosed()
        if offset < 0 or length < 0:
            raise ValueError(f"extents of {length} bytes at {offset}: both must be >= 0")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        end = min(offset + length, self._size)
        if offset >= end:
            return []
        bs, span = self._block, self._span
        first, stop = offset // bs, (end - 1) // bs + 1
        runs: list[list[int]] = []  # [start block, stop block, is_zero]
        # A run is whole once the next one begins: stop when limit + 1 have begun
        # (without a limit, never: there are at most as many runs as blocks).
        enough = limit + 1 if limit is not None else stop - first + 1

        def add(start: int, stop: int, zero: int) -> None:
            if runs and runs[-1][2] == zero and runs[-1][1] == start:
                runs[-1][1] = stop
            else:
                runs.append([start, stop, zero])

        for k in range(first // span, (stop - 1) // span + 1):
            base = k * span
            lo, hi = max(first, base), min(stop, base + span)
            with self._lock:
                offsets = self._offsets(k)
            at = lo
            i = bisect.bisect_left(offsets, lo - base)
            while i < len(offsets) and len(runs) < enough:
                block = base + offsets[i]
                if block >= hi:
                    break
                if block > at:
                    add(at, block, 1)
                add(block, block + 1, 0)
                at = block + 1
                i += 1
            if len(runs) >= enough:
                break
            if at < hi:
                add(at, hi, 1)
            if len(runs) >= enough:
                break
        if limit is not None:
            del runs[limit:]
        return [
            (max(a * bs, offset), min(b * bs, end) - max(a * bs, offset), bool(z))
            for a, b, z in runs
        ]
