"""A store whose chunk storage or event store has no room, on every backend
combination (SQLite or PostgreSQL events, local or S3 chunks; the server ones
skip without their servers, saying why).

No server's disk can be filled here, so each backend's own "full" answer is
injected where ckpt meets the driver: ``ENOSPC`` from the file system calls of
the local backend, MinIO's ``XMinioStorageFull`` (HTTP 507) from the S3
client's PutObject, SQLite's real ``SQLITE_FULL`` error and psycopg's
``DiskFull`` (SQLSTATE 53100) raised inside eventsourcing's transaction, which
wraps them as it wraps the real thing. tests/integration/test_disk_full.py
fills a real file system.
"""

from __future__ import annotations

import errno
import io
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Backends
from full_support import real_sqlite_full

import ckpt
from ckpt.exit_codes import exit_code
from ckpt.storage.chunks import LocalChunkBackend, S3ChunkBackend
from ckpt.storage.chunks import backend as local_backend

MiB = 1 << 20


def no_room_for_packs(store: ckpt.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, every pack put of ``store``'s chunk backend finds its
    device (or bucket) full, as the backend's driver says it."""
    backend = store.unit_of_work.chunks.backend
    if isinstance(backend, LocalChunkBackend):
        real = os.replace

        class FullOs:
            def __getattr__(self, name: str) -> Any:
                return getattr(os, name)

            @staticmethod
            def replace(src: Any, dst: Any) -> None:
                if "/packs/" in str(dst):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                real(src, dst)

        monkeypatch.setattr(local_backend, "os", FullOs())
    else:
        assert isinstance(backend, S3ChunkBackend)
        from botocore.exceptions import ClientError

        client: Any = backend._client  # the answer a MinIO with full drives gives
        put = client.put_object

        def put_object(**kwargs: Any) -> Any:
            if "packs/" in kwargs["Key"]:
                raise ClientError(
                    {
                        "Error": {
                            "Code": "XMinioStorageFull",
                            "Message": "Storage backend has reached its minimum free drive "
                            "threshold. Please delete a few objects to proceed.",
                        },
                        "ResponseMetadata": {"HTTPStatusCode": 507},
                    },
                    "PutObject",
                )
            return put(**kwargs)

        monkeypatch.setattr(client, "put_object", put_object)


def no_room_for_events(store: ckpt.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, inserting events finds the event store's disk full: raised
    inside the recorder's transaction, so eventsourcing wraps the driver's error."""
    recorder: Any = store.unit_of_work.app.recorder
    if store.unit_of_work.events_file is not None:
        error: Exception = real_sqlite_full()
    else:
        import psycopg

        error = psycopg.errors.DiskFull(
            'could not extend file "base/16384/16400": No space left on device'
        )

    def insert(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(recorder, "_insert_events", insert)


def history(store: ckpt.Store) -> tuple[int, list[str], list[str]]:
    leases = list(store.unit_of_work.chunks.backend.list("leases/"))
    return len(store.log()), [e.name for e in store.tree("vm")], leases


@pytest.mark.parametrize(
    "full", [no_room_for_packs, no_room_for_events], ids=["chunks-full", "events-full"]
)
def test_a_capture_without_room_records_nothing_and_succeeds_with_room_again(
    backends: Backends,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    full: Callable[[ckpt.Store, pytest.MonkeyPatch], None],
) -> None:
    image = random.Random(7).randbytes(3 * MiB)
    with ckpt.Store.init(tmp_path / "s", actor="t", **backends()) as store:
        store.register_vm("vm", [("d", ckpt.DiskFormat.VHDX)])
        store.create_checkpoint("vm", "first", disks={"d": io.BytesIO(image[:MiB])})
        before = history(store)
        with monkeypatch.context() as m:
            full(store, m)
            with pytest.raises(ckpt.StoreFull) as info:
                store.create_checkpoint("vm", "cp", disks={"d": io.BytesIO(image)})
        message = str(info.value)
        assert message.startswith("no space left on the store's device: "), message
        assert " bytes needed for " in message and "\n" not in message, message
        assert exit_code(info.value) == 37
        assert history(store) == before  # no event, the tree as it was, the lease released
        assert store.verify().ok
        store.gc(grace_seconds=0)
        store.create_checkpoint("vm", "cp", disks={"d": io.BytesIO(image)})
        assert store.verify().ok
        got = io.BytesIO()
        store.restore_disk("vm", "cp", "d", got)
        assert got.getvalue() == image
