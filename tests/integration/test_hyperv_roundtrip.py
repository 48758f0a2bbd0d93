"""Issue 17's round trip, both generations: a branching history, exported as a whole VM
(``--all-checkpoints``), imported into a fresh store: the same tree (names, parents,
current checkpoint, ids, times, types) and the same bytes for every checkpoint's disks
and state files. A 5.0 VM has VHD disks, XML configurations and VSV/BIN files; a 9.0 VM
VHDX disks, VMCX configurations and VMRS files."""

from __future__ import annotations

import io
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_support import CLI

from ckpt import CheckpointType, DiskFormat, FileRole, Store
from ckpt.domain.errors import InvalidValue

MiB = 1 << 20
SIZE = 6 * MiB


def _image(rng: random.Random, base: bytes | None = None) -> bytes:
    data = bytearray(base if base is not None else bytes(SIZE))
    for _ in range(5):
        at = rng.randrange(0, SIZE - 70000, 512)
        n = rng.choice([512, 4096, 65536])
        data[at : at + n] = rng.randbytes(n)
    data[MiB : MiB + 4096] = bytes(4096)  # zeros over data stay zeros
    return bytes(data)


def _history(tmp: Path, version: str, fmt: DiskFormat) -> tuple[Store, dict[str, dict[str, bytes]]]:
    """root -> a -> b; a -> c (branch, running VM, memory) -> Now; two disks."""
    rng = random.Random(17)
    store = Store.init(tmp / f"s{version}", actor="t")
    disks = [("Sys", fmt), ("Data", fmt)]
    store.register_vm("VM", disks, version, CheckpointType.STANDARD)
    expected: dict[str, dict[str, bytes]] = {}
    state: dict[str, bytes] = {"Sys": bytes(SIZE), "Data": bytes(SIZE)}

    def take(name: str, running: bool = False) -> None:
        for disk in state:
            state[disk] = _image(rng, state[disk])
        images = {}
        for disk, data in state.items():
            images[disk] = tmp / f"{disk}.img"
            images[disk].write_bytes(data)
        files: dict[FileRole, Path] = {}
        blobs: dict[str, bytes] = {}
        if version == "5.0":
            if running:
                blobs["vsv"] = rng.randbytes(3000)
                blobs["bin"] = rng.randbytes(70000)
                (tmp / "x.vsv").write_bytes(blobs["vsv"])
                (tmp / "x.bin").write_bytes(blobs["bin"])
                files = {FileRole.DEVICE_STATE: tmp / "x.vsv", FileRole.MEMORY: tmp / "x.bin"}
        else:
            blobs["vmrs"] = rng.randbytes(45000)
            (tmp / "x.vmrs").write_bytes(blobs["vmrs"])
            files = {FileRole.RUNTIME_STATE: tmp / "x.vmrs"}
        if running:
            store.start_vm("VM")
        store.create_checkpoint("VM", name, disks=images, files=files)
        if running:
            store.stop_vm("VM")
        expected[name] = dict(state) | {f"file:{k}": v for k, v in blobs.items()}

    take("root")
    take("a")
    take("b")
    store.apply_checkpoint("VM", "a")
    state = {d: expected["a"][d] for d in ("Sys", "Data")}
    take("c", running=True)
    for disk in state:  # Now moves on after c
        state[disk] = _image(rng, state[disk])
        (tmp / f"{disk}.img").write_bytes(state[disk])
    store.sync("VM", {d: tmp / f"{d}.img" for d in state}, "now")
    expected["Now"] = dict(state)
    return store, expected


def _disk(store: Store, vm: str, point: str, disk: str) -> bytes:
    out = io.BytesIO()
    store.restore_disk(vm, point, disk, out)
    return out.getvalue()


def _shape(store: Store, vm: str) -> dict[str, tuple[str | None, str, str, str]]:
    v = store.vm(vm)
    names = {cp.id: cp.name for cp in v.checkpoints.values()}
    return {
        cp.name: (
            None if cp.parent is None else names[cp.parent],
            str(cp.id),
            cp.created_at.isoformat(),
            cp.type.value,
        )
        for cp in v.checkpoints.values()
    }


def _state_files(store: Store, vm: str, name: str, out: Path) -> dict[str, bytes]:
    try:
        files = store.restore_state_files(vm, name, out)
    except InvalidValue as e:  # a 5.0 checkpoint of a VM that was off has none
        assert "no state files" in str(e)
        return {}
    return {
        f.suffix.lower().lstrip("."): f.read_bytes()
        for f in files
        if f.suffix.lower() in (".vmrs", ".vsv", ".bin")
    }


