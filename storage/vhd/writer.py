"""Writing new VHD (fixed or dynamic) and AVHD (differencing) files to a stream.

Dynamic and differencing layout ckpt writes (docs/vhd.md)::

    0          footer copy (512 bytes)
    512        dynamic header (1024 bytes), table offset 1536
    1536       BAT: one u32 per block, 0xFFFFFFFF = not stored, padded to 512
    then       differencing only: W2ku then W2ru locator data, UTF-16LE, each
               padded to whole sectors
    then       stored blocks in virtual order: sector bitmap (whole sectors)
               and block_size bytes of data (the last block too, whole, as
               qemu expects)
    end        footer (512 bytes)

A fixed file is the disk's bytes followed by the footer.

What is stored: a dynamic base stores each block holding a non-zero byte,
with every bit of the sectors inside the disk set (unstored blocks read as
zero); a differencing file stores each block a run touches, with exactly the
touched sectors' bits set, zeros included (so the parent does not show
through). Memory stays at one block; the writer seeks (a BAT entry is
written when its block is).
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import PureWindowsPath
from typing import BinaryIO
from uuid import UUID

from ckpt.domain.errors import VhdxUnsupported
from ckpt.storage.run_blocks import PendingBlock, gather_blocks

from .bitmap import pack_runs
from .dynamic_header import NAME_SIZE, DynamicHeader, LocatorEntry
from .footer import Footer
from .geometry import Blocks, chs, is_valid_block_size
from .layout import (
    DEFAULT_BLOCK_SIZE,
    DISK_DIFFERENCING,
    DISK_DYNAMIC,
    DISK_FIXED,
    DYNAMIC_HEADER_SIZE,
    EPOCH,
    FOOTER_SIZE,
    MAX_VIRTUAL_SIZE,
    NO_OFFSET,
    PLATFORM_W2KU,
    PLATFORM_W2RU,
    SECTOR,
    round_up,
    to_timestamp,
)

# Hyper-V's own creator fields (Windows Server 2012 R2 is Windows 6.3): qemu's
# vpc driver sizes a disk by its footer's current size only for creators it
# knows to do so ("win ", "qem2", "d2v ", "tap\0", "CTXS" in qemu 7.2; every
# creator but "vpc " and "qemu" from qemu 10), and otherwise by CHS, which
# rounds the size down. "win " makes qemu read exactly the size we write.
DEFAULT_CREATOR_APP = b"win "
DEFAULT_CREATOR_VERSION = (6, 3)
DEFAULT_CREATOR_HOST = b"Wi2k"

_HEADER_OFFSET = FOOTER_SIZE
_BAT_OFFSET = _HEADER_OFFSET + DYNAMIC_HEADER_SIZE
_ZEROS = bytes(1 << 20)
MAX_PATH_CHARS = 32767


@dataclass(frozen=True)
class WrittenVhd:
    """What a child file or a catalogue needs to know about the file just written."""

    unique_id: UUID
    size: int  # bytes written: the file's length


def write_vhd(
    out: BinaryIO,
    virtual_size: int,
    runs: Iterable[tuple[int, bytes]],
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    unique_id: UUID | None = None,
    timestamp: datetime | None = None,
    creator_app: bytes = DEFAULT_CREATOR_APP,
) -> WrittenVhd:
    """Writes a dynamic VHD defining ``runs``; everything else reads as zero.
    ``timestamp`` None writes 2000-01-01 00:00 UTC (0), so output is reproducible."""
    footer = _footer(virtual_size, DISK_DYNAMIC, unique_id, timestamp, creator_app)
    _check_block_size(block_size)
    header = DynamicHeader(_BAT_OFFSET, Blocks(virtual_size, block_size).count, block_size)
    return _write_sparse(out, footer, header, {}, runs)


def write_avhd(
    out: BinaryIO,
    virtual_size: int,
    parent_unique_id: UUID,
    parent_relative_path: str,
    parent_absolute_win32_path: str,
    runs: Iterable[tuple[int, bytes]],
    *,
    parent_timestamp: datetime,
    parent_name: str | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    unique_id: UUID | None = None,
    timestamp: datetime | None = None,
    creator_app: bytes = DEFAULT_CREATOR_APP,
) -> WrittenVhd:
    """Writes a differencing AVHD defining exactly the sectors ``runs`` touch;
    every other sector comes from the parent. ``parent_relative_path`` is
    Windows style, relative to the child's folder (e.g. ``.\\disk.vhd``);
    ``parent_name`` (default: the absolute path, or its file name when that is
    longer than the 255 characters the field holds) fills the header's
    parent unicode name."""
    footer = _footer(virtual_size, DISK_DIFFERENCING, unique_id, timestamp, creator_app)
    _check_block_size(block_size)
    paths = {PLATFORM_W2KU: parent_absolute_win32_path, PLATFORM_W2RU: parent_relative_path}
    for code, path in paths.items():
        if not path or len(path) > MAX_PATH_CHARS:
            raise VhdxUnsupported(f"parent locator {code.decode()}: 1 to 32767 characters needed")
    name = parent_name
    if name is None:
        name = parent_absolute_win32_path
        if len(name.encode("utf-16-be")) > NAME_SIZE - 2:
            name = PureWindowsPath(name).name
    if len(name.encode("utf-16-be")) > NAME_SIZE - 2:
        raise VhdxUnsupported(f"parent name {name!r}: at most 255 UTF-16 units fit the header")
    header = DynamicHeader(
        _BAT_OFFSET, Blocks(virtual_size, block_size).count, block_size, parent_unique_id,
        _seconds(parent_timestamp, "parent time stamp"), name,
    )  # fmt: skip
    return _write_sparse(out, footer, header, paths, runs)


def write_fixed_vhd(
    out: BinaryIO,
    virtual_size: int,
    runs: Iterable[tuple[int, bytes]],
    *,
    unique_id: UUID | None = None,
    timestamp: datetime | None = None,
    creator_app: bytes = DEFAULT_CREATOR_APP,
) -> WrittenVhd:
    """Writes a fixed VHD: the disk's bytes (``runs``, zeros elsewhere), then
    the footer. Gaps become holes in a regular file, written zeros elsewhere."""
    footer = _footer(virtual_size, DISK_FIXED, unique_id, timestamp, creator_app)
    blocks = Blocks(virtual_size, DEFAULT_BLOCK_SIZE)  # only to check the runs
    sparse = _resizable(out)
    if sparse:
        out.seek(0)
        out.truncate(0)
    pos = 0
    out.seek(0)
    for block in gather_blocks(runs, blocks.virtual_size, blocks.block_size, SECTOR, False):
        start = block.index * blocks.block_size
        _skip(out, pos, start, sparse)
        out.seek(start)
        out.write(block.data)
        pos = start + len(block.data)
    _skip(out, pos, virtual_size, sparse)
    out.seek(virtual_size)
    out.write(footer.encode())
    return WrittenVhd(footer.unique_id, virtual_size + FOOTER_SIZE)


def _skip(out: BinaryIO, pos: int, to: int, sparse: bool) -> None:
    """Zeros in [pos, to): a hole in a file just truncated, written otherwise."""
    if sparse or to <= pos:
        return
    out.seek(pos)
    while pos < to:
        n = min(len(_ZEROS), to - pos)
        out.write(_ZEROS[:n])
        pos += n


def _seconds(when: datetime, what: str) -> int:
    try:
        return to_timestamp(when)
    except ValueError as e:
        raise VhdxUnsupported(f"{what}: {e}") from None


def _check_block_size(block_size: int) -> None:
    if not is_valid_block_size(block_size):
        raise VhdxUnsupported(
            f"block size {block_size}: VHD needs a power of two from 512 bytes to 2 GiB"
        )


def _footer(
    virtual_size: int,
    disk_type: int,
    unique_id: UUID | None,
    timestamp: datetime | None,
    creator_app: bytes,
) -> Footer:
    if virtual_size % SECTOR or virtual_size <= 0:
        raise VhdxUnsupported(
            f"virtual size {virtual_size}: VHD needs a positive multiple of {SECTOR} bytes"
        )
    if virtual_size > MAX_VIRTUAL_SIZE:
        raise VhdxUnsupported(
            f"virtual size {virtual_size}: VHD holds at most 2040 GiB ({MAX_VIRTUAL_SIZE} bytes);"
            " use VHDX"
        )
    if len(creator_app) != 4:
        raise VhdxUnsupported(f"creator application {creator_app!r}: exactly 4 bytes needed")
    major, minor = DEFAULT_CREATOR_VERSION
    return Footer(
        data_offset=NO_OFFSET if disk_type == DISK_FIXED else _HEADER_OFFSET,
        timestamp=_seconds(timestamp or EPOCH, "time stamp"),
        creator_app=creator_app,
        creator_major=major,
        creator_minor=minor,
        creator_host=DEFAULT_CREATOR_HOST,
        original_size=virtual_size,
        current_size=virtual_size,
        geometry=chs(virtual_size),
        disk_type=disk_type,
        unique_id=unique_id or uuid.uuid4(),
    )


def _write_sparse(
    out: BinaryIO,
    footer: Footer,
    header: DynamicHeader,
    paths: dict[bytes, str],
    runs: Iterable[tuple[int, bytes]],
) -> WrittenVhd:
    blocks = Blocks(footer.current_size, header.block_size)
    bat_length = round_up(blocks.count * 4, SECTOR)
    next_free = _BAT_OFFSET + bat_length
    locators = []
    out.seek(next_free)
    for index, (code, path) in enumerate(paths.items()):
        data = path.encode("utf-16-le")
        space = round_up(len(data), SECTOR)
        # Data space in bytes, as Windows writes it (docs/vhd.md).
        locators.append(LocatorEntry(index, code, space, len(data), next_free))
        out.write(data.ljust(space, b"\0"))
        next_free += space
    header = DynamicHeader(
        header.table_offset, header.max_table_entries, header.block_size,
        header.parent_unique_id, header.parent_timestamp, header.parent_name, tuple(locators),
    )  # fmt: skip
    out.seek(0)
    out.write(footer.encode())
    out.write(header.encode())
    for start in range(0, bat_length, len(_ZEROS)):  # every entry "not stored"
        out.write(b"\xff" * min(len(_ZEROS), bat_length - start))
    differencing = footer.disk_type == DISK_DIFFERENCING
    for block in gather_blocks(runs, blocks.virtual_size, blocks.block_size, SECTOR, False):
        if not differencing and block.data.count(0) == len(block.data):
            continue  # an unstored block of a dynamic disk reads as zero
        bitmap = _bitmap(block, blocks, differencing)
        out.seek(next_free)
        out.write(bitmap)
        out.write(block.data)
        if len(block.data) < blocks.block_size:  # the disk's last, short block
            out.write(bytes(blocks.block_size - len(block.data)))
        out.seek(_BAT_OFFSET + 4 * block.index)
        out.write((next_free // SECTOR).to_bytes(4, "big"))
        next_free += len(bitmap) + blocks.block_size
    out.seek(next_free)
    out.write(footer.encode())
    end = next_free + FOOTER_SIZE
    if out.seek(0, os.SEEK_END) > end and _resizable(out):
        out.truncate(end)
    return WrittenVhd(footer.unique_id, end)


def _bitmap(block: PendingBlock, blocks: Blocks, differencing: bool) -> bytes:
    runs = block.sector_runs if differencing else [[0, len(block.data) // SECTOR]]
    return pack_runs(runs, blocks.bitmap_size)


def _resizable(out: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(out.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: BytesIO
        return True
