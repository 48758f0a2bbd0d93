"""Writing a new base VHDX or differencing AVHDX to a stream, in one pass.

File layout ckpt writes (every region and block 1 MiB aligned)::

    0        file identifier "vhdxfile" + creator (UTF-16LE)
    64 KiB   header 1, sequence number 1      128 KiB  header 2, sequence number 2
    192 KiB  region table 1                   256 KiB  region table 2 (same bytes)
    1 MiB    log, 1 MiB of zeros, LogGuid zero in both headers (= empty)
    2 MiB    metadata region, 1 MiB (metadata.py)
    3 MiB    BAT region, entries rounded up to whole MiB
    then     payload blocks and sector bitmap blocks, in the order first needed

Block states written: a base file stores a touched block holding any non-zero
byte as fully present (6) and every other block as zero (2); a differencing
file stores a block whose sectors are all defined as fully present (6), a
block with some as partially present (7, sector bitmap set), others as not
present (0, from the parent). Zeros a differencing file must show over its
parent are written as data, never as the zero state.

The writer seeks: it writes each block as it completes and a chunk's BAT
entries and sector bitmap when the chunk is done, so memory stays at one
block, one 1 MiB bitmap and one chunk of BAT entries (at most 256 KiB).
"""

from __future__ import annotations

import os
import stat
import sys
import uuid
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO
from uuid import UUID

from ckpt.domain.errors import VhdxUnsupported
from ckpt.storage.run_blocks import PendingBlock, gather_blocks

from .bat import BITMAP_PRESENT, BlockState, encode_entry
from .bitmap import pack_runs
from .geometry import Geometry, ceil_div
from .header import Header, encode_file_identifier
from .layout import (
    ALIGNMENT,
    BAT_REGION,
    HEADER_OFFSETS,
    HEADER_SECTION_SIZE,
    HEADER_SIZE,
    HEADER_VERSION,
    LOG_VERSION,
    MAX_VIRTUAL_SIZE,
    METADATA_REGION,
    REGION_TABLE_OFFSETS,
    SECTOR_BITMAP_BLOCK_SIZE,
    SECTOR_SIZES,
    ZERO_GUID,
    MiB,
)
from .metadata import DiskParameters, encode_metadata, is_valid_block_size
from .parent_locator import format_linkage
from .region_table import Region, encode_region_table

# Windows' own choices (HYPERV.md): 32 MiB blocks for dynamic disks, 2 MiB for
# differencing ones; 4 KiB physical sectors as Windows reports for its files.
DEFAULT_BLOCK_SIZE = 32 * MiB
DEFAULT_DIFFERENCING_BLOCK_SIZE = 2 * MiB
DEFAULT_PHYSICAL_SECTOR_SIZE = 4096
DEFAULT_CREATOR = "ckpt"

_LOG_OFFSET = HEADER_SECTION_SIZE
_LOG_LENGTH = MiB
_METADATA_OFFSET = _LOG_OFFSET + _LOG_LENGTH
_METADATA_LENGTH = MiB
_BAT_OFFSET = _METADATA_OFFSET + _METADATA_LENGTH


@dataclass(frozen=True)
class WrittenVhdx:
    """What a child file or a catalogue needs to know about the file just written."""

    data_write_guid: UUID
    file_write_guid: UUID
    virtual_disk_id: UUID
    size: int


def write_vhdx(
    out: BinaryIO,
    virtual_size: int,
    runs: Iterable[tuple[int, bytes]],
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    logical_sector_size: int = 512,
    physical_sector_size: int = DEFAULT_PHYSICAL_SECTOR_SIZE,
    virtual_disk_id: UUID | None = None,
    data_write_guid: UUID | None = None,
    creator: str = DEFAULT_CREATOR,
) -> WrittenVhdx:
    """Writes a dynamic base VHDX defining ``runs`` (everything else reads as zero)."""
    params = DiskParameters(
        virtual_size, block_size, logical_sector_size, physical_sector_size,
        virtual_disk_id or uuid.uuid4(),
    )  # fmt: skip
    return _write(out, params, runs, data_write_guid or uuid.uuid4(), creator)


