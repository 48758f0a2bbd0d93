"""ckpt's VHD codec against tools no one here wrote: qemu-img (its ``vpc``
driver) and dissect.hypervisor.

What each tool can check (found by trying qemu-img 7.2 and dissect.hypervisor
3.21, docs/vhd.md):
- qemu-img reads fixed and dynamic VHD; ``qemu-img check`` does not support
  the format ("This image format does not support checks"), so the check is
  that ``convert -O raw`` and ``info`` give our bytes and size. It opens a
  differencing file as if it were dynamic: it ignores the parent and the
  sector bitmaps and reads each stored block whole, zeros elsewhere.
- dissect.hypervisor's ``VHD`` reads fixed and dynamic files (footer at the
  end, 511-byte footers too) and, like qemu, a differencing file without its
  parent or bitmaps.
So a differencing file is compared with both tools as "its stored blocks over
zeros", and its chain semantics are checked by the round-trip tests.
A missing tool skips its tests, saying how to install it.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ckpt.storage.vhd import VhdReader, write_avhd, write_fixed_vhd, write_vhd
from ckpt.storage.vhd.geometry import chs

from ._support import KiB, MiB, Runs, apply_runs

QEMU_IMG = shutil.which("qemu-img")
needs_qemu = pytest.mark.skipif(
    QEMU_IMG is None, reason="qemu-img is not installed (Debian: apt-get install qemu-utils)"
)
# Odd multiples of 512 (a short last block, not a CHS-exact size) and round ones.
CASES = [
    ("dynamic", 33 * MiB + 3 * 512, 2 * MiB),
    ("dynamic", 9 * MiB - 512, 512 * KiB),
    ("dynamic", 16 * MiB, 2 * MiB),
    ("fixed", 10 * MiB + 512, 0),
    ("fixed", 7 * MiB, 0),
]


def _runs(size: int, seed: int) -> Runs:
    rnd = random.Random(seed)
    runs: Runs = []
    pos = 0
    while True:
        pos += rnd.randrange(0, 3 * MiB) // 512 * 512 + rnd.choice([0, 100])
        length = rnd.choice([512, 5000, 300 * KiB, 2 * MiB])
        if pos + length > size:
            break
        runs.append((pos, rnd.randbytes(length)))
        pos += length
    runs.append((size - 512, b"\xee" * 512))  # the last sector: the size must be exact
    return runs


def _qemu(*args: str) -> str:
    assert QEMU_IMG is not None
    done = subprocess.run(
        [QEMU_IMG, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _qemu_raw(path: Path) -> bytes:
    raw = path.with_suffix(".raw")
    _qemu("convert", "-f", "vpc", "-O", "raw", str(path), str(raw))
    return raw.read_bytes()


def _qemu_size(path: Path) -> int:
    return int(json.loads(_qemu("info", "-f", "vpc", "--output=json", str(path)))["virtual-size"])


def _write(kind: str, size: int, block: int, runs: Runs, path: Path) -> None:
    with path.open("wb") as out:
        if kind == "fixed":
            write_fixed_vhd(out, size, runs)
        else:
            write_vhd(out, size, runs, block_size=block)


def _ours(path: Path) -> bytes:
    with path.open("rb") as f:
        reader = VhdReader(f, str(path))
        return reader.read(0, reader.virtual_size)


def _stored_blocks_over_zeros(path: Path) -> bytes:
    """A differencing file as qemu and dissect read it (module docstring)."""
    with path.open("rb") as f:
        reader = VhdReader(f, str(path))
        return bytes(apply_runs(bytearray(reader.virtual_size), reader.read_own(0, 1 << 62)))


def _dissect() -> Any:
    module = pytest.importorskip(
        "dissect.hypervisor.disk.vhd",
        reason="dissect.hypervisor is not installed (pip install dissect.hypervisor)",
    )
    return module.VHD


def _dissect_read(path: Path) -> bytes:
    vhd = _dissect()
    with path.open("rb") as f:
        disk = vhd(f)
        disk.seek(0)
        return bytes(disk.read(disk.size))


@needs_qemu
@pytest.mark.parametrize(("kind", "size", "block"), CASES)
def test_qemu_reads_what_we_write_as_we_do(
    kind: str, size: int, block: int, tmp_path: Path
) -> None:
    runs = _runs(size, size)
    path = tmp_path / "disk.vhd"
    _write(kind, size, block, runs, path)
    expected = bytes(apply_runs(bytearray(size), runs))
    assert _ours(path) == expected
    assert _qemu_size(path) == size  # the creator "win " makes qemu trust the current size
    assert _qemu_raw(path) == expected


@needs_qemu
def test_qemu_opens_the_largest_vhd_at_its_exact_size(tmp_path: Path) -> None:
    size = 2040 * 1024 * MiB  # the specification's limit; the file itself is ~6 MiB
    path = tmp_path / "max.vhd"
    _write("dynamic", size, 2 * MiB, [(size - 512, b"\xee" * 512)], path)
    assert _qemu_size(path) == size


@needs_qemu
def test_qemu_reads_a_differencing_file_as_its_stored_blocks(tmp_path: Path) -> None:
    size = 6 * MiB + 512
    path = tmp_path / "child.avhd"
    with path.open("wb") as out:
        write_avhd(
            out, size, uuid.uuid4(), ".\\p.vhd", "C:\\p.vhd",
            [(4096, b"\x11" * 1024), (3 * MiB, b"\x22" * 700), (size - 512, b"\x33" * 512)],
            parent_timestamp=datetime(2020, 1, 1, tzinfo=UTC),
        )  # fmt: skip
    assert _qemu_size(path) == size
    assert _qemu_raw(path) == _stored_blocks_over_zeros(path)


@needs_qemu
@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
@pytest.mark.parametrize("force_size", ["off", "on"])
def test_we_read_what_qemu_writes_as_qemu_does(
    subformat: str, force_size: str, tmp_path: Path
) -> None:
    size = 21 * MiB + 7 * 512  # not CHS-exact: qemu rounds it up unless force_size=on
    source = tmp_path / "source.raw"
    source.write_bytes(bytes(apply_runs(bytearray(size), _runs(size, 5))))
    path = tmp_path / "qemu.vhd"
    options = f"subformat={subformat},force_size={force_size}"
    _qemu("convert", "-f", "raw", "-O", "vpc", "-o", options, str(source), str(path))
    expected = _qemu_raw(path)
    with path.open("rb") as f:
        reader = VhdReader(f, str(path))
        assert reader.disk_type == subformat
        assert reader.virtual_size == _qemu_size(path) == len(expected)
        assert reader.read(0, reader.virtual_size) == expected
        assert reader.creator.startswith("qem2" if force_size == "on" else "qemu")
        if force_size == "off":  # qemu sized the disk by CHS: the same CHS as ours
            assert reader.geometry == chs(reader.virtual_size)
    assert expected[:size] == source.read_bytes()


@needs_qemu
@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_we_read_an_empty_disk_qemu_creates(subformat: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.vhd"
    _qemu("create", "-f", "vpc", "-o", f"subformat={subformat}", str(path), "64M")
    expected = _qemu_raw(path)
    assert _ours(path) == expected and not any(expected)


@needs_qemu
@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_a_511_byte_footer_reads_as_qemu_reads_it(kind: str, tmp_path: Path) -> None:
    size = 3 * MiB
    runs = _runs(size, 3)
    path = tmp_path / "short.vhd"
    _write(kind, size, 2 * MiB, runs, path)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 1)
    assert _ours(path) == _qemu_raw(path) == bytes(apply_runs(bytearray(size), runs))


@pytest.mark.parametrize(("kind", "size", "block"), CASES)
def test_dissect_reads_what_we_write_as_we_do(
    kind: str, size: int, block: int, tmp_path: Path
) -> None:
    _dissect()
    runs = _runs(size, size + 1)
    path = tmp_path / "disk.vhd"
    _write(kind, size, block, runs, path)
    assert _dissect_read(path) == _ours(path) == bytes(apply_runs(bytearray(size), runs))


def test_dissect_reads_a_511_byte_footer_and_a_differencing_file_as_we_expect(
    tmp_path: Path,
) -> None:
    _dissect()
    size = 4 * MiB
    path = tmp_path / "short.vhd"
    _write("dynamic", size, 2 * MiB, _runs(size, 9), path)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 1)
    assert _dissect_read(path) == _ours(path)
    child = tmp_path / "child.avhd"
    with child.open("wb") as out:
        write_avhd(
            out, size, uuid.uuid4(), ".\\p.vhd", "C:\\p.vhd", [(512, b"\x44" * 4096)],
            parent_timestamp=datetime(2020, 1, 1, tzinfo=UTC),
        )  # fmt: skip
    assert _dissect_read(child) == _stored_blocks_over_zeros(child)


def test_dissect_sees_the_parent_fields_we_write(tmp_path: Path) -> None:
    _dissect()
    from dissect.hypervisor.disk.c_vhd import c_vhd

    parent = uuid.uuid4()
    out = io.BytesIO()
    write_avhd(
        out, MiB, parent, ".\\Base.vhd", "D:\\VMs\\Base.vhd", [],
        parent_timestamp=datetime(2001, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    raw = out.getvalue()
    footer = c_vhd.footer(io.BytesIO(raw[-512:]))
    header = c_vhd.dynamic_header(io.BytesIO(raw[footer.data_offset :]))
    assert (footer.disk_type, footer.current_size) == (4, MiB)
    assert bytes(header.parent_unique_id) == parent.bytes
    assert header.parent_timestamp == 366 * 86400  # 2000 was a leap year
    assert bytes(header.parent_unicode_name).decode("utf-16-be").rstrip("\0") == "D:\\VMs\\Base.vhd"
    found = {}
    for loc in header.parent_locators:
        if loc.platform_code:
            data = raw[
                loc.platform_data_offset : loc.platform_data_offset + loc.platform_data_length
            ]
            found[loc.platform_code.to_bytes(4, "big")] = data.decode("utf-16-le")
    assert found == {b"W2ku": "D:\\VMs\\Base.vhd", b"W2ru": ".\\Base.vhd"}
