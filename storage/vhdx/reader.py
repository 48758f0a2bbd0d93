"""Reading one VHDX or AVHDX file from a stream.

Terms:
    own data      the sectors this file itself defines, whatever its parents
                  say: a fully present block defines all its sectors, a
                  partially present one those set in its sector bitmap, a zero
                  (or undefined, or unmapped) block defines zeros. A not
                  present block defines nothing in a differencing file (the
                  parent decides) and zeros in a base file.
    run           (virtual byte offset, bytes): consecutive defined bytes.

``VhdxReader`` checks every structure when it opens the file (headers,
region tables, metadata, BAT size) and each BAT entry when a read first uses
it; every problem is a ``VhdxError`` naming the file and the structure. It
reads with seek + read on the stream it was given and is not thread-safe.
Memory stays at the BAT (8 bytes per block) plus what a call returns.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO
from uuid import UUID

from .bat import Bat, BlockState
from .bitmap import set_runs
from .geometry import Geometry
from .header import read_current_header, read_file_identifier
from .layout import BAT_REGION, HEADER_SECTION_SIZE, METADATA_REGION
from .metadata import read_metadata
from .parent_locator import parse_linkage
from .region_table import read_region_table
from .source import Source

_ZERO_STATES = (BlockState.UNDEFINED, BlockState.ZERO, BlockState.UNMAPPED)
_LINKAGE_KEYS = ("parent_linkage", "parent_linkage2")


@dataclass(frozen=True)
class OwnBlock:
    """One payload block as this file stores it.

    ``data`` is the block's stored bytes (``length`` of them) when the state is
    fully or partially present, else None. ``bitmap`` is, for a partially
    present block, its slice of the chunk's sector bitmap (bit i = sector i of
    the block, least significant bit first), else None.
    """

    index: int
    state: BlockState
    offset: int
    length: int
    sector_size: int
    has_parent: bool
    data: bytes | None = None
    bitmap: bytes | None = None

    def runs(self) -> Iterator[tuple[int, bytes]]:
        """The block's own data as runs (see the module docstring)."""
        if self.state == BlockState.NOT_PRESENT and self.has_parent:
            return
        if self.data is None:
            yield self.offset, bytes(self.length)
        elif self.bitmap is None:
            yield self.offset, self.data
        else:
            for first, count in set_runs(self.bitmap):
                start = first * self.sector_size
                if start >= self.length:
                    break
                end = min(self.length, start + count * self.sector_size)
                yield self.offset + start, self.data[start:end]


