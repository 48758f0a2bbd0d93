"""JSON documents of the read models: the shapes ``--json`` prints.

These keys are a contract with users' scripts (README, "JSON output"): add
keys freely, never rename or remove one. Read models store these documents,
so a read served from the database and one computed from a VM print the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from ckpt.domain import Checkpoint, StateFile, VirtualMachine

from .audit import AuditEntry
from .chain import ChainEntry
from .tree import TreeEntry


def iso(t: datetime) -> str:
    return t.isoformat()


def _id(value: UUID | None) -> str | None:
    return None if value is None else str(value)


def checkpoint_json(cp: Checkpoint, current: UUID | None) -> dict[str, Any]:
    return {
        "id": str(cp.id),
        "name": cp.name,
        "parent": _id(cp.parent),
        "type": cp.type.value,
        "vm_state": cp.vm_state.value,
        "created_at": iso(cp.created_at),
        "current": cp.id == current,
        "automatic": cp.automatic,
        "config_version": cp.config_version,
    }


def tree_json(entries: Iterable[TreeEntry]) -> list[dict[str, Any]]:
    return [
        {
            "id": str(e.id),
            "name": e.name,
            "parent": _id(e.parent),
            "type": e.type,
            "vm_state": e.vm_state,
            "created_at": iso(e.created_at),
            "current": e.current,
            "depth": e.depth,
            "automatic": e.automatic,
        }
        for e in entries
    ]


def vm_json(vm: VirtualMachine) -> dict[str, Any]:
    return {
        "id": str(vm.id),
        "name": vm.name,
        "state": vm.state.value,
        "config_version": vm.config_version,
        "checkpoint_type": vm.checkpoint_type.value,
        "automatic_checkpoints": vm.automatic_checkpoints,
        "disks": [
            {"name": d.name, "format": d.format.value, "base_file": d.base_file} for d in vm.disks
        ],
        "checkpoints": len(vm.checkpoints),
        "current": _id(vm.current),
        "version": vm.version,
        "retention": vm.retention or None,
        "purged_points": len(vm.purged),
        "hyperv_id": vm.hyperv_id or None,
    }


def chain_json(
    vm: VirtualMachine, checkpoint: UUID | None, chains: dict[str, list[ChainEntry]]
) -> dict[str, Any]:
    return {
        "vm": vm.name,
        "checkpoint": _id(checkpoint),
        "disks": {
            disk: [
                {
                    "file": e.file,
                    "parent": e.parent,
                    "layer": str(e.layer),
                    "frozen_by": e.frozen_by,
                    "running": e.running,
                }
                for e in entries
            ]
            for disk, entries in chains.items()
        },
    }


def files_json(files: Sequence[StateFile]) -> list[dict[str, Any]]:
    return [{"path": f.path, "kind": f.kind.value, "memory": f.memory} for f in files]


def log_json(entries: Iterable[AuditEntry]) -> list[dict[str, Any]]:
    return [
        {
            "position": e.position,
            "time": iso(e.time),
            "actor": e.actor,
            "host": e.host,
            "vm": e.vm,
            "vm_id": str(e.vm_id),
            "operation": e.operation,
            "checkpoint": e.checkpoint,
            "details": e.details,
            "link": None if e.link is None else e.link.hex(),
        }
        for e in entries
    ]
