"""Cutting the writer's input runs into payload blocks.

Terms:
    run            (virtual byte offset, bytes) the new file must define.
                   Runs come sorted by offset, do not overlap, and start and
                   end on a logical sector boundary (a differencing file
                   records presence per sector, so nothing finer is possible).
    pending block  one payload block's bytes (undefined sectors zero) and the
                   runs of sectors it defines, (first sector, count), merged.

Only one pending block exists at a time: memory stays at one block however
large the disk or the input is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .geometry import Geometry


@dataclass
class PendingBlock:
    index: int
    data: bytearray
    sector_runs: list[list[int]] = field(default_factory=list)

    def defined_sectors(self) -> int:
        return sum(count for _, count in self.sector_runs)

    def add(self, in_block: int, chunk: memoryview, sector_size: int) -> None:
        self.data[in_block : in_block + len(chunk)] = chunk
        first, count = in_block // sector_size, len(chunk) // sector_size
        last = self.sector_runs[-1] if self.sector_runs else None
        if last is not None and last[0] + last[1] == first:
            last[1] += count
        else:
            self.sector_runs.append([first, count])


def gather_blocks(runs: Iterable[tuple[int, bytes]], geometry: Geometry) -> Iterator[PendingBlock]:
    """The blocks ``runs`` touch, in order; raises ``ValueError`` for runs that
    are unsorted, overlapping, not sector aligned or beyond the disk."""
    sector = geometry.logical_sector_size
    previous_end = 0
    current: PendingBlock | None = None
    for offset, data in runs:
        if not data:
            continue
        if offset % sector or len(data) % sector:
            raise ValueError(
                f"run at {offset} (+{len(data)}) is not aligned to the {sector}-byte sector"
            )
        if offset < previous_end:
            raise ValueError(
                f"run at {offset} overlaps or precedes the run ending at {previous_end}"
            )
        if offset + len(data) > geometry.virtual_size:
            raise ValueError(
                f"run at {offset} (+{len(data)}) ends beyond the disk ({geometry.virtual_size})"
            )
        previous_end = offset + len(data)
        view, pos = memoryview(data), offset
        while view:
            block = pos // geometry.block_size
            if current is None or current.index != block:
                if current is not None:
                    yield current
                current = PendingBlock(block, bytearray(geometry.block_span(block)[1]))
            in_block = pos - block * geometry.block_size
            take = min(len(view), len(current.data) - in_block)
            current.add(in_block, view[:take], sector)
            pos, view = pos + take, view[take:]
    if current is not None:
        yield current
