"""I/O errors of the store's media: a pack the disk cannot read (EIO) stops the
restore, export or copy that needs it with exit 39 naming the pack and the
checkpoints it affects; every other checkpoint still restores byte for byte,
and verify reports the pack as a finding and checks the rest.

The error is injected where the local chunk backend reads a file (its ``open``
returns a file whose reads fail with EIO, as a bad sector's read does), for one
pack only; ``test_kernel_eio`` adds a real kernel EIO when a FUSE mount can be
made.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ckpt.storage.chunks.backend as backend_module
from ckpt import DiskFormat, Store, StoreIOError
from ckpt.cli import run

SIZE = 256 * 1024


class _FailingReads:
    """A file whose reads fail as a bad sector's do."""

    def __init__(self, f: Any, error: int) -> None:
        self._f = f
        self._error = error

    def __enter__(self) -> _FailingReads:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def seek(self, *args: int) -> int:
        return int(self._f.seek(*args))

    def read(self, *args: int) -> bytes:
        raise OSError(self._error, os.strerror(self._error))


@pytest.fixture
def fail_reads(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path, int], None]:
    """``fail_reads(path, errno)``: reads of that file fail from now on."""
    failing: dict[str, int] = {}
    real = open

    def fake_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real(path, mode, *args, **kwargs)
        error = failing.get(os.fspath(path))
        return _FailingReads(f, error) if error and "r" in mode else f

    monkeypatch.setattr(backend_module, "open", fake_open, raising=False)
    return lambda path, error=errno.EIO: failing.__setitem__(str(path), error)


