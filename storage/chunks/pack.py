"""The pack file format: many compressed chunks in one object.

Terms:
    frame    one chunk compressed alone as one zstd frame, so any chunk can be
             read back with a single ranged ``get`` of its frame.
    pack     a 16-byte header, the frames back to back, an entry table and a
             40-byte trailer. It describes itself completely, so the index can
             be rebuilt from the packs alone (``ChunkStore.rebuild_index``).
    entry    one row of the table: chunk id, frame offset in the pack, frame
             (compressed) length, uncompressed length; 48 bytes.

Layout (little-endian; docs/chunk-format.md has the byte-by-byte table)::

    header   "CKPTPACK" | u32 version=1 | u32 reserved=0
    frames   frame 0 | frame 1 | ...           first at offset 16, contiguous
    table    n x (32s id | u64 offset | u32 compressed len | u32 uncompressed len)
    trailer  u64 table offset | u32 n | u32 version | f64 created |
             u32 crc32(table + trailer[0:24]) | u32 reserved=0 | "CKPTPACK"

Why a trailer and not only a header: the writer streams frames before it knows
the table, and a reader finds the table with two ranged reads (the last 40
bytes, then the table) without reading the frames. Why CRC-32 and not SHA-256
for the table: it only has to catch accidental damage (a flipped bit, a torn
copy); every chunk's bytes are checked against its SHA-256 id when read.

This module works on ``bytes`` only; it never opens files or reads the clock
(the caller passes ``created``).
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from ckpt.domain.errors import PackCorrupt

from .ids import ID_SIZE, ChunkId

MAGIC = b"CKPTPACK"
VERSION = 1
HEADER = struct.Struct("<8sII")
ENTRY = struct.Struct("<32sQII")
TRAILER = struct.Struct("<QIIdII8s")
_TRAILER_CRC_SPAN = 24  # table offset, count, version, created
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# 16 MiB: restic's default pack size too. Big enough that a 1 TiB store is
# ~65,000 objects (cheap to list, few fsyncs: 2 per pack), small enough that
# one pack buffer per writer thread is cheap and repacking moves little.
DEFAULT_PACK_SIZE = 16 << 20
# Offsets and lengths are u32 in the chunk index's slots (run_file.py), which
# keeps an entry at 56 bytes; packs therefore stay under 4 GiB.
MAX_PACK_SIZE = (1 << 32) - 1


class PackEntry(NamedTuple):
    """Where one chunk lies in its pack.

    ``offset``, ``compressed_length`` and ``uncompressed_length`` describe the
    zstd *frame* that holds the chunk. A version-1 pack has one chunk per
    frame (``slice_offset`` 0, ``slice_length`` -1: the whole frame); a
    grouped frame (decision 0012) holds several chunks back to back, and the
    chunk is ``[slice_offset, slice_offset + slice_length)`` of the frame's
    decompressed bytes.
    """

    chunk_id: ChunkId
    offset: int
    compressed_length: int
    uncompressed_length: int
    slice_offset: int = 0
    slice_length: int = -1

    @property
    def chunk_length(self) -> int:
        """The chunk's own uncompressed length."""
        return self.uncompressed_length if self.slice_length < 0 else self.slice_length


class PackTrailer(NamedTuple):
    table_offset: int
    entry_count: int
    created: float


class PackWriter:
    """Accumulates frames in memory and produces a finished pack's bytes.

    ``full`` turns true once the finished pack would reach ``target_size``;
    the caller then calls ``finish`` and starts a new writer. A chunk id can be
    added once per pack.
    """

    def __init__(self, target_size: int = DEFAULT_PACK_SIZE) -> None:
        if not 0 < target_size <= MAX_PACK_SIZE:
            raise ValueError(f"pack target size {target_size} is outside 1..{MAX_PACK_SIZE}")
        self._target = target_size
        self._buf = bytearray(HEADER.pack(MAGIC, VERSION, 0))
        self._entries: list[PackEntry] = []
        self._ids: set[bytes] = set()
        self._finished = False

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, cid: object) -> bool:
        return cid in self._ids

    @property
    def entries(self) -> list[PackEntry]:
        return list(self._entries)

    @property
    def size(self) -> int:
        """Bytes the pack would have if finished now."""
        return len(self._buf) + ENTRY.size * len(self._entries) + TRAILER.size

    @property
    def full(self) -> bool:
        return self.size >= self._target

    def add(self, cid: ChunkId, frame: bytes, uncompressed_length: int) -> PackEntry:
        """Append one compressed chunk; return its entry."""
        if self._finished:
            raise ValueError("pack writer already finished")
        if len(cid) != ID_SIZE:
            raise ValueError(f"chunk id must be {ID_SIZE} bytes, got {len(cid)}")
        if cid in self._ids:
            raise ValueError(f"chunk {cid.hex()} is already in this pack")
        if not frame or not 0 < uncompressed_length <= 0xFFFFFFFF:
            raise ValueError(f"empty frame or bad uncompressed length {uncompressed_length}")
        if self.size + len(frame) + ENTRY.size > MAX_PACK_SIZE:
            raise ValueError(f"a {len(frame)}-byte frame would grow the pack past 4 GiB")
        entry = PackEntry(cid, len(self._buf), len(frame), uncompressed_length)
        self._buf += frame
        self._entries.append(entry)
        self._ids.add(cid)
        return entry

    def finish(self, created: float) -> bytes:
        """The complete pack; ``created`` is a Unix time from the caller's clock."""
        if self._finished:
            raise ValueError("pack writer already finished")
        self._finished = True
        table_offset, count = len(self._buf), len(self._entries)
        table = b"".join(ENTRY.pack(*e[:4]) for e in self._entries)
        head = struct.pack("<QIId", table_offset, count, VERSION, created)
        crc = zlib.crc32(head, zlib.crc32(table))
        self._buf += table
        self._buf += TRAILER.pack(table_offset, count, VERSION, created, crc, 0, MAGIC)
        return bytes(self._buf)