def write_avhdx(
    out: BinaryIO,
    virtual_size: int,
    parent_data_write_guid: UUID,
    parent_relative_path: str,
    parent_absolute_win32_path: str,
    runs: Iterable[tuple[int, bytes]],
    *,
    parent_volume_path: str | None = None,
    block_size: int = DEFAULT_DIFFERENCING_BLOCK_SIZE,
    logical_sector_size: int = 512,
    physical_sector_size: int = DEFAULT_PHYSICAL_SECTOR_SIZE,
    virtual_disk_id: UUID | None = None,
    data_write_guid: UUID | None = None,
    creator: str = DEFAULT_CREATOR,
) -> WrittenVhdx:
    """Writes a differencing AVHDX defining exactly ``runs``; every other sector
    comes from the parent. ``parent_relative_path`` is Windows style, relative
    to the child's folder (e.g. ``.\\disk.vhdx``)."""
    locator = {
        "parent_linkage": format_linkage(parent_data_write_guid),
        "relative_path": parent_relative_path,
        "absolute_win32_path": parent_absolute_win32_path,
    }
    if parent_volume_path:
        locator["volume_path"] = parent_volume_path
    params = DiskParameters(
        virtual_size, block_size, logical_sector_size, physical_sector_size,
        virtual_disk_id or uuid.uuid4(), parent_locator=locator,
    )  # fmt: skip
    return _write(out, params, runs, data_write_guid or uuid.uuid4(), creator)


def _check(params: DiskParameters) -> None:
    if not is_valid_block_size(params.block_size):
        raise VhdxUnsupported(
            f"block size {params.block_size}: VHDX needs a power of two from 1 MiB to 256 MiB"
        )
    for what, size in (
        ("logical", params.logical_sector_size),
        ("physical", params.physical_sector_size),
    ):
        if size not in SECTOR_SIZES:
            raise VhdxUnsupported(f"{what} sector size {size}: VHDX knows 512 and 4096")
    size = params.virtual_size
    if not 0 < size <= MAX_VIRTUAL_SIZE or size % params.logical_sector_size:
        raise VhdxUnsupported(
            f"virtual size {size}: must be a multiple of the {params.logical_sector_size}"
            "-byte sector, from one sector to 64 TiB"
        )
    for key, value in (params.parent_locator or {}).items():
        if not value or len(value.encode("utf-16-le")) > 0xFFFF:
            raise VhdxUnsupported(f"parent locator {key}: 1 to 32767 characters needed")


def _write(
    out: BinaryIO,
    params: DiskParameters,
    runs: Iterable[tuple[int, bytes]],
    data_write_guid: UUID,
    creator: str,
) -> WrittenVhdx:
    _check(params)
    g = Geometry(
        params.virtual_size, params.block_size, params.logical_sector_size, params.has_parent
    )
    bat_length = ceil_div(g.bat_entries * 8, ALIGNMENT) * ALIGNMENT
    file_write_guid = uuid.uuid4()
    _write_fixed_part(out, params, g, bat_length, file_write_guid, data_write_guid, creator)

    chunks = _ChunkWriter(out, g, _BAT_OFFSET + bat_length)
    for block in gather_blocks(runs, g.virtual_size, g.block_size, g.logical_sector_size, True):
        chunks.add(block)
    chunks.finish()
    end = chunks.next_free
    if out.seek(0, os.SEEK_END) < end:
        out.seek(end - 1)
        out.write(b"\0")  # a real file gets a hole, not written zeros
    elif _resizable(out):  # a block device keeps its size: the VHDX ends at `end` inside it
        out.truncate(end)
    return WrittenVhdx(data_write_guid, file_write_guid, params.virtual_disk_id, end)


