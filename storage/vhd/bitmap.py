"""Sector bitmaps of VHD blocks as runs.

Terms:
    sector bitmap  one bit per sector of a block, **most significant bit
                   first**: sector i is bit 7 - i % 8 of byte i // 8 (VHDX
                   numbers its bits the other way); 1 = the sector's data is
                   in this file. Padded with zero bits to whole sectors.
    run            (first sector, sector count) of consecutive 1 bits.

Both directions work on a string of the whole bitmap so that the work is done
in C: a 2 MiB block has 4,096 sectors, a 2 GiB one (the largest block a u32
field holds) 4 Mi.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

_ONES = re.compile("1+")


def set_runs(bitmap: bytes, sectors: int | None = None) -> Iterator[tuple[int, int]]:
    """The runs of 1 bits among the first ``sectors`` bits (default: all)."""
    bits = format(int.from_bytes(bitmap, "big"), f"0{len(bitmap) * 8}b")
    if sectors is not None:
        bits = bits[:sectors]
    for match in _ONES.finditer(bits):
        yield match.start(), match.end() - match.start()


def all_set(bitmap: bytes, sectors: int) -> bool:
    """Whether the first ``sectors`` bits are all 1."""
    whole, rest = divmod(sectors, 8)
    if bitmap[:whole].count(0xFF) != whole:
        return False
    if rest:
        mask = (0xFF << (8 - rest)) & 0xFF
        return bitmap[whole] & mask == mask
    return True


def pack_runs(runs: Iterable[Sequence[int]], size: int) -> bytes:
    """A bitmap of ``size`` bytes with the sectors of ``runs`` set."""
    chars = bytearray(b"0") * (size * 8)
    for first, count in runs:
        chars[first : first + count] = b"1" * count
    return int(chars, 2).to_bytes(size, "big")
