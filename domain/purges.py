"""Retention events: content purged, a purge withdrawn, purges reclaimed, a stored policy.

Terms:
- a *point* is what retention counts: a backup point (``ckpt sync``) or a
  checkpoint, live or deleted from the tree; it keeps its place in the tree and
  the log forever, only its *content* (the bytes its disks and files were
  captured with) can be given up.
- a *purge* (``ContentPurged``) gives up the content of some points of one VM
  under a policy; the points stay in ``VirtualMachine.purged`` until withdrawn.
- *reclaimed*: ``ckpt gc`` records ``PurgeReclaimed`` naming the purges whose
  bytes it is about to delete, before it deletes any (so an undo that reads
  the log after it is refused, and one that wrote first is seen: both are
  events of the same VM, so the event store orders them by version).
- *withdrawn* (``PurgeWithdrawn``, ``ckpt forget --undo POSITION``): the points
  of a purge not yet reclaimed get their content back.

The event classes live here, not in ``vm.py`` (800 lines), and subclass
``VirtualMachine.Event``; their topics name this module, so stored events
resolve by import even before it is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from eventsourcing.utils import register_topic

from .captures import PurgedPoint, PurgeMark
from .errors import InvalidValue, NotAllowed, PointPurged
from .values import Origin
from .vm import VirtualMachine


class ContentPurged(VirtualMachine.Event):
    """``points`` lose their content under ``policy`` (its canonical text);
    ``rule`` says where the policy came from ("forget options" or "stored policy")."""

    TOPIC = "ckpt.domain.purges:ContentPurged"
    points: tuple[PurgedPoint, ...]
    policy: str
    rule: str

    def apply(self, vm: VirtualMachine) -> None:
        v, policy, actor, at = self.originator_version, self.policy, self.actor, self.timestamp
        marks = tuple(PurgeMark(p.id, v, policy, actor, at) for p in self.points)
        vm.purge_marks = (*vm.purge_marks, *marks)


class PurgeWithdrawn(VirtualMachine.Event):
    """The purge recorded at VM version ``purge_version`` (log position
    ``position``) is withdrawn: ``points`` have their content back."""

    TOPIC = "ckpt.domain.purges:PurgeWithdrawn"
    purge_version: int
    position: int
    points: tuple[UUID, ...]

    def apply(self, vm: VirtualMachine) -> None:
        gone = set(self.points)
        vm.purge_marks = tuple(m for m in vm.purge_marks if m.point not in gone)


class PurgeReclaimed(VirtualMachine.Event):
    """gc is deleting the bytes of the purges at these VM versions, recorded at
    these log ``positions`` (no undo after)."""

    TOPIC = "ckpt.domain.purges:PurgeReclaimed"
    purge_versions: tuple[int, ...]
    positions: tuple[int, ...]

    def apply(self, vm: VirtualMachine) -> None:
        vm.reclaimed = tuple(sorted({*vm.reclaimed, *self.purge_versions}))


class RetentionPolicySet(VirtualMachine.Event):
    """The VM's stored policy (``ckpt vm set --retention``; "" removes it)."""

    TOPIC = "ckpt.domain.purges:RetentionPolicySet"
    policy: str
    previous: str

    def apply(self, vm: VirtualMachine) -> None:
        vm.retention = self.policy


for _cls in (ContentPurged, PurgeWithdrawn, PurgeReclaimed, RetentionPolicySet):
    register_topic(_cls.TOPIC, _cls)


def purge(
    vm: VirtualMachine, origin: Origin, points: Sequence[PurgedPoint], policy: str, rule: str
) -> None:
    """Give up the content of ``points`` (none already purged, each once)."""
    if not points:
        raise InvalidValue("nothing to purge")
    ids = [p.id for p in points]
    if len(set(ids)) != len(ids):
        raise InvalidValue("a point is named twice in one purge")
    for p in points:
        if p.id in vm.purged:
            raise NotAllowed(f"the content of {p.kind} {p.name!r} ({p.id}) is already purged")
        if p.kind == "backup point" and p.id not in vm.backup_points:
            raise InvalidValue(f"VM {vm.name!r} has no backup point {p.id}")
    vm._trigger(origin, ContentPurged, points=tuple(points), policy=policy, rule=rule)


def withdraw(vm: VirtualMachine, origin: Origin, purge_version: int, position: int) -> list[UUID]:
    """Withdraw the purge at ``purge_version`` (found at log ``position``): the
    ids of the points it gives back. Refused once gc reclaimed it."""
    if purge_version in vm.reclaimed:
        raise PointPurged(
            f"the purge at position {position} cannot be undone: ckpt gc has reclaimed its bytes"
        )
    back = [pid for pid, mark in vm.purged.items() if mark.version == purge_version]
    if not back:
        raise NotAllowed(f"the purge at position {position} was already withdrawn")
    vm._trigger(origin, PurgeWithdrawn, purge_version=purge_version, position=position,
                points=tuple(back))  # fmt: skip
    return back


def pending(vm: VirtualMachine) -> list[int]:
    """The versions of purges still marking points and not yet reclaimed."""
    return sorted({m.version for m in vm.purged.values()} - set(vm.reclaimed))


def reclaim(
    vm: VirtualMachine, origin: Origin, versions: Sequence[int], positions: Sequence[int]
) -> None:
    vm._trigger(origin, PurgeReclaimed, purge_versions=tuple(sorted(versions)),
                positions=tuple(sorted(positions)))  # fmt: skip


def set_retention(vm: VirtualMachine, origin: Origin, policy: str) -> None:
    """Store ``policy`` (canonical text, checked by the caller) as the VM's own."""
    if policy == vm.retention:
        return
    vm._trigger(origin, RetentionPolicySet, policy=policy, previous=vm.retention)
