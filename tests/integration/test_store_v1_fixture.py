"""A store written by the format-1 release (0aa5aa9) still opens, restores and verifies.

The fixture ``tests/fixtures/store-v1/`` was made by ``tests/fixtures/make_v1_store.py``
with that release: v1 packs and index files, no ``chunks/FORMAT``. Each test works
on a copy, so the fixture itself is never changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest

from ckpt import Store

FIXTURE = Path(__file__).parent.parent / "fixtures" / "store-v1"
EXPECTED = json.loads((FIXTURE.parent / "store-v1-expected.json").read_text())["checkpoints"]


@pytest.fixture
def v1_store(tmp_path: Path) -> Path:
    target = tmp_path / "store"
    shutil.copytree(FIXTURE, target)
    return target


def _restored(store: Store) -> dict[str, dict[str, str]]:
    points: dict[str, dict[str, str]] = {}
    for cp in store.checkpoints("fx"):
        entry: dict[str, str] = {}
        for disk in ("Sys", "Data"):
            out = io.BytesIO()
            store.restore_disk("fx", cp.name, disk, out)
            entry[disk] = hashlib.sha256(out.getvalue()).hexdigest()
        out = io.BytesIO()
        store.restore_memory("fx", cp.name, out)
        entry["memory"] = hashlib.sha256(out.getvalue()).hexdigest()
        points[cp.name] = entry
    return points


def test_the_fixture_holds_only_version_1_packs_and_no_format_marker() -> None:
    packs = list((FIXTURE / "chunks" / "packs").rglob("*.pack"))
    assert packs
    for p in packs:
        data = p.read_bytes()
        assert data[:8] == b"CKPTPACK" and int.from_bytes(data[8:12], "little") == 1
    assert not (FIXTURE / "chunks" / "FORMAT").exists()


def test_a_v1_store_restores_every_checkpoint_byte_identical_and_verifies_clean(
    v1_store: Path,
) -> None:
    with Store.open(v1_store) as store:
        assert _restored(store) == EXPECTED
        assert store.verify().ok
