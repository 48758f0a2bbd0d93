"""Reading one VHD (fixed or dynamic) or AVHD (differencing) file from a stream.

Terms:
    own data  the sectors this file itself defines, whatever its parents
              say (the contract of ``VhdxReader.read_own``): a fixed disk
              defines every sector; a dynamic disk every sector too (an
              unstored block, and a stored sector whose bitmap bit is 0,
              read as zeros); a differencing disk only the sectors of stored
              blocks whose bitmap bit is 1 (the rest comes from the parent).
    run       (virtual byte offset, bytes): consecutive defined bytes.

``VhdReader`` mirrors ``ckpt.storage.vhdx.VhdxReader`` so that a chain
(``VhdxChain``) and the file helpers take either. It checks the footer (and
its copy at 0), the dynamic header, the BAT's bounds and the parent locator
when it opens the file, and each BAT entry when a read first uses it; every
problem is a ``VhdxError`` naming the file and the structure. Memory stays at
the BAT (4 bytes per block) plus what a call returns.
"""

from __future__ import annotations

from datetime import datetime
from typing import BinaryIO
from uuid import UUID

from ckpt.storage.vhdx.bat import BlockState
from ckpt.storage.vhdx.source import Source

from .bat import Bat
from .bitmap import all_set, set_runs
from .dynamic_header import DynamicHeader, read_dynamic_header
from .footer import Footer, has_footer_cookie, read_footer
from .geometry import Blocks
from .layout import (
    DEFAULT_BLOCK_SIZE,
    DISK_DIFFERENCING,
    DISK_FIXED,
    DYNAMIC_HEADER_SIZE,
    FOOTER_SIZE,
    SECTOR,
    from_timestamp,
)
from .parent_locator import read_locator


def is_vhd(stream: BinaryIO, size: int) -> bool:
    """Whether ``stream`` (``size`` bytes) looks like a VHD: a footer cookie
    at its end (512 or 511 bytes) or at offset 0. Nothing else is checked."""
    return has_footer_cookie(stream, size)


