"""Pack version 2 (decision 0012): group frames, their tables, reading, gc and encryption."""

from __future__ import annotations

import os
import random

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt.domain.errors import ChunkCorrupt, PackCorrupt
from ckpt.storage.chunks import ChunkStore, MemoryChunkBackend
from ckpt.storage.chunks.codec import ChunkCodec
from ckpt.storage.chunks.ids import ChunkId, chunk_id
from ckpt.storage.chunks.index_file import IndexFile, decode_index_file, encode_index_file
from ckpt.storage.chunks.layout import PACKS, read_pack_meta
from ckpt.storage.chunks.pack import (
    GROUP_TARGET,
    GROUPED,
    PackWriter,
    read_pack_index,
    split_groups,
)
from ckpt.storage.content_session import Session
from ckpt.storage.keyring import Keyring


def _block(rng: random.Random, size: int = 4096) -> bytes:
    return (rng.randbytes(24) + b"pattern " * 8) * (size // 88) + rng.randbytes(size % 88)


def _store(keyed: bool = False) -> ChunkStore:
    store = ChunkStore(MemoryChunkBackend(), keyring=Keyring(os.urandom(32)) if keyed else None)
    store.set_format(2)
    return store


def _capture(store: ChunkStore, blocks: list[bytes]) -> list[bytes]:
    """Blocks through a capture session, as a disk capture hands them over."""
    with store.writer() as w:
        session = Session(w, store)
        ids = []
        for b in blocks:
            cid = store.codec.identify(b)
            session.sink(cid, b)
            ids.append(cid)
        session.finish()
    return ids


def _packs(store: ChunkStore) -> list[str]:
    return [n for n in store.backend.list(PACKS) if n.endswith(".pack")]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 70_000), min_size=1, max_size=40))
def test_split_groups_keeps_order_and_the_target(sizes: list[int]) -> None:
    chunks = [(i.to_bytes(32, "big"), bytes(n)) for i, n in enumerate(sizes)]
    groups = split_groups(chunks)
    assert [c for g in groups for c in g] == chunks
    for g in groups:
        assert len(g) == 1 or sum(len(d) for _, d in g) <= GROUP_TARGET


def test_a_v2_pack_round_trips_its_groups_and_slices() -> None:
    rng = random.Random(1)
    codec = ChunkCodec()
    w = PackWriter(version=GROUPED)
    chunks = [_block(rng) for _ in range(20)] + [_block(rng, 100_000)]
    expected = []
    for group in split_groups([(chunk_id(c), c) for c in chunks]):
        frame = codec.compress_group([d for _, d in group], [c for c, _ in group])
        expected += w.add_group(frame, [(ChunkId(c), len(d)) for c, d in group])
    data = w.finish(123.0)
    assert data[8:12] == (2).to_bytes(4, "little")
    entries = read_pack_index(data, "p")
    assert entries == expected
    assert len({e.offset for e in entries}) == 3  # 16 + 4 chunks of 4 KiB, and the big one
    for e, c in zip(entries, chunks, strict=True):
        frame = data[e.offset : e.offset + e.compressed_length]
        got = codec.decode(
            frame, e.chunk_id, e.uncompressed_length, "p", e.slice_offset, e.chunk_length
        )
        assert got == c
    f = IndexFile(b"\1" * 16, 123.0, len(data), entries, b"\7" * 16)
    back = decode_index_file(encode_index_file(f), "index/x.idx")
    assert back == f and back.grouped


@pytest.mark.parametrize(
    ("offset", "message"),
    [(-45, "checksum"), (-25, "unsupported pack version"), (9, "unsupported pack version")],
)
def test_a_damaged_v2_table_is_pack_corrupt(offset: int, message: str) -> None:
    codec = ChunkCodec()
    w = PackWriter(version=GROUPED)
    blocks = [b"a" * 4096, b"b" * 4096]
    w.add_group(
        codec.compress_group(blocks, [chunk_id(b) for b in blocks]),
        [(chunk_id(b), 4096) for b in blocks],
    )
    data = bytearray(w.finish(1.0))
    data[offset] ^= 0x40
    with pytest.raises(PackCorrupt, match=message):
        read_pack_index(bytes(data), "p")


