"""The pack format: round trip, golden bytes, and clear errors on damage."""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt.domain.errors import PackCorrupt
from ckpt.storage.chunks import ChunkId, PackEntry, PackWriter, chunk_id, read_pack_index
from ckpt.storage.chunks.pack import read_pack_trailer

_cctx = zstandard.ZstdCompressor(level=1)
_dctx = zstandard.ZstdDecompressor()


def _pack(chunks: list[bytes], created: float = 1234.5, target: int = 1 << 20) -> bytes:
    writer = PackWriter(target)
    for data in chunks:
        writer.add(chunk_id(data), _cctx.compress(data), len(data))
    return writer.finish(created)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=3000), unique=True, max_size=12))
def test_any_chunks_round_trip_through_a_pack(chunks: list[bytes]) -> None:
    pack = _pack(chunks, created=99.25)
    entries = read_pack_index(pack)
    assert [e.chunk_id for e in entries] == [chunk_id(c) for c in chunks]
    for entry, data in zip(entries, chunks, strict=True):
        frame = pack[entry.offset : entry.offset + entry.compressed_length]
        assert _dctx.decompress(frame) == data
        assert entry.uncompressed_length == len(data)
    trailer = read_pack_trailer(pack)
    assert trailer.created == 99.25
    assert trailer.entry_count == len(chunks)


def test_golden_layout() -> None:
    # Pins the format byte by byte (docs/chunk-format.md): two fake frames.
    writer = PackWriter()
    writer.add(ChunkId(b"\x11" * 32), b"\x28\xb5\x2f\xfdAAA", 10)
    writer.add(ChunkId(b"\x22" * 32), b"\x28\xb5\x2f\xfdBB", 7)
    pack = writer.finish(created=1.5)
    assert len(pack) == 16 + 7 + 6 + 2 * 48 + 40
    assert pack[:16] == b"CKPTPACK" + struct.pack("<II", 1, 0)
    assert pack[16:29] == b"\x28\xb5\x2f\xfdAAA\x28\xb5\x2f\xfdBB"
    assert pack[29:77] == b"\x11" * 32 + struct.pack("<QII", 16, 7, 10)
    assert pack[77:125] == b"\x22" * 32 + struct.pack("<QII", 23, 6, 7)
    assert pack[125:149] == struct.pack("<QIId", 29, 2, 1, 1.5)
    crc = zlib.crc32(pack[29:125] + pack[125:149])  # table, then trailer bytes 0..24
    assert pack[149:] == struct.pack("<II", crc, 0) + b"CKPTPACK"
    assert hashlib.sha256(pack).hexdigest()[:16] == "b613869cc21d0121"
    assert read_pack_index(pack) == [
        PackEntry(ChunkId(b"\x11" * 32), 16, 7, 10),
        PackEntry(ChunkId(b"\x22" * 32), 23, 6, 7),
    ]


def test_writer_is_full_at_its_target_size() -> None:
    writer = PackWriter(target_size=1000)
    data = bytes(range(256)) * 2
    writer.add(chunk_id(data), data, len(data))  # frames are opaque to the writer
    assert not writer.full and writer.size == 16 + 512 + 48 + 40
    writer.add(chunk_id(data + b"x"), data, len(data) + 1)
    assert writer.full and len(writer) == 2


def test_writer_refuses_a_chunk_twice() -> None:
    writer = PackWriter()
    writer.add(chunk_id(b"a"), b"frame", 1)
    with pytest.raises(ValueError, match="already in this pack"):
        writer.add(chunk_id(b"a"), b"frame", 1)


def _damaged(pack: bytes, pos: int) -> bytes:
    return pack[:pos] + bytes([pack[pos] ^ 0x40]) + pack[pos + 1 :]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p[:-1], "no trailer magic"),
        (lambda p: p[:-60], "no trailer magic"),
        (lambda p: p[:30], "too short"),
        (lambda p: b"", "too short"),
        (lambda p: _damaged(p, 0), "not a ckpt pack"),
        (lambda p: _damaged(p, len(p) - 60), "checksum mismatch"),  # inside the table
        (lambda p: _damaged(p, len(p) - 20), "checksum mismatch"),  # trailer's created time
        (lambda p: _damaged(p, len(p) - 40), "does not end"),  # trailer's table offset
        (lambda p: p[:16] + p[17:], "does not end"),  # one frame byte lost
        (lambda p: p[:17] + b"\0" + p[18:], "not a zstd frame"),  # frame magic damaged
    ],
)
def test_damage_is_reported_clearly(damage: Callable[[bytes], bytes], message: str) -> None:
    pack = _pack([b"first chunk" * 10, b"second chunk" * 20])
    broken = damage(pack)
    with pytest.raises(PackCorrupt, match=message) as info:
        read_pack_index(broken, name="packs/00/x.pack")
    assert str(info.value).startswith("packs/00/x.pack: ")
