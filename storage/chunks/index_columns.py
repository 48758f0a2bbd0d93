"""An index file's entries as numpy columns: what the chunk-index cache is built from.

Terms:
    columns   one pack's entries as keys ((n, 4) u64, run_file.py's key order)
              and slots without the pack number ((n, 5) u32: frame offset,
              frame compressed length, frame uncompressed length, slice offset,
              chunk length), plus the pack's id, creation time and size.

``parse_index_columns`` reads a version-1 index file straight into columns,
with the checks of ``index_file.decode_index_file`` done on whole columns: a
Python ``PackEntry`` per entry cost ~1.6 us, ~10x the rest of a cache build.
Any other version goes through ``decode_index_file`` (the authority on the
format) and ``columns_of``.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

import numpy as np

from .index_file import CRC, HEAD, MAGIC, IndexFile, decode_index_file
from .pack import HEADER, MAX_PACK_SIZE
from .run_file import U32, U64, ids_to_keys

_V1_ENTRY = np.dtype([("id", ">u8", (4,)), ("offset", "<u8"), ("clen", "<u4"), ("ulen", "<u4")])
_VERSION = struct.Struct("<I")


class PackColumns(NamedTuple):
    pack_id: bytes
    created: float
    pack_size: int
    keys: U64
    slots: U32  # (n, 5): everything of the six-u32 slot but the pack number


def columns_of(f: IndexFile) -> PackColumns:
    """The columns of a decoded index file (the slow path: one tuple per entry)."""
    keys = ids_to_keys([e.chunk_id for e in f.entries])
    rows = [
        (e.offset, e.compressed_length, e.uncompressed_length, e.slice_offset, e.chunk_length)
        for e in f.entries
    ]
    slots = np.array(rows, np.uint32).reshape(-1, 5)
    return PackColumns(f.pack_id, f.created, f.pack_size, keys, slots)


def parse_index_columns(data: bytes, name: str) -> PackColumns:
    """The columns of index file ``data``; ``IndexCorrupt`` as ``decode_index_file``."""
    if len(data) < HEAD.size + CRC.size or data[:8] != MAGIC:
        return columns_of(decode_index_file(data, name))  # raises, naming the fault
    (version,) = _VERSION.unpack_from(data, 8)
    if version != 1:
        return columns_of(decode_index_file(data, name))
    _, _, count, pack_id, created, pack_size = HEAD.unpack_from(data)
    if len(data) != HEAD.size + count * _V1_ENTRY.itemsize + CRC.size:
        return columns_of(decode_index_file(data, name))
    (crc,) = CRC.unpack_from(data, len(data) - CRC.size)
    if zlib.crc32(memoryview(data)[: -CRC.size]) != crc or pack_size > MAX_PACK_SIZE:
        return columns_of(decode_index_file(data, name))
    table = np.frombuffer(data, _V1_ENTRY, count, HEAD.size)
    off = table["offset"]
    clen = table["clen"].astype(np.uint64)
    ulen = table["ulen"]
    bad = (off < HEADER.size) | (off + clen > pack_size) | (clen == 0) | (ulen == 0)
    if bad.any():
        return columns_of(decode_index_file(data, name))
    keys = table["id"].astype(np.uint64)
    slots = np.empty((count, 5), np.uint32)
    slots[:, 0] = off
    slots[:, 1] = table["clen"]
    slots[:, 2] = ulen
    slots[:, 3] = 0
    slots[:, 4] = ulen
    return PackColumns(pack_id, created, pack_size, keys, slots)
