"""Disk geometry: the footer's CHS triple, and blocks of a dynamic disk.

Terms:
    CHS          cylinders (16 bits), heads (8 bits), sectors per track (8
                 bits): the geometry an emulated ATA disk reports. The
                 specification's appendix gives the algorithm; its product of
                 sectors rounds the size *down*, so a reader that sizes a
                 disk by CHS (Virtual PC, qemu for some creators) sees less
                 than the footer's current size (docs/vhd.md, "sizes").
    block        ``block_size`` bytes of the virtual disk (a power of two, at
                 least one sector); the last block may be cut short by the
                 disk's end.
    sector bitmap one bit per sector of a block, padded to whole sectors,
                 stored just before the block's data.
"""

from __future__ import annotations

from dataclasses import dataclass

from .layout import SECTOR, ceil_div, round_up

# The largest CHS the algorithm gives: 65535 cylinders x 16 heads x 255 sectors
# (~127 GiB); every larger disk is given exactly this.
MAX_CHS_SECTORS = 65535 * 16 * 255


def chs(virtual_size: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) for a disk of ``virtual_size`` bytes,
    by the algorithm in the specification's appendix."""
    total = min(virtual_size // SECTOR, MAX_CHS_SECTORS)
    if total >= 65535 * 16 * 63:
        per_track, heads = 255, 16
        cylinders_heads = total // per_track
    else:
        per_track = 17
        cylinders_heads = total // per_track
        heads = max(4, (cylinders_heads + 1023) // 1024)
        if cylinders_heads >= heads * 1024 or heads > 16:
            per_track, heads = 31, 16
            cylinders_heads = total // per_track
        if cylinders_heads >= heads * 1024:
            per_track, heads = 63, 16
            cylinders_heads = total // per_track
    return cylinders_heads // heads, heads, per_track


def is_valid_block_size(block_size: int) -> bool:
    return block_size >= SECTOR and block_size & (block_size - 1) == 0 and block_size < 1 << 32


@dataclass(frozen=True)
class Blocks:
    """Where each block of a dynamic or differencing disk lies in the virtual disk."""

    virtual_size: int
    block_size: int

    @property
    def count(self) -> int:
        return ceil_div(self.virtual_size, self.block_size)

    @property
    def sectors_per_block(self) -> int:
        return self.block_size // SECTOR

    @property
    def bitmap_size(self) -> int:
        """Bytes of a block's sector bitmap: one bit a sector, whole sectors."""
        return round_up(ceil_div(self.sectors_per_block, 8), SECTOR)

    def span(self, block: int) -> tuple[int, int]:
        """(virtual offset, length inside the disk) of ``block``."""
        start = block * self.block_size
        return start, min(self.block_size, self.virtual_size - start)
