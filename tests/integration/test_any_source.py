"""Issue 13, goal 5: any disk source.

A capture reads a regular file, a block device (a loop device made here), a
FIFO, standard input (``--disk D=-``, from a file and from a pipe) and, in the
Python API, any readable binary stream, with or without a declared size. A
pipe is read once, in order; what cannot be read rightly (a stream shorter than
its size, a pipe that is not whole sectors, changed extents of a pipe, a pipe
that would have to be read twice) is refused and nothing is recorded. Every
capture restores byte for byte.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import cli_support
import pytest

from ckpt import (
    CaptureOutdated,
    DiskFormat,
    FileRole,
    InvalidValue,
    SourceChanged,
    Store,
    StreamSource,
)

CKPT = Path(sys.executable).with_name("ckpt")
BLOCK = 4096
# more than two 4 MiB read buffers, and a last block that is not whole (2 sectors of it)
SIZE = 9 * (1 << 20) + 1024
FIXED_VHD_FOOTER = b"conectix".ljust(512, b"\x01")  # the cookie starts a VHD's 512-byte footer


def _image(size: int = SIZE, salt: bytes = b"") -> bytes:
    """Unique blocks, zero blocks and repeated blocks: each path a capture takes."""
    out = bytearray(size)
    for i in range(0, size // BLOCK + 1):
        if i % 5 == 3:
            continue  # a zero block
        block = (b"block %d %s" % (i % 7 if i % 11 == 0 else i, salt)).ljust(BLOCK, b"\xa5")
        out[i * BLOCK : (i + 1) * BLOCK] = block[: max(0, min(BLOCK, size - i * BLOCK))]
    return bytes(out[:size])


class CLI(cli_support.CLI):
    def restored(self, point: str, out: Path, disk: str = "v") -> bytes:
        self.ok("restore", "v", point, "--disk", disk, "-o", out)
        return out.read_bytes()

    def points(self) -> int:
        return len(json.loads(self.ok("log", "--json")))


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    c = CLI(tmp_path / "S")
    c.ok("init")
    c.ok("vm", "add", "v")
    return c


def _subprocess(store: Path, *args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(CKPT), "--store", str(store), *args], capture_output=True, timeout=120, **kw
    )


# ---------------------------------------------------------------- block devices
@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A loop device over a file of our own (``losetup -f --show``), detached after."""
    if os.geteuid() != 0:
        pytest.skip("a loop device needs root (losetup)")
    losetup = shutil.which("losetup")
    if losetup is None:
        pytest.skip("losetup is not installed")
    backing = tmp_path / "backing.img"
    backing.write_bytes(_image())
    made = subprocess.run(
        [losetup, "-f", "--show", str(backing)], capture_output=True, text=True, timeout=60
    )
    if made.returncode != 0:
        pytest.skip(f"losetup could not attach a loop device here: {made.stderr.strip()}")
    device = Path(made.stdout.strip())
    try:
        assert stat.S_ISBLK(device.stat().st_mode)
        yield device, backing
    finally:
        subprocess.run([losetup, "-d", str(device)], check=True, timeout=60)


def test_a_block_device_is_sized_by_its_end_and_restores_byte_for_byte(
    cli: CLI, tmp_path: Path, loop_device: tuple[Path, Path]
) -> None:
    device, backing = loop_device
    assert os.stat(device).st_size == 0  # what fstat says: the 0-byte disk of issue 13
    cli.ok("checkpoint", "create", "v", "dev", "--disk", f"v={device}")
    assert cli.restored("dev", tmp_path / "dev.raw") == backing.read_bytes()
    listed = json.loads(cli.ok("checkpoint", "list", "v", "--json"))
    assert len(listed) == 1
    # a block written through the backing file: the device's node keeps its mtime,
    # and the next capture, a full scan, records that block and nothing else
    changed = bytearray(backing.read_bytes())
    changed[5 * BLOCK : 6 * BLOCK] = os.urandom(BLOCK)
    with backing.open("r+b") as f:
        f.seek(5 * BLOCK)
        f.write(changed[5 * BLOCK : 6 * BLOCK])
        f.flush()
        os.fsync(f.fileno())
    subprocess.run(["blockdev", "--flushbufs", str(device)], check=False, timeout=60)
    cli.ok("sync", "v", "--disk", f"v={device}", "--name", "after")
    assert cli.restored("after", tmp_path / "after.raw") == bytes(changed)
    extents = tmp_path / "cbt"
    extents.write_text(f"{5 * BLOCK} {BLOCK}\n")
    cli.ok(
        "sync", "v", "--disk", f"v={device}", "--changed-blocks", f"v={extents}", "--name", "cbt"
    )
    assert cli.restored("cbt", tmp_path / "cbt.raw") == bytes(changed)


