"""Damage to packs and index files: clear errors, verify reports, repair."""

from __future__ import annotations

import os
import re

import pytest

from ckpt.domain.errors import ChunkCorrupt, ChunkMissing, IndexCorrupt
from ckpt.storage.chunks import ChunkBackend, ChunkId, ChunkStore, read_pack_index
from ckpt.storage.chunks.index_file import decode_index_file, encode_index_file


def _fill(store: ChunkStore, n: int = 12) -> dict[ChunkId, bytes]:
    blocks = [os.urandom(1000) + bytes(1000) for _ in range(n)]
    with store.writer() as w:
        ids = [w.add(b) for b in blocks]
    return {c: b for c, b in zip(ids, blocks, strict=True) if c is not None}


def _pack_of(store: ChunkStore, cid: ChunkId) -> tuple[str, int, int]:
    for pack in store.backend.list("packs/"):
        for e in read_pack_index(store.backend.get(pack)):
            if e.chunk_id == cid:
                return pack, e.offset, e.compressed_length
    raise AssertionError("chunk not found")


def test_a_flipped_byte_in_a_pack_is_reported_naming_chunk_and_pack(
    backend: ChunkBackend,
) -> None:
    store = ChunkStore(backend)
    chunks = _fill(store)
    victim = list(chunks)[5]
    pack, offset, length = _pack_of(store, victim)
    data = bytearray(backend.get(pack))
    data[offset + length // 2] ^= 0x01
    backend.put(pack, bytes(data))

    with pytest.raises(ChunkCorrupt) as info:
        ChunkStore(backend).get(victim)
    assert victim.hex() in str(info.value) and pack in str(info.value)
    others = [c for c in chunks if c != victim]
    assert [store.get(c) for c in others] == [chunks[c] for c in others]

    report = store.verify()
    assert report.checked == 12
    assert list(report.bad) == [victim]
    assert victim.hex() in report.bad[victim] and pack in report.bad[victim]
    assert store.verify(ids=others).ok


def test_a_truncated_pack_gives_a_clear_error(backend: ChunkBackend) -> None:
    store = ChunkStore(backend)
    chunks = _fill(store)
    (pack,) = backend.list("packs/")
    backend.put(pack, backend.get(pack)[: backend.size(pack) // 3])
    last = list(chunks)[-1]
    with pytest.raises(
        ChunkCorrupt, match=re.escape(f"chunk {last.hex()} in {pack}: pack truncated")
    ):
        store.get(last)
    report = store.verify()
    assert last in report.bad and 0 < len(report.bad) < 12
    rebuilt = store.rebuild_index()
    assert list(rebuilt.damaged_packs) == [pack]
    assert "no trailer magic" in rebuilt.damaged_packs[pack]


def test_a_damaged_index_file_is_named_and_rebuilt_from_its_pack(backend: ChunkBackend) -> None:
    chunks = _fill(ChunkStore(backend, pack_size=8192))
    names = list(backend.list("index/"))
    assert len(names) == 2
    data = bytearray(backend.get(names[1]))
    data[60] ^= 0xFF
    backend.put(names[1], bytes(data))

    store = ChunkStore(backend)
    with pytest.raises(
        IndexCorrupt, match=re.escape(names[1]) + ".*checksum mismatch.*rebuild_index"
    ):
        store.get(next(iter(chunks)))
    report = store.rebuild_index()
    assert sorted(report.rebuilt) == sorted(names)
    assert report.damaged_packs == {} and report.removed == []
    assert {c: store.get(c) for c in chunks} == chunks
    assert store.verify().ok and store.verify().checked == 12


def test_a_missing_pack_is_reported(backend: ChunkBackend) -> None:
    store = ChunkStore(backend)
    chunks = _fill(store, 3)
    (pack,) = backend.list("packs/")
    backend.delete(pack)
    cid = next(iter(chunks))
    with pytest.raises(ChunkMissing, match=re.escape(pack)):
        store.get(cid)
    report = store.verify()
    assert sorted(report.bad) == sorted(chunks) and pack in report.bad[cid]
    repaired = store.rebuild_index()  # the stale index file goes
    assert len(repaired.removed) == 1 and store.stats().chunks == 0


def test_get_never_decompresses_past_the_recorded_length(backend: ChunkBackend) -> None:
    store = ChunkStore(backend)
    big = os.urandom(100) + bytes(1 << 20)  # compresses to ~150 bytes
    with store.writer() as w:
        cid = w.add(big)
    assert cid is not None
    (name,) = backend.list("index/")
    f = decode_index_file(backend.get(name), name)
    entry = f.entries[0]._replace(uncompressed_length=4096)  # the index now says 4 KiB
    backend.put(name, encode_index_file(f._replace(entries=[entry])))
    with pytest.raises(ChunkCorrupt, match="declares 1048676 bytes, the index records 4096"):
        ChunkStore(backend).get(cid)


def test_rebuild_drops_the_index_file_of_a_pack_damaged_with_it(backend: ChunkBackend) -> None:
    store = ChunkStore(backend, pack_size=8192)
    chunks = _fill(store, 16)  # two packs of 8
    pack = next(iter(backend.list("packs/")))
    lost = {e.chunk_id for e in read_pack_index(backend.get(pack))}
    index_file = "index/" + pack.split("/")[-1].replace(".pack", ".idx")
    backend.put(pack, backend.get(pack)[:-1])
    backend.put(index_file, backend.get(index_file)[:-1])
    report = ChunkStore(backend).rebuild_index()
    assert list(report.damaged_packs) == [pack] and report.removed == [index_file]
    survivors = ChunkStore(backend)
    assert len(lost) == 8 and set(survivors.ids()) == set(chunks) - lost
    assert all(survivors.get(c) == chunks[c] for c in survivors.ids())


def test_verify_can_check_a_repeatable_sample(backend: ChunkBackend) -> None:
    store = ChunkStore(backend)
    _fill(store, 40)
    half = store.verify(sample=0.5, seed=7)
    assert 5 < half.checked < 35 and half.ok
    assert store.verify(sample=0.5, seed=7).checked == half.checked
    assert store.verify(sample=0.0).checked == 0
    with pytest.raises(ValueError, match="sample"):
        store.verify(sample=1.5)


def test_verify_reports_ids_the_index_does_not_know(backend: ChunkBackend) -> None:
    store = ChunkStore(backend)
    unknown = bytes(32)
    report = store.verify(ids=[unknown])
    assert report.checked == 1 and report.bad == {unknown: f"chunk {'00' * 32} is not in the index"}
