"""The block allocation table (BAT) of a dynamic or differencing VHD.

Terms:
    BAT entry   a big-endian u32 per block: the sector (offset / 512) where
                the block's sector bitmap starts, its data right after; or
                0xFFFFFFFF for a block the file does not store.
    max table entries  the header's entry count; at least one per block of the
                disk (Windows may reserve more for growth; ckpt reads only
                the entries for blocks inside the disk).

The table is read whole when the file is opened (4 bytes a block: 4 MiB at
the 2040 GiB maximum with 2 MiB blocks) after checking that it lies inside
the file, so its size is bounded by the file's. Each entry is checked when a
read first uses it.
"""

from __future__ import annotations

import struct

from ckpt.storage.vhdx.source import Source

from .geometry import Blocks
from .layout import SECTOR, UNALLOCATED

_ENTRY = struct.Struct(">I")


class Bat:
    """Checked BAT lookups: block -> file offset of its sector bitmap, or None."""

    def __init__(
        self, src: Source, table_offset: int, max_entries: int, blocks: Blocks, data_end: int,
        first_data: int,
    ) -> None:  # fmt: skip
        if max_entries < blocks.count:
            raise src.corrupt(
                "dynamic header",
                f"max table entries {max_entries} is fewer than the {blocks.count} blocks of a "
                f"{blocks.virtual_size}-byte disk in {blocks.block_size}-byte blocks",
            )
        self._src = src
        self._blocks = blocks
        self._data_end = data_end
        self._first_data = first_data
        self._raw = src.read(table_offset, blocks.count * 4, "BAT")

    def entry(self, block: int) -> int | None:
        """The checked file offset of ``block``'s sector bitmap; None if not stored."""
        sector: int = _ENTRY.unpack_from(self._raw, block * 4)[0]
        if sector == UNALLOCATED:
            return None
        offset: int = sector * SECTOR
        length = self._blocks.bitmap_size + self._blocks.span(block)[1]
        if offset < self._first_data or offset + length > self._data_end:
            raise self._src.corrupt(
                f"BAT entry {block}",
                f"sector {sector:#x}: the block's {length} bytes at byte {offset:#x} lie outside "
                f"the data area [{self._first_data:#x}, {self._data_end:#x})",
            )
        return offset

    def allocated(self) -> int:
        """How many entries name a stored block (unchecked)."""
        return sum(1 for (s,) in _ENTRY.iter_unpack(self._raw) if s != UNALLOCATED)