def test_import_disk_reads_a_block_device(
    cli: CLI, tmp_path: Path, loop_device: tuple[Path, Path]
) -> None:
    device, backing = loop_device
    cli.ok("import", "disk", "v", "v", device)
    cli.ok("sync", "v", "--disk", f"v={backing}", "--name", "same")
    assert cli.restored("same", tmp_path / "same.raw") == backing.read_bytes()


# ------------------------------------------------------------------- FIFOs
def _feed(fifo: Path, data: bytes) -> threading.Thread:
    """A writer thread: opens the FIFO (waiting for its reader) and writes ``data``."""

    def write() -> None:
        with fifo.open("wb") as f:
            f.write(data)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_a_fifo_fed_by_a_thread_is_read_once_in_order(cli: CLI, tmp_path: Path) -> None:
    data = _image()
    fifo = tmp_path / "disk.fifo"
    os.mkfifo(fifo)
    writer = _feed(fifo, data)
    cli.ok("checkpoint", "create", "v", "fifo", "--disk", f"v={fifo}")
    writer.join(10)
    assert cli.restored("fifo", tmp_path / "fifo.raw") == data
    # a second capture through the FIFO diffs against the first: one changed block
    changed = data[:BLOCK] + b"\x01" * BLOCK + data[2 * BLOCK :]
    writer = _feed(fifo, changed)
    out = json.loads(cli.ok("sync", "v", "--disk", f"v={fifo}", "--name", "next", "--json"))
    writer.join(10)
    assert out["name"] == "next"
    assert cli.restored("next", tmp_path / "next.raw") == changed


def test_memory_and_a_state_file_can_come_through_fifos(cli: CLI, tmp_path: Path) -> None:
    cli.ok("vm", "add", "w", "--config-version", "9.0", "--checkpoint-type", "standard")
    cli.ok("vm", "start", "w")
    memory, config = tmp_path / "mem.fifo", tmp_path / "cfg.fifo"
    os.mkfifo(memory)
    os.mkfifo(config)
    ram, vmcx = _image(3 * (1 << 20) + 77, b"ram"), b"<config/>" * 100
    writers = [_feed(memory, ram), _feed(config, vmcx)]
    cli.ok("checkpoint", "create", "w", "s", "--memory", memory, "--config", config)
    for w in writers:
        w.join(10)
    cli.ok("restore", "w", "s", "--memory", "-o", tmp_path / "ram.bin")
    assert (tmp_path / "ram.bin").read_bytes() == ram


def test_import_disk_of_a_fifo_is_refused_without_waiting_for_a_writer(
    cli: CLI, tmp_path: Path
) -> None:
    fifo = tmp_path / "pipe.raw"
    os.mkfifo(fifo)
    err = cli.fails(14, "import", "disk", "v", "v", fifo)
    assert "is a pipe" in err and "import disk` needs a file or a block device" in err


# ------------------------------------------------------ standard input (-)
@pytest.fixture
def store(tmp_path: Path) -> Path:
    where = tmp_path / "S"
    for args in (["init"], ["vm", "add", "v"]):
        assert _subprocess(where, *args).returncode == 0
    return where


@pytest.mark.slow
def test_disk_dash_reads_standard_input_from_a_file_and_from_a_pipe(
    store: Path, tmp_path: Path
) -> None:
    data = _image()
    image = tmp_path / "img.raw"
    image.write_bytes(data)
    with image.open("rb") as f:  # `ckpt ... < img.raw`: a file, read like one
        done = _subprocess(store, "checkpoint", "create", "v", "file", "--disk", "v=-", stdin=f)
    assert done.returncode == 0, done.stderr
    piped = subprocess.run(  # `cat img.raw | ckpt ...`
        f"cat {image} | {CKPT} --store {store} checkpoint create v piped --disk v=-",
        shell=True,
        capture_output=True,
        timeout=120,
    )
    assert piped.returncode == 0, piped.stderr
    done = _subprocess(store, "sync", "v", "--disk", "v=/dev/stdin", "--name", "st", input=data)
    assert done.returncode == 0, done.stderr
    for point in ("file", "piped", "st"):
        out = tmp_path / f"{point}.raw"
        assert (
            _subprocess(store, "restore", "v", point, "--disk", "v", "-o", str(out)).returncode == 0
        )
        assert out.read_bytes() == data, point


