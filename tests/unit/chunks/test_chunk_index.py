"""Index files, and loading the index from a backend."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable

import pytest

from ckpt.domain.errors import IndexCorrupt
from ckpt.storage.chunks import ChunkId, MemoryChunkBackend, PackEntry, chunk_id
from ckpt.storage.chunks.index import ChunkIndex
from ckpt.storage.chunks.index_file import IndexFile, decode_index_file, encode_index_file
from ckpt.storage.chunks.layout import index_name

PACK_ID = bytes(range(16))


def _index_file(n: int = 3) -> IndexFile:
    entries = [PackEntry(chunk_id(bytes([i])), 16 + 100 * i, 100, 4096) for i in range(n)]
    return IndexFile(PACK_ID, 1_700_000_000.25, 16 + 100 * n + 48 * n + 40, entries)


def test_index_file_round_trip_and_golden_header() -> None:
    f = _index_file()
    data = encode_index_file(f)
    assert len(data) == 48 + 3 * 48 + 4
    assert data[:48] == struct.pack("<8sII16sdQ", b"CKPTINDX", 1, 3, PACK_ID, f.created, 500)
    assert data[48:96] == struct.pack("<32sQII", f.entries[0].chunk_id, 16, 100, 4096)
    assert data[-4:] == struct.pack("<I", zlib.crc32(data[:-4]))
    assert decode_index_file(data, "index/x.idx") == f


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[:-1], "does not fit 3 entries"),
        (lambda d: d[:20], "too short"),
        (lambda d: b"CKPTPACK" + d[8:], "bad magic"),
        (lambda d: d[:8] + b"\3" + d[9:], "unsupported version"),
        (lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:], "checksum mismatch"),
    ],
)
def test_damaged_index_file_names_the_file_and_the_fault(
    damage: Callable[[bytes], bytes], message: str
) -> None:
    data = damage(encode_index_file(_index_file()))
    with pytest.raises(IndexCorrupt, match=message) as info:
        decode_index_file(data, "index/00ff.idx")
    assert "index file 'index/00ff.idx' is damaged" in str(info.value)
    assert "rebuild_index" in str(info.value)


def test_an_entry_outside_its_pack_is_damage() -> None:
    f = _index_file()
    bad = f._replace(pack_size=200)
    with pytest.raises(IndexCorrupt, match="lies outside its 200-byte pack"):
        decode_index_file(encode_index_file(bad), "index/a.idx")


def test_index_loads_files_lazily_and_refresh_sees_new_and_deleted_files() -> None:
    backend = MemoryChunkBackend()
    index = ChunkIndex(backend)
    f1 = _index_file(3)
    backend.put(index_name(f1.pack_id), encode_index_file(f1))
    cid0 = f1.entries[0].chunk_id
    assert cid0 in index and len(index) == 3
    loc = index.location(cid0)
    assert loc is not None and loc.pack == "packs/00/000102030405060708090a0b0c0d0e0f.pack"
    assert (loc.offset, loc.compressed_length, loc.uncompressed_length) == (16, 100, 4096)

    other = ChunkId(b"\x07" * 32)
    f2 = IndexFile(b"\x01" * 16, 5.0, 1000, [PackEntry(other, 16, 10, 20)])
    backend.put(index_name(f2.pack_id), encode_index_file(f2))
    assert other not in index  # cached until refresh
    index.refresh()
    assert other in index and index.stats().packs == 2

    backend.delete(index_name(f1.pack_id))
    index.refresh()  # a file vanished: its pack is gone (a tombstone, no reload)
    assert cid0 not in index and list(index.ids()) == [other]


def test_loading_a_damaged_index_file_raises_naming_it() -> None:
    backend = MemoryChunkBackend()
    backend.put("index/000102030405060708090a0b0c0d0e0f.idx", b"CKPTINDX garbage")
    with pytest.raises(
        IndexCorrupt, match=re.escape("'index/000102030405060708090a0b0c0d0e0f.idx'")
    ):
        len(ChunkIndex(backend))


def test_an_index_file_under_another_packs_name_is_damage() -> None:
    backend = MemoryChunkBackend()
    backend.put("index/" + "ab" * 16 + ".idx", encode_index_file(_index_file()))
    with pytest.raises(IndexCorrupt, match="describes pack 000102"):
        ChunkIndex(backend).refresh()
