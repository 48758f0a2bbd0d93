"""A store on a small, real file system that fills up (issue 14, item 2).

Each test mounts a size-limited tmpfs of its own (root only; skipped, saying
why, where ``mount`` is refused) and unmounts it in a finalizer, even when the
test fails. The user-facing checks (exit code 37, the one-line message) run the
``ckpt`` command in a subprocess; the rest go through the API.

Terms: a *filler* is a file of zeros that takes all but ``leave`` bytes of the
file system's free space (tmpfs counts 4 KiB pages, so ``leave`` is rounded to
them); deleting it is "freeing space".
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import ckpt
from ckpt.storage.no_space import free_bytes

CKPT = Path(sys.executable).with_name("ckpt")
MiB = 1 << 20
# The pack that did not fit, or the index file of the one before it: the next
# pack's put runs beside it and may take the last space first.
NEEDED = re.compile(
    r"(\d+) bytes needed for '(packs/[0-9a-f]{2}/[0-9a-f]{32}\.pack|index/[0-9a-f]{32}\.idx)' "
    r"in (\S+) "
)
FREE = re.compile(r"; (\d+) bytes free there\)")


@pytest.fixture
def small_fs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A tmpfs of ``request.param`` MiB (default 40) at a fresh directory."""
    size = getattr(request, "param", 40)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}m,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {size} MiB tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def fill(mnt: Path, leave: int) -> Path:
    """A filler leaving ``leave`` bytes free on ``mnt`` (or none: 0)."""
    filler = mnt / "filler"
    free = free_bytes(mnt) or 0
    with open(filler, "ab") as f:
        want = max(0, free - leave)
        block = bytes(MiB)
        while want > 0:
            try:
                want -= f.write(block[: min(MiB, want)])
                f.flush()
            except OSError:
                break  # full: what was asked for, or as near as pages allow
    return filler


def cli(cwd: Path, *args: str | Path) -> tuple[int, str, str]:
    """``ckpt ARGS`` in a subprocess (run outside the work tree: its ckpt/ folder
    would shadow the installed package)."""
    done = subprocess.run([CKPT, *map(str, args)], capture_output=True, text=True, cwd=cwd)
    return done.returncode, done.stdout, done.stderr


def one_line_error(err: str) -> str:
    assert err.startswith("ckpt: error: no space left on the store's device: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def image(path: Path, size: int, seed: int) -> Path:
    """Incompressible bytes: every block is new to the store."""
    rng = __import__("random").Random(seed)
    path.write_bytes(rng.randbytes(size))
    return path


def state(store: Path) -> tuple[int, list[str], list[str]]:
    """What a failed command must leave as it was: the log's length, the tree,
    and the leases in the chunk storage."""
    with ckpt.Store.open(store) as s:
        log = s.log()
        tree = [e.name for e in s.tree("vm")]
    return len(log), tree, leases(store)


def leases(store: Path) -> list[str]:
    directory = store / "chunks" / "leases"
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def temp_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".*.tmp")]


def test_a_capture_that_fills_the_device_records_nothing_and_succeeds_once_space_is_freed(
    small_fs: Path, tmp_path: Path
) -> None:
    store = small_fs / "s"
    with ckpt.Store.init(store, actor="t") as s:
        s.register_vm("vm", [("d", ckpt.DiskFormat.VHDX)])
        s.create_checkpoint("vm", "first", disks={"d": io.BytesIO(os.urandom(MiB))})
    before = state(store)
    # 24 MiB of new blocks: a 16 MiB pack that fits, then an 8 MiB one that does not
    img = image(tmp_path / "disk.raw", 24 * MiB, seed=1)
    filler = fill(small_fs, 20 * MiB)
    free_before = free_bytes(small_fs) or 0

    code, out, err = cli(
        tmp_path, "--store", store, "checkpoint", "create", "vm", "cp", "--disk", f"d={img}"
    )

    assert code == 37, (code, out, err)
    message = one_line_error(err)
    needed = NEEDED.search(message)
    assert needed is not None, message
    assert needed[3] == str(store / "chunks")
    free = FREE.search(message)
    assert free is not None and int(needed[1]) > int(free[1]), message
    assert state(store) == before  # no event, the tree as it was, the lease released
    assert temp_files(small_fs) == []  # the failed pack's temporary file is gone
    with ckpt.Store.open(store) as s:
        assert s.verify().ok  # nothing referenced is partial or missing

    code, out, err = cli(tmp_path, "--store", store, "gc", "--grace", "0")
    assert code == 0, err
    assert (free_bytes(small_fs) or 0) >= free_before - MiB  # the 16 MiB pack is given back

    filler.unlink()
    code, out, err = cli(
        tmp_path, "--store", store, "checkpoint", "create", "vm", "cp", "--disk", f"d={img}"
    )
    assert code == 0, err
    code, out, err = cli(tmp_path, "--store", store, "verify")
    assert code == 0, (out, err)
    restored = tmp_path / "restored.raw"
    code, out, err = cli(
        tmp_path, "--store", store, "restore", "vm", "cp", "--disk", "d", "-o", restored
    )
    assert code == 0, err
    assert restored.read_bytes() == img.read_bytes()


