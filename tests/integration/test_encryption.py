"""Encryption at rest: nothing readable in the store's files; dedup works; a wrong key is clear."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from ckpt import CheckpointType, DiskFormat, FileRole, Store, WrongKey
from ckpt.cli import run
from ckpt.storage.keyring import generate_key, parse_key

SECRET_VM = "payroll-db-01"
SECRET_CHECKPOINT = "before the quarterly close"
SECRET_TEXT = b"Quarterly salaries: CONFIDENTIAL " * 200


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_nothing_readable_is_left_in_the_store_files(tmp_path: Path) -> None:
    key = parse_key(generate_key(), "test")
    store = Store.init(tmp_path / "s", encrypt=True, key=key, actor="alice-the-admin")
    store.register_vm(
        SECRET_VM, [("Data", DiskFormat.VHDX)], checkpoint_type=CheckpointType.STANDARD
    )
    store.start_vm(SECRET_VM)
    image = tmp_path / "disk.img"
    image.write_bytes((SECRET_TEXT + bytes(1 << 20) + SECRET_TEXT).ljust(2 << 20, b"\0"))
    memory = tmp_path / "mem.bin"
    memory.write_bytes(SECRET_TEXT * 3)
    config = tmp_path / "cfg.vmcx"
    config.write_bytes(b"<config>" + SECRET_TEXT + b"</config>")
    store.create_checkpoint(
        SECRET_VM, SECRET_CHECKPOINT, disks={"Data": image},
        files={FileRole.MEMORY: memory, FileRole.CONFIG: config},
    )  # fmt: skip
    store.rename_checkpoint(SECRET_VM, SECRET_CHECKPOINT, SECRET_CHECKPOINT + " (renamed)")
    assert store.verify().ok and store.verify_log().ok
    out = io.BytesIO()
    store.restore_disk(SECRET_VM, SECRET_CHECKPOINT + " (renamed)", "Data", out)
    assert out.getvalue() == image.read_bytes()
    assert [e.operation for e in store.log(operation="checkpoint-renamed")] == [
        "checkpoint-renamed"
    ]
    store.close()
    needles = [
        SECRET_VM.encode(), SECRET_CHECKPOINT.encode(), b"alice-the-admin",
        SECRET_TEXT[:32], b"CONFIDENTIAL", SECRET_VM.encode("utf-16-le"),
    ]  # fmt: skip
    for path in _files(tmp_path / "s"):
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{needle!r} readable in {path.name}"


def test_dedup_works_and_a_wrong_or_missing_key_is_a_clear_error(tmp_path: Path) -> None:
    key = parse_key(generate_key(), "test")
    store = Store.init(tmp_path / "s", encrypt=True, key=key)
    store.register_vm("A", [("D", DiskFormat.VHDX)], checkpoint_type=CheckpointType.STANDARD)
    store.register_vm("B", [("D", DiskFormat.VHDX)], checkpoint_type=CheckpointType.STANDARD)
    image = tmp_path / "d.img"
    image.write_bytes(random.Random(1).randbytes(64 * 1024))
    store.create_checkpoint("A", "x", disks={"D": image})
    chunks = store.stats()["total"]["chunks"]
    store.create_checkpoint("B", "x", disks={"D": image})
    assert store.stats()["total"]["chunks"] == chunks  # same bytes: stored once
    store.close()
    with pytest.raises(WrongKey, match="not the key"):
        Store.open(tmp_path / "s", key=os.urandom(32))
    with pytest.raises(WrongKey, match="is encrypted"):
        Store.open(tmp_path / "s")
    err = io.StringIO()
    code = run(["--store", str(tmp_path / "s"), "vm", "list"], io.StringIO(), err)
    assert code == 28 and err.getvalue().startswith("ckpt: error:")


def test_cli_creates_a_key_file_and_uses_it(tmp_path: Path) -> None:
    key_file = tmp_path / "store.key"
    base = ["--store", str(tmp_path / "s"), "--key-file", str(key_file)]
    out = io.StringIO()
    assert run([*base, "init", "--encrypt"], out, io.StringIO()) == 0
    assert "encrypted" in out.getvalue() and key_file.stat().st_mode & 0o077 == 0
    assert run([*base, "vm", "add", "V"], io.StringIO(), io.StringIO()) == 0
    listed = io.StringIO()
    assert run([*base, "vm", "list", "--json"], listed, io.StringIO()) == 0
    assert '"V"' in listed.getvalue()
