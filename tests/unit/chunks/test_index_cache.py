"""The chunk index on disk (decision 0011): sorted runs in a cache directory, derived
from the index files, giving the answers a fresh load of those files gives."""

from __future__ import annotations

import os
import random
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from ckpt.storage.chunks import ChunkId, LocalChunkBackend, MemoryChunkBackend, PackEntry
from ckpt.storage.chunks import index as index_module
from ckpt.storage.chunks.index import ChunkIndex, cache_dir_for
from ckpt.storage.chunks.index_file import IndexFile, encode_index_file
from ckpt.storage.chunks.layout import index_name, pack_name

Model = dict[bytes, list[tuple[bytes, PackEntry]]]  # id -> copies (pack id, entry)


def _put_pack(
    backend: LocalChunkBackend | MemoryChunkBackend, rng: random.Random, ids: list[bytes]
) -> IndexFile:
    pack_id = rng.randbytes(16)
    entries = [PackEntry(ChunkId(c), 16 + 100 * i, 100, 4096) for i, c in enumerate(ids)]
    f = IndexFile(pack_id, 1_700_000_000.0, 16 + 100 * len(ids) + 48 * len(ids) + 40, entries)
    backend.put(index_name(pack_id), encode_index_file(f))
    return f


def _model(files: dict[bytes, IndexFile]) -> Model:
    """What loading the index files afresh says: every copy, packs in sorted order."""
    model: Model = {}
    for pack_id in sorted(files):
        for e in files[pack_id].entries:
            model.setdefault(e.chunk_id, []).append((pack_id, e))
    return model


def _check(index: ChunkIndex, files: dict[bytes, IndexFile], absent: list[bytes]) -> None:
    model = _model(files)
    ids = list(model)
    asked = ids + absent
    random.Random(len(asked)).shuffle(asked)
    packs, slots = index.locate_many(asked)
    for cid, slot in zip(asked, slots, strict=True):
        if cid not in model:
            assert slot is None
            continue
        assert slot is not None
        copies = {(p, e.offset) for p, e in model[cid]}
        assert (packs[slot[0]].pack_id, slot[1]) in copies  # one of its live copies
        assert slot[2:] == (100, 4096, 0, 4096)  # a v1 entry: the whole frame
        loc = index.location(cid)
        assert loc is not None and loc.pack == pack_name(packs[slot[0]].pack_id)
        assert cid in index
    assert not any(c in index for c in absent)
    assert list(index.ids()) == sorted(model)  # streamed in id order
    assert [e.chunk_id for _, e in index.items()] == sorted(model)
    stats = index.stats()
    assert stats.chunks == len(model) == len(index)
    assert stats.stored_bytes == 100 * len(model)
    assert stats.uncompressed_bytes == 4096 * len(model)
    assert stats.packs == len(files) == len(index.packs())
    assert {p.pack_id for p in index.packs()} == set(files)


def test_the_index_answers_as_a_fresh_load_through_appends_duplicates_and_deletes(
    tmp_path: Path,
) -> None:
    rng = random.Random(13)
    backend = LocalChunkBackend(tmp_path / "chunks")
    index = ChunkIndex(backend)
    files: dict[bytes, IndexFile] = {}
    pool = [rng.randbytes(32) for _ in range(3000)]
    for step in range(12):
        for _ in range(rng.randint(1, 4)):
            # duplicates across packs (two writers, or gc copying) on purpose
            f = _put_pack(backend, rng, rng.sample(pool, rng.randint(1, 300)))
            files[f.pack_id] = f
        if step % 3 == 2:
            gone = rng.choice(sorted(files))
            backend.delete(index_name(gone))  # a gc deleted or repacked it
            del files[gone]
        index.refresh()
        _check(index, files, [rng.randbytes(32) for _ in range(50)])
    # several runs were merged (size-tiered), and a fresh process agrees
    assert (tmp_path / "chunks" / ".cache" / "chunk-index" / "MANIFEST").is_file()
    _check(ChunkIndex(backend), files, [])


