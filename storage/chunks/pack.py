"""The pack file format: many compressed chunks in one object.

Terms:
    frame    one zstd frame. In a version-1 pack it holds one chunk; in a
             version-2 pack it is a *group frame*: up to ``GROUP_TARGET`` bytes
             of consecutive new chunks of one writer session, back to back
             (decision 0012). A chunk is read with one ranged ``get`` of its
             frame, which is decompressed and then sliced.
    group    the chunks of one group frame, in the order the writer got them.
    pack     a 16-byte header, the frames back to back, (v2: a group table,)
             an entry table and a 40-byte trailer. It describes itself
             completely, so the index can be rebuilt from the packs alone
             (``ChunkStore.rebuild_index``).
    entry    one row of the entry table. v1 (48 bytes): chunk id, frame offset
             in the pack, frame (compressed) length, uncompressed length. v2:
             the chunk id (32 bytes), plus its length (4) unless the group
             table says every chunk of the group has the same length; a
             chunk's offset in its group is the sum of the lengths before it.

Layout (little-endian; docs/chunk-format.md has the byte-by-byte table)::

    header   "CKPTPACK" | u32 version | u32 reserved=0
    frames   frame 0 | frame 1 | ...           first at offset 16, contiguous
    v1 table n x (32s id | u64 offset | u32 compressed len | u32 uncompressed len)
    v2 group g x (u64 offset | u32 compressed len | u32 uncompressed len |
                  u32 entries | u32 uniform chunk length, 0 = in each entry)
    v2 table per group: entries x (32s id), or x (32s id | u32 length) if not uniform
    trailer  u64 table offset | u32 n | u32 version | f64 created |
             u32 crc32(tables + trailer[0:24]) | u32 g (v1: 0) | "CKPTPACK"

In memory both versions are lists of ``PackEntry``: a v1 entry is the whole
frame (slice 0, -1), a v2 entry names its group's frame and its slice.

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
from collections.abc import Sequence
from typing import NamedTuple

from ckpt.domain.errors import PackCorrupt

from .ids import ID_SIZE, ChunkId

MAGIC = b"CKPTPACK"
VERSION = 1  # the version this module wrote before decision 0012; still read and written
GROUPED = 2  # group frames (decision 0012)
VERSIONS = (VERSION, GROUPED)
HEADER = struct.Struct("<8sII")
ENTRY = struct.Struct("<32sQII")
# v2: offset, compressed length, uncompressed length, entry count, uniform chunk
# length (0: each entry carries its length). Entries are then 32 bytes (id) or
# 36 (id, u32 length): 4 KiB disk blocks make nearly every group uniform, so a
# chunk costs 32 + 24/16 bytes per table (pack and index file) instead of 48.
GROUP = struct.Struct("<QIIII")
ID_ENTRY = struct.Struct("<32s")
SIZED_ENTRY = struct.Struct("<32sI")
# 64 KiB: decision 0012 measured 0.510 of the raw bytes at zstd-3 on real
# packages against 0.573 for 4 KiB frames at zstd-1, 2x faster decompression,
# restore amplification 1.08x and a random 4 KiB read at ~40 us; 256 KiB and
# 1 MiB gained 2-4% more for 3.5-15x slower random reads.
GROUP_TARGET = 64 << 10
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
# A pack is also finished at this many chunks: a writer holds each pack in flight
# with its entries (~150 B each as ``PackEntry``), and 16 MiB of very compressible
# blocks (~30 B each) is ~500,000 chunks: 8 packs in flight held ~330 MiB of a
# 4 GiB first capture. 65,536 chunks is 256 MiB of 4 KiB blocks, ~10 MB of entries.
MAX_PACK_ENTRIES = 1 << 16


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
    version: int = VERSION
    group_count: int = 0
    tables_size: int = 0  # bytes of the group table (v2) and the entry table


class PackWriter:
    """Accumulates frames in memory and produces a finished pack's bytes.

    ``full`` turns true once the finished pack would reach ``target_size``;
    the caller then calls ``finish`` and starts a new writer. A chunk id can be
    added once per pack. ``version`` 1 takes one chunk per frame (``add``);
    version 2 takes group frames (``add_group``; ``add`` is a group of one).
    """

    def __init__(self, target_size: int = DEFAULT_PACK_SIZE, version: int = VERSION) -> None:
        if not 0 < target_size <= MAX_PACK_SIZE:
            raise ValueError(f"pack target size {target_size} is outside 1..{MAX_PACK_SIZE}")
        if version not in VERSIONS:
            raise ValueError(f"pack version {version} is not one of {VERSIONS}")
        self._target = target_size
        self._version = version
        self._buf = bytearray(HEADER.pack(MAGIC, version, 0))
        self._entries: list[PackEntry] = []
        self._groups = 0
        self._ids: set[bytes] = set()
        self._finished = False

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, cid: object) -> bool:
        return cid in self._ids

    @property
    def version(self) -> int:
        return self._version

    @property
    def entries(self) -> list[PackEntry]:
        return list(self._entries)

    @property
    def size(self) -> int:
        """Bytes the pack would have if finished now."""
        per_entry = ENTRY.size if self._version == VERSION else SIZED_ENTRY.size
        return (
            len(self._buf) + per_entry * len(self._entries) + GROUP.size * self._groups
        ) + TRAILER.size

    @property
    def full(self) -> bool:
        return self.size >= self._target or len(self._entries) >= MAX_PACK_ENTRIES

    def add(self, cid: ChunkId, frame: bytes, uncompressed_length: int) -> PackEntry:
        """Append one compressed chunk (v2: a group of one); return its entry."""
        if self._version == GROUPED:
            return self.add_group(frame, [(cid, uncompressed_length)])[0]
        self._check_frame(frame, uncompressed_length, [cid])
        entry = PackEntry(cid, len(self._buf), len(frame), uncompressed_length)
        self._buf += frame
        self._entries.append(entry)
        self._ids.add(cid)
        return entry

    def add_group(self, frame: bytes, members: Sequence[tuple[ChunkId, int]]) -> list[PackEntry]:
        """Append one group frame holding ``members`` (id, length) back to back."""
        if self._version != GROUPED:
            raise ValueError("a version-1 pack takes one chunk per frame")
        total = sum(n for _, n in members)
        self._check_frame(frame, total, [c for c, _ in members])
        if any(n <= 0 for _, n in members):
            raise ValueError("a chunk in a group has no bytes")
        offset, at = len(self._buf), 0
        added: list[PackEntry] = []
        for cid, n in members:
            added.append(PackEntry(cid, offset, len(frame), total, at, n))
            at += n
        self._buf += frame
        self._entries += added
        self._ids.update(c for c, _ in members)
        self._groups += 1
        return added

    def _check_frame(self, frame: bytes, length: int, cids: Sequence[bytes]) -> None:
        if self._finished:
            raise ValueError("pack writer already finished")
        if not cids:
            raise ValueError("a frame holds at least one chunk")
        for cid in cids:
            if len(cid) != ID_SIZE:
                raise ValueError(f"chunk id must be {ID_SIZE} bytes, got {len(cid)}")
            if cid in self._ids:
                raise ValueError(f"chunk {cid.hex()} is already in this pack")
        if len(set(cids)) != len(cids):
            raise ValueError("a chunk id appears twice in one group")
        if not frame or not 0 < length <= 0xFFFFFFFF:
            raise ValueError(f"empty frame or bad uncompressed length {length}")
        grow = len(frame) + ENTRY.size * len(cids) + GROUP.size
        if self.size + grow > MAX_PACK_SIZE:
            raise ValueError(f"a {len(frame)}-byte frame would grow the pack past 4 GiB")

    def finish(self, created: float) -> bytes:
        """The complete pack; ``created`` is a Unix time from the caller's clock."""
        if self._finished:
            raise ValueError("pack writer already finished")
        self._finished = True
        table_offset, count = len(self._buf), len(self._entries)
        if self._version == GROUPED:
            groups, table = encode_groups(self._entries)
            table = groups + table
            group_count = self._groups
        else:
            table = b"".join(ENTRY.pack(*e[:4]) for e in self._entries)
            group_count = 0
        head = struct.pack("<QIId", table_offset, count, self._version, created)
        crc = zlib.crc32(head, zlib.crc32(table))
        self._buf += table
        self._buf += TRAILER.pack(
            table_offset, count, self._version, created, crc, group_count, MAGIC
        )
        return bytes(self._buf)


