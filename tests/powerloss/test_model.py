"""The power-loss model keeps exactly what POSIX promises after a cut, no more."""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

from ._model import SECTOR, PowerModel


def _write(path: Path, data: bytes, sync: bool) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        if sync:
            os.fsync(f.fileno())


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _state(
    model: PowerModel, index: int = -1, torn: random.Random | None = None
) -> dict[str, bytes]:
    model.materialize(model.points[index], torn)
    return {
        str(p.relative_to(model.root)): p.read_bytes()
        for p in sorted(model.root.rglob("*"))
        if p.is_file()
    }


def test_a_rename_without_a_directory_sync_is_undone(tmp_path: Path) -> None:
    model = PowerModel(tmp_path)
    with model.recording():
        _write(tmp_path / ".a.tmp", b"new", sync=True)
        os.replace(tmp_path / ".a.tmp", tmp_path / "a")
        model.point("renamed, directory not synced")
        _sync_dir(tmp_path)
        model.point("directory synced")
    assert _state(model, 1) == {}
    assert _state(model, 3) == {"a": b"new"}


def test_unsynced_bytes_are_lost_and_a_never_synced_file_is_empty(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"before")  # there when recording starts: durable
    model = PowerModel(tmp_path)
    with model.recording():
        _write(tmp_path / "old", b"after, never synced", sync=False)
        _write(tmp_path / "new", b"never synced", sync=False)
        _sync_dir(tmp_path)
        model.point("end")
    assert _state(model) == {"new": b"", "old": b"before"}


def test_a_new_directory_needs_its_parent_synced(tmp_path: Path) -> None:
    model = PowerModel(tmp_path)
    with model.recording():
        (tmp_path / "d").mkdir()
        _write(tmp_path / "d" / "f", b"x", sync=True)
        _sync_dir(tmp_path / "d")
        model.point("inner synced")
        _sync_dir(tmp_path)
        model.point("parent synced")
    assert _state(model, 2) == {}
    assert _state(model, 4) == {"d/f": b"x"}


def test_a_torn_write_keeps_a_sector_aligned_prefix_of_the_new_bytes(tmp_path: Path) -> None:
    old, new = b"A" * (4 * SECTOR), b"B" * (6 * SECTOR + 100)
    (tmp_path / "f").write_bytes(old)
    model = PowerModel(tmp_path)
    with model.recording(), open(tmp_path / "f", "r+b") as f:
        f.write(new)
        f.flush()
        os.fsync(f.fileno())  # the crash point is just before this sync
    seen = set()
    for seed in range(40):
        data = _state(model, 0, random.Random(seed))["f"]
        cut = data.rfind(b"B") + 1
        assert cut % SECTOR == 0 or cut == len(new), cut
        assert data == new[:cut] + old[cut:]
        seen.add(cut)
    assert len(seen) > 3  # the tear falls in different places
    assert _state(model, 0) == {"f": old}  # not torn: the old bytes


def test_a_removed_file_whose_number_is_reused_does_not_lend_its_bytes(tmp_path: Path) -> None:
    model = PowerModel(tmp_path)
    with model.recording():
        _write(tmp_path / "a", b"a's bytes", sync=True)
        _sync_dir(tmp_path)
        ino = os.stat(tmp_path / "a").st_ino
        os.unlink(tmp_path / "a")
        # Most file systems hand the freed number to the next file: whether or
        # not this one gets it, it must read empty (it was never synced).
        _write(tmp_path / "b", b"b's bytes", sync=False)
        _sync_dir(tmp_path)
        model.point("end")
    assert _state(model) == {"b": b""}, (ino, os.stat(tmp_path / "b").st_ino)


def test_sqlite_keeps_committed_transactions_and_rolls_back_the_rest(tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t (x)")
    _sync_dir(tmp_path)
    model = PowerModel(tmp_path)
    with model.recording():
        con.execute("INSERT INTO t VALUES (1)")
        model.point("one committed")
        con.execute("BEGIN")
        con.execute("INSERT INTO t VALUES (2)")
        model.point("two in flight")
        con.execute("COMMIT")
    con.close()
    for index, want in ((0, [(1,)]), (1, [(1,)])):
        model.materialize(model.points[index])
        check = sqlite3.connect(db)
        assert check.execute("SELECT x FROM t").fetchall() == want
        check.close()