@pytest.mark.parametrize(("version", "fmt"), [("9.0", DiskFormat.VHDX), ("5.0", DiskFormat.VHD)])
def test_branching_history_round_trips_through_a_hyperv_folder(
    tmp_path: Path, version: str, fmt: DiskFormat
) -> None:
    store, expected = _history(tmp_path, version, fmt)
    out = tmp_path / "export"
    files = store.export("VM", None, out, all_checkpoints=True)
    folder = out / "VM"
    ext = ".vmcx" if version == "9.0" else ".xml"
    assert len(list((folder / "Virtual Machines").glob(f"*{ext}"))) == 1
    assert len(list((folder / "Snapshots").glob(f"*{ext}"))) == 4
    disk_ext = {".vhd", ".avhd"} if fmt is DiskFormat.VHD else {".vhdx", ".avhdx"}
    assert {f.suffix for f in files if f.parent.name == "Virtual Hard Disks"} == disk_ext

    fresh = Store.init(tmp_path / "fresh", actor="t")
    report = fresh.import_hyperv(folder)
    assert report.vm == "VM"
    assert report.configuration == ("vmcx" if version == "9.0" else "xml")
    assert report.version == version
    assert report.current == "c"
    assert _shape(fresh, "VM") == _shape(store, "VM")
    imported = fresh.vm("VM")
    assert {d.format for d in imported.disks} == {fmt}
    for name in ("root", "a", "b", "c"):
        for disk in ("Sys", "Data"):
            assert _disk(fresh, "VM", name, disk) == expected[name][disk], (name, disk)
        got = _state_files(fresh, "VM", name, tmp_path / f"sf-{name}")
        want = {k[5:]: v for k, v in expected[name].items() if k.startswith("file:")}
        assert got == want, name
    for disk in ("Sys", "Data"):  # Now: the running layer
        with fresh.open_disk("VM", "Now", disk) as reader:
            assert reader.read() == expected["Now"][disk]
    assert fresh.vm("VM").checkpoints[fresh.vm("VM").current].has_memory
    log = [e.operation for e in fresh.log("VM")]
    assert "hyperv-folder-imported" in log


def test_import_names_what_came_from_the_disk_files_when_a_configuration_is_damaged(
    tmp_path: Path,
) -> None:
    store, expected = _history(tmp_path, "9.0", DiskFormat.VHDX)
    out = tmp_path / "export"
    store.export("VM", None, out, all_checkpoints=True)
    folder = out / "VM"
    b = store.vm("VM").find_checkpoint("b")
    damaged = folder / "Snapshots" / f"{str(b.id).upper()}.vmcx"
    damaged.write_bytes(b"\x00" * 100)
    fresh = Store.init(tmp_path / "fresh", actor="t")
    report = fresh.import_hyperv(folder)
    names = set(fresh.vm("VM").checkpoints[c].name for c in fresh.vm("VM").checkpoints)
    assert {"root", "a", "c"} <= names and "b" not in names
    fallback = [n for n in names if n.startswith("Imported ")]
    assert len(fallback) == 1
    assert any(damaged.name in n and "not read" in n for n in report.notes)
    assert any(fallback[0] in n and "disk tree" in n for n in report.notes)
    assert _disk(fresh, "VM", fallback[0], "Sys") == expected["b"]["Sys"]


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) is missing")
def test_qemu_reads_every_vhd_we_write_as_our_restore(tmp_path: Path) -> None:
    store, expected = _history(tmp_path, "5.0", DiskFormat.VHD)
    for name in ("root", "b", "c"):
        vhd = tmp_path / f"{name}.vhd"
        CLI(tmp_path / "s5.0").ok("restore", "VM", name, "--disk", "Sys", "-o", vhd)
        raw = tmp_path / f"{name}.raw"
        subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(vhd), str(raw)],
                       check=True, capture_output=True)  # fmt: skip
        assert raw.read_bytes() == expected[name]["Sys"], name
    out = tmp_path / "export"
    store.export("VM", "root", out)  # a base .vhd: qemu reads it alone
    base = next((out / "VM" / "Virtual Hard Disks").glob("Sys*.vhd"))
    raw = tmp_path / "base.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(base), str(raw)],
                   check=True, capture_output=True)  # fmt: skip
    assert raw.read_bytes() == expected["root"]["Sys"]
    flat = tmp_path / "flat"
    store.export("VM", "b", flat, flatten=True)  # one standalone .vhd per disk
    for disk in ("Sys", "Data"):
        vhd = flat / "VM" / "Virtual Hard Disks" / f"{disk}.vhd"
        raw = tmp_path / f"flat-{disk}.raw"
        subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(vhd), str(raw)],
                       check=True, capture_output=True)  # fmt: skip
        assert raw.read_bytes() == expected["b"][disk], disk