def split_groups(
    chunks: Sequence[tuple[bytes, bytes]], target: int = GROUP_TARGET
) -> list[list[tuple[bytes, bytes]]]:
    """``chunks`` (id, data) cut into runs of at most ``target`` bytes, in
    order; a chunk of ``target`` bytes or more is a run of its own."""
    groups: list[list[tuple[bytes, bytes]]] = []
    current: list[tuple[bytes, bytes]] = []
    size = 0
    for cid, data in chunks:
        if current and size + len(data) > target:
            groups.append(current)
            current, size = [], 0
        current.append((cid, data))
        size += len(data)
    if current:
        groups.append(current)
    return groups


def encode_groups(entries: Sequence[PackEntry]) -> tuple[bytes, bytes]:
    """The v2 group table and entry table of ``entries`` (grouped, in frame order)."""
    groups = bytearray()
    table = bytearray()
    start = 0
    while start < len(entries):
        first = entries[start]
        end = start + 1
        while end < len(entries) and entries[end].offset == first.offset:
            end += 1
        run = entries[start:end]
        lengths = {e.chunk_length for e in run}
        uniform = first.chunk_length if len(lengths) == 1 else 0
        groups += GROUP.pack(
            first.offset, first.compressed_length, first.uncompressed_length, len(run), uniform
        )
        for e in run:
            table += (
                ID_ENTRY.pack(e.chunk_id)
                if uniform
                else SIZED_ENTRY.pack(e.chunk_id, e.chunk_length)
            )
        start = end
    return bytes(groups), bytes(table)


