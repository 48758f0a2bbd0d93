"""The block allocation table (BAT): the state and file offset of every block.

Terms:
    BAT entry       a u64: bits 0-2 the state, bits 3-19 reserved, bits 20-63
                    the file offset in MiB (so every block is 1 MiB aligned).
    payload states  0 not present (differencing: ask the parent; base: zero),
                    1 undefined, 2 zero, 3 unmapped (all three read as zero and
                    hide the parent), 6 fully present, 7 partially present
                    (differencing only: the chunk's sector bitmap says which
                    sectors are here). 4 and 5 are reserved.
    bitmap states   0 not present, 6 present (differencing only).

The BAT is loaded once as raw u64s (8 bytes per entry, no Python objects per
entry) and each entry is checked when it is used: state known, offset past the
header section, the block's bytes inside the file.
"""

from __future__ import annotations

import sys
from array import array
from enum import IntEnum

from .geometry import Geometry
from .layout import ALIGNMENT, HEADER_SECTION_SIZE, SECTOR_BITMAP_BLOCK_SIZE
from .region_table import Region
from .source import Source

_STATE_MASK = 0b111
_OFFSET_SHIFT = 20  # the offset field counts MiB: 2^20 bytes


class BlockState(IntEnum):
    """Payload BAT entry states (MS-VHDX 2.5.1.1)."""

    NOT_PRESENT = 0
    UNDEFINED = 1
    ZERO = 2
    UNMAPPED = 3
    FULLY_PRESENT = 6
    PARTIALLY_PRESENT = 7


BITMAP_NOT_PRESENT = 0
BITMAP_PRESENT = 6
_PAYLOAD_STATES = frozenset(int(s) for s in BlockState)


def encode_entry(state: int, file_offset: int = 0) -> int:
    """A BAT entry; ``file_offset`` must be a multiple of 1 MiB."""
    if file_offset % ALIGNMENT:
        raise ValueError(f"file offset {file_offset} is not 1 MiB aligned")
    return state | (file_offset // ALIGNMENT) << _OFFSET_SHIFT


class Bat:
    """Checked access to the BAT of one file."""

    def __init__(self, src: Source, region: Region, geometry: Geometry) -> None:
        needed = geometry.bat_entries * 8
        if needed > region.length:
            raise src.corrupt(
                "BAT region",
                f"{region.length} bytes hold {region.length // 8} entries, the disk needs "
                f"{geometry.bat_entries}",
            )
        self._src = src
        self._geometry = geometry
        self._entries = array("Q")  # 8 bytes on every CPython platform
        self._entries.frombytes(src.read(region.offset, needed, "BAT"))
        if sys.byteorder == "big":  # pragma: no cover - VHDX is little-endian
            self._entries.byteswap()

    def payload(self, block: int) -> tuple[BlockState, int]:
        """The state of payload block ``block`` and, when present, its file offset."""
        g = self._geometry
        raw = self._entries[g.payload_index(block)]
        state = raw & _STATE_MASK
        what = f"BAT entry of payload block {block}"
        if state not in _PAYLOAD_STATES:
            raise self._src.corrupt(what, f"reserved state {state}")
        if state == BlockState.PARTIALLY_PRESENT and not g.has_parent:
            raise self._src.corrupt(what, "partially present in a file without a parent")
        if state < BlockState.FULLY_PRESENT:
            return BlockState(state), 0
        offset = (raw >> _OFFSET_SHIFT) * ALIGNMENT
        if offset < HEADER_SECTION_SIZE:
            raise self._src.corrupt(what, f"offset {offset} lies in the header section")
        self._src.check_span(offset, g.block_span(block)[1], f"payload block {block}")
        return BlockState(state), offset

    def bitmap(self, block: int) -> int:
        """File offset of the sector bitmap block that covers payload block ``block``."""
        chunk = block // self._geometry.chunk_ratio
        raw = self._entries[self._geometry.bitmap_index(chunk)]
        what = f"BAT entry of sector bitmap {chunk}"
        if raw & _STATE_MASK != BITMAP_PRESENT:
            raise self._src.corrupt(
                what,
                f"state {raw & _STATE_MASK}, but payload block {block} is partially present",
            )
        offset = (raw >> _OFFSET_SHIFT) * ALIGNMENT
        if offset < HEADER_SECTION_SIZE:
            raise self._src.corrupt(what, f"offset {offset} lies in the header section")
        self._src.check_span(offset, SECTOR_BITMAP_BLOCK_SIZE, f"sector bitmap {chunk}")
        return offset

    def count_bitmaps_present(self) -> int:
        """How many sector bitmap entries say present (a cheap summary for tools)."""
        g = self._geometry
        step = g.chunk_ratio + 1
        return sum(
            1
            for i in range(g.chunk_ratio, len(self._entries), step)
            if self._entries[i] & _STATE_MASK == BITMAP_PRESENT
        )
