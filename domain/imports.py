"""What an import of a Hyper-V folder recorded about its source.

Terms:
- *Hyper-V id*: the VM's id in Hyper-V (its ``Virtual Machines/<GUID>`` file
  name and global id). A ckpt VM's own id follows from its name (``vm_id``), so
  the Hyper-V id is kept beside it: an export writes the VM's configuration
  under it, and ``ckpt vm show`` names it.
- *imported checkpoint*: a checkpoint recreated from a Hyper-V folder with the
  id, name, creation time and type its configuration file holds (Hyper-V's, not
  ours), or, where the file is missing or damaged, inferred from the disk files.
- *notes*: one line per checkpoint (and for Now) saying where its name, place
  in the tree and state files came from: ``configuration`` or ``disk tree``,
  with why when it is the latter. They are part of the audit trail, so an
  auditor sees which facts were read and which were guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from uuid import UUID

from .captures import FileCapture
from .checkpoint_rules import check_limit
from .errors import AlreadyExists, InvalidValue
from .naming import check_findable_name
from .state_files import state_files
from .values import Checkpoint, CheckpointType, Origin, VMState
from .vm import VirtualMachine, _derived_id, _new_layer


class HyperVFolderImported(VirtualMachine.Event):
    """``ckpt import hyperv`` read ``folder``; ``hyperv_id`` is the VM's Hyper-V id
    ("" when no VM configuration was read), ``configuration`` the format read
    ("vmcx", "xml", or "" for none)."""

    TOPIC = "ckpt.domain.imports:HyperVFolderImported"
    folder: str
    hyperv_id: str
    configuration: str
    notes: tuple[str, ...]

    def apply(self, vm: VirtualMachine) -> None:
        vm.hyperv_id = self.hyperv_id


@dataclass(frozen=True)
class ImportedCheckpoint:
    """A checkpoint as a Hyper-V folder describes it. ``id`` None: a new id.
    ``vm_state``: RUNNING when its memory was saved (a 5.0 BIN file or a VMRS
    the configuration says holds memory), else OFF."""

    name: str
    id: UUID | None
    created_at: datetime | None
    type: CheckpointType
    vm_state: VMState


def import_checkpoint(
    vm: VirtualMachine, origin: Origin, imported: ImportedCheckpoint
) -> Checkpoint:
    """Record a checkpoint found in a Hyper-V folder: it freezes the running layers
    like Checkpoint-VM, but keeps the folder's id, name, time and type (history
    as it happened, so no type fallback applies)."""
    check_findable_name(imported.name, "checkpoint")
    if imported.type not in (CheckpointType.STANDARD, CheckpointType.PRODUCTION):
        raise InvalidValue(f"an imported checkpoint is standard or production, not {imported.type}")
    cid = imported.id or _derived_id(origin, "checkpoint")
    if cid in vm.checkpoints:
        raise AlreadyExists(
            f"two checkpoints of the folder have the id {cid} "
            f"({vm.checkpoints[cid].name!r} and {imported.name!r})"
        )
    check_limit(vm.name, len(vm.checkpoints))  # Hyper-V's 50 hold for a folder too
    memory = imported.type is CheckpointType.STANDARD and imported.vm_state is not VMState.OFF
    checkpoint = Checkpoint(
        id=cid,
        name=imported.name,
        parent=vm.current,
        created_at=imported.created_at or origin.at,
        type=imported.type,
        vm_state=imported.vm_state,
        config_version=vm.config_version,
        layers=tuple((d.name, vm.running[d.name]) for d in vm.disks),
        state_files=state_files(cid, vm.config_version, memory),
        automatic=False,
    )
    new_layers = tuple(_new_layer(origin, "layer", d, vm.running[d.name]) for d in vm.disks)
    vm._trigger(
        origin,
        vm.CheckpointCreated,
        checkpoint=checkpoint,
        requested_type=imported.type,
        fell_back=False,
        new_layers=new_layers,
    )
    return checkpoint


def record_import(
    vm: VirtualMachine,
    origin: Origin,
    folder: str,
    hyperv_id: UUID | None,
    configuration: str,
    notes: Sequence[str],
) -> None:
    vm._trigger(
        origin,
        HyperVFolderImported,
        folder=folder,
        hyperv_id="" if hyperv_id is None else str(hyperv_id),
        configuration=configuration,
        notes=tuple(notes),
    )


def attach_state_files(
    vm: VirtualMachine, origin: Origin, checkpoint: Checkpoint, files: Sequence[FileCapture]
) -> None:
    """The state files found beside an imported checkpoint, under Hyper-V's names."""
    for f in files:
        vm.check_file_role(f.role, checkpoint.has_memory)
    vm._trigger(
        origin,
        vm.StateContentRecorded,
        checkpoint_id=checkpoint.id,
        files=tuple(replace(f, path=vm._role_path(checkpoint, f.role)) for f in files),
    )
