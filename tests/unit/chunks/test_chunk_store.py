"""ChunkStore: writer sessions, zero blocks, dedup, visibility, durability order."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest

from ckpt.domain.errors import ChunkMissing
from ckpt.storage.chunks import (
    ChunkBackend,
    ChunkStore,
    LocalChunkBackend,
    MemoryChunkBackend,
    chunk_id,
)

from .conftest import FakeClock


def _blocks(n: int, size: int = 4096, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size // 2) + bytes(size // 2) for _ in range(n)]


def test_add_returns_the_content_id_and_get_returns_the_bytes(store: ChunkStore) -> None:
    blocks = _blocks(40)
    with store.writer() as w:
        ids = [w.add(b) for b in blocks]
    assert ids == [chunk_id(b) for b in blocks]
    assert [store.get(chunk_id(b)) for b in blocks] == blocks
    stats = store.stats()
    assert stats.chunks == 40
    assert stats.uncompressed_bytes == 40 * 4096
    assert 40 * 2048 < stats.stored_bytes < 40 * 2200  # the zero half compresses away
    assert stats.packs == len(list(store.backend.list("packs/"))) >= 2  # 64 KiB packs


def test_zero_blocks_are_never_stored(store: ChunkStore) -> None:
    with store.writer() as w:
        assert w.add(bytes(4096)) is None
        assert w.add(bytes(1 << 20)) is None
        assert w.add(b"") is None
    assert store.stats().chunks == 0
    assert list(store.backend.list("")) == []
    assert not store.has(chunk_id(bytes(4096)))


def test_same_data_twice_is_stored_once(store: ChunkStore) -> None:
    data = os.urandom(5000)
    with store.writer() as w:
        first, second = w.add(data), w.add(data)
    assert first == second == chunk_id(data)
    with store.writer() as w:  # a second session dedups against the index
        assert w.add(data) == first
    assert store.stats().chunks == 1
    assert len(list(store.backend.list("packs/"))) == 1


def test_dedup_spans_packs_within_one_session(store: ChunkStore) -> None:
    # A pack is written once it reaches 64 KiB: after its 4th 20 kB chunk.
    blocks = [os.urandom(20_000) for _ in range(8)]
    with store.writer() as w:
        for b in blocks + blocks:
            w.add(b)
    assert store.stats().chunks == 8
    assert len(list(store.backend.list("packs/"))) == 2


def test_two_stores_on_one_directory_share_chunks(tmp_path: Path) -> None:
    data = os.urandom(3000)
    a = ChunkStore(LocalChunkBackend(tmp_path))
    with a.writer() as w:
        cid = w.add(data)
    b = ChunkStore(LocalChunkBackend(tmp_path))
    with b.writer() as w:
        assert w.add(data) == cid
    assert cid is not None and b.get(cid) == data
    assert len(list(LocalChunkBackend(tmp_path).list("packs/"))) == 1


def test_a_pack_is_visible_once_durable_and_the_pending_one_is_not(
    backend: ChunkBackend, clock: FakeClock
) -> None:
    store = ChunkStore(backend, pack_size=8192, clock=clock)
    reader = ChunkStore(backend)
    blocks = [os.urandom(3000) for _ in range(5)]
    with store.writer() as w:
        ids = [w.add(b) for b in blocks]
        # 3 chunks fill an 8 KiB pack: once its put returns it is published (indexed),
        # so a long capture holds only its packs in flight, not every entry it wrote...
        w.wait_for_packs()
        assert len(list(backend.list("packs/"))) == 1
        assert len(list(backend.list("index/"))) == 1
        assert all(store.has(c) for c in ids[:3] if c is not None)
        # ...while the pending pack's chunks are not visible to anyone yet
        assert not any(store.has(c) for c in ids[3:] if c is not None)
        assert w.knows(ids[4]) if ids[4] is not None else True
        reader.refresh()
        assert reader.stats().chunks == 3
        w.flush()
        assert len(list(backend.list("index/"))) == 2
        assert all(store.has(c) for c in ids if c is not None)
    reader.refresh()
    assert reader.stats().chunks == 5


def test_a_session_that_raises_publishes_nothing(store: ChunkStore) -> None:
    with pytest.raises(RuntimeError), store.writer() as w:
        cid = w.add(os.urandom(100))
        raise RuntimeError("caller failed")
    assert cid is not None and not store.has(cid)
    assert list(store.backend.list("index/")) == []
    with pytest.raises(ValueError, match="closed"):
        w.add(b"more")


class _RecordingBackend(MemoryChunkBackend):
    def __init__(self) -> None:
        super().__init__()
        self.puts: list[str] = []

    def put(self, name: str, data: bytes) -> None:
        super().put(name, data)
        self.puts.append(name)


def test_each_pack_is_put_before_its_index_file() -> None:
    backend = _RecordingBackend()
    store = ChunkStore(backend, pack_size=8192)
    with store.writer() as w:
        for _ in range(7):
            w.add(os.urandom(3000))
    order = {name.split("/")[-1]: i for i, name in enumerate(backend.puts)}
    packs = [n.split("/")[-1].removesuffix(".pack") for n in backend.puts if n.endswith(".pack")]
    assert len(packs) == 3  # 3 chunks per 8 KiB pack
    assert len(order) == 6
    assert all(order[f"{p}.pack"] < order[f"{p}.idx"] for p in packs)
    # published in the order the packs were written, each as soon as it is durable
    assert [order[f"{p}.idx"] for p in packs] == sorted(order[f"{p}.idx"] for p in packs)


def test_get_of_an_unknown_id_raises_chunk_missing(store: ChunkStore) -> None:
    cid = chunk_id(b"never stored")
    with pytest.raises(ChunkMissing, match=cid.hex()):
        store.get(cid)


def test_get_sees_chunks_another_store_flushed_later(backend: ChunkBackend) -> None:
    reader = ChunkStore(backend)
    assert reader.stats().chunks == 0  # index loaded, now stale
    with ChunkStore(backend).writer() as w:
        cid = w.add(b"written elsewhere")
    assert cid is not None and reader.get(cid) == b"written elsewhere"


def test_writer_records_the_clock_as_pack_creation_time(
    store: ChunkStore, clock: FakeClock
) -> None:
    clock.now = 42.5
    with store.writer() as w:
        w.add(b"tick")
    (name,) = store.backend.list("index/")
    assert store.backend.get(name)[32:40] == struct.pack("<d", 42.5)


def test_threads_can_share_a_store(store: ChunkStore) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def work(seed: int) -> list[bytes]:
        blocks = _blocks(20, seed=seed % 3)  # seeds overlap: same chunks from threads
        with store.writer() as w:
            for b in blocks:
                w.add(b)
        return [store.get(chunk_id(b)) for b in blocks]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(6)))
    assert results == [_blocks(20, seed=s % 3) for s in range(6)]
    assert store.verify().ok
