"""Issue 11, items 1, 4, 5 and 7: what a capture records when its source is unusual.

A disk that shrinks (or becomes empty) between captures, a source whose size
fstat cannot tell (device, pipe: refused by issue 11, read since issue 13),
a container file given where a raw image is
expected, and an image that changes while it is read. The exact reproductions
of the issue run the CLI in-process.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_support import CLI
from legacy_v1 import writing_v1

from ckpt import DiskFormat, InvalidValue, SourceChanged, Store
from ckpt.storage import manifest
from ckpt.storage.manifest import ZERO_ID, BlockMap
from ckpt.storage.vhdx.writer import write_vhdx

CKPT = Path(sys.executable).with_name("ckpt")
BLOCK = 4096


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    c = CLI(tmp_path / "S")
    c.ok("init")
    c.ok("vm", "add", "v")
    return c


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _restored(cli: CLI, point: str, tmp_path: Path, disk: str = "v") -> bytes:
    out = tmp_path / f"restored-{point}.raw"
    cli.ok("restore", "v", point, "--disk", disk, "-o", out)
    return out.read_bytes()


def _store_is_usable(cli: CLI) -> None:
    assert json.loads(cli.ok("verify", "--json"))["ok"]
    cli.ok("gc", "--grace", "0")
    assert json.loads(cli.ok("verify", "--json"))["ok"]


# ------------------------------------------------------------- item 1: resize
def test_a_disk_that_shrinks_restores_and_the_store_stays_usable(cli: CLI, tmp_path: Path) -> None:
    """The issue's reproduction: 8 KiB, then its first 4 KiB; restore used to exit 23."""
    two = _write(tmp_path / "two.raw", os.urandom(8192))
    one = _write(tmp_path / "one.raw", two.read_bytes()[:4096])
    cli.ok("checkpoint", "create", "v", "a", "--disk", f"v={two}")
    cli.ok("checkpoint", "create", "v", "b", "--disk", f"v={one}")
    assert _restored(cli, "b", tmp_path) == one.read_bytes()
    assert _restored(cli, "a", tmp_path) == two.read_bytes()
    cli.ok("checkpoint", "create", "v", "c", "--disk", f"v={two}")  # later captures still work
    assert _restored(cli, "c", tmp_path) == two.read_bytes()
    cli.ok("export", "v", "b", "-o", tmp_path / "exported")
    _store_is_usable(cli)


def test_an_empty_image_and_sync_record_a_zero_byte_disk(cli: CLI, tmp_path: Path) -> None:
    full = _write(tmp_path / "full.raw", os.urandom(3 * BLOCK))
    empty = _write(tmp_path / "empty.raw", b"")
    cli.ok("sync", "v", "--disk", f"v={full}", "--name", "full")
    cli.ok("sync", "v", "--disk", f"v={empty}", "--name", "empty")
    assert _restored(cli, "empty", tmp_path) == b""
    cli.ok("checkpoint", "create", "v", "empty-cp", "--disk", f"v={empty}")
    assert _restored(cli, "empty-cp", tmp_path) == b""
    cli.ok("sync", "v", "--disk", f"v={full}", "--name", "again")
    assert _restored(cli, "again", tmp_path) == full.read_bytes()
    assert _restored(cli, "full", tmp_path) == full.read_bytes()
    _store_is_usable(cli)


