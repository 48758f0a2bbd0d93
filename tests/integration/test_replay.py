"""Read models and replay to any point: rebuild equals incremental, --at on reads and restore.

The read-model contract: runs on every combination of event store and chunk
storage (``backends``).
"""

from __future__ import annotations

import io
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import Backends
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt import CheckpointType, DiskFormat, InvalidValue, Store, UnknownCheckpoint, UnknownVM
from ckpt.cli import run
from ckpt.projections.fold import documents
from ckpt.storage.read_model_tables import TABLES

steps = st.lists(
    st.tuples(
        st.sampled_from(
            ["create", "apply", "delete", "subtree", "rename", "start", "stop", "add", "remove"]
        ),
        st.integers(0, 30),
    ),
    min_size=1,
    max_size=18,
)


def _play(store: Store, ops: list[tuple[str, int]]) -> None:
    vms = ["A"]
    store.register_vm("A", [("D", DiskFormat.VHDX)], checkpoint_type=CheckpointType.STANDARD)
    for n, (op, k) in enumerate(ops):
        vm = vms[k % len(vms)]
        live = [str(cp.id) for cp in store.vm(vm).checkpoints.values()]
        try:
            if op == "create":
                store.create_checkpoint(vm, f"c{n}")
            elif op == "add":
                vms.append(f"V{n}")
                store.register_vm(f"V{n}", checkpoint_type=CheckpointType.STANDARD)
            elif op == "remove":  # and registered again: a new VM (new id) of that name
                store.remove_vm(vm)
                store.register_vm(vm, checkpoint_type=CheckpointType.STANDARD)
            elif op in ("start", "stop"):
                getattr(store, f"{op}_vm")(vm)
            elif live:
                target = live[k % len(live)]
                if op == "apply":
                    store.apply_checkpoint(vm, target)
                elif op == "rename":
                    store.rename_checkpoint(vm, target, f"r{n}")
                else:
                    store.delete_checkpoint(vm, target, subtree=op == "subtree")
        except Exception as e:  # a refused command (VM already running ...) changes nothing
            assert type(e).__name__ == "NotAllowed", e


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=steps)
def test_rebuild_equals_incremental(
    tmp_path: Path, backends: Backends, ops: list[tuple[str, int]]
) -> None:
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "s"
    with Store.init(path, actor="p", host="h", **backends()) as store:
        _play(store, ops)
        recorder = store.read_models.recorder
        incremental = recorder.dump()
        assert recorder.position() == store.app.last_position()
        rows = {(vm_id, cp) for vm_id, cp, _ in incremental["state_files"]}
        assert rows == {(str(vm.id), str(c)) for vm in store.vms() for c in vm.checkpoints}
        for vm in store.vms():  # the stored documents are those of the VM itself
            docs = documents(vm)
            assert recorder.checkpoints(str(vm.id)) == docs.checkpoints
            assert recorder.chain(str(vm.id)) == docs.chain
            for cp in vm.checkpoints.values():
                assert recorder.state_files(str(vm.id), str(cp.id)) == [
                    {"path": f.path, "kind": f.kind.value, "memory": f.memory}
                    for f in cp.state_files
                ]
        events, _ = store.rebuild_read_models()
        assert events == store.app.last_position()
        assert recorder.dump() == incremental


