"""Hyper-V interop end to end: export -> import -> restore, independent readers, bad files."""

from __future__ import annotations

import io
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from ckpt import CheckpointType, DiskFormat, FileRole, Store
from ckpt.domain.errors import VhdxError

MiB = 1 << 20


def _image(rng: random.Random, base: bytes | None = None, writes: int = 6) -> bytes:
    data = bytearray(base if base is not None else bytes(12 * MiB))
    for _ in range(writes):
        at = rng.randrange(0, 12 * MiB - 70000, 512)
        data[at : at + rng.choice([512, 4096, 65536])] = rng.randbytes(1) * 0 + rng.randbytes(
            rng.choice([512, 4096, 65536])
        )
    data[3 * MiB : 3 * MiB + 8192] = bytes(8192)  # zeros written over data: must stay zeros
    return bytes(data[: 12 * MiB])


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Store, dict[str, bytes]]:
    """A multi-branch tree with captured content: a -> b, a -> c -> d, Now under d."""
    rng = random.Random(5)
    store = Store.init(tmp_path / "s", actor="t")
    store.register_vm("VM", [("D", DiskFormat.VHDX)], "9.0", CheckpointType.STANDARD)
    img = tmp_path / "d.img"
    expected: dict[str, bytes] = {}

    def take(name: str, data: bytes) -> None:
        img.write_bytes(data)
        cfg = tmp_path / "c.vmcx"
        cfg.write_bytes(b"vmcx of " + name.encode())
        store.create_checkpoint("VM", name, disks={"D": img}, files={FileRole.CONFIG: cfg})
        expected[name] = data

    take("a", _image(rng))
    take("b", _image(rng, expected["a"]))
    store.apply_checkpoint("VM", "a")
    take("c", _image(rng, expected["a"]))
    take("d", _image(rng, expected["c"]))
    return store, expected


def _restore(store: Store, vm: str, name: str) -> bytes:
    out = io.BytesIO()
    store.restore_disk(vm, name, "D", out)
    return out.getvalue()


def test_export_import_restore_round_trip_for_every_checkpoint(
    tree: tuple[Store, dict[str, bytes]], tmp_path: Path
) -> None:
    store, expected = tree
    for name, data in expected.items():
        out = tmp_path / f"export-{name}"
        files = store.export("VM", name, out)
        disks = out / "VM" / "Virtual Hard Disks"
        chain_files = [f for f in files if f.parent == disks]
        cp = store.vm("VM").find_checkpoint(name)
        assert (out / "VM" / "Snapshots" / f"{str(cp.id).upper()}.vmcx").read_bytes() == (
            b"vmcx of " + name.encode()
        )
        fresh = Store.init(tmp_path / f"fresh-{name}")
        fresh.register_vm("Copy", [("D", DiskFormat.VHDX)], checkpoint_type=CheckpointType.STANDARD)
        fresh.import_disk("Copy", "D", chain_files[-1])  # the leaf; its parents are found
        fresh.create_checkpoint("Copy", "imported")
        got = _restore(fresh, "Copy", "imported")
        assert got == data, (name, _first_difference(got, data))
    log = [e.operation for e in store.log("VM")]
    assert log.count("checkpoint-exported") == len(expected)


def _first_difference(a: bytes, b: bytes) -> tuple[int, int, int] | None:
    """(offset, len a, len b) of the first differing 512-byte sector."""
    for offset in range(0, max(len(a), len(b)), 512):
        if a[offset : offset + 512] != b[offset : offset + 512]:
            return offset, len(a), len(b)
    return None


