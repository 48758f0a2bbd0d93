"""ckpt: an event-sourced checkpoint store for virtual machines.

The public Python API for embedding. Open a store with ``Store.open(path)``
(or create one with ``Store.init(path)``), then call its commands
(``register_vm``, ``create_checkpoint``, ``apply_checkpoint``, ...) and
queries (``tree``, ``chain``, ``files``, ``log``). Every error is a
``CkptError``; see ``ckpt.domain.errors`` for the hierarchy. Every type a
``Store`` method takes or returns is exported here: the reports of verify, gc,
copy and the log's hash chain, forget's ``Policy`` and ``ForgetPlan``, and the
``TypedDict`` shapes of the dicts that ``stats``, ``repair`` and ``info``
return (the JSON ``--json`` prints).
"""

from ckpt.domain import (
    AlreadyExists,
    AmbiguousName,
    BackupPoint,
    CaptureOutdated,
    Checkpoint,
    CheckpointType,
    ChunkCorrupt,
    ChunkMissing,
    CkptError,
    DiskCapture,
    DiskFormat,
    DomainError,
    FileCapture,
    FileRole,
    IndexCorrupt,
    InvalidValue,
    NotAllowed,
    NotFound,
    OutputFailed,
    PackCorrupt,
    PointPurged,
    ReplicaDiverged,
    SourceChanged,
    StateFile,
    StateFileKind,
    StorageError,
    StoreBusy,
    StoreClosed,
    StoreConflict,
    StoreCorrupt,
    StoreExists,
    StoreFull,
    StoreIOError,
    StoreIsReplica,
    StoreMismatch,
    StoreNotFound,
    StoreReadOnly,
    StoreUnavailable,
    UnknownCheckpoint,
    UnknownVM,
    VirtualMachine,
    VMState,
    WrongKey,
)
from ckpt.domain.retention import Duration, Policy
from ckpt.projections import AuditEntry, ChainEntry, JsonValue, TreeEntry
from ckpt.storage.chunks import GcReport, UpgradeReport, VerifyReport
from ckpt.storage.chunks.gc import GcDetails
from ckpt.storage.chunks.verify import AffectedCapture, BadChunk
from ckpt.storage.disk_reader import DiskReader
from ckpt.storage.log_chain import ChainReport
from ckpt.storage.sources import StreamSource
from ckpt.storage.state_diff import Extent

from .copy import CopyDetails, CopyReport
from .diff_ops import DiffPoint, DiskDiff, FileDiff, PointDiff
from .hyperv_import import ImportReport
from .maintenance import RepairReport, StoreInfo, StoreStats, TotalStats, VMStats
from .progress_factory import ProgressFactory, ProgressUpdate
from .replication import ReplicateDetails, ReplicateReport
from .report import ReportSummary
from .retention_ops import ForgetPlan, PointVerdict, VMPlan
from .store import Store
from .store_config import StoreConfig
from .unit_of_work import UnitOfWork

__version__ = "0.1.0"

__all__ = [
    "AffectedCapture",
    "AlreadyExists",
    "AmbiguousName",
    "AuditEntry",
    "BackupPoint",
    "BadChunk",
    "CaptureOutdated",
    "ChainEntry",
    "ChainReport",
    "Checkpoint",
    "CheckpointType",
    "ChunkCorrupt",
    "ChunkMissing",
    "CkptError",
    "CopyDetails",
    "CopyReport",
    "DiffPoint",
    "DiskCapture",
    "DiskDiff",
    "DiskFormat",
    "DiskReader",
    "DomainError",
    "Duration",
    "Extent",
    "FileCapture",
    "FileDiff",
    "FileRole",
    "ForgetPlan",
    "GcDetails",
    "GcReport",
    "ImportReport",
    "IndexCorrupt",
    "InvalidValue",
    "JsonValue",
    "NotAllowed",
    "NotFound",
    "OutputFailed",
    "PackCorrupt",
    "PointDiff",
    "PointPurged",
    "PointVerdict",
    "Policy",
    "ProgressFactory",
    "ProgressUpdate",
    "RepairReport",
    "ReplicaDiverged",
    "ReplicateDetails",
    "ReplicateReport",
    "ReportSummary",
    "SourceChanged",
    "StateFile",
    "StateFileKind",
    "StorageError",
    "Store",
    "StoreBusy",
    "StoreClosed",
    "StoreConfig",
    "StoreConflict",
    "StoreCorrupt",
    "StoreExists",
    "StoreFull",
    "StoreIOError",
    "StoreInfo",
    "StoreIsReplica",
    "StoreMismatch",
    "StoreNotFound",
    "StoreReadOnly",
    "StoreStats",
    "StoreUnavailable",
    "StreamSource",
    "TotalStats",
    "TreeEntry",
    "UnitOfWork",
    "UnknownCheckpoint",
    "UnknownVM",
    "UpgradeReport",
    "VMPlan",
    "VMState",
    "VMStats",
    "VerifyReport",
    "VirtualMachine",
    "WrongKey",
    "__version__",
]
