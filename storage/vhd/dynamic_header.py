"""The dynamic disk header: 1024 bytes at the footer's data offset (512 in
every file ckpt writes) of a dynamic or differencing VHD.

Field offsets (big-endian): cookie 0 "cxsparse" (8), data offset 8 (8, unused:
all ones), table offset 16 (8: the BAT), header version 24, max table entries
28, block size 32, checksum 36, parent unique id 40 (16), parent time stamp
56, reserved 60, parent unicode name 64 (512 bytes, UTF-16 **big**-endian,
zero padded), 8 parent locator entries at 576 (24 bytes each), reserved
768..1023.

Parent locator entry (24 bytes): platform code 0 (4 bytes, e.g. "W2ru"),
platform data space 4 (room reserved for the data: the specification says in
sectors, Windows writes bytes; a value below 512 is read as sectors), data
length 8 (bytes), reserved 12, data offset 16 (8, from the start of the file).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from uuid import UUID

from ckpt.storage.vhdx.source import Source

from .checksum import HEADER_CHECKSUM_OFFSET, ones_complement_sum, with_checksum
from .geometry import is_valid_block_size
from .layout import DYNAMIC_COOKIE, DYNAMIC_HEADER_SIZE, FORMAT_VERSION, NO_OFFSET, SECTOR

_LAYOUT = struct.Struct(">8sQQIII I16sII")  # 64 bytes, then the parent name
_ENTRY = struct.Struct(">4sIIIQ")
NAME_OFFSET = 64
NAME_SIZE = 512
LOCATORS_OFFSET = 576
LOCATOR_COUNT = 8
_NO_PARENT = UUID(int=0)


@dataclass(frozen=True)
class LocatorEntry:
    index: int
    platform: bytes
    data_space: int
    data_length: int
    data_offset: int

    @property
    def space_bytes(self) -> int:
        """The reserved room in bytes, whichever unit the writer used."""
        return self.data_space * SECTOR if self.data_space < SECTOR else self.data_space

    def encode(self) -> bytes:
        return _ENTRY.pack(self.platform, self.data_space, self.data_length, 0, self.data_offset)


@dataclass(frozen=True)
class DynamicHeader:
    table_offset: int
    max_table_entries: int
    block_size: int
    parent_unique_id: UUID = _NO_PARENT
    parent_timestamp: int = 0
    parent_name: str = ""
    locators: tuple[LocatorEntry, ...] = field(default=())

    def encode(self) -> bytes:
        raw = bytearray(DYNAMIC_HEADER_SIZE)
        _LAYOUT.pack_into(
            raw, 0, DYNAMIC_COOKIE, NO_OFFSET, self.table_offset, FORMAT_VERSION,
            self.max_table_entries, self.block_size, 0, self.parent_unique_id.bytes,
            self.parent_timestamp, 0,
        )  # fmt: skip
        name = self.parent_name.encode("utf-16-be")
        raw[NAME_OFFSET : NAME_OFFSET + len(name)] = name
        for entry in self.locators:
            at = LOCATORS_OFFSET + entry.index * _ENTRY.size
            raw[at : at + _ENTRY.size] = entry.encode()
        return with_checksum(raw, HEADER_CHECKSUM_OFFSET)


def read_dynamic_header(src: Source, offset: int) -> DynamicHeader:
    """The checked header at ``offset``; ``VhdxCorrupt``/``VhdxUnsupported``
    naming the field. Locator entries with a platform code are kept (their
    data is checked by ``parent_locator``)."""
    what = "dynamic header"
    raw = src.read(offset, DYNAMIC_HEADER_SIZE, what)
    (
        cookie, _next, table_offset, version, max_entries, block_size, checksum,
        parent_id, parent_time, _reserved,
    ) = _LAYOUT.unpack_from(raw)  # fmt: skip
    if cookie != DYNAMIC_COOKIE:
        raise src.corrupt(
            what, f"cookie {cookie!r} at byte {offset:#x}, expected {DYNAMIC_COOKIE!r}"
        )
    expected = ones_complement_sum(raw, HEADER_CHECKSUM_OFFSET)
    if checksum != expected:
        raise src.corrupt(what, f"checksum {checksum:#010x}, the bytes sum to {expected:#010x}")
    if version >> 16 != FORMAT_VERSION >> 16:
        raise src.unsupported(what, f"header version {version:#010x}, ckpt reads 1.x")
    if not is_valid_block_size(block_size):
        raise src.corrupt(
            what, f"block size {block_size} is not a power of two of at least {SECTOR}"
        )
    name_raw = raw[NAME_OFFSET : NAME_OFFSET + NAME_SIZE]
    try:
        name = name_raw.decode("utf-16-be").split("\0", 1)[0]
    except UnicodeDecodeError:
        raise src.corrupt(what, "parent unicode name is not UTF-16BE") from None
    locators = []
    for index in range(LOCATOR_COUNT):
        code, space, length, _res, data_offset = _ENTRY.unpack_from(
            raw, LOCATORS_OFFSET + index * _ENTRY.size
        )
        if code != bytes(4):
            locators.append(LocatorEntry(index, code, space, length, data_offset))
    return DynamicHeader(
        table_offset, max_entries, block_size, UUID(bytes=parent_id), parent_time, name,
        tuple(locators),
    )  # fmt: skip
