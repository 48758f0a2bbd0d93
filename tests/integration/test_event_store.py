"""The event store contract: reopen, history by version, snapshots, conflicts, audit.

Runs on every combination of event store and chunk storage (``backends``:
SQLite + local, PostgreSQL + local, SQLite + S3, PostgreSQL + S3).
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
import zstandard
from conftest import Backends
from eventsourcing.persistence import IntegrityError

from ckpt import (
    AlreadyExists,
    CheckpointType,
    DiskFormat,
    Store,
    StoreBusy,
    StoreCorrupt,
    StoreExists,
    StoreNotFound,
    UnknownVM,
    VMState,
)


def _fill(path: Path, backends: Backends) -> Store:
    store = Store.init(path, actor="alice", host="hv1", **backends())
    store.register_vm("VM1", [("Disk0", DiskFormat.VHDX)], "9.0", CheckpointType.STANDARD)
    store.create_checkpoint("VM1", "one")
    store.start_vm("VM1")
    store.create_checkpoint("VM1", "two")
    store.apply_checkpoint("VM1", "one")
    store.create_checkpoint("VM1", "three")
    store.delete_checkpoint("VM1", "one")
    return store


def test_reopened_store_rebuilds_the_same_vm(tmp_path: Path, backends: Backends) -> None:
    with _fill(tmp_path / "s", backends) as store:
        before = store.vm("VM1")
    with Store.open(tmp_path / "s") as store:
        after = store.vm("VM1")
    assert after.checkpoints == before.checkpoints
    assert after.layers == before.layers
    assert after.running == before.running
    assert after.current == before.current
    assert after.version == before.version == 7


def test_version_gives_the_past(tmp_path: Path, backends: Backends) -> None:
    with _fill(tmp_path / "s", backends) as store:
        at2 = store.vm("VM1", version=2)
        assert [cp.name for cp in at2.checkpoints.values()] == ["one"]
        assert at2.state is VMState.OFF
        at4 = store.vm("VM1", version=4)
        assert [cp.name for cp in at4.checkpoints.values()] == ["one", "two"]
        assert at4.state is VMState.RUNNING
        at5 = store.vm("VM1", version=5)  # applied 'one', taken while off: the VM is off
        assert at5.state is VMState.OFF
        assert at5.current == at5.find_checkpoint("one").id
        now = store.vm("VM1")
        assert sorted(cp.name for cp in now.checkpoints.values()) == ["three", "two"]


def test_snapshots_are_taken_and_used(tmp_path: Path, backends: Backends) -> None:
    with Store.init(tmp_path / "s", actor="a", host="h", **backends()) as store:
        store.register_vm("Big", checkpoint_type=CheckpointType.STANDARD)
        # 130 events past registration within Hyper-V's 50 checkpoints a VM:
        # 40 checkpoints, then 90 renames (each checkpoint renamed 2 or 3 times).
        ids = [store.create_checkpoint("Big", f"c{i}").id for i in range(40)]
        for i in range(90):
            store.rename_checkpoint("Big", ids[i % 40], f"r{i}")
        snaps = list(store.app.snapshots.get(store.vm("Big").id)) if store.app.snapshots else []
        assert [s.originator_version for s in snaps] == [100]
        vm = store.vm("Big")
        assert vm.version == 131 and len(vm.checkpoints) == 40
        # at 101: the 40 creations and the first 60 renames
        at101 = store.vm("Big", version=101)
        assert sorted(cp.name for cp in at101.checkpoints.values()) == sorted(
            f"r{i}" for i in range(20, 60)
        )


def test_events_are_stored_as_msgpack_in_zstd(tmp_path: Path, backends: Backends) -> None:
    with _fill(tmp_path / "s", backends) as store:
        stored = store.app.recorder.select_notifications(1, 100)
    rows = [(n.topic, n.state) for n in stored]
    assert [n.id for n in stored] == list(range(1, 8))
    assert rows[0][0] == "ckpt.domain:VirtualMachine.Registered"
    assert all(state[:4] == b"\x28\xb5\x2f\xfd" for _, state in rows)  # zstd frame magic
    first = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(rows[0][1]), raw=False)
    assert "VM1" in str(first)
    assert {topic for topic, _ in rows} >= {
        "ckpt.domain:VirtualMachine.CheckpointCreated",
        "ckpt.domain:VirtualMachine.CheckpointDeleted",
    }


def test_store_lifecycle_errors(tmp_path: Path, backends: Backends) -> None:
    with pytest.raises(StoreNotFound, match="ckpt --store"):
        Store.open(tmp_path / "nothing")
    Store.init(tmp_path / "s", **backends()).close()
    with pytest.raises(StoreExists):
        Store.init(tmp_path / "s")
    (tmp_path / "s" / "ckpt-store.json").write_text('{"format": 99}')
    with pytest.raises(StoreCorrupt, match="format 99"):
        Store.open(tmp_path / "s")


def test_duplicate_vm_and_unknown_vm(tmp_path: Path, backends: Backends) -> None:
    with Store.init(tmp_path / "s", **backends()) as store:
        store.register_vm("Web")
        with pytest.raises(AlreadyExists, match="Web"):
            store.register_vm("WEB")
        with pytest.raises(UnknownVM, match="'nope'"):
            store.vm("nope")
        assert store.vm(str(store.vm("web").id)).name == "Web"


def test_two_stores_on_one_directory_conflict_then_retry(
    tmp_path: Path, backends: Backends
) -> None:
    """A writer whose copy is stale is retried on fresh state, so both commands land."""
    with Store.init(tmp_path / "s", **backends()) as a, Store.open(tmp_path / "s") as b:
        a.register_vm("VM1", checkpoint_type=CheckpointType.STANDARD)
        stale = b.vm("VM1")
        a.create_checkpoint("VM1", "from a")
        stale.create_checkpoint(b._origin(), "stale")
        with pytest.raises(IntegrityError):
            b.app.save(stale)
        b.create_checkpoint("VM1", "from b")
        assert sorted(cp.name for cp in a.vm("VM1").checkpoints.values()) == ["from a", "from b"]


def test_audit_log_records_actor_host_and_operations(tmp_path: Path, backends: Backends) -> None:
    with _fill(tmp_path / "s", backends) as store:
        log = store.log("VM1")
    assert [e.position for e in log] == list(range(1, 8))
    assert {(e.actor, e.host, e.vm) for e in log} == {("alice", "hv1", "VM1")}
    assert [e.operation for e in log] == [
        "vm-registered",
        "checkpoint-created",
        "vm-state-changed",
        "checkpoint-created",
        "checkpoint-applied",
        "checkpoint-created",
        "checkpoint-deleted",
    ]
    assert [e.checkpoint for e in log] == [None, "one", None, "two", "one", "three", "one"]
    deleted = [e for e in log if e.operation == "checkpoint-deleted"]
    assert len(deleted) == 1 and deleted[0].checkpoint == "one"
    assert deleted[0].details["dependants"] == 2


def test_a_busy_event_store_is_reported_at_once_not_retried_nor_taken_for_a_duplicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventsourcing.persistence import OperationalError

    with Store.init(tmp_path / "s") as store:
        store.register_vm("VM1", checkpoint_type=CheckpointType.STANDARD)
        saves = []

        def locked(*args: object, **kwargs: object) -> None:
            saves.append(args)
            raise OperationalError("canceling statement due to lock timeout")

        monkeypatch.setattr(store.app, "save", locked)
        with pytest.raises(StoreBusy, match="busy"):
            store.register_vm("VM2")
        with pytest.raises(StoreBusy):
            store.create_checkpoint("VM1", "c")
        assert len(saves) == 2  # each tried once: the lock timeout was the waiting


def test_init_refuses_the_rest_of_a_store_without_its_marker(tmp_path: Path) -> None:
    with Store.init(tmp_path / "s") as store:
        store.register_vm("VM1")
    (tmp_path / "s" / "ckpt-store.json").unlink()
    with pytest.raises(StoreExists, match=r"events\.sqlite"):
        Store.init(tmp_path / "s")
    with pytest.raises(StoreNotFound):
        Store.open(tmp_path / "s")
    (tmp_path / "t").mkdir()
    Store.init(tmp_path / "t").close()
    (tmp_path / "t" / "events.sqlite").unlink()  # the log gone: never replaced by an empty one
    with pytest.raises(StoreNotFound, match=r"events\.sqlite"):
        Store.open(tmp_path / "t")
