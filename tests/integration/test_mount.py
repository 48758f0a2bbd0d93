"""``ckpt mount DIR``: the store through the kernel's FUSE, read with tools no one here wrote.

Each mount runs ``ckpt mount`` in a process of its own, as a user would; the
files are read with ``cmp`` and ``qemu-img info`` and compared with ``ckpt
restore``'s output; every mount ends with a signal (or ``fusermount -u``) and
must leave no mount behind. Skipped, with the reason, where FUSE cannot be used
(no /dev/fuse, no libfuse).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cli_support import CLI

from ckpt import CheckpointType, DiskFormat, OutputFailed, Store
from ckpt.domain import FileRole
from ckpt.exit_codes import exit_code

SIZE = 8 << 20


def _fuse_reason() -> str | None:
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return f"/dev/fuse cannot be opened: {e.strerror}"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as e:  # OSError: mfusepy found no libfuse
        return f"mfusepy cannot load libfuse: {e}"
    return None


needs_fuse = pytest.mark.skipif(_fuse_reason() is not None, reason=str(_fuse_reason()))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, dict[str, bytes]]]:
    """A store with holes, memory of odd size, state files, a name with '/', two
    checkpoints of one name, a backup point and a checkpoint deleted since."""
    root = tmp_path_factory.mktemp("mount")
    rng = random.Random(15)
    disk = bytearray(SIZE)
    disk[: 1 << 20] = rng.randbytes(1 << 20)
    disk[5 << 20 : (5 << 20) + 12288] = rng.randbytes(12288)
    data = {"disk": bytes(disk), "memory": rng.randbytes(70001)}
    for name, content in [("d", data["disk"]), ("m", data["memory"]), ("c", b"<vmcx>")]:
        (root / name).write_bytes(content)
    with Store.init(root / "s", actor="t") as s:
        s.register_vm("VM", [("D", DiskFormat.VHDX)], "9.0", CheckpointType.STANDARD)
        s.start_vm("VM")
        s.create_checkpoint(
            "VM", "a/b", disks={"D": root / "d"},
            files={FileRole.MEMORY: root / "m", FileRole.CONFIG: root / "c"},
        )  # fmt: skip
        s.create_checkpoint("VM", "twin", disks={"D": root / "d"})
        s.create_checkpoint("VM", "twin", disks={"D": root / "d"})
        disk[100:200] = b"x" * 100
        data["gone"] = bytes(disk)
        (root / "d").write_bytes(data["gone"])
        s.create_checkpoint("VM", "gone", disks={"D": root / "d"})
        before = s.log()[-1].position
        s.delete_checkpoint("VM", "gone")
        s.sync("VM", {"D": root / "d"}, name="nightly")
    yield root, before, data


@contextmanager
def mounted(store: Path, where: Path, *args: str, stop: str = "SIGINT") -> Iterator[Path]:
    where.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckpt", "--store", str(store), "mount", str(where), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=where.parent,  # not the work tree: its bare ckpt/ folder is not the package
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(where):
            if proc.poll() is not None or time.monotonic() > deadline:
                out, err = proc.communicate(timeout=5) if proc.poll() is not None else ("", "")
                pytest.fail(f"ckpt mount did not mount (exit {proc.returncode}): {out}{err}")
            time.sleep(0.05)
        yield where
    finally:
        if proc.poll() is None:
            if stop == "fusermount":
                subprocess.run(["fusermount", "-u", str(where)], check=True)
            else:
                proc.send_signal(getattr(signal, stop))
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "unmounted" in out
    assert not os.path.ismount(where)


def _point(vm_dir: Path, prefix: str) -> Path:
    (found,) = [p for p in vm_dir.iterdir() if p.name.startswith(prefix)]
    return found


@needs_fuse
def test_files_read_with_cmp_and_qemu_img_equal_restore(
    world: tuple[Path, int, dict[str, bytes]], tmp_path: Path
) -> None:
    root, _, data = world
    cli = CLI(root / "s")
    cli.ok("restore", "VM", "nightly", "--disk", "D", "-o", tmp_path / "nightly.raw")
    cli.ok("restore", "VM", "a/b", "--memory", "-o", tmp_path / "memory.bin")
    cli.ok("restore", "VM", "a/b", "--state-files", "-o", tmp_path / "state")
    with mounted(root / "s", tmp_path / "mnt") as mnt:
        vm = mnt / "VM"
        names = sorted(p.name for p in vm.iterdir())
        assert names[0] == "Now" and "nightly" in names and "a%2Fb" in names
        assert sum(n.startswith("twin [") for n in names) == 2  # a clash: both show their ids
        nightly = vm / "nightly" / "D.raw"
        assert nightly.stat().st_size == SIZE
        subprocess.run(["cmp", nightly, tmp_path / "nightly.raw"], check=True)
        subprocess.run(["cmp", vm / "Now" / "D.raw", tmp_path / "nightly.raw"], check=True)
        point = vm / "a%2Fb"
        assert (point / "D.raw").read_bytes() == data["disk"]
        assert (point / "memory.bin").stat().st_size == 70001
        subprocess.run(["cmp", point / "memory.bin", tmp_path / "memory.bin"], check=True)
        (config,) = (tmp_path / "state").rglob("*.vmcx")
        mounted_config = point / config.relative_to(tmp_path / "state")
        assert mounted_config.read_bytes() == config.read_bytes() == b"<vmcx>"
        with pytest.raises(OSError) as refused:
            (point / "D.raw").open("r+b")
        assert refused.value.errno in (errno.EROFS, errno.EACCES)
        assert not (vm / "gone").exists()  # deleted: only --at shows it
        if shutil.which("qemu-img"):
            info = subprocess.run(
                ["qemu-img", "info", "--output=json", nightly],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            assert f'"virtual-size": {SIZE}' in info and '"format": "raw"' in info


@needs_fuse
def test_at_shows_a_deleted_checkpoint_and_sigterm_unmounts(
    world: tuple[Path, int, dict[str, bytes]], tmp_path: Path
) -> None:
    root, before, _ = world
    with mounted(root / "s", tmp_path / "mnt", "--at", str(before), "--vm", "VM", stop="SIGTERM"):
        gone = tmp_path / "mnt" / "VM" / "gone" / "D.raw"
        subprocess.run(["cmp", gone, root / "d"], check=True)
        assert not (tmp_path / "mnt" / "VM" / "nightly").exists()  # recorded after then


@needs_fuse
def test_fusermount_from_outside_ends_the_mount(
    world: tuple[Path, int, dict[str, bytes]], tmp_path: Path
) -> None:
    if shutil.which("fusermount") is None:
        pytest.skip("fusermount (Debian's fuse) is not installed")
    root, _, _ = world
    with mounted(root / "s", tmp_path / "mnt", stop="fusermount") as mnt:
        assert (mnt / "VM" / "Now" / "D.raw").stat().st_size == SIZE


def test_refusals_are_one_line_errors(
    world: tuple[Path, int, dict[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _, _ = world
    cli = CLI(root / "s")
    assert "does not exist" in cli.fails(14, "mount", tmp_path / "nowhere")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"")
    assert "is not empty" in cli.fails(14, "mount", tmp_path / "full")
    assert "not a directory" in cli.fails(14, "mount", tmp_path / "full" / "x")
    monkeypatch.setattr("ckpt.mount.DEV_FUSE", str(tmp_path / "no-fuse"))
    (tmp_path / "empty").mkdir()
    message = cli.fails(exit_code(OutputFailed("")), "mount", tmp_path / "empty")
    assert "FUSE is unavailable" in message and "no-fuse" in message
