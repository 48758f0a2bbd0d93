"""The disk chain of one VM: per disk, the files from the base disk to a leaf.

The leaf is the running layer (Now) or, for a checkpoint, the layer it points
to. Each entry names its parent file and what holds it: ``frozen_by`` (the
live checkpoint that points to it, if any) and ``running``.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from ckpt.domain import VirtualMachine


@dataclass(frozen=True)
class ChainEntry:
    file: str
    parent: str | None
    layer: UUID
    frozen_by: str | None
    running: bool


def disk_chains(vm: VirtualMachine, checkpoint: UUID | None = None) -> dict[str, list[ChainEntry]]:
    frozen = {lid: cp.name for cp in vm.checkpoints.values() for _, lid in cp.layers}
    running = set(vm.running.values())
    out: dict[str, list[ChainEntry]] = {}
    for disk in vm.disks:
        layers = vm.chain(disk.name, checkpoint)
        out[disk.name] = [
            ChainEntry(
                file=layer.file,
                parent=layers[i - 1].file if i else None,
                layer=layer.id,
                frozen_by=frozen.get(layer.id),
                running=layer.id in running,
            )
            for i, layer in enumerate(layers)
        ]
    return out
