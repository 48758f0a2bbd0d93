"""Writer -> reader round trips: base and differencing files, and chains."""

from __future__ import annotations

import io
import tracemalloc
import uuid
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt.storage.vhdx import BlockState, VhdxChain, VhdxReader, write_avhdx, write_vhdx

from ._support import MiB, NullSink, Runs, apply_runs, clip, merged, sparse_runs

# Virtual sizes stay small (a few blocks; a short last block is common) so the
# whole folder runs in seconds; 32 MiB blocks get up to 40 MiB.
_MAX_SIZE = {MiB: 5 * MiB, 2 * MiB: 7 * MiB, 32 * MiB: 40 * MiB}


@st.composite
def disk_shape(draw: st.DrawFn) -> tuple[int, int, int]:
    block = draw(st.sampled_from(sorted(_MAX_SIZE)))
    sector = draw(st.sampled_from([512, 4096]))
    size = draw(st.integers(1, _MAX_SIZE[block] // sector)) * sector
    return block, sector, size


def _blocks_of(runs: Runs, block: int) -> set[int]:
    return {b for o, d in runs for b in range(o // block, (o + len(d) - 1) // block + 1)}


@settings(max_examples=20)
@given(st.data())
def test_base_round_trip(data: st.DataObject) -> None:
    block, sector, size = data.draw(disk_shape())
    runs = data.draw(sparse_runs(size, sector))
    out = io.BytesIO()
    written = write_vhdx(out, size, runs, block_size=block, logical_sector_size=sector)
    reader = VhdxReader(out, "base.vhdx")

    assert (reader.virtual_size, reader.block_size, reader.logical_sector_size) == (
        size,
        block,
        sector,
    )
    assert not reader.has_parent and reader.parent_locator is None
    assert reader.data_write_guid == written.data_write_guid
    assert reader.virtual_disk_id == written.virtual_disk_id
    assert written.size == len(out.getvalue()) and written.size % MiB == 0
    image = apply_runs(bytearray(size), runs)
    assert reader.read(0, size) == image
    for own in reader.iter_blocks():
        nonzero = any(image[own.offset : own.offset + own.length])
        assert own.state == (BlockState.FULLY_PRESENT if nonzero else BlockState.ZERO)


@settings(max_examples=20)
@given(st.data())
def test_differencing_round_trip(data: st.DataObject) -> None:
    block, sector, size = data.draw(disk_shape())
    runs = data.draw(sparse_runs(size, sector))
    parent = uuid.uuid4()
    out = io.BytesIO()
    written = write_avhdx(
        out, size, parent, ".\\p.vhdx", "C:\\vm\\p.vhdx", runs,
        block_size=block, logical_sector_size=sector,
    )  # fmt: skip
    reader = VhdxReader(out, "child.avhdx")

    assert reader.has_parent and reader.parent_linkages == (parent,)
    assert reader.parent_locator == {
        "parent_linkage": "{" + str(parent) + "}",
        "relative_path": ".\\p.vhdx",
        "absolute_win32_path": "C:\\vm\\p.vhdx",
    }
    assert reader.data_write_guid == written.data_write_guid
    own = [run for b in reader.iter_blocks() for run in b.runs()]
    assert merged(own) == merged(runs)
    assert merged(reader.read_own(0, size)) == merged(runs)
    lo = data.draw(st.integers(0, size))
    hi = data.draw(st.integers(lo, size + 4096))
    assert merged(reader.read_own(lo, hi - lo)) == merged(clip(runs, lo, hi))

    defined = bytearray(size)  # 1 where the file must define the byte
    apply_runs(defined, [(o, b"\x01" * len(d)) for o, d in runs])
    states = {b.index: b.state for b in reader.iter_blocks()}
    for index, state in states.items():
        span = defined[index * block : (index + 1) * block]
        expected = (
            BlockState.NOT_PRESENT
            if not any(span)
            else BlockState.FULLY_PRESENT
            if all(span)
            else BlockState.PARTIALLY_PRESENT
        )
        assert state == expected
    assert reader.sector_bitmaps_present == int(BlockState.PARTIALLY_PRESENT in states.values())


@settings(max_examples=15)
@given(st.data())
def test_chain_of_base_and_two_differencing_layers(data: st.DataObject) -> None:
    sector = data.draw(st.sampled_from([512, 4096]))
    size = data.draw(st.integers(1, 6 * MiB // sector)) * sector
    blocks = [data.draw(st.sampled_from([MiB, 2 * MiB, 32 * MiB]))]
    blocks += [data.draw(st.sampled_from([MiB, 2 * MiB])) for _ in range(2)]
    layers = [data.draw(sparse_runs(size, sector)) for _ in range(3)]

    files = [io.BytesIO() for _ in range(3)]
    parent = write_vhdx(
        files[0], size, layers[0], block_size=blocks[0], logical_sector_size=sector
    ).data_write_guid
    for i in (1, 2):
        parent = write_avhdx(
            files[i], size, parent, f".\\{i - 1}.avhdx", f"C:\\{i - 1}.avhdx", layers[i],
            block_size=blocks[i], logical_sector_size=sector,
        ).data_write_guid  # fmt: skip
    chain = VhdxChain([VhdxReader(f, f"layer{i}") for i, f in reversed(list(enumerate(files)))])

    expected = bytearray(size)
    for runs in layers:
        apply_runs(expected, runs)
    assert chain.read(0, size) == expected
    lo = data.draw(st.integers(0, size))
    hi = data.draw(st.integers(lo, size + 1000))
    assert chain.read(lo, hi - lo) == expected[lo:hi]


def test_chunk_boundary_interleaves_sector_bitmap_entries() -> None:
    # 1 MiB blocks with 512-byte sectors: 4096 blocks per chunk, so block 4096
    # (at 4 GiB) is the first block of chunk 1 and sits at BAT index 4097,
    # after chunk 0's sector bitmap entry at index 4096.
    size = 4 * 1024 * MiB + 3 * MiB
    edge = 4 * 1024 * MiB
    runs = [(edge - 1024, b"a" * 2048), (edge + MiB, b"b" * MiB), (edge + 2 * MiB, b"c" * 512)]
    out = io.BytesIO()
    write_avhdx(out, size, uuid.uuid4(), ".\\p", "C:\\p", runs, block_size=MiB)
    reader = VhdxReader(out)
    assert [reader.block_state(b) for b in (4095, 4096, 4097, 4098)] == [
        BlockState.PARTIALLY_PRESENT,
        BlockState.PARTIALLY_PRESENT,
        BlockState.FULLY_PRESENT,
        BlockState.PARTIALLY_PRESENT,
    ]
    assert reader.sector_bitmaps_present == 2
    assert merged(reader.read_own(edge - MiB, 4 * MiB)) == merged(runs)
    raw = out.getvalue()
    entries = [int.from_bytes(raw[3 * MiB + 8 * i : 3 * MiB + 8 * i + 8], "little") for i in
               (4095, 4096, 4097, 4098, 4099, 8193)]  # fmt: skip
    assert [e & 7 for e in entries] == [7, 6, 7, 6, 7, 6]

    base = io.BytesIO()
    write_vhdx(base, size, runs, block_size=MiB)
    assert VhdxReader(base).read(edge - 1024, 2048) == b"a" * 2048


def test_writer_memory_stays_near_one_block() -> None:
    # 96 MiB of data in 2 MiB blocks, fed as 1 MiB runs from a generator: the
    # writer may hold one block, one 1 MiB sector bitmap and a chunk of BAT
    # entries, not the image.
    def runs() -> Iterator[tuple[int, bytes]]:
        for i in range(96):
            yield i * MiB + 512 * (i % 2), bytes([i + 1]) * (MiB - 512)

    sink = NullSink()
    tracemalloc.start()
    try:
        write_avhdx(sink, 128 * MiB, uuid.uuid4(), ".\\p", "C:\\p", runs())  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sink.written > 96 * MiB
    assert peak < 8 * MiB, peak
