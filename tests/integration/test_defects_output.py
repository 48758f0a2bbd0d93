"""Issue 11: where `restore -o` writes (devices, pipes, symlinks, hard links, modes),
and clear errors instead of tracebacks (a directory, a full disk, Ctrl-C)."""

from __future__ import annotations

import glob
import io
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cli_support
import pytest

CKPT = Path(sys.executable).with_name("ckpt")
ROOT = os.geteuid() == 0
MiB = 1 << 20
# Data, a run of zeros (a hole in a sparse file, written zeros on a device), data.
IMAGE = os.urandom(300 << 10) + bytes(700 << 10) + os.urandom(48 << 10)


class CLI(cli_support.CLI):
    def restore(self, output: str | Path, *extra: str) -> tuple[int, str, str]:
        return self("restore", "v", "a", "--disk", "d", "-o", str(output), *extra)


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    c = CLI(tmp_path / "store")
    c.ok("init")
    c.ok("vm", "add", "v", "--disk", "d")
    image = tmp_path / "image.raw"
    image.write_bytes(IMAGE)
    c.ok("checkpoint", "create", "v", "a", "--disk", f"d={image}")
    c.ok("checkpoint", "create", "v", "s", "--config", str(image))  # a state file
    return c


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".ckpt-partial")]


# ------------------------------------------------------------------ regular files
def test_an_existing_0600_file_keeps_its_mode(cli: CLI, tmp_path: Path) -> None:
    out = tmp_path / "secret.raw"
    out.write_bytes(b"old")
    out.chmod(0o600)
    assert cli.restore(out)[0] == 0
    assert out.read_bytes() == IMAGE
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


@pytest.mark.skipif(not ROOT, reason="only root may give a file to another owner")
def test_an_existing_file_keeps_its_owner_and_group_as_root(cli: CLI, tmp_path: Path) -> None:
    out = tmp_path / "owned.raw"
    out.write_bytes(b"old")
    os.chown(out, 1234, 5678)
    out.chmod(0o640)
    assert cli.restore(out)[0] == 0
    st = out.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o640)


def test_a_symlink_to_a_file_is_kept_and_its_target_replaced(cli: CLI, tmp_path: Path) -> None:
    target = tmp_path / "real.raw"
    target.write_bytes(b"old")
    target.chmod(0o600)
    link = tmp_path / "link.raw"
    link.symlink_to(target)
    assert cli.restore(link)[0] == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == IMAGE
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _leftovers(tmp_path) == []


def test_a_hard_linked_file_is_written_in_place(cli: CLI, tmp_path: Path) -> None:
    first = tmp_path / "first.raw"
    first.write_bytes(b"old" * 1000)
    second = tmp_path / "second.raw"
    os.link(first, second)
    inode = first.stat().st_ino
    assert cli.restore(second)[0] == 0
    assert first.stat().st_ino == second.stat().st_ino == inode
    assert first.read_bytes() == IMAGE


def test_a_hard_linked_file_keeps_its_bytes_when_the_checkpoint_is_unknown(
    cli: CLI, tmp_path: Path
) -> None:
    first = tmp_path / "first.raw"
    first.write_bytes(b"old")
    os.link(first, tmp_path / "second.raw")
    code, _, err = cli("restore", "v", "nope", "--disk", "d", "-o", str(first))
    assert code == 11, err
    assert first.read_bytes() == b"old"


def test_a_directory_is_refused_without_a_partial_file(cli: CLI, tmp_path: Path) -> None:
    target = tmp_path / "folder"
    target.mkdir()
    code, _, err = cli.restore(target)
    assert code == 14
    assert err == (
        f"ckpt: error: {str(target)!r} is a directory; give a file name, "
        "or --state-files -o DIR for state files\n"
    )
    assert _leftovers(tmp_path) == [] and list(target.iterdir()) == []