class VhdReader:
    """A VHD (fixed or dynamic) or AVHD (differencing) file, read-only."""

    logical_sector_size = SECTOR
    physical_sector_size = SECTOR

    def __init__(self, stream: BinaryIO, name: str = "<stream>") -> None:
        src = Source(stream, name)
        self._src = src
        self.name = name
        found = read_footer(src)
        self._footer: Footer = found.footer
        self.footer_from_copy = found.from_copy
        f = self._footer
        data_end = src.size - found.length
        self._header: DynamicHeader | None = None
        self._bat: Bat | None = None
        self._locator: dict[str, str] | None = None
        if f.disk_type == DISK_FIXED:
            if data_end < f.current_size:
                raise src.corrupt(
                    "fixed disk data",
                    f"the footer's current size is {f.current_size} bytes, the file holds "
                    f"{data_end} before its footer",
                )
            self._blocks = Blocks(f.current_size, DEFAULT_BLOCK_SIZE)
            return
        if f.data_offset < FOOTER_SIZE or f.data_offset + DYNAMIC_HEADER_SIZE > data_end:
            raise src.corrupt(
                "footer", f"data offset {f.data_offset:#x} leaves no room for the dynamic header"
            )
        header = read_dynamic_header(src, f.data_offset)
        self._header = header
        self._blocks = Blocks(f.current_size, header.block_size)
        bat_end = header.table_offset + self._blocks.count * 4
        if header.table_offset < FOOTER_SIZE or bat_end > data_end:
            raise src.corrupt(
                "dynamic header",
                f"table offset {header.table_offset:#x}: {self._blocks.count} BAT entries do not "
                f"fit between the footer copy and the footer at byte {data_end:#x}",
            )
        first_data = max(f.data_offset + DYNAMIC_HEADER_SIZE, bat_end)
        self._bat = Bat(
            src, header.table_offset, header.max_table_entries, self._blocks, data_end, first_data
        )
        if f.disk_type == DISK_DIFFERENCING:
            self._locator = read_locator(src, header, first_data)

    # -- what the footer and header say ------------------------------------------------

    @property
    def disk_type(self) -> str:
        return self._footer.kind

    @property
    def virtual_size(self) -> int:
        return self._footer.current_size

    @property
    def block_size(self) -> int:
        return self._blocks.block_size

    @property
    def block_count(self) -> int:
        return self._blocks.count

    @property
    def has_parent(self) -> bool:
        return self._footer.disk_type == DISK_DIFFERENCING

    @property
    def unique_id(self) -> UUID:
        return self._footer.unique_id

    @property
    def data_write_guid(self) -> UUID:
        """The footer's unique id: what a child names as its parent."""
        return self._footer.unique_id

    @property
    def virtual_disk_id(self) -> UUID:
        return self._footer.unique_id

    @property
    def file_write_guid(self) -> UUID:
        """VHD has one id; it stands for VHDX's three."""
        return self._footer.unique_id

    @property
    def leave_block_allocated(self) -> bool:
        """True for a fixed disk, whose every block is in the file (as VHDX's flag)."""
        return self._bat is None

    @property
    def timestamp(self) -> datetime:
        return self._footer.time

    @property
    def parent_timestamp(self) -> datetime | None:
        if not self.has_parent or self._header is None:
            return None
        return from_timestamp(self._header.parent_timestamp)

    @property
    def creator(self) -> str:
        return self._footer.creator

    @property
    def geometry(self) -> tuple[int, int, int]:
        """The footer's (cylinders, heads, sectors per track)."""
        return self._footer.geometry

    @property
    def parent_locator(self) -> dict[str, str] | None:
        """Keys as ``VhdxReader.parent_locator`` has them (a copy); None for a base."""
        return None if self._locator is None else dict(self._locator)

    @property
    def parent_linkages(self) -> tuple[UUID, ...]:
        if not self.has_parent or self._header is None:
            return ()
        return (self._header.parent_unique_id,)

    # -- blocks and data -----------------------------------------------------------------

    def block_state(self, block: int) -> BlockState:
        """NOT_PRESENT: not stored (zeros in a dynamic disk, the parent's in a
        differencing one); FULLY_PRESENT: stored (or fixed) and, in a
        differencing disk, every bitmap bit inside the disk set;
        PARTIALLY_PRESENT: a stored differencing block with some bits 0."""
        if not 0 <= block < self._blocks.count:
            raise IndexError(f"block {block} of {self._blocks.count}")
        if self._bat is None:
            return BlockState.FULLY_PRESENT
        offset = self._bat.entry(block)
        if offset is None:
            return BlockState.NOT_PRESENT
        if not self.has_parent:
            return BlockState.FULLY_PRESENT
        sectors = self._blocks.span(block)[1] // SECTOR
        bitmap = self._src.read(offset, -(-sectors // 8), f"sector bitmap of block {block}")
        if all_set(bitmap, sectors):
            return BlockState.FULLY_PRESENT
        return BlockState.PARTIALLY_PRESENT

    def read_own(self, offset: int, length: int) -> list[tuple[int, bytes]]:
        """This file's own data in [offset, offset + length) as sorted runs.

        Runs never overlap but may touch; the range is clipped to the disk.
        """
        if offset < 0 or length < 0:
            raise ValueError(f"negative offset {offset} or length {length}")
        end = min(offset + length, self.virtual_size)
        if end <= offset:
            return []
        if self._bat is None:
            return [(offset, self._src.read(offset, end - offset, "fixed disk data"))]
        runs: list[tuple[int, bytes]] = []
        pos = offset
        while pos < end:
            block = pos // self._blocks.block_size
            start, block_length = self._blocks.span(block)
            stop = min(end, start + block_length)
            file_offset = self._bat.entry(block)
            if file_offset is None:
                if not self.has_parent:
                    runs.append((pos, bytes(stop - pos)))
            else:
                runs.extend(self._stored(block, file_offset, pos, stop))
            pos = stop
        return runs

    def read(self, offset: int, length: int) -> bytes:
        """The virtual disk's bytes, clipped to its end; base files only
        (a differencing file is read through ``VhdxChain`` with its parents)."""
        if self.has_parent:
            raise self._src.unsupported(
                "read", "a differencing file; read it through VhdxChain with its parents"
            )
        return b"".join(data for _, data in self.read_own(offset, length))

    def _stored(self, block: int, file_offset: int, pos: int, stop: int) -> list[tuple[int, bytes]]:
        """Runs of a stored block inside [pos, stop): in a dynamic disk one run
        (0-bit sectors zeroed), in a differencing disk one per run of 1 bits."""
        block_start = block * self._blocks.block_size
        first = (pos - block_start) // SECTOR // 8 * 8  # whole bitmap bytes
        last = -(-(stop - block_start) // SECTOR)
        what = f"sector bitmap of block {block}"
        bitmap = self._src.read(file_offset + first // 8, -(-(last - first) // 8), what)
        spans = []
        for run_first, count in set_runs(bitmap, last - first):
            lo = max(pos, block_start + (first + run_first) * SECTOR)
            hi = min(stop, block_start + (first + run_first + count) * SECTOR)
            if lo < hi:
                spans.append((lo, hi))
        data_at = file_offset + self._blocks.bitmap_size - block_start
        if not self.has_parent:
            out = bytearray(stop - pos)
            if spans:
                lo, hi = spans[0][0], spans[-1][1]
                data = self._src.read(data_at + lo, hi - lo, f"data of block {block}")
                for a, b in spans:
                    out[a - pos : b - pos] = data[a - lo : b - lo]
            return [(pos, bytes(out))]
        if not spans:
            return []
        lo, hi = spans[0][0], spans[-1][1]
        data = self._src.read(data_at + lo, hi - lo, f"data of block {block}")
        return [(a, data[a - lo : b - lo]) for a, b in spans]
