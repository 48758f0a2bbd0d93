"""``import disk`` and ``import hyperv`` on odd and hostile input: files of no known
format, VHD files under other names, chains mixing VHD and VHDX, configuration files
that lie (parent cycles, names that read as ids, disks not in the folder, several
VMs, entity bombs). Each is refused with its exit code and nothing recorded, or
imported with a note saying what was not trusted."""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
from pathlib import Path
from uuid import uuid4

import pytest
from cli_support import CLI

from ckpt import CheckpointType, DiskFormat, Store
from ckpt.storage.hyperv_config.vmcx import read_vmcx, write_vmcx
from ckpt.storage.vhd import write_avhd, write_vhd
from ckpt.storage.vhdx import write_avhdx

MiB = 1 << 20


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A 9.0 VM exported whole: root -> a -> b, Now under b."""
    rng = random.Random(3)
    store = Store.init(tmp_path / "src", actor="t")
    store.register_vm("VM", [("D", DiskFormat.VHDX)], "9.0", CheckpointType.STANDARD)
    img = tmp_path / "d.img"
    data = bytearray(4 * MiB)
    for name in ("root", "a", "b"):
        at = rng.randrange(0, 4 * MiB - 4096, 512)
        data[at : at + 4096] = rng.randbytes(4096)
        img.write_bytes(bytes(data))
        store.create_checkpoint("VM", name, disks={"D": img})
    store.export("VM", None, tmp_path / "out", all_checkpoints=True)
    store.close()
    return tmp_path / "out" / "VM"


def _config(folder: Path, name: str) -> tuple[Path, object]:
    for p in (folder / "Snapshots").glob("*.vmcx"):
        with p.open("rb") as f:
            c = read_vmcx(f, str(p))
        if c.name == name:
            return p, c
    raise AssertionError(name)


def _rewrite(path: Path, **changes: object) -> None:
    from dataclasses import replace

    with path.open("rb") as f:
        config = read_vmcx(f, str(path))
    with path.open("wb") as out:
        write_vmcx(out, replace(config, **changes))  # type: ignore[arg-type]


def test_parent_cycle_in_configurations_is_broken_and_said(folder: Path, tmp_path: Path) -> None:
    _, a = _config(folder, "a")
    pr, _ = _config(folder, "root")
    _rewrite(pr, parent=a.id)  # type: ignore[attr-defined]
    report = Store.init(tmp_path / "s", actor="t").import_hyperv(folder)
    assert sorted(report.checkpoints) == ["a", "b", "root"]
    assert any("cycle" in n for n in report.notes)


def test_a_checkpoint_name_that_reads_as_an_id_falls_back_to_its_file(
    folder: Path, tmp_path: Path
) -> None:
    pa, _ = _config(folder, "a")
    _rewrite(pa, name=str(uuid4()))
    report = Store.init(tmp_path / "s", actor="t").import_hyperv(folder)
    assert "a" not in report.checkpoints and len(report.checkpoints) == 3
    assert any("reads as an id" in n for n in report.notes)


def test_a_disk_the_configuration_names_but_the_folder_lacks_is_noted(
    folder: Path, tmp_path: Path
) -> None:
    from ckpt.storage.hyperv_config import ConfiguredDisk

    pb, b = _config(folder, "b")
    disks = (*b.disks, ConfiguredDisk("scsi0/3", "C:\\elsewhere\\gone.vhdx"))  # type: ignore[attr-defined]
    _rewrite(pb, disks=disks)
    report = Store.init(tmp_path / "s", actor="t").import_hyperv(folder)
    assert "b" in report.checkpoints
    assert any("gone.vhdx" in n and "not in the folder" in n for n in report.notes)


def test_two_vm_configurations_are_refused_and_nothing_is_recorded(
    folder: Path, tmp_path: Path
) -> None:
    vmcx = next((folder / "Virtual Machines").glob("*.vmcx"))
    shutil.copy(vmcx, vmcx.with_name(f"{str(uuid4()).upper()}.vmcx"))
    cli = CLI(tmp_path / "s")
    cli.ok("init")
    err = cli.fails(14, "import", "hyperv", folder)
    assert "configurations of 2 VMs" in err
    assert cli.ok("vm", "list").strip() == "no VMs"


def test_an_entity_bomb_or_junk_configuration_is_a_note_not_a_crash(
    folder: Path, tmp_path: Path
) -> None:
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><configuration>&b;</configuration>'
    )
    (folder / "Snapshots" / "bomb.xml").write_text(bomb)
    (folder / "Snapshots" / "junk.vmcx").write_bytes(b"\xff" * 5000)
    report = Store.init(tmp_path / "s", actor="t").import_hyperv(folder)
    assert sorted(report.checkpoints) == ["a", "b", "root"]
    assert sum("not read" in n for n in report.notes) == 2


def test_import_disk_refuses_a_file_of_no_known_format_unless_told_raw(tmp_path: Path) -> None:
    cli = CLI(tmp_path / "s")
    cli.ok("init")
    cli.ok("vm", "add", "v", "--disk", "D")
    dat = tmp_path / "disk.dat"
    dat.write_bytes(b"\x11" * MiB)
    err = cli.fails(14, "import", "disk", "v", "D", dat)
    assert "not a VHDX, VHD or qcow2 file" in err and "--format raw" in err
    assert "disk-content-captured" not in cli.ok("log")
    cli.ok("import", "disk", "v", "D", dat, "--format", "raw")
    img = tmp_path / "disk.img"
    img.write_bytes(b"\x22" * MiB)
    cli.ok("import", "disk", "v", "D", img)


def test_import_disk_reads_a_vhd_chain_whatever_its_names(tmp_path: Path) -> None:
    rng = random.Random(9)
    base_data = rng.randbytes(2 * MiB)
    child_runs = [(512 * 7, rng.randbytes(4096)), (MiB + 1024, bytes(2048))]
    base = tmp_path / "base.vhd"
    with base.open("wb") as out:
        written = write_vhd(out, 2 * MiB, [(0, base_data)])
    child = tmp_path / "child.dat"  # a name that says nothing: the bytes say AVHD
    with child.open("wb") as out:
        write_avhd(out, 2 * MiB, written.unique_id, ".\\base.vhd", "C:\\x\\base.vhd", child_runs,
                   parent_timestamp=written_time(base))  # fmt: skip
    expected = bytearray(base_data)
    for at, data in child_runs:
        expected[at : at + len(data)] = data
    store = Store.init(tmp_path / "s", actor="t")
    store.register_vm("v", [("D", DiskFormat.VHD)])
    store.import_disk("v", "D", child)
    store.create_checkpoint("v", "c")
    out = io.BytesIO()
    store.restore_disk("v", "c", "D", out)
    assert out.getvalue() == bytes(expected)


def written_time(path: Path) -> object:
    from ckpt.storage.vhd import VhdReader

    with path.open("rb") as f:
        return VhdReader(f, str(path)).timestamp


def test_a_vhdx_child_of_a_vhd_is_refused_naming_both(tmp_path: Path) -> None:
    base = tmp_path / "base.vhd"
    with base.open("wb") as out:
        written = write_vhd(out, 2 * MiB, [(0, b"\x01" * 4096)])
    child = tmp_path / "child.avhdx"
    with child.open("wb") as out:
        write_avhdx(out, 2 * MiB, written.unique_id, ".\\base.vhd", "C:\\x\\base.vhd", [])
    cli = CLI(tmp_path / "s")
    cli.ok("init")
    cli.ok("vm", "add", "v", "--disk", "D")
    err = cli.fails(32, "import", "disk", "v", "D", child)
    assert "child.avhdx (VHDX)" in err and "base.vhd (VHD)" in err and "never mixes" in err


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) is missing")
def test_a_qcow2_file_is_refused_with_its_format_named(tmp_path: Path) -> None:
    q = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(q), "1M"], check=True,
                   capture_output=True)  # fmt: skip
    cli = CLI(tmp_path / "s")
    cli.ok("init")
    cli.ok("vm", "add", "v", "--disk", "D")
    assert "qcow2" in cli.fails(14, "import", "disk", "v", "D", q)


def test_fifos_and_symlink_loops_in_the_folder_are_passed_over(
    folder: Path, tmp_path: Path
) -> None:
    os.mkfifo(folder / "Snapshots" / "waiting.xml")  # opening it would wait for a writer
    os.mkfifo(folder / "Virtual Hard Disks" / "waiting.vhdx")
    (folder / "loop").mkdir()
    (folder / "loop" / "up").symlink_to("..")  # rglob does not follow it round
    report = Store.init(tmp_path / "s", actor="t").import_hyperv(folder)
    assert sorted(report.checkpoints) == ["a", "b", "root"]
    assert report.files == 4  # the base and three AVHDX files: the FIFO is no disk file


def test_a_configuration_naming_only_one_of_two_disks_imports(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "src", actor="t")
    store.register_vm("VM", [("A", DiskFormat.VHDX), ("B", DiskFormat.VHDX)], "9.0")
    img = tmp_path / "d.img"
    for i, name in enumerate(("one", "two")):
        img.write_bytes(bytes([i + 1]) * MiB)
        store.create_checkpoint("VM", name, disks={"A": img, "B": img})
    store.export("VM", None, tmp_path / "out", all_checkpoints=True)
    folder = tmp_path / "out" / "VM"
    path, config = _config(folder, "one")
    _rewrite(path, disks=config.disks[1:])  # type: ignore[attr-defined]  # only disk B
    report = Store.init(tmp_path / "s", actor="t").import_hyperv(folder)
    assert sorted(report.checkpoints) == ["one", "two"]
