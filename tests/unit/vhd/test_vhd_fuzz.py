"""Hostile input: mutated footers (end and copy), dynamic header, BAT, sector
bitmaps and locator data.

Whatever the bytes, opening and reading a file must end in a result or a
``VhdxError``, within a time limit, without allocating more than the file's
own size implies. Mutations are often re-sealed (checksums recomputed) so
that they reach the field checks behind the checksums.
"""

from __future__ import annotations

import io
import signal
import struct
import tracemalloc
import uuid
from contextlib import suppress
from datetime import UTC, datetime
from functools import cache

import pytest
from hostile_support import deadline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt.domain.errors import VhdxError
from ckpt.storage.vhd import VhdReader, write_avhd, write_fixed_vhd, write_vhd

from ._support import BAT_OFFSET, HEADER_OFFSET, MiB, reseal_all

SIZE = 4 * MiB
BLOCK = MiB
RUNS = [(0, b"\x5a" * 3072), (MiB, b"\xa5" * MiB), (3 * MiB + 4096, b"\x77" * 8192)]
TIME_LIMIT = 2.0  # seconds; a valid file opens and reads in ~5 ms
INTERESTING = [0, 1, 2, 3, 4, 5, 0x7F, 0x80, 0xFF, 0x200, 0xFFFF, 0xFFFFFFFF, 1 << 20, 1 << 31]


@cache
def _valid(kind: str) -> bytes:
    out = io.BytesIO()
    if kind == "dynamic":
        write_vhd(out, SIZE, RUNS, block_size=BLOCK)
    elif kind == "fixed":
        write_fixed_vhd(out, SIZE, RUNS)
    else:
        write_avhd(
            out, SIZE, uuid.uuid4(), ".\\p.vhd", "C:\\p.vhd", RUNS, block_size=BLOCK,
            parent_timestamp=datetime(2020, 1, 1, tzinfo=UTC),
        )  # fmt: skip
    return out.getvalue()


def _targets(kind: str) -> dict[str, list[tuple[int, int]]]:
    """(offset, length) of the bytes each structure really uses."""
    size = len(_valid(kind))
    end_footer = [(size - 512, 85)]
    if kind == "fixed":
        return {"footer": end_footer}
    blocks = SIZE // BLOCK
    bat_end = BAT_OFFSET + 512  # the BAT is padded to one sector
    first_block = struct.unpack_from(">I", _valid(kind), BAT_OFFSET)[0] * 512
    targets = {
        "footer": [*end_footer, (0, 85)],
        "dynamic header": [(HEADER_OFFSET, 64), (HEADER_OFFSET + 576, 48)],
        "BAT": [(BAT_OFFSET, blocks * 4)],
        "sector bitmap": [(first_block, 512)],
    }
    if kind == "differencing":
        targets["locator data"] = [(bat_end, 1024)]
        targets["parent name"] = [(HEADER_OFFSET + 64, 40)]
    return targets


@st.composite
def mutation(draw: st.DrawFn) -> tuple[str, list[tuple[int, bytes]], bool, bool]:
    kind = draw(st.sampled_from(["dynamic", "differencing", "fixed"]))
    targets = _targets(kind)
    spans = targets[draw(st.sampled_from(sorted(targets)))]
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        start, length = draw(st.sampled_from(spans))
        pos = start + draw(st.integers(0, length - 1))
        width = draw(st.sampled_from([1, 2, 4, 8]))
        value = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, 2**64 - 1)))
        edits.append((pos - pos % width, (value % (1 << 8 * width)).to_bytes(width, "big")))
    return kind, edits, draw(st.booleans()), draw(st.booleans())


def _exercise(data: io.BytesIO) -> None:
    reader = VhdReader(data, "fuzz.vhd")
    _ = (reader.parent_locator, reader.parent_linkages, reader.creator, reader.timestamp)
    _ = reader.parent_timestamp
    for block in range(min(reader.block_count, 64)):
        reader.block_state(block)
    reader.read_own(0, min(reader.virtual_size, SIZE))


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM for the time limit")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutation())
def test_mutated_file_fails_only_with_vhdx_error(
    case: tuple[str, list[tuple[int, bytes]], bool, bool],
) -> None:
    kind, edits, reseal, truncate = case
    image = bytearray(_valid(kind))
    for pos, value in edits:
        image[pos : pos + len(value)] = value
    if reseal:
        reseal_all(image, dynamic=kind != "fixed")
    if truncate:  # a file cut short (its footer then comes from the copy, or nowhere)
        del image[len(image) // 2 :]
    data = io.BytesIO(bytes(image))
    tracemalloc.start()
    try:
        with deadline(TIME_LIMIT), suppress(VhdxError):
            _exercise(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Reading 4 MiB once, plus the file's own size, stays below 2x the file + 4 MiB.
    assert peak < 2 * len(image) + 2 * SIZE, f"peak {peak} bytes for an {len(image)}-byte file"


def test_mutations_reach_past_the_checksums() -> None:
    # A resealed header with a huge table offset must fail on the BAT bounds, not a checksum.
    image = bytearray(_valid("dynamic"))
    struct.pack_into(">Q", image, HEADER_OFFSET + 16, 1 << 60)
    reseal_all(image, dynamic=True)
    with pytest.raises(VhdxError, match=r"fuzz\.vhd: dynamic header: table offset"):
        _exercise(io.BytesIO(bytes(image)))


def test_a_huge_max_table_entries_does_not_allocate_it() -> None:
    image = bytearray(_valid("dynamic"))
    struct.pack_into(">I", image, HEADER_OFFSET + 28, 0xFFFFFFFF)
    reseal_all(image, dynamic=True)
    tracemalloc.start()
    try:
        _exercise(io.BytesIO(bytes(image)))  # only the disk's 4 entries are read
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * SIZE


def test_deadline_catches_a_loop() -> None:
    with pytest.raises(TimeoutError), deadline(0.05):
        while True:
            pass
