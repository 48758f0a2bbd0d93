"""Hostile input: mutated headers, region tables, metadata and BAT entries.

Whatever the bytes, opening and reading a file must end in a result or a
``VhdxError``, within a time limit, without allocating more than the file's
own size implies. Mutations often re-seal the CRC-32C of headers and region
tables, so that they reach the field checks behind the checksums.
"""

from __future__ import annotations

import io
import signal
import struct
import tracemalloc
import uuid
from contextlib import suppress
from functools import cache

import pytest
from hostile_support import deadline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt.domain.errors import VhdxError
from ckpt.storage.vhdx import VhdxReader, write_avhdx, write_vhdx

from ._support import (
    BAT_OFFSET,
    HEADER_OFFSETS,
    METADATA_OFFSET,
    REGION_OFFSETS,
    MiB,
    refresh_all_crcs,
)

SIZE = 4 * MiB
RUNS = [(0, b"\x5a" * 3072), (MiB, b"\xa5" * MiB), (3 * MiB + 4096, b"\x77" * 8192)]
RATIO = (1 << 23) * 512 // MiB  # BAT index of chunk 0's sector bitmap entry
TIME_LIMIT = 2.0  # seconds; a valid 8 MiB file opens and reads in ~5 ms

# The bytes each structure really uses: the mutations land there.
TARGETS = {
    "header": [(HEADER_OFFSETS[0], 80), (HEADER_OFFSETS[1], 80)],
    "region table": [(REGION_OFFSETS[0], 16 + 2 * 32), (REGION_OFFSETS[1], 16 + 2 * 32)],
    "metadata table": [(METADATA_OFFSET, 32 + 6 * 32)],
    "metadata items": [(METADATA_OFFSET + 64 * 1024, 40 + 300)],
    "BAT": [(BAT_OFFSET, 4 * 8), (BAT_OFFSET + RATIO * 8, 8)],
}
INTERESTING = [0, 1, 2, 3, 4, 5, 6, 7, 0x7F, 0x80, 0xFF, 0xFFFF, 0xFFFFFFFF, 1 << 20, 1 << 31]


@cache
def _valid(kind: str) -> bytes:
    out = io.BytesIO()
    if kind == "base":
        write_vhdx(out, SIZE, RUNS, block_size=MiB)
    else:
        write_avhdx(out, SIZE, uuid.uuid4(), ".\\p.vhdx", "C:\\p.vhdx", RUNS, block_size=MiB)
    return out.getvalue()


@st.composite
def mutation(draw: st.DrawFn) -> tuple[str, list[tuple[int, bytes]], bool]:
    kind = draw(st.sampled_from(["base", "differencing"]))
    spans = TARGETS[draw(st.sampled_from(sorted(TARGETS)))]
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        start, length = draw(st.sampled_from(spans))
        pos = start + draw(st.integers(0, length - 1))
        width = draw(st.sampled_from([1, 2, 4, 8]))
        value = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, 2**64 - 1)))
        edits.append((pos - pos % width, (value % (1 << 8 * width)).to_bytes(width, "little")))
    return kind, edits, draw(st.booleans())


def _exercise(data: io.BytesIO) -> None:
    reader = VhdxReader(data, "fuzz.vhdx")
    _ = (reader.parent_locator, reader.parent_linkages, reader.sector_bitmaps_present)
    for block in reader.iter_blocks():
        if block.data is not None:  # zero blocks would allocate what the caller asks
            for _ in block.runs():
                pass
    reader.read_own(0, min(reader.virtual_size, SIZE))


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM for the time limit")
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(mutation())
def test_mutated_file_fails_only_with_vhdx_error(
    case: tuple[str, list[tuple[int, bytes]], bool],
) -> None:
    kind, edits, reseal = case
    image = bytearray(_valid(kind))
    for pos, value in edits:
        image[pos : pos + len(value)] = value
    if reseal:
        refresh_all_crcs(image)
    data = io.BytesIO(bytes(image))
    tracemalloc.start()
    try:
        with deadline(TIME_LIMIT), suppress(VhdxError):
            _exercise(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The file is 8 MiB; reading it all once, plus a 4 MiB read, stays below 2x.
    assert peak < 2 * len(image), f"peak {peak} bytes for an {len(image)}-byte file"


def test_mutations_reach_past_the_checksums() -> None:
    # The fuzzer is only useful if re-sealed mutations get to the field checks:
    # a resealed header with a huge log offset must fail on the log, not the CRC.
    image = bytearray(_valid("base"))
    for offset in HEADER_OFFSETS:
        struct.pack_into("<Q", image, offset + 72, 1 << 60)
    refresh_all_crcs(image)
    with pytest.raises(VhdxError, match=r"fuzz\.vhdx: log: .* beyond the end of the file"):
        _exercise(io.BytesIO(bytes(image)))


def test_deadline_catches_a_loop() -> None:
    # The time limit itself can fail a test.
    with pytest.raises(TimeoutError), deadline(0.05):
        while True:
            pass
