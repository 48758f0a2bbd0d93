"""The index file format: one small file per pack listing its chunks.

Terms:
    pack id     the random 128-bit name of a pack (``layout.pack_name``).
    index file  ``index/<pack id hex>.idx``: a copy of one pack's entry table
                with the facts a reader needs without opening the pack (its
                id, size and creation time), under its own magic and checksum.
                Written only after its pack is durable, so an index file always
                points at a complete pack.

Layout (little-endian; docs/chunk-format.md has the byte-by-byte table)::

    0    8   magic "CKPTINDX"
    8    4   u32 version = 1
    12   4   u32 n, the number of entries
    16  16   pack id
    32   8   f64 pack creation time (Unix seconds, the writer's clock)
    40   8   u64 pack size in bytes
    48  48n  entries, as in the pack table (32s id | u64 off | u32 clen | u32 ulen)
    48+48n 4 u32 crc32 of bytes [0, 48 + 48n)

Version 2 (the index file of a version-2 pack, decision 0012)::

    0    8   magic "CKPTINDX"
    8    4   u32 version = 2
    12   4   u32 n, the number of entries
    16  16   pack id
    32   8   f64 pack creation time
    40   8   u64 pack size in bytes
    48   4   u32 g, the number of groups
    52   4   u32 reserved = 0
    56  16   converted from: the id of the v1 pack ``ckpt upgrade`` made this
             pack from (zero otherwise), so a resumed upgrade deletes that pack
             instead of converting it twice
    72  24g  the group table, as in the pack
    ..   ..  the entry table, as in the pack (32 or 36 bytes per entry)
    ..   4   u32 crc32 of everything before it

One file per pack (not one growing file) means two writers never rewrite the
same file: each adds files under fresh random names, and loading the index is
"list index/, read every file". At 4 KiB chunks a 16 MiB pack holds ~5,000
entries, so an index file is ~240 KB.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import NamedTuple

from ckpt.domain.errors import IndexCorrupt

from .ids import ChunkId
from .pack import (
    ENTRY,
    GROUP,
    HEADER,
    ID_ENTRY,
    MAX_PACK_SIZE,
    PackEntry,
    decode_groups,
    encode_groups,
)

MAGIC = b"CKPTINDX"
VERSION = 1
GROUPED = 2
HEAD = struct.Struct("<8sII16sdQ")
HEAD2 = struct.Struct("<8sII16sdQII16s")
CRC = struct.Struct("<I")
PACK_ID_SIZE = 16


class IndexFile(NamedTuple):
    """What an index file says about its pack."""

    pack_id: bytes
    created: float
    pack_size: int
    entries: list[PackEntry]
    source: bytes = bytes(PACK_ID_SIZE)  # v2: the v1 pack this one was converted from

    @property
    def grouped(self) -> bool:
        """True for the index file of a version-2 (grouped) pack."""
        return bool(self.entries) and self.entries[0].slice_length >= 0


def encode_index_file(f: IndexFile) -> bytes:
    if len(f.pack_id) != PACK_ID_SIZE:
        raise ValueError(f"pack id must be {PACK_ID_SIZE} bytes, got {len(f.pack_id)}")
    if f.grouped:
        groups, table = encode_groups(f.entries)
        head = HEAD2.pack(
            MAGIC,
            GROUPED,
            len(f.entries),
            f.pack_id,
            f.created,
            f.pack_size,
            len(groups) // GROUP.size,
            0,
            f.source,
        )
        body = head + groups + table
        return body + CRC.pack(zlib.crc32(body))
    head = HEAD.pack(MAGIC, VERSION, len(f.entries), f.pack_id, f.created, f.pack_size)
    body = head + b"".join(ENTRY.pack(*e[:4]) for e in f.entries)
    return body + CRC.pack(zlib.crc32(body))


def decode_index_file(data: bytes, name: str) -> IndexFile:
    """Parse and check an index file; ``IndexCorrupt`` names the file and the fault."""

    def damaged(reason: str) -> IndexCorrupt:
        return IndexCorrupt(f"index file {name!r} is damaged: {reason}; run rebuild_index")

    if len(data) < HEAD.size + CRC.size:
        raise damaged(f"{len(data)} bytes is too short")
    magic, version, count, pack_id, created, pack_size = HEAD.unpack_from(data)
    if magic != MAGIC:
        raise damaged(f"bad magic {magic!r}")
    if version == GROUPED:
        return _decode_grouped(data, damaged)
    if version != VERSION:
        raise damaged(f"unsupported version {version}; this release reads 1 and 2")
    if len(data) != HEAD.size + count * ENTRY.size + CRC.size:
        raise damaged(f"{len(data)} bytes does not fit {count} entries (truncated?)")
    (crc,) = CRC.unpack_from(data, len(data) - CRC.size)
    if zlib.crc32(memoryview(data)[: -CRC.size]) != crc:
        raise damaged("checksum mismatch")
    if pack_size > MAX_PACK_SIZE:
        raise damaged(f"pack size {pack_size} exceeds the 4 GiB limit")
    table = memoryview(data)[HEAD.size : -CRC.size]
    entries = [PackEntry(ChunkId(c), o, cl, ul) for c, o, cl, ul in ENTRY.iter_unpack(table)]
    for e in entries:
        if e.offset < HEADER.size or e.offset + e.compressed_length > pack_size:
            raise damaged(f"chunk {e.chunk_id.hex()} lies outside its {pack_size}-byte pack")
        if e.compressed_length == 0 or e.uncompressed_length == 0:
            raise damaged(f"chunk {e.chunk_id.hex()} has a zero length")
    return IndexFile(pack_id, created, pack_size, entries)


def _decode_grouped(data: bytes, damaged: Callable[[str], IndexCorrupt]) -> IndexFile:
    if len(data) < HEAD2.size + CRC.size:
        raise damaged(f"{len(data)} bytes is too short")
    _magic, _version, count, pack_id, created, pack_size, groups, reserved, source = (
        HEAD2.unpack_from(data)
    )
    if reserved != 0:
        raise damaged(f"reserved word is {reserved}")
    table_end = len(data) - CRC.size
    if table_end < HEAD2.size + groups * GROUP.size + count * ID_ENTRY.size:
        raise damaged(f"{len(data)} bytes does not fit {groups} groups and {count} entries")
    (crc,) = CRC.unpack_from(data, len(data) - CRC.size)
    if zlib.crc32(memoryview(data)[: -CRC.size]) != crc:
        raise damaged("checksum mismatch")
    if pack_size > MAX_PACK_SIZE:
        raise damaged(f"pack size {pack_size} exceeds the 4 GiB limit")
    view = memoryview(data)
    split = HEAD2.size + groups * GROUP.size
    try:
        entries = decode_groups(view[HEAD2.size : split], view[split:table_end], "", None)
    except ValueError as e:
        raise damaged(str(e)) from e
    if len(entries) != count:
        raise damaged(f"{len(entries)} entries, the header says {count}")
    if entries:
        last = entries[-1]
        if last.offset + last.compressed_length > pack_size:
            raise damaged(f"chunk {last.chunk_id.hex()} lies outside its {pack_size}-byte pack")
    return IndexFile(pack_id, created, pack_size, entries, source)
