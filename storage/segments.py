"""Segment manifests (format version 2): a disk or file's whole state, in segments.

Terms:
- *segment*: ``SPAN`` consecutive blocks of a disk (4,096 x 4 KiB = 16 MiB).
  Its *entries* are ``{offset in the segment: chunk id}`` of its non-zero
  blocks; a block without an entry reads as zeros. A segment is stored as its
  own chunk, so it is named by the hash of its entries: a segment unchanged
  since the parent's capture is the *same chunk id*, stored once.
- *top list*: one 32-byte segment id per segment, in disk order, ``ZERO_ID``
  for an all-zero segment. It is cut into *pieces* of ``PIECE_SEGMENTS`` ids
  (64 KiB, 32 GiB of disk) stored as chunks too, so the pieces a capture did
  not change dedup as well; an all-zero piece is ``ZERO_ID`` (never stored).
- *root*: the small chunk an event names: kind, block size, size, span and
  the piece ids. ``size`` and ``kind`` are read from it alone.

A v2 manifest describes the whole disk as of its capture, not a diff: the
state of a chain is its last v2 manifest (``disk_state.py`` folds the v1 diffs
written by earlier releases). Encoding (little-endian), docs/design.md "Manifests":
    root    = b"CKBM" | u8 version=2 | u8 kind | u16 0 | u32 block_size | u64 size
              | u32 span | u32 segments | u32 pieces | u32 0 | pieces x 32-byte piece id
    piece   = up to PIECE_SEGMENTS x 32-byte segment id
    segment = b"CKSG" | u8 version=2 | u8 0 | u16 0 | u32 count
              | count x u16 offset (strictly ascending, < span) | count x 32-byte chunk id
The root shares v1's magic with a new version byte, so ckpt up to v1 refuses
it as "not a version-1 manifest" instead of misreading it.
"""

from __future__ import annotations

import operator
import struct
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ckpt.domain.errors import StoreCorrupt

from .manifest import ID_SIZE, MAP_MAGIC, MAX_BLOCK, ZERO_ID

VERSION = 2
# 4,096 blocks = 16 MiB of disk: a 1 MiB CBT change rewrites one or two segments
# (<= 2 x 139 KiB of entries) and the top list of a 32 GiB disk is 2,048 ids
# (64 KiB). docs/decisions/0013-segment-manifests.md has the measurements.
SPAN = 4096
PIECE_SEGMENTS = 2048  # 64 KiB of top list per piece: one piece per 32 GiB of disk
SEGMENT_MAGIC = b"CKSG"
_ROOT = struct.Struct("<4sBBHIQIIII")
_SEGMENT = struct.Struct("<4sBBHI")
_ID = struct.Struct("32s")
MAX_SEGMENTS = 1 << 28  # 2^28 x 16 MiB = 4 EiB: refuse anything larger unread


