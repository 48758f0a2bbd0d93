"""What ckpt reads from (and writes to) a Hyper-V configuration file.

Terms:
    VM configuration          ``Virtual Machines/<VM GUID>.vmcx|.xml``: the VM as
                              it runs now ("Now"); ``parent`` is the *current*
                              checkpoint (the one Now descends from), or None.
    checkpoint configuration  ``Snapshots/<checkpoint GUID>.vmcx|.xml``: the VM as
                              the checkpoint froze it; ``parent`` is the parent
                              checkpoint, ``vm_id`` the VM it belongs to.
    disk path                 the Windows path of a virtual hard disk the
                              configuration attaches, as written (a checkpoint
                              names the file it froze; the VM the running layer).
    state file path           a Windows path of the VMRS (2016+), or the VSV and
                              BIN (2012 R2), the configuration names.

Every field a file may lack is optional: a reader fills what the bytes hold and
leaves the rest None or empty, and says what it could not read in ``problems``
(one line each, naming the key or element) instead of failing, as long as the
file's own structure is sound. A structurally damaged file is an error
(``ckpt.domain.errors.ConfigurationError``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID


class FileKind(enum.StrEnum):
    VM = "vm"  # Virtual Machines/<GUID>.*
    CHECKPOINT = "checkpoint"  # Snapshots/<GUID>.*


class CheckpointKind(enum.StrEnum):
    """What a checkpoint configuration says about how it was taken (Hyper-V's
    names: a *standard* one holds memory when the VM ran, a *production* one
    never; *recovery*/*replica* ones are made by backup and replication and are
    not user checkpoints)."""

    STANDARD = "standard"
    PRODUCTION = "production"
    RECOVERY = "recovery"
    REPLICA = "replica"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ConfiguredDisk:
    """One virtual hard disk a configuration attaches.

    ``location``: where it is attached, as the file says it (e.g. ``ide0/0`` for
    IDE controller 0 drive 0, ``scsi0/1``); ``path``: the Windows path as written.
    """

    location: str
    path: str


@dataclass(frozen=True)
class Configuration:
    kind: FileKind
    format: str  # "vmcx" or "xml"
    id: UUID | None  # the VM's id (kind VM) or the checkpoint's id (kind CHECKPOINT)
    name: str | None
    version: str | None = None  # configuration version, "9.0", "5.0"
    vm_id: UUID | None = None  # a checkpoint: the VM it belongs to
    parent: UUID | None = None  # VM: current checkpoint; checkpoint: its parent checkpoint
    created_at: datetime | None = None  # timezone-aware (UTC)
    checkpoint_kind: CheckpointKind | None = None  # checkpoints only
    disks: tuple[ConfiguredDisk, ...] = ()
    state_files: tuple[str, ...] = ()  # Windows paths of VMRS / VSV / BIN named in the file
    saved_memory: bool | None = (
        None  # a checkpoint: its runtime state holds memory (None: not said)
    )
    writer: str | None = None  # "ckpt" when ckpt wrote the file (a marker key), else None
    problems: tuple[str, ...] = field(default=())
