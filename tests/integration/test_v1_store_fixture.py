"""A store written by the release before segment manifests (0aa5aa9, v1 block
maps; tests/fixtures/v1-store) opens, verifies, restores every checkpoint, and
takes v2 captures, deletes with merges, gc and export on top."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import pytest

from ckpt import Store
from ckpt.storage.vhdx_files import open_vhdx_chain

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v1-store"
BLOCK = 4096


@pytest.fixture
def old(tmp_path: Path) -> Store:
    shutil.copytree(FIXTURE / "store", tmp_path / "store")
    return Store.open(tmp_path / "store", actor="t")


def _expected(name: str) -> tuple[str, int]:
    digest, size = (FIXTURE / f"{name}.sha256").read_text().split()
    return digest, int(size)


def _restore(store: Store, point: str) -> bytes:
    out = io.BytesIO()
    store.restore_disk("old", point, "D", out)
    return out.getvalue()


def _digest(data: bytes) -> tuple[str, int]:
    return hashlib.sha256(data).hexdigest(), len(data)


def test_every_checkpoint_of_a_v1_store_restores_and_verifies(old: Store) -> None:
    with old:
        assert old.verify().ok
        for name in ("a", "b", "d", "e"):
            assert _digest(_restore(old, name)) == _expected(name), name
        memory = io.BytesIO()
        old.restore_memory("old", "e", memory)
        assert _digest(memory.getvalue()) == _expected("memory-e")


def test_a_v1_store_takes_v2_captures_deletes_gc_and_export(old: Store, tmp_path: Path) -> None:
    with old:
        now = _restore(old, "e")
        image = tmp_path / "d.raw"
        image.write_bytes(now)
        with image.open("r+b") as f:  # a --changed-blocks capture over the v1 chain
            f.seek(7 * BLOCK)
            f.write(b"v2" * (BLOCK // 2))
        old.create_checkpoint(
            "old", "f", disks={"D": image}, changed_blocks={"D": [(7 * BLOCK, BLOCK)]}
        )
        f_bytes = image.read_bytes()
        with image.open("r+b") as f:  # and a full scan over that
            f.seek(63 * BLOCK)
            f.write(b"end!" * (BLOCK // 4))
        old.create_checkpoint("old", "g", disks={"D": image})
        g_bytes = image.read_bytes()
        assert _restore(old, "f") == f_bytes and _restore(old, "g") == g_bytes
        old.delete_checkpoint("old", "d")
        old.delete_checkpoint("old", "f")  # v1 and v2 contents merged, oldest first
        old.gc(grace_seconds=0)
        assert old.verify().ok
        for name in ("a", "b", "e"):
            assert _digest(_restore(old, name)) == _expected(name), name
        assert _restore(old, "g") == g_bytes
        old.export("old", "g", tmp_path / "x")
        views = []
        for path in (tmp_path / "x" / "old" / "Virtual Hard Disks").iterdir():
            vhdx, files, _ = open_vhdx_chain(path)
            try:
                views.append((len(files), vhdx.read(0, vhdx.virtual_size)))
            finally:
                for f in files:
                    f.close()
        assert max(views)[1] == g_bytes
