"""Block maps ("manifests"): which chunk holds each block of a disk layer or a file.

Terms:
- *block map*: ``{block index: chunk id}`` for blocks of ``block_size`` bytes;
  the id ``ZERO_ID`` (32 zero bytes) says "this block reads as zeros". A map
  holds only the blocks it changes: a differencing layer's map lists the blocks
  that differ from its parent chain; a file's map lists its non-zero blocks.
- *manifest*: a block map encoded as bytes and kept in the chunk store like any
  content, so events carry one 32-byte id, never a list. A manifest above
  ``PIECE`` bytes is split into pieces and named by a small root chunk.

Encoding (little-endian), see docs/design.md "Manifests":
    map   = b"CKBM" | u8 version=1 | u8 kind | u16 0 | u32 block_size | u64 size | u64 count
            | count x u64 block index (strictly ascending) | count x 32-byte chunk id
    root  = b"CKMR" | u8 version=1 | u8 0 | u16 0 | u32 pieces | u64 total length
            | pieces x 32-byte chunk id
Index and id arrays are separate columns: 40 bytes per block, and the index
column (small ascending integers) compresses to a few bits per block in zstd.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import pairwise

from ckpt.domain.errors import InvalidValue, StoreCorrupt

ZERO_ID = bytes(32)
ID_SIZE = 32
PIECE = 1 << 20  # manifests above 1 MiB (26,000 blocks) are split into 1 MiB pieces

MAP_MAGIC = b"CKBM"
ROOT_MAGIC = b"CKMR"
VERSION = 1
KIND_DISK = 1
KIND_FILE = 2
_HEAD = struct.Struct("<4sBBHIQQ")
_ROOT = struct.Struct("<4sBBHIQ")
MAX_BLOCK = 256 << 20  # the largest VHDX block; nothing we write is larger
MAX_MANIFEST = 1 << 34  # 16 GiB of manifest = 2^29 blocks: refuse anything larger unread


@dataclass(frozen=True)
class BlockMap:
    kind: int
    block_size: int
    size: int
    entries: dict[int, bytes]

    @property
    def block_count(self) -> int:
        """How many blocks the virtual size spans (the last may be partial)."""
        return -(-self.size // self.block_size)


def encode(bm: BlockMap) -> bytes:
    """The manifest's bytes; a map with a block at or beyond its size is refused,
    so a manifest that ``decode`` would reject can never be stored."""
    indices = sorted(bm.entries)
    if indices and (indices[0] < 0 or indices[-1] >= bm.block_count):
        raise InvalidValue(
            f"manifest: block {indices[-1]} is beyond the {bm.block_count} blocks of "
            f"{bm.size} bytes (a bug: a capture records no block beyond its size)"
        )
    head = _HEAD.pack(MAP_MAGIC, VERSION, bm.kind, 0, bm.block_size, bm.size, len(indices))
    column = array("Q", indices)
    if column.itemsize != 8:  # pragma: no cover - every supported platform has 8-byte Q
        raise RuntimeError("array('Q') is not 64-bit here")
    ids = b"".join(bm.entries[i] for i in indices)
    return head + column.tobytes() + ids


def _columns(data: bytes, where: str) -> tuple[int, int, int, array[int], int]:
    """Header and index column of a map: (kind, block size, size, indices, ids offset).

    Checks only what is needed to read the columns (magic, lengths, block size);
    what the entries mean is ``decode``'s to check.
    """
    if len(data) < _HEAD.size:
        raise StoreCorrupt(f"{where}: {len(data)} bytes is shorter than a manifest header")
    magic, version, kind, _, block_size, size, count = _HEAD.unpack_from(data)
    if magic != MAP_MAGIC or version != VERSION:
        raise StoreCorrupt(f"{where}: not a version-{VERSION} manifest (magic {magic!r})")
    if not 0 < block_size <= MAX_BLOCK or block_size & (block_size - 1):
        raise StoreCorrupt(f"{where}: block size {block_size} is not a power of two <= 256 MiB")
    expected = _HEAD.size + count * (8 + ID_SIZE)
    if len(data) != expected:
        raise StoreCorrupt(f"{where}: {count} entries need {expected} bytes, found {len(data)}")
    column = array("Q")
    column.frombytes(data[_HEAD.size : _HEAD.size + 8 * count])
    return kind, block_size, size, column, _HEAD.size + 8 * count


def _ids(data: bytes, base: int, count: int) -> list[bytes]:
    return [data[base + i * ID_SIZE : base + (i + 1) * ID_SIZE] for i in range(count)]


def decode(data: bytes, where: str = "manifest") -> BlockMap:
    """A map from its bytes, every length, the order and the block range checked.

    Tolerance: ckpt up to commit 24af8f9 wrote, for a disk that shrank, ZERO_ID
    entries for blocks beyond the new size (issue 11). Such entries say nothing
    (the fold drops every block beyond a map's size), so they are dropped here
    and the manifest reads; any other block beyond the size is refused.
    """
    kind, block_size, size, column, base = _columns(data, where)
    blocks = -(-size // block_size)
    if any(a >= b for a, b in pairwise(column)):
        raise StoreCorrupt(f"{where}: block indices are not ascending within {blocks} blocks")
    ids = _ids(data, base, len(column))
    keep = bisect_left(column, blocks)
    beyond = [index for index, cid in zip(column[keep:], ids[keep:], strict=True) if cid != ZERO_ID]
    if beyond:
        raise StoreCorrupt(
            f"{where}: block {beyond[0]} lies beyond the {blocks} blocks of its {size} bytes"
        )
    if keep < len(column):
        column, ids = column[:keep], ids[:keep]
    return BlockMap(kind, block_size, size, dict(zip(column, ids, strict=True)))


def store(bm: BlockMap, add: Callable[[bytes], bytes | None]) -> bytes:
    """Write a manifest through ``add`` (returns the chunk id); return its id."""
    data = encode(bm)
    if len(data) <= PIECE:
        return _added(add(data))
    pieces = [_added(add(data[i : i + PIECE])) for i in range(0, len(data), PIECE)]
    root = _ROOT.pack(ROOT_MAGIC, VERSION, 0, 0, len(pieces), len(data)) + b"".join(pieces)
    return _added(add(root))


def _added(cid: bytes | None) -> bytes:
    if cid is None:  # pragma: no cover - a manifest starts with its magic, never all zero
        raise AssertionError("manifest bytes were all zero")
    return cid


def load(ref: bytes, get: Callable[[bytes], bytes]) -> BlockMap:
    data = get(ref)
    where = f"manifest {ref.hex()[:16]}"
    if data[:4] == ROOT_MAGIC:
        if len(data) < _ROOT.size:
            raise StoreCorrupt(f"{where}: truncated manifest root")
        _, version, _, _, pieces, total = _ROOT.unpack_from(data)
        if version != VERSION or len(data) != _ROOT.size + pieces * ID_SIZE or total > MAX_MANIFEST:
            raise StoreCorrupt(f"{where}: malformed manifest root ({pieces} pieces, {total} bytes)")
        ids = [
            data[_ROOT.size + i * ID_SIZE : _ROOT.size + (i + 1) * ID_SIZE] for i in range(pieces)
        ]
        data = b"".join(get(cid) for cid in ids)
        if len(data) != total:
            raise StoreCorrupt(f"{where}: pieces hold {len(data)} bytes, root says {total}")
    return decode(data, where)


def chunk_refs(ref: bytes, get: Callable[[bytes], bytes]) -> tuple[list[bytes], BlockMap]:
    """The manifest's own chunks (root and pieces) and its decoded map."""
    return _own(ref, get(ref)), load(ref, get)


def _own(ref: bytes, data: bytes) -> list[bytes]:
    own = [ref]
    if data[:4] == ROOT_MAGIC and len(data) >= _ROOT.size:
        _, _, _, _, pieces, _ = _ROOT.unpack_from(data)
        own += _ids(data, _ROOT.size, min(pieces, (len(data) - _ROOT.size) // ID_SIZE))
    return own


@dataclass(frozen=True)
class ManifestRefs:
    """What one manifest keeps alive, for gc and verify."""

    own: list[bytes]  # the manifest's own chunks: the root and its pieces
    blocks: list[bytes]  # the non-zero chunk ids of its entries
    problem: str | None  # why the map cannot be used (restore refuses it), if so


def referenced(ref: bytes, get: Callable[[bytes], bytes]) -> ManifestRefs:
    """The chunks a manifest names, conservatively.

    A manifest whose columns parse but whose entries break a rule (indices out
    of order or beyond its size) still names its chunks: gc must keep them, and
    the ``problem`` lets verify report the map. A manifest whose columns cannot
    be read raises (``StoreCorrupt``, ``ChunkMissing``...): what it names is unknown.
    """
    own = _own(ref, get(ref))
    try:
        bm = load(ref, get)
    except StoreCorrupt as e:
        data = b"".join(get(cid) for cid in own[1:]) if len(own) > 1 else get(ref)
        _, _, _, column, base = _columns(data, f"manifest {ref.hex()[:16]}")
        ids = [cid for cid in _ids(data, base, len(column)) if cid != ZERO_ID]
        return ManifestRefs(own, ids, str(e))
    return ManifestRefs(own, [cid for cid in bm.entries.values() if cid != ZERO_ID], None)


def overlay(maps: list[BlockMap]) -> tuple[dict[int, bytes], int, int]:
    """Fold maps oldest first (later blocks win); return entries, block size and size.

    All maps of one disk use one block size (checked); the size is the newest.
    A disk may change size between captures (Hyper-V resizes VHDX): after each
    map, blocks at or beyond its block count are dropped, so a disk that shrinks
    and grows again reads zeros in the regrown part, never its old bytes.
    """
    entries: dict[int, bytes] = {}
    block_size = maps[0].block_size if maps else 0
    size = 0
    blocks = 0  # block count of the fold so far: no entry is at or beyond it
    for bm in maps:
        if bm.block_size != block_size:
            raise StoreCorrupt(
                f"manifests of one disk mix block sizes {block_size} and {bm.block_size}"
            )
        entries.update(bm.entries)
        if bm.block_count < blocks:  # the disk shrank: what lay beyond its end is gone
            for index in [i for i in entries if i >= bm.block_count]:
                del entries[index]
        size = bm.size
        blocks = bm.block_count
    return entries, block_size, size


def smallest_block_count(maps: list[BlockMap]) -> int | None:
    """The fewest blocks any of ``maps`` spans (None without maps): blocks from
    there on were cut off at some point, so a differencing layer written from
    these maps must say "zeros" for them rather than let its parent show through."""
    return min((bm.block_count for bm in maps), default=None)


def present(entries: Mapping[int, bytes]) -> list[tuple[int, bytes]]:
    """The non-zero blocks, in block order."""
    return sorted((i, cid) for i, cid in entries.items() if cid != ZERO_ID)
