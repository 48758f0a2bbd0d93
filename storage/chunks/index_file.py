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

One file per pack (not one growing file) means two writers never rewrite the
same file: each adds files under fresh random names, and loading the index is
"list index/, read every file". At 4 KiB chunks a 16 MiB pack holds ~5,000
entries, so an index file is ~240 KB.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from ckpt.domain.errors import IndexCorrupt

from .ids import ChunkId
from .pack import ENTRY, HEADER, MAX_PACK_SIZE, PackEntry

MAGIC = b"CKPTINDX"
VERSION = 1
HEAD = struct.Struct("<8sII16sdQ")
CRC = struct.Struct("<I")
PACK_ID_SIZE = 16


class IndexFile(NamedTuple):
    """What an index file says about its pack."""

    pack_id: bytes
    created: float
    pack_size: int
    entries: list[PackEntry]


def encode_index_file(f: IndexFile) -> bytes:
    if len(f.pack_id) != PACK_ID_SIZE:
        raise ValueError(f"pack id must be {PACK_ID_SIZE} bytes, got {len(f.pack_id)}")
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
    if version != VERSION:
        raise damaged(f"unsupported version {version}")
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
