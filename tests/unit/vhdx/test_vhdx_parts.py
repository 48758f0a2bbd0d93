"""The small parts: sector bitmap runs, BAT geometry, the public API."""

from __future__ import annotations

import inspect
import random

from hypothesis import given
from hypothesis import strategies as st

import ckpt.storage.vhdx as vhdx
from ckpt.storage.vhdx.bitmap import pack_runs, set_runs
from ckpt.storage.vhdx.geometry import Geometry

MiB = 1 << 20


def test_public_api_is_exactly_all() -> None:
    assert set(vhdx.__all__) == {
        "DEFAULT_BLOCK_SIZE",
        "DEFAULT_DIFFERENCING_BLOCK_SIZE",
        "BlockState",
        "OwnBlock",
        "VhdxChain",
        "VhdxReader",
        "WrittenVhdx",
        "write_avhdx",
        "write_vhdx",
    }
    public = {
        name
        for name, value in vars(vhdx).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == set(vhdx.__all__)


def test_bitmap_is_least_significant_bit_first() -> None:
    assert pack_runs([(0, 1), (9, 2)], 16) == bytes([0b0000_0001, 0b0000_0110])
    assert list(set_runs(bytes([0b1000_0000, 0b0000_0001, 0, 0xFF]))) == [(7, 2), (24, 8)]


@given(st.integers(0, 2**32), st.sampled_from([256, 4096, 8192]))
def test_bitmap_runs_round_trip(seed: int, sectors: int) -> None:
    rnd = random.Random(seed)
    bits = [rnd.random() < 0.3 for _ in range(sectors)]
    runs, i = [], 0
    while i < sectors:
        if bits[i]:
            j = i
            while j < sectors and bits[j]:
                j += 1
            runs.append((i, j - i))
            i = j
        else:
            i += 1
    packed = pack_runs(runs, sectors)
    assert len(packed) == sectors // 8
    assert all((packed[k // 8] >> (k % 8)) & 1 == bits[k] for k in range(sectors))
    assert list(set_runs(packed)) == runs


def test_geometry_follows_ms_vhdx() -> None:
    # Windows' differencing fixture: 8 GiB, 2 MiB blocks, 512-byte sectors.
    g = Geometry(8 << 30, 2 * MiB, 512, has_parent=True)
    assert (g.chunk_ratio, g.payload_blocks, g.bitmap_blocks, g.bat_entries) == (
        2048,
        4096,
        2,
        4098,
    )
    assert [g.payload_index(b) for b in (0, 2047, 2048, 4095)] == [0, 2047, 2049, 4096]
    assert [g.bitmap_index(c) for c in (0, 1)] == [2048, 4097]
    base = Geometry(10 * MiB, 32 * MiB, 512, has_parent=False)
    assert (base.payload_blocks, base.bat_entries, base.block_span(0)) == (1, 1, (0, 10 * MiB))
    assert Geometry(MiB, MiB, 4096, False).chunk_ratio == 32768
    assert Geometry(MiB, 256 * MiB, 512, False).chunk_ratio == 16
