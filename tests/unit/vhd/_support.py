"""Helpers for the VHD tests: random runs (any byte offsets), an expected-image
model, and byte patches that keep (or deliberately break) the checksums.

The checksum helper is written here from the specification's words (the one's
complement of the byte sum, the field counted as zero), not imported from
ckpt, so a wrong rule in ckpt cannot hide.
"""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Iterable

from hostile_support import NullSink  # noqa: F401  (re-exported to the tests)
from hypothesis import strategies as st

MiB = 1 << 20
KiB = 1 << 10
SECTOR = 512
FOOTER_CHECKSUM = 64
HEADER_OFFSET = 512  # where ckpt's writer puts the dynamic header
HEADER_CHECKSUM = 36
BAT_OFFSET = 1536

Runs = list[tuple[int, bytes]]


@st.composite
def sparse_runs(draw: st.DrawFn, virtual_size: int, unit: int = SECTOR, max_runs: int = 6) -> Runs:
    """Sorted, non-overlapping runs on ``unit`` boundaries (1 = any byte) of
    random, all-zero or all-0xff bytes; long runs cover whole blocks."""
    units = virtual_size // unit
    picks = draw(
        st.lists(
            st.tuples(
                st.integers(0, units - 1),
                st.one_of(st.integers(1, 40), st.integers(1, units)),
                st.sampled_from(["random", "zero", "ones"]),
            ),
            max_size=max_runs,
        )
    )
    rnd = random.Random(draw(st.integers(0, 2**32)))
    runs: Runs = []
    end = 0
    for start, count, kind in sorted(picks):
        start = max(start, end)
        count = min(count, units - start)
        if count <= 0:
            continue
        size = count * unit
        if kind == "random":
            data = rnd.randbytes(size)
        else:
            data = bytes(size) if kind == "zero" else b"\xff" * size
        runs.append((start * unit, data))
        end = start + count
    return runs


def apply_runs(image: bytearray, runs: Iterable[tuple[int, bytes]]) -> bytearray:
    for offset, data in runs:
        image[offset : offset + len(data)] = data
    return image


def own_sectors(runs: Iterable[tuple[int, bytes]]) -> list[tuple[int, int]]:
    """The byte ranges of whole sectors ``runs`` touch, merged."""
    out: list[list[int]] = []
    for offset, data in runs:
        if not data:
            continue
        lo = offset // SECTOR * SECTOR
        hi = -(-(offset + len(data)) // SECTOR) * SECTOR
        if out and out[-1][1] >= lo:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(a, b) for a, b in out]


def merged(runs: Iterable[tuple[int, bytes]]) -> Runs:
    """Touching runs joined, empty ones dropped: a canonical form to compare."""
    out: list[tuple[int, bytearray]] = []
    for offset, data in runs:
        if not data:
            continue
        if out and out[-1][0] + len(out[-1][1]) == offset:
            out[-1][1].extend(data)
        else:
            out.append((offset, bytearray(data)))
    return [(o, bytes(d)) for o, d in out]


def checksum(raw: bytes | bytearray, field: int) -> int:
    total = sum(raw) - sum(raw[field : field + 4])
    return (~total) & 0xFFFFFFFF


def reseal(image: bytearray, offset: int, size: int, field: int) -> None:
    """Recomputes the checksum of the structure at ``offset``."""
    struct.pack_into(">I", image, offset + field, checksum(image[offset : offset + size], field))


def reseal_all(image: bytearray, dynamic: bool) -> None:
    """Footer at the end (and, for a dynamic file, its copy at 0 and the header)."""
    reseal(image, len(image) - 512, 512, FOOTER_CHECKSUM)
    if dynamic:
        reseal(image, 0, 512, FOOTER_CHECKSUM)
        reseal(image, HEADER_OFFSET, 1024, HEADER_CHECKSUM)


def stream(image: bytes | bytearray) -> io.BytesIO:
    return io.BytesIO(bytes(image))
