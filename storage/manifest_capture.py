"""Capturing a source into a manifest on the chunk store.

Terms: *capturing* a disk reads its image against the running chain's state
(``disk_state.py``) and stores a v2 manifest of the whole disk
(``segments.py``), segment by segment (``segment_builder.py``): a segment
unchanged since the chain's is the same chunk, and only blocks that differ
from the chain's at the same offset are offered to the store; capturing a
file stores all its blocks. Either returns the
domain's record of it (``DiskCapture``, ``FileCapture``), which an event then
names; nothing here saves events.

Block sizes (docs/decisions/0002-chunking.md): 4 KiB for disks and memory,
the page and file-system block size, so a changed page costs one 4 KiB chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ckpt.domain import (
    DiskCapture,
    FileCapture,
    FileRole,
    InvalidValue,
    SourceChanged,
    VirtualMachine,
)

from . import disk_state
from .capture import capture_into
from .capture_stream import stream_into
from .content_session import Session
from .manifest import KIND_DISK, KIND_FILE
from .manifest_cache import ManifestCache, chain_manifest_ids
from .segment_builder import SegmentBuilder
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
    """Capture ``source`` as the disk's running content: a v2 manifest of the
    whole disk, segments unchanged since the chain's state shared by id."""
    if disk not in vm.running:
        known = ", ".join(vm.running)
        raise InvalidValue(f"VM {vm.name!r} has no disk {disk!r} (disks: {known})")
    refuse_extents_of_one_shot(disk, source, extents)
    layer = vm.running[disk]
    chunks = cache.chunks
    parent = disk_state.load(chain_manifest_ids(vm, layer), chunks.get, chunks.get_many)
    if parent is not None and parent.block_size != DISK_BLOCK:
        raise InvalidValue(
            f"disk {disk!r} was captured with {parent.block_size}-byte blocks before"
        )
    parent_size = 0 if parent is None else parent.size
    builder = SegmentBuilder(
        parent, KIND_DISK, DISK_BLOCK, 0, session.sink, session.chunks.codec.identify,
        patch=extents is not None, store=session.store,
    )  # fmt: skip
    before = session.added_bytes  # one session may capture several disks and files
    size = _read(source, builder, session, extents, progress, segments, parent_size, sectors=True)
    session.finish()
    ref = builder.store(session.add)
    return DiskCapture(
        disk=disk,
        layer=layer,
        manifest=ref,
        base=len(vm.contents.get(layer, ())),
        virtual_size=size,
        block_size=DISK_BLOCK,
        changed_blocks=builder.changed_blocks,
        read_bytes=builder.read_bytes,
        added_bytes=session.added_bytes - before,
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
    builder = SegmentBuilder(
        None, KIND_FILE, FILE_BLOCK, 0, session.sink, session.chunks.codec.identify,
        store=session.store,
    )  # fmt: skip
    before = session.added_bytes
    size = _read(source, builder, session, None, progress, None, None)
    session.finish()
    ref = builder.store(session.add)
    added = session.added_bytes - before
    return FileCapture(role=role, path="", manifest=ref, size=size, added_bytes=added)


def _read(
    source: Source,
    builder: SegmentBuilder,
    session: Session,
    extents: Sequence[tuple[int, int]] | None,
    progress: Progress | None,
    segments: Sequence[tuple[int, int]] | None,
    parent_size: int | None,
    sectors: bool = False,
) -> int:
    """Read ``source`` into ``builder``: a file or device at offsets, a one-shot
    source in order; return its size. ``sectors``: its size must be whole
    512-byte sectors (a disk), checked before reading when it is known, after
    when it is what a pipe delivered."""
    where = source.where
    block_size = builder.block_size
    if source.one_shot:
        try:
            size = stream_into(
                source, block_size, builder.feed, progress, session.pool, session.hasher
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
        builder.set_size(size)
        builder.finish()
        return size
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
    builder.set_size(size)
    try:
        capture_into(
            builder.feed, source.stream, size, block_size, extents, progress,
            session.pool, segments, session.hasher,
            parent_size=parent_size,  # 0 for the first capture: all of it is new
        )  # fmt: skip
    except SourceChanged as e:
        raise changed(where, e) from None
    builder.finish()
    check_unchanged(source, before)
    return size
