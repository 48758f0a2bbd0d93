"""Files written by Windows (../shared/fixtures/hyperv): the facts ckpt reads.

The expected values are the ones HYPERV.md lists for these files, plus GUIDs
and creator strings read from them once with a hex dump.
"""

from __future__ import annotations

import io
import uuid
from collections import Counter
from pathlib import Path

import pytest

from ckpt.domain.errors import VhdxUnsupported
from ckpt.storage.vhdx import BlockState, VhdxChain, VhdxReader, write_vhdx

from ._support import MiB, fixture_file, merged


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hyperv")


def _open(folder: Path, name: str) -> VhdxReader:
    return VhdxReader(fixture_file(name, folder).open("rb"), name)


def _states(reader: VhdxReader) -> Counter[BlockState]:
    return Counter(block.state for block in reader.iter_blocks())


def test_dynamic(folder: Path) -> None:
    r = _open(folder, "dynamic.vhdx")
    assert r.creator == "Microsoft Windows 10.0.18363.0"
    assert (r.virtual_size, r.block_size) == (10 * MiB, 32 * MiB)
    assert (r.logical_sector_size, r.physical_sector_size) == (512, 4096)
    assert not r.has_parent and not r.leave_block_allocated and r.parent_locator is None
    assert r.data_write_guid == uuid.UUID("28e09ae1-ab94-4815-a155-f143e2d00a3f")
    assert _states(r) == {BlockState.FULLY_PRESENT: 1}
    assert len(r.read(0, 20 * MiB)) == 10 * MiB  # clipped at the disk's end


def test_fixed(folder: Path) -> None:
    r = _open(folder, "fixed.vhdx")
    assert (r.virtual_size, r.block_size, r.leave_block_allocated) == (10 * MiB, 2 * MiB, True)
    assert not r.has_parent
    assert _states(r) == {BlockState.FULLY_PRESENT: 5}


def test_differencing(folder: Path) -> None:
    r = _open(folder, "differencing.avhdx")
    assert r.creator == "Microsoft Windows 10.0.17763.0"
    assert (r.virtual_size, r.block_size, r.logical_sector_size) == (8 << 30, 2 * MiB, 512)
    assert r.has_parent
    assert _states(r) == {BlockState.PARTIALLY_PRESENT: 32, BlockState.NOT_PRESENT: 4064}
    assert r.sector_bitmaps_present == 2
    locator = r.parent_locator
    assert locator is not None
    assert set(locator) == {
        "parent_linkage",
        "parent_linkage2",
        "relative_path",
        "volume_path",
        "absolute_win32_path",
    }
    parent_name = "Generation 1_49C4BAF3-4B25-4406-8C4B-D39E65C32385.avhdx"
    assert locator["relative_path"] == ".\\" + parent_name
    assert locator["absolute_win32_path"].endswith("\\Virtual hard disks\\" + parent_name)
    # parent_linkage2 is the zero GUID in this file: not an accepted linkage.
    assert r.parent_linkages == (uuid.UUID("ff34003b-11ed-4cf8-a166-b2be05e20b80"),)
    with pytest.raises(VhdxUnsupported):
        r.read(0, 512)


def test_differencing_own_data_is_consistent(folder: Path) -> None:
    r = _open(folder, "differencing.avhdx")
    from_blocks = [run for block in r.iter_blocks() for run in block.runs()]
    # 6,200 sectors of 512 bytes, counted once from the two sector bitmaps.
    assert sum(len(d) for _, d in from_blocks) == 3_174_400
    partial = [b for b in r.iter_blocks() if b.state == BlockState.PARTIALLY_PRESENT]
    for block in partial[:4]:
        assert merged(r.read_own(block.offset, block.length)) == merged(block.runs())


def test_differencing_over_a_stand_in_parent(folder: Path) -> None:
    # A base disk carrying the DataWriteGuid the fixture names is accepted as
    # its parent; sectors the fixture does not hold come from it.
    child = _open(folder, "differencing.avhdx")
    block = next(b for b in child.iter_blocks() if b.state == BlockState.PARTIALLY_PRESENT)
    parent_data = b"\xee" * block.length
    out = io.BytesIO()
    write_vhdx(
        out, child.virtual_size, [(block.offset, parent_data)], block_size=2 * MiB,
        data_write_guid=child.parent_linkages[0],
    )  # fmt: skip
    chain = VhdxChain([child, VhdxReader(out, "stand-in parent")])
    expected = bytearray(parent_data)
    for offset, data in block.runs():
        expected[offset - block.offset : offset - block.offset + len(data)] = data
    assert chain.read(block.offset, block.length) == expected
