"""``ckpt copy``: a whole store moved to other backends verifies and restores identically."""

from __future__ import annotations

import io
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pytest
from backends import postgres_url, s3_url

from ckpt import AlreadyExists, CheckpointType, DiskFormat, Store, StoreExists
from ckpt.cli import run
from ckpt.domain import FileRole, Origin, VirtualMachine


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(["--actor", "t", *args], out, err)
    return code, out.getvalue(), err.getvalue()


def _fill(store: Store, tmp_path: Path) -> dict[str, bytes]:
    """Two VMs, a branching tree, a deleted (merged) checkpoint, memory, a backup point."""
    rng = random.Random(7)
    image = bytearray(rng.randbytes(96 * 1024) + bytes(64 * 1024))
    src = tmp_path / "d.img"
    expected: dict[str, bytes] = {}
    for vm in ("web", "db"):
        store.register_vm(vm, [("D", DiskFormat.VHDX)], checkpoint_type=CheckpointType.STANDARD)
    for n in range(6):
        vm = ("web", "db")[n % 2]
        image[n * 5000 : n * 5000 + 3000] = rng.randbytes(3000)
        src.write_bytes(image)
        store.create_checkpoint(vm, f"c{n}", disks={"D": src})
        expected[f"{vm}/c{n}"] = bytes(image)
    store.apply_checkpoint("web", "c0")
    store.delete_checkpoint("web", "c2")
    del expected["web/c2"]
    store.start_vm("db")
    memory = tmp_path / "m.bin"
    memory.write_bytes(rng.randbytes(20000) + bytes(20000))
    store.create_checkpoint("db", "running", disks={"D": src}, files={FileRole.MEMORY: memory})
    expected["db/running"] = bytes(image)
    store.sync("web", {"D": src}, name="bp")
    expected["web/bp"] = bytes(image)
    return expected


def _restored(store: Store, expected: dict[str, bytes]) -> dict[str, bytes]:
    got = {}
    for key in expected:
        vm, point = key.split("/")
        out = io.BytesIO()
        store.restore_disk(vm, point, "D", out)
        got[key] = out.getvalue()
    return got


def test_embedded_store_copied_to_postgresql_and_s3_restores_identically(tmp_path: Path) -> None:
    events, chunks = postgres_url(), s3_url()
    with Store.init(tmp_path / "embedded", actor="t") as store:
        expected = _fill(store, tmp_path)
        log = [(e.position, e.operation, e.checkpoint) for e in store.log()]
        tree = [(e.name, e.id) for e in store.tree("web")]
    code, out, err = _cli(
        "--store", str(tmp_path / "embedded"), "copy", "--to-events", events,
        "--to-chunks", chunks, "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["events"] == len(log) and report["packs"] >= 1 and report["skipped_packs"] == 0
    assert "***" in report["target"] and events.split("@")[0].split(":")[-1] not in out

    code, out, err = _cli("--events", events, "--chunks", chunks, "verify", "--json")
    assert code == 0 and json.loads(out)["ok"], err
    code, out, err = _cli("--events", events, "--chunks", chunks, "verify", "--log")
    assert code == 0, err
    with Store.open(None, events=events, chunks=chunks) as copy:
        assert _restored(copy, expected) == expected
        assert [(e.position, e.operation, e.checkpoint) for e in copy.log()] == log
        assert [(e.name, e.id) for e in copy.tree("web")] == tree
        out = io.BytesIO()
        copy.restore_memory("db", "running", out)
        assert len(out.getvalue()) == 40000
        # The copy is a store like any other: it takes new commands.
        copy.create_checkpoint("web", "after the move")


def test_copy_back_to_an_embedded_store_and_refusal_of_a_used_target(tmp_path: Path) -> None:
    events, chunks = postgres_url(), s3_url()
    with Store.init(tmp_path / "remote", events=events, chunks=chunks) as store:
        expected = _fill(store, tmp_path)
        report = store.copy_to(None, None, tmp_path / "back")
        assert report.events == store.app.last_position()
        with pytest.raises(StoreExists, match="already"):
            store.copy_to(None, None, tmp_path / "back")
        with pytest.raises(StoreExists, match="already holds"):
            store.copy_to(events, chunks)
    with Store.open(tmp_path / "back") as back:
        assert back.verify().ok
        assert _restored(back, expected) == expected


def test_an_encrypted_store_copies_sealed_and_opens_with_the_same_key(tmp_path: Path) -> None:
    events, chunks = postgres_url(), s3_url()
    key = bytes(range(32))
    with Store.init(tmp_path / "sealed", encrypt=True, key=key) as store:
        expected = _fill(store, tmp_path)
        report = store.copy_to(events, chunks)
    assert report.events > 0
    with Store.open(None, events=events, chunks=chunks, key=key) as copy:
        assert copy.verify().ok
        assert _restored(copy, expected) == expected
        # Still sealed there: the raw events hold no VM name.
        raw = copy.app.recorder.select_notifications(1, 1000)
        assert not any(b"web" in n.state for n in raw)


def test_a_postgresql_log_with_gaps_copies_at_its_own_positions(tmp_path: Path) -> None:
    """A failed insert leaves a gap in PostgreSQL's positions; the hash chain covers
    the positions, so the copy keeps them (and the copy back keeps them too)."""
    events, chunks = postgres_url(), s3_url()
    with Store.init(tmp_path / "pg", events=events, chunks=chunks) as store:
        store.register_vm("web", checkpoint_type=CheckpointType.STANDARD)
        # Two hosts registering one name at once: the second one's insert is refused
        # by the database (its own check saw no VM yet), so position 2 is never used.
        late = VirtualMachine.register(Origin("t", "h", datetime.now(UTC), uuid4()), "WEB")
        with pytest.raises(AlreadyExists):
            store.save_new_vm(late)
        store.create_checkpoint("web", "one")
        positions = [e.position for e in store.log()]
        assert positions == [1, 3]
        report = store.copy_to(None, None, tmp_path / "back")
        source = store.verify_log()
        assert source.ok
    with Store.open(tmp_path / "back") as back:
        assert [e.position for e in back.log()] == positions
        copied = back.verify_log()
        assert copied.ok and copied.last_link == source.last_link
        assert report.events == 2
        back.create_checkpoint("web", "two")  # the next position follows the copied ones
        assert [e.position for e in back.log()] == [1, 3, 4]
