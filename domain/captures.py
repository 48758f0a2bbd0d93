"""Facts about captured content: which manifest holds which layer's or file's bytes.

Terms:
- *manifest*: a block map kept in the chunk store (``ckpt.storage.manifest``),
  named by the 32-byte id of its root chunk. Events hold manifest ids, never bytes.
- *layer content*: the manifests recorded for one layer, oldest first. A
  disk's bytes at a layer are the base zeros, then each layer of its chain
  from the base down, each manifest of a layer in order, later blocks
  replacing earlier ones. A capture appends one manifest (the blocks that
  differ from what the chain held); a merge of child into parent appends the
  child's manifests to the parent's, which is exactly what Merge-VHD writes.
- *file capture*: a checkpoint's state file or memory image, one manifest each.
- *role*: what a captured file is for: ``config`` (VMCX/XML), ``runtime-state``
  (VMRS), ``device-state`` (VSV), ``memory`` (the memory image; the BIN file on
  5.0, inside the VMRS on 2016+).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID


class FileRole(enum.StrEnum):
    CONFIG = "config"
    RUNTIME_STATE = "runtime-state"
    DEVICE_STATE = "device-state"
    MEMORY = "memory"


@dataclass(frozen=True)
class DiskCapture:
    """One disk's running layer content recorded at a checkpoint or backup point.

    ``base`` is how many manifests the layer held when the capture was
    compared against it: a capture made against another writer's older view
    is refused rather than recorded on top of newer content.
    """

    disk: str
    layer: UUID
    manifest: bytes
    base: int
    virtual_size: int
    block_size: int
    changed_blocks: int
    read_bytes: int
    added_bytes: int


@dataclass(frozen=True)
class FileCapture:
    role: FileRole
    path: str
    manifest: bytes
    size: int
    added_bytes: int


@dataclass(frozen=True)
class BackupPoint:
    """A moment, not a checkpoint, whose running state was recorded (``ckpt sync``).

    ``version`` is the VM's event version right after the point was recorded:
    the VM as of that version holds the chains to restore.
    """

    id: UUID
    name: str
    created_at: datetime
    version: int


@dataclass(frozen=True)
class PurgedPoint:
    """A point whose content a purge gives up (``ckpt forget``): a backup point
    (``kind`` "backup point") or a checkpoint, live or deleted from the tree."""

    id: UUID
    kind: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class PurgeMark:
    """Why ``point``'s content is purged: the VM version of the purge event (what
    ``PurgeReclaimed`` and ``PurgeWithdrawn`` name), the policy, the actor."""

    point: UUID
    version: int
    policy: str
    actor: str
    at: datetime
