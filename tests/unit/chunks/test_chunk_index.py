"""Index files, the compact chunk map, and loading the index from a backend."""

from __future__ import annotations

import re
import struct
import tracemalloc
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt.domain.errors import IndexCorrupt
from ckpt.storage.chunks import ChunkId, MemoryChunkBackend, PackEntry, chunk_id
from ckpt.storage.chunks.chunk_map import ChunkMap
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


@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), max_size=400), st.integers(0, 2**32 - 1))
def test_chunk_map_behaves_like_a_dict_keeping_the_first_location(
    keys: list[bytes], salt: int
) -> None:
    m = ChunkMap()
    model: dict[bytes, tuple[int, int, int, int, int, int]] = {}
    for i, k in enumerate(keys + keys[:5]):  # re-adding never overwrites
        slot = (i, (salt + i) % 2**32, i + 1, 4096, 0, 4096)
        assert m.add(k, *slot) == (k not in model)
        model.setdefault(k, slot)
    assert len(m) == len(model)
    assert all(m.get(k) == v for k, v in model.items())
    assert sorted(m.items()) == sorted((k, *v) for k, v in model.items())
    assert m.get(b"\xff" * 32) is None or b"\xff" * 32 in model
    assert m.stored_bytes == sum(v[2] for v in model.values())


def test_chunk_map_never_matches_an_id_across_two_records() -> None:
    m = ChunkMap()
    a, b = b"\x00" * 16 + b"\x01" * 16, b"\x00" * 32
    m.add(a, 1, 2, 3, 4)
    # Ids that straddle a record boundary are not found.
    straddle = a[8:] + struct.pack("<IIIIII", 1, 2, 3, 4, 0, 4)[:8]
    assert straddle not in m
    assert m.get(b) is None
    m.add(b, 5, 6, 7, 8)
    assert m.get(b) == (5, 6, 7, 8, 0, 8) and m.get(a) == (1, 2, 3, 4, 0, 4)


def test_chunk_map_uses_under_80_bytes_per_entry() -> None:
    n = 30_000
    ids = [chunk_id(i.to_bytes(4, "little")) for i in range(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        m = ChunkMap()
        for i, cid in enumerate(ids):
            m.add(cid, i % 100, i * 4096 % 2**32, 2000, 4096)
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert len(m) == n
    assert 48 <= per_entry < 80, per_entry


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
    index.refresh()  # a file vanished: reload from scratch
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


@given(
    st.lists(
        st.tuples(st.binary(min_size=32, max_size=32), st.integers(0, 2**32 - 1)),
        max_size=300,
    )
)
def test_add_many_equals_add_one_by_one(records: list[tuple[bytes, int]]) -> None:
    one, many = ChunkMap(), ChunkMap()
    entries = [(cid, n, n % 1000 + 1, n % 4096 + 1, 0, -1) for cid, n in records]
    for cid, offset, clen, ulen, _, _ in entries:
        one.add(cid, 7, offset, clen, ulen)
    many.add_many(7, entries)
    assert sorted(one.items()) == sorted(many.items())
    assert (len(one), one.stored_bytes) == (len(many), many.stored_bytes)