def test_flattened_export_and_vhdx_restore(
    tree: tuple[Store, dict[str, bytes]], tmp_path: Path
) -> None:
    store, expected = tree
    files = store.export("VM", "d", tmp_path / "flat", flatten=True)
    assert [f.name for f in files if f.suffix == ".vhdx"] == ["D.vhdx"]
    fresh = Store.init(tmp_path / "fresh")
    fresh.register_vm("Copy", [("D", DiskFormat.VHDX)], checkpoint_type=CheckpointType.STANDARD)
    fresh.import_disk("Copy", "D", files[0])
    fresh.create_checkpoint("Copy", "x")
    assert _restore(fresh, "Copy", "x") == expected["d"]


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing (apt qemu-utils)")
def test_qemu_img_accepts_what_we_write(
    tree: tuple[Store, dict[str, bytes]], tmp_path: Path
) -> None:
    store, expected = tree
    vhdx = tmp_path / "c.vhdx"
    with vhdx.open("wb") as out:
        store.restore_disk_vhdx("VM", "c", "D", out)
    check = subprocess.run(["qemu-img", "check", str(vhdx)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    raw = tmp_path / "c.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(vhdx), str(raw)], check=True)
    assert raw.read_bytes() == expected["c"]
    base = store.export("VM", "b", tmp_path / "e")[0]
    assert base.suffix == ".vhdx"
    assert subprocess.run(["qemu-img", "check", str(base)], capture_output=True).returncode == 0


def test_dissect_reads_our_exported_chain(
    tree: tuple[Store, dict[str, bytes]], tmp_path: Path
) -> None:
    vhdx_mod = pytest.importorskip(
        "dissect.hypervisor.disk.vhdx", reason="dissect.hypervisor missing"
    )
    store, expected = tree
    files = store.export("VM", "d", tmp_path / "e")
    leaf = [f for f in files if f.suffix == ".avhdx"][-1]
    with leaf.open("rb") as fh:
        disk = vhdx_mod.VHDX(fh)
        block = 2 * MiB  # whole 2 MiB blocks: dissect's sector reads in partial blocks are off
        for offset in range(0, len(expected["d"]), block):
            disk.seek(offset)
            assert disk.read(block) == expected["d"][offset : offset + block], offset


def _vm_version(store: Store) -> int:
    return store.vm("VM").version


def test_bad_files_are_refused_naming_the_file_and_nothing_is_recorded(
    tree: tuple[Store, dict[str, bytes]], tmp_path: Path
) -> None:
    store, _ = tree
    files = [f for f in store.export("VM", "d", tmp_path / "e") if f.suffix in (".vhdx", ".avhdx")]
    disks = files[0].parent
    before = _vm_version(store)
    # a missing parent
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(files[-1], lonely / files[-1].name)
    with pytest.raises(VhdxError, match="parent disk is missing"):
        store.import_disk("VM", "D", lonely / files[-1].name)
    # a truncated file
    cut = tmp_path / "cut.vhdx"
    cut.write_bytes(files[0].read_bytes()[: 300 * 1024])
    with pytest.raises(VhdxError, match=r"cut\.vhdx"):
        store.import_disk("VM", "D", cut)
    # both headers damaged
    bad = tmp_path / "bad.vhdx"
    data = bytearray(files[0].read_bytes())
    data[64 * 1024 + 100] ^= 0xFF
    data[128 * 1024 + 100] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(VhdxError, match=r"bad\.vhdx"):
        store.import_disk("VM", "D", bad)
    # a cycle: a differencing file whose parent locator names itself
    loop = tmp_path / "loop"
    loop.mkdir()
    leaf = files[-1]
    raw = leaf.read_bytes()
    parent_name = files[-2].name.encode("utf-16-le")
    assert parent_name in raw
    (loop / files[-2].name).write_bytes(raw)  # the "parent" is the child itself again
    with pytest.raises(VhdxError, match=r"a cycle of parents"):
        store.import_disk("VM", "D", loop / files[-2].name)
    assert _vm_version(store) == before
    assert list(disks.iterdir())  # the export itself is untouched


def test_import_hyperv_folder_rebuilds_the_tree(
    tree: tuple[Store, dict[str, bytes]], tmp_path: Path
) -> None:
    """Every checkpoint and Now exported, their files gathered in one folder -> import
    hyperv -> same bytes (an export refuses a non-empty folder: gathered by copying)."""
    store, expected = tree
    folder = tmp_path / "hv"
    for name in [*expected, None]:  # Now last: its running layer is the newest leaf
        one = tmp_path / f"one-{name}"
        for f in store.export("VM", name, one):
            target = folder / f.relative_to(one)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, target)
    now_bytes = _restore_now(store)
    fresh = Store.init(tmp_path / "fresh")
    from ckpt.hyperv_import import import_folder

    report = import_folder(fresh.unit_of_work, folder / "VM", "Copy")
    assert report.disks == ["D"] and report.files == 5
    vm = store.vm("VM")
    for name, data in expected.items():
        frozen = vm.layers[vm.find_checkpoint(name).layer("D")].file
        assert _restore(fresh, "Copy", f"Imported {frozen}") == data, name
    copy = fresh.vm("Copy")
    assert len(copy.checkpoints) == len(expected)
    tree_shape = {e.name: e.depth for e in fresh.tree("Copy")}
    assert sorted(tree_shape.values()) == [0, 1, 1, 2]  # a -> {b, c -> d}
    assert now_bytes == expected["d"]


def _restore_now(store: Store) -> bytes:
    vm = store.vm("VM")
    assert vm.current is not None
    return _restore(store, "VM", vm.checkpoints[vm.current].name)


def test_a_parent_locator_cannot_lead_the_import_out_of_its_folder(
    tree: tuple[Store, dict[str, bytes]], tmp_path: Path
) -> None:
    store, _ = tree
    files = [f for f in store.export("VM", "b", tmp_path / "e") if f.suffix == ".avhdx"]
    inner = tmp_path / "jail" / "inner"
    inner.mkdir(parents=True)
    shutil.copy(files[0], inner / files[0].name)
    shutil.copy(files[0].parent / "D.vhdx", tmp_path / "jail" / "D.vhdx")  # one level up
    data = (inner / files[0].name).read_bytes()
    old = ".\\D.vhdx".encode("utf-16-le")
    new = "..\\D.vhdx".encode("utf-16-le")
    assert old in data
    # same length is impossible (one more character): rewrite the value in a fresh file instead
    from ckpt.storage.vhdx import VhdxReader

    with (inner / files[0].name).open("rb") as fh:
        reader = VhdxReader(fh)
        runs = [r for b in reader.iter_blocks() for r in b.runs()]
        guid = reader.parent_linkages[0]
        size = reader.virtual_size
    from ckpt.storage.vhdx import write_avhdx

    escaped = inner / "escaped.avhdx"
    with escaped.open("wb") as out:
        write_avhdx(out, size, guid, "..\\D.vhdx", "C:\\elsewhere\\D.vhdx", runs)
    assert new in escaped.read_bytes()
    before = store.vm("VM").version
    with pytest.raises(VhdxError, match="points outside"):
        store.import_disk("VM", "D", escaped)
    assert store.vm("VM").version == before
