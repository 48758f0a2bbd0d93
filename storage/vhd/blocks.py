"""Cutting the writer's input runs into blocks.

Terms:
    run            (virtual byte offset, bytes) the new file must define. Runs
                   come sorted by offset and do not overlap; they may start
                   and end anywhere (VHD records presence per 512-byte
                   sector, so a run's partial first or last sector is
                   defined whole, its other bytes zero).
    pending block  one block's bytes (undefined bytes zero) and the runs of
                   sectors it defines, (first sector, count), merged.

Only one pending block exists at a time: memory stays at one block however
large the disk or the input is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .geometry import Blocks
from .layout import SECTOR


@dataclass
class PendingBlock:
    index: int
    data: bytearray
    sector_runs: list[list[int]] = field(default_factory=list)

    def defined_sectors(self) -> int:
        return sum(count for _, count in self.sector_runs)

    def add(self, in_block: int, chunk: memoryview) -> None:
        self.data[in_block : in_block + len(chunk)] = chunk
        first = in_block // SECTOR
        stop = -(-(in_block + len(chunk)) // SECTOR)
        last = self.sector_runs[-1] if self.sector_runs else None
        if last is not None and last[0] + last[1] >= first:  # touching, or sharing a sector
            last[1] = max(last[1], stop - last[0])
        else:
            self.sector_runs.append([first, stop - first])


def gather_blocks(runs: Iterable[tuple[int, bytes]], blocks: Blocks) -> Iterator[PendingBlock]:
    """The blocks ``runs`` touch, in order; ``ValueError`` for runs that are
    unsorted, overlapping or beyond the disk."""
    previous_end = 0
    current: PendingBlock | None = None
    for offset, data in runs:
        if not data:
            continue
        if offset < previous_end:
            raise ValueError(
                f"run at {offset} overlaps or precedes the run ending at {previous_end}"
            )
        if offset + len(data) > blocks.virtual_size:
            raise ValueError(
                f"run at {offset} (+{len(data)}) ends beyond the disk ({blocks.virtual_size})"
            )
        previous_end = offset + len(data)
        view, pos = memoryview(data), offset
        while view:
            block = pos // blocks.block_size
            if current is None or current.index != block:
                if current is not None:
                    yield current
                current = PendingBlock(block, bytearray(blocks.span(block)[1]))
            in_block = pos - block * blocks.block_size
            take = min(len(view), len(current.data) - in_block)
            current.add(in_block, view[:take])
            pos, view = pos + take, view[take:]
    if current is not None:
        yield current
