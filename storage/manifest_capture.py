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

from collections.abc import Callable, Mapping, Sequence

from ckpt.domain import (
    DiskCapture,
    FileCapture,
    FileRole,
    InvalidValue,
    SourceChanged,
    VirtualMachine,
)

from . import manifest
from .capture import CaptureResult, capture
from .capture_stream import capture_stream
from .content_session import Session
from .manifest import KIND_DISK, KIND_FILE, BlockMap
from .manifest_cache import ManifestCache
from .sources import Source, changed, check_unchanged, fingerprint, source_size

DISK_BLOCK = 4096
FILE_BLOCK = 4096
Progress = Callable[[int], None]


def capture_disk(
    vm: VirtualMachine,
    disk: str,
    source: Source,
    session: Session,
    cache: ManifestCache,
    extents: Sequence[tuple[int, int]] | None = None,
    progress: Progress | None = None,
    segments: Sequence[tuple[int, int]] | None = None,
) -> DiskCapture:
    """Capture ``source`` as the disk's running content."""
    if disk not in vm.running:
        known = ", ".join(vm.running)
        raise InvalidValue(f"VM {vm.name!r} has no disk {disk!r} (disks: {known})")
    refuse_extents_of_one_shot(disk, source, extents)
    layer = vm.running[disk]
    # The decoded manifests are needed only for their overlay: a cache of its own,
    # dropped here, keeps them out of the capture's peak memory (benchmark step 4:
    # peak RSS 268-288 MiB with the shared cache, 252 MiB without).
    parent, block_size, parent_size = manifest.overlay(ManifestCache(cache.chunks).chain(vm, layer))
    if block_size not in (0, DISK_BLOCK):
        raise InvalidValue(f"disk {disk!r} was captured with {block_size}-byte blocks before")
    result, size = _read(source, DISK_BLOCK, parent, session, extents, progress, segments,
                         parent_size, sectors=True)  # fmt: skip
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


def refuse_extents_of_one_shot(
    disk: str, source: Source, extents: Sequence[tuple[int, int]] | None
) -> None:
    """Changed extents are read at their offsets: a pipe cannot seek to them."""
    if extents is not None and source.one_shot:
        raise InvalidValue(
            f"changed blocks for disk {disk!r}: {source.where} is read once, in order (a pipe, "
            "a socket or a stream that cannot seek), so its changed extents cannot be read "
            "alone; give a file or a device, or capture without --changed-blocks"
        )


def capture_file(
    role: FileRole, source: Source, session: Session, progress: Progress | None = None
) -> FileCapture:
    result, size = _read(source, FILE_BLOCK, {}, session, None, progress, None, None)
    session.finish()
    ref = manifest.store(BlockMap(KIND_FILE, FILE_BLOCK, size, result.entries), session.add)
    return FileCapture(role=role, path="", manifest=ref, size=size, added_bytes=result.added_bytes)


def _read(
    source: Source,
    block_size: int,
    parent: Mapping[int, bytes],
    session: Session,
    extents: Sequence[tuple[int, int]] | None,
    progress: Progress | None,
    segments: Sequence[tuple[int, int]] | None,
    parent_size: int | None,
    sectors: bool = False,
) -> tuple[CaptureResult, int]:
    """Read ``source`` against ``parent``: a file or device at offsets, a one-shot
    source in order. ``sectors``: its size must be whole 512-byte sectors (a disk),
    checked before reading when it is known, after when it is what a pipe delivered."""
    where = source.where
    if source.one_shot:
        try:
            result, size = capture_stream(
                source, block_size, parent, session.sink, progress, session.pool, session.hasher
            )
        except SourceChanged as e:
            raise changed(where, e) from None
        if sectors and size % 512:
            raise InvalidValue(
                f"{where} delivered {size:,} bytes, not a whole number of 512-byte sectors: "
                "not a disk image (cut short?); nothing was recorded"
            )
        if sectors and size == 0:
            # an empty pipe is far more often a producer that failed than an empty disk
            raise InvalidValue(
                f"{where} delivered no bytes before its end: nothing was recorded "
                "(an empty disk is captured from an empty file)"
            )
        return result, size
    before = fingerprint(source.stream)
    size = source_size(source.stream, where)
    if source.size is not None:
        if size < source.size:
            raise InvalidValue(
                f"{where} holds {size:,} bytes, fewer than its declared size of "
                f"{source.size:,}: nothing was recorded"
            )
        size = source.size
    if sectors and size % 512:
        raise InvalidValue(f"{where}: {size} bytes is not a whole number of 512-byte sectors")
    try:
        result = capture(
            source.stream, size, block_size, parent, session.sink, extents, progress,
            session.pool, segments, session.hasher,
            parent_size=parent_size,  # 0 for the first capture: all of it is new
        )  # fmt: skip
    except SourceChanged as e:
        raise changed(where, e) from None
    check_unchanged(source, before)
    return result, size
