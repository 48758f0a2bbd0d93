"""Cutting a disk writer's input runs into blocks: shared by the VHDX and VHD writers.

Terms:
    run            (virtual byte offset, bytes) the new file must define. Runs
                   come sorted by offset and do not overlap. A VHDX writer takes
                   only runs on logical-sector boundaries (``aligned``: a
                   differencing file records presence per sector, so nothing
                   finer is possible); a VHD writer takes runs that start and end
                   anywhere, and a partly covered 512-byte sector is defined
                   whole, its other bytes zero.
    pending block  one block's bytes (undefined bytes zero) and the runs of
                   sectors it defines, (first sector, count), merged.

Only one pending block exists at a time: memory stays at one block however
large the disk or the input is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass
class PendingBlock:
    index: int
    data: bytearray
    sector_runs: list[list[int]] = field(default_factory=list)

    def defined_sectors(self) -> int:
        return sum(count for _, count in self.sector_runs)

    def add(self, in_block: int, chunk: memoryview, sector_size: int) -> None:
        self.data[in_block : in_block + len(chunk)] = chunk
        first = in_block // sector_size
        stop = -(-(in_block + len(chunk)) // sector_size)
        last = self.sector_runs[-1] if self.sector_runs else None
        if last is not None and last[0] + last[1] >= first:  # touching, or sharing a sector
            last[1] = max(last[1], stop - last[0])
        else:
            self.sector_runs.append([first, stop - first])


def gather_blocks(
    runs: Iterable[tuple[int, bytes]],
    virtual_size: int,
    block_size: int,
    sector_size: int,
    aligned: bool,
) -> Iterator[PendingBlock]:
    """The blocks ``runs`` touch, in order (the last block may be short); raises
    ``ValueError`` for runs that are unsorted, overlapping, beyond the disk, or
    (``aligned``) not on sector boundaries."""
    previous_end = 0
    current: PendingBlock | None = None
    for offset, data in runs:
        if not data:
            continue
        if aligned and (offset % sector_size or len(data) % sector_size):
            raise ValueError(
                f"run at {offset} (+{len(data)}) is not aligned to the {sector_size}-byte sector"
            )
        if offset < previous_end:
            raise ValueError(
                f"run at {offset} overlaps or precedes the run ending at {previous_end}"
            )
        if offset + len(data) > virtual_size:
            raise ValueError(
                f"run at {offset} (+{len(data)}) ends beyond the disk ({virtual_size})"
            )
        previous_end = offset + len(data)
        view, pos = memoryview(data), offset
        while view:
            block = pos // block_size
            if current is None or current.index != block:
                if current is not None:
                    yield current
                start = block * block_size
                current = PendingBlock(block, bytearray(min(block_size, virtual_size - start)))
            in_block = pos - block * block_size
            take = min(len(view), len(current.data) - in_block)
            current.add(in_block, view[:take], sector_size)
            pos, view = pos + take, view[take:]
    if current is not None:
        yield current
