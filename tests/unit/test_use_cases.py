"""The use cases on a throwaway unit of work (memory chunks, a temporary event log).

The same functions ``Store`` delegates to, without a store directory: each
test runs in milliseconds.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt import capture_ops, commands, maintenance, queries, restore_ops
from ckpt.domain import (
    AlreadyExists,
    CheckpointType,
    DiskFormat,
    FileRole,
    InvalidValue,
    UnknownVM,
)
from ckpt.unit_of_work import UnitOfWork, throwaway

SIZE = 64 * 1024


@pytest.fixture
def uow() -> Iterator[UnitOfWork]:
    u = throwaway(actor="alice", host="h1")
    vm = commands.new_vm(u, "web", [("D", DiskFormat.VHDX)], None, CheckpointType.STANDARD)
    commands.save_new_vm(u, vm)
    yield u
    u.close()


def _image(tmp_path: Path, name: str, seed: int, size: int = SIZE) -> Path:
    path = tmp_path / name
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def _restore(uow: UnitOfWork, point: str, at: int | None = None) -> bytes:
    out = io.BytesIO()
    restore_ops.restore_disk(uow, "web", point, "D", out, None, at)
    return out.getvalue()


# ---------------------------------------------------------------- commands
def test_a_name_a_live_vm_has_is_refused(uow: UnitOfWork) -> None:
    with pytest.raises(AlreadyExists, match="web"):
        commands.new_vm(uow, "WEB")


def test_checkpoint_commands_change_the_tree(uow: UnitOfWork) -> None:
    first = commands.create_checkpoint(uow, "web", "first", None, True)
    commands.create_checkpoint(uow, "web", "second", None, True)
    commands.rename_checkpoint(uow, "web", "second", "two")
    applied = commands.apply_checkpoint(uow, "web", "first")
    assert applied.id == first.id
    assert [e.name for e in queries.tree(uow, "web") if e.name != "Now"] == ["first", "two"]
    lines = commands.delete_checkpoint(uow, "web", "two")
    assert lines and [cp.name for cp in queries.checkpoints(uow, "web")] == ["first"]


def test_every_command_is_stamped_with_its_origin(uow: UnitOfWork) -> None:
    commands.create_checkpoint(uow, "web", "first", None, True)
    entries = queries.log(uow, "web")
    assert [e.operation for e in entries] == ["vm-registered", "checkpoint-created"]
    assert {(e.actor, e.host) for e in entries} == {("alice", "h1")}
    assert [e.position for e in entries] == [1, 2]


def test_a_removed_vm_is_found_only_as_of_before_its_removal(uow: UnitOfWork) -> None:
    commands.run(uow, "web", commands.on_vm(lambda v, o: v.remove(o)))
    with pytest.raises(UnknownVM, match="was removed"):
        queries.vm(uow, "web")
    assert queries.vm(uow, "web", at=1).name == "web"
    assert queries.vms(uow) == []


# ----------------------------------------------------------------- queries
def test_at_resolves_positions_and_refuses_the_future(uow: UnitOfWork) -> None:
    commands.create_checkpoint(uow, "web", "first", None, True)
    assert queries.position(uow, None) is None
    assert queries.position(uow, "2") == 2
    assert queries.vm(uow, "web", at=1).checkpoints == {}
    with pytest.raises(InvalidValue, match="beyond the end"):
        queries.position(uow, 99)


def test_the_log_filters_by_operation_and_names_a_typo(uow: UnitOfWork) -> None:
    commands.create_checkpoint(uow, "web", "first", None, True)
    assert [e.position for e in queries.log(uow, operation="checkpoint-created")] == [2]
    with pytest.raises(InvalidValue, match="did you mean"):
        queries.log(uow, operation="checkpoint-create")


# ---------------------------------------------------------- capture, restore
def test_a_captured_disk_restores_byte_for_byte_at_each_checkpoint(
    uow: UnitOfWork, tmp_path: Path
) -> None:
    one = _image(tmp_path, "one.raw", 1)
    two = _image(tmp_path, "two.raw", 2)
    capture_ops.create_checkpoint(uow, "web", "one", None, True, {"D": one}, {}, {}, None)
    capture_ops.create_checkpoint(uow, "web", "two", None, True, {"D": two}, {}, {}, None)
    assert _restore(uow, "one") == one.read_bytes()
    assert _restore(uow, "two") == two.read_bytes()
    commands.delete_checkpoint(uow, "web", "one")
    assert _restore(uow, "one", at=3) == one.read_bytes()  # as of before the delete


def test_a_backup_point_and_state_files_restore(uow: UnitOfWork, tmp_path: Path) -> None:
    disk = _image(tmp_path, "d.raw", 3)
    config = _image(tmp_path, "c.vmcx", 4, 5000)
    capture_ops.create_checkpoint(
        uow, "web", "cp", None, True, {"D": disk}, {FileRole.CONFIG: config}, {}, None
    )
    point = capture_ops.sync(uow, "web", "b1", {"D": disk}, {}, None)
    assert point.name == "b1" and _restore(uow, "b1") == disk.read_bytes()
    written = restore_ops.restore_state_files(uow, "web", "cp", tmp_path / "out")
    assert [p.read_bytes() for p in written] == [config.read_bytes()]


def test_import_disk_makes_the_running_content(uow: UnitOfWork, tmp_path: Path) -> None:
    raw = _image(tmp_path, "d.img", 5)
    capture = capture_ops.import_disk(uow, "web", "D", raw)
    assert capture.virtual_size == SIZE
    commands.create_checkpoint(uow, "web", "after", None, True)
    assert _restore(uow, "after") == raw.read_bytes()


# ------------------------------------------------------------- verify, gc
def test_verify_checks_every_referenced_chunk_and_gc_keeps_them(
    uow: UnitOfWork, tmp_path: Path
) -> None:
    disk = _image(tmp_path, "d.raw", 6)
    capture_ops.create_checkpoint(uow, "web", "cp", None, True, {"D": disk}, {}, {}, None)
    report = maintenance.verify(uow)
    assert report.ok and report.checked == report.referenced > SIZE // 4096
    gc = maintenance.gc(uow, 0)
    assert gc.removed_chunks == 0 and gc.referenced == report.referenced
    assert gc.details["deleted_packs"] == 0
    assert _restore(uow, "cp") == disk.read_bytes()


def test_verify_names_the_checkpoints_a_lost_chunk_affects(uow: UnitOfWork, tmp_path: Path) -> None:
    disk = _image(tmp_path, "d.raw", 7)
    capture_ops.create_checkpoint(uow, "web", "cp", None, True, {"D": disk}, {}, {}, None)
    backend = uow.chunks.backend
    for name in list(backend.list("packs/")):
        backend.delete(name)
    report = maintenance.verify(uow)
    assert not report.ok
    assert {c for bad in report.bad for a in bad["affects"] for c in a["checkpoints"]} == {
        "cp (disk D)",
        "Now (disk D)",
    }


def test_stats_count_what_each_vm_handed_over(uow: UnitOfWork, tmp_path: Path) -> None:
    disk = _image(tmp_path, "d.raw", 8)
    capture_ops.create_checkpoint(uow, "web", "cp", None, True, {"D": disk}, {}, {}, None)
    capture_ops.sync(uow, "web", "b1", {"D": disk}, {}, None)  # nothing new
    stats = maintenance.stats(uow)
    assert stats["vms"]["web"]["logical_bytes"] == 2 * SIZE
    assert stats["vms"]["web"]["captures"] == 2
    assert stats["total"]["logical_bytes"] == 2 * SIZE
    assert maintenance.stats(uow, at=1)["total"] == {"logical_bytes": 0, "position": 1}
