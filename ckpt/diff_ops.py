"""``ckpt diff``: what one point holds that another does not, from manifests only.

Terms:
- *point*: a checkpoint or backup point (by name or id, as restore takes
  them), or ``Now`` (the running layers as last captured); with ``at``, both
  are found as of that log position or time, so a checkpoint deleted since is
  reachable. Without ``at``, a checkpoint deleted from the tree is also found
  by its full id: its content as it was just before its deletion (one pass
  over the log's ``CheckpointDeleted`` events finds where).
- *source* (A) and *target* (B): the diff is what B holds that A does not.
- per disk (the union of both points' disks; a disk a point lacks, or has no
  content for, is an empty disk of size 0): the changed extents, the zeroed
  ones among them, both sizes (``storage/state_diff.py`` defines them: block
  granularity, chunk ids compared, never chunk data).
- per state file role (memory, config, runtime-state, device-state):
  ``changed`` true or false by comparing the two captures' manifest states,
  None when only one point (or neither) has that role (Now has no files).

A point whose content was purged is ``PointPurged``, as for restore.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from ckpt.domain import (
    BackupPoint,
    FileCapture,
    FileRole,
    InvalidValue,
    NotFound,
    UnknownCheckpoint,
    VirtualMachine,
)
from ckpt.domain.naming import parse_id
from ckpt.storage.disk_state import State
from ckpt.storage.manifest_cache import chain_manifest_ids
from ckpt.storage.manifest_restore import load_state
from ckpt.storage.state_diff import Extent, changed_extents, compare, same_content

from . import queries
from .restore_ops import NOW, RestorePoint, now_of, point_of, purged_now
from .unit_of_work import UnitOfWork

NOW_KIND = "now"


@dataclass(frozen=True)
class DiffPoint:
    """One side of a diff: the point's name ("Now" for Now), its kind
    ("checkpoint", "backup point" or "now") and id (None for Now)."""

    point: str
    kind: str
    id: UUID | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "point": self.point,
            "kind": self.kind,
            "id": None if self.id is None else str(self.id),
        }


@dataclass(frozen=True)
class DiskDiff:
    """One disk: B's extents that differ from A (bytes), the zeroed ones among them."""

    disk: str
    size_from: int
    size_to: int
    block_size: int
    extents: list[Extent]
    zeroed: list[Extent]

    @property
    def changed_bytes(self) -> int:
        return sum(e.length for e in self.extents)

    @property
    def zeroed_bytes(self) -> int:
        return sum(e.length for e in self.zeroed)

    @property
    def size_changed(self) -> bool:
        return self.size_from != self.size_to

    def as_dict(self) -> dict[str, Any]:
        return {
            "disk": self.disk,
            "size_from": self.size_from,
            "size_to": self.size_to,
            "size_changed": self.size_changed,
            "block_size": self.block_size,
            "changed_bytes": self.changed_bytes,
            "extents": [[e.offset, e.length] for e in self.extents],
            "zeroed_bytes": self.zeroed_bytes,
            "zeroed": [[e.offset, e.length] for e in self.zeroed],
        }


@dataclass(frozen=True)
class FileDiff:
    """One state file role: changed or not, None when only one point has it."""

    role: str
    changed: bool | None


@dataclass(frozen=True)
class PointDiff:
    """What ``target`` holds that ``source`` does not, per disk and state file."""

    vm: str
    source: DiffPoint
    target: DiffPoint
    at: int | None
    disks: list[DiskDiff]
    files: list[FileDiff]

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document (a contract: keys are only ever added)."""
        return {
            "vm": self.vm,
            "from": self.source.as_dict(),
            "to": self.target.as_dict(),
            "at": self.at,
            "disks": [d.as_dict() for d in self.disks],
            "files": [{"role": f.role, "changed": f.changed} for f in self.files],
        }


@dataclass(frozen=True)
class _Side:
    point: RestorePoint
    ref: DiffPoint


def _deleted_at(uow: UnitOfWork, v: VirtualMachine, pid: UUID) -> int | None:
    """The log position of the event that deleted checkpoint ``pid`` of ``v``."""
    topic = (VirtualMachine.CheckpointDeleted.TOPIC,)
    with uow.translated():
        for position, event in uow.app.read_log(topics=topic):
            if event.originator_id == v.id and pid in event.deleted:
                return int(position)
    return None


def _side(uow: UnitOfWork, vm: str, ref: str, at: int | None) -> _Side:
    v = queries.vm(uow, vm, at=at)
    if ref == NOW:
        return _Side(now_of(v), DiffPoint(NOW, NOW_KIND, None))
    try:
        found = v.find_point(ref)
    except UnknownCheckpoint:
        pid = parse_id(ref)
        if at is not None or pid is None:
            raise
        where = _deleted_at(uow, v, pid)
        if where is None:
            raise
        v = queries.vm(uow, v.id, at=where - 1)  # just before its deletion
        found = v.find_point(pid)
    kind = "backup point" if isinstance(found, BackupPoint) else "checkpoint"
    return _Side(point_of(uow, v, found), DiffPoint(found.name, kind, found.id))


def _state(uow: UnitOfWork, side: _Side, disk: str, at: int | None) -> State | None:
    """A disk's state at a point; None when the point lacks it or has no content for it."""
    point = side.point
    leaf = point.layers.get(disk)
    if leaf is None:
        return None
    with purged_now(uow, point, disk, at):  # Now as of ``at`` kept only by purged points
        return load_state(chain_manifest_ids(point.vm, leaf), uow.chunks)