def test_a_device_that_fills_just_before_the_event_commit_records_nothing(
    small_fs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunks fit, SQLite's commit does not (SQLITE_FULL): exit 37, no event,
    the store verifies clean, and the same capture succeeds with room again."""
    from ckpt.cli import run
    from ckpt.unit_of_work import UnitOfWork

    store = small_fs / "s"
    with ckpt.Store.init(store, actor="t") as s:
        s.register_vm("vm", [("d", ckpt.DiskFormat.VHDX)])
    before = state(store)
    img = image(tmp_path / "disk.raw", 2 * MiB, seed=2)
    save = UnitOfWork.save
    fillers: list[Path] = []

    def full_at_commit(self: UnitOfWork, vm: ckpt.VirtualMachine) -> None:
        fillers.append(fill(small_fs, 0))  # the packs are durable; now nothing is left
        save(self, vm)

    monkeypatch.setattr(UnitOfWork, "save", full_at_commit)
    out, err = io.StringIO(), io.StringIO()
    code = run(
        ["--store", str(store), "checkpoint", "create", "vm", "cp", "--disk", f"d={img}"], out, err
    )

    assert fillers and code == 37, (code, err.getvalue())
    message = one_line_error(err.getvalue())
    assert f"the event log {store / 'events.sqlite'}" in message, message
    assert "database or disk is full" in message, message
    monkeypatch.setattr(UnitOfWork, "save", save)
    fillers[0].unlink()
    assert state(store) == before
    with ckpt.Store.open(store) as s:
        assert s.verify().ok
        assert s.verify_log().ok
        s.create_checkpoint("vm", "cp", disks={"d": img})
        assert s.verify().ok
        got = io.BytesIO()
        s.restore_disk("vm", "cp", "d", got)
        assert got.getvalue() == img.read_bytes()


@pytest.mark.parametrize("small_fs", [24], indirect=True)
def test_two_captures_racing_for_the_last_space_leave_a_clean_store(
    small_fs: Path, tmp_path: Path
) -> None:
    """Both fail, or one succeeds; never both (they do not fit), and the store stays clean."""
    store = small_fs / "s"
    with ckpt.Store.init(store, actor="t") as s:
        for vm in ("a", "b"):
            s.register_vm(vm, [("d", ckpt.DiskFormat.VHDX)])
    imgs = {vm: image(tmp_path / f"{vm}.raw", 10 * MiB, seed=i) for i, vm in enumerate("ab")}
    fill(small_fs, 14 * MiB)
    results: dict[str, tuple[int, str, str]] = {}

    def capture(vm: str) -> None:
        results[vm] = cli(
            tmp_path, "--store", store, "checkpoint", "create", vm, "cp", "--disk", f"d={imgs[vm]}"
        )

    threads = [threading.Thread(target=capture, args=(vm,)) for vm in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    codes = sorted(r[0] for r in results.values())
    assert codes in ([0, 37], [37, 37]), results
    for code, _, err in results.values():
        if code == 37:
            one_line_error(err)
    assert leases(store) == []
    assert temp_files(small_fs) == []
    with ckpt.Store.open(store) as s:
        assert s.verify().ok
        s.gc(grace_seconds=0)
        assert s.verify().ok
        for vm, (code, _, _) in results.items():
            names = [e.name for e in s.tree(vm)]
            assert names == (["cp"] if code == 0 else []), (vm, names)
            if code == 0:
                got = io.BytesIO()
                s.restore_disk(vm, "cp", "d", got)
                assert got.getvalue() == imgs[vm].read_bytes()


@pytest.mark.parametrize("small_fs", [8], indirect=True)
def test_init_on_a_full_device_says_so_and_works_once_space_is_freed(
    small_fs: Path, tmp_path: Path
) -> None:
    filler = fill(small_fs, 0)
    code, out, err = cli(tmp_path, "--store", small_fs / "s", "init")
    assert code == 37, (code, out, err)
    one_line_error(err)
    assert not (small_fs / "s").exists()  # nothing half made that the next init would refuse
    filler.unlink()
    code, out, err = cli(tmp_path, "--store", small_fs / "s", "init")
    assert code == 0, err


def test_read_commands_work_when_the_chunk_index_cache_cannot_be_written(
    small_fs: Path, tmp_path: Path
) -> None:
    """The cache (chunks/.cache) is only a cache: with no room to rebuild it on
    the store's device, a restore builds one in the temporary directory."""
    store = small_fs / "s"
    img = image(tmp_path / "disk.raw", 8 * MiB, seed=3)
    with ckpt.Store.init(store, actor="t") as s:
        s.register_vm("vm", [("d", ckpt.DiskFormat.VHDX)])
        s.create_checkpoint("vm", "cp", disks={"d": img})
    cache = store / "chunks" / ".cache"
    for p in sorted(cache.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    # room for SQLite's 32 KiB -shm file, none for 2,048 entries' runs (~115 KB)
    fill(small_fs, 40 << 10)
    restored = tmp_path / "restored.raw"

    code, _, err = cli(
        tmp_path, "--store", store, "restore", "vm", "cp", "--disk", "d", "-o", restored
    )

    assert code == 0, err
    assert restored.read_bytes() == img.read_bytes()
    assert temp_files(small_fs) == []
    assert not list(cache.rglob("*.run"))  # the store's cache was left as it was