def test_a_disk_that_shrinks_then_grows_reads_zeros_in_the_regrown_part(
    cli: CLI, tmp_path: Path
) -> None:
    """With changed extents (none changed) the regrown block must still be zeros:
    a size change re-reads the blocks between the old and the new end."""
    data = os.urandom(2 * BLOCK)
    nothing = _write(tmp_path / "none.extents", b"")
    image = tmp_path / "d.raw"
    cli.ok("checkpoint", "create", "v", "big", "--disk", f"v={_write(image, data)}")
    cut = data[: BLOCK + 2048]  # a partial last block
    cli.ok("checkpoint", "create", "v", "cut", "--disk", f"v={_write(image, cut)}",
           "--changed-blocks", f"v={nothing}")  # fmt: skip
    regrown = cut + bytes(2048)
    cli.ok("checkpoint", "create", "v", "regrown", "--disk", f"v={_write(image, regrown)}",
           "--changed-blocks", f"v={nothing}")  # fmt: skip
    assert _restored(cli, "cut", tmp_path) == cut
    assert _restored(cli, "regrown", tmp_path) == regrown
    # without extents: shrink to one block, grow to three (the grown part a hole)
    cli.ok("checkpoint", "create", "v", "one", "--disk", f"v={_write(image, data[:BLOCK])}")
    with image.open("r+b") as f:
        f.truncate(3 * BLOCK)
    cli.ok("checkpoint", "create", "v", "three", "--disk", f"v={image}")
    assert _restored(cli, "three", tmp_path) == data[:BLOCK] + bytes(2 * BLOCK)
    # exported as a VHDX chain, the one-block layer must hide its parent's block 1
    exported = tmp_path / "exported"
    cli.ok("export", "v", "three", "-o", exported)
    assert _read_exported(exported / "v" / "Virtual Hard Disks") == data[:BLOCK] + bytes(2 * BLOCK)
    _store_is_usable(cli)


def _read_exported(folder: Path) -> bytes:
    """The bytes of the longest VHDX chain in ``folder`` (the leaf's view)."""
    from ckpt.storage.vhdx_files import open_vhdx_chain

    views = []
    for path in folder.iterdir():
        vhdx, files, _ = open_vhdx_chain(path)
        try:
            views.append((len(files), vhdx.read(0, vhdx.virtual_size)))
        finally:
            for f in files:
                f.close()
    return max(views)[1]


def _legacy_encode(extra: dict[int, bytes]) -> Callable[[BlockMap], bytes]:
    """``manifest.encode`` as ckpt up to 24af8f9 could write it: ``extra`` entries
    beyond the size of a one-block disk map, no check."""

    def encode(bm: BlockMap) -> bytes:
        entries = dict(bm.entries)
        if bm.kind == manifest.KIND_DISK and bm.size == BLOCK:
            entries.update(extra)
        indices = sorted(entries)
        head = manifest._HEAD.pack(
            manifest.MAP_MAGIC, 1, bm.kind, 0, bm.block_size, bm.size, len(indices)
        )
        column = b"".join(i.to_bytes(8, "little") for i in indices)
        return head + column + b"".join(entries[i] for i in indices)

    return encode


