"""What one disk (or file) state holds that another does not, from manifests only.

Terms:
- *source* ``A`` and *target* ``B``: two states of one disk (``disk_state.State``);
  the diff is what B holds that A does not.
- *changed block*: a block index below B's block count whose chunk id differs
  between A and B. Ids are content addresses: equal ids are equal bytes,
  different ids different bytes, and the all-zero block has no entry
  (``ZERO_ID``). A state shorter than the other reads as zeros beyond its end;
  a partial last block was hashed padded with zeros (``capture.hash_blocks``),
  so the comparison is exact byte for byte, padding included (B's partial last
  block is reported when A has non-zero bytes past B's end in that block:
  conservative, and only when a size is not a multiple of the block size).
- *extent*: a merged run of changed blocks as (offset, length) in bytes,
  clipped to B's size. Blocks at or beyond B's end are never extents: B does
  not have them (a shrink shows as a size change only).
- *zeroed*: changed blocks that are all zero in B (so non-zero in A). They are
  also extents: an incremental transfer must write their zeros.

Cost: segments whose stored ids are equal in A and B are skipped unread
(``disk_state.diff``); the others are read as manifest segments (4,096 block
ids, ~128 KiB, per 16 MiB of disk). No chunk of data is ever read. Memory: a
few cached segments, plus the extents returned (a full rewrite is one extent).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ckpt.domain.errors import InvalidValue

from .disk_state import State, diff
from .manifest import ZERO_ID


@dataclass(frozen=True)
class Extent:
    """A byte range of a disk: ``length`` bytes from ``offset``."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class Comparison:
    """One disk's changed extents and, among them, the zeroed ones."""

    extents: list[Extent]
    zeroed: list[Extent]


class Runs:
    """Block indices given in increasing order, merged into extents (bytes),
    each clipped to ``size``."""

    def __init__(self, block_size: int, size: int) -> None:
        self.block_size = block_size
        self.size = size
        self._run: tuple[int, int] | None = None  # first block, one past the last

    def add(self, index: int) -> Extent | None:
        """Take the next changed block; the run it ends, if it ends one."""
        run = self._run
        if run is not None and index == run[1]:
            self._run = (run[0], index + 1)
            return None
        self._run = (index, index + 1)
        return None if run is None else self._extent(run)

    def close(self) -> Extent | None:
        """The last run, if any."""
        run, self._run = self._run, None
        return None if run is None else self._extent(run)

    def _extent(self, run: tuple[int, int]) -> Extent:
        start = run[0] * self.block_size
        return Extent(start, min(run[1] * self.block_size, self.size) - start)


def _check(a: State | None, b: State, what: str) -> None:
    if a is not None and a.block_size != b.block_size:
        raise InvalidValue(
            f"{what}: the two points' manifests use block sizes {a.block_size} and "
            f"{b.block_size}: their ids cannot be compared"
        )


def changed(a: State | None, b: State, what: str) -> Iterator[tuple[int, bool]]:
    """(block index, all zero in B) of each changed block, in block order."""
    _check(a, b, what)
    for index, cid in diff(a, b, upto=b.block_count):
        yield index, cid == ZERO_ID


def _merged(blocks: Iterable[int], block_size: int, size: int) -> Iterator[Extent]:
    runs = Runs(block_size, size)
    for index in blocks:
        done = runs.add(index)
        if done is not None:
            yield done
    last = runs.close()
    if last is not None:
        yield last


def changed_extents(a: State | None, b: State, what: str) -> Iterator[Extent]:
    """The extents, as they are found (streamed: memory flat in disk size)."""
    return _merged((i for i, _ in changed(a, b, what)), b.block_size, b.size)


def compare(a: State | None, b: State | None, what: str) -> Comparison:
    """The extents and zeroed extents of B against A, in one pass. A state that
    is None is a disk the point lacks: nothing is changed in a missing B."""
    if b is None:
        return Comparison([], [])
    extents: list[Extent] = []
    zeroed: list[Extent] = []
    all_runs, zero_runs = Runs(b.block_size, b.size), Runs(b.block_size, b.size)
    for index, zero in changed(a, b, what):
        done = all_runs.add(index)
        if done is not None:
            extents.append(done)
        if zero:
            done = zero_runs.add(index)
            if done is not None:
                zeroed.append(done)
    for runs, out in ((all_runs, extents), (zero_runs, zeroed)):
        last = runs.close()
        if last is not None:
            out.append(last)
    return Comparison(extents, zeroed)


def same_content(a: State, b: State, what: str) -> bool:
    """Whether two states hold the same bytes (sizes equal, no block differs)."""
    if a.size != b.size:
        return False
    _check(a, b, what)
    return next(diff(a, b), None) is None
