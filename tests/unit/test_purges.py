"""The retention events (domain/purges.py): their rules on the aggregate, their
stable topics, and that they survive the transcoder and a snapshot (a VM with
purge marks past its 100th event loads from its snapshot as it was)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from ckpt.domain import (
    EVENT_CLASSES,
    VALUE_TYPES,
    BackupPoint,
    ContentPurged,
    DiskCapture,
    DiskFormat,
    NotAllowed,
    Origin,
    PointPurged,
    PurgedPoint,
    PurgeMark,
    PurgeReclaimed,
    PurgeWithdrawn,
    VirtualMachine,
)
from ckpt.domain import purges as rules
from ckpt.domain.purges import RetentionPolicySet
from ckpt.storage import MsgPackTranscoder
from ckpt.unit_of_work import UnitOfWork, throwaway

AT = datetime(2026, 12, 1, tzinfo=UTC)


def _origin() -> Origin:
    return Origin("alice", "h1", AT, uuid4())


def _capture(vm: VirtualMachine, i: int) -> DiskCapture:
    layer = vm.running["Boot"]
    base = len(vm.contents.get(layer, ()))
    return DiskCapture("Boot", layer, bytes([i]) * 32, base, 4096, 4096, 1, 4096, 4096)


def _vm_with_points(n: int) -> tuple[VirtualMachine, list[BackupPoint]]:
    vm = VirtualMachine.register(_origin(), "web", [("Boot", DiskFormat.VHDX)])
    points = [vm.sync(_origin(), f"p{i}", [_capture(vm, i)]) for i in range(n)]
    return vm, points


def _purged(p: BackupPoint) -> PurgedPoint:
    return PurgedPoint(p.id, "backup point", p.name, p.created_at)


def test_every_retention_event_is_in_the_schema_with_a_topic_of_this_module() -> None:
    for cls in (ContentPurged, PurgeWithdrawn, PurgeReclaimed, RetentionPolicySet):
        assert cls in EVENT_CLASSES
        assert f"ckpt.domain.purges:{cls.__name__}" == cls.TOPIC
    assert PurgedPoint in VALUE_TYPES and PurgeMark in VALUE_TYPES


def test_a_purge_marks_its_points_and_an_undo_gives_them_back() -> None:
    vm, points = _vm_with_points(3)
    rules.purge(vm, _origin(), [_purged(points[0]), _purged(points[1])], "last=1", "forget")
    purge_version = vm.version
    assert set(vm.purged) == {points[0].id, points[1].id}
    assert vm.purged[points[0].id].policy == "last=1"
    assert vm.purged[points[0].id].actor == "alice"
    assert rules.pending(vm) == [purge_version]
    back = rules.withdraw(vm, _origin(), purge_version, 42)
    assert set(back) == {points[0].id, points[1].id}
    assert vm.purged == {} and rules.pending(vm) == []
    with pytest.raises(NotAllowed, match="already withdrawn"):
        rules.withdraw(vm, _origin(), purge_version, 42)


def test_a_point_is_purged_once_and_a_reclaimed_purge_cannot_be_undone() -> None:
    vm, points = _vm_with_points(2)
    rules.purge(vm, _origin(), [_purged(points[0])], "last=1", "forget")
    with pytest.raises(NotAllowed, match="already purged"):
        rules.purge(vm, _origin(), [_purged(points[0])], "last=1", "forget")
    with pytest.raises(Exception, match="named twice"):
        rules.purge(vm, _origin(), [_purged(points[1]), _purged(points[1])], "x", "forget")
    version = vm.version
    rules.reclaim(vm, _origin(), [version], [7])
    assert rules.pending(vm) == [] and vm.reclaimed == (version,)
    with pytest.raises(PointPurged, match="position 7 cannot be undone: ckpt gc has reclaimed"):
        rules.withdraw(vm, _origin(), version, 7)


def test_a_stored_policy_is_an_event_only_when_it_changes() -> None:
    vm, _ = _vm_with_points(0)
    rules.set_retention(vm, _origin(), "daily=7")
    rules.set_retention(vm, _origin(), "daily=7")
    assert vm.retention == "daily=7"
    events = vm.collect_events()
    assert sum(isinstance(e, RetentionPolicySet) for e in events) == 1
    assert isinstance(events[-1], RetentionPolicySet) and events[-1].previous == ""


def test_the_events_round_trip_through_the_transcoder() -> None:
    codec = MsgPackTranscoder(VALUE_TYPES)
    p = PurgedPoint(uuid4(), "deleted checkpoint", "a", AT - timedelta(days=3))
    mark = PurgeMark(p.id, 5, "daily=7", "bob", AT)
    assert codec.decode(codec.encode((p, mark))) == (p, mark)


@pytest.fixture
def uow() -> Iterator[UnitOfWork]:
    u = throwaway(actor="alice")
    yield u
    u.close()


def test_purge_marks_survive_a_snapshot(uow: UnitOfWork) -> None:
    """Snapshots are taken every 100 events: the marks past one load as recorded."""
    vm, points = _vm_with_points(3)
    rules.purge(vm, _origin(), [_purged(points[0])], "last=2", "forget")
    rules.set_retention(vm, _origin(), "last=2")
    for _ in range(60):  # 120 more events: a snapshot is taken after the purge
        vm.start(_origin())
        vm.stop(_origin())
    uow.app.save(vm)
    loaded = uow.app.get_vm(vm.id)
    snapshots = list(uow.app.snapshots.get(vm.id)) if uow.app.snapshots else []
    assert snapshots, "the application takes snapshots every 100 events"
    assert loaded.purged == vm.purged and loaded.retention == "last=2"
    assert loaded.version == vm.version