def _disks(a: _Side, b: _Side, disk: str | None) -> list[str]:
    names = list(dict.fromkeys([*b.point.layers, *a.point.layers]))
    if disk is None:
        return names
    if disk not in names:
        raise NotFound(
            f"VM {b.point.vm.name!r} has no disk {disk!r} at {a.point.label} or "
            f"{b.point.label} (disks: {', '.join(names) or 'none'})"
        )
    return [disk]


def _disk(uow: UnitOfWork, a: _Side, b: _Side, disk: str, at: int | None) -> DiskDiff:
    old, new = _state(uow, a, disk, at), _state(uow, b, disk, at)
    found = compare(old, new, f"disk {disk!r}")
    block = new.block_size if new is not None else old.block_size if old is not None else 0
    return DiskDiff(
        disk, 0 if old is None else old.size, 0 if new is None else new.size, block,
        found.extents, found.zeroed,
    )  # fmt: skip


def _files(uow: UnitOfWork, a: _Side, b: _Side) -> list[FileDiff]:
    def by_role(side: _Side) -> dict[FileRole, FileCapture]:
        return {f.role: f for f in side.point.files}

    old, new = by_role(a), by_role(b)
    out = []
    for role in FileRole:
        x, y = old.get(role), new.get(role)
        if x is None and y is None:
            continue
        changed: bool | None = None
        if x is not None and y is not None:
            changed = x.manifest != y.manifest and not _same_file(uow, x, y)
        out.append(FileDiff(role.value, changed))
    return out


def _same_file(uow: UnitOfWork, x: FileCapture, y: FileCapture) -> bool:
    if x.size != y.size:
        return False
    sx, sy = load_state([x.manifest], uow.chunks), load_state([y.manifest], uow.chunks)
    assert sx is not None and sy is not None  # one manifest each: a state each
    return same_content(sx, sy, f"{x.role.value} file")


def diff(
    uow: UnitOfWork, vm: str, a: str, b: str, disk: str | None = None, at: str | int | None = None
) -> PointDiff:
    where = queries.position(uow, at)
    x, y = _side(uow, vm, a, where), _side(uow, vm, b, where)
    disks = [_disk(uow, x, y, name, where) for name in _disks(x, y, disk)]
    return PointDiff(y.point.vm.name, x.ref, y.ref, where, disks, _files(uow, x, y))


def stream_extents(
    uow: UnitOfWork, vm: str, a: str, b: str, disk: str | None, at: str | int | None = None
) -> Iterator[Extent]:
    """One disk's changed extents, as they are found (``--format changed-blocks``).
    ``disk`` may be None only for a VM with one disk (else ``InvalidValue``
    naming the disks). Points are resolved before the first extent is yielded."""
    where = queries.position(uow, at)
    x, y = _side(uow, vm, a, where), _side(uow, vm, b, where)
    names = _disks(x, y, disk)
    if len(names) != 1:
        raise InvalidValue(
            f"VM {y.point.vm.name!r} has {len(names)} disks ({', '.join(names) or 'none'}): "
            "name one with --disk DISK"
        )
    old, new = _state(uow, x, names[0], where), _state(uow, y, names[0], where)
    return iter(()) if new is None else changed_extents(old, new, f"disk {names[0]!r}")
