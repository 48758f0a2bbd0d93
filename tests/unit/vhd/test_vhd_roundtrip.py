"""Round trips: what the VHD writers write, VhdReader reads back; chains of
AVHD files over a VHD read through VhdxChain as the layered image."""

from __future__ import annotations

import io
import tracemalloc
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt.domain.errors import VhdxUnsupported
from ckpt.storage.vhd import VhdReader, is_vhd, write_avhd, write_fixed_vhd, write_vhd
from ckpt.storage.vhdx import BlockState, VhdxChain

from ._support import KiB, MiB, NullSink, Runs, apply_runs, merged, own_sectors, sparse_runs

BLOCK_SIZES = [512 * KiB, 2 * MiB]
# Odd multiples of 512 (the last block is short), and whole blocks.
SIZES = [3 * MiB + 512 * 7, 5 * MiB - 512, 4 * MiB, 2 * MiB + 512]


@st.composite
def disk(draw: st.DrawFn) -> tuple[int, int, Runs]:
    size = draw(st.sampled_from(SIZES))
    block = draw(st.sampled_from(BLOCK_SIZES))
    unit = draw(st.sampled_from([1, 512, 4096]))
    return size, block, draw(sparse_runs(size - size % unit, unit))


def _image(size: int, *layers: Runs) -> bytes:
    image = bytearray(size)
    for runs in layers:
        apply_runs(image, runs)
    return bytes(image)


@settings(max_examples=25, deadline=None)
@given(disk())
def test_dynamic_vhd_reads_back_as_the_image_it_was_given(case: tuple[int, int, Runs]) -> None:
    size, block, runs = case
    out = io.BytesIO()
    written = write_vhd(out, size, runs, block_size=block)
    assert written.size == len(out.getvalue())
    reader = VhdReader(stream := io.BytesIO(out.getvalue()), "d.vhd")
    assert (reader.disk_type, reader.virtual_size, reader.block_size) == ("dynamic", size, block)
    assert reader.unique_id == written.unique_id == reader.data_write_guid
    assert not reader.has_parent and reader.parent_locator is None and not reader.parent_linkages
    assert reader.read(0, size) == _image(size, runs)
    # Blocks holding only zeros are not stored: they read as zero anyway.
    for b in range(reader.block_count):
        start, stop = b * block, min(size, (b + 1) * block)
        nonzero = any(_image(size, runs)[start:stop])
        expected = BlockState.FULLY_PRESENT if nonzero else BlockState.NOT_PRESENT
        assert reader.block_state(b) == expected
    assert is_vhd(stream, len(out.getvalue()))


@settings(max_examples=15, deadline=None)
@given(disk())
def test_fixed_vhd_reads_back_as_the_image_it_was_given(case: tuple[int, int, Runs]) -> None:
    size, _, runs = case
    out = io.BytesIO()
    written = write_fixed_vhd(out, size, runs)
    assert written.size == len(out.getvalue()) == size + 512
    assert out.getvalue()[:size] == _image(size, runs)  # a fixed file is the raw disk + footer
    reader = VhdReader(io.BytesIO(out.getvalue()))
    assert reader.disk_type == "fixed" and reader.read(0, size) == _image(size, runs)
    assert {reader.block_state(b) for b in range(reader.block_count)} == {BlockState.FULLY_PRESENT}


@settings(max_examples=20, deadline=None)
@given(disk(), st.data())
def test_a_chain_of_avhd_files_reads_as_the_layers_applied_in_order(
    case: tuple[int, int, Runs], data: st.DataObject
) -> None:
    size, block, base_runs = case
    layers = [base_runs] + [
        data.draw(sparse_runs(size, data.draw(st.sampled_from([512, 4096])))) for _ in range(2)
    ]
    files = []
    out = io.BytesIO()
    parent = write_vhd(out, size, base_runs, block_size=block)
    files.append(out.getvalue())
    for runs in layers[1:]:
        out = io.BytesIO()
        parent = write_avhd(
            out, size, parent.unique_id, ".\\p.vhd", "C:\\vm\\p.vhd", runs,
            parent_timestamp=datetime(2024, 5, 1, tzinfo=UTC), block_size=block,
        )  # fmt: skip
        files.append(out.getvalue())
    readers = [VhdReader(io.BytesIO(raw)) for raw in reversed(files)]
    chain = VhdxChain(readers)  # type: ignore[arg-type]  # VhdReader mirrors VhdxReader
    assert chain.read(0, size) == _image(size, *layers)
    # Each differencing file defines exactly the (whole sectors of the) runs it was given.
    for reader, runs in zip(readers, reversed(layers[1:]), strict=False):
        own = merged(reader.read_own(0, size))
        assert [(o, o + len(d)) for o, d in own] == own_sectors(runs)
        image = _image(size, runs)
        assert all(d == image[o : o + len(d)] for o, d in own)


