"""A store on read-only media: every read command works, every write command is
refused with one line and exit 38 before any work.

The store is built on a tmpfs, which is then remounted read-only (``mount -o
remount,ro``): the kernel refuses every write with EROFS, as for a CD, a
write-protected disk or a snapshot mounted ``ro``. Needs root and a kernel
that mounts tmpfs (CI runs as root); skipped with the reason otherwise. The
mount is removed by the fixture even when a test fails.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ckpt import DiskFormat, Store, StoreReadOnly
from ckpt.cli import run

ROOT = os.geteuid() == 0
SIZE = 192 * 1024


def _mount(mnt: Path) -> None:
    if not ROOT:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")


def _read_only(mnt: Path) -> None:
    done = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def media(tmp_path: Path) -> Iterator[Callable[[Callable[[Path], None]], Path]]:
    """``media(fill)``: a tmpfs, ``fill(mount point)``, then remounted read-only."""
    mnt = tmp_path / "media"
    mnt.mkdir()
    mounted = False

    def make(fill: Callable[[Path], None]) -> Path:
        nonlocal mounted
        _mount(mnt)
        mounted = True
        fill(mnt)
        _read_only(mnt)
        return mnt

    try:
        yield make
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], capture_output=True)


def _populate(store: Path, images: Path) -> dict[str, bytes]:
    """VM v: checkpoints one, two; a backup point; a deleted checkpoint."""
    rng = random.Random(38)
    out: dict[str, bytes] = {}
    images.mkdir(exist_ok=True)
    with Store.init(store, actor="t") as s:
        s.register_vm("v", [("D", DiskFormat.VHDX)])
        for name in ("one", "two", "gone"):
            img = images / f"{name}.img"
            img.write_bytes(rng.randbytes(SIZE))
            s.create_checkpoint("v", name, disks={"D": img})
            out[name] = img.read_bytes()
        s.delete_checkpoint("v", "gone")
        img = images / "point.img"
        img.write_bytes(rng.randbytes(SIZE))
        s.sync("v", {"D": img}, "point")
        out["point"] = img.read_bytes()
    return out


def _cli(store: Path, *args: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(["--store", str(store), *map(str, args)], out, err)
    return code, out.getvalue(), err.getvalue()


def _writable_state(store: Path) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*"))


@pytest.fixture
def ro_store(
    media: Callable[[Callable[[Path], None]], Path], tmp_path: Path
) -> tuple[Path, dict[str, bytes]]:
    images: dict[str, bytes] = {}

    def fill(mnt: Path) -> None:
        images.update(_populate(mnt / "s", tmp_path / "images"))

    return media(fill) / "s", images


def test_every_read_command_works_on_a_read_only_store(
    ro_store: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    store, images = ro_store
    before = _writable_state(store)
    for args in (
        ["vm", "list"],
        ["vm", "show", "v"],
        ["tree", "v"],
        ["chain", "v"],
        ["files", "v", "one"],
        ["log"],
        ["info"],
        ["stats"],
        ["verify"],
        ["verify", "--log"],
        ["checkpoint", "list", "v"],
    ):
        code, out, err = _cli(store, *args)
        assert code == 0, (args, err)
    code, out, _ = _cli(store, "vm", "list", "--json")
    assert [vm["name"] for vm in json.loads(out)] == ["v"]
    code, out, _ = _cli(store, "log", "--json")
    assert "checkpoint-deleted" in {e["operation"] for e in json.loads(out)}
    for name in ("one", "two", "point"):
        target = tmp_path / f"{name}.raw"
        code, _, err = _cli(store, "restore", "v", name, "--disk", "D", "-o", target)
        assert code == 0, err
        assert target.read_bytes() == images[name]
    code, out, _ = _cli(store, "log", "--operation", "checkpoint-deleted", "--json")
    before_delete = str(json.loads(out)[0]["position"] - 1)
    code, _, err = _cli(
        store, "restore", "v", "gone", "--disk", "D", "-o", tmp_path / "g", "--at", before_delete
    )
    assert code == 0, err
    assert (tmp_path / "g").read_bytes() == images["gone"]
    code, out, err = _cli(store, "export", "v", "one", "-o", tmp_path / "export")
    assert code == 0, err
    code, out, err = _cli(store, "copy", "--to-store", tmp_path / "copy")
    assert code == 0, err
    with Store.open(tmp_path / "copy") as copy:
        out_file = io.BytesIO()
        copy.restore_disk("v", "two", "D", out_file)
        assert out_file.getvalue() == images["two"]
    assert _writable_state(store) == before


WRITES = [
    ["vm", "add", "w"],
    ["vm", "set", "v", "--checkpoint-type", "standard"],
    ["vm", "start", "v"],
    ["vm", "remove", "v"],
    ["checkpoint", "create", "v", "three"],
    ["checkpoint", "apply", "v", "one"],
    ["checkpoint", "rename", "v", "one", "uno"],
    ["checkpoint", "delete", "v", "one"],
    ["checkpoint", "delete", "no-such-vm", "x"],  # refused before the VM is looked up
    ["sync", "v", "--disk", "D=IMAGE"],
    ["gc", "--grace", "0"],
    ["upgrade"],
    ["import", "disk", "v", "D", "IMAGE"],
    ["import", "hyperv", "IMAGE"],
    ["verify", "--repair"],
    ["projections", "rebuild"],
]


def test_every_write_command_is_refused_with_one_line(
    ro_store: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    store, _ = ro_store
    image = tmp_path / "images" / "one.img"
    before = _writable_state(store)
    for args in WRITES:
        args = [str(image) if a == "IMAGE" else a.replace("IMAGE", str(image)) for a in args]
        code, out, err = _cli(store, *args)
        command = (
            " ".join(args[:2])
            if args[0] in ("vm", "checkpoint", "import", "projections")
            else args[0]
        )
        if args[:2] == ["verify", "--repair"]:
            command = "verify --repair"
        assert code == 38, (args, err)
        assert err == (
            f"ckpt: error: the store at {store} is on a read-only file system: "
            f"{command} needs to write\n"
        ), args
        assert out == ""
    assert _writable_state(store) == before
    with Store.open(store) as s, pytest.raises(StoreReadOnly, match="checkpoint create"):
        s.create_checkpoint("v", "x", disks={"D": image})


def test_the_command_line_exit_code_and_message_in_a_process_of_its_own(
    ro_store: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    store, _ = ro_store
    cmd = [sys.executable, "-m", "ckpt", "--store", str(store)]
    done = subprocess.run([*cmd, "gc"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 38
    assert done.stderr == (
        f"ckpt: error: the store at {store} is on a read-only file system: gc needs to write\n"
    )
    done = subprocess.run([*cmd, "tree", "v"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "one" in done.stdout, done.stderr


def test_a_store_whose_read_models_lag_is_read_as_of_its_latest_event(
    media: Callable[[Callable[[Path], None]], Path], tmp_path: Path
) -> None:
    """A command killed between its save and its catch-up leaves the read models
    behind the log: on read-only media they are caught up in a private copy."""

    def fill(mnt: Path) -> None:
        _populate(mnt / "s", tmp_path / "images")
        db = sqlite3.connect(mnt / "s" / "events.sqlite")
        with db:  # the read models forget every event after the fifth
            db.execute("DELETE FROM ckpt_audit WHERE position > 5")
            db.execute("DELETE FROM ckpt_captures WHERE position > 5")
            db.execute(
                "UPDATE tracking SET notification_id = 5 "
                "WHERE application_name = 'ckpt-read-models'"
            )
        db.close()

    store = media(fill) / "s"
    code, out, err = _cli(store, "log", "--json")
    assert code == 0, err
    assert [e["position"] for e in json.loads(out)] == list(range(1, 11))
    code, out, err = _cli(store, "verify", "--log")
    assert code == 0 and "OK" in out, err


def test_committed_transactions_still_in_the_wal_file_are_read(
    media: Callable[[Callable[[Path], None]], Path], tmp_path: Path
) -> None:
    """A store copied (or snapshotted) while a reader held the log open keeps its
    last transactions in ``events.sqlite-wal``: they are read, not ignored."""
    build = tmp_path / "build"
    _populate(build, tmp_path / "images")
    reader = sqlite3.connect(build / "events.sqlite", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM stored_events").fetchone()  # holds back checkpoints
    with Store.open(build) as s:
        s.register_vm("late")
    assert (build / "events.sqlite-wal").stat().st_size > 0

    def fill(mnt: Path) -> None:
        shutil.copytree(build, mnt / "s", ignore=shutil.ignore_patterns("*-shm"))

    store = media(fill) / "s"
    reader.close()
    code, out, err = _cli(store, "vm", "list", "--json")
    assert code == 0, err
    assert sorted(vm["name"] for vm in json.loads(out)) == ["late", "v"]


@pytest.mark.skipif(ROOT, reason="root writes whatever the permission bits say")
def test_a_directory_this_user_cannot_write_takes_the_same_path(tmp_path: Path) -> None:
    store = tmp_path / "s"
    _populate(store, tmp_path / "images")
    for p in [store, *store.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        code, _, err = _cli(store, "gc")
        assert code == 38 and "not writable by this user" in err, err
        code, _, err = _cli(store, "tree", "v")
        assert code == 0, err
    finally:
        for p in [store, *store.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


def test_a_store_is_not_created_or_copied_onto_read_only_media(
    ro_store: tuple[Path, dict[str, bytes]],
) -> None:
    store, _ = ro_store
    media = store.parent
    code, _, err = _cli(media / "new", "init")
    assert code == 38, err
    assert err == (
        f"ckpt: error: cannot create a store at {media / 'new'}: "
        f"{media} is on a read-only file system\n"
    )
    code, _, err = _cli(store, "copy", "--to-store", media / "copy")
    assert code == 38 and "cannot copy the store" in err, err
