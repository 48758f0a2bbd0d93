"""Corruption: damaged packs, index files and database pages are found, named and,
where the bytes still exist somewhere, repaired."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from ckpt import CheckpointType, ChunkCorrupt, CkptError, DiskFormat, Store
from ckpt.cli import run


@pytest.fixture
def store(tmp_path: Path) -> Store:
    rng = random.Random(3)
    s = Store.init(tmp_path / "s", actor="t")
    s.register_vm("VM", [("D", DiskFormat.VHDX)], checkpoint_type=CheckpointType.STANDARD)
    img = tmp_path / "d.img"
    for name in ("first", "second"):
        img.write_bytes(rng.randbytes(64 * 1024) + bytes(64 * 1024))
        s.create_checkpoint("VM", name, disks={"D": img})
        (tmp_path / f"{name}.expected").write_bytes(img.read_bytes())
    return s


def _cli(store: Store, *args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(["--store", str(store.path), *args], out, err)
    return code, out.getvalue() + err.getvalue()


def _restore(store: Store, name: str) -> bytes:
    out = io.BytesIO()
    store.restore_disk("VM", name, "D", out)
    return out.getvalue()


def _newest(store: Store, pattern: str) -> Path:
    return max((store.path / "chunks").rglob(pattern), key=lambda p: p.stat().st_mtime_ns)


def test_damaged_index_file_is_named_and_repaired_from_its_pack(
    store: Store, tmp_path: Path
) -> None:
    idx = _newest(store, "*.idx")
    data = bytearray(idx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    idx.write_bytes(bytes(data))
    code, text = _cli(store, "verify")
    assert code == 23 and idx.name in text and "rebuild_index" in text  # names the file
    code, text = _cli(store, "verify", "--repair")
    assert code == 0 and "rebuilt 2 index files" in text and "OK" in text
    reopened = Store.open(store.path)
    assert _restore(reopened, "second") == (tmp_path / "second.expected").read_bytes()


def test_deleted_index_file_is_rebuilt(store: Store, tmp_path: Path) -> None:
    _newest(store, "*.idx").unlink()
    code, text = _cli(store, "verify")
    assert code == 23 and "second (disk D)" in text  # its chunks are missing: named
    code, text = _cli(store, "verify", "--repair")
    assert code == 0, text
    assert _restore(Store.open(store.path), "second") == (tmp_path / "second.expected").read_bytes()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_pack_names_the_checkpoint_and_spares_the_others(
    store: Store, tmp_path: Path, damage: str
) -> None:
    pack = _newest(store, "*.pack")  # written by the second capture only
    if damage == "flip":
        data = bytearray(pack.read_bytes())
        data[100] ^= 0xFF
        pack.write_bytes(bytes(data))
    elif damage == "truncate":
        pack.write_bytes(pack.read_bytes()[: pack.stat().st_size // 3])
    else:
        pack.unlink()
    reopened = Store.open(store.path)
    report = reopened.verify()
    named = {c for bad in report.bad for x in bad["affects"] for c in x["checkpoints"]}
    assert "second (disk D)" in named and "first (disk D)" not in named
    with pytest.raises(CkptError):
        _restore(reopened, "second")
    assert _restore(reopened, "first") == (tmp_path / "first.expected").read_bytes()
    code, _ = _cli(store, "verify", "--repair")
    assert code == 23  # the bytes are gone: repair cannot bring them back, and says so
    if damage == "flip":
        with pytest.raises(ChunkCorrupt):
            _restore(Store.open(store.path), "second")


def test_damaged_database_page_is_a_clear_error(store: Store) -> None:
    db = store.path / "events.sqlite"
    store.close()
    data = bytearray(db.read_bytes())
    page = 4096
    for offset in range(2 * page + 16, len(data), page):  # scribble over every page after the 2nd
        data[offset : offset + 64] = b"\xa5" * 64
    db.write_bytes(bytes(data))
    code, text = _cli(store, "verify")
    assert code != 0 and code != 1, text  # a classified error, not a crash
    assert "ckpt: error:" in text and text.count("\n") <= 3


def _oldest(store: Store, pattern: str) -> Path:
    return min((store.path / "chunks").rglob(pattern), key=lambda p: p.stat().st_mtime_ns)


def test_a_damaged_pack_of_an_overwritten_capture_spares_the_later_checkpoint(
    store: Store, tmp_path: Path
) -> None:
    """The first capture's pack (its blocks and its manifest) is lost. The second
    capture rewrote every block, and its v2 manifest is the whole disk: it needs
    nothing of the first, so it restores and verify names only the first."""
    _oldest(store, "*.pack").unlink()
    reopened = Store.open(store.path)
    report = reopened.verify()
    named = {c for bad in report.bad for x in bad["affects"] for c in x["checkpoints"]}
    assert "first (disk D)" in named
    assert "second (disk D)" not in named and "Now (disk D)" not in named
    assert _restore(reopened, "second") == (tmp_path / "second.expected").read_bytes()
    with pytest.raises(CkptError):
        _restore(reopened, "first")


def test_an_index_file_damaged_after_it_was_cached_is_found_by_verify(
    store: Store, tmp_path: Path
) -> None:
    store.close()  # its index entries now in the local index cache
    code, _ = _cli(store, "verify")
    assert code == 0
    idx = _newest(store, "*.idx")
    data = bytearray(idx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    idx.write_bytes(bytes(data))
    # lookups answer from the cache and stay right; verify reads the files again
    assert _restore(Store.open(store.path), "second") == (tmp_path / "second.expected").read_bytes()
    code, text = _cli(store, "verify")
    assert code == 23 and idx.name in text and "verify --repair" in text
    code, text = _cli(store, "verify", "--repair")
    assert code == 0 and "OK" in text
