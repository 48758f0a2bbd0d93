"""Garbage collection: grace period, referenced chunks kept, repacking."""

from __future__ import annotations

import os

from backends import killed_before_index_files

from ckpt.domain.errors import StoreFull
from ckpt.storage.chunks import ChunkBackend, ChunkId, ChunkStore, MemoryChunkBackend

from .conftest import FakeClock

HOUR = 3600.0


def _fill(store: ChunkStore, n: int) -> dict[ChunkId, bytes]:
    blocks = [os.urandom(3000) for _ in range(n)]
    with store.writer() as w:
        ids = [w.add(b) for b in blocks]
    return {c: b for c, b in zip(ids, blocks, strict=True) if c is not None}


def _store(backend: ChunkBackend, clock: FakeClock) -> ChunkStore:
    return ChunkStore(backend, pack_size=8192, clock=clock)  # 3 chunks per pack


def test_young_packs_survive_even_if_unreferenced(backend: ChunkBackend, clock: FakeClock) -> None:
    store = _store(backend, clock)
    chunks = _fill(store, 6)
    report = store.delete_unreferenced(set(), grace_seconds=HOUR, now=clock.now + HOUR - 1)
    assert report.young_packs == 2
    assert report.deleted_packs == [] and report.removed_chunks == 0
    assert {c: store.get(c) for c in chunks} == chunks


def test_unreferenced_packs_go_after_the_grace_period(
    backend: ChunkBackend, clock: FakeClock
) -> None:
    store = _store(backend, clock)
    old = _fill(store, 6)  # two full packs
    clock.now += 2 * HOUR
    new = _fill(store, 3)
    report = store.delete_unreferenced(set(), grace_seconds=HOUR, now=clock.now)
    assert len(report.deleted_packs) == 2 and report.removed_chunks == 6
    assert report.young_packs == 1 and report.problems == []
    assert report.freed_bytes > 6 * 3000
    assert not any(store.has(c) for c in old)
    assert {c: store.get(c) for c in new} == new
    assert len(list(backend.list("packs/"))) == len(list(backend.list("index/"))) == 1
    # A fresh store agrees: the deletions are in the backend, not only in memory.
    assert set(ChunkStore(backend).ids()) == set(new)


def test_referenced_chunks_are_kept_and_partly_used_packs_repacked(
    backend: ChunkBackend, clock: FakeClock
) -> None:
    store = _store(backend, clock)
    chunks = _fill(store, 9)  # three packs of three
    ids = list(chunks)
    keep = {ids[0], ids[1], ids[2], ids[4]}  # pack 1 fully used, pack 2 partly, pack 3 not
    clock.now += 2 * HOUR
    report = store.delete_unreferenced(keep, grace_seconds=HOUR, now=clock.now)
    assert len(report.repacked_packs) == 1 and len(report.new_packs) == 1
    assert len(report.deleted_packs) == 1
    assert report.removed_chunks == 5 and report.problems == []
    assert sorted(store.ids()) == sorted(keep)
    assert {c: store.get(c) for c in keep} == {c: chunks[c] for c in keep}
    assert len(list(backend.list("packs/"))) == 2  # the full pack and the new one
    fresh = ChunkStore(backend)
    assert fresh.verify().ok and fresh.verify().checked == 4
    # Nothing left to do: a second run changes nothing.
    again = fresh.delete_unreferenced(keep, grace_seconds=HOUR, now=clock.now + 2 * HOUR)
    assert again.deleted_packs == again.repacked_packs == [] and again.removed_chunks == 0


def test_orphan_packs_from_a_failed_session_go_after_the_grace_period(
    backend: ChunkBackend, clock: FakeClock
) -> None:
    store = _store(backend, clock)

    def write() -> None:
        with store.writer() as w:
            for _ in range(3):
                w.add(os.urandom(3000))  # one full pack written, never indexed

    killed_before_index_files(backend, write)
    assert len(list(backend.list("packs/"))) == 1 and list(backend.list("index/")) == []
    early = store.delete_unreferenced(set(), grace_seconds=HOUR, now=clock.now + 60)
    assert early.young_packs == 1 and early.deleted_packs == []
    late = store.delete_unreferenced(set(), grace_seconds=HOUR, now=clock.now + 2 * HOUR)
    assert len(late.deleted_packs) == 1 and late.removed_chunks == 3
    assert list(backend.list("")) == []