def parse_header(head: bytes, name: str = "pack") -> None:
    """Check the first 16 bytes of a pack."""
    if len(head) < HEADER.size:
        raise PackCorrupt(f"{name}: {len(head)} bytes is too short for a pack header")
    magic, version, reserved = HEADER.unpack_from(head)
    if magic != MAGIC:
        raise PackCorrupt(f"{name}: not a ckpt pack (header magic {magic!r})")
    if version != VERSION or reserved != 0:
        raise PackCorrupt(f"{name}: unsupported pack version {version} (reserved {reserved})")


def parse_trailer(tail: bytes, pack_size: int, name: str = "pack") -> PackTrailer:
    """Decode the last 40 bytes of a pack of ``pack_size`` bytes."""
    if pack_size < HEADER.size + TRAILER.size or len(tail) != TRAILER.size:
        raise PackCorrupt(f"{name}: {pack_size} bytes is too short for a pack (truncated?)")
    table_offset, count, version, created, _crc, reserved, magic = TRAILER.unpack(tail)
    if magic != MAGIC:
        raise PackCorrupt(f"{name}: no trailer magic at the end (truncated or damaged)")
    if version != VERSION or reserved != 0:
        raise PackCorrupt(f"{name}: unsupported pack version {version} (reserved {reserved})")
    if table_offset + count * ENTRY.size + TRAILER.size != pack_size:
        raise PackCorrupt(
            f"{name}: trailer says {count} entries at offset {table_offset}, "
            f"which does not end the {pack_size}-byte pack"
        )
    return PackTrailer(table_offset, count, created)


def parse_table(table: bytes, tail: bytes, name: str = "pack") -> list[PackEntry]:
    """Decode and check the entry table, given the trailer bytes that follow it."""
    table_offset, count, *_ = TRAILER.unpack(tail)
    (crc,) = struct.unpack_from("<I", tail, _TRAILER_CRC_SPAN)
    if len(table) != count * ENTRY.size:
        raise PackCorrupt(f"{name}: entry table is {len(table)} bytes, expected {count} x 48")
    if zlib.crc32(tail[:_TRAILER_CRC_SPAN], zlib.crc32(table)) != crc:
        raise PackCorrupt(f"{name}: entry table checksum mismatch (table or trailer damaged)")
    entries = [PackEntry(ChunkId(c), o, cl, ul) for c, o, cl, ul in ENTRY.iter_unpack(table)]
    expected = HEADER.size
    seen: set[bytes] = set()
    for i, e in enumerate(entries):
        if e.offset != expected or e.compressed_length == 0 or e.uncompressed_length == 0:
            raise PackCorrupt(
                f"{name}: entry {i} (chunk {e.chunk_id.hex()}) at offset {e.offset}, "
                f"length {e.compressed_length}/{e.uncompressed_length}; expected offset "
                f"{expected} and non-zero lengths"
            )
        if e.chunk_id in seen:
            raise PackCorrupt(f"{name}: chunk {e.chunk_id.hex()} listed twice")
        seen.add(e.chunk_id)
        expected += e.compressed_length
    if expected != table_offset:
        raise PackCorrupt(f"{name}: frames end at {expected}, table starts at {table_offset}")
    return entries


def read_pack_trailer(data: bytes, name: str = "pack") -> PackTrailer:
    """Check a whole pack's header and trailer; return the trailer."""
    parse_header(data[: HEADER.size], name)
    return parse_trailer(data[-TRAILER.size :], len(data), name)


def read_pack_index(data: bytes, name: str = "pack") -> list[PackEntry]:
    """Parse and validate a whole pack's entry table (the repair path)."""
    trailer = read_pack_trailer(data, name)
    table = data[trailer.table_offset : trailer.table_offset + trailer.entry_count * ENTRY.size]
    entries = parse_table(table, data[-TRAILER.size :], name)
    for i, e in enumerate(entries):
        if data[e.offset : e.offset + 4] != ZSTD_MAGIC:
            raise PackCorrupt(f"{name}: entry {i} (chunk {e.chunk_id.hex()}) is not a zstd frame")
    return entries