def test_a_cache_deleted_truncated_or_stale_still_gives_the_right_answers(tmp_path: Path) -> None:
    rng = random.Random(7)
    backend = LocalChunkBackend(tmp_path / "chunks")
    files = {}
    for _ in range(5):
        f = _put_pack(backend, rng, [rng.randbytes(32) for _ in range(200)])
        files[f.pack_id] = f
    first = ChunkIndex(backend)
    _check(first, files, [])
    cache = tmp_path / "chunks" / ".cache" / "chunk-index"

    # stale: another process adds and deletes index files
    other = ChunkIndex(backend)
    f = _put_pack(backend, rng, [rng.randbytes(32) for _ in range(200)])
    files[f.pack_id] = f
    gone = sorted(files)[0]
    backend.delete(index_name(gone))
    del files[gone]
    other.refresh()
    _check(other, files, [])
    first.refresh()
    _check(first, files, [])

    # truncated run, damaged manifest, deleted directory: each rebuilt from the index files
    for damage in ("truncate run", "manifest", "delete"):
        runs = sorted(cache.glob("*.run"))
        if damage == "truncate run":
            with open(runs[0], "r+b") as fh:
                fh.truncate(os.path.getsize(runs[0]) // 2)
        elif damage == "manifest":
            data = bytearray((cache / "MANIFEST").read_bytes())
            data[20] ^= 0xFF
            (cache / "MANIFEST").write_bytes(bytes(data))
        else:
            for p in cache.iterdir():
                p.unlink()
            cache.rmdir()
        _check(ChunkIndex(backend), files, [rng.randbytes(32) for _ in range(20)])


def test_own_index_files_are_found_before_they_reach_the_cache_and_written_at_close(
    tmp_path: Path,
) -> None:
    rng = random.Random(3)
    backend = LocalChunkBackend(tmp_path / "chunks")
    index = ChunkIndex(backend)
    assert len(index) == 0
    f = _put_pack(backend, rng, [rng.randbytes(32) for _ in range(10)])
    index.add(f)  # pending: in memory
    assert all(e.chunk_id in index for e in f.entries)
    packs, slots = index.locate_many([e.chunk_id for e in f.entries])
    assert all(s is not None and packs[s[0]].pack_id == f.pack_id for s in slots)
    index.close()
    # a fresh index finds them in the cache without reading the index file again
    backend.delete(index_name(f.pack_id))
    stale = ChunkIndex(backend, cache_dir=tmp_path / "chunks" / ".cache" / "chunk-index")
    stale._view = None
    assert stale.stats().chunks == 0  # the index file is gone: so are its chunks


def test_the_cache_lives_under_xdg_cache_home_for_a_remote_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class RemoteBackend(MemoryChunkBackend):
        def __repr__(self) -> str:
            return "RemoteBackend('s3://bucket/prefix')"

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    remote = RemoteBackend()
    path = cache_dir_for(remote)
    assert path is not None and path.parent.parent == tmp_path / "xdg" / "ckpt"
    remote.put("ckpt-store.json", b'{"store_id": "5b1c1e9e-8a43-4e8c-9e1e-0d9e0f0a1b2c"}')
    path = cache_dir_for(remote)
    assert (
        path == tmp_path / "xdg" / "ckpt" / "5b1c1e9e-8a43-4e8c-9e1e-0d9e0f0a1b2c" / "chunk-index"
    )
    assert cache_dir_for(MemoryChunkBackend()) is None  # a temporary directory
    local = LocalChunkBackend(tmp_path / "chunks")
    assert cache_dir_for(local) == tmp_path / "chunks" / ".cache" / "chunk-index"
    assert list(local.list("")) == []  # never listed as objects


def test_the_index_holds_no_python_object_per_chunk(tmp_path: Path) -> None:
    rng = random.Random(5)
    backend = LocalChunkBackend(tmp_path / "chunks")
    n = 0
    for _ in range(40):
        _put_pack(backend, rng, [rng.randbytes(32) for _ in range(2500)])
        n += 2500
    index = ChunkIndex(backend)
    index.refresh()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fresh = ChunkIndex(backend)
        fresh.refresh()
        probe = [rng.randbytes(32) for _ in range(4096)]
        fresh.locate_many(probe)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(fresh) == n
    # The old in-memory map held 57 B per chunk (5.7 MB here); a snapshot holds
    # 8 B per 512 entries and 40 B per pack, plus the batch being probed.
    assert held < 1_500_000, held


def test_a_batch_is_answered_in_the_callers_order_whatever_it_holds(tmp_path: Path) -> None:
    rng = random.Random(11)
    backend = LocalChunkBackend(tmp_path / "chunks")
    ids = [rng.randbytes(32) for _ in range(500)]
    _put_pack(backend, rng, ids)
    index = ChunkIndex(backend)
    asked = [ids[5], b"short", ids[5], rng.randbytes(32), *reversed(ids)]
    _, slots = index.locate_many(asked)
    assert slots[1] is None and slots[3] is None
    assert slots[0] == slots[2] and slots[0] is not None and slots[0][1] == 16 + 100 * 5
    assert [s[1] if s else None for s in slots[4:]] == [16 + 100 * i for i in reversed(range(500))]
    assert index.contains_many(asked)[:4] == [True, False, True, False]


@pytest.mark.parametrize("mapped", [True, False])
def test_large_runs_are_read_with_pread_and_answer_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mapped: bool
) -> None:
    if not mapped:
        monkeypatch.setattr(index_module, "MAP_LIMIT", 0)  # as if the runs were large
    rng = random.Random(17)
    backend = LocalChunkBackend(tmp_path / "chunks")
    files: dict[bytes, IndexFile] = {}
    pool = [rng.randbytes(32) for _ in range(5000)]
    # keys that share their first 8 bytes: the walk past a key match
    twins = [pool[0][:8] + rng.randbytes(24) for _ in range(3)]
    for _ in range(6):
        f = _put_pack(backend, rng, rng.sample(pool, 1500) + twins[: rng.randint(0, 3)])
        files[f.pack_id] = f
    index = ChunkIndex(backend)
    index.refresh()
    _check(index, files, [rng.randbytes(32), pool[0][:8] + bytes(24), b"\xff" * 32, bytes(32)])
    gone = sorted(files)[2]
    backend.delete(index_name(gone))
    del files[gone]
    index.refresh()
    _check(index, files, [])


def test_a_merge_holds_about_one_window_of_entries_whatever_the_run_sizes(
    tmp_path: Path,
) -> None:
    from ckpt.storage.chunks.index_cache import windows
    from ckpt.storage.chunks.run_file import Run, ids_to_keys, sort_order, write_run

    rng = random.Random(23)
    runs = []
    for j, n in enumerate([20_000] + [6000] * 5):  # the largest a small share of all
        keys = ids_to_keys([rng.randbytes(32) for _ in range(n)])
        keys = keys[sort_order(keys)]
        slots = np.zeros((n, 6), np.uint32)
        write_run(tmp_path / f"{j}.run", keys, slots)
        runs.append(Run(tmp_path / f"{j}.run"))
    sizes = [len(k) for k, _ in windows(runs, window=4096)]
    assert sum(sizes) == 50_000 and max(sizes) <= 4096 + 512 * len(runs), sizes
    merged = np.concatenate([k for k, _ in windows(runs, window=4096)])
    assert (merged[sort_order(merged)] == merged).all()  # in order across windows


def test_commands_that_never_search_the_index_do_not_import_numpy(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = "import sys, ckpt.cli; print('numpy' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert out.stdout.strip() == "False"  # ~50 ms and ~17 MiB of every command otherwise
