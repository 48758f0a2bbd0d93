"""The one error hierarchy of ckpt.

Every error a user can meet is a ``CkptError``; the CLI maps each class to a
stable exit code in ``ckpt.exit_codes`` (one table), and the Python API raises
them unchanged. Adapters translate sqlite3 / eventsourcing errors at their edge.

    CkptError
    ├── DomainError                  a rule of the model refused the operation
    │   ├── NotFound
    │   │   ├── UnknownVM
    │   │   └── UnknownCheckpoint
    │   ├── AmbiguousName            a name or id matching several VMs or points
    │   ├── InvalidValue             a name, version or option outside its range
    │   │   └── SourceChanged        an image or file changed while it was captured
    │   ├── NotAllowed               not allowed in the VM's present state
    │   ├── AlreadyExists            a VM with that name is registered
    │   ├── CaptureOutdated          content was compared against a state that has moved on
    │   └── PointPurged              a point's content was purged by retention (`ckpt forget`)
    └── StorageError                 the store itself could not do the work
        ├── StoreNotFound            no store at the given place (run `ckpt init`)
        ├── StoreExists              `ckpt init` on an existing store
        ├── StoreConflict            another writer changed the VM first
        ├── StoreClosed              a Store used after its close()
        ├── StoreCorrupt             stored bytes could not be decoded
        ├── WrongKey                 an encrypted store opened without its key
        ├── ChunkMissing             a chunk id, or a backend object, is not there
        ├── ChunkCorrupt             a chunk does not decompress or hash to its id
        ├── PackCorrupt              a pack file's header, table or trailer is damaged
        ├── IndexCorrupt             an index file is damaged (`rebuild_index` repairs)
        ├── OutputFailed             a restore's output could not be written (disk full, I/O)
        ├── StoreFull                no space (or quota) left where the store writes
        ├── StoreReadOnly            the store is on read-only media and the command writes
        ├── StoreIOError             the store's media failed a read or write (EIO, ...)
        ├── ConfigurationError       a Hyper-V configuration file (VMCX, XML) is damaged
        ├── ReplicaDiverged          a replica's log is not a prefix of its primary's
        ├── StoreIsReplica           a command that writes, on a replica (`replica promote` first)
        └── VhdxError                a VHDX/AVHDX or VHD/AVHD file could not be read or written
            ├── VhdxCorrupt          a structure is damaged, truncated or inconsistent
            ├── VhdxUnsupported      valid VHDX we refuse (non-empty log, unknown
            │                        required region or item, unwritable parameters)
            └── VhdxChainMismatch    the files given as a chain do not link up
"""

from __future__ import annotations


class CkptError(Exception):
    """Root of every error ckpt raises on purpose."""


class DomainError(CkptError):
    """A rule of the checkpoint model refused the operation."""


class NotFound(DomainError):
    """Something named by the caller does not exist."""


class UnknownVM(NotFound):
    """No VM with that name or id is registered."""


class UnknownCheckpoint(NotFound):
    """The VM has no live checkpoint with that name or id."""


class AmbiguousName(DomainError):
    """A reference matches several VMs, checkpoints or backup points (a repeated
    name, or a name that is another one's id); use the id instead."""


class InvalidValue(DomainError):
    """A name, version or option is outside the range Hyper-V accepts."""


class SourceChanged(InvalidValue):
    """A source changed while it was being captured (it ended early, or its size,
    modification time or inode moved): nothing was recorded. A live image needs a
    snapshot (VSS, LVM, qemu) to be captured consistently; capturing again may work."""


class NotAllowed(DomainError):
    """The operation is not allowed in the VM's present state or settings."""


class AlreadyExists(DomainError):
    """A VM with that name is already registered in this store."""


class CaptureOutdated(DomainError):
    """A capture was diffed against layer content another writer has since changed."""


class PointPurged(DomainError):
    """A point's content was purged (``ckpt forget``): its place in the tree and the
    log stays, its bytes are gone or going (``ckpt forget --undo`` until gc)."""


class StorageError(CkptError):
    """The store could not carry out the work."""


class StoreNotFound(StorageError):
    """There is no ckpt store at the given location."""


class StoreExists(StorageError):
    """A ckpt store already exists at the given location."""