def decode_groups(
    groups: bytes | memoryview, table: bytes | memoryview, name: str, frames_end: int | None
) -> list[PackEntry]:
    """Check a v2 group table and entry table; return the entries.

    Rules (docs/chunk-format.md §3.6): frames contiguous from offset 16 (and
    ending at ``frames_end`` when given), non-zero lengths, at least one entry
    each; each group's chunks tile its uncompressed length exactly; the entry
    table is used up exactly; no id twice. Raises ``ValueError`` with the
    fault; callers wrap it in their error."""
    if len(groups) % GROUP.size:
        raise ValueError(f"a group table of {len(groups)} bytes")
    entries: list[PackEntry] = []
    expected = HEADER.size
    seen: set[bytes] = set()
    at = 0
    view = memoryview(table)
    for g, (offset, clen, ulen, count, uniform) in enumerate(GROUP.iter_unpack(groups)):
        if offset != expected or clen == 0 or ulen == 0 or count == 0:
            raise ValueError(
                f"group {g} at offset {offset}, length {clen}/{ulen}, {count} chunks; expected "
                f"offset {expected}, non-zero lengths and at least one chunk"
            )
        expected += clen
        size = ID_ENTRY.size if uniform else SIZED_ENTRY.size
        if at + count * size > len(view):
            raise ValueError(f"group {g}'s {count} entries run past the entry table")
        if uniform:
            # The common case (4 KiB blocks), without a Python step per field:
            # the real-content set's 631,240 entries decode in 0.54-0.60 s.
            block = bytes(view[at : at + count * ID_ENTRY.size])
            cids = [block[i : i + ID_ENTRY.size] for i in range(0, len(block), ID_ENTRY.size)]
            at += len(block)
            inside = count * uniform
            entries += [
                PackEntry(c, offset, clen, ulen, k, uniform)  # type: ignore[arg-type]
                for c, k in zip(cids, range(0, inside, uniform), strict=True)
            ]
            before = len(seen)
            seen.update(cids)
            if len(seen) != before + count:
                raise ValueError(f"a chunk id is listed twice (group {g})")
        else:
            inside = 0
            for k in range(count):
                cid, length = SIZED_ENTRY.unpack_from(view, at)
                at += size
                if length == 0:
                    raise ValueError(f"chunk {cid.hex()} (group {g}, entry {k}) has length 0")
                if cid in seen:
                    raise ValueError(f"chunk {cid.hex()} listed twice")
                seen.add(cid)
                entries.append(PackEntry(ChunkId(cid), offset, clen, ulen, inside, length))
                inside += length
        if inside != ulen:
            raise ValueError(f"group {g}'s chunks cover {inside} of its {ulen} bytes")
    if frames_end is not None and expected != frames_end:
        raise ValueError(f"frames end at {expected}, table starts at {frames_end}")
    if at != len(view):
        raise ValueError(f"the entry table holds {len(view) - at} bytes after its last group")
    return entries


