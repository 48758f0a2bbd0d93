"""The region table: where the BAT and the metadata region are.

Terms:
    region table  64 KiB at 192 KiB, with an identical copy at 256 KiB. A copy
                  is *valid* when its signature is ``regi``, its CRC-32C (over
                  the 64 KiB, checksum field as zero) matches and it has at most
                  2,047 entries. ckpt uses table 1 when valid, else table 2.
    required      an entry flag: a reader that does not know the region must
                  refuse the file. Unknown optional regions are ignored.

Layout::

    table header  0 4s "regi" | 4 u32 CRC-32C | 8 u32 entry count | 12 u32 reserved
    entry (x n)   0 16s region GUID | 16 u64 file offset | 24 u32 length |
                  28 u32 flags (bit 0 = required)

Offsets and lengths are multiples of 1 MiB, regions start at or after 1 MiB,
lie inside the file and do not overlap; ckpt checks all of that.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from .checksum import structure_crc, with_crc
from .layout import (
    ALIGNMENT,
    BAT_REGION,
    HEADER_SECTION_SIZE,
    METADATA_REGION,
    REGION_TABLE_MAX_ENTRIES,
    REGION_TABLE_OFFSETS,
    REGION_TABLE_SIGNATURE,
    REGION_TABLE_SIZE,
    describe_offset,
)
from .source import Source

_TABLE_HEADER = struct.Struct("<4sIII")
_ENTRY = struct.Struct("<16sQII")
_REQUIRED = 1
_NAMES = {BAT_REGION: "BAT region", METADATA_REGION: "metadata region"}


@dataclass(frozen=True)
class Region:
    guid: UUID
    offset: int
    length: int
    required: bool = True

    @property
    def name(self) -> str:
        return _NAMES.get(self.guid, f"region {self.guid}")


def encode_region_table(regions: Sequence[Region]) -> bytes:
    """The 64 KiB on-disk table, CRC-32C filled in."""
    raw = bytearray(REGION_TABLE_SIZE)
    _TABLE_HEADER.pack_into(raw, 0, REGION_TABLE_SIGNATURE, 0, len(regions), 0)
    for i, region in enumerate(regions):
        flags = _REQUIRED if region.required else 0
        pos = _TABLE_HEADER.size + i * _ENTRY.size
        _ENTRY.pack_into(raw, pos, region.guid.bytes_le, region.offset, region.length, flags)
    return with_crc(raw)


def _parse(raw: bytes) -> list[Region] | str:
    """The entries of one copy, or why the copy is not valid."""
    sig, stored, count, _ = _TABLE_HEADER.unpack_from(raw)
    if sig != REGION_TABLE_SIGNATURE:
        return f"signature is {sig!r}, not b'regi'"
    computed = structure_crc(raw)
    if stored != computed:
        return f"checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
    if count > REGION_TABLE_MAX_ENTRIES:
        return f"{count} entries, at most {REGION_TABLE_MAX_ENTRIES} fit"
    regions = []
    for i in range(count):
        guid, offset, length, flags = _ENTRY.unpack_from(raw, _TABLE_HEADER.size + i * _ENTRY.size)
        regions.append(Region(UUID(bytes_le=guid), offset, length, bool(flags & _REQUIRED)))
    return regions


def read_region_table(src: Source) -> dict[UUID, Region]:
    """The regions ckpt knows (BAT and metadata), after checking every entry."""
    problems: list[str] = []
    for number, offset in enumerate(REGION_TABLE_OFFSETS, start=1):
        parsed = _parse(src.read(offset, REGION_TABLE_SIZE, f"region table {number}"))
        if isinstance(parsed, str):
            problems.append(f"region table {number} (at {describe_offset(offset)}): {parsed}")
            continue
        return _check(src, f"region table {number}", parsed)
    raise src.corrupt("region tables", "both copies are damaged: " + "; ".join(problems))


def _check(src: Source, what: str, regions: list[Region]) -> dict[UUID, Region]:
    known: dict[UUID, Region] = {}
    seen: set[UUID] = set()
    for region in regions:
        if region.guid in seen:
            raise src.corrupt(what, f"{region.name} is listed twice")
        seen.add(region.guid)
        if region.guid not in _NAMES:
            if region.required:
                raise src.unsupported(what, f"unknown required {region.name}")
            continue
        if region.offset % ALIGNMENT or region.length % ALIGNMENT or region.length == 0:
            raise src.corrupt(
                what,
                f"{region.name} at {region.offset} (+{region.length}) is not a non-empty, "
                "1 MiB aligned span",
            )
        if region.offset < HEADER_SECTION_SIZE:
            raise src.corrupt(what, f"{region.name} overlaps the header section (first MiB)")
        src.check_span(region.offset, region.length, f"{what}: {region.name}")
        known[region.guid] = region
    for guid, name in _NAMES.items():
        if guid not in known:
            raise src.corrupt(what, f"no {name}")
    bat, meta = known[BAT_REGION], known[METADATA_REGION]
    if bat.offset < meta.offset + meta.length and meta.offset < bat.offset + bat.length:
        raise src.corrupt(what, "the BAT region and the metadata region overlap")
    return known
