"""Segment manifests through the store: deep chains restore exactly, a CBT
capture costs O(changed segments), and stores of v1 manifests (today's
release) keep working under v2 captures, deletes with merges, gc and export."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest
from legacy_v1 import writing_v1

import ckpt.storage.capture as capture_module
from ckpt import CheckpointType, DiskFormat, Store
from ckpt.storage import segments
from ckpt.storage.chunks.store import ChunkStore
from ckpt.storage.vhdx_files import open_vhdx_chain

BLOCK = 4096
SEG = segments.SPAN * BLOCK  # 16 MiB of disk per segment


def _store(tmp_path: Path) -> Store:
    store = Store.init(tmp_path / "s", actor="t")
    store.register_vm("VM", [("D", DiskFormat.VHDX)], "9.0", CheckpointType.STANDARD)
    return store


def _restore(store: Store, point: str) -> bytes:
    out = io.BytesIO()
    store.restore_disk("VM", point, "D", out)
    return out.getvalue()


def _poke(image: Path, offset: int, data: bytes) -> None:
    with image.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def _exported(store: Store, point: str, folder: Path, flatten: bool = False) -> bytes:
    store.export("VM", point, folder, flatten=flatten)
    views = []
    for path in (folder / "VM" / "Virtual Hard Disks").iterdir():
        vhdx, files, _ = open_vhdx_chain(path)
        try:
            views.append((len(files), vhdx.read(0, vhdx.virtual_size)))
        finally:
            for f in files:
                f.close()
    return max(views)[1]


def test_a_50_layer_chain_restores_every_point_byte_for_byte(tmp_path: Path) -> None:
    """A sparse disk of 2.5 segments, changed a little 50 times (CBT and full
    scans alternating): every checkpoint restores exactly. 50 is the deepest chain
    of checkpoints a VM can have (Hyper-V's limit of 50 per VM, enforced)."""
    rng = random.Random(13)
    size = 2 * SEG + SEG // 2
    image = tmp_path / "d.raw"
    with image.open("wb") as f:
        f.truncate(size)
    model = bytearray(size)
    expected: dict[str, bytes] = {}
    with _store(tmp_path) as store:
        for n in range(50):
            extents = []
            for _ in range(3):
                offset = rng.randrange(0, size // BLOCK) * BLOCK
                data = rng.randbytes(BLOCK) if rng.random() < 0.8 else bytes(BLOCK)
                _poke(image, offset, data)
                model[offset : offset + BLOCK] = data
                extents.append((offset, BLOCK))
            store.create_checkpoint(
                "VM", f"c{n}", disks={"D": image},
                changed_blocks={"D": extents} if n % 2 and n > 0 else None,
            )  # fmt: skip
            expected[f"c{n}"] = bytes(model)
        assert len(store.chain("VM", "c49")["D"]) == 50  # the base and 49 AVHDX layers
        for name in ("c0", "c1", "c25", "c48", "c49"):
            assert _restore(store, name) == expected[name]
        assert store.verify().ok


def test_a_changed_blocks_capture_reads_and_writes_only_the_touched_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 GiB sparse, one block of data in each of its 256 segments; a checkpoint
    naming one changed block reads 4 KiB of the image and a handful of chunks,
    and stores four: the block, its segment, the top-list piece and the root."""
    size = 4 << 30
    image = tmp_path / "big.raw"
    with image.open("wb") as f:
        f.truncate(size)
    rng = random.Random(4)
    for k in range(size // SEG):
        _poke(image, k * SEG + 8 * BLOCK, rng.randbytes(BLOCK))
    with _store(tmp_path) as store:
        store.create_checkpoint("VM", "base", disks={"D": image})
        before = store.stats()["total"]["chunks"]
        read: list[int] = []
        gets: list[int] = []
        real_read, real_get, real_many = capture_module._read, ChunkStore.get, ChunkStore.get_many
        monkeypatch.setattr(
            capture_module, "_read", lambda s, o, n: read.append(n) or real_read(s, o, n)
        )
        monkeypatch.setattr(ChunkStore, "get", lambda s, c: gets.append(1) or real_get(s, c))
        monkeypatch.setattr(
            ChunkStore, "get_many", lambda s, ids: gets.append(len(ids)) or real_many(s, ids)
        )
        changed = 100 * SEG + 3 * BLOCK
        _poke(image, changed, b"new!" * 1024)
        store.create_checkpoint(
            "VM", "cbt", disks={"D": image}, changed_blocks={"D": [(changed, BLOCK)]}
        )
        monkeypatch.undo()
        assert sum(read) == BLOCK
        assert sum(gets) <= 4  # the chain's root, its top-list piece, the one segment
        assert store.stats()["total"]["chunks"] - before == 4
        got = io.BytesIO()
        store.restore_disk("VM", "cbt", "D", got)
        with image.open("rb") as f:
            assert got.getvalue() == f.read()


def test_a_store_of_v1_manifests_keeps_working_under_v2_captures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints written as today's release writes them (v1 diffs, a shrink
    among them), then v2 captures on top, a delete that merges v1 and v2 layers,
    gc, export: every point restores exactly and verify stays clean."""
    rng = random.Random(11)
    image = tmp_path / "d.raw"
    size = SEG + 64 * BLOCK
    image.write_bytes(rng.randbytes(size))
    expected: dict[str, bytes] = {}
    with _store(tmp_path) as store:
        with monkeypatch.context() as m, writing_v1(m):
            store.create_checkpoint("VM", "v1a", disks={"D": image})
            expected["v1a"] = image.read_bytes()
            _poke(image, 5 * BLOCK, rng.randbytes(BLOCK))
            store.create_checkpoint("VM", "v1b", disks={"D": image})
            expected["v1b"] = image.read_bytes()
            with image.open("r+b") as f:  # shrink into the first segment
                f.truncate(SEG - 8 * BLOCK)
            store.create_checkpoint("VM", "v1c", disks={"D": image})
            expected["v1c"] = image.read_bytes()
        with image.open("r+b") as f:  # regrow: the regrown part reads zeros
            f.truncate(size)
        store.create_checkpoint("VM", "v2a", disks={"D": image})
        expected["v2a"] = image.read_bytes()
        assert expected["v2a"][SEG - 8 * BLOCK :] == bytes(size - SEG + 8 * BLOCK)
        _poke(image, SEG + 3 * BLOCK, rng.randbytes(BLOCK))
        store.create_checkpoint(
            "VM", "v2b", disks={"D": image}, changed_blocks={"D": [(SEG + 3 * BLOCK, BLOCK)]}
        )
        expected["v2b"] = image.read_bytes()
        for name, data in expected.items():
            assert _restore(store, name) == data, name
        # deleting v1c and v2a merges their layers (v1 + v2 contents, oldest first)
        store.delete_checkpoint("VM", "v1c")
        store.delete_checkpoint("VM", "v2a")
        for name in ("v1a", "v1b", "v2b"):
            assert _restore(store, name) == expected[name], name
        assert store.verify().ok
        store.gc(grace_seconds=0)
        assert store.verify().ok
        for name in ("v1a", "v1b", "v2b"):
            assert _restore(store, name) == expected[name], name
        assert _exported(store, "v2b", tmp_path / "e1") == expected["v2b"]
        assert _exported(store, "v2b", tmp_path / "e2", flatten=True) == expected["v2b"]
        assert _exported(store, "v1b", tmp_path / "e3") == expected["v1b"]


def test_memory_files_are_captured_and_restored_as_segment_manifests(tmp_path: Path) -> None:
    from ckpt import FileRole

    memory = random.Random(5).randbytes(3 * BLOCK) + bytes(SEG) + b"end"
    path = tmp_path / "m.bin"
    path.write_bytes(memory)
    disk = tmp_path / "d.raw"
    disk.write_bytes(os.urandom(BLOCK))
    with _store(tmp_path) as store:
        store.start_vm("VM")
        store.create_checkpoint("VM", "m", disks={"D": disk}, files={FileRole.MEMORY: path})
        out = io.BytesIO()
        store.restore_memory("VM", "m", out)
        assert out.getvalue() == memory
