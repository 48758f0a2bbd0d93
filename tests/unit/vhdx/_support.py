"""Helpers for the VHDX tests: random sparse data, an expected-image model, and
byte patches that keep (or deliberately break) the CRC-32C of a structure.

The patch helpers compute CRC-32C with the ``crc32c`` package directly, not
with ckpt's checksum module, so a wrong checksum rule in ckpt cannot hide.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path

import crc32c
import pytest
from hostile_support import NullSink  # noqa: F401  (re-exported to the tests)
from hypothesis import strategies as st

MiB = 1 << 20
HEADER_OFFSETS = (64 << 10, 128 << 10)
REGION_OFFSETS = (192 << 10, 256 << 10)
METADATA_OFFSET = 2 * MiB  # where ckpt's writer puts the metadata region
BAT_OFFSET = 3 * MiB  # and the BAT

Runs = list[tuple[int, bytes]]

FIXTURES = Path(
    os.environ.get(
        "CKPT_HYPERV_FIXTURES", Path(__file__).resolve().parents[4] / "shared/fixtures/hyperv"
    )
)


def fixture_file(name: str, folder: Path) -> Path:
    """Gunzips ``name``.gz from the Windows fixtures into ``folder``."""
    source = FIXTURES / f"{name}.gz"
    if not source.exists():
        pytest.skip(f"Windows fixture {source} is not there (set CKPT_HYPERV_FIXTURES)")
    target = folder / name
    if not target.exists():
        with gzip.open(source, "rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 4 * MiB)
    return target


@st.composite
def sparse_runs(draw: st.DrawFn, virtual_size: int, sector: int, max_runs: int = 6) -> Runs:
    """Sorted, non-overlapping (possibly touching) sector-aligned runs of random,
    all-zero or all-0xff bytes; long runs are common enough to cover whole blocks."""
    sectors = virtual_size // sector
    picks = draw(
        st.lists(
            st.tuples(
                st.integers(0, sectors - 1),
                st.one_of(st.integers(1, 16), st.integers(1, sectors)),
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
        count = min(count, sectors - start)
        if count <= 0:
            continue
        size = count * sector
        if kind == "random":
            data = rnd.randbytes(size)
        else:
            data = bytes(size) if kind == "zero" else b"\xff" * size
        runs.append((start * sector, data))
        end = start + count
    return runs


def apply_runs(image: bytearray, runs: Iterable[tuple[int, bytes]]) -> bytearray:
    for offset, data in runs:
        image[offset : offset + len(data)] = data
    return image


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


def clip(runs: Iterable[tuple[int, bytes]], lo: int, hi: int) -> Runs:
    out = []
    for offset, data in runs:
        a, b = max(lo, offset), min(hi, offset + len(data))
        if a < b:
            out.append((a, data[a - offset : b - offset]))
    return out


def crc_of(raw: bytes | bytearray) -> int:
    return crc32c.crc32c(bytes(raw[:4]) + bytes(4) + bytes(raw[8:]))


def refresh_crc(image: bytearray, offset: int, size: int) -> None:
    """Recomputes the CRC-32C of the structure at ``offset`` (field at +4)."""
    struct.pack_into("<I", image, offset + 4, crc_of(image[offset : offset + size]))


def refresh_all_crcs(image: bytearray) -> None:
    for offset in HEADER_OFFSETS:
        refresh_crc(image, offset, 4096)
    for offset in REGION_OFFSETS:
        refresh_crc(image, offset, 64 << 10)


def patch_header(image: bytearray, number: int, field_offset: int, value: bytes) -> None:
    """Overwrites bytes of header ``number`` (1 or 2) and fixes its CRC."""
    base = HEADER_OFFSETS[number - 1]
    image[base + field_offset : base + field_offset + len(value)] = value
    refresh_crc(image, base, 4096)


def stream(image: bytes | bytearray) -> io.BytesIO:
    return io.BytesIO(bytes(image))
