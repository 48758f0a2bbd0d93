"""Hyper-V export: a checkpoint as a Hyper-V VM folder, a disk as one VHDX.

(Reading VHDX chains for import is ``storage/vhdx_files.py``; importing a
whole Hyper-V folder is ``hyperv_import.py``.)

Terms: a *layer's own runs* are the (offset, bytes) where the chain's state
at the end of the layer differs from its state at the end of the parent
layer (``disk_state.diff``, segment by segment), in order; in a base VHDX a
block recorded as zero needs no data (the file reads as zero there), in a
differencing AVHDX it must be written as zero sectors, or the parent's bytes
would show through. A *Hyper-V folder* is ``<VM>/Virtual Hard Disks/`` (the
base VHDX and the AVHDX chain, each child naming its parent by DataWriteGuid,
relative path and absolute Windows path) and ``<VM>/Snapshots/`` (the captured
state files under their Hyper-V names).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path, PureWindowsPath
from typing import BinaryIO
from uuid import NAMESPACE_URL, UUID, uuid5

from ckpt.domain import (
    AlreadyExists,
    Checkpoint,
    Disk,
    DiskFormat,
    FileRole,
    InvalidValue,
    UnknownVM,
    VirtualMachine,
)
from ckpt.domain.layers import chain
from ckpt.domain.naming import FORBIDDEN_IN_FILE, RESERVED_FILE_NAMES
from ckpt.storage import disk_state
from ckpt.storage.disk_state import State
from ckpt.storage.manifest import ZERO_ID
from ckpt.storage.manifest_cache import chain_manifest_ids
from ckpt.storage.manifest_restore import load_state, restore_manifest
from ckpt.storage.vhd import write_avhd, write_vhd
from ckpt.storage.vhdx import write_avhdx, write_vhdx

from . import commands, queries
from .export_configs import (
    VMS_DIR,
    checkpoint_configuration,
    vm_configuration,
    write_checkpoint_configuration,
    write_vm_configuration,
)
from .retention_ops import purged_error
from .unit_of_work import UnitOfWork

DISKS_DIR = "Virtual Hard Disks"
RUN = 1 << 20  # join contiguous blocks into runs of up to 1 MiB for the writer
WINDOWS_ROOT = PureWindowsPath("C:/Hyper-V")  # where an export says it lives: a guess, by design
_UNSAFE_EXPORT = re.compile(FORBIDDEN_IN_FILE.pattern[:-1] + r"\x7f]")  # and DEL
# One path component: 255 bytes on ext4, XFS, btrfs and ZFS (NAME_MAX); NTFS allows 255
# UTF-16 units, which 255 UTF-8 bytes never exceed. A 100-character emoji name is 400.
NAME_MAX = 255
_GUID_TAIL = re.compile(r"_[0-9A-F]{8}(-[0-9A-F]{4}){3}-[0-9A-F]{12}$")
SNAPSHOTS_DIR = "Snapshots"


def safe_folder_name(name: str) -> str:
    """A VM name as one path component: no separators, no '..', no control characters."""
    cleaned = FORBIDDEN_IN_FILE.sub("_", name).strip(" .") or "vm"
    return cleaned if cleaned not in (".", "..") else "vm"


def _cut_utf8(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 form fits ``limit`` bytes."""
    return text.encode()[:limit].decode(errors="ignore")


def export_folder_name(name: str, vm: UUID) -> str:
    """The ``<VM>`` folder of an export: one path component every file system and
    Windows accept, and one per VM. Characters Windows forbids become ``_``,
    trailing dots and blanks go, a device name (CON, NUL.txt, LPT1, ...) gets a
    ``_`` in front, and the whole is cut to 255 UTF-8 bytes; a name changed in
    any way ends in ``~`` and 8 hex digits of the VM's id, so ``a/b`` and ``a_b``
    (which stays as it is) get two folders."""
    cleaned = _UNSAFE_EXPORT.sub("_", name).rstrip(" .")
    if cleaned in ("", ".", ".."):
        cleaned = "vm"
    if cleaned.split(".")[0].rstrip(" ").upper() in RESERVED_FILE_NAMES:
        cleaned = "_" + cleaned
    if cleaned == name and len(name.encode()) <= NAME_MAX:
        return name
    suffix = f"~{vm.hex[:8]}"
    return _cut_utf8(cleaned, NAME_MAX - len(suffix)).rstrip(" .") + suffix