def _cli(store: Path, *args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(["--store", str(store), "--actor", "t", *args], out, err)
    return code, out.getvalue() + err.getvalue()


def test_dropped_tables_are_rebuilt_with_the_same_answers(
    tmp_path: Path, backends: Backends
) -> None:
    path = tmp_path / "s"
    with Store.init(path, **backends()) as store:
        _play(store, [("create", 0), ("start", 0), ("create", 0), ("apply", 0), ("create", 0),
                      ("delete", 1), ("rename", 0), ("add", 0), ("create", 1)])  # fmt: skip
    reads = [("log", "--json"), ("tree", "A", "--json"), ("vm", "list", "--json"),
             ("chain", "A", "--json"), ("stats", "--json"), ("tree", "A", "--at", "4")]  # fmt: skip
    before = [_cli(path, *r) for r in reads]
    with Store.open(path) as store, store.read_models.recorder.transaction(commit=True) as c:
        for table in TABLES:
            c.execute(f"DROP TABLE ckpt_{table}")
    assert [_cli(path, *r) for r in reads] == before  # reopened: tables empty, noticed, rebuilt
    code, text = _cli(path, "projections", "rebuild")
    assert code == 0 and "rebuilt the read models from" in text
    assert [_cli(path, *r) for r in reads] == before


def test_deleted_checkpoint_restores_byte_identical_at_an_earlier_position(
    tmp_path: Path, backends: Backends
) -> None:
    rng = random.Random(9)
    image = tmp_path / "d.img"
    with Store.init(tmp_path / "s", **backends()) as store:
        store.register_vm("VM", [("D", DiskFormat.VHDX)], checkpoint_type=CheckpointType.STANDARD)
        first = rng.randbytes(64 * 1024)
        image.write_bytes(first)
        store.create_checkpoint("VM", "gone", disks={"D": image})
        image.write_bytes(first[:1000] + rng.randbytes(5000) + first[6000:])
        store.create_checkpoint("VM", "kept", disks={"D": image})
        before_delete = store.app.last_position()
        store.delete_checkpoint("VM", "gone")  # its layer merges away, as in Hyper-V
        with pytest.raises(UnknownCheckpoint):
            store.restore_disk("VM", "gone", "D", io.BytesIO())
        out = io.BytesIO()
        store.restore_disk("VM", "gone", "D", out, at=before_delete)
        assert out.getvalue() == first
        code, _ = _cli(store.path, "restore", "VM", "gone", "--disk", "D", "-o",
                       str(tmp_path / "r.img"), "--at", str(before_delete))  # fmt: skip
        assert code == 0 and (tmp_path / "r.img").read_bytes() == first


def test_at_resolves_positions_and_times(tmp_path: Path, backends: Backends) -> None:
    times = iter(f"2026-11-26T14:{m:02d}:00+00:00" for m in range(60))
    from datetime import datetime

    clock = lambda: datetime.fromisoformat(next(times))  # noqa: E731
    with Store.init(tmp_path / "s", clock=clock, **backends()) as store:
        store.register_vm("VM", checkpoint_type=CheckpointType.STANDARD)
        store.create_checkpoint("VM", "one")
        store.create_checkpoint("VM", "two")
        store.rename_checkpoint("VM", "one", "uno")
        assert [e.name for e in store.tree("VM", at=2)] == ["one"]
        assert [e.name for e in store.tree("VM", at=3)] == ["one", "two"]
        assert [e.name for e in store.tree("VM")] == ["uno", "two"]
        event_times = [e.time for e in store.log()]
        assert [e.name for e in store.tree("VM", at=event_times[2].isoformat())] == ["one", "two"]
        with pytest.raises(UnknownVM, match="at position 0"):
            store.tree("VM", at="2000-01-01T00:00:00Z")
        with pytest.raises(InvalidValue, match="beyond the end"):
            store.tree("VM", at=99)
        with pytest.raises(InvalidValue, match="neither a log position"):
            store.tree("VM", at="last tuesday")
        assert [e.position for e in store.log(since=2, until=3)] == [2, 3]
        assert [e.position for e in store.log(since=event_times[3].isoformat())] == [4]
        assert [e.operation for e in store.log(operation="checkpoint-renamed")] == [
            "checkpoint-renamed"
        ]
        assert store.log(actor="nobody") == []


def test_stats_at_a_position(tmp_path: Path, backends: Backends) -> None:
    image = tmp_path / "d.img"
    with Store.init(tmp_path / "s", **backends()) as store:
        store.register_vm("VM", [("D", DiskFormat.VHDX)], checkpoint_type=CheckpointType.STANDARD)
        image.write_bytes(random.Random(1).randbytes(8192))
        store.create_checkpoint("VM", "a", disks={"D": image})
        middle = store.app.last_position()
        store.create_checkpoint("VM", "b", disks={"D": image})
        then: dict[str, Any] = store.stats(at=middle)
        now: dict[str, Any] = store.stats()
        assert then["vms"]["VM"]["captures"] == 1 and now["vms"]["VM"]["captures"] == 2
        assert then["total"] == {"logical_bytes": 8192, "position": middle}