class VhdxReader:
    """A VHDX (base: dynamic or fixed) or AVHDX (differencing) file, read-only."""

    def __init__(self, stream: BinaryIO, name: str = "<stream>") -> None:
        src = Source(stream, name)
        if src.size < HEADER_SECTION_SIZE:
            raise src.corrupt("file", f"{src.size} bytes, less than the 1 MiB header section")
        self._src = src
        self.name = name
        self.creator = read_file_identifier(src)
        self._header = read_current_header(src)
        regions = read_region_table(src)
        self._params = read_metadata(src, regions[METADATA_REGION])
        p = self._params
        self._geometry = Geometry(p.virtual_size, p.block_size, p.logical_sector_size, p.has_parent)
        self._bat = Bat(src, regions[BAT_REGION], self._geometry)

    @property
    def virtual_size(self) -> int:
        return self._params.virtual_size

    @property
    def block_size(self) -> int:
        return self._params.block_size

    @property
    def logical_sector_size(self) -> int:
        return self._params.logical_sector_size

    @property
    def physical_sector_size(self) -> int:
        return self._params.physical_sector_size

    @property
    def has_parent(self) -> bool:
        return self._params.has_parent

    @property
    def leave_block_allocated(self) -> bool:
        return self._params.leave_block_allocated

    @property
    def parent_locator(self) -> dict[str, str] | None:
        """The parent locator's key/value pairs (a copy), None for a base file."""
        locator = self._params.parent_locator
        return None if locator is None else dict(locator)

    @property
    def parent_linkages(self) -> tuple[UUID, ...]:
        """DataWriteGuids this file accepts as its parent: parent_linkage, then
        parent_linkage2 when present and not zero. Empty for a base file."""
        locator: Mapping[str, str] = self._params.parent_locator or {}
        found = [parse_linkage(self._src, locator[k], k) for k in _LINKAGE_KEYS if k in locator]
        return tuple(g for g in found if g.int)

    @property
    def data_write_guid(self) -> UUID:
        return self._header.data_write_guid

    @property
    def file_write_guid(self) -> UUID:
        return self._header.file_write_guid

    @property
    def virtual_disk_id(self) -> UUID:
        """The Page 83 data: the disk's identity, kept across checkpoints."""
        return self._params.virtual_disk_id

    @property
    def block_count(self) -> int:
        return self._geometry.payload_blocks

    @property
    def sector_bitmaps_present(self) -> int:
        return self._bat.count_bitmaps_present()

    def block_state(self, block: int) -> BlockState:
        """The (checked) BAT state of payload block ``block``."""
        return self._bat.payload(block)[0]

    def iter_blocks(self) -> Iterator[OwnBlock]:
        """Every payload block in order, with its stored data; one block in memory."""
        for block in range(self._geometry.payload_blocks):
            state, file_offset = self._bat.payload(block)
            start, length = self._geometry.block_span(block)
            common = (block, state, start, length, self.logical_sector_size, self.has_parent)
            if state < BlockState.FULLY_PRESENT:
                yield OwnBlock(*common)
                continue
            data = self._src.read(file_offset, length, f"payload block {block}")
            bitmap = None
            if state == BlockState.PARTIALLY_PRESENT:
                bitmap = self._bitmap(block, 0, self._geometry.sectors_per_block)
            yield OwnBlock(*common, data=data, bitmap=bitmap)

    def read_own(self, offset: int, length: int) -> list[tuple[int, bytes]]:
        """This file's own data in [offset, offset + length) as sorted runs.

        Runs never overlap but may touch; the range is clipped to the disk.
        """
        if offset < 0 or length < 0:
            raise ValueError(f"negative offset {offset} or length {length}")
        g = self._geometry
        end = min(offset + length, g.virtual_size)
        runs: list[tuple[int, bytes]] = []
        pos = offset
        while pos < end:
            block = pos // g.block_size
            start, block_length = g.block_span(block)
            stop = min(end, start + block_length)
            state, file_offset = self._bat.payload(block)
            what = f"payload block {block}"
            if state == BlockState.FULLY_PRESENT:
                runs.append((pos, self._src.read(file_offset + pos - start, stop - pos, what)))
            elif state == BlockState.PARTIALLY_PRESENT:
                runs.extend(self._partial(block, file_offset, pos, stop))
            elif state in _ZERO_STATES or not g.has_parent:
                runs.append((pos, bytes(stop - pos)))
            pos = stop
        return runs

    def read(self, offset: int, length: int) -> bytes:
        """The virtual disk's bytes, clipped to its end; base files only
        (a differencing file is read through ``VhdxChain``)."""
        if self.has_parent:
            raise self._src.unsupported(
                "read", "a differencing file; read it through VhdxChain with its parents"
            )
        return b"".join(data for _, data in self.read_own(offset, length))

    def _bitmap(self, block: int, first: int, stop: int) -> bytes:
        """Bits [first, stop) (multiples of 8) of block ``block``'s sector bitmap."""
        g = self._geometry
        base = self._bat.bitmap(block) + (block % g.chunk_ratio) * g.bitmap_bytes_per_block
        return self._src.read(
            base + first // 8, (stop - first) // 8, f"sector bitmap of payload block {block}"
        )

    def _partial(
        self, block: int, file_offset: int, pos: int, stop: int
    ) -> Iterator[tuple[int, bytes]]:
        """Runs of a partially present block inside [pos, stop)."""
        sector = self.logical_sector_size
        block_start = block * self.block_size
        # Whole bitmap bytes covering the range: first sector rounded down to 8.
        first = (pos - block_start) // sector // 8 * 8
        last = -(-(stop - block_start) // sector)
        last = min(-(-last // 8) * 8, self._geometry.sectors_per_block)
        spans = []
        for run_first, count in set_runs(self._bitmap(block, first, last)):
            lo = max(pos, block_start + (first + run_first) * sector)
            hi = min(stop, block_start + (first + run_first + count) * sector)
            if lo < hi:
                spans.append((lo, hi))
        if not spans:
            return
        # One read from the first to the last defined byte, then slices.
        lo, hi = spans[0][0], spans[-1][1]
        data = self._src.read(file_offset + lo - block_start, hi - lo, f"payload block {block}")
        for a, b in spans:
            yield a, data[a - lo : b - lo]