def test_an_orphan_pack_holding_referenced_chunks_is_kept(
    backend: ChunkBackend, clock: FakeClock
) -> None:
    store = _store(backend, clock)
    chunks = _fill(store, 3)
    (index_file,) = backend.list("index/")
    backend.delete(index_file)  # lost index: the chunks are still referenced
    report = store.delete_unreferenced(set(chunks), grace_seconds=HOUR, now=clock.now + 2 * HOUR)
    assert report.deleted_packs == []
    assert len(report.problems) == 1 and "run rebuild_index" in report.problems[0]
    store.rebuild_index()
    assert {c: store.get(c) for c in chunks} == chunks


def test_a_duplicate_copy_from_concurrent_writers_is_collected(
    backend: ChunkBackend, clock: FakeClock
) -> None:
    a, b = _store(backend, clock), _store(backend, clock)
    data = os.urandom(3000)
    a.stats(), b.stats()  # both indexes loaded while the store is empty
    with a.writer() as wa, b.writer() as wb:
        cid = wa.add(data)
        assert wb.add(data) == cid  # b cannot know: stored twice
    assert cid is not None
    assert len(list(backend.list("packs/"))) == 2
    report = a.delete_unreferenced({cid}, grace_seconds=HOUR, now=clock.now + 2 * HOUR)
    assert len(report.deleted_packs) == 1 and report.removed_chunks == 1
    assert ChunkStore(backend).get(cid) == data


class _DeleteLog(MemoryChunkBackend):
    def __init__(self) -> None:
        super().__init__()
        self.deleted: list[str] = []

    def delete(self, name: str) -> None:
        super().delete(name)
        self.deleted.append(name)


def test_gc_deletes_each_index_file_before_its_pack(clock: FakeClock) -> None:
    backend = _DeleteLog()
    store = _store(backend, clock)
    chunks = _fill(store, 9)
    keep = {next(iter(chunks))}  # one pack repacked, two deleted
    report = store.delete_unreferenced(keep, grace_seconds=HOUR, now=clock.now + 2 * HOUR)
    assert len(report.deleted_packs) == 2 and len(report.repacked_packs) == 1
    assert len(backend.deleted) == 6
    for pack in report.deleted_packs + report.repacked_packs:
        index_file = "index/" + pack.split("/")[-1].replace(".pack", ".idx")
        assert backend.deleted.index(index_file) < backend.deleted.index(pack)


class _FullForPacks(MemoryChunkBackend):
    """A memory backend whose device fills up: once ``full``, new packs do not fit."""

    full = False

    def put(self, name: str, data: bytes) -> None:
        if self.full and name.startswith("packs/"):
            raise StoreFull(f"no space left on the store's device: {len(data)} bytes needed")
        super().put(name, data)


def test_a_gc_on_a_full_device_still_deletes_dead_packs_and_leaves_repacking_for_later(
    clock: FakeClock,
) -> None:
    backend = _FullForPacks()
    store = _store(backend, clock)
    chunks = _fill(store, 9)  # three packs of three
    ids = list(chunks)
    keep = {ids[0], ids[1], ids[2], ids[4]}  # pack 1 fully used, pack 2 partly, pack 3 not
    clock.now += 2 * HOUR
    backend.full = True
    report = store.delete_unreferenced(keep, grace_seconds=HOUR, now=clock.now)
    assert len(report.deleted_packs) == 1 and report.repacked_packs == []  # pack 3 only
    assert report.new_packs == [] and report.freed_bytes > 3 * 3000
    assert any("not repacked: no space left" in p for p in report.problems), report.problems
    assert len(list(backend.list("packs/"))) == len(list(backend.list("index/"))) == 2
    fresh = ChunkStore(backend)
    assert fresh.verify().ok
    assert {c: fresh.get(c) for c in keep} == {c: chunks[c] for c in keep}
    backend.full = False  # space freed: the next gc repacks pack 2
    again = fresh.delete_unreferenced(keep, grace_seconds=HOUR, now=clock.now)
    assert len(again.repacked_packs) == 1 and again.problems == []
    assert sorted(fresh.ids()) == sorted(keep)
