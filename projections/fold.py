"""The fold behind the persisted read models: events in log order -> rows to write.

Terms: a *batch* is the rows one catch-up derives. The audit trail and the
chunk references are folded event by event. A VM's present tree, disk chain
and state files are taken from the VM aggregate at the version the batch
reached: the aggregate *is* the fold of that VM's events, and its snapshots
(every 100 events) are checkpointed fold state, so a VM is never replayed
from its first event to bring its documents up to date.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

from ckpt.domain import VirtualMachine
from ckpt.storage.read_models import Batch, VMDocuments

from .audit import AuditTrail
from .chain import disk_chains
from .documents import chain_json, files_json, tree_json, vm_json
from .tree import tree_entries

VM = VirtualMachine
GetVM = Callable[[UUID, int], VirtualMachine]


def documents(vm: VirtualMachine) -> VMDocuments:
    return VMDocuments(
        vm=vm_json(vm),
        checkpoints=tree_json(tree_entries(vm)),
        chain={"now": chain_json(vm, None, disk_chains(vm))},
        state_files={str(cid): files_json(cp.state_files) for cid, cp in vm.checkpoints.items()},
    )


class Folder:
    """Folds events into batches; keeps the names it has seen between batches."""

    def __init__(self) -> None:
        self.trail = AuditTrail()

    def fold(
        self, events: Iterable[tuple[int, Any]], get_vm: GetVM
    ) -> tuple[Batch, dict[UUID, int], int]:
        """Audit and capture rows for ``events``; the version each VM reached; the
        last position. VM documents are added by ``add_documents``."""
        batch = Batch()
        reached: dict[UUID, int] = {}
        position = 0
        for position, event in events:
            if event.originator_id not in self.trail.names:  # a catch-up that starts mid-log
                self.trail.names[event.originator_id] = get_vm(event.originator_id, 1).name
            entry = self.trail.entry(position, event)
            if entry is None:  # pragma: no cover - every event class has an operation
                continue
            vm_id = event.originator_id
            reached[vm_id] = event.originator_version
            batch.audit.append(
                (
                    position,
                    entry.time.timestamp(),
                    str(vm_id),
                    event.originator_version,
                    entry.vm,
                    entry.actor,
                    entry.host,
                    entry.operation,
                    entry.checkpoint,
                    _json(entry.details),
                )
            )
            if isinstance(event, VM.LayerContentRecorded):
                c = event.capture
                batch.captures.append(
                    (position, 0, str(vm_id), entry.vm, "disk", str(c.layer), c.disk,
                     c.manifest, c.virtual_size, c.added_bytes)
                )  # fmt: skip
            elif isinstance(event, VM.StateContentRecorded):
                for seq, f in enumerate(event.files):
                    batch.captures.append(
                        (position, seq, str(vm_id), entry.vm, "file", str(event.checkpoint_id),
                         f.path or f.role.value, f.manifest, f.size, f.added_bytes)
                    )  # fmt: skip
        return batch, reached, position


def add_documents(
    batch: Batch,
    reached: dict[UUID, int],
    get_vm: GetVM,
    known: dict[UUID, VirtualMachine] | None = None,
) -> None:
    """The present documents of every VM in ``reached``, at the version it reached.

    ``known`` holds aggregates the caller has already (a command's own VM): used
    when their version matches, which spares loading the VM again.
    """
    for vm_id, version in reached.items():
        vm = (known or {}).get(vm_id)
        if vm is None or vm.version != version:
            vm = get_vm(vm_id, version)
        batch.vms[str(vm_id)] = documents(vm)


def _json(details: dict[str, Any]) -> str:
    import json

    return json.dumps(details, sort_keys=True)