@dataclass(frozen=True)
class Root:
    """A v2 manifest's root: what the disk is, and where its top list lies."""

    kind: int
    block_size: int
    size: int
    span: int
    segments: int
    pieces: tuple[bytes, ...]

    @property
    def block_count(self) -> int:
        return -(-self.size // self.block_size)


def is_v2(data: bytes) -> bool:
    """Is this chunk a v2 root? (v1 maps share the magic with version 1.)"""
    return len(data) >= 5 and data[:4] == MAP_MAGIC and data[4] == VERSION


def segment_count(size: int, block_size: int, span: int | None = None) -> int:
    span = SPAN if span is None else span
    blocks = -(-size // block_size)
    return -(-blocks // span)


def encode_segment(entries: dict[int, bytes]) -> bytes:
    """A segment's bytes from its entries (offset -> non-zero chunk id)."""
    offsets = sorted(entries)
    column = array("H", offsets)
    return (
        _SEGMENT.pack(SEGMENT_MAGIC, VERSION, 0, 0, len(offsets))
        + column.tobytes()
        + b"".join(entries[o] for o in offsets)
    )


def decode_segment(data: bytes, span: int, where: str) -> dict[int, bytes]:
    """A segment's entries, every length, the order and the offsets checked."""
    count = _checked_count(data, where)
    column = array("H")
    column.frombytes(data[_SEGMENT.size : _SEGMENT.size + 2 * count])
    offsets = column.tolist()
    # map(operator.ge) runs in C: 4,096 offsets checked in ~40 us, not ~400 in a generator
    if count and (offsets[-1] >= span or any(map(operator.ge, offsets, offsets[1:]))):
        raise StoreCorrupt(f"{where}: offsets are not ascending within the {span}-block span")
    base = _SEGMENT.size + 2 * count
    ids = [cid for (cid,) in _ID.iter_unpack(data[base:])]
    if ZERO_ID in ids:
        raise StoreCorrupt(f"{where}: a segment names the zero id (zeros have no entry)")
    return dict(zip(offsets, ids, strict=True))


def changed_entries(
    old: bytes, new: bytes, span: int, where: str
) -> list[tuple[int, bytes]] | None:
    """(offset, ``new``'s chunk id) where the ids differ between two segments that name the same
    offsets (a disk rewritten in place: the common case), compared as columns in
    numpy: ~0.1 ms for two 4,096-entry segments, against ~1.6 ms to decode both
    into dicts and compare those. None when the offset columns differ (blocks
    became zero or non-zero): the caller compares ``decode_segment``'s entries.
    Checked as ``decode_segment`` checks: lengths, ascending offsets, no zero id."""
    import numpy as np  # here: importing it costs every command ~50 ms (test_index_cache)

    head = _SEGMENT.size
    count = _checked_count(old, where)
    if (
        _checked_count(new, where) != count
        or old[head : head + 2 * count] != new[head : head + 2 * count]
    ):
        return None
    offsets = np.frombuffer(old, dtype="<u2", count=count, offset=head)
    if count and (int(offsets[-1]) >= span or bool((np.diff(offsets.astype(np.int32)) <= 0).any())):
        raise StoreCorrupt(f"{where}: offsets are not ascending within the {span}-block span")
    base = head + 2 * count
    a = np.frombuffer(old, dtype=np.uint8, count=count * ID_SIZE, offset=base)
    b = np.frombuffer(new, dtype=np.uint8, count=count * ID_SIZE, offset=base)
    a, b = a.reshape(count, ID_SIZE), b.reshape(count, ID_SIZE)
    if count and not (a.any(axis=1).all() and b.any(axis=1).all()):
        raise StoreCorrupt(f"{where}: a segment names the zero id (zeros have no entry)")
    rows: list[int] = np.flatnonzero((a != b).any(axis=1)).tolist()
    return [(int(offsets[i]), new[base + i * ID_SIZE : base + (i + 1) * ID_SIZE]) for i in rows]


def _checked_count(data: bytes, where: str) -> int:
    if len(data) < _SEGMENT.size:
        raise StoreCorrupt(f"{where}: {len(data)} bytes is shorter than a segment header")
    magic, version, _, _, count = _SEGMENT.unpack_from(data)
    if magic != SEGMENT_MAGIC or version != VERSION:
        raise StoreCorrupt(f"{where}: not a version-{VERSION} segment (magic {magic!r})")
    expected = _SEGMENT.size + count * (2 + ID_SIZE)
    if len(data) != expected:
        raise StoreCorrupt(f"{where}: {count} entries need {expected} bytes, found {len(data)}")
    return int(count)


def segment_ids(data: bytes, where: str) -> list[bytes]:
    """Only the chunk ids a segment names (for gc): the columns' lengths checked."""
    if len(data) < _SEGMENT.size or data[:4] != SEGMENT_MAGIC:
        raise StoreCorrupt(f"{where}: not a version-{VERSION} segment")
    count = _SEGMENT.unpack_from(data)[4]
    if len(data) != _SEGMENT.size + count * (2 + ID_SIZE):
        raise StoreCorrupt(f"{where}: {count} entries do not fit its {len(data)} bytes")
    return [cid for (cid,) in _ID.iter_unpack(data[_SEGMENT.size + 2 * count :])]


def encode_root(root: Root) -> bytes:
    head = _ROOT.pack(
        MAP_MAGIC, VERSION, root.kind, 0, root.block_size, root.size,
        root.span, root.segments, len(root.pieces), 0,
    )  # fmt: skip
    return head + b"".join(root.pieces)


def decode_root(data: bytes, where: str) -> Root:
    if len(data) < _ROOT.size:
        raise StoreCorrupt(f"{where}: {len(data)} bytes is shorter than a manifest root")
    magic, version, kind, _, block_size, size, span, segments, pieces, _ = _ROOT.unpack_from(data)
    if magic != MAP_MAGIC or version != VERSION:
        raise StoreCorrupt(f"{where}: not a version-{VERSION} manifest (magic {magic!r})")
    if not 0 < block_size <= MAX_BLOCK or block_size & (block_size - 1):
        raise StoreCorrupt(f"{where}: block size {block_size} is not a power of two <= 256 MiB")
    if not 0 < span <= 1 << 16 or segments > MAX_SEGMENTS:
        raise StoreCorrupt(f"{where}: span {span} or {segments} segments out of range")
    if segments != segment_count(size, block_size, span):
        raise StoreCorrupt(f"{where}: {segments} segments do not span {size} bytes")
    if pieces != -(-segments // PIECE_SEGMENTS) or len(data) != _ROOT.size + pieces * ID_SIZE:
        raise StoreCorrupt(f"{where}: {pieces} pieces do not fit {segments} segments")
    ids = tuple(
        data[_ROOT.size + i * ID_SIZE : _ROOT.size + (i + 1) * ID_SIZE] for i in range(pieces)
    )
    return Root(kind, block_size, size, span, segments, ids)


def piece_length(root: Root, piece: int) -> int:
    """How many segment ids piece number ``piece`` holds."""
    return min(PIECE_SEGMENTS, root.segments - piece * PIECE_SEGMENTS)


def decode_piece(data: bytes, count: int, where: str) -> list[bytes]:
    if len(data) != count * ID_SIZE:
        raise StoreCorrupt(f"{where}: a piece of {count} segments has {len(data)} bytes")
    return [data[i * ID_SIZE : (i + 1) * ID_SIZE] for i in range(count)]


def _stored(add: Callable[[bytes], bytes | None], data: bytes | bytearray) -> bytes:
    cid = add(bytes(data))
    if cid is None:  # pragma: no cover - the caller gives no all-zero piece
        raise AssertionError("an all-zero piece was stored")
    return cid


def store_root(
    kind: int,
    block_size: int,
    size: int,
    top: Sequence[bytes] | bytes,
    add: Callable[[bytes], bytes | None],
) -> bytes:
    """Store the top list (``top``: the segment ids, or their concatenation) in
    pieces and the root through ``add`` (None for all-zero bytes); the root's id."""
    flat = top if isinstance(top, bytes | bytearray) else b"".join(top)
    segments = len(flat) // ID_SIZE
    step = PIECE_SEGMENTS * ID_SIZE
    zero = bytes(step)
    pieces = tuple(
        ZERO_ID
        if flat[i : i + step] == zero[: len(flat[i : i + step])]
        else _stored(add, flat[i : i + step])
        for i in range(0, len(flat), step)
    )
    root = Root(kind, block_size, size, SPAN, segments, pieces)
    if segments != segment_count(size, block_size):  # pragma: no cover - a bug in the caller
        raise AssertionError(f"{segments} segments for {size} bytes")
    cid = add(encode_root(root))
    if cid is None:  # pragma: no cover - a root starts with its magic
        raise AssertionError("a root was all zero")
    return cid
