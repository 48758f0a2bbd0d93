"""Every point a VM ever had and the manifests its content is read from: one pass over the log.

Terms: a *point* is a backup point or a checkpoint, live or deleted from the
tree (``domain/purges.py``). Its *chain* per disk is the list of its layers'
manifests, base first, as they were when the point's content was fixed: a
backup point right after it was recorded, a deleted checkpoint just before its
deletion, a live one (and *Now*) at the end of the log. A disk's bytes at a
point are the state of its whole chain (the last v2 manifest, ``disk_state``);
exporting it as a differencing chain also reads each ancestor layer's state,
so a point *needs* the state at every layer boundary of its chain.

The walk folds each VM's aggregate as the log goes (the log is read once;
``damage.references`` is its references): cost one decode and apply per event
(~15 us) and a few manifest ids per point in memory (32 B each).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from ckpt.domain import VirtualMachine
from ckpt.domain.layers import chain
from ckpt.storage.references import Reference

from .unit_of_work import UnitOfWork

BACKUP_POINT = "backup point"
CHECKPOINT = "checkpoint"

Chain = tuple[tuple[bytes, ...], ...]  # per layer, base first: that layer's manifests


@dataclass(frozen=True)
class PointContent:
    """One point and what its content is read from."""

    id: UUID
    kind: str  # BACKUP_POINT or CHECKPOINT
    name: str
    created_at: datetime
    live: bool  # a checkpoint still in the tree (a backup point: always)
    position: int  # where the point was recorded
    chains: dict[str, Chain]
    files: tuple[bytes, ...]


@dataclass
class VMHistory:
    """One VM (also a removed one) as the whole log leaves it, and its points."""

    vm: VirtualMachine
    label: str  # its name, or "NAME (removed, id ID)"
    points: list[PointContent] = field(default_factory=list)
    now: dict[str, Chain] = field(default_factory=dict)
    refs: list[Reference] = field(default_factory=list)
    positions: dict[int, int] = field(default_factory=dict)  # VM version -> log position
    created: dict[UUID, int] = field(default_factory=dict)  # checkpoint id -> log position

    def point(self, pid: UUID) -> PointContent | None:
        for p in self.points:
            if p.id == pid:
                return p
        return None


def _chain(vm: VirtualMachine, leaf: UUID) -> Chain:
    return tuple(tuple(vm.contents.get(layer.id, ())) for layer in chain(vm.layers, leaf))


def _checkpoint(vm: VirtualMachine, cid: UUID, live: bool, position: int) -> PointContent:
    cp = vm.checkpoints[cid]
    return PointContent(
        cp.id, CHECKPOINT, cp.name, cp.created_at, live, position,
        {disk: _chain(vm, leaf) for disk, leaf in cp.layers},
        tuple(f.manifest for f in vm.captured_files.get(cid, ())),
    )  # fmt: skip


def walk(uow: UnitOfWork, until: int | None = None) -> dict[UUID, VMHistory]:
    """Every VM's history, from the log itself (not the read models: gc and
    verify must not trust a lagging or damaged projection)."""
    out: dict[UUID, VMHistory] = {}
    with uow.translated():
        for position, event in uow.app.read_log(stop=until):
            _step(out, position, event)
    for h in out.values():
        vm = h.vm
        for cid in vm.checkpoints:
            h.points.append(_checkpoint(vm, cid, True, h.created.get(cid, 0)))
        h.now = {disk: _chain(vm, leaf) for disk, leaf in vm.running.items()}
        if vm.removed:
            h.label = f"{vm.name} (removed, id {vm.id})"
            h.refs = [Reference(r.position, h.label, r.what, r.manifest) for r in h.refs]
    return out


def _step(out: dict[UUID, VMHistory], position: int, event: Any) -> None:
    owner = event.originator_id
    h = out.get(owner)
    if isinstance(event, VirtualMachine.CheckpointDeleted) and h is not None:
        for cid in event.deleted:
            if cid in h.vm.checkpoints:
                h.points.append(_checkpoint(h.vm, cid, False, h.created.get(cid, position)))
    vm = event.mutate(None if h is None else h.vm)
    assert isinstance(vm, VirtualMachine)
    if h is None:
        h = out[owner] = VMHistory(vm, vm.name)
    h.positions[event.originator_version] = position
    if isinstance(event, VirtualMachine.CheckpointCreated):
        h.created[event.checkpoint.id] = position
    elif isinstance(event, VirtualMachine.LayerContentRecorded):
        c = event.capture
        h.refs.append(Reference(position, vm.name, f"disk {c.disk} (layer {c.layer})", c.manifest))
    elif isinstance(event, VirtualMachine.StateContentRecorded):
        for f in event.files:
            what = f"{f.path or f.role.value} of checkpoint {event.checkpoint_id}"
            h.refs.append(Reference(position, vm.name, what, f.manifest))
    elif isinstance(event, VirtualMachine.BackupPointRecorded):
        p = event.point
        chains = {disk: _chain(vm, leaf) for disk, leaf in vm.running.items()}
        h.points.append(
            PointContent(p.id, BACKUP_POINT, p.name, p.created_at, True, position, chains, ())
        )
