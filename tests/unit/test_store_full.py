"""``StoreFull`` (exit 37) from every write path, by injected errors: what the
suite can run anywhere, without a file system to fill (tests/integration/
test_disk_full.py fills real ones).

The database cases inject the driver's own error class where eventsourcing's
recorder meets the driver (``insert_events``), wrapped as eventsourcing wraps
it: a real ``sqlite3.OperationalError`` with ``SQLITE_FULL`` (made by a real
SQLite hitting ``max_page_count``), and psycopg's ``DiskFull`` (SQLSTATE 53100:
a PostgreSQL server's disk cannot be filled in CI).
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import OperationalError
from full_support import real_sqlite_full

import ckpt
from ckpt.exit_codes import exit_code
from ckpt.storage.chunks import ChunkStore, LocalChunkBackend, index_sync


def wrapped(error: Exception) -> OperationalError:
    """``error`` as eventsourcing's recorders raise it: ``raise OperationalError(e) from e``."""
    try:
        raise OperationalError(error) from error
    except OperationalError as e:
        return e


@pytest.fixture
def store(tmp_path: Path) -> ckpt.Store:
    s = ckpt.Store.init(tmp_path / "s", actor="t")
    s.register_vm("vm", [("d", ckpt.DiskFormat.VHDX)])
    return s


def failing_commit(store: ckpt.Store, error: Exception) -> Callable[[], None]:
    """Make the next event commits raise ``error``; returns the undo."""
    recorder: Any = store.unit_of_work.app.recorder

    def insert_events(*args: object, **kwargs: object) -> None:
        raise wrapped(error)

    recorder.insert_events = insert_events
    return lambda: delattr(recorder, "insert_events")


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (real_sqlite_full(), "SQLite: database or disk is full"),
        (
            __import__("psycopg").errors.DiskFull('could not extend file "base/1/2": No space'),
            "PostgreSQL SQLSTATE 53100 disk_full: could not extend file",
        ),
    ],
    ids=["sqlite-full", "postgres-disk-full"],
)
def test_an_event_store_without_room_at_the_commit_is_store_full_and_records_nothing(
    store: ckpt.Store, error: Exception, says: str
) -> None:
    with store:
        before = len(store.log())
        undo = failing_commit(store, error)
        with pytest.raises(ckpt.StoreFull) as info:
            store.create_checkpoint("vm", "cp", disks={"d": io.BytesIO(os.urandom(1 << 16))})
        undo()
        message = str(info.value)
        assert message.startswith("no space left on the store's device: at least "), message
        assert says in message
        assert exit_code(info.value) == 37
        assert len(store.log()) == before
        assert [e.name for e in store.tree("vm")] == []
        assert store.verify().ok
        assert list(store.unit_of_work.chunks.backend.list("leases/")) == []


def test_postgres_out_of_memory_is_not_a_full_disk(store: ckpt.Store) -> None:
    import psycopg

    with store:
        failing_commit(store, psycopg.errors.OutOfMemory("out of memory"))  # SQLSTATE 53200
        with pytest.raises(ckpt.StorageError) as info:
            store.create_checkpoint("vm", "cp")
        assert not isinstance(info.value, ckpt.StoreFull)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_a_local_put_without_room_is_store_full_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    backend = LocalChunkBackend(tmp_path / "chunks")
    backend.put("index/x", b"fits")

    def no_room(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", no_room)
    with pytest.raises(ckpt.StoreFull) as info:
        backend.put("packs/ab/cd.pack", bytes(5000))
    monkeypatch.undo()
    message = str(info.value)
    assert message.startswith(
        f"no space left on the store's device: 5000 bytes needed for 'packs/ab/cd.pack' in "
        f"{tmp_path / 'chunks'} ([Errno {code}] "
    ), message
    assert "bytes free there" in message
    assert [p.name for p in (tmp_path / "chunks").rglob("*") if p.is_file()] == ["x"]


def test_an_io_error_on_put_is_not_store_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = LocalChunkBackend(tmp_path / "chunks")

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(ckpt.StorageError) as info:
        backend.put("packs/ab/cd.pack", b"x")
    assert not isinstance(info.value, ckpt.StoreFull)


def chunk_store_with_chunks(tmp_path: Path, n: int) -> tuple[LocalChunkBackend, list[bytes]]:
    backend = LocalChunkBackend(tmp_path / "chunks")
    store = ChunkStore(backend, cache_dir=tmp_path / "first-cache")
    store.set_format()
    blocks = [os.urandom(4096) for _ in range(n)]
    with store.writer() as w:
        ids = [w.add(b) for b in blocks]
    store.close()
    assert all(i is not None for i in ids)
    return backend, blocks


def test_a_full_index_cache_device_spills_to_a_temporary_cache_and_reads_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, blocks = chunk_store_with_chunks(tmp_path, 64)
    cache = tmp_path / "full-cache"
    write_run = index_sync.write_run

    def no_room_in_the_cache(path: Path, *args: Any) -> None:
        if path.is_relative_to(cache):
            raise OSError(errno.ENOSPC, "No space left on device")
        write_run(path, *args)

    monkeypatch.setattr(index_sync, "write_run", no_room_in_the_cache)
    store = ChunkStore(backend, cache_dir=cache)
    ids = [ckpt.storage.chunks.chunk_id(b) for b in blocks]
    assert store.get_many(ids) == blocks  # served from a temporary cache
    assert store.stats().chunks == 64
    store.close()
    assert not list(cache.rglob("*.run")) and not list(cache.rglob("*.tmp"))


def test_a_full_temporary_cache_too_is_store_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, blocks = chunk_store_with_chunks(tmp_path, 8)

    def no_room(path: Path, *args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(index_sync, "write_run", no_room)
    store = ChunkStore(backend, cache_dir=tmp_path / "cache")
    with pytest.raises(ckpt.StoreFull, match=r"no space left .* for the chunk-index cache in "):
        store.get(ckpt.storage.chunks.chunk_id(blocks[0]))
    store.close()