def test_manifests_the_old_version_wrote_for_a_shrunk_disk_read_again(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that the bug already reached: ZERO_ID entries beyond the size are
    tolerated, so restore, later captures, verify and gc work again."""
    two = _write(tmp_path / "two.raw", os.urandom(8192))
    one = _write(tmp_path / "one.raw", two.read_bytes()[:4096])
    cli.ok("checkpoint", "create", "v", "a", "--disk", f"v={two}")
    with monkeypatch.context() as m, writing_v1(m):
        m.setattr(manifest, "encode", _legacy_encode({1: ZERO_ID}))
        cli.ok("checkpoint", "create", "v", "b", "--disk", f"v={one}")
    assert _restored(cli, "b", tmp_path) == one.read_bytes()
    cli.ok("checkpoint", "create", "v", "c", "--disk", f"v={two}")
    assert _restored(cli, "c", tmp_path) == two.read_bytes()
    cli.ok("verify", "--repair")
    _store_is_usable(cli)


def test_a_manifest_that_breaks_a_rule_still_keeps_its_chunks_from_gc(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Conservative: a map whose columns parse names its chunks to gc (which goes on
    and keeps them); verify reports the map; the rest of the store works."""
    unique = os.urandom(BLOCK)
    one = _write(tmp_path / "one.raw", os.urandom(BLOCK))
    cli.ok("checkpoint", "create", "v", "a", "--disk", f"v={one}")
    kept = hashlib.sha256(unique).digest()
    two = _write(tmp_path / "two.raw", one.read_bytes() + unique)
    with monkeypatch.context() as m, writing_v1(m):  # a one-block map naming block 1
        legacy = _legacy_encode({})
        m.setattr(
            manifest,
            "encode",
            lambda bm: legacy(BlockMap(bm.kind, bm.block_size, BLOCK, bm.entries)),
        )
        cli.ok("sync", "v", "--disk", f"v={two}", "--name", "odd")
    cli.ok("gc", "--grace", "0")
    store = Store.open(cli.store)
    try:
        assert store.chunks.has(kept)
    finally:
        store.close()
    err = cli.fails(23, "verify", report=True)
    assert "1 damaged" in err
    _, out, _ = cli("verify")
    assert "block 1 lies beyond the 1 blocks" in out
    assert _restored(cli, "a", tmp_path) == one.read_bytes()


# ------------------------------------------------- item 4: sources without a size
# Issue 11 refused these (a 0-byte disk with exit 0 before); issue 13 reads them
# (tests/integration/test_any_source.py has the rest: loop devices, stdin, the API).
def test_a_fifo_is_read_for_every_kind_of_capture_but_import(cli: CLI, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    fifo_vhdx = tmp_path / "pipe.vhdx"
    os.mkfifo(fifo)
    os.mkfifo(fifo_vhdx)
    data = os.urandom(3 * BLOCK)

    def feed() -> threading.Thread:
        def write() -> None:
            with fifo.open("wb") as f:
                f.write(data)

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        return thread

    for args in (
        ("checkpoint", "create", "v", "x", "--disk", f"v={fifo}"),
        ("sync", "v", "--disk", f"v={fifo}", "--name", "y"),
    ):
        writer = feed()
        cli.ok(*args)
        writer.join(10)
    assert _restored(cli, "x", tmp_path) == data and _restored(cli, "y", tmp_path) == data
    for path in (fifo, fifo_vhdx):  # refused by its stat: no writer is waited for
        err = cli.fails(14, "import", "disk", "v", "v", path)
        assert f"'{path}'" in err and "is a pipe" in err
    cli.ok("vm", "add", "w", "--config-version", "9.0", "--checkpoint-type", "standard")
    cli.ok("vm", "start", "w")
    for option in ("--memory", "--config", "--runtime-state"):
        writer = feed()
        cli.ok("checkpoint", "create", "w", option.strip("-"), option, fifo)
        writer.join(10)
    assert len(json.loads(cli.ok("checkpoint", "list", "v", "--json"))) == 1


def test_devices_are_read_and_a_directory_refused_naming_what_they_are(
    cli: CLI, tmp_path: Path
) -> None:
    # /dev/null is a character device, read as a stream: it delivers nothing, which
    # for a disk is refused (an empty pipe is far more often a failed producer)
    err = cli.fails(14, "checkpoint", "create", "v", "x", "--disk", "v=/dev/null")
    assert "/dev/null delivered no bytes" in err and "nothing was recorded" in err
    err = cli.fails(14, "sync", "v", "--disk", f"v={tmp_path}")
    assert "a directory" in err
    assert json.loads(cli.ok("checkpoint", "list", "v", "--json")) == []


def test_dev_stdin_fed_by_a_pipe_is_read(tmp_path: Path) -> None:
    store = tmp_path / "S"
    for args in (["init"], ["vm", "add", "v"]):
        subprocess.run([CKPT, "--store", store, *args], check=True, capture_output=True)
    data = os.urandom(BLOCK)
    done = subprocess.run(
        [CKPT, "--store", store, "checkpoint", "create", "v", "x", "--disk", "v=/dev/stdin"],
        input=data,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / "x.raw"
    restore = [CKPT, "--store", store, "restore", "v", "x", "--disk", "v", "-o", out]
    subprocess.run(restore, check=True, capture_output=True, timeout=60)
    assert out.read_bytes() == data


def test_a_symlink_to_an_image_and_an_empty_file_are_fine(cli: CLI, tmp_path: Path) -> None:
    data = os.urandom(2 * BLOCK)
    link = tmp_path / "link.raw"
    link.symlink_to(_write(tmp_path / "real.raw", data))
    cli.ok("checkpoint", "create", "v", "linked", "--disk", f"v={link}")
    assert _restored(cli, "linked", tmp_path) == data
    cli.ok("vm", "add", "w", "--config-version", "9.0")
    cli.ok("checkpoint", "create", "w", "cfg", "--config", _write(tmp_path / "c.vmcx", b""))


# --------------------------------------------------- item 5: container files
def _vhdx(path: Path, data: bytes) -> Path:
    with path.open("wb") as f:
        write_vhdx(f, len(data), [(0, data)])
    return path


def test_a_vhdx_given_as_a_raw_image_is_refused_naming_import_disk(
    cli: CLI, tmp_path: Path
) -> None:
    data = os.urandom(3 * BLOCK)
    vhdx = _vhdx(tmp_path / "file.vhdx", data)
    for args in (
        ("checkpoint", "create", "v", "x", "--disk", f"v={vhdx}"),
        ("sync", "v", "--disk", f"v={vhdx}"),
    ):
        err = cli.fails(14, *args)
        assert "is a VHDX file" in err and f"ckpt import disk v v {vhdx}" in err
        assert "--format raw" in err
    assert json.loads(cli.ok("checkpoint", "list", "v", "--json")) == []
    renamed = tmp_path / "file.img"
    renamed.write_bytes(vhdx.read_bytes())
    # issue 17: import disk tells a container by its bytes, whatever its name
    cli.ok("import", "disk", "v", "v", renamed)  # read as VHDX: the guest's bytes
    cli.ok("checkpoint", "create", "v", "renamed")
    assert _restored(cli, "renamed", tmp_path) == data
    cli.ok("import", "disk", "v", "v", vhdx)  # read as VHDX: the guest's bytes
    cli.ok("checkpoint", "create", "v", "imported")
    assert _restored(cli, "imported", tmp_path) == data
    cli.ok("checkpoint", "create", "v", "as-is", "--disk", f"v={vhdx}", "--format", "raw")
    assert _restored(cli, "as-is", tmp_path) == vhdx.read_bytes()


def test_vhd_and_qcow2_files_are_refused_naming_qemu_img(cli: CLI, tmp_path: Path) -> None:
    body = os.urandom(4 * BLOCK)
    footer = b"conectix" + bytes(504)
    fixed_vhd = _write(tmp_path / "x.vhd", body + footer)  # a fixed VHD: footer at the end
    dynamic_vhd = _write(tmp_path / "y.vhd", footer + body + footer)
    qcow2 = _write(tmp_path / "z.qcow2", b"QFI\xfb\0\0\0\3" + body[: 4 * BLOCK - 8])
    for path, kind in ((fixed_vhd, "a VHD file"), (dynamic_vhd, "a VHD file"),
                       (qcow2, "a qcow2 image")):  # fmt: skip
        for args in (
            ("checkpoint", "create", "v", "x", "--disk", f"v={path}"),
            ("sync", "v", "--disk", f"v={path}"),
        ):
            err = cli.fails(14, *args)
            assert f"is {kind}" in err and "qemu-img convert -O raw" in err, err
        if kind == "a VHD file":  # import disk reads VHDs (issue 17): these are damaged ones
            err = cli.fails(30, "import", "disk", "v", "v", path)
            assert str(path) in err and "footer" in err, err
        else:
            err = cli.fails(14, "import", "disk", "v", "v", path)
            assert f"is {kind}" in err and "qemu-img convert -O raw" in err, err
    cli.ok("import", "disk", "v", "v", fixed_vhd, "--format", "raw")
    cli.ok("sync", "v", "--disk", f"v={qcow2}", "--format", "raw", "--name", "q")
    assert _restored(cli, "q", tmp_path) == qcow2.read_bytes()


def test_container_signatures_are_read_from_a_stream() -> None:
    from ckpt.storage.image_formats import container_format

    raw = bytes(BLOCK)
    cases = {
        b"vhdxfile" + raw: "a VHDX file",
        b"QFI\xfb" + raw: "a qcow2 image",
        b"conectix" + raw + b"conectix" + bytes(504): "a VHD file",
        raw + b"conectix" + bytes(503): "a VHD file",  # a 511-byte footer (before 2004)
        raw: None,
        b"": None,
        b"conectix"[:5]: None,
    }
    for data, kind in cases.items():
        assert container_format(io.BytesIO(data), len(data)) == kind, data[:8]


def test_the_python_api_refuses_containers_unless_raw(tmp_path: Path) -> None:
    qcow2 = _write(tmp_path / "z.img", b"QFI\xfb" + bytes(BLOCK - 4))
    with Store.init(tmp_path / "S") as store:
        store.register_vm("v", [("D", DiskFormat.VHDX)])
        with pytest.raises(InvalidValue, match="qcow2"):
            store.create_checkpoint("v", "x", disks={"D": qcow2})
        with pytest.raises(InvalidValue, match="qcow2"):
            store.sync("v", {"D": qcow2})
        with pytest.raises(InvalidValue, match="qcow2"):
            store.import_disk("v", "D", qcow2)
        store.create_checkpoint("v", "x", disks={"D": qcow2}, raw=True)
        store.sync("v", {"D": qcow2}, raw=True)
        store.import_disk("v", "D", qcow2, raw=True)


# ----------------------------------------- item 7: an image changing during capture
MiB = 1 << 20


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Store]:
    with Store.init(tmp_path / "S") as store:
        store.register_vm("v", [("D", DiskFormat.VHDX)])
        yield store


def _meddle(action: Callable[[], None]) -> Callable[[str, int], Callable[[int], None]]:
    """A progress factory whose first report runs ``action``: the source changes
    while the capture is under way (4 MiB buffers, at most 4 read ahead)."""

    def factory(label: str, total: int) -> Callable[[int], None]:
        done: list[int] = []

        def report(n: int) -> None:
            if not done:
                done.append(n)
                action()

        return report

    return factory


def _image(path: Path, size: int = 40 * MiB) -> Path:
    rng = random.Random(7)
    return _write(path, rng.randbytes(size))


def test_an_image_truncated_during_its_capture_is_refused(api: Store, tmp_path: Path) -> None:
    """The issue's case: a short read was padded with zeros and recorded, exit 0."""
    image = _image(tmp_path / "d.raw")
    truncate = _meddle(lambda: os.truncate(image, 1 * MiB))
    with pytest.raises(SourceChanged, match=r"d\.raw changed during the capture.*snapshot"):
        api.create_checkpoint("v", "x", disks={"D": image}, progress=truncate)
    assert api.checkpoints("v") == []


def test_an_image_written_during_its_capture_is_refused(api: Store, tmp_path: Path) -> None:
    image = _image(tmp_path / "d.raw")

    def write() -> None:
        with image.open("r+b") as f:
            f.seek(20 * MiB)
            f.write(b"guest write")
        st = image.stat()  # make sure the clock moved, whatever its granularity
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    with pytest.raises(SourceChanged, match="modification time"):
        api.sync("v", {"D": image}, progress=_meddle(write))
    with pytest.raises(SourceChanged, match="modification time"):
        api.create_checkpoint("v", "x", disks={"D": image}, progress=_meddle(write))
    assert api.checkpoints("v") == [] and not api.vm("v").backup_points


def test_an_image_replaced_during_its_capture_is_refused(api: Store, tmp_path: Path) -> None:
    image = _image(tmp_path / "d.raw")
    other = _image(tmp_path / "other.raw")
    with pytest.raises(SourceChanged, match="names another file"):
        api.create_checkpoint(
            "v", "x", disks={"D": image}, progress=_meddle(lambda: os.replace(other, image))
        )
    assert api.checkpoints("v") == []


def test_the_cli_says_so_with_exit_14_and_records_nothing(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = _image(tmp_path / "d.raw", 8 * BLOCK)
    from ckpt.storage import manifest_capture as content

    real = content.capture_into

    def truncated_first(*args: object, **kwargs: object) -> object:  # after its size was read
        os.truncate(image, 2 * BLOCK)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(content, "capture_into", truncated_first)
    err = cli.fails(14, "checkpoint", "create", "v", "x", "--disk", f"v={image}")
    assert "changed during the capture" in err and "nothing was recorded" in err
    assert json.loads(cli.ok("checkpoint", "list", "v", "--json")) == []