def test_state_files_into_an_existing_file_is_a_clear_error(cli: CLI, tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_bytes(b"keep")
    code, _, err = cli("restore", "v", "s", "--state-files", "-o", str(target))
    assert code == 14
    assert err.count("\n") == 1 and "is not a directory" in err and "-o DIR" in err
    assert target.read_bytes() == b"keep"


# ------------------------------------------------------------------ pipes and devices
def _read_all(fd: int, into: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as f:
        into.append(f.read())


def test_a_fifo_gets_every_byte_zeros_included(cli: CLI, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    code, _, err = cli.restore(fifo)
    reader.join(10)
    assert code == 0, err
    assert got == [IMAGE]
    assert stat.S_ISFIFO(fifo.stat().st_mode) and _leftovers(tmp_path) == []


@pytest.mark.parametrize("prefix", ["/dev/fd", "/proc/self/fd"])
def test_a_pipe_named_by_its_descriptor_gets_the_image(cli: CLI, prefix: str) -> None:
    """`-o >(md5sum)`: the shell passes /dev/fd/N, a link to "pipe:[inode]"."""
    r, w = os.pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(r, got), daemon=True)
    reader.start()
    try:
        code, _, err = cli.restore(f"{prefix}/{w}")
    finally:
        os.close(w)
    reader.join(10)
    assert code == 0, err
    assert got == [IMAGE]


def test_a_vhdx_into_a_pipe_is_refused(cli: CLI, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, _, err = cli.restore(fifo, "--format", "vhdx")
    assert code == 14 and "a VHDX is written out of order" in err


@pytest.fixture
def dev_null(tmp_path: Path) -> Path:
    """A private node of /dev/null's device (1, 3): a wrong restore replaces this
    node, not the system's /dev/null (as the original code did, as root)."""
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        node.write_bytes(b"x")  # a nodev mount refuses to open it
    except OSError as e:
        pytest.skip(f"cannot make a character device node here: {e.strerror}")
    return node


def test_a_character_device_stays_a_character_device(
    cli: CLI, tmp_path: Path, dev_null: Path
) -> None:
    link = tmp_path / "null-link"
    link.symlink_to(dev_null)
    for target in (dev_null, link):
        code, _, err = cli.restore(target)
        assert code == 0, err
        assert stat.S_ISCHR(os.stat(dev_null).st_mode)
    assert link.is_symlink()
    assert _leftovers(tmp_path) == []


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Attach a file of ``size`` bytes of 0xff as a loop device (skip where losetup
    is not allowed) and give a private node of it in tmp_path: a wrong restore
    replaces that node, never the system's /dev/loopN."""
    attached: list[str] = []

    def attach(size: int) -> Path:
        backing = tmp_path / f"loop{len(attached)}.img"
        backing.write_bytes(b"\xff" * size)  # old data: a hole would leave it showing
        try:
            done = subprocess.run(
                ["losetup", "-f", "--show", str(backing)],
                capture_output=True,
                text=True,
                timeout=20,
            )
        except (OSError, subprocess.TimeoutExpired):
            pytest.skip("losetup is not available")
        if done.returncode != 0:
            pytest.skip(f"losetup failed: {done.stderr.strip()}")
        attached.append(done.stdout.strip())
        node = tmp_path / f"blk{len(attached)}"
        try:
            os.mknod(node, stat.S_IFBLK | 0o600, os.stat(attached[-1]).st_rdev)
            node.open("rb").close()  # a nodev mount refuses to open it
        except OSError as e:
            pytest.skip(f"cannot make a block device node here: {e.strerror}")
        return node

    try:
        yield attach
    finally:
        for dev in attached:
            subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=20)


@pytest.mark.skipif(not ROOT, reason="loop devices need root")
def test_a_block_device_is_written_in_place_with_its_zeros(
    cli: CLI, tmp_path: Path, loop_device: Callable[[int], Path]
) -> None:
    dev = loop_device(2 * MiB)
    link = tmp_path / "lv"  # as /dev/vg/lv is a symlink to /dev/dm-N
    link.symlink_to(dev)
    code, _, err = cli.restore(link)
    assert code == 0, err
    assert link.is_symlink() and stat.S_ISBLK(os.stat(dev).st_mode)
    written = dev.read_bytes()
    assert len(written) == 2 * MiB  # not truncated
    assert written[: len(IMAGE)] == IMAGE  # the zero run is zeros, not the old 0xff
    assert written[len(IMAGE) :] == b"\xff" * (2 * MiB - len(IMAGE))
    assert _leftovers(tmp_path) == []


@pytest.mark.skipif(not ROOT, reason="loop devices need root")
def test_a_vhdx_is_written_into_a_block_device_without_truncating_it(
    cli: CLI, loop_device: Callable[[int], Path]
) -> None:
    from ckpt.storage.vhdx.reader import VhdxReader

    dev = loop_device(48 * MiB)  # 3 MiB of header, log and metadata, a 32 MiB block, BAT
    code, _, err = cli.restore(dev, "--format", "vhdx")
    assert code == 0, err
    assert stat.S_ISBLK(dev.stat().st_mode)
    with dev.open("rb") as f:
        reader = VhdxReader(f, str(dev))
        assert reader.virtual_size == len(IMAGE)
        assert reader.read(0, len(IMAGE)) == IMAGE


@pytest.mark.skipif(not ROOT, reason="loop devices need root")
def test_a_block_device_smaller_than_the_disk_is_refused(
    cli: CLI, loop_device: Callable[[int], Path]
) -> None:
    small = loop_device(512 << 10)  # the disk is 1,048 KiB
    code, _, err = cli.restore(small)
    assert code == 14
    assert "is a block device of 524,288 bytes, smaller than the 1,073,152 bytes" in err
    assert stat.S_ISBLK(small.stat().st_mode)
    assert small.read_bytes() == b"\xff" * (512 << 10)


# ------------------------------------------------------------------ a full disk
@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if not ROOT:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.fixture
def big_cli(tmp_path: Path) -> CLI:
    """A 2 MiB disk of random bytes: it cannot fit a 1 MiB tmpfs, holes or not."""
    c = CLI(tmp_path / "store")
    c.ok("init")
    c.ok("vm", "add", "v", "--disk", "d")
    image = tmp_path / "image.raw"
    image.write_bytes(os.urandom(2 * MiB))
    c.ok("checkpoint", "create", "v", "a", "--disk", f"d={image}")
    c.ok("checkpoint", "create", "v", "b", "--disk", f"d={image}", "--config", str(image))
    return c


@pytest.mark.parametrize("fmt", ["raw", "vhdx"])
def test_a_full_disk_is_one_line_exit_36_and_no_partial_file(
    big_cli: CLI, tiny_tmpfs: Path, fmt: str
) -> None:
    out = tiny_tmpfs / f"out.{fmt}"
    code, _, err = big_cli.restore(out)
    assert code == 36, err
    assert err == (
        f"ckpt: error: cannot write {str(out)!r}: No space left on device; "
        "the partial file was removed\n"
    )
    assert list(tiny_tmpfs.iterdir()) == []


def test_a_file_size_limit_is_one_line_exit_36_and_no_partial_file(
    cli: CLI, tmp_path: Path
) -> None:
    """EFBIG (`ulimit -f`), which needs no root: the same path as ENOSPC."""
    import resource

    def limit() -> None:  # the store's own files stay far below 512 KiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (512 << 10, 512 << 10))

    out = tmp_path / "out.raw"
    cmd = [str(CKPT), "--store", str(cli.store), "restore", "v", "a", "--disk", "d", "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit, timeout=60)
    assert done.returncode == 36, done.stderr
    assert done.stderr == (
        f"ckpt: error: cannot write {str(out)!r}: File too large; the partial file was removed\n"
    )
    assert not out.exists() and _leftovers(tmp_path) == []


def test_state_files_on_a_full_disk_is_exit_36_and_the_file_removed(
    big_cli: CLI, tiny_tmpfs: Path
) -> None:
    code, _, err = big_cli("restore", "v", "b", "--state-files", "-o", str(tiny_tmpfs / "s"))
    assert code == 36, err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert [p for p in tiny_tmpfs.rglob("*") if p.is_file()] == []


# ------------------------------------------------------------------ Ctrl-C
BIG = 192 * MiB  # ~0.3 s to restore, ~1 s to capture here: wide enough to land inside


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import random

    root = tmp_path_factory.mktemp("interrupt")
    (root / "big.raw").write_bytes(random.Random(11).randbytes(BIG))
    c = CLI(root / "store")
    c.ok("init")
    c.ok("vm", "add", "v", "--disk", "d")
    c.ok("checkpoint", "create", "v", "a", "--disk", f"d={root / 'big.raw'}")
    return root


def _interrupt(cmd: list[str], ready: Callable[[], bool]) -> subprocess.CompletedProcess[str]:
    """Start ``ckpt``, send SIGINT as soon as ``ready()`` holds, wait for it to end."""
    # SIGINT back to its default in the child: a suite started in the background
    # (`cmd &` without job control) inherits SIGINT ignored, and Python then keeps
    # ignoring it, as a background job should: the command ran to the end, exit 0.
    proc = subprocess.Popen(
        [str(CKPT), *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert proc.poll() is None, "the operation ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(cmd, proc.returncode, out.decode(), err.decode())


def _packs(store: Path) -> int:
    return len(glob.glob(str(store / "chunks" / "packs" / "*" / "*")))


def test_ctrl_c_during_restore_is_one_line_exit_130_and_no_partial_file(
    big_store: Path,
) -> None:
    out = big_store / "out.raw"
    partial = big_store / "out.raw.ckpt-partial"
    store = big_store / "store"

    def writing() -> bool:
        return partial.exists() and partial.stat().st_size > 0

    done = _interrupt(
        ["--store", str(store), "restore", "v", "a", "--disk", "d", "-o", str(out)], writing
    )
    assert (done.returncode, done.stderr) == (130, "ckpt: interrupted\n")
    assert not partial.exists() and not out.exists()
    assert subprocess.run([str(CKPT), "--store", str(store), "verify"]).returncode == 0


def test_ctrl_c_during_create_records_nothing_and_leaves_the_store_usable(
    big_store: Path,
) -> None:
    store = big_store / "store"
    image = big_store / "big2.raw"
    image.write_bytes(os.urandom(BIG))  # new content: the capture must write new packs
    before = _packs(store)
    cmd = ["--store", str(store), "checkpoint", "create", "v", "b", "--disk", f"d={image}"]
    done = _interrupt(cmd, lambda: _packs(store) > before)
    assert (done.returncode, done.stderr) == (130, "ckpt: interrupted\n")
    c = CLI(store)
    assert "b" not in [line.split()[1] for line in c.ok("checkpoint", "list", "v").splitlines()]
    assert c("verify")[0] == 0
    c.ok("checkpoint", "create", "v", "c")  # no lock or half-open writer left behind


def test_api_restore_into_a_failing_stream_is_output_failed(tmp_path: Path) -> None:
    """The Python API, like the CLI, turns a write error of the output into
    OutputFailed (it raised a raw OSError: issue 11, tracebacks)."""
    import errno

    import ckpt

    class Full(io.RawIOBase):
        name = "full.raw"

        def writable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return True

        def seek(self, offset: int, whence: int = 0) -> int:
            return 0

        def write(self, b: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    image = tmp_path / "d.raw"
    image.write_bytes(os.urandom(64 * 1024))
    with ckpt.Store.init(tmp_path / "s") as store:
        store.register_vm("v", [("Boot", ckpt.DiskFormat.VHDX)])
        store.create_checkpoint("v", "a", disks={"Boot": image})
        with pytest.raises(ckpt.OutputFailed, match=r"full\.raw.*No space left"):
            store.restore_disk("v", "a", "Boot", Full())  # type: ignore[arg-type]