class StoreConflict(StorageError):
    """Another writer changed the same VM between our read and our write."""


class StoreBusy(StoreConflict):
    """The event store stayed locked by other writers past the lock timeout."""


class StoreClosed(StorageError):
    """A ``Store`` was used after ``close()`` (its connections are gone)."""


class StoreCorrupt(StorageError):
    """Stored bytes (an event, a record) could not be decoded."""


class StoreUnavailable(StorageError):
    """A server of the store (PostgreSQL, S3) cannot be reached or refused us."""


class StoreMismatch(StorageError):
    """The event store and the chunk storage named belong to different stores."""


class WrongKey(StorageError):
    """An encrypted store was opened without a key, or with another store's key."""


class ChunkMissing(StorageError):
    """A chunk id is not in the chunk index, or a backend object (a pack, an
    index file) is not where the index says it is."""


class ChunkCorrupt(StorageError):
    """A stored chunk is truncated, does not decompress, or its bytes do not
    hash to its chunk id."""


class PackCorrupt(StorageError):
    """A pack file's header, entry table or trailer is damaged or truncated, so
    the pack cannot be re-indexed from itself."""


class IndexCorrupt(StorageError):
    """An index file is damaged; ``ChunkStore.rebuild_index`` recreates it from
    its pack."""


class OutputFailed(StorageError):
    """Writing a restore's output failed (no space, quota, file too large, I/O
    error); the message names the file and the system's reason. The partial
    output was removed: the store itself is unharmed."""


class StoreFull(StorageError):
    """The store's device, quota or server has no room for a write (ENOSPC,
    EDQUOT, EFBIG; SQLite's "database or disk is full"; PostgreSQL's disk_full;
    an S3 quota or size refusal). The message names where and how many bytes
    the failed write needed. Nothing the command was writing is recorded: its
    packs are unreferenced (``gc`` reclaims them), its event is not saved."""


class StoreReadOnly(StorageError):
    """The store is on a read-only file system (or in a directory this user may
    not write) and the command needs to write: refused before any work. Every
    read command (list, show, tree, log, verify, restore, export, copy from it)
    still works."""


class StoreIOError(StorageError):
    """The store's media failed an I/O request (EIO, ENXIO, EREMOTEIO, ENOMEDIUM,
    EUCLEAN: a bad sector, a vanished device, a damaged file system). The message
    names the object (``name``: a pack, an index file) and the file, and, where
    a use case could find them, the checkpoints and backup points it affects."""

    def __init__(self, message: str, name: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.name = name  # the backend object that failed, if one did
        self.path = path  # its file, where it has one
        self.explained = False  # the affected checkpoints are in the message already


class ReplicaDiverged(StorageError):
    """A replica's log is not a prefix of its primary's: the replica's last hash
    link differs from the primary's link at that position (recomputed from the
    primary's stored events), or the replica holds events the primary lacks.
    Nothing was appended; the message names the first position that differs."""


class StoreIsReplica(StorageError):
    """A command that writes was given a replica (``ckpt replicate``'s target):
    it takes events only from its primary until ``ckpt replica promote``."""


class ConfigurationError(StorageError):
    """A Hyper-V configuration file (VMCX/VMRS key tree, or a 2012 R2 XML file)
    is damaged: a bad signature, checksum or offset, a truncated table, a value of
    the wrong type. The message names the file and the structure or key."""


class VhdxError(StorageError):
    """A VHDX or AVHDX file (and, with the same exit codes, a VHD or AVHD file)
    could not be read or written; the message names the file and the structure
    (header, region table, metadata item, BAT entry; footer, dynamic header)."""


class VhdxCorrupt(VhdxError):
    """A VHDX structure is damaged: a bad signature or checksum, an offset or
    length outside the file, or fields that contradict each other."""


class VhdxUnsupported(VhdxError):
    """A well-formed VHDX uses something ckpt refuses: a log that still holds
    entries (ckpt does not replay logs), an unknown required region or metadata
    item, another format version; or a writer parameter VHDX cannot express."""


class VhdxChainMismatch(VhdxError):
    """Files given as a differencing chain do not link: a child's parent
    linkage is not its parent's DataWriteGuid, the sizes differ, or the last
    file is not a base disk."""
