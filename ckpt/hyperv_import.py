"""``ckpt import hyperv DIR``: a Hyper-V VM folder becomes a VM, its checkpoint tree and content.

What the files tell: every ``.vhdx`` without a parent is a disk's base; every
``.avhdx`` names its parent (DataWriteGuid, relative and absolute path), so
the files of one disk form a tree. A file with children, or a leaf that is
not the newest leaf, was frozen by a checkpoint; the newest leaf (by
modification time) is the running layer, Now. Which checkpoint froze which
file, the checkpoints' names and their state files are in the VMCX files,
which ckpt does not parse: checkpoints are named after their disk file
(``Imported <file>``) and state files are not attached to them.

The tree is rebuilt by replaying it: for each file, base first, its content
is imported into the running layer (a capture of the chain read through that
file, so only what the file changes is recorded), then a checkpoint freezes
it; a second child is reached by applying its parent's checkpoint first. A
VM with several disks is imported when every disk's files form the same
chain shape (the common case: each checkpoint froze every disk at once);
otherwise only each disk's current chain is imported, without checkpoints.
Every file is opened and checked, and every chain link (a child's parent
DataWriteGuid, size and sector size) too, before any content is read; the VM is
built in memory and saved with all its events in one transaction at the end, so
a failure at any step (a swapped parent, a file damaged past its headers)
records nothing and a retry starts afresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ckpt.domain import (
    Checkpoint,
    CheckpointType,
    DiskFormat,
    InvalidValue,
    NotFound,
    VirtualMachine,
)
from ckpt.domain.errors import VhdxError
from ckpt.storage.vhdx import VhdxReader
from ckpt.storage.vhdx_files import find_parent, open_vhdx_chain

from . import commands
from .capture_ops import capture_disk_file
from .hyperv_export import safe_folder_name
from .unit_of_work import UnitOfWork


@dataclass
class DiskFile:
    path: Path
    parent: DiskFile | None
    children: list[DiskFile] = field(default_factory=list)

    @property
    def mtime(self) -> float:
        return self.path.stat().st_mtime


@dataclass
class ImportReport:
    vm: str
    disks: list[str]
    checkpoints: list[str]
    files: int


def scan(directory: Path) -> dict[Path, DiskFile]:
    """Every VHDX/AVHDX below ``directory``, checked, each linked to its parent."""
    if not directory.exists():  # rglob finds nothing there either: say what is wrong
        raise NotFound(f"cannot read folder {str(directory)!r}: No such file or directory")
    paths = sorted(
        p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in (".vhdx", ".avhdx")
    )
    for p in directory.rglob("*"):
        if p.is_file() and p.suffix.lower() in (".vhd", ".avhd"):
            raise VhdxError(f"{p}: VHD disks are not supported (VHDX only)")
    if not paths:
        raise InvalidValue(f"no .vhdx or .avhdx files below {directory}")
    nodes: dict[Path, DiskFile] = {}
    parents: dict[Path, Path | None] = {}
    for p in paths:
        with p.open("rb") as f:
            reader = VhdxReader(f, str(p))
            parents[p.resolve()] = (
                find_parent(p, reader.parent_locator or {}).resolve() if reader.has_parent else None
            )
        nodes[p.resolve()] = DiskFile(p, None)
    for p, parent in parents.items():
        if parent is None:
            continue
        if parent not in nodes:
            raise VhdxError(f"{p}: its parent {parent} is not in {directory}")
        nodes[p].parent = nodes[parent]
        nodes[parent].children.append(nodes[p])
    for node in nodes.values():  # a cycle never reaches a base
        seen = set()
        walk: DiskFile | None = node
        while walk is not None:
            if id(walk) in seen:
                raise VhdxError(f"{node.path}: a cycle of parents")
            seen.add(id(walk))
            walk = walk.parent
    for node in nodes.values():
        node.children.sort(key=lambda c: c.mtime)
    for node in nodes.values():  # every link checked: each leaf's chain down to its base
        if not node.children:
            _, opened, _ = open_vhdx_chain(node.path, directory)
            for done in opened:
                done.close()
    return nodes


def _shape(base: DiskFile) -> list[int]:
    """Children counts in depth-first order: equal shapes pair the disks' files."""
    out = [len(base.children)]
    for child in base.children:
        out += _shape(child)
    return out


