"""ckpt: an event-sourced checkpoint store for virtual machines.

The public Python API for embedding. Open a store with ``Store.open(path)``
(or create one with ``Store.init(path)``), then call its commands
(``register_vm``, ``create_checkpoint``, ``apply_checkpoint``, ...) and
queries (``tree``, ``chain``, ``files``, ``log``). Every error is a
``CkptError``; see ``ckpt.domain.errors`` for the hierarchy.
"""

from ckpt.domain import (
    AlreadyExists,
    AmbiguousName,
    Checkpoint,
    CheckpointType,
    ChunkCorrupt,
    ChunkMissing,
    CkptError,
    DiskFormat,
    DomainError,
    FileRole,
    IndexCorrupt,
    InvalidValue,
    NotAllowed,
    NotFound,
    OutputFailed,
    PackCorrupt,
    SourceChanged,
    StateFile,
    StateFileKind,
    StorageError,
    StoreBusy,
    StoreClosed,
    StoreConflict,
    StoreCorrupt,
    StoreExists,
    StoreMismatch,
    StoreNotFound,
    StoreUnavailable,
    UnknownCheckpoint,
    UnknownVM,
    VirtualMachine,
    VMState,
    WrongKey,
)
from ckpt.projections import AuditEntry, ChainEntry, TreeEntry

from .store import Store

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "AmbiguousName",
    "AuditEntry",
    "ChainEntry",
    "Checkpoint",
    "CheckpointType",
    "ChunkCorrupt",
    "ChunkMissing",
    "CkptError",
    "DiskFormat",
    "DomainError",
    "FileRole",
    "IndexCorrupt",
    "InvalidValue",
    "NotAllowed",
    "NotFound",
    "OutputFailed",
    "PackCorrupt",
    "SourceChanged",
    "StateFile",
    "StateFileKind",
    "StorageError",
    "Store",
    "StoreBusy",
    "StoreClosed",
    "StoreConflict",
    "StoreCorrupt",
    "StoreExists",
    "StoreMismatch",
    "StoreNotFound",
    "StoreUnavailable",
    "TreeEntry",
    "UnknownCheckpoint",
    "UnknownVM",
    "VMState",
    "VirtualMachine",
    "WrongKey",
    "__version__",
]