def test_read_own_of_a_differencing_file_follows_the_sector_bitmap() -> None:
    size = 4 * MiB
    runs = [(512, b"a" * 512), (3 * 512, b"b" * 1024), (MiB, bytes(3 * MiB))]
    out = io.BytesIO()
    write_avhd(
        out, size, uuid.uuid4(), ".\\p.vhd", "C:\\p.vhd", runs,
        parent_timestamp=datetime(2020, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    reader = VhdReader(io.BytesIO(out.getvalue()))
    assert merged(reader.read_own(0, size)) == merged(runs)  # zeros are kept: they hide the parent
    # A range cut inside runs, and one over nothing.
    assert reader.read_own(700, 3000) == [(700, b"a" * 324), (1536, b"b" * 1024)]
    assert reader.read_own(4096, 4096) == []
    assert reader.read_own(size - 512, 4096) == [(size - 512, bytes(512))]  # clipped
    assert reader.read_own(2560, MiB - 2560) == []  # bits 0 in a stored block: the parent's
    assert [reader.block_state(b) for b in range(reader.block_count)] == [
        BlockState.PARTIALLY_PRESENT,  # sectors 1, 3, 4 and MiB..2 MiB
        BlockState.FULLY_PRESENT,
    ]
    with pytest.raises(VhdxUnsupported, match="differencing"):
        reader.read(0, 512)


def test_an_unaligned_run_defines_its_whole_sectors_with_zeros_around_it() -> None:
    out = io.BytesIO()
    write_avhd(
        out, MiB, uuid.uuid4(), ".\\p.vhd", "C:\\p.vhd", [(700, b"x" * 10), (710, b"y" * 400)],
        parent_timestamp=datetime(2020, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    own = VhdReader(io.BytesIO(out.getvalue())).read_own(0, MiB)
    assert merged(own) == [(512, bytes(188) + b"x" * 10 + b"y" * 400 + bytes(1536 - 1110))]


def test_the_locator_names_the_parent_as_vhdx_does() -> None:
    parent = uuid.UUID("6f0c2d43-8a7b-4e1e-9c2f-0123456789ab")
    out = io.BytesIO()
    write_avhd(
        out, MiB, parent, ".\\Base Disk.vhd", "D:\\Hyper-V\\Base Disk.vhd", [],
        parent_timestamp=datetime(2021, 2, 3, 4, 5, 6, tzinfo=UTC),
        timestamp=datetime(2022, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    reader = VhdReader(io.BytesIO(out.getvalue()))
    assert reader.disk_type == "differencing" and reader.has_parent
    assert reader.parent_locator == {
        "parent_linkage": "{6f0c2d43-8a7b-4e1e-9c2f-0123456789ab}",
        "relative_path": ".\\Base Disk.vhd",
        "absolute_win32_path": "D:\\Hyper-V\\Base Disk.vhd",
        "parent_name": "D:\\Hyper-V\\Base Disk.vhd",
    }
    assert reader.parent_linkages == (parent,)
    assert reader.parent_timestamp == datetime(2021, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert reader.timestamp == datetime(2022, 1, 1, tzinfo=UTC)
    assert reader.creator == "win  6.3 Wi2k"


def test_output_is_reproducible_with_a_given_id() -> None:
    uid = uuid.UUID(int=7)
    runs = [(0, b"boot" * 128), (3 * MiB, b"\x01" * 4096)]
    first, second = io.BytesIO(), io.BytesIO()
    write_vhd(first, 4 * MiB, runs, unique_id=uid)
    write_vhd(second, 4 * MiB, runs, unique_id=uid)
    assert first.getvalue() == second.getvalue()
    reader = VhdReader(io.BytesIO(first.getvalue()))
    assert reader.timestamp == datetime(2000, 1, 1, tzinfo=UTC)  # None -> the VHD epoch
    assert reader.unique_id == uid


@pytest.mark.parametrize(
    ("size", "match"),
    [
        (2040 * 1024 * MiB + 512, "at most 2040 GiB"),
        (MiB + 100, "multiple of 512"),
        (0, "positive multiple"),
    ],
)
def test_sizes_vhd_cannot_hold_are_refused(size: int, match: str) -> None:
    for write in (write_vhd, write_fixed_vhd):
        with pytest.raises(VhdxUnsupported, match=match):
            write(NullSink(), size, [])  # type: ignore[operator]


def test_the_largest_disk_is_written_with_memory_bounded_by_a_block() -> None:
    size = 2040 * 1024 * MiB  # 2040 GiB: 1,044,480 blocks of 2 MiB
    runs = ((offset, b"\x42" * 4096) for offset in range(0, size, size // 64))
    tracemalloc.start()
    try:
        written = write_vhd(NullSink(), size, runs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert written.size > 64 * 2 * MiB
    assert peak < 6 * MiB, f"peak {peak} bytes"  # one 2 MiB block, its bitmap, 1 MiB of 0xff


def test_bad_block_sizes_and_long_names_are_refused() -> None:
    with pytest.raises(VhdxUnsupported, match="block size 3000"):
        write_vhd(NullSink(), MiB, [], block_size=3000)
    with pytest.raises(VhdxUnsupported, match="parent name"):
        write_avhd(
            NullSink(), MiB, uuid.uuid4(), ".\\p.vhd", "C:\\p.vhd", [],
            parent_timestamp=datetime(2020, 1, 1, tzinfo=UTC), parent_name="n" * 256,
        )  # fmt: skip
    with pytest.raises(ValueError, match="overlaps"):
        write_vhd(NullSink(), MiB, [(512, b"a" * 512), (600, b"b")])