@pytest.mark.slow
def test_what_a_pipe_cannot_give_is_refused_and_nothing_recorded(
    store: Path, tmp_path: Path
) -> None:
    extents = tmp_path / "cbt"
    extents.write_text("0 4096\n")
    cases = [
        # (arguments, stdin, words of the message)
        (["--disk", "v=-"], _image()[: 3 * BLOCK + 100], "not a whole number of 512-byte sectors"),
        (["--disk", "v=-"], b"", "delivered no bytes"),
        (["--disk", "v=-", "--changed-blocks", f"v={extents}"], _image(), "is read once, in order"),
        (["--disk", "v=-", "--memory", "-"], _image(), "it can be read once"),
        (["--disk", "v=-"], b"vhdxfile" + bytes(BLOCK - 8), "is a VHDX file"),
        # a fixed VHD: raw sectors, then its footer, known only at the end of the pipe
        (["--disk", "v=-"], _image()[: 3 * BLOCK] + FIXED_VHD_FOOTER, "is a VHD file"),
    ]
    for args, data, words in cases:
        done = _subprocess(store, "checkpoint", "create", "v", "x", *args, input=data)
        assert done.returncode == 14, (args, done.stderr)
        assert words.encode() in done.stderr, done.stderr
        assert done.stderr.count(b"\n") == 1 and b"Traceback" not in done.stderr
    listed = _subprocess(store, "checkpoint", "list", "v", "--json")
    assert json.loads(listed.stdout) == []


# --------------------------------------------------------------- Python API
class Pipe(io.RawIOBase):
    """A stream that cannot seek and has no descriptor, handing out small pieces."""

    def __init__(self, data: bytes, piece: int = 65536) -> None:
        self.data, self.pos, self.piece = data, 0, piece
        self.on_end: list[object] = []

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), self.piece, len(self.data) - self.pos)
        buf[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        if n == 0:
            for call in self.on_end:
                call()  # type: ignore[operator]
            self.on_end.clear()
        return n


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Store]:
    with Store.init(tmp_path / "api", actor="tester") as s:
        s.register_vm("v", [("Boot", DiskFormat.VHDX)])
        yield s


def _restore(store: Store, point: str) -> bytes:
    out = io.BytesIO()
    store.restore_disk("v", point, "Boot", out)
    return out.getvalue()


def test_the_api_takes_bytesio_pipes_and_sizes(api: Store, tmp_path: Path) -> None:
    data = _image()
    api.create_checkpoint("v", "bytesio", disks={"Boot": io.BytesIO(data)})
    assert _restore(api, "bytesio") == data
    api.create_checkpoint("v", "sized", disks={"Boot": StreamSource(io.BytesIO(data), size=8192)})
    assert _restore(api, "sized") == data[:8192]
    api.sync("v", {"Boot": Pipe(data)}, "pipe")
    assert _restore(api, "pipe") == data
    # a declared size reads that many bytes and no more: the rest stays in the stream
    stream = Pipe(data + b"trailer")
    api.sync("v", {"Boot": StreamSource(stream, size=len(data))}, "pipe-sized")
    assert _restore(api, "pipe-sized") == data and stream.read() == b"trailer"
    with (tmp_path / "img").open("wb+") as f:  # a real file object: read like a file
        f.write(data)
        api.create_checkpoint("v", "fileobj", disks={"Boot": f}, files={})
        assert not f.closed  # the caller's stream is left open
    assert _restore(api, "fileobj") == data
    r, w = os.pipe()
    threading.Thread(target=lambda: (os.write(w, data[: 1 << 20]), os.close(w))).start()
    with os.fdopen(r, "rb") as piped:
        api.sync("v", {"Boot": piped}, "os-pipe")
    assert _restore(api, "os-pipe") == data[: 1 << 20]


