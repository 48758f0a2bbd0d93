"""Issue 11, items 8 and 9 and their tracebacks: `import hyperv` records a VM whole or
not at all; `export` refuses a non-empty target, writes Windows-safe, unique folder
names and file names a file system takes, and says clearly what it cannot write."""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from ckpt import CheckpointType, DiskFormat, Store
from ckpt.cli import run
from ckpt.domain.errors import VhdxCorrupt
from ckpt.storage.vhdx_files import open_vhdx_chain

NAME_MAX = 255  # bytes in one path component (ckpt.hyperv_export.NAME_MAX)

MiB = 1 << 20


def _cli(store: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(["--store", str(store), "--actor", "t", *args], out, err)
    return code, out.getvalue(), err.getvalue()


def _image(rng: random.Random, base: bytes | None = None) -> bytes:
    data = bytearray(base if base is not None else bytes(2 * MiB))
    for _ in range(4):
        at = rng.randrange(0, 2 * MiB - 8192, 4096)
        data[at : at + 8192] = rng.randbytes(8192)
    return bytes(data)


@pytest.fixture
def source(tmp_path: Path) -> tuple[Store, dict[str, bytes]]:
    """A VM with a branching tree: a -> b, a -> c -> d, Now under d."""
    rng = random.Random(11)
    store = Store.init(tmp_path / "src", actor="t")
    store.register_vm("VM", [("D", DiskFormat.VHDX)], "9.0", CheckpointType.STANDARD)
    img = tmp_path / "d.img"
    expected: dict[str, bytes] = {}

    def take(name: str, data: bytes) -> None:
        img.write_bytes(data)
        store.create_checkpoint("VM", name, disks={"D": img})
        expected[name] = data

    take("a", _image(rng))
    take("b", _image(rng, expected["a"]))
    store.apply_checkpoint("VM", "a")
    take("c", _image(rng, expected["a"]))
    take("d", _image(rng, expected["c"]))
    return store, expected


def _hyperv_folder(store: Store, names: list[str], tmp_path: Path) -> Path:
    """Each checkpoint and Now exported, their files gathered in one Hyper-V folder
    (files of one layer are identical in every export: same DataWriteGuid)."""
    folder = tmp_path / "hv" / "VM"
    for name in [*names, None]:  # Now last: its running layer is the newest leaf
        one = tmp_path / f"one-{name}"
        for f in store.export("VM", name, one):
            target = folder / f.relative_to(one / "VM")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, target)
    return folder


def _layer_file(store: Store, checkpoint: str, folder: Path) -> Path:
    vm = store.vm("VM")
    return folder / "Virtual Hard Disks" / vm.layers[vm.find_checkpoint(checkpoint).layer("D")].file


def _swap(one: Path, other: Path) -> None:
    parked = one.with_name("parked")
    one.rename(parked)
    other.rename(one)
    parked.rename(other)


# ------------------------------------------------------------------ item 8
def test_import_hyperv_with_a_swapped_parent_records_nothing_and_a_retry_works(
    source: tuple[Store, dict[str, bytes]], tmp_path: Path
) -> None:
    store, expected = source
    folder = _hyperv_folder(store, list(expected), tmp_path)
    # b's and c's files both descend from a's: swapped, each still finds a parent,
    # but d's file names c's, which now holds b's layer (another DataWriteGuid).
    b, c = _layer_file(store, "b", folder), _layer_file(store, "c", folder)
    _swap(b, c)
    target = tmp_path / "dst"
    assert _cli(target, "init")[0] == 0
    code, _, err = _cli(target, "import", "hyperv", str(folder), "--name", "Copy")
    assert code == 32, err
    assert "DataWriteGuid" in err and err.count("\n") == 1
    code, out, _ = _cli(target, "log", "--json")
    assert json.loads(out) == []  # no VM registered, no content recorded
    assert json.loads(_cli(target, "vm", "list", "--json")[1]) == []
    _swap(b, c)  # repaired: the retry is not told that the VM exists
    code, out, err = _cli(target, "import", "hyperv", str(folder), "--name", "Copy", "--json")
    assert code == 0, err
    assert len(json.loads(out)["checkpoints"]) == 4


