"""Value types of the checkpoint model.

Terms:
- *VM state*: off, running, saved (memory written to disk, VM stopped) or
  paused (Suspend-VM: the guest stops running, its memory stays in RAM).
- *checkpoint type* (Set-VM -CheckpointType): the VM's setting; a checkpoint
  records the *effective* type, standard or production, after any fallback.
- *layer*: one file of a disk's chain: the base disk (``.vhdx``/``.vhd``) or a
  differencing layer (``.avhdx``/``.avhd``) whose parent is another layer.
- *running layer*: the layer the VM writes to now ("Now" in Hyper-V Manager).
- *frozen layer*: the layer a checkpoint points to, read-only from then on.
- *origin*: who asked for an operation, from which host, and when; the
  application passes it in, so the domain has no clock.

All values are immutable; the aggregate replaces them rather than editing them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from .captures import BackupPoint, DiskCapture, FileCapture, FileRole, PurgedPoint, PurgeMark
from .errors import InvalidValue


class VMState(enum.StrEnum):
    OFF = "off"
    RUNNING = "running"
    SAVED = "saved"
    # New in issue 17: a log that holds it cannot be read by an older release
    # (its VMState has no "paused"); docs/decisions/0001.
    PAUSED = "paused"


class CheckpointType(enum.StrEnum):
    """The VM setting (Set-VM -CheckpointType)."""

    STANDARD = "standard"
    PRODUCTION = "production"
    PRODUCTION_ONLY = "production-only"
    DISABLED = "disabled"


class DiskFormat(enum.StrEnum):
    """The base disk's format; it decides the differencing layers' extension."""

    VHDX = "vhdx"
    VHD = "vhd"

    @property
    def differencing_extension(self) -> str:
        return "avhdx" if self is DiskFormat.VHDX else "avhd"


class StateFileKind(enum.StrEnum):
    VMCX = "vmcx"  # configuration, 2016+
    VMRS = "vmrs"  # runtime state: device state and memory, 2016+
    XML = "xml"  # configuration, 2012 R2
    VSV = "vsv"  # device state, 2012 R2, only with memory
    BIN = "bin"  # memory, 2012 R2, only with memory


@dataclass(frozen=True)
class Origin:
    """Who asked for an operation, where, and when; ``nonce`` seeds new ids."""

    actor: str
    host: str
    at: datetime
    nonce: UUID


@dataclass(frozen=True)
class Disk:
    """A virtual disk of a VM; ``base_file`` is the first file of its chain."""

    name: str
    format: DiskFormat
    base_file: str


@dataclass(frozen=True)
class Layer:
    """One file of one disk's chain; ``parent`` is None for the base disk."""

    id: UUID
    disk: str
    file: str
    parent: UUID | None


@dataclass(frozen=True)
class StateFile:
    """A checkpoint's configuration or state file, relative to the VM folder.

    ``memory`` says whether the file holds (or is) the guest's memory: a VMRS of
    a running VM's standard checkpoint does, a production checkpoint's does not.
    """

    path: str
    kind: StateFileKind
    memory: bool


@dataclass(frozen=True)
class Checkpoint:
    """A live checkpoint. ``layers`` maps each disk to the layer it points to.

    After a merge the layer a checkpoint points to can change (a child's data
    merged into its deleted parent's file); ``layers`` always names the file
    that holds the checkpoint's disk state now.
    """

    id: UUID
    name: str
    parent: UUID | None
    created_at: datetime
    type: CheckpointType
    vm_state: VMState
    config_version: str
    layers: tuple[tuple[str, UUID], ...]
    state_files: tuple[StateFile, ...]
    automatic: bool

    @property
    def has_memory(self) -> bool:
        """A standard checkpoint of a running, saved or paused VM holds its memory."""
        return self.type is CheckpointType.STANDARD and self.vm_state is not VMState.OFF

    def layer(self, disk: str) -> UUID:
        layers = dict(self.layers)
        if disk not in layers:
            raise InvalidValue(
                f"checkpoint {self.name!r} has no disk {disk!r} (disks: {', '.join(layers)})"
            )
        return layers[disk]


@dataclass(frozen=True)
class LayerMerge:
    """``source`` (a child layer) was merged into ``target`` (its parent).

    The source file is deleted; whatever pointed to it now points to target.
    """

    disk: str
    source: UUID
    source_file: str
    target: UUID
    target_file: str


@dataclass(frozen=True)
class LayerRemoval:
    """A layer file deleted outright (no dependants, or discarded on apply)."""

    disk: str
    layer: UUID
    file: str


VALUE_TYPES: tuple[type, ...] = (
    VMState,
    CheckpointType,
    DiskFormat,
    StateFileKind,
    Disk,
    Layer,
    StateFile,
    Checkpoint,
    LayerMerge,
    LayerRemoval,
    FileRole,
    DiskCapture,
    FileCapture,
    BackupPoint,
    PurgedPoint,
    PurgeMark,
)
"""Every value type that events or snapshots hold; the transcoder registers these."""
