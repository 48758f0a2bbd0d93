"""The commands that walk the whole index: gc's plan against a spilled ``keep``,
verify pack by pack."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ckpt.storage.chunks import ChunkBackend, ChunkId, ChunkStore
from ckpt.storage.chunks.id_set import IdSet
from ckpt.storage.chunks.layout import pack_id_of_pack, read_pack_meta

from .conftest import FakeClock

HOUR = 3600.0


def _fill(store: ChunkStore, n: int) -> dict[ChunkId, bytes]:
    blocks = [os.urandom(3000) for _ in range(n)]
    with store.writer() as w:
        ids = [w.add(b) for b in blocks]
    return {c: b for c, b in zip(ids, blocks, strict=True) if c is not None}


@pytest.mark.parametrize("kind", ["set", "IdSet", "iterable"])
def test_gc_gives_the_same_result_for_a_set_an_id_set_and_an_iterable(
    backend: ChunkBackend, clock: FakeClock, kind: str
) -> None:
    store = ChunkStore(backend, pack_size=8192, clock=clock)  # 3 chunks per pack
    chunks = _fill(store, 30)
    ids = list(chunks)
    wanted = {ids[0], ids[1], ids[2], ids[4], *ids[12:21]}  # full, partly, full x3, rest dead

    def as_kind() -> object:
        if kind == "set":
            return set(wanted)
        if kind == "IdSet":
            return IdSet(wanted, budget=3)  # spilled into several runs

        def gen() -> Iterator[bytes]:
            yield from wanted

        return gen()

    keep = as_kind()
    report = store.delete_unreferenced(keep, grace_seconds=HOUR, now=clock.now + 2 * HOUR)  # type: ignore[arg-type]
    if isinstance(keep, IdSet):
        keep.close()
    assert len(report.repacked_packs) == 1 and len(report.deleted_packs) == 5
    assert report.removed_chunks == 30 - len(wanted) and report.problems == []
    assert sorted(store.ids()) == sorted(wanted)
    fresh = ChunkStore(backend)
    assert fresh.stats().chunks == len(wanted)
    assert {c: fresh.get(c) for c in wanted} == {c: chunks[c] for c in wanted}
    assert fresh.verify().ok and fresh.verify().checked == len(wanted)


def test_verify_walks_every_pack_once_and_names_a_damaged_chunk(
    backend: ChunkBackend, clock: FakeClock
) -> None:
    store = ChunkStore(backend, pack_size=8192, clock=clock)
    chunks = _fill(store, 9)
    name = sorted(backend.list("packs/"))[1]
    meta = read_pack_meta(backend, name)
    victim = meta.entries[1]
    data = bytearray(backend.get(name))
    data[victim.offset + victim.compressed_length // 2] ^= 0xFF
    backend.put(name, bytes(data))
    reads: list[str] = []
    real_get = backend.get

    def counting_get(n: str, offset: int = 0, length: int | None = None) -> bytes:
        reads.append(n)
        return real_get(n, offset, length)

    backend.get = counting_get  # type: ignore[method-assign]
    report = ChunkStore(backend).verify()
    assert report.checked == 9 and list(report.bad) == [victim.chunk_id]
    assert pack_id_of_pack(name) is not None and name in report.bad[victim.chunk_id]
    pack_reads = [n for n in reads if n.startswith("packs/")]
    assert sorted(pack_reads) == sorted(set(pack_reads)) and len(pack_reads) == 3  # once each
    # given ids: in batches, the same verdicts; an unknown id is named
    with IdSet(chunks) as ids:
        again = ChunkStore(backend).verify(ids=ids)
    assert again.checked == 9 and list(again.bad) == [victim.chunk_id]
