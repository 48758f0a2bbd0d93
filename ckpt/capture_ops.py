"""Capturing content: checkpoints with disks and state files, backup points, imported disks.

Terms: a *capture* reads a source into the chunk store and yields a
``DiskCapture`` (or ``FileCapture``) that an event then records. A disk's
capture is made against the VM as read when the command starts: its *layer*
(the running layer) and *base* (how many manifests that layer held) say what
it was diffed against.

Order (docs/design.md, "Durability"): every capture writes its chunks through
one writer session, which makes the packs and their index files durable when
it closes; only then is the event that names them saved. The image is read
once, **outside** the retry loop: when another writer changed the VM before
the commit (a rename, say), the retried decision keeps every finished capture
whose disk's layer and base are unchanged, and captures again only a disk
whose layer really moved. A write lease (storage/chunks/lease.py) spans from
before the first pack to after the commit, and is checked just before it, so
a gc deletes none of the chunks the capture wrote or reuses.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar, cast

from ckpt.domain import (
    BackupPoint,
    CaptureOutdated,
    Checkpoint,
    CheckpointType,
    DiskCapture,
    FileCapture,
    FileRole,
    InvalidValue,
    Origin,
    VirtualMachine,
)
from ckpt.storage.chunks.lease import Lease, LeaseInfo
from ckpt.storage.content_session import Session
from ckpt.storage.image_formats import VHD, VHDX, container_format
from ckpt.storage.manifest_cache import ManifestCache
from ckpt.storage.manifest_capture import (
    capture_disk,
    capture_file,
    refuse_extents_of_one_shot,
)
from ckpt.storage.sources import (
    Source,
    StreamSource,
    is_one_shot_path,
    open_source,
    opened,
    refuse_container,
    refuse_container_tail,
    size_hint,
)
from ckpt.storage.vhdx_files import ChainStream, open_vhdx_chain

from . import commands, queries
from .progress_factory import ProgressFactory, bar
from .unit_of_work import UnitOfWork

WORKERS = min(4, os.cpu_count() or 2)  # hashing and zstd release the GIL: one thread per core
Extents = Sequence[tuple[int, int]]
Given = str | Path | StreamSource  # a source as the caller names it
T = TypeVar("T")


def _source_sizes(sources: Sequence[Given]) -> int:
    """The bytes the progress bar expects: a file's or a device's size, a stream's
    declared size; a pipe adds nothing (its bar counts without a total)."""
    return sum(p.size or 0 if isinstance(p, StreamSource) else size_hint(p) for p in sources)


def refuse_a_stream_twice(disks: Mapping[str, Given], files: Mapping[FileRole, Given]) -> None:
    """A stream is read once: the same one given for two sources cannot feed both."""
    seen: dict[int, str] = {}
    named = [(f"disk {d!r}", g) for d, g in disks.items()]
    named += [(f"the {r.value} file", g) for r, g in files.items()]
    for what, given in named:
        if isinstance(given, StreamSource):
            first = seen.setdefault(id(given.stream), what)
            if first != what:
                raise InvalidValue(
                    f"one stream is given for {first} and for {what}: a stream is read once, "
                    "so each source needs its own (standard input, '-', feeds one at most)"
                )


@contextmanager
def session(uow: UnitOfWork) -> Iterator[tuple[Session, ManifestCache]]:
    """One writer session (its packs durable when it closes) and a manifest cache."""
    chunks = uow.chunks
    with chunks.writer() as writer, ThreadPoolExecutor(WORKERS) as pool:
        yield Session(writer, chunks, pool), ManifestCache(chunks)


def still_valid(vm: VirtualMachine, capture: DiskCapture) -> bool:
    """Whether a finished capture still fits ``vm``: its disk's running layer and the
    number of manifests on it are those it was made against (``VirtualMachine``
    refuses it otherwise, with ``CaptureOutdated``)."""
    layer = vm.running.get(capture.disk)
    return layer == capture.layer and len(vm.contents.get(layer, ())) == capture.base


def _leased(
    uow: UnitOfWork,
    vm: str,
    decide: Callable[[Lease], Callable[[VirtualMachine, Origin], T]],
    progress: ProgressFactory | None = None,
) -> T:
    """``decide(lease)`` run as a command inside a write lease: taken before the
    first pack is written, released after the event is committed or the command
    failed (Ctrl-C included). A wait for a running gc shows as a phase of its own."""

    def waiting(leases: list[LeaseInfo]) -> None:
        bar(progress, "waiting for " + "; ".join(x.describe() for x in leases), 0)

    with uow.chunks.write_lease(on_wait=waiting) as lease:
        return commands.run(uow, vm, decide(lease))


class _Disks:
    """The disk captures of one command, made once and made again only for a disk
    whose layer moved."""

    def __init__(
        self,
        uow: UnitOfWork,
        disks: Mapping[str, Given],
        changed_blocks: Mapping[str, Extents],
        progress: ProgressFactory | None,
        raw: bool,
    ) -> None:
        self.uow, self.sources, self.changed_blocks = uow, disks, changed_blocks
        self.progress, self.raw = progress, raw
        self.captures: dict[str, DiskCapture] = {}
        self.consumed: set[str] = set()  # disks read from a one-shot source (a pipe)

    def capture(
        self, vm: VirtualMachine, files: Mapping[FileRole, Given] | None = None
    ) -> list[FileCapture]:
        """Capture every disk (and ``files``) against ``vm``; returns the file captures."""
        return self._capture(vm, self.sources, files or {})

    def current(self, vm: VirtualMachine) -> list[DiskCapture]:
        """The captures for ``vm`` as it is now: those whose layer moved made again."""
        moved = {d: p for d, p in self.sources.items() if not still_valid(vm, self.captures[d])}
        gone = sorted(set(moved) & self.consumed)
        if gone:
            # a pipe cannot be read a second time; a guess at its content would be a wrong disk
            raise CaptureOutdated(
                f"VM {vm.name!r}'s disk {gone[0]!r} changed (another command) while its one-shot "
                "source (a pipe or stream) was read: nothing was recorded; run the command again"
            )
        if moved:
            self._capture(vm, moved, {})
        return [self.captures[d] for d in self.sources]

    def _capture(
        self,
        vm: VirtualMachine,
        disks: Mapping[str, Given],
        files: Mapping[FileRole, Given],
    ) -> list[FileCapture]:
        """``raw``: take an image that looks like a VHDX/VHD/qcow2 container as
        raw bytes instead of refusing it."""
        total = _source_sizes([*disks.values(), *files.values()])
        progress = bar(self.progress, f"capture {vm.name}", total)
        captured = []
        with session(self.uow) as (writer, cache):
            for disk, given in disks.items():
                with opened(given, f"image of disk {disk!r}") as src:
                    extents = self.changed_blocks.get(disk)
                    refuse_extents_of_one_shot(disk, src, extents)  # before a byte is read
                    if src.one_shot:
                        self.consumed.add(disk)
                    if not self.raw:
                        hint = (
                            f"use `ckpt import disk {vm.name} {disk} {src.where}` "
                            "(it reads VHDX and VHD files)"
                        )
                        refuse_container(src, hint)
                    self.captures[disk] = capture_disk(
                        vm, disk, src, writer, cache, extents, progress
                    )
                    if not self.raw:
                        refuse_container_tail(src)  # a fixed VHD's footer ends the stream
            for role, given in files.items():
                with opened(given, f"{role.value} file") as src:
                    captured.append(capture_file(role, src, writer, progress))
        return captured


def create_checkpoint(
    uow: UnitOfWork,
    vm: str,
    name: str | None,
    checkpoint_type: CheckpointType | None,
    guest_can_quiesce: bool,
    disks: Mapping[str, Given],
    files: Mapping[FileRole, Given],
    changed_blocks: Mapping[str, Extents],
    progress: ProgressFactory | None,
    raw: bool = False,
) -> Checkpoint:
    for disk in changed_blocks:
        if disk not in disks:
            raise InvalidValue(f"--changed-blocks for disk {disk!r} needs --disk {disk}=IMAGE")
    refuse_a_stream_twice(disks, files)
    captures = _Disks(uow, disks, changed_blocks, progress, raw)

    def check(v: VirtualMachine) -> None:  # refused before any byte is read, as on a retry
        _, memory = v.plan_checkpoint(checkpoint_type, guest_can_quiesce)
        for role in files:
            v.check_file_role(role, memory)

    def decide(lease: Lease) -> Callable[[VirtualMachine, Origin], Checkpoint]:
        first = queries.vm(uow, vm)
        check(first)
        captured = captures.capture(first, files)

        def act(v: VirtualMachine, o: Origin) -> Checkpoint:
            check(v)
            cp = v.create_checkpoint(
                o, name, checkpoint_type, guest_can_quiesce, captures.current(v), captured
            )
            lease.check()
            return cp

        return act

    return _leased(uow, vm, decide, progress)


def sync(
    uow: UnitOfWork,
    vm: str,
    name: str | None,
    disks: Mapping[str, Given],
    changed_blocks: Mapping[str, Extents],
    progress: ProgressFactory | None,
    raw: bool = False,
) -> BackupPoint:
    refuse_a_stream_twice(disks, {})
    captures = _Disks(uow, disks, changed_blocks, progress, raw)

    def decide(lease: Lease) -> Callable[[VirtualMachine, Origin], BackupPoint]:
        captures.capture(queries.vm(uow, vm))

        def act(v: VirtualMachine, o: Origin) -> BackupPoint:
            point = v.sync(o, name, captures.current(v))
            lease.check()
            return point

        return act

    return _leased(uow, vm, decide, progress)


# Extensions that say "this is a raw disk image": the user names it raw. A file
# with another name and no container signature is refused (issue 17: a VHD read
# as raw stored its footer and tables as disk bytes, with exit 0).
RAW_SUFFIXES = (".raw", ".img", ".bin", ".dd", ".iso")
CHAIN_SUFFIXES = (".vhdx", ".avhdx", ".vhd", ".avhd")


def capture_disk_file(
    uow: UnitOfWork,
    vm: VirtualMachine,
    disk: str,
    path: Path,
    raw: bool = False,
    root: Path | None = None,
) -> DiskCapture:
    """Capture a disk file as ``disk``'s running content of ``vm``.

    A VHDX/AVHDX or VHD/AVHD file (told by its bytes, whatever its name) is read
    through its parent chain (every structure checked; a missing parent or a
    cycle is refused, naming the file; parents are looked for below ``root``,
    default the file's folder). A raw image is taken when the user says it is
    one: ``raw`` (``--format raw``, which also takes a container's bytes as they
    are), a raw name (``.raw``, ``.img``, ...) or a block device. A qcow2 file, or
    a file of no known format under another name, is refused.
    """
    with session(uow) as (writer, cache):
        if not raw and _is_chain_file(path, disk):
            _refuse_one_shot(path, f"disk file of disk {disk!r}")
            vhdx, files, segments = open_vhdx_chain(path, root)
            try:
                stream = cast(BinaryIO, ChainStream(vhdx))  # a RawIOBase: read, seek, tell
                chain = Source(stream, str(path))
                return capture_disk(vm, disk, chain, writer, cache, segments=segments)
            finally:
                for f in files:
                    f.close()
        _refuse_one_shot(path, f"image of disk {disk!r}")
        with opened(path, f"image of disk {disk!r}") as src:
            if not raw:
                hint = "`ckpt import disk` reads VHDX and VHD files"
                refuse_container(src, hint)
                if path.suffix.lower() not in RAW_SUFFIXES and not _is_block_device(path):
                    raise InvalidValue(
                        f"{str(path)!r}: not a VHDX, VHD or qcow2 file, and its name does not say "
                        f"it is a raw disk image ({', '.join(RAW_SUFFIXES)}): if it is one, pass "
                        "--format raw (or rename it); nothing was recorded"
                    )
            return capture_disk(vm, disk, src, writer, cache)


def _is_block_device(path: Path) -> bool:
    try:
        return stat.S_ISBLK(path.stat().st_mode)
    except OSError:
        return False


def _is_chain_file(path: Path, disk: str) -> bool:
    """A VHDX or VHD file: by its name, or by its bytes (a .dat that is a VHD)."""
    if path.suffix.lower() in CHAIN_SUFFIXES:
        return True
    if is_one_shot_path(path) or _is_block_device(path):
        return False  # a device is a raw disk; a pipe is refused below
    try:
        with path.open("rb") as f:
            kind = container_format(f, f.seek(0, os.SEEK_END))
    except OSError:
        return False  # opened() below says what is wrong
    return kind in (VHDX, VHD)


def capture_state_file(uow: UnitOfWork, role: FileRole, path: Path) -> FileCapture:
    """A state file (configuration, VMRS, VSV, BIN) captured as one content item."""
    with session(uow) as (writer, _), opened(path, f"{role.value} file") as src:
        return capture_file(role, src, writer, None)


def _refuse_one_shot(path: Path, what: str) -> None:
    """``import disk`` reads a file or a device: a VHDX is read at offsets, and a
    capture made again (when the disk's layer moved) reads the source again."""
    if is_one_shot_path(path):  # by its stat: opening a FIFO would wait for its writer
        raise InvalidValue(
            f"{str(path)!r} ({what}) is a pipe, a socket or a character device, read once: "
            "`ckpt import disk` needs a file or a block device; feed a pipe to "
            "`ckpt sync VM --disk DISK=-` instead"
        )
    with open_source(path, what):  # a missing path is NotFound (exit 12), as for a raw image
        pass


def import_disk(uow: UnitOfWork, vm: str, disk: str, path: Path, raw: bool = False) -> DiskCapture:
    """Capture a disk file into the disk's running layer (``ckpt import disk``);
    nothing is recorded on any error."""

    def decide(lease: Lease) -> Callable[[VirtualMachine, Origin], DiskCapture]:
        capture = capture_disk_file(uow, queries.vm(uow, vm), disk, path, raw)

        def act(v: VirtualMachine, o: Origin) -> DiskCapture:
            nonlocal capture
            if not still_valid(v, capture):  # the layer moved: read it again
                capture = capture_disk_file(uow, v, disk, path, raw)
            v.import_disk_content(o, capture)
            lease.check()
            return capture

        return act

    return _leased(uow, vm, decide)
