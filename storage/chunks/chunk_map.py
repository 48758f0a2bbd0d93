"""A compact in-memory map from chunk id to where the chunk is stored.

Terms:
    record   56 bytes: the 32-byte chunk id, then six u32: pack number (an
             index into the caller's list of packs), frame offset, frame
             compressed length, frame uncompressed length, the chunk's offset
             in the decompressed frame, the chunk's length (a v1 frame: 0 and
             the frame's uncompressed length).
    bucket   a ``bytearray`` of records whose ids share their first ``bits``
             bits. There are ``2**bits`` buckets, doubled whenever the average
             bucket passes 16 records, so a bucket holds 8-16 records.

Why not a dict: a ``dict[bytes, value]`` costs ~117 bytes per entry before the
value (a 65-byte ``bytes`` key plus the hash table slot) and ~155 bytes with a
packed-int or 16-byte ``bytes`` value (measured with tracemalloc, 300,000
entries). This map costs 55-63 bytes per entry (48 for the record, the rest
the bucket objects and their spare capacity), 2.5x less: at 4 KiB chunks a
store holding 1 TB of unique data needs ~15 GB of index with a dict and ~6 GB
with this. The price is speed: a lookup is 0.6-1.0 us (a ``find`` over a
~600-byte bucket) against ~0.2 us for a dict, still 3x cheaper than hashing the
4 KiB chunk it decides about (~3 us with SHA-256).

A 32-byte id could match across two records only by a fluke of the bytes; such
a match is rejected by checking that it starts on a record boundary.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence

from .ids import ID_SIZE, ChunkId

RECORD = struct.Struct("<32sIIIIII")
_LOCATION = struct.Struct("<IIIIII")
_MIN_BITS = 4
_MAX_AVERAGE = 16  # records per bucket before the bucket count doubles

Slot = tuple[int, int, int, int, int, int]
"""(pack number, frame offset, frame compressed length, frame uncompressed
length, slice offset, chunk length)"""


class ChunkMap:
    """Chunk id -> ``Slot``. Insert-only; one writer at a time, any number of
    readers (a lookup reads ``(shift, buckets)`` as one tuple, so it never sees
    half a resize)."""

    def __init__(self) -> None:
        self._table: tuple[int, list[bytearray]] = (
            32 - _MIN_BITS,
            [bytearray() for _ in range(1 << _MIN_BITS)],
        )
        self._count = 0
        self._stored = 0
        self._uncompressed = 0

    def __len__(self) -> int:
        return self._count

    @property
    def stored_bytes(self) -> int:
        """Sum of the compressed lengths of all entries."""
        return self._stored

    @property
    def uncompressed_bytes(self) -> int:
        return self._uncompressed

    def _find(self, cid: bytes) -> tuple[bytearray, int]:
        shift, buckets = self._table
        bucket = buckets[int.from_bytes(cid[:4], "big") >> shift]
        pos = bucket.find(cid)
        while pos > 0 and pos % RECORD.size:
            pos = bucket.find(cid, pos + 1)
        return bucket, pos

    def get(self, cid: bytes) -> Slot | None:
        if len(cid) != ID_SIZE:
            return None
        bucket, pos = self._find(cid)
        if pos < 0:
            return None
        slot: Slot = _LOCATION.unpack_from(bucket, pos + ID_SIZE)
        return slot

    def get_many(self, cids: Sequence[bytes]) -> list[Slot | None]:
        """``get`` of each id, in one loop: a restore looks up every block's
        chunk, and the two method calls per id of ``get`` were ~40% of the
        0.9-1.5 us a lookup cost (262,144 lookups: 0.63 s one by one)."""
        shift, buckets = self._table
        size = RECORD.size
        unpack = _LOCATION.unpack_from
        out: list[Slot | None] = []
        append = out.append
        for cid in cids:
            if len(cid) != ID_SIZE:
                append(None)
                continue
            bucket = buckets[int.from_bytes(cid[:4], "big") >> shift]
            pos = bucket.find(cid)
            while pos > 0 and pos % size:
                pos = bucket.find(cid, pos + 1)
            append(None if pos < 0 else unpack(bucket, pos + ID_SIZE))
        return out

    def __contains__(self, cid: object) -> bool:
        return isinstance(cid, bytes) and len(cid) == ID_SIZE and self._find(cid)[1] >= 0

    def add(
        self,
        cid: bytes,
        pack: int,
        offset: int,
        clen: int,
        ulen: int,
        slice_offset: int = 0,
        length: int = -1,
    ) -> bool:
        """Insert unless the id is present (the first location wins); True if added."""
        if len(cid) != ID_SIZE:
            raise ValueError(f"chunk id must be {ID_SIZE} bytes, got {len(cid)}")
        bucket, pos = self._find(cid)
        if pos >= 0:
            return False
        length = ulen if length < 0 else length
        bucket += RECORD.pack(cid, pack, offset, clen, ulen, slice_offset, length)
        self._count += 1
        # A group frame's bytes count once, with its first chunk.
        self._stored += clen if slice_offset == 0 else 0
        self._uncompressed += length
        if self._count > _MAX_AVERAGE * len(self._table[1]):
            self._grow()
        return True

    def add_many(self, pack: int, entries: Iterable[tuple[bytes, int, int, int, int, int]]) -> None:
        """``add`` for every (id, offset, compressed, uncompressed) of one pack.

        The loading path: the same checks as ``add``, inlined (one method call
        per chunk was a third of the time of loading 200,000 entries), and the
        table sized once for the whole batch instead of doubling along the way.
        """
        batch = entries if isinstance(entries, list) else list(entries)
        while self._count + len(batch) > _MAX_AVERAGE * len(self._table[1]):
            self._grow()
        shift, buckets = self._table
        pack_record = RECORD.pack
        size = RECORD.size
        added = stored = uncompressed = 0
        for cid, offset, clen, ulen, slice_offset, length in batch:
            if len(cid) != ID_SIZE:
                raise ValueError(f"chunk id must be {ID_SIZE} bytes, got {len(cid)}")
            bucket = buckets[int.from_bytes(cid[:4], "big") >> shift]
            pos = bucket.find(cid)
            while pos > 0 and pos % size:
                pos = bucket.find(cid, pos + 1)
            if pos >= 0:
                continue
            length = ulen if length < 0 else length
            bucket += pack_record(cid, pack, offset, clen, ulen, slice_offset, length)
            added += 1
            stored += clen if slice_offset == 0 else 0
            uncompressed += length
        self._count += added
        self._stored += stored
        self._uncompressed += uncompressed

    def _grow(self) -> None:
        # Bucket i splits into 2i and 2i+1 on the next bit of the id: O(n)
        # work per doubling, O(1) amortised per insert (~1 us measured).
        shift, buckets = self._table
        new_shift = shift - 1
        grown = [bytearray() for _ in range(2 * len(buckets))]
        size = RECORD.size
        for bucket in buckets:
            for pos in range(0, len(bucket), size):
                record = bucket[pos : pos + size]
                grown[int.from_bytes(record[:4], "big") >> new_shift] += record
        self._table = (new_shift, grown)

    def items(self) -> Iterator[tuple[ChunkId, int, int, int, int, int, int]]:
        """Every (id, pack number, offset, compressed length, uncompressed
        length, slice offset, chunk length)."""
        for bucket in self._table[1]:
            for cid, *rest in RECORD.iter_unpack(bytes(bucket)):
                yield (ChunkId(cid), *rest)