def _now_leaf(base: DiskFile) -> DiskFile:
    leaves = []
    stack = [base]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if not node.children:
            leaves.append(node)
    return max(leaves, key=lambda n: n.mtime)


def import_folder(uow: UnitOfWork, directory: Path, name: str | None = None) -> ImportReport:
    uow.writable("import hyperv")
    nodes = scan(directory)
    bases = sorted((n for n in nodes.values() if n.parent is None), key=lambda n: n.path.name)
    vm_name = name or safe_folder_name(directory.resolve().name)
    disk_names = [b.path.stem for b in bases]
    vm = commands.new_vm(
        uow,
        vm_name,
        [(d, DiskFormat.VHDX) for d in disk_names],
        checkpoint_type=CheckpointType.STANDARD,
    )
    importer = _Importer(uow, vm, directory)
    same_shape = len({tuple(_shape(b)) for b in bases}) == 1
    checkpoints: list[str] = []
    # A write lease from the first pack to the commit, as every capture holds one:
    # a gc meanwhile keeps the chunks the import writes or reuses (decision 0006).
    with uow.chunks.write_lease() as lease:
        if same_shape:
            now = [_now_leaf(b) for b in bases]
            _replay(importer, disk_names, bases, now, checkpoints)
        else:
            for disk, base in zip(disk_names, bases, strict=True):
                importer.import_disk(disk, _now_leaf(base).path)
        lease.check()
        commands.save_new_vm(uow, vm)  # every event at once, or none
    return ImportReport(vm_name, disk_names, checkpoints, len(nodes))


class _Importer:
    """The replay's steps on a VM that is not saved yet: each disk file's content
    is captured (its chunks written; unreferenced ones go at the next gc if the
    import fails) and recorded as an event of the unsaved VM."""

    def __init__(self, uow: UnitOfWork, vm: VirtualMachine, root: Path) -> None:
        self.uow, self.vm, self.root = uow, vm, root

    def import_disk(self, disk: str, path: Path) -> None:
        capture = capture_disk_file(self.uow, self.vm, disk, path, root=self.root)
        self.vm.import_disk_content(self.uow.origin(), capture)

    def create_checkpoint(self, label: str) -> Checkpoint:
        return self.vm.create_checkpoint(self.uow.origin(), label)

    def apply_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.vm.apply_checkpoint(self.uow.origin(), checkpoint.id)


def _on_path(node: DiskFile, leaf: DiskFile) -> bool:
    walk: DiskFile | None = leaf
    while walk is not None:
        if walk is node:
            return True
        walk = walk.parent
    return False


def _replay(
    importer: _Importer,
    disks: list[str],
    files: list[DiskFile],
    now: list[DiskFile],
    checkpoints: list[str],
) -> None:
    """Import ``files`` (one per disk, same place in each tree), then their children."""
    for disk, node in zip(disks, files, strict=True):
        importer.import_disk(disk, node.path)
    if files[0] is now[0]:
        return  # the running layer: Now, not a checkpoint
    label = f"Imported {files[0].path.name}"[:100]
    cp = importer.create_checkpoint(label)
    checkpoints.append(label)
    kids = list(zip(*(f.children for f in files), strict=True))
    # the branch that leads to Now last, so the replay ends on it
    kids.sort(key=lambda group: _on_path(group[0], now[0]))
    for i, group in enumerate(kids):
        if i > 0:  # a second branch starts again from this checkpoint
            importer.apply_checkpoint(cp)
        _replay(importer, disks, list(group), now, checkpoints)
