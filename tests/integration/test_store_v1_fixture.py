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
from collections.abc import Callable
from pathlib import Path

import pytest

from ckpt import FileRole, Store, StoreCorrupt

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


def _pack_versions(store_dir: Path) -> list[int]:
    return sorted(
        int.from_bytes(p.read_bytes()[8:12], "little")
        for p in (store_dir / "chunks" / "packs").rglob("*.pack")
    )


def test_a_v1_store_keeps_getting_v1_packs_until_upgraded(v1_store: Path) -> None:
    with Store.open(v1_store) as store:
        img = v1_store.parent / "new.raw"
        img.write_bytes(bytes(range(256)) * 16 * 64)
        store.create_checkpoint("fx", "more", disks={"Sys": img}, files={FileRole.MEMORY: img})
    assert set(_pack_versions(v1_store)) == {1}


def test_upgrade_converts_every_pack_then_restores_identically_and_verifies_clean(
    v1_store: Path,
) -> None:
    labels: list[tuple[str, int]] = []
    done: list[int] = []

    def progress(label: str, total: int) -> Callable[[int], None]:
        labels.append((label, total))
        return done.append

    with Store.open(v1_store) as store:
        assert store.info()["chunk_format"] == 1
        report = store.upgrade(progress)
        assert store.info()["chunk_format"] == 2
        assert (report.format_before, report.format) == (1, 2)
        assert report.converted_packs == 4 and report.remaining == 0 and not report.problems
        assert labels and sum(done) == labels[0][1] == report.bytes_before
        assert _restored(store) == EXPECTED
        assert store.verify().ok
        again = store.upgrade()
        assert (again.format_before, again.converted_packs, again.remaining) == (2, 0, 0)
    assert set(_pack_versions(v1_store)) == {2}
    assert json.loads((v1_store / "chunks" / "FORMAT").read_text()) == {"packs": 2}
    with Store.open(v1_store) as store:
        assert _restored(store) == EXPECTED


def test_a_format_newer_than_this_release_is_refused_naming_both(v1_store: Path) -> None:
    (v1_store / "chunks" / "FORMAT").write_text('{"packs": 7}\n')
    with pytest.raises(
        StoreCorrupt, match=r"pack format 7; this ckpt reads and writes formats 1 to 2"
    ):
        Store.open(v1_store)
