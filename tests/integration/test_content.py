"""Content end to end on a real store: capture, checkpoint operations, restore, verify, gc.

The chunk-store contract at the store level: runs on every combination of
event store and chunk storage (``backends``).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import Backends
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt import CheckpointType, ChunkCorrupt, DiskFormat, InvalidValue, Store
from ckpt.domain import FileRole

SIZE = 64 * 1024


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _restore(store: Store, vm: str, point: str, disk: str = "D") -> bytes:
    out = io.BytesIO()
    store.restore_disk(vm, point, disk, out)
    return out.getvalue()


ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, SIZE - 1), st.binary(min_size=1, max_size=9000)),
        st.tuples(st.just("checkpoint")),
        st.tuples(st.just("apply"), st.integers(0, 50)),
        st.tuples(st.just("delete"), st.integers(0, 50), st.booleans()),
    ),
    min_size=1,
    max_size=14,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=ops)
def test_any_sequence_restores_every_live_checkpoint_exactly(
    tmp_path: Path, backends: Backends, ops: list[tuple]
) -> None:  # type: ignore[type-arg]
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    image = bytearray(SIZE)
    expected: dict[str, bytes] = {}
    with Store.init(root / "s", **backends()) as store:
        store.register_vm("VM", [("D", DiskFormat.VHDX)], checkpoint_type=CheckpointType.STANDARD)
        src = root / "d.img"
        for n, op in enumerate(ops):
            live = [cp.name for cp in store.vm("VM").checkpoints.values()]
            if op[0] == "write":
                _, offset, data = op
                data = data[: SIZE - offset]
                image[offset : offset + len(data)] = data
            elif op[0] == "checkpoint":
                # raw: random bytes may start with a container signature (qcow2 "QFI\\xfb")
                disk = {"D": _write(src, bytes(image))}
                cp = store.create_checkpoint("VM", f"c{n}", disks=disk, raw=True)
                expected[cp.name] = bytes(image)
            elif op[0] == "apply" and live:
                name = live[op[1] % len(live)]
                store.apply_checkpoint("VM", name)
                image[:] = expected[name]
            elif op[0] == "delete" and live:
                store.delete_checkpoint("VM", live[op[1] % len(live)], subtree=op[2])
        for cp in store.vm("VM").checkpoints.values():
            assert _restore(store, "VM", cp.name) == expected[cp.name]
        assert store.verify().ok


@pytest.fixture
def store(tmp_path: Path, backends: Backends) -> Store:
    s = Store.init(tmp_path / "s", actor="t", **backends())
    s.register_vm("VM", [("D", DiskFormat.VHDX)], "9.0", CheckpointType.STANDARD)
    return s


def test_memory_state_files_and_backup_point(store: Store, tmp_path: Path) -> None:
    rng = random.Random(1)
    disk = bytes(rng.randbytes(32768)) + bytes(32768)
    memory = rng.randbytes(10000) + bytes(20000)
    store.start_vm("VM")
    cp = store.create_checkpoint(
        "VM", "running",
        disks={"D": _write(tmp_path / "d", disk)},
        files={
            FileRole.MEMORY: _write(tmp_path / "m", memory),
            FileRole.CONFIG: _write(tmp_path / "c", b"<vmcx>"),
            FileRole.RUNTIME_STATE: _write(tmp_path / "r", b"vmrs" * 100),
        },
    )  # fmt: skip
    out = io.BytesIO()
    store.restore_memory("VM", "running", out)
    assert out.getvalue() == memory
    files = store.restore_state_files("VM", "running", tmp_path / "out")
    guid = str(cp.id).upper()
    assert sorted(f.relative_to(tmp_path / "out").as_posix() for f in files) == [
        f"Snapshots/{guid}.vmcx", f"Snapshots/{guid}.vmrs",
    ]  # fmt: skip
    assert (tmp_path / "out" / "Snapshots" / f"{guid}.vmcx").read_bytes() == b"<vmcx>"
    later = disk[:100] + b"X" * 50 + disk[150:]
    point = store.sync("VM", {"D": _write(tmp_path / "d", later)}, name="nightly")
    assert _restore(store, "VM", "nightly") == later
    assert _restore(store, "VM", str(point.id)) == later
    assert _restore(store, "VM", "running") == disk
    store.apply_checkpoint("VM", "running")  # the backup point's layer is discarded ...
    assert _restore(store, "VM", "nightly") == later  # ... but its content stays reachable


def test_memory_of_a_checkpoint_without_memory_is_refused(store: Store, tmp_path: Path) -> None:
    with pytest.raises(InvalidValue, match="holds no memory"):
        store.create_checkpoint("VM", "off", files={FileRole.MEMORY: _write(tmp_path / "m", b"x")})
    assert store.stats()["total"]["chunks"] == 0  # refused before anything was stored


def test_changed_blocks_reads_only_the_extents(store: Store, tmp_path: Path) -> None:
    disk = bytearray(random.Random(2).randbytes(SIZE))
    store.create_checkpoint("VM", "a", disks={"D": _write(tmp_path / "d", bytes(disk))})
    disk[8192:8200] = b"CHANGED!"
    disk[40000:40001] = b"?"  # not listed: a changed-block list that misses a change loses it
    cp = store.create_checkpoint(
        "VM",
        "b",
        disks={"D": _write(tmp_path / "d", bytes(disk))},
        changed_blocks={"D": [(8192, 8)]},
    )
    event = store.vm("VM").contents
    assert cp.name == "b" and event
    got = _restore(store, "VM", "b")
    assert got[8192:8200] == b"CHANGED!"
    assert got[40000] != ord("?")


def test_dedup_zero_blocks_and_stats(store: Store, tmp_path: Path) -> None:
    block = random.Random(3).randbytes(4096)
    disk = block * 8 + bytes(4096 * 8)
    store.create_checkpoint("VM", "a", disks={"D": _write(tmp_path / "d", disk)})
    stats = store.stats("VM")
    # the block once, plus the manifest: its root, its top-list piece and its one segment
    assert stats["total"]["chunks"] == 4
    assert stats["vms"]["VM"]["logical_bytes"] == len(disk)
    store.register_vm("VM2", [("D", DiskFormat.VHDX)], "9.0", CheckpointType.STANDARD)
    store.create_checkpoint("VM2", "a", disks={"D": _write(tmp_path / "d", disk)})
    assert store.stats()["total"]["chunks"] == 4  # same content, same manifest: nothing new


def _packs(store: Store) -> set[str]:
    return set(store.chunks.backend.list("packs/"))


def test_flipped_byte_is_found_and_restore_refuses(store: Store, tmp_path: Path) -> None:
    rng = random.Random(4)
    store.create_checkpoint("VM", "good", disks={"D": _write(tmp_path / "d", rng.randbytes(8192))})
    before = _packs(store)
    store.create_checkpoint("VM", "bad", disks={"D": _write(tmp_path / "d", rng.randbytes(8192))})
    (newest,) = _packs(store) - before
    data = bytearray(store.chunks.backend.get(newest))
    data[40] ^= 0xFF  # inside the first chunk's frame
    store.chunks.backend.put(newest, bytes(data))
    reopened = Store.open(store.path)
    report = reopened.verify()
    assert not report.ok
    affected = {x["what"].split(" (layer")[0] for bad in report.bad for x in bad["affects"]}
    assert affected == {"disk D"}
    named = {c for bad in report.bad for x in bad["affects"] for c in x["checkpoints"]}
    assert "bad (disk D)" in named and "good (disk D)" not in named
    with pytest.raises(ChunkCorrupt, match=r"SHA-256 mismatch|decompress"):
        _restore(reopened, "VM", "bad")
    assert len(_restore(reopened, "VM", "good")) == 8192


def test_gc_frees_only_unreferenced_chunks(store: Store, tmp_path: Path) -> None:
    rng = random.Random(5)
    disk = rng.randbytes(16384)
    store.create_checkpoint("VM", "keep", disks={"D": _write(tmp_path / "d", disk)})
    with store.chunks.writer() as w:  # an orphan: written, then the writer "crashed"
        w.add(rng.randbytes(4096))
    assert store.gc(grace_seconds=3600).removed_chunks == 0  # too young
    report = store.gc(grace_seconds=0)
    assert report.removed_chunks == 1
    assert _restore(store, "VM", "keep") == disk
    assert store.verify().ok


KILLER = r"""
import sys
from ckpt import Store
store = Store.open(sys.argv[1])
print("go", flush=True)
store.create_checkpoint("VM", "killed", disks={"D": sys.argv[2]})
print("done", flush=True)
"""


def test_sigkill_during_capture_leaves_a_store_that_verifies(store: Store, tmp_path: Path) -> None:
    first = random.Random(6).randbytes(1 << 20)
    store.create_checkpoint("VM", "committed", disks={"D": _write(tmp_path / "d", first)})
    big = tmp_path / "big.img"
    with big.open("wb") as f:
        f.write(os.urandom(96 << 20))
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLER, str(store.path), str(big)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,  # not the repo root, whose bare ckpt/ folder would shadow the package
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
    time.sleep(0.4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = Store.open(store.path)
    assert after.verify().ok
    names = [cp.name for cp in after.vm("VM").checkpoints.values()]
    assert names[0] == "committed"
    assert (
        hashlib.sha256(_restore(after, "VM", "committed")).digest()
        == hashlib.sha256(first).digest()
    )


def test_two_tib_sparse_disk_reads_and_stores_only_what_was_written(
    store: Store, tmp_path: Path
) -> None:
    """Metadata follows the data written, not the virtual size (2 TiB, 8 MiB written)."""
    image = tmp_path / "huge.img"
    rng = random.Random(7)
    with image.open("wb") as f:
        f.truncate(2 << 40)
        for offset in (0, 1 << 40, (2 << 40) - (4 << 20)):
            f.seek(offset)
            f.write(rng.randbytes(2 << 20))
    store.create_checkpoint("VM", "huge", disks={"D": image})
    (capture,) = [
        e.capture for _, e in store.app.read_log() if type(e).__name__ == "LayerContentRecorded"
    ]
    assert capture.virtual_size == 2 << 40
    assert capture.read_bytes <= 8 << 20  # the holes were never read
    assert capture.changed_blocks == 3 * 512
    assert store.stats()["total"]["stored_bytes"] < 7 << 20
    out = tmp_path / "restored.img"
    with out.open("wb") as o:
        store.restore_disk("VM", "huge", "D", o)
    assert out.stat().st_size == 2 << 40
    assert out.stat().st_blocks * 512 < 64 << 20  # restored sparse
    with image.open("rb") as a, out.open("rb") as b:
        for offset in (0, 1 << 40, (2 << 40) - (4 << 20), 5 << 30):
            a.seek(offset)
            b.seek(offset)
            assert a.read(2 << 20) == b.read(2 << 20)
