"""The arithmetic of a VHDX disk: blocks, chunks and BAT indexes.

Terms:
    chunk        the virtual disk span one sector bitmap block describes:
                 2^23 logical sectors (4 GiB with 512-byte sectors).
    chunk ratio  payload blocks per chunk = 2^23 * logical sector size /
                 block size; 16 (256 MiB blocks, 512 B sectors) to 32,768
                 (1 MiB blocks, 4 KiB sectors).
    BAT index    the BAT interleaves entries: after every ``chunk_ratio``
                 payload entries comes that chunk's sector bitmap entry, so
                 payload block b sits at b + b // ratio and chunk c's bitmap
                 entry at c * (ratio + 1) + ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

from .layout import SECTORS_PER_BITMAP_BLOCK


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Geometry:
    """Sizes that fix the BAT's shape; the caller has range-checked the fields."""

    virtual_size: int
    block_size: int
    logical_sector_size: int
    has_parent: bool

    @property
    def sectors_per_block(self) -> int:
        return self.block_size // self.logical_sector_size

    @property
    def bitmap_bytes_per_block(self) -> int:
        # At least 1 MiB / 4 KiB = 256 sectors, so always a whole number of bytes.
        return self.sectors_per_block // 8

    @property
    def chunk_ratio(self) -> int:
        return SECTORS_PER_BITMAP_BLOCK * self.logical_sector_size // self.block_size

    @property
    def payload_blocks(self) -> int:
        return ceil_div(self.virtual_size, self.block_size)

    @property
    def bitmap_blocks(self) -> int:
        return ceil_div(self.payload_blocks, self.chunk_ratio)

    @property
    def bat_entries(self) -> int:
        """Entries the BAT must hold (MS-VHDX 2.5): a differencing file needs the
        bitmap entry of its last chunk, a base file only its last payload entry."""
        if self.has_parent:
            return self.bitmap_blocks * (self.chunk_ratio + 1)
        return self.payload_blocks + (self.payload_blocks - 1) // self.chunk_ratio

    def payload_index(self, block: int) -> int:
        return block + block // self.chunk_ratio

    def bitmap_index(self, chunk: int) -> int:
        return chunk * (self.chunk_ratio + 1) + self.chunk_ratio

    def block_span(self, block: int) -> tuple[int, int]:
        """(virtual byte offset, length) of a payload block; the last one may be short."""
        start = block * self.block_size
        return start, min(self.block_size, self.virtual_size - start)
