"""Capturing a source into a manifest on the chunk store.

Terms: *capturing* a disk diffs its image against the running chain's present
content (the overlay of the chain's manifests) and stores a manifest of the
blocks that differ; capturing a file stores all its blocks. Either returns the
domain's record of it (``DiskCapture``, ``FileCapture``), which an event then
names; nothing here saves events.

Block sizes (docs/decisions/0002-chunking.md): 4 KiB for disks and memory,
the page and file-system block size, so a changed page costs one 4 KiB chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import BinaryIO

from ckpt.domain import (
    DiskCapture,
    FileCapture,
    FileRole,
    InvalidValue,
    SourceChanged,
    VirtualMachine,
)

from . import manifest
from .capture import capture
from .content_session import Session
from .manifest import KIND_DISK, KIND_FILE, BlockMap
from .manifest_cache import ManifestCache
from .sources import changed, check_unchanged, fingerprint, source_size

DISK_BLOCK = 4096
FILE_BLOCK = 4096
Progress = Callable[[int], None]


def capture_disk(
    vm: VirtualMachine,
    disk: str,
    src: BinaryIO,
    where: str,
    session: Session,
    cache: ManifestCache,
    extents: Sequence[tuple[int, int]] | None = None,
    progress: Progress | None = None,
    segments: Sequence[tuple[int, int]] | None = None,
) -> DiskCapture:
    """Capture ``src`` (whose path is ``where``) as the disk's running content."""
    if disk not in vm.running:
        known = ", ".join(vm.running)
        raise InvalidValue(f"VM {vm.name!r} has no disk {disk!r} (disks: {known})")
    layer = vm.running[disk]
    # The decoded manifests are needed only for their overlay: a cache of its own,
    # dropped here, keeps them out of the capture's peak memory (benchmark step 4:
    # peak RSS 268-288 MiB with the shared cache, 252 MiB without).
    parent, block_size, parent_size = manifest.overlay(ManifestCache(cache.chunks).chain(vm, layer))
    if block_size not in (0, DISK_BLOCK):
        raise InvalidValue(f"disk {disk!r} was captured with {block_size}-byte blocks before")
    before = fingerprint(src)
    size = source_size(src, where)
    if size % 512:
        raise InvalidValue(f"{where}: {size} bytes is not a whole number of 512-byte sectors")
    try:
        result = capture(
            src,
            size,
            DISK_BLOCK,
            parent,
            session.sink,
            extents,
            progress,
            session.pool,
            segments,
            session.hasher,
            parent_size=parent_size,  # 0 for the first capture: all of it is new
        )
    except SourceChanged as e:
        raise changed(where, e) from None
    check_unchanged(src, where, before)
    session.finish()
    ref = manifest.store(BlockMap(KIND_DISK, DISK_BLOCK, size, result.entries), session.add)
    return DiskCapture(
        disk=disk,
        layer=layer,
        manifest=ref,
        base=len(vm.contents.get(layer, ())),
        virtual_size=size,
        block_size=DISK_BLOCK,
        changed_blocks=len(result.entries),
        read_bytes=result.read_bytes,
        added_bytes=result.added_bytes,
    )


def capture_file(
    role: FileRole, src: BinaryIO, where: str, session: Session, progress: Progress | None = None
) -> FileCapture:
    before = fingerprint(src)
    size = source_size(src, where)
    try:
        result = capture(
            src, size, FILE_BLOCK, {}, session.sink, None, progress, session.pool, None,
            session.hasher,
        )  # fmt: skip
    except SourceChanged as e:
        raise changed(where, e) from None
    check_unchanged(src, where, before)
    session.finish()
    ref = manifest.store(BlockMap(KIND_FILE, FILE_BLOCK, size, result.entries), session.add)
    return FileCapture(role=role, path="", manifest=ref, size=size, added_bytes=result.added_bytes)