def parse_header(head: bytes, name: str = "pack") -> int:
    """Check the first 16 bytes of a pack; return its version."""
    if len(head) < HEADER.size:
        raise PackCorrupt(f"{name}: {len(head)} bytes is too short for a pack header")
    magic, version, reserved = HEADER.unpack_from(head)
    if magic != MAGIC:
        raise PackCorrupt(f"{name}: not a ckpt pack (header magic {magic!r})")
    if version not in VERSIONS or reserved != 0:
        raise PackCorrupt(
            f"{name}: unsupported pack version {version} (reserved {reserved}); this release "
            f"reads versions {VERSION} and {GROUPED}"
        )
    return int(version)


def parse_trailer(tail: bytes, pack_size: int, name: str = "pack") -> PackTrailer:
    """Decode the last 40 bytes of a pack of ``pack_size`` bytes."""
    if pack_size < HEADER.size + TRAILER.size or len(tail) != TRAILER.size:
        raise PackCorrupt(f"{name}: {pack_size} bytes is too short for a pack (truncated?)")
    table_offset, count, version, created, _crc, groups, magic = TRAILER.unpack(tail)
    if magic != MAGIC:
        raise PackCorrupt(f"{name}: no trailer magic at the end (truncated or damaged)")
    if version not in VERSIONS or (version == VERSION and groups != 0):
        raise PackCorrupt(f"{name}: unsupported pack version {version} (reserved {groups})")
    if version == GROUPED:
        tables = pack_size - TRAILER.size - table_offset
        smallest = GROUP.size * groups + ID_ENTRY.size * count
        if not smallest <= tables <= smallest + (SIZED_ENTRY.size - ID_ENTRY.size) * count:
            raise PackCorrupt(
                f"{name}: trailer says {groups} groups and {count} entries at offset "
                f"{table_offset}, which does not fit the {pack_size}-byte pack"
            )
    else:
        tables = ENTRY.size * count
    trailer = PackTrailer(table_offset, count, created, version, groups, tables)
    if table_offset + trailer.tables_size + TRAILER.size != pack_size:
        raise PackCorrupt(
            f"{name}: trailer says {count} entries at offset {table_offset}, "
            f"which does not end the {pack_size}-byte pack"
        )
    return trailer


def parse_table(table: bytes, tail: bytes, name: str = "pack") -> list[PackEntry]:
    """Decode and check the tables (v2: group table, then entry table), given
    the trailer bytes that follow them."""
    table_offset, count, version, _created, _crc, groups, _magic = TRAILER.unpack(tail)
    (crc,) = struct.unpack_from("<I", tail, _TRAILER_CRC_SPAN)
    if version == GROUPED:
        if zlib.crc32(tail[:_TRAILER_CRC_SPAN], zlib.crc32(table)) != crc:
            raise PackCorrupt(f"{name}: entry table checksum mismatch (table or trailer damaged)")
        split = groups * GROUP.size
        try:
            entries = decode_groups(table[:split], table[split:], name, table_offset)
        except ValueError as fault:
            raise PackCorrupt(f"{name}: {fault}") from fault
        if len(entries) != count:
            raise PackCorrupt(f"{name}: {len(entries)} entries, the trailer says {count}")
        return entries
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
    table = data[trailer.table_offset : trailer.table_offset + trailer.tables_size]
    entries = parse_table(table, data[-TRAILER.size :], name)
    for i, e in enumerate(entries):
        if e.slice_offset == 0 and data[e.offset : e.offset + 4] != ZSTD_MAGIC:
            raise PackCorrupt(f"{name}: entry {i} (chunk {e.chunk_id.hex()}) is not a zstd frame")
    return entries
