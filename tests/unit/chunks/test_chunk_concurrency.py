"""Two processes writing to one local chunk directory at the same time."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from ckpt.storage.chunks import ChunkStore, LocalChunkBackend, chunk_id

from . import _worker


def test_two_processes_write_at_once_and_both_sets_read_back(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    n = 60
    procs = [
        ctx.Process(target=_worker.write, args=(str(tmp_path), seed, n, barrier)) for seed in (1, 2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]

    store = ChunkStore(LocalChunkBackend(tmp_path))
    expected = {chunk_id(b): b for seed in (0, 1, 2) for b in _worker.blocks(seed, n)}
    assert len(expected) == 3 * n
    assert {c: store.get(c) for c in expected} == expected
    assert set(store.ids()) == set(expected)
    report = store.verify()
    assert report.ok and report.checked == 3 * n
    # Every pack has its own index file; no file was written by both.
    packs = {n.split("/")[-1].removesuffix(".pack") for n in store.backend.list("packs/")}
    indexes = {n.split("/")[-1].removesuffix(".idx") for n in store.backend.list("index/")}
    assert packs == indexes and len(packs) >= 6
