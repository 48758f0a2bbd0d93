"""The tree ``ckpt mount`` shows: VMs, their points, and each point's files.

Terms:
- *view*: ``DIR/<vm>/<point>/`` holding ``<disk>.raw`` per disk with content,
  ``memory.bin`` when the point captured memory, and the state files under
  their Hyper-V names (``Snapshots/<GUID>.vmcx``, ...: their own folders).
  ``<point>`` is each live checkpoint and backup point, and ``Now`` (the running
  state as last captured), as of the mount or of ``--at``.
- *escaping*: a name is shown as it is, except that ``%``, ``/`` and NUL become
  ``%25``, ``%2F`` and ``%00``, and ``.`` and ``..`` become ``%2E`` and
  ``%2E%2E`` (a file name cannot hold ``/`` or be a dot). A point whose
  escaped name another point of the VM also has (Hyper-V allows two checkpoints
  of one name), or that is named ``Now``, is shown as ``<name> [<id>]``, the id
  that ``ckpt restore VM ID`` takes. Any other name already taken in its folder
  gets `` (2)``, `` (3)``, ...
- *file node*: the manifests a file's bytes are read from (a disk's chain, or
  one file's manifest), its size once known, and its reader while open.

The tree is built once, in the thread that mounts (the queries replay events);
a file's size and reader are loaded on first use, in FUSE's threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

from ckpt.domain import (
    BackupPoint,
    Checkpoint,
    FileRole,
    UnknownVM,
    VirtualMachine,
)
from ckpt.storage.chunks import ChunkStore
from ckpt.storage.disk_reader import DiskReader
from ckpt.storage.manifest_cache import chain_manifest_ids
from ckpt.storage.manifest_restore import load_state

from . import queries
from .restore_ops import NOW, RestorePoint, now_of, point_of
from .unit_of_work import UnitOfWork

MEMORY = "memory.bin"


def escape(name: str) -> str:
    """A name as a file name (the module docstring's rule)."""
    out = name.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")
    if out in (".", ".."):
        return "%2E" * len(out)
    return out or "%"


@dataclass
class FileNode:
    refs: list[bytes]
    mtime: float
    size: int | None = None
    _reader: DiskReader | None = None
    _users: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _open(self, chunks: ChunkStore) -> DiskReader:
        state = load_state(self.refs, chunks)
        if state is None:  # pragma: no cover - nodes are made only for captured content
            raise AssertionError("a mounted file without manifests")
        return DiskReader(state, chunks.get_views)

    def stat_size(self, chunks: ChunkStore) -> int:
        if self.size is None:
            with self._lock:
                if self.size is None:
                    state = load_state(self.refs, chunks)
                    self.size = 0 if state is None else state.size
        return self.size

    def acquire(self, chunks: ChunkStore) -> DiskReader:
        """The file's reader, opened by the first user (its caches live while open)."""
        with self._lock:
            if self._reader is None:
                self._reader = self._open(chunks)
                self.size = self._reader.size
            self._users += 1
            return self._reader

    @property
    def reader(self) -> DiskReader | None:
        """The open reader (None once the last user released it)."""
        return self._reader

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users <= 0 and self._reader is not None:
                self._reader.close()
                self._reader, self._users = None, 0


@dataclass
class DirNode:
    mtime: float
    children: dict[str, DirNode | FileNode] = field(default_factory=dict)

    def add(self, name: str, node: DirNode | FileNode) -> DirNode | FileNode:
        unique, n = name, 1
        while unique in self.children:
            n += 1
            unique = f"{name} ({n})"
        self.children[unique] = node
        return node

    def folder(self, name: str) -> DirNode:
        found = self.children.get(name)
        if isinstance(found, DirNode):
            return found
        made = DirNode(self.mtime)
        self.add(name, made)
        return made


def _stamp(when: datetime | None, default: float) -> float:
    return default if when is None else when.timestamp()


def _point_dir(point: RestorePoint, mtime: float) -> DirNode:
    folder = DirNode(mtime)
    for disk, layer in point.layers.items():
        refs = chain_manifest_ids(point.vm, layer)
        if refs:  # a disk never captured up to this point has no bytes to show
            folder.add(f"{escape(disk)}.raw", FileNode(refs, mtime))
    for f in point.files:
        if f.role is FileRole.MEMORY:
            folder.add(MEMORY, FileNode([f.manifest], mtime, f.size))
        if f.path:  # 2016+ memory lives inside the VMRS: memory.bin only
            *parents, leaf = [escape(part) for part in f.path.split("/")]
            where = folder
            for part in parents:
                where = where.folder(part)
            where.add(leaf, FileNode([f.manifest], mtime, f.size))
    return folder


def _vm_dir(uow: UnitOfWork, v: VirtualMachine, now: float) -> DirNode:
    folder = DirNode(now)
    found: list[Checkpoint | BackupPoint] = [*v.checkpoints.values(), *v.backup_points.values()]
    purged = uow.app.get_vm(v.id).purged  # as the log is now, whatever v's moment
    names = [escape(p.name) for p in found]
    for p, name in zip(found, names, strict=True):
        if names.count(name) > 1 or name == NOW:
            name = f"{name} [{p.id}]"
        if p.id in purged:
            continue  # purged by retention (ckpt forget): no bytes to show
        folder.add(name, _point_dir(point_of(uow, v, p, True), _stamp(p.created_at, now)))
    folder.add(NOW, _point_dir(now_of(v), now))
    return folder


def build(
    uow: UnitOfWork,
    now: float,
    at: str | int | None = None,
    vm: str | None = None,
) -> DirNode:
    """The whole view, as of ``at``, or of one VM. Listed: the VMs registered
    now that existed then; a VM removed since is shown by naming it (``--vm``)
    with an ``at`` before its removal."""
    root = DirNode(now)
    if vm is not None:
        v = queries.vm(uow, vm, at=at)
        root.add(escape(v.name), _vm_dir(uow, v, now))
        return root
    for current in queries.vms(uow):
        try:
            v = queries.vm(uow, current.id, at=at)
        except UnknownVM:  # registered after ``at``
            continue
        root.add(escape(v.name), _vm_dir(uow, v, now))
    return root


def lookup(root: DirNode, path: str) -> DirNode | FileNode | None:
    """The node at a FUSE path ("/", "/vm/point/Boot.raw")."""
    node: DirNode | FileNode = root
    for part in path.split("/"):
        if not part:
            continue
        if not isinstance(node, DirNode):
            return None
        found = node.children.get(part)
        if found is None:
            return None
        node = found
    return node
