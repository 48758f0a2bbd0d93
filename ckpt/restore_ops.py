"""Restoring content: a disk (raw or VHDX), the memory image, the state files.

Terms: a *point* is a checkpoint or a backup point, found now or as of
``--at`` (which reaches checkpoints deleted since: their content stays until
gc may purge it). A disk's bytes at a point are its chain's state (the last
v2 manifest, ``storage/disk_state.py``), read and written segment by segment
(``storage/manifest_restore.py``); a file's are its one manifest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from uuid import UUID

from ckpt.domain import (
    BackupPoint,
    Checkpoint,
    ChunkMissing,
    CkptError,
    FileCapture,
    FileRole,
    InvalidValue,
    NotFound,
    OutputFailed,
    PointPurged,
    VirtualMachine,
)
from ckpt.storage.disk_reader import CACHE_BYTES, DiskReader
from ckpt.storage.disk_state import State
from ckpt.storage.manifest_cache import chain_manifest_ids
from ckpt.storage.manifest_restore import load_state, restore_manifest, restore_state

from . import queries
from .hyperv_export import write_disk_vhd, write_disk_vhdx
from .point_history import walk
from .progress_factory import ProgressFactory, bar
from .retained import dropped, reclaimed
from .retention_ops import purged_error
from .unit_of_work import UnitOfWork

NOW = "Now"  # the point ``open_disk`` reads as the VM's running state


@dataclass(frozen=True)
class RestorePoint:
    """A checkpoint or backup point, and the VM as of the moment its content was recorded."""

    vm: VirtualMachine
    label: str
    layers: dict[str, UUID]
    files: tuple[FileCapture, ...]


def resolve_point(uow: UnitOfWork, vm: str, ref: str, at: str | int | None = None) -> RestorePoint:
    """A live checkpoint or backup point, now or as of ``at``. A reference
    matching several points (of either kind) is ambiguous."""
    v = queries.vm(uow, vm, at=at)
    return point_of(uow, v, v.find_point(ref))


def point_of(
    uow: UnitOfWork, v: VirtualMachine, found: Checkpoint | BackupPoint, checked: bool = False
) -> RestorePoint:
    """One of ``v``'s points, with the disks and files it holds (a backup point's
    VM as of its event: the running layers it recorded). A point whose content
    was purged (``ckpt forget``, now, whatever ``v``'s moment) is ``PointPurged``;
    ``checked``: the caller left purged points out already (one VM load, not one a point)."""
    kind = "backup point" if isinstance(found, BackupPoint) else "checkpoint"
    refused = None if checked else purged_error(uow, v, found.id, f"{kind} {found.name!r}")
    if refused is not None:  # its place in the tree stays, its bytes are gone (or going)
        raise refused
    if isinstance(found, BackupPoint):
        past = queries.vm(uow, v.id, version=found.version)
        return RestorePoint(past, f"backup point {found.name!r}", dict(past.running), ())
    layers = dict(found.layers)
    return RestorePoint(v, f"checkpoint {found.name!r}", layers, v.captured_files.get(found.id, ()))


def now_of(v: VirtualMachine) -> RestorePoint:
    """Now: the running layers' content as last captured (no state files)."""
    return RestorePoint(v, NOW, dict(v.running), ())


def resolve_view(uow: UnitOfWork, vm: str, ref: str, at: str | int | None = None) -> RestorePoint:
    """As ``resolve_point``, and ``"Now"``: the running layers' content as last
    captured (a sync's or a checkpoint's; no state files). "Now" always means
    the running state: a checkpoint named so is reached by its id."""
    if ref != NOW:
        return resolve_point(uow, vm, ref, at)
    return now_of(queries.vm(uow, vm, at=at))


def _disk_state(
    uow: UnitOfWork,
    point: RestorePoint,
    disk: str,
    missing: type[CkptError] = InvalidValue,
) -> State:
    """A disk's state at a checkpoint or backup point (its chain's last v2
    manifest, read segment by segment). ``missing``: the error for a disk the
    VM lacks (``open_disk`` raises ``NotFound``; restore kept its exit code)."""
    if disk not in point.layers:
        raise missing(
            f"VM {point.vm.name!r} has no disk {disk!r} (disks: {', '.join(point.layers)})"
        )
    state = load_state(chain_manifest_ids(point.vm, point.layers[disk]), uow.chunks)
    if state is None:
        raise InvalidValue(f"no content was captured for disk {disk!r} up to {point.label}")
    return state


@contextlib.contextmanager
def _writing(out: BinaryIO) -> Iterator[None]:
    """An ``OSError`` out of a restore is the output's (no space, quota, I/O error,
    a closed pipe): the chunk backends translate their own. The Python API then
    raises ``OutputFailed`` naming the stream, as the CLI does for its files."""
    try:
        yield
    except OSError as e:
        name = getattr(out, "name", None)
        where = repr(name) if isinstance(name, str) else "the output stream"
        raise OutputFailed(f"cannot write {where}: {e.strerror or e}") from e


def restore_disk(
    uow: UnitOfWork,
    vm: str,
    ref: str,
    disk: str,
    out: BinaryIO,
    progress: ProgressFactory | None,
    at: str | int | None = None,
) -> int:
    state = _disk_state(uow, resolve_point(uow, vm, ref, at), disk)
    with _writing(out):
        return restore_state(state, uow.chunks, out, bar(progress, f"restore {disk}", state.size))


def restore_disk_vhdx(
    uow: UnitOfWork, vm: str, ref: str, disk: str, out: BinaryIO, at: str | int | None = None
) -> int:
    state = _disk_state(uow, resolve_point(uow, vm, ref, at), disk)
    with _writing(out):
        return write_disk_vhdx(state, uow, out)


def restore_disk_vhd(
    uow: UnitOfWork, vm: str, ref: str, disk: str, out: BinaryIO, at: str | int | None = None
) -> int:
    state = _disk_state(uow, resolve_point(uow, vm, ref, at), disk)
    with _writing(out):
        return write_disk_vhd(state, uow, out)


def _file(point: RestorePoint, role: FileRole) -> FileCapture:
    for f in point.files:
        if f.role is role:
            return f
    raise InvalidValue(f"no {role.value} content was captured for {point.label}")


def restore_memory(
    uow: UnitOfWork,
    vm: str,
    ref: str,
    out: BinaryIO,
    progress: ProgressFactory | None,
    at: str | int | None = None,
) -> int:
    point = resolve_point(uow, vm, ref, at)
    f = _file(point, FileRole.MEMORY)
    with _writing(out):
        return restore_manifest(
            f.manifest, uow.chunks, out, bar(progress, "restore memory", f.size)
        )


def restore_state_files(
    uow: UnitOfWork, vm: str, ref: str, directory: Path, at: str | int | None = None
) -> list[Path]:
    """Write the captured state files under their Hyper-V names below ``directory``.

    A file that fails (no space, Ctrl-C) is removed; those written before it stay.
    """
    if directory.exists() and not directory.is_dir():
        raise InvalidValue(
            f"{str(directory)!r} is not a directory: --state-files writes the state files "
            "under their Hyper-V names into -o DIR"
        )
    point = resolve_point(uow, vm, ref, at)
    written = []
    for f in point.files:
        if not f.path:  # 2016+ memory lives inside the VMRS: `restore --memory` gives it
            continue
        target = directory.joinpath(*f.path.split("/"))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as out:
                restore_manifest(f.manifest, uow.chunks, out)
        except BaseException as e:
            with contextlib.suppress(OSError):
                target.unlink()
            if isinstance(e, OSError):
                raise OutputFailed(
                    f"cannot write {str(target)!r}: {e.strerror or e}; that file was removed"
                ) from None
            raise
        written.append(target)
    if not written:
        raise InvalidValue(f"no state files were captured for {point.label}")
    return written


def open_disk(
    uow: UnitOfWork,
    vm: str,
    ref: str,
    disk: str,
    at: str | int | None = None,
    cache_bytes: int = CACHE_BYTES,
) -> DiskReader:
    """A random-access reader over a disk at a point (or Now), as restore finds it."""
    point = resolve_view(uow, vm, ref, at)
    with purged_now(uow, point, disk, at):
        state = _disk_state(uow, point, disk, missing=NotFound)
    return DiskReader(state, uow.chunks.get_views, cache_bytes, f"{disk!r} at {point.label}")


@contextlib.contextmanager
def purged_now(
    uow: UnitOfWork, point: RestorePoint, disk: str, at: str | int | None
) -> Iterator[None]:
    """Reading Now as of ``at``, a missing manifest chunk is ``PointPurged`` when
    only purged points kept that running state (gc reclaimed it); any other
    ``ChunkMissing`` stands."""
    try:
        yield
    except ChunkMissing:
        if point.label != NOW or at is None:
            raise
        refs = chain_manifest_ids(point.vm, point.layers[disk])
        gone = dropped(uow, walk(uow), reclaimed).get(point.vm.id, set())
        if not refs or refs[-1] not in gone:
            raise
        raise PointPurged(
            f"disk {disk!r} of VM {point.vm.name!r} as of {at}: that running state was kept "
            "only by points purged since (ckpt forget), and gc has reclaimed its bytes"
        ) from None


def open_memory(
    uow: UnitOfWork,
    vm: str,
    ref: str,
    at: str | int | None = None,
    cache_bytes: int = CACHE_BYTES,
) -> DiskReader:
    """A random-access reader over the memory image captured at a point."""
    point = resolve_view(uow, vm, ref, at)
    f = _file(point, FileRole.MEMORY)
    state = load_state([f.manifest], uow.chunks)
    assert state is not None  # one manifest: a state
    return DiskReader(state, uow.chunks.get_views, cache_bytes, f"memory at {point.label}")
