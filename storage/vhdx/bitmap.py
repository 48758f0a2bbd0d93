"""Sector bitmaps as runs: which sectors a differencing file holds.

Terms:
    sector bitmap  one bit per logical sector, least significant bit first:
                   bit i of byte j is sector 8j + i; 1 = the sector's data is
                   in this file, 0 = read it from the parent.
    run            (first sector, sector count) of consecutive 1 bits.

Both directions go through a string or an int of the whole bitmap so that the
work is done in C: a block holds at most 256 MiB / 512 B = 524,288 sectors
(a 64 KiB bitmap), and a per-bit Python loop over that would take ~50 ms.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

_ONES = re.compile("1+")


def set_runs(bitmap: bytes) -> Iterator[tuple[int, int]]:
    """The runs of 1 bits in ``bitmap``, in order."""
    value = int.from_bytes(bitmap, "little")
    # bin() writes the most significant bit first; reversed, index i is bit i.
    bits = bin(value)[:1:-1]
    for match in _ONES.finditer(bits):
        yield match.start(), match.end() - match.start()


def pack_runs(runs: Iterable[Sequence[int]], sectors: int) -> bytes:
    """A bitmap of ``sectors`` bits (a multiple of 8) with ``runs`` set."""
    chars = bytearray(b"0") * sectors
    for first, count in runs:
        chars[first : first + count] = b"1" * count
    chars.reverse()  # int() wants the most significant bit first
    return int(chars, 2).to_bytes(sectors // 8, "little")