def _resizable(out: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(out.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: BytesIO
        return True


def _write_fixed_part(
    out: BinaryIO,
    params: DiskParameters,
    g: Geometry,
    bat_length: int,
    file_write_guid: UUID,
    data_write_guid: UUID,
    creator: str,
) -> None:
    """Header section, empty log, metadata region, the BAT's tail padding."""
    section = bytearray(HEADER_SECTION_SIZE)
    identifier = encode_file_identifier(creator)
    section[: len(identifier)] = identifier
    for sequence, offset in enumerate(HEADER_OFFSETS, start=1):
        header = Header(
            sequence, file_write_guid, data_write_guid, ZERO_GUID, LOG_VERSION, HEADER_VERSION,
            _LOG_LENGTH, _LOG_OFFSET,
        )  # fmt: skip
        section[offset : offset + HEADER_SIZE] = header.encode()
    table = encode_region_table(
        [
            Region(BAT_REGION, _BAT_OFFSET, bat_length),
            Region(METADATA_REGION, _METADATA_OFFSET, _METADATA_LENGTH),
        ]
    )
    for offset in REGION_TABLE_OFFSETS:
        section[offset : offset + len(table)] = table
    out.seek(0)
    out.write(section)
    out.write(bytes(_LOG_LENGTH))
    out.write(encode_metadata(params).ljust(_METADATA_LENGTH, b"\0"))
    used = g.bat_entries * 8
    out.seek(_BAT_OFFSET + used)
    out.write(bytes(bat_length - used))


class _ChunkWriter:
    """Places blocks and writes each chunk's BAT entries and sector bitmap."""

    def __init__(self, out: BinaryIO, g: Geometry, first_free: int) -> None:
        self.out, self.g, self.next_free = out, g, first_free
        self._default = int(BlockState.NOT_PRESENT if g.has_parent else BlockState.ZERO)
        self._chunk = 0
        self._reset()

    def _reset(self) -> None:
        g, first = self.g, self._chunk * self.g.chunk_ratio
        in_disk = max(0, min(g.chunk_ratio, g.payload_blocks - first))
        self._entries = array("Q", [self._default] * in_disk)
        self._entries.extend([0] * (g.chunk_ratio - in_disk + 1))  # + the bitmap entry
        self._bitmap: bytearray | None = None
        self._bitmap_offset = 0

    def add(self, block: PendingBlock) -> None:
        g = self.g
        while block.index // g.chunk_ratio > self._chunk:
            self._flush()
        defined = block.defined_sectors()
        if not g.has_parent:
            if block.data.count(0) == len(block.data):
                return  # the chunk's default entry is already "zero"
            state = BlockState.FULLY_PRESENT
        elif defined * g.logical_sector_size == len(block.data):
            state = BlockState.FULLY_PRESENT
        else:
            state = BlockState.PARTIALLY_PRESENT
            self._mark(block)
        offset = self._allocate(g.block_size)
        self.out.seek(offset)
        self.out.write(block.data)
        self._entries[block.index % g.chunk_ratio] = encode_entry(state, offset)

    def _mark(self, block: PendingBlock) -> None:
        g = self.g
        if self._bitmap is None:
            self._bitmap = bytearray(SECTOR_BITMAP_BLOCK_SIZE)
            self._bitmap_offset = self._allocate(SECTOR_BITMAP_BLOCK_SIZE)
            self._entries[g.chunk_ratio] = encode_entry(BITMAP_PRESENT, self._bitmap_offset)
        start = (block.index % g.chunk_ratio) * g.bitmap_bytes_per_block
        bits = pack_runs(block.sector_runs, g.sectors_per_block)
        self._bitmap[start : start + len(bits)] = bits

    def _allocate(self, size: int) -> int:
        offset = self.next_free
        self.next_free += size
        return offset

    def _flush(self) -> None:
        g = self.g
        if self._bitmap is not None:
            self.out.seek(self._bitmap_offset)
            self.out.write(self._bitmap)
        first = self._chunk * (g.chunk_ratio + 1)
        count = min(g.chunk_ratio + 1, g.bat_entries - first)
        self.out.seek(_BAT_OFFSET + first * 8)
        entries = self._entries[:count]
        if sys.byteorder == "big":  # pragma: no cover - VHDX is little-endian
            entries.byteswap()
        self.out.write(entries.tobytes())
        self._chunk += 1
        self._reset()

    def finish(self) -> None:
        while self._chunk < self.g.bitmap_blocks:
            self._flush()
