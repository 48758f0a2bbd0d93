"""ckpt's VHDX codec against independent tools: qemu-img and dissect.hypervisor.

Each tool is an oracle written by other people: what we write must pass their
checks and read back as the image we meant, and what Windows wrote must read
the same through them and through us. A missing tool skips its tests, saying
how to install it. Limits of the tools (HYPERV.md): qemu-img cannot open
differencing files nor 4 KiB logical sectors; dissect.hypervisor 3.21 can be
wrong for sub-block reads inside partially present blocks, so it is only
compared on whole blocks.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ckpt.storage.vhdx import BlockState, VhdxChain, VhdxReader, write_avhdx, write_vhdx

MiB = 1 << 20
QEMU_IMG = shutil.which("qemu-img")
needs_qemu = pytest.mark.skipif(
    QEMU_IMG is None, reason="qemu-img is not installed (Debian: apt-get install qemu-utils)"
)
FIXTURES = Path(
    os.environ.get(
        "CKPT_HYPERV_FIXTURES", Path(__file__).resolve().parents[3] / "shared/fixtures/hyperv"
    )
)
Runs = list[tuple[int, bytes]]


def _dissect_vhdx() -> Any:
    module = pytest.importorskip(
        "dissect.hypervisor.disk.vhdx",
        reason="dissect.hypervisor is not installed (pip install dissect.hypervisor)",
    )
    return module.VHDX


def _fixture(name: str, folder: Path) -> Path:
    source = FIXTURES / f"{name}.gz"
    if not source.exists():
        pytest.skip(f"Windows fixture {source} is not there (set CKPT_HYPERV_FIXTURES)")
    target = folder / name
    with gzip.open(source, "rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst, 4 * MiB)
    return target


def _random_runs(rnd: random.Random, size: int, unit: int, count: int) -> Runs:
    """Sorted, disjoint runs, ``unit`` aligned: random bytes, zeros (that must
    hide a parent) and some long enough to fill whole blocks."""
    runs: Runs = []
    pos = 0
    for _ in range(count):
        pos += rnd.randrange(0, size // count) // unit * unit
        # One unit up to an eighth of the disk: from single sectors to whole blocks.
        length = min(rnd.choice([1, 3, 64, 512, 1100]) * unit, size // 8 // unit * unit)
        if pos + length > size:
            break
        data = bytes(length) if rnd.random() < 0.2 else rnd.randbytes(length)
        runs.append((pos, data))
        pos += length
    return runs


def _image(size: int, *layers: Runs) -> bytes:
    image = bytearray(size)
    for runs in layers:
        for offset, data in runs:
            image[offset : offset + len(data)] = data
    return bytes(image)


def _qemu(*args: str) -> subprocess.CompletedProcess[str]:
    assert QEMU_IMG is not None
    return subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, timeout=60)


def _qemu_raw(path: Path) -> bytes:
    raw = path.with_suffix(".raw")
    result = _qemu("convert", "-O", "raw", str(path), str(raw))
    assert result.returncode == 0, result.stderr
    return raw.read_bytes()


def _dissect_blocks(path: Path, size: int, step: int) -> list[bytes]:
    """The disk as dissect reads it, in whole ``step``-sized, aligned pieces."""
    disk = _dissect_vhdx()(path)  # opens its parents itself, by relative_path
    pieces = []
    for offset in range(0, size, step):
        disk.seek(offset)
        pieces.append(disk.read(min(step, size - offset)))
    return pieces


@needs_qemu
@pytest.mark.parametrize(
    ("seed", "block_size", "size"),
    [
        (1, MiB, 9 * MiB + 512),
        (2, 2 * MiB, 21 * MiB),
        (3, 32 * MiB, 45 * MiB),
        (4, 8 * MiB, 3 * MiB),
    ],
)
def test_qemu_img_accepts_and_converts_our_base_vhdx(
    tmp_path: Path, seed: int, block_size: int, size: int
) -> None:
    rnd = random.Random(seed)
    runs = _random_runs(rnd, size, 512, 12)
    path = tmp_path / "disk.vhdx"
    with path.open("wb") as out:
        write_vhdx(out, size, runs, block_size=block_size)

    check = _qemu("check", str(path))
    assert check.returncode == 0 and "No errors were found" in check.stdout, check
    info = json.loads(_qemu("info", "--output=json", str(path)).stdout)
    assert (info["format"], info["virtual-size"]) == ("vhdx", size)
    assert _qemu_raw(path) == _image(size, runs)


@needs_qemu
def test_we_read_what_qemu_img_writes(tmp_path: Path) -> None:
    rnd = random.Random(7)
    raw = tmp_path / "source.raw"
    size = 20 * MiB
    image = _image(size, _random_runs(rnd, size, 512, 10))
    raw.write_bytes(image)
    path = tmp_path / "qemu.vhdx"
    result = _qemu("convert", "-f", "raw", "-O", "vhdx", str(raw), str(path))
    assert result.returncode == 0, result.stderr
    with path.open("rb") as stream:
        reader = VhdxReader(stream, path.name)
        assert reader.creator.startswith("QEMU")
        assert reader.read(0, size) == image


# Block sizes shrink from base to leaf: dissect 3.21 reads a parent in pieces
# of one parent block without stopping at the parent's block boundary, so a
# parent with smaller blocks than its child reads wrong there.
@pytest.mark.parametrize(
    ("sector", "blocks"), [(512, (32 * MiB, 2 * MiB, MiB)), (4096, (2 * MiB, MiB, MiB))]
)
def test_dissect_reads_our_chain(tmp_path: Path, sector: int, blocks: tuple[int, ...]) -> None:
    _dissect_vhdx()
    rnd = random.Random(sector)
    size = 40 * MiB
    # dissect 3.21 misreads a parent's partially present block when a read
    # into it starts at a sector that is not a multiple of 8 (a bit inside a
    # bitmap byte); reading a child's gap does exactly that. Runs of the
    # differencing layers are therefore 8-sector aligned here; the unit tests
    # cover sector-granular chains against our own model.
    layers = [_random_runs(rnd, size, sector, 30)]
    layers += [_random_runs(rnd, size, 8 * sector, 30) for _ in range(2)]
    names = ["base.vhdx", "middle.avhdx", "leaf.avhdx"]
    with (tmp_path / names[0]).open("wb") as out:
        parent = write_vhdx(
            out, size, layers[0], block_size=blocks[0], logical_sector_size=sector
        ).data_write_guid
    for i in (1, 2):
        with (tmp_path / names[i]).open("wb") as out:
            # A bogus absolute path: the parent can only be found relatively.
            parent = write_avhdx(
                out, size, parent, ".\\" + names[i - 1], "Z:\\nowhere\\" + names[i - 1],
                layers[i], block_size=blocks[i], logical_sector_size=sector,
            ).data_write_guid  # fmt: skip

    expected = _image(size, *layers)
    readers = [VhdxReader((tmp_path / n).open("rb"), n) for n in reversed(names)]
    assert VhdxChain(readers).read(0, size) == expected
    theirs = _dissect_blocks(tmp_path / names[2], size, blocks[2])
    assert b"".join(theirs) == expected


def _ours(path: Path) -> bytes:
    with path.open("rb") as stream:
        return VhdxReader(stream, path.name).read(0, 1 << 40)  # clipped at the disk's end


@pytest.mark.parametrize("name", ["dynamic.vhdx", "fixed.vhdx"])
def test_windows_base_fixtures_read_like_dissect(tmp_path: Path, name: str) -> None:
    _dissect_vhdx()
    path = _fixture(name, tmp_path)
    ours = _ours(path)
    assert len(ours) == 10 * MiB
    assert b"".join(_dissect_blocks(path, len(ours), 2 * MiB)) == ours


@needs_qemu
@pytest.mark.parametrize("name", ["dynamic.vhdx", "fixed.vhdx"])
def test_windows_base_fixtures_read_like_qemu_img(tmp_path: Path, name: str) -> None:
    path = _fixture(name, tmp_path)
    ours = _ours(path)
    assert len(ours) == 10 * MiB
    assert _qemu_raw(path) == ours


def test_windows_differencing_fixture_reads_like_dissect(tmp_path: Path) -> None:
    # The fixture's parent is not included: a stand-in base disk with the
    # DataWriteGuid and file name the fixture's locator names takes its place,
    # holding random bytes wherever the fixture is partially present, so every
    # sector shows whether both readers took it from the right file.
    _dissect_vhdx()
    path = _fixture("differencing.avhdx", tmp_path)
    child = VhdxReader(path.open("rb"), path.name)
    locator = child.parent_locator
    assert locator is not None
    partial = [b for b in child.iter_blocks() if b.state == BlockState.PARTIALLY_PRESENT]
    assert len(partial) == 32
    rnd = random.Random(11)
    parent_runs = [(b.offset, rnd.randbytes(b.length)) for b in partial]
    parent_path = tmp_path / locator["relative_path"].removeprefix(".\\")
    with parent_path.open("wb") as out:
        write_vhdx(
            out, child.virtual_size, parent_runs, block_size=2 * MiB,
            data_write_guid=child.parent_linkages[0],
        )  # fmt: skip
    chain = VhdxChain([child, VhdxReader(parent_path.open("rb"), parent_path.name)])

    disk = _dissect_vhdx()(path)
    untouched = next(b for b in child.iter_blocks() if b.state == BlockState.NOT_PRESENT)
    for block in [*partial, untouched]:
        disk.seek(block.offset)
        theirs = disk.read(block.length)
        assert theirs == chain.read(block.offset, block.length), f"block {block.index}"
    # Both files contribute: the chain is neither the child's bytes nor the parent's.
    sample = partial[0]
    mixed = chain.read(sample.offset, sample.length)
    assert mixed != parent_runs[0][1] and mixed != sample.data