def test_import_hyperv_failing_while_reading_content_records_nothing(
    source: tuple[Store, dict[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file damaged past its headers is found only when its blocks are read: by then
    the base and a checkpoint had been recorded, and stayed."""
    store, expected = source
    folder = _hyperv_folder(store, list(expected), tmp_path)
    import ckpt.capture_ops
    import ckpt.hyperv_import
    import ckpt.storage.manifest_capture

    calls = []
    real = ckpt.storage.manifest_capture.capture_disk

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1])
        if len(calls) == 3:
            raise VhdxCorrupt("block 7 of X.avhdx: payload beyond the end of the file")
        return real(*args, **kwargs)

    for module in (ckpt.capture_ops, ckpt.hyperv_import):
        monkeypatch.setattr(module, "capture_disk", failing, raising=False)
    target = tmp_path / "dst"
    with Store.init(target, actor="t") as fresh:
        from ckpt.hyperv_import import import_folder

        with pytest.raises(VhdxCorrupt, match="block 7"):
            import_folder(fresh.unit_of_work, folder, "Copy")
        assert len(calls) == 3
        assert fresh.app.last_position() == 0
        monkeypatch.undo()
        report = import_folder(fresh.unit_of_work, folder, "Copy")
        assert len(report.checkpoints) == 4


def test_the_missing_parent_message_names_each_path_once(
    source: tuple[Store, dict[str, bytes]], tmp_path: Path
) -> None:
    store, _ = source
    files = _disk_files(store.export("VM", "d", tmp_path / "e"))
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(files[-1], lonely / files[-1].name)
    target = tmp_path / "dst"
    _cli(target, "init")
    code, _, err = _cli(target, "import", "hyperv", str(lonely))
    assert code == 33 and "parent disk is missing" in err, err
    looked = err.split("looked for ")[1].rstrip(")\n")
    paths = looked.split(", ")
    assert len(paths) == len(set(paths)) == 1, err


# ------------------------------------------------------------------ item 9
def _export(store: Path, *args: str) -> tuple[int, Any, str]:
    code, out, err = _cli(store, "export", *args, "--json")
    return code, (json.loads(out) if code == 0 else None), err


@pytest.fixture
def cli_store(tmp_path: Path) -> Path:
    path = tmp_path / "s"
    image = tmp_path / "img.raw"
    image.write_bytes(random.Random(3).randbytes(64 * 1024))
    assert _cli(path, "init")[0] == 0
    return path


def _vm_with_content(store: Path, name: str, image: Path) -> None:
    assert _cli(store, "vm", "add", name, "--disk", "D")[0] == 0
    code, _, err = _cli(store, "checkpoint", "create", name, "one", "--disk", f"D={image}")
    assert code == 0, err


def test_export_into_a_non_empty_folder_is_refused_and_force_replaces_it(
    cli_store: Path, tmp_path: Path
) -> None:
    image = tmp_path / "img.raw"
    _vm_with_content(cli_store, "web", image)
    out = tmp_path / "out"
    code, first, err = _export(cli_store, "web", "-o", str(out))
    assert code == 0, err
    before = {p: p.read_bytes() for p in (out / "web").rglob("*") if p.is_file()}
    _cli(cli_store, "checkpoint", "create", "web", "two", "--disk", f"D={image}")
    code, _, err = _export(cli_store, "web", "-o", str(out))
    assert code == 16, err
    assert "not empty" in err and "--force" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in (out / "web").rglob("*") if p.is_file()} == before
    keep = out / "web" / "notes.txt"  # not something an export writes: --force keeps it
    keep.write_text("mine")
    code, second, err = _export(cli_store, "web", "-o", str(out), "--force")
    assert code == 0, err
    on_disk = {str(p) for p in (out / "web").rglob("*") if p.is_file()}
    assert on_disk == set(second["files"]) | {str(keep)}  # no stale AVHDX left beside them
    assert len(second["files"]) == len(first["files"]) + 1
    _, files, _ = open_vhdx_chain(_disk_files(second["files"])[-1])  # the chain links up
    for f in files:
        f.close()


def test_vm_names_that_clean_to_one_folder_get_two(cli_store: Path, tmp_path: Path) -> None:
    image = tmp_path / "img.raw"
    names = ["a/b", "a_b", "A:b", "CON", "nul.txt", "lpt1", "com9 .x", "x. ", "a*?"]
    out = tmp_path / "out"
    folders = []
    for name in names:
        _vm_with_content(cli_store, name, image)
        code, data, err = _export(cli_store, name, "-o", str(out))
        assert code == 0, (name, err)
        folders.append(Path(data["files"][0]).relative_to(out).parts[0])
    assert len(set(folders)) == len(names), folders
    assert folders[1] == "a_b"  # an unchanged name stays as it is
    for name, folder in zip(names, folders, strict=True):
        assert not set('<>:"/\\|?*') & set(folder)
        assert folder.split(".")[0].strip().upper() not in {"CON", "NUL", "LPT1", "COM9"}
        assert folder == name or folder.endswith(f"~{_vm_id(cli_store, name)[:8]}")
        assert not folder.endswith((".", " "))


def _vm_id(store: Path, name: str) -> str:
    _, out, _ = _cli(store, "vm", "show", name, "--json")
    return str(json.loads(out)["id"]).replace("-", "")


def test_a_100_character_emoji_name_exports_with_names_a_file_system_takes(
    cli_store: Path, tmp_path: Path
) -> None:
    name = "\U0001f600" * 100  # 400 UTF-8 bytes; the default disk is named after the VM
    image = tmp_path / "img.raw"
    assert _cli(cli_store, "vm", "add", name)[0] == 0
    _cli(cli_store, "checkpoint", "create", name, "one", "--disk", f"{name}={image}")
    _cli(cli_store, "checkpoint", "create", name, "two", "--disk", f"{name}={image}")
    out = tmp_path / "out"
    code, data, err = _export(cli_store, name, "-o", str(out))
    assert code == 0, err
    files = [Path(f) for f in data["files"]]
    assert len(files) == 4  # Virtual Machines/<id>.vmcx, then the three layer files
    for f in files:
        for part in f.relative_to(out).parts:
            assert len(part.encode()) <= NAME_MAX, part
    assert len({f.name for f in files}) == 4
    _, opened, _ = open_vhdx_chain(_disk_files(files)[-1])  # parents found by the names written
    for f in opened:
        f.close()
    assert _cli(tmp_path / "back", "init")[0] == 0  # and the folder imports back
    code, _, err = _cli(tmp_path / "back", "import", "hyperv", str(files[0].parent.parent))
    assert code == 0, err


def _disk_files(files: list[Path] | list[str]) -> list[Path]:
    """An export's layer files, base first (the configuration and state files follow)."""
    return [Path(f) for f in files if Path(f).suffix in (".vhdx", ".avhdx")]


def test_file_names_keep_their_guid_when_cut() -> None:
    from ckpt.hyperv_export import export_file_name, export_folder_name

    disk = "\u00e9" * 100
    long = f"{disk}_0F8E3C1A-1B2C-4D5E-8F90-A1B2C3D4E5F6.avhdx"
    cut = export_file_name(long)
    assert len(cut.encode()) <= NAME_MAX
    assert cut.endswith("_0F8E3C1A-1B2C-4D5E-8F90-A1B2C3D4E5F6.avhdx")
    assert export_file_name(f"{disk}.vhdx").endswith(".vhdx")
    assert export_file_name("D.vhdx") == "D.vhdx"
    from uuid import UUID

    vm = UUID(int=0xABCDEF12 << 96)
    assert export_folder_name("web01", vm) == "web01"
    assert export_folder_name("..", vm) == "vm~abcdef12"
    assert export_folder_name("Aux.local", vm) == "_Aux.local~abcdef12"


# ------------------------------------------------------------- tracebacks
def test_export_to_an_existing_file_is_a_clear_error(cli_store: Path, tmp_path: Path) -> None:
    _vm_with_content(cli_store, "web", tmp_path / "img.raw")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for target in (afile, afile / "below"):
        code, _, err = _export(cli_store, "web", "-o", str(target))
        assert code == 14, err
        assert "is a file, not a directory" in err and "Traceback" not in err
    assert afile.read_text() == "x"


def test_export_makes_a_missing_output_directory_with_its_parents(
    cli_store: Path, tmp_path: Path
) -> None:
    """Chosen: like ``mkdir -p`` (docs/decisions/0009)."""
    _vm_with_content(cli_store, "web", tmp_path / "img.raw")
    code, data, err = _export(cli_store, "web", "-o", str(tmp_path / "x" / "y" / "z"))
    assert code == 0, err
    assert all(Path(f).is_file() for f in data["files"])