@pytest.mark.parametrize("keyed", [False, True])
def test_a_format_2_store_groups_new_chunks_and_reads_each_back(keyed: bool) -> None:
    rng = random.Random(2)
    store = _store(keyed)
    blocks = [_block(rng) for _ in range(300)]
    ids = _capture(store, blocks)
    [pack] = _packs(store)
    meta = read_pack_meta(store.backend, pack)
    assert meta.version == 2
    assert len({e.offset for e in meta.entries}) == 19  # 300 blocks in groups of 16
    assert store.get_many(ids) == blocks
    assert [store.get(i) for i in ids[:40]] == blocks[:40]
    order = list(range(300))
    random.Random(3).shuffle(order)
    assert store.get_many([ids[i] for i in order]) == [blocks[i] for i in order]
    assert store.verify().ok


def test_a_group_frame_is_decompressed_once_for_all_its_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(4)
    store = _store()
    blocks = [_block(rng) for _ in range(64)]  # 4 groups
    ids = _capture(store, blocks)
    calls: list[int] = []
    real = zstandard.ZstdDecompressor.multi_decompress_to_buffer

    def counting(self: zstandard.ZstdDecompressor, frames: object, **kw: object) -> object:
        calls.append(len(kw["decompressed_sizes"]) // 8)  # type: ignore[arg-type]
        return real(self, frames, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(zstandard.ZstdDecompressor, "multi_decompress_to_buffer", counting)
    assert store.get_many(ids) == blocks
    assert calls == [4]


@pytest.mark.parametrize("keyed", [False, True])
def test_a_flipped_byte_in_a_group_frame_is_never_returned(keyed: bool) -> None:
    rng = random.Random(5)
    store = _store(keyed)
    blocks = [_block(rng) for _ in range(32)]
    ids = _capture(store, blocks)
    [pack] = _packs(store)
    backend = store.backend
    data = bytearray(backend.get(pack))
    entry = read_pack_meta(backend, pack).entries[20]
    data[entry.offset + entry.compressed_length // 2] ^= 0x01
    backend.put(pack, bytes(data))
    bad = set()
    for cid, block in zip(ids, blocks, strict=True):
        try:
            assert store.get(cid) == block  # a chunk of a damaged frame is right, or refused
        except ChunkCorrupt as e:
            assert cid.hex() in str(e)
            bad.add(cid)
    assert bad and bad <= set(ids[16:32])
    with pytest.raises(ChunkCorrupt):
        store.get_many(ids)
    assert set(store.verify().bad) == bad  # named chunk by chunk
    assert store.get_many(ids[:16]) == blocks[:16]


def test_gc_copies_whole_live_groups_and_regroups_mixed_ones() -> None:
    rng = random.Random(6)
    store = _store()
    blocks = [_block(rng) for _ in range(64)]
    ids = _capture(store, blocks)
    [old] = _packs(store)
    old_frames = {
        bytes(store.backend.get(old, e.offset, e.compressed_length))
        for e in read_pack_meta(store.backend, old).entries
    }
    keep = set(ids[:16]) | set(ids[16:32:2])  # group 0 whole, group 1 mixed, 2 and 3 dead
    report = store.delete_unreferenced(keep, grace_seconds=0, now=2e9)
    assert report.repacked_packs == [old] and len(report.new_packs) == 1
    [new] = _packs(store)
    entries = read_pack_meta(store.backend, new).entries
    assert {e.chunk_id for e in entries} == keep
    frames = {e.offset: e for e in entries}
    assert len(frames) == 2
    copied = [bytes(store.backend.get(new, e.offset, e.compressed_length)) for e in frames.values()]
    assert copied[0] in old_frames and copied[1] not in old_frames
    assert store.get_many(sorted(keep)) == [blocks[ids.index(c)] for c in sorted(keep)]
    assert store.verify().ok


def test_a_format_1_store_writes_version_1_packs() -> None:
    rng = random.Random(7)
    store = ChunkStore(MemoryChunkBackend())
    blocks = [_block(rng) for _ in range(40)]
    ids = _capture(store, blocks)
    [pack] = _packs(store)
    assert read_pack_meta(store.backend, pack).version == 1
    assert store.get_many(ids) == blocks


def test_rebuild_index_rewrites_v2_index_files_from_their_packs() -> None:
    rng = random.Random(8)
    store = _store()
    blocks = [_block(rng) for _ in range(50)]
    ids = _capture(store, blocks)
    for name in list(store.backend.list("index/")):
        store.backend.delete(name)
    report = store.rebuild_index()
    assert len(report.rebuilt) == 1 and not report.damaged_packs
    assert store.get_many(ids) == blocks
    [name] = report.rebuilt
    assert decode_index_file(store.backend.get(name), name).grouped
