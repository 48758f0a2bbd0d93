"""The metadata region: the disk's parameters as small, GUID-named items.

Terms:
    metadata table  64 KiB at the start of the metadata region: signature
                    ``metadata``, then up to 2,047 entries naming an item, its
                    offset (from the region's start, >= 64 KiB) and length.
    item flags      bit 0 IsUser, bit 1 IsVirtualDisk (describes the virtual
                    disk, not the file), bit 2 IsRequired (a reader that does
                    not know the item must refuse the file).

Layout::

    table header  0 8s "metadata" | 8 u16 reserved | 10 u16 entry count | 12 20s reserved
    entry (x n)   0 16s item GUID | 16 u32 offset | 20 u32 length | 24 u32 flags | 28 u32 reserved

Items ckpt reads and writes (in this order, from 64 KiB on, as Windows does):

    File Parameters       8 bytes  u32 block size | u32 bit 0 LeaveBlockAllocated, bit 1 HasParent
                                   flags IsRequired
    Virtual Disk Size     8 bytes  u64, a multiple of the logical sector size
    Logical Sector Size   4 bytes  u32, 512 or 4096
    Physical Sector Size  4 bytes  u32, 512 or 4096
    Page 83 Data         16 bytes  the virtual disk id (GUID)
                                   these four: flags IsVirtualDisk | IsRequired
    Parent Locator         varies  differencing files only (parent_locator.py); IsRequired
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

from .layout import (
    FILE_PARAMETERS,
    LOGICAL_SECTOR_SIZE,
    MAX_BLOCK_SIZE,
    MAX_VIRTUAL_SIZE,
    METADATA_ITEM_MAX_SIZE,
    METADATA_MAX_ENTRIES,
    METADATA_SIGNATURE,
    METADATA_TABLE_SIZE,
    MIN_BLOCK_SIZE,
    PAGE_83_DATA,
    PARENT_LOCATOR,
    PHYSICAL_SECTOR_SIZE,
    SECTOR_SIZES,
    VIRTUAL_DISK_SIZE,
)
from .parent_locator import encode_parent_locator, parse_parent_locator
from .region_table import Region
from .source import Source

_TABLE_HEADER = struct.Struct("<8sHH20s")
_ENTRY = struct.Struct("<16sIIII")
IS_USER, IS_VIRTUAL_DISK, IS_REQUIRED = 1, 2, 4
_LEAVE_BLOCK_ALLOCATED, _HAS_PARENT = 1, 2

_NAMES = {
    FILE_PARAMETERS: "File Parameters",
    VIRTUAL_DISK_SIZE: "Virtual Disk Size",
    LOGICAL_SECTOR_SIZE: "Logical Sector Size",
    PHYSICAL_SECTOR_SIZE: "Physical Sector Size",
    PAGE_83_DATA: "Page 83 Data",
    PARENT_LOCATOR: "Parent Locator",
}


@dataclass(frozen=True)
class DiskParameters:
    """Everything the metadata region says about the disk."""

    virtual_size: int
    block_size: int
    logical_sector_size: int
    physical_sector_size: int
    virtual_disk_id: UUID
    leave_block_allocated: bool = False
    parent_locator: Mapping[str, str] | None = None  # set exactly when HasParent is

    @property
    def has_parent(self) -> bool:
        return self.parent_locator is not None


def is_valid_block_size(size: int) -> bool:
    return MIN_BLOCK_SIZE <= size <= MAX_BLOCK_SIZE and size & (size - 1) == 0


def encode_metadata(params: DiskParameters) -> bytes:
    """Table and items, ``64 KiB + items`` long; the caller pads the region."""
    flags = (_LEAVE_BLOCK_ALLOCATED if params.leave_block_allocated else 0) | (
        _HAS_PARENT if params.has_parent else 0
    )
    disk = IS_VIRTUAL_DISK | IS_REQUIRED
    items: list[tuple[UUID, int, bytes]] = [
        (FILE_PARAMETERS, IS_REQUIRED, struct.pack("<II", params.block_size, flags)),
        (VIRTUAL_DISK_SIZE, disk, struct.pack("<Q", params.virtual_size)),
        (LOGICAL_SECTOR_SIZE, disk, struct.pack("<I", params.logical_sector_size)),
        (PHYSICAL_SECTOR_SIZE, disk, struct.pack("<I", params.physical_sector_size)),
        (PAGE_83_DATA, disk, params.virtual_disk_id.bytes_le),
    ]
    if params.parent_locator is not None:
        items.append((PARENT_LOCATOR, IS_REQUIRED, encode_parent_locator(params.parent_locator)))
    table = bytearray(METADATA_TABLE_SIZE)
    _TABLE_HEADER.pack_into(table, 0, METADATA_SIGNATURE, 0, len(items), bytes(20))
    body = bytearray()
    for i, (guid, item_flags, value) in enumerate(items):
        offset = METADATA_TABLE_SIZE + len(body)
        pos = _TABLE_HEADER.size + i * _ENTRY.size
        _ENTRY.pack_into(table, pos, guid.bytes_le, offset, len(value), item_flags, 0)
        body += value
    return bytes(table + body)


def read_metadata(src: Source, region: Region) -> DiskParameters:
    """Reads and range-checks every item ckpt needs; refuses unknown required ones."""
    raw = src.read(region.offset, METADATA_TABLE_SIZE, "metadata table")
    sig, _, count, _ = _TABLE_HEADER.unpack_from(raw)
    if sig != METADATA_SIGNATURE:
        raise src.corrupt("metadata table", f"signature is {sig!r}, not b'metadata'")
    if count > METADATA_MAX_ENTRIES:
        raise src.corrupt("metadata table", f"{count} entries, at most 2047 fit")
    spans: dict[UUID, tuple[int, int]] = {}
    seen: set[tuple[UUID, bool]] = set()
    for i in range(count):
        raw_guid, offset, length, flags, _ = _ENTRY.unpack_from(
            raw, _TABLE_HEADER.size + i * _ENTRY.size
        )
        guid, is_user = UUID(bytes_le=raw_guid), bool(flags & IS_USER)
        name = _NAMES.get(guid, f"{guid}")
        if (guid, is_user) in seen:
            raise src.corrupt("metadata table", f"item {name} is listed twice")
        seen.add((guid, is_user))
        if length and (
            offset < METADATA_TABLE_SIZE
            or length > METADATA_ITEM_MAX_SIZE
            or offset + length > region.length
        ):
            raise src.corrupt(
                "metadata table",
                f"item {name}: {length} bytes at {offset} are not inside the region's item "
                f"area (64 KiB to {region.length} bytes)",
            )
        if guid not in _NAMES or is_user:
            if flags & IS_REQUIRED:
                raise src.unsupported("metadata table", f"unknown required item {name}")
            continue
        spans[guid] = (offset, length)

    def item(guid: UUID, size: int | None = None) -> bytes:
        what = f"metadata item {_NAMES[guid]}"
        if guid not in spans:
            raise src.corrupt("metadata table", f"no {_NAMES[guid]} item")
        offset, length = spans[guid]
        if size is not None and length != size:
            raise src.corrupt(what, f"{length} bytes, must be {size}")
        return src.read(region.offset + offset, length, what)

    block_size, flags = struct.unpack("<II", item(FILE_PARAMETERS, 8))
    (virtual_size,) = struct.unpack("<Q", item(VIRTUAL_DISK_SIZE, 8))
    (logical,) = struct.unpack("<I", item(LOGICAL_SECTOR_SIZE, 4))
    (physical,) = struct.unpack("<I", item(PHYSICAL_SECTOR_SIZE, 4))
    disk_id = UUID(bytes_le=item(PAGE_83_DATA, 16))
    if not is_valid_block_size(block_size):
        raise src.corrupt(
            "metadata item File Parameters",
            f"block size {block_size} is not a power of two from 1 MiB to 256 MiB",
        )
    for what, size in (("Logical Sector Size", logical), ("Physical Sector Size", physical)):
        if size not in SECTOR_SIZES:
            raise src.corrupt(f"metadata item {what}", f"{size}, must be 512 or 4096")
    if not 0 < virtual_size <= MAX_VIRTUAL_SIZE or virtual_size % logical:
        raise src.corrupt(
            "metadata item Virtual Disk Size",
            f"{virtual_size} is not a multiple of the {logical}-byte sector from one "
            "sector to 64 TiB",
        )
    locator = None
    if flags & _HAS_PARENT:
        locator = parse_parent_locator(src, item(PARENT_LOCATOR))
    return DiskParameters(
        virtual_size, block_size, logical, physical, disk_id,
        bool(flags & _LEAVE_BLOCK_ALLOCATED), locator,
    )  # fmt: skip