def export_file_name(name: str) -> str:
    """A layer's file name cut to 255 UTF-8 bytes (a disk may have a 100-character
    name of 4-byte characters): the disk name part is cut, its GUID and extension
    stay, and a ``~`` with 8 hex digits of the full name's hash keeps it unique."""
    if len(name.encode()) <= NAME_MAX:
        return name
    stem, dot, ext = name.rpartition(".")
    guid = _GUID_TAIL.search(stem)
    tail = guid.group(0) if guid else ""
    head = stem[: len(stem) - len(tail)]
    mark = "~" + hashlib.sha256(name.encode()).hexdigest()[:8]
    room = NAME_MAX - len(f"{mark}{tail}{dot}{ext}".encode())
    return f"{_cut_utf8(head, room)}{mark}{tail}{dot}{ext}"


def _prepare_folder(out_dir: Path, folder: Path, force: bool) -> None:
    """Refuse what the export cannot write into: ``-o`` naming a file, ``<VM>``
    naming a file or a link, or a non-empty ``<VM>`` (files of an earlier export
    would be mixed with these: a rewritten base with a new DataWriteGuid breaks
    the chains of the AVHDX files left beside it). ``force`` deletes the two
    folders an export writes, and only them. A missing ``-o`` directory is made,
    with its parents (``mkdir -p``)."""
    for path in (*reversed(out_dir.parents), out_dir):
        if path.exists() and not path.is_dir():
            raise InvalidValue(
                f"cannot export into {str(out_dir)!r}: {str(path)!r} is a file, not a directory"
            )
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise InvalidValue(f"cannot export into {str(folder)!r}: it exists and is not a directory")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if not force:
        raise AlreadyExists(
            f"{str(folder)!r} is not empty (an earlier export?): an export does not mix its "
            "files with others; give another -o DIR, or --force to delete its "
            f"{DISKS_DIR!r}, {SNAPSHOTS_DIR!r} and {VMS_DIR!r} folders first"
        )
    for sub in (DISKS_DIR, SNAPSHOTS_DIR, VMS_DIR):
        target = folder / sub
        try:
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
        except OSError as e:
            raise InvalidValue(f"--force: cannot delete {str(target)!r}: {e.strerror}") from None