def test_a_stream_that_ends_before_its_size_records_nothing(api: Store) -> None:
    data = _image(1 << 20)
    before = len(api.checkpoints("v"))
    for stream in (io.BytesIO(data), Pipe(data)):
        with pytest.raises(InvalidValue) as caught:
            api.create_checkpoint(
                "v", "short", disks={"Boot": StreamSource(stream, size=len(data) + BLOCK)}
            )
        assert "before its declared size" in str(caught.value) or "fewer than" in str(caught.value)
        assert "nothing was recorded" in str(caught.value)
    with pytest.raises(SourceChanged):
        api.sync("v", {"Boot": StreamSource(Pipe(data), size=2 * len(data))})
    assert len(api.checkpoints("v")) == before


def test_the_api_refuses_a_stream_twice_and_extents_of_a_pipe(api: Store) -> None:
    api.register_vm("w", [("A", DiskFormat.VHDX), ("B", DiskFormat.VHDX)])
    shared = Pipe(_image(1 << 16))
    with pytest.raises(InvalidValue, match="a stream is read once"):
        api.sync("w", {"A": shared, "B": StreamSource(shared)})
    with pytest.raises(InvalidValue, match="is read once, in order"):
        api.sync("v", {"Boot": Pipe(_image(1 << 16))}, changed_blocks={"Boot": [(0, 4096)]})
    with pytest.raises(InvalidValue, match="a stream is read once"):
        api.create_checkpoint("v", disks={"Boot": shared}, files={FileRole.MEMORY: shared})


def test_a_pipe_whose_disk_moved_meanwhile_is_refused_not_read_again(
    api: Store, tmp_path: Path
) -> None:
    """The capture runs before the commit; when another writer moved the disk's
    layer in between, a file is read again, a pipe cannot be: refused."""
    other = Store.open(tmp_path / "api", actor="other")
    image = tmp_path / "other.raw"
    image.write_bytes(_image(1 << 16, b"other"))
    pipe = Pipe(_image(1 << 16))
    pipe.on_end.append(lambda: other.sync("v", {"Boot": image}, "meanwhile"))
    try:
        with pytest.raises(CaptureOutdated, match="one-shot source"):
            api.create_checkpoint("v", "late", disks={"Boot": pipe})
    finally:
        other.close()
    assert [c.name for c in api.checkpoints("v")] == []


def test_a_socket_feeds_an_encrypted_store(tmp_path: Path) -> None:
    """A socket's ``makefile('rb')``, read once, with the keyed ids of an encrypted store."""
    data = _image(5 * (1 << 20))
    near, far = socket.socketpair()

    def send() -> None:
        with far:
            far.sendall(data)

    threading.Thread(target=send, daemon=True).start()
    with Store.init(tmp_path / "enc", encrypt=True, key=os.urandom(32)) as s, near:
        s.register_vm("v", [("Boot", DiskFormat.VHDX)])
        with near.makefile("rb") as stream:
            s.sync("v", {"Boot": stream}, "socket")
        assert _restore(s, "socket") == data
        assert s.verify().ok


@pytest.mark.parametrize("footer", [512, 511])
def test_a_fixed_vhd_through_a_pipe_is_refused_after_its_end_unless_raw(
    tmp_path: Path, footer: int
) -> None:
    """A fixed VHD says what it is only in its last 512 (or, before Virtual PC 2004,
    511) bytes: a pipe shows them after its end, and the capture is refused then,
    with nothing recorded; `--format raw` (raw=True) takes the bytes as they are."""
    data = _image()[: 3 * BLOCK]
    data += bytes(512 - footer) + FIXED_VHD_FOOTER[:footer]  # whole sectors either way
    with Store.init(tmp_path / "s", actor="t") as store:
        store.register_vm("v", [("v", DiskFormat.VHDX)])
        with pytest.raises(InvalidValue, match="is a VHD file"):
            store.create_checkpoint("v", "x", disks={"v": StreamSource(Pipe(data))})
        assert store.checkpoints("v") == []
        store.create_checkpoint("v", "x", disks={"v": StreamSource(Pipe(data))}, raw=True)
        out = io.BytesIO()
        store.restore_disk("v", "x", "v", out)
        assert out.getvalue() == data