def _packs(root: Path) -> set[Path]:
    return set((root / "chunks" / "packs").rglob("*.pack"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Store, dict[str, bytes], dict[str, set[Path]]]]:
    """VM a: checkpoints a1 and a2 (a2 shares a1's second half); VM b: b1. Each
    capture's new packs are remembered."""
    rng = random.Random(14)
    s = Store.init(tmp_path / "s", actor="t")
    images: dict[str, bytes] = {}
    packs: dict[str, set[Path]] = {}
    s.register_vm("a", [("D", DiskFormat.VHDX)])
    s.register_vm("b", [("D", DiskFormat.VHDX)])
    shared = rng.randbytes(SIZE // 2)
    for vm, cp, data in (
        ("a", "a1", rng.randbytes(SIZE // 2) + shared),
        ("b", "b1", rng.randbytes(SIZE)),
        ("a", "a2", rng.randbytes(SIZE // 2) + shared),
    ):
        img = tmp_path / f"{cp}.img"
        img.write_bytes(data)
        before = _packs(s.path)
        s.create_checkpoint(vm, cp, disks={"D": img})
        packs[cp] = _packs(s.path) - before
        images[cp] = data
    try:
        yield s, images, packs
    finally:
        s.close()


def _restore(s: Store, vm: str, cp: str) -> bytes:
    out = io.BytesIO()
    s.restore_disk(vm, cp, "D", out)
    return out.getvalue()


def _cli(store: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(["--store", str(store), *args], out, err)
    return code, out.getvalue(), err.getvalue()


def test_an_unreadable_pack_names_itself_and_the_checkpoints_it_affects(
    store: tuple[Store, dict[str, bytes], dict[str, set[Path]]],
    fail_reads: Callable[[Path, int], None],
) -> None:
    s, images, packs = store
    (pack,) = packs["a1"]
    fail_reads(pack)
    with pytest.raises(StoreIOError) as caught:
        _restore(s, "a", "a1")
    message = str(caught.value)
    assert "I/O error" in message and str(pack) in message
    assert pack.name[:-5] in caught.value.name if caught.value.name else False
    # a2 reads a1's second half from that pack; b1 does not
    assert "VM a: a1 (disk D)" in message and "VM a: a2 (disk D)" in message
    assert "VM b" not in message
    assert _restore(s, "b", "b1") == images["b1"]


def test_other_checkpoints_restore_byte_for_byte_through_the_cli(
    store: tuple[Store, dict[str, bytes], dict[str, set[Path]]],
    fail_reads: Callable[[Path, int], None],
    tmp_path: Path,
) -> None:
    s, images, packs = store
    (pack,) = packs["b1"]
    s.close()
    fail_reads(pack)
    code, _, err = _cli(s.path, "restore", "b", "b1", "--disk", "D", "-o", str(tmp_path / "b1"))
    assert code == 39, err
    assert err.startswith("ckpt: error: I/O error") and err.count("\n") == 1
    assert str(pack) in err and "VM b: b1 (disk D)" in err and "Traceback" not in err
    assert not (tmp_path / "b1").exists()  # no partial output left
    for vm, cp in (("a", "a1"), ("a", "a2")):
        out_file = tmp_path / f"{cp}.raw"
        code, _, err = _cli(s.path, "restore", vm, cp, "--disk", "D", "-o", str(out_file))
        assert code == 0, err
        assert out_file.read_bytes() == images[cp]
    code, _, err = _cli(s.path, "export", "b", "b1", "-o", str(tmp_path / "exp"))
    assert code == 39 and str(pack) in err, err
    code, _, err = _cli(s.path, "copy", "--to-store", str(tmp_path / "copy"))
    assert code == 39 and str(pack) in err, err


def test_verify_reports_the_unreadable_pack_and_checks_the_others(
    store: tuple[Store, dict[str, bytes], dict[str, set[Path]]],
    fail_reads: Callable[[Path, int], None],
) -> None:
    s, _, packs = store
    (pack,) = packs["b1"]
    fail_reads(pack)
    report = s.verify()
    assert not report.ok
    (name,) = report.unreadable
    assert name.endswith(pack.name)
    assert report.checked > 0  # the other packs were read
    assert {b["reason"] for b in report.bad} == {report.unreadable[name]}
    users = {c for b in report.bad for x in b["affects"] for c in x["checkpoints"]}
    assert users == {"b1 (disk D)", "Now (disk D)"}
    s.close()
    code, out, err = _cli(s.path, "verify")
    assert code == 39, err
    assert f"unreadable {name}" in out and "needed by Now (disk D), b1 (disk D)" in out
    assert out.count("unreadable") == 1 and "Traceback" not in err
    code, out, _ = _cli(s.path, "verify", "--json")
    assert code == 39 and name in json.loads(out)["unreadable"]


@pytest.mark.parametrize("error", [errno.ENXIO, errno.EREMOTEIO, errno.EUCLEAN])
def test_other_media_errors_are_io_errors_too(
    store: tuple[Store, dict[str, bytes], dict[str, set[Path]]],
    fail_reads: Callable[[Path, int], None],
    error: int,
) -> None:
    s, _, packs = store
    (pack,) = packs["b1"]
    fail_reads(pack, error)
    with pytest.raises(StoreIOError, match=f"errno {error}"):
        _restore(s, "b", "b1")


# ------------------------------------------------------------- a real kernel EIO
FUSE_SERVER = '''
import errno, os, sys
from fuse import FUSE, FuseOSError, Operations

class FailingReads(Operations):
    """A read-only passthrough of a directory whose one file fails every read."""

    def __init__(self, root, bad):
        self.root, self.bad = root, bad

    def _path(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._path(path))
        except OSError as e:
            raise FuseOSError(e.errno)
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink",
                "st_size", "st_uid")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._path(path))]

    def open(self, path, flags):
        return os.open(self._path(path), flags)

    def read(self, path, size, offset, fh):
        if path.lstrip("/") == self.bad:
            raise FuseOSError(errno.EIO)
        return os.pread(fh, size, offset)

    def release(self, path, fh):
        os.close(fh)

FUSE(FailingReads(sys.argv[1], sys.argv[3]), sys.argv[2], foreground=True, ro=True,
     nothreads=True)
'''


@pytest.fixture
def fuse_mount(tmp_path: Path) -> Iterator[Callable[[Path, str], Path]]:
    """``fuse_mount(source, bad)``: ``source`` mounted read-only through FUSE, every
    read of its file ``bad`` (relative) failing with the kernel's EIO."""
    try:
        import fuse  # noqa: F401  (fusepy: pip fusepy; it loads libfuse2 at import)
    except (ImportError, OSError) as e:  # OSError: "Unable to find libfuse"
        pytest.skip(f"fusepy cannot be used (pip fusepy, apt libfuse2): {e}")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse: this kernel or container offers no FUSE")
    mnt = tmp_path / "fuse"
    mnt.mkdir()
    server = tmp_path / "fuse_server.py"
    server.write_text(FUSE_SERVER)
    procs: list[subprocess.Popen[bytes]] = []

    def mount(source: Path, bad: str) -> Path:
        proc = subprocess.Popen(
            [sys.executable, str(server), str(source), str(mnt), bad],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        deadline = time.monotonic() + 10
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                why = proc.stderr.read().decode().strip() if proc.stderr else ""
                pytest.skip(f"cannot mount a FUSE file system: {why or 'timed out'}")
            time.sleep(0.02)
        return mnt

    try:
        yield mount
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", str(mnt)], capture_output=True)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=10)


def test_kernel_eio(tmp_path: Path, fuse_mount: Callable[[Path, str], Path]) -> None:
    """The chunks on a FUSE mount whose one pack the kernel fails to read (EIO)."""
    rng = random.Random(39)
    chunks = tmp_path / "chunks"
    images = {}
    with Store.init(tmp_path / "s", chunks=chunks.as_uri(), actor="t") as s:
        for vm in ("a", "b"):
            s.register_vm(vm, [("D", DiskFormat.VHDX)])
            img = tmp_path / f"{vm}.img"
            img.write_bytes(rng.randbytes(SIZE))
            before = set(chunks.rglob("*.pack"))
            s.create_checkpoint(vm, f"{vm}1", disks={"D": img})
            images[vm] = img.read_bytes()
            if vm == "a":
                (bad,) = set(chunks.rglob("*.pack")) - before
    mnt = fuse_mount(chunks, str(bad.relative_to(chunks)))
    events = f"sqlite://{tmp_path / 's' / 'events.sqlite'}"
    with Store.open(None, events=events, chunks=mnt.as_uri()) as s:
        assert s.read_only == "on a read-only file system"
        with pytest.raises(StoreIOError, match="errno 5") as caught:
            _restore(s, "a", "a1")
        assert str(mnt / bad.relative_to(chunks)) in str(caught.value)
        assert "VM a: a1 (disk D)" in str(caught.value)
        assert _restore(s, "b", "b1") == images["b"]
        report = s.verify()
        assert list(report.unreadable) == [str(bad.relative_to(chunks))]


def test_kernel_eio_in_the_event_log(
    tmp_path: Path, fuse_mount: Callable[[Path, str], Path]
) -> None:
    """A store whose event log the disk cannot read: exit 39 naming the log, for
    a read command too (not "corrupt", not "unreachable")."""
    store = tmp_path / "s"
    with Store.init(store, actor="t") as s:
        s.register_vm("a", [("D", DiskFormat.VHDX)])
    mnt = fuse_mount(store, "events.sqlite")
    code, _, err = _cli(mnt, "vm", "list")
    assert code == 39, err
    assert err.startswith(f"ckpt: error: I/O error: cannot read the event log of {mnt}")
    assert "disk I/O error" in err and err.count("\n") == 1