def layer_runs(
    parent: State | None, state: State | None, uow: UnitOfWork, size: int, differencing: bool
) -> Iterator[tuple[int, bytes]]:
    """The bytes a layer file holds, as sorted, joined (offset, bytes) runs, cut at
    ``size``: ``state``'s non-zero blocks (a base or flattened disk), or where
    ``state`` differs from ``parent`` (a differencing layer: zeros written too,
    so the parent's bytes do not show through), compared segment by segment."""
    if state is None:
        return
    block_size = state.block_size
    upto = -(-size // block_size)
    blocks: Iterator[tuple[int, bytes]] = (
        disk_state.diff(parent, state, upto)
        if differencing
        else (b for b in state.present() if b[0] < upto)
    )
    fetch = uow.chunks.get_views
    zero = bytes(block_size)
    run_at, run = -1, bytearray()
    while batch := list(islice(blocks, 256)):
        wanted = [cid for _, cid in batch if cid != ZERO_ID]
        datas = iter(fetch(wanted) if wanted else ())
        for index, cid in batch:
            data = zero if cid == ZERO_ID else next(datas)
            offset = index * block_size
            data = data[: size - offset]
            if run and (offset != run_at + len(run) or len(run) >= RUN):
                yield run_at, bytes(run)
                run = bytearray()
            if not run:
                run_at = offset
            run += data
    if run:
        yield run_at, bytes(run)


def _disk_size(vm: VirtualMachine, leaf: UUID, uow: UnitOfWork, disk: str) -> int:
    state = load_state(chain_manifest_ids(vm, leaf), uow.chunks)
    if state is None:
        raise InvalidValue(f"no content was captured for disk {disk!r} of VM {vm.name!r}")
    return state.size


def export(
    uow: UnitOfWork,
    vm_name: str,
    checkpoint: str | None,
    out_dir: Path,
    at: str | int | None = None,
    flatten: bool = False,
    force: bool = False,
    all_checkpoints: bool = False,
) -> list[Path]:
    """Write a Hyper-V folder for a checkpoint (or Now), or with ``all_checkpoints``
    for the whole VM (Now and every checkpoint); return the files written."""
    vm = queries.vm(uow, vm_name, at=at)
    cp: Checkpoint | None = None if checkpoint is None else vm.find_checkpoint(checkpoint)
    if all_checkpoints and (cp is not None or flatten):
        raise InvalidValue(
            "--all-checkpoints exports the whole VM (Export-VM): it takes no checkpoint "
            "and no --flatten"
        )
    refused = None if cp is None else purged_error(uow, vm, cp.id, f"checkpoint {cp.name!r}")
    if refused is not None:
        raise refused
    if all_checkpoints:
        for each in vm.checkpoints.values():
            refused = purged_error(uow, vm, each.id, f"checkpoint {each.name!r}")
            if refused is not None:
                raise refused
    folder_name = export_folder_name(vm.name, vm.id)
    folder = Path(out_dir) / folder_name
    _prepare_folder(Path(out_dir), folder, force)
    disks_dir = folder / DISKS_DIR
    try:
        disks_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidValue(f"cannot create {str(disks_dir)!r}: {e.strerror}") from None
    try:
        written = _Folder(uow, vm, folder, folder_name).write(cp, flatten, all_checkpoints)
    except OSError as e:  # ENOSPC, EIO...: say where, not a traceback
        raise InvalidValue(f"export into {str(folder)!r} failed: {e.strerror or e}") from None
    if uow.read_only is not None:
        return written  # a store on read-only media cannot record it (README: read-only media)
    replica = uow.replica()
    if replica is not None and replica.follows:
        return written  # a replica takes events only from its primary: export is a read there
    # exported --at from a VM removed since: a removed VM takes no more events
    with contextlib.suppress(UnknownVM):
        commands.record_export(
            uow, str(vm.id), None if cp is None else cp.id, str(folder.resolve())
        )
    return written


class _Folder:
    """One export's files: each layer file written once, however many chains
    (checkpoints) share it, and the configuration and state files."""

    def __init__(self, uow: UnitOfWork, vm: VirtualMachine, folder: Path, folder_name: str):
        self.uow, self.vm, self.folder, self.folder_name = uow, vm, folder, folder_name
        self.written: list[Path] = []
        self.layers: dict[UUID, tuple[UUID, str]] = {}  # layer id -> (its file's id, file name)
        self.windows_dir = WINDOWS_ROOT / folder_name / DISKS_DIR

    def write(self, cp: Checkpoint | None, flatten: bool, all_checkpoints: bool) -> list[Path]:
        vm = self.vm
        if all_checkpoints:
            for each in sorted(vm.checkpoints.values(), key=lambda c: c.created_at):
                paths = [self._chain(d, each.layer(d.name)) for d in vm.disks]
                states = self._state_files(each, all_files=False)
                config = checkpoint_configuration(vm, each, paths, states)
                self.written.append(
                    write_checkpoint_configuration(self.uow, vm, self.folder, each, config, _create)
                )
            paths = [self._chain(d, vm.running[d.name]) for d in vm.disks]
            config = vm_configuration(vm, paths, vm.current, vm.config_version)
            self.written.append(
                write_vm_configuration(self.uow, vm, self.folder, config, None, _create)
            )
            return self.written
        paths = []
        for disk in vm.disks:
            leaf = cp.layer(disk.name) if cp else vm.running[disk.name]
            paths.append(self._flat(disk, leaf) if flatten else self._chain(disk, leaf))
        if cp is not None:
            self._state_files(cp, all_files=True)
        version = cp.config_version if cp is not None else vm.config_version
        config = vm_configuration(vm, paths, None, version)
        # listed last, as written: the base layer stays first
        self.written.append(write_vm_configuration(self.uow, vm, self.folder, config, cp, _create))
        return self.written

    def _flat(self, disk: Disk, leaf: UUID) -> str:
        vm, uow = self.vm, self.uow
        size = _disk_size(vm, leaf, uow, disk.name)
        state = load_state(chain_manifest_ids(vm, leaf), uow.chunks)
        path = self.folder / DISKS_DIR / export_file_name(disk.base_file)
        with _create(path) as out:
            runs = layer_runs(None, state, uow, size, differencing=False)
            if disk.format is DiskFormat.VHD:
                write_vhd(out, size, runs, unique_id=uuid5(VM_DISK_IDS, f"{vm.id}/{disk.name}"))
            else:
                write_vhdx(out, size, runs)
        self.written.append(path)
        return str(self.windows_dir / path.name)

    def _chain(self, disk: Disk, leaf: UUID) -> str:
        """Write the layer files from the base to ``leaf`` (those not written yet);
        the Windows path of ``leaf``'s file."""
        vm, uow = self.vm, self.uow
        size = _disk_size(vm, leaf, uow, disk.name)
        parent: tuple[UUID, str] | None = None
        refs: list[bytes] = []  # the chain's manifests down to this layer
        parent_state: State | None = None
        disk_id = uuid5(VM_DISK_IDS, f"{vm.id}/{disk.name}")
        for layer in chain(vm.layers, leaf):
            refs += vm.contents.get(layer.id, ())
            done = self.layers.get(layer.id)
            if done is not None:
                parent = done
                parent_state = None  # loaded again below only when a child is written
                continue
            state = load_state(refs, uow.chunks)
            if parent is not None and parent_state is None:
                parent_state = load_state(
                    refs[: len(refs) - len(vm.contents.get(layer.id, ()))], uow.chunks
                )
            path = self.folder / DISKS_DIR / export_file_name(layer.file)
            runs = layer_runs(parent_state, state, uow, size, parent is not None)
            guid = _content_guid(vm, layer.id)
            with _create(path) as out:
                if disk.format is DiskFormat.VHD:
                    result_id = self._vhd_layer(out, size, runs, guid, parent)
                elif parent is None:
                    result_id = write_vhdx(
                        out, size, runs, data_write_guid=guid, virtual_disk_id=disk_id
                    ).data_write_guid
                else:
                    result_id = write_avhdx(
                        out,
                        size,
                        parent[0],
                        f".\\{parent[1]}",
                        str(self.windows_dir / parent[1]),
                        runs,
                        data_write_guid=guid,
                        virtual_disk_id=disk_id,
                    ).data_write_guid
            parent = (result_id, path.name)
            self.layers[layer.id] = parent
            parent_state = state
            self.written.append(path)
        assert parent is not None  # a chain has at least its base
        return str(self.windows_dir / parent[1])

    def _vhd_layer(
        self,
        out: BinaryIO,
        size: int,
        runs: Iterator[tuple[int, bytes]],
        guid: UUID,
        parent: tuple[UUID, str] | None,
    ) -> UUID:
        if parent is None:
            return write_vhd(out, size, runs, unique_id=guid, timestamp=VHD_TIME).unique_id
        return write_avhd(
            out,
            size,
            parent[0],
            f".\\{parent[1]}",
            str(self.windows_dir / parent[1]),
            runs,
            parent_timestamp=VHD_TIME,
            parent_name=parent[1],
            unique_id=guid,
            timestamp=VHD_TIME,
        ).unique_id

    def _state_files(self, cp: Checkpoint, all_files: bool) -> list[str]:
        """Write ``cp``'s captured state files under their Hyper-V names (its
        configuration too when ``all_files``: the other mode writes that one
        itself); their Windows paths."""
        out = []
        for f in self.vm.captured_files.get(cp.id, ()):
            if not f.path:  # 2016+ memory is inside the VMRS Hyper-V gave us
                continue
            if f.role is FileRole.CONFIG and not all_files:
                continue
            path = self.folder.joinpath(*f.path.split("/"))
            path.parent.mkdir(parents=True, exist_ok=True)
            with _create(path) as stream:
                restore_manifest(f.manifest, self.uow.chunks, stream)
            self.written.append(path)
            out.append(str(WINDOWS_ROOT / self.folder_name / PureWindowsPath(*f.path.split("/"))))
        return out


# A VHD footer's time stamp: fixed, so an export is deterministic (decision 0003);
# seconds since 2000-01-01 UTC, the VHD epoch.
VHD_TIME = datetime(2000, 1, 1, tzinfo=UTC)


VM_DISK_IDS = uuid5(NAMESPACE_URL, "https://ckpt.invalid/virtual-disk")


def _content_guid(vm: VirtualMachine, layer: UUID) -> UUID:
    """A layer file's DataWriteGuid, from the layer and the content it holds: two
    exports of the same layer into one folder write the same file, so their
    children (written by either export) all find their parent."""
    refs = b"".join(vm.contents.get(layer, ()))
    return uuid5(layer, refs.hex())


def _create(path: Path) -> BinaryIO:
    try:
        return path.open("wb")
    except OSError as e:
        raise InvalidValue(f"cannot write {str(path)!r}: {e.strerror}") from None


def write_disk_vhdx(state: State, uow: UnitOfWork, out: BinaryIO) -> int:
    """A whole disk (its state at a point) as one dynamic VHDX."""
    write_vhdx(out, state.size, layer_runs(None, state, uow, state.size, differencing=False))
    return state.size


def write_disk_vhd(state: State, uow: UnitOfWork, out: BinaryIO) -> int:
    """A whole disk (its state at a point) as one dynamic VHD (at most 2040 GiB)."""
    write_vhd(out, state.size, layer_runs(None, state, uow, state.size, differencing=False))
    return state.size
