"""The audit trail: who did what to which VM's checkpoints, and when.

A fold over the event log in global order. Terms: *position* is the event's
notification id (its place in the whole log, 1-based, gap-free on SQLite);
*operation* is a stable, kebab-case name per event class that scripts can
filter on; *details* holds the facts a person wants to see (merges, types,
states), as JSON-ready values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from ckpt.domain import LayerMerge, LayerRemoval, VirtualMachine
from ckpt.domain.imports import HyperVFolderImported
from ckpt.domain.purges import (
    ContentPurged,
    PurgeReclaimed,
    PurgeWithdrawn,
    RetentionPolicySet,
)

VM = VirtualMachine

# A JSON value, as ``json.loads`` returns one: what an audit entry's details hold.
JsonValue = str | int | float | bool | None | Sequence["JsonValue"] | Mapping[str, "JsonValue"]

OPERATIONS: dict[type[Any], str] = {
    VM.Registered: "vm-registered",
    VM.SettingsChanged: "vm-settings-changed",
    VM.StateChanged: "vm-state-changed",
    VM.CheckpointCreated: "checkpoint-created",
    VM.CheckpointApplied: "checkpoint-applied",
    VM.CheckpointReverted: "checkpoint-reverted",
    VM.CheckpointRenamed: "checkpoint-renamed",
    VM.CheckpointDeleted: "checkpoint-deleted",
    VM.CheckpointExported: "checkpoint-exported",
    VM.LayerContentRecorded: "disk-content-captured",
    VM.StateContentRecorded: "state-files-captured",
    VM.BackupPointRecorded: "backup-point-recorded",
    VM.Removed: "vm-removed",
    ContentPurged: "content-purged",
    PurgeWithdrawn: "purge-withdrawn",
    PurgeReclaimed: "content-reclaimed",
    RetentionPolicySet: "retention-policy-set",
    HyperVFolderImported: "hyperv-folder-imported",
}


@dataclass(frozen=True)
class AuditEntry:
    """One event as ``ckpt log`` shows it; ``details`` are per operation, as JSON."""

    position: int
    time: datetime
    actor: str
    host: str
    vm: str
    vm_id: UUID
    operation: str
    checkpoint: str | None
    details: dict[str, JsonValue] = field(default_factory=dict)
    link: bytes | None = None  # the event's hash-chain link (storage/log_chain.py)


def describe_changes(changes: Iterable[LayerMerge | LayerRemoval]) -> list[str]:
    """One line per merge or file deletion, in the order they happened."""
    out = []
    for c in changes:
        if isinstance(c, LayerMerge):
            out.append(f"merged {c.source_file} into {c.target_file}")
        else:
            out.append(f"deleted {c.file}")
    return out


def _details(event: Any) -> tuple[str | None, dict[str, JsonValue]]:
    """The checkpoint an event concerns and its details, per event class."""
    if isinstance(event, VM.Registered):
        return None, {
            "config_version": event.config_version,
            "checkpoint_type": event.checkpoint_type.value,
            "disks": [d.base_file for d in event.disks],
        }
    if isinstance(event, VM.SettingsChanged):
        raw = {
            "checkpoint_type": event.checkpoint_type and event.checkpoint_type.value,
            "automatic_checkpoints": event.automatic_checkpoints,
            "config_version": event.config_version,
        }
        return None, {k: v for k, v in raw.items() if v is not None}
    if isinstance(event, VM.StateChanged):
        state: dict[str, JsonValue] = {"from": event.previous.value, "to": event.state.value}
        if event.turned_off:
            state["turned_off"] = True
        return None, state
    if isinstance(event, VM.CheckpointCreated):
        cp = event.checkpoint
        details: dict[str, JsonValue] = {
            "id": str(cp.id),
            "type": cp.type.value,
            "vm_state": cp.vm_state.value,
        }
        if event.fell_back:
            details["fell_back_from"] = event.requested_type.value
            if event.fallback_reason:
                details["fallback_reason"] = event.fallback_reason
        if cp.automatic:
            details["automatic"] = True
        return cp.name, details
    if isinstance(event, VM.CheckpointApplied):
        return event.name, {
            "id": str(event.checkpoint_id),
            "vm_state": event.state.value,
            "layers": describe_changes(event.changes),
        }
    if isinstance(event, VM.CheckpointRenamed):
        return event.new_name, {"id": str(event.checkpoint_id), "old_name": event.old_name}
    if isinstance(event, VM.CheckpointDeleted):
        return event.name, {
            "id": str(event.checkpoint_id),
            "subtree": event.subtree,
            "checkpoints_deleted": len(event.deleted),
            "dependants": event.dependants,
            "layers": describe_changes(event.changes),
            "reason": event.reason,
        }
    if isinstance(event, VM.CheckpointExported):
        cid = None if event.checkpoint_id is None else str(event.checkpoint_id)
        return event.name, {"id": cid, "destination": event.destination}
    if isinstance(event, VM.LayerContentRecorded):
        c = event.capture
        return None, {
            "disk": c.disk,
            "layer": str(c.layer),
            "size": c.virtual_size,
            "changed_blocks": c.changed_blocks,
            "read_bytes": c.read_bytes,
            "new_bytes": c.added_bytes,
        }
    if isinstance(event, VM.Removed):
        return None, {"checkpoints": event.checkpoints}
    if isinstance(event, VM.BackupPointRecorded):
        return event.point.name, {"id": str(event.point.id)}
    return None, _retention_details(event)


def _retention_details(event: Any) -> dict[str, JsonValue]:
    if isinstance(event, ContentPurged):
        points: list[JsonValue] = [
            {
                "id": str(p.id),
                "kind": p.kind,
                "name": p.name,
                "created_at": p.created_at.isoformat(),
            }
            for p in event.points
        ]
        return {"policy": event.policy, "rule": event.rule, "points": points}
    if isinstance(event, PurgeWithdrawn):
        return {"purge_position": event.position, "points": [str(p) for p in event.points]}
    if isinstance(event, PurgeReclaimed):
        return {"purge_positions": list(event.positions)}
    if isinstance(event, RetentionPolicySet):
        return {"policy": event.policy or "none", "previous": event.previous or "none"}
    if isinstance(event, HyperVFolderImported):
        return {
            "folder": event.folder,
            "hyperv_id": event.hyperv_id or None,
            "configuration": event.configuration or None,
            "notes": list(event.notes),
        }
    return {}


class AuditTrail:
    """Folds events into audit entries; remembers VM names as it goes."""

    def __init__(self) -> None:
        self.names: dict[UUID, str] = {}
        self.checkpoints: dict[UUID, str] = {}  # checkpoint id -> latest name

    def describe(self, event: Any) -> tuple[str, str | None, dict[str, JsonValue]] | None:
        """(operation, checkpoint name, details) of an event; None for no audit entry.

        Remembers VM and checkpoint names as it goes, so call it on every event
        in log order.
        """
        operation = OPERATIONS.get(type(event))
        if operation is None:
            return None
        if isinstance(event, VM.Registered):
            self.names[event.originator_id] = event.name
        elif isinstance(event, VM.CheckpointCreated):
            self.checkpoints[event.checkpoint.id] = event.checkpoint.name
        elif isinstance(event, VM.CheckpointRenamed):
            self.checkpoints[event.checkpoint_id] = event.new_name
        if isinstance(event, VM.StateContentRecorded):
            return (
                operation,
                self.checkpoints.get(event.checkpoint_id),
                {
                    "id": str(event.checkpoint_id),
                    "files": [f.path or f.role.value for f in event.files],
                    "new_bytes": sum(f.added_bytes for f in event.files),
                },
            )
        checkpoint, details = _details(event)
        return operation, checkpoint, details

    def entry(self, position: int, event: Any) -> AuditEntry | None:
        described = self.describe(event)
        if described is None:
            return None
        operation, checkpoint, details = described
        return AuditEntry(
            position=position,
            time=event.timestamp,
            actor=event.actor,
            host=event.host,
            vm=self.names.get(event.originator_id, str(event.originator_id)),
            vm_id=event.originator_id,
            operation=operation,
            checkpoint=checkpoint,
            details=details,
        )

    def fold(
        self,
        events: Iterable[tuple[int, Any]],
        keep: Callable[[AuditEntry], bool] = lambda e: True,
    ) -> list[AuditEntry]:
        out = []
        for position, event in events:
            entry = self.entry(position, event)
            if entry is not None and keep(entry):
                out.append(entry)
        return out
