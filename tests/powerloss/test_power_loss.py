"""Power cuts anywhere in capture, sync, delete with merge, gc, copy, upgrade and
retention (forget, forget --undo, the gc that reclaims a purge): every command
that returned success is still there, byte for byte (less what a purge in the
cut log gave up), and the store verifies clean (see _model.py for what a cut
keeps, _scenario.py for the checks)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import ckpt
from ckpt.storage.chunks import backend
from ckpt.storage.chunks.backend import LocalChunkBackend

from ._scenario import BLOCK, Expected, MiB, Scenario

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "store-v1"


def lifecycle(root: Path, scratch: Path, kind: str = "lifecycle") -> Scenario:
    """init, two captures with memory, a backup point, a delete that merges, gc
    and a copy to a second store directory, all recorded."""
    s = Scenario(kind, root, scratch)
    s.start()
    disk = s.image("d.raw", 1 * MiB)
    memory = s.image("m.raw", 256 * 1024, fill=0.3)
    d, m = str(scratch / "d.raw"), str(scratch / "m.raw")
    s.ok("store", "init")
    s.ok("store", "vm", "add", "v", "--disk", "D", "--checkpoint-type", "standard")
    s.ok("store", "vm", "start", "v")
    s.ok("store", "checkpoint", "create", "v", "c1", "--disk", f"D={d}", "--memory", m)
    s.expect("store", "v", "c1", {"D": disk, "memory": memory})
    s.mutate("d.raw", disk, 40)
    s.ok("store", "checkpoint", "create", "v", "c2", "--disk", f"D={d}")
    s.expect("store", "v", "c2", {"D": disk})
    s.mutate("d.raw", disk, 40)
    s.ok("store", "sync", "v", "--name", "b1", "--disk", f"D={d}")
    s.expect("store", "v", "b1", {"D": disk})
    s.mutate("d.raw", disk, 40)
    s.ok("store", "checkpoint", "create", "v", "c3", "--disk", f"D={d}")
    s.expect("store", "v", "c3", {"D": disk})
    s.deleting("store", "v", "c2")
    s.ok("store", "checkpoint", "delete", "v", "c2")  # c3's layer merges into c2's parent
    s.ok("store", "gc", "--grace", "0")
    s.ok("store", "copy", "--to-store", str(root / "copy"))
    for e in list(s.ledger):
        if e.store == "store" and e.until is None:
            s.ledger.append(Expected("copy", e.vm, e.name, e.images, s.stores["copy"]))
    return s


def test_power_cut_anywhere_in_the_lifecycle_loses_nothing_returned(
    root: Path, scratch: Path
) -> None:
    s = lifecycle(root, scratch)
    assert s.model is not None and s.model.syncs > 50, s.model and s.model.syncs
    assert s.check_points() >= 120


def branches(root: Path, scratch: Path, kind: str = "branches") -> Scenario:
    """An encrypted store, two disks, a capture of changed extents only, chunks
    written and never committed (a capture that died), apply, a branch, delete
    of a subtree, gc that deletes and repacks, verify --repair and a rebuild of
    the read models, all recorded."""
    s = Scenario(kind, root, scratch)
    s.key_file = scratch / "key"
    s.key_file.write_bytes(s.rng.randbytes(32))
    s.start()
    a, b = s.image("a.raw", 768 * 1024), s.image("b.raw", 512 * 1024, fill=0.2)
    pa, pb = str(scratch / "a.raw"), str(scratch / "b.raw")
    s.ok("store", "init", "--encrypt")
    s.ok("store", "vm", "add", "w", "--disk", "A", "--disk", "B")
    s.ok("store", "checkpoint", "create", "w", "c1", "--disk", f"A={pa}", "--disk", f"B={pb}")
    s.expect("store", "w", "c1", {"A": a, "B": b})
    at_c1 = bytearray(a)
    offset, extent = 64 * BLOCK, s.rng.randbytes(8 * BLOCK)

    def garbage(opened: ckpt.Store) -> None:
        """A capture that died after its pack was written: the retry (c2) finds
        8 of its blocks there, the other 300 stay garbage in the same pack, so
        gc must repack it, not delete it."""
        with opened.chunks.writer() as writer:
            for i in range(0, len(extent), BLOCK):
                writer.add(extent[i : i + BLOCK])
            for _ in range(300):
                writer.add(s.rng.randbytes(BLOCK))

    def dead(opened: ckpt.Store) -> None:
        with opened.chunks.writer() as writer:  # a pack no event will reference
            for _ in range(100):
                writer.add(s.rng.randbytes(BLOCK))

    s.api("chunks written, never committed", garbage)
    s.api("a pack of garbage only", dead)
    a[offset : offset + 8 * BLOCK] = extent
    (scratch / "a.raw").write_bytes(a)
    (scratch / "extents").write_text(f"{offset} {8 * BLOCK}\n")
    extents = f"A={scratch / 'extents'}"
    s.ok("store", "checkpoint", "create", "w", "c2", "--disk", f"A={pa}", "--changed-blocks",
         extents, "--disk", f"B={pb}")  # fmt: skip
    s.expect("store", "w", "c2", {"A": a, "B": b})
    s.ok("store", "checkpoint", "apply", "w", "c1")
    a = at_c1
    s.mutate("a.raw", a, 30)
    s.ok("store", "checkpoint", "create", "w", "c3", "--disk", f"A={pa}", "--disk", f"B={pb}")
    s.expect("store", "w", "c3", {"A": a, "B": b})
    s.mutate("a.raw", a, 30)
    s.mutate("b.raw", b, 10)
    s.ok("store", "checkpoint", "create", "w", "c4", "--disk", f"A={pa}", "--disk", f"B={pb}")
    s.expect("store", "w", "c4", {"A": a, "B": b})
    s.deleting("store", "w", "c3")
    s.deleting("store", "w", "c4")
    s.ok("store", "checkpoint", "delete", "w", "c3", "--subtree")
    s.mark("gc")
    report = json.loads(s.ok("store", "gc", "--grace", "0", "--json"))
    assert report["repacked_packs"] >= 1 and report["deleted_packs"] >= 1, report
    s.ok("store", "verify", "--repair")
    s.ok("store", "projections", "rebuild")
    return s


def test_power_cut_anywhere_with_branches_gc_and_repair_loses_nothing(
    root: Path, scratch: Path
) -> None:
    s = branches(root, scratch)
    assert s.check_points() >= 80


def test_power_cut_anywhere_in_upgrade_loses_nothing(root: Path, scratch: Path) -> None:
    shutil.copytree(FIXTURE, root / "store")
    s = Scenario("upgrade", root, scratch)
    s.start()
    expected = json.loads((FIXTURE.parent / "store-v1-expected.json").read_text())
    for name, images in expected["checkpoints"].items():
        s.ledger.append(Expected("store", "fx", name, images, 0))
    s.stores["store"] = 0
    s.ok("store", "upgrade")
    assert s.check_points() >= 30


def retention(root: Path, scratch: Path, kind: str = "retention") -> Scenario:
    """Backup points and a checkpoint deleted (its content kept, restored ``at``
    a position before its delete), forget (a purge), forget --undo, another
    forget that purges more, gc --grace 0 that reclaims it, all recorded."""
    s = Scenario(kind, root, scratch)
    s.start()
    disk = s.image("d.raw", 512 * 1024)
    d = f"D={scratch / 'd.raw'}"
    s.ok("store", "init")
    s.ok("store", "vm", "add", "v", "--disk", "D")

    def sync(name: str) -> None:
        s.mutate("d.raw", disk, 24)
        s.ok("store", "sync", "v", "--name", name, "--disk", d)
        s.expect("store", "v", name, {"D": disk})

    sync("b1")
    sync("b2")
    s.mutate("d.raw", disk, 24)
    s.ok("store", "checkpoint", "create", "v", "c1", "--disk", d)
    s.expect("store", "v", "c1", {"D": disk})
    c1 = s.ledger[-1]
    (at, _) = s.last_logged("store") or (0, "")
    sync("b3")
    s.deleting("store", "v", "c1")
    s.ledger.append(Expected("store", "v", "c1", c1.images, c1.since, at=at))
    s.ok("store", "checkpoint", "delete", "v", "c1")
    sync("b4")
    s.mark("forget")
    first = s.forgot("store", s.ok("store", "forget", "v", "--keep-last", "2", "--json"))
    assert s.purges[-1][2] == {"b1", "b2", "c1"}, s.purges
    s.ok("store", "forget", "--undo", str(first["v"]))
    s.forgot("store", s.ok("store", "forget", "v", "--keep-last", "1", "--json"))
    assert s.purges[-1][2] == {"b1", "b2", "c1", "b3"}, s.purges
    report = json.loads(s.ok("store", "gc", "--grace", "0", "--json"))
    assert report["reclaimed_purges"] and report["freed_bytes"] > 0, report
    return s


def test_power_cut_anywhere_in_forget_undo_and_gc_loses_nothing_retained(
    root: Path, scratch: Path
) -> None:
    """Checked from the first forget on: the crash points before it (sync,
    checkpoint create and delete) are the lifecycle scenario's. forget and
    undo sync no file (one SQLite transaction each: a cut keeps it whole or
    not at all), so their states are the one after each returned; gc's are
    where the purge's reclaim and the deletes meet a cut."""
    s = retention(root, scratch)
    assert s.check_points(start=s.marks["forget"]) >= 30


def _put_without_the_directory_sync(self: LocalChunkBackend, name: str, data: bytes) -> None:
    """``put`` renames the pack into place but does not sync its directory."""
    if not name.startswith("packs/"):
        return REAL_PUT(self, name, data)
    path = self.root.joinpath(*name.split("/"))
    backend.make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # ... and no fsync_dir(path.parent)
    return None


def _put_without_the_file_sync(self: LocalChunkBackend, name: str, data: bytes) -> None:
    """``put`` renames a file into place whose bytes were never synced."""
    path = self.root.joinpath(*name.split("/"))
    backend.make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "xb") as f:
        f.write(data)  # ... and no fsync
    os.replace(tmp, path)
    backend.fsync_dir(path.parent)


def _delete_without_the_directory_sync(self: LocalChunkBackend, name: str) -> None:
    """``delete`` unlinks but does not sync the directory: gc's order (index
    file, then pack) no longer survives a cut."""
    self.root.joinpath(*name.split("/")).unlink()


REAL_PUT = LocalChunkBackend.put
PLANTS = {
    "no directory sync after a pack rename": (
        "put",
        _put_without_the_directory_sync,
        lifecycle,
        "",
    ),
    "no file sync before a rename": ("put", _put_without_the_file_sync, lifecycle, ""),
    "no directory sync after a delete": (
        "delete",
        _delete_without_the_directory_sync,
        branches,
        "gc",
    ),
}


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_a_planted_missing_sync_is_caught(
    plant: str, root: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The suite's own canaries: plant a missing sync (the first is the one the
    issue names) and the suite must fail, naming the seed, the crash point and
    what is wrong. Here every crash point is also checked with each of its
    unsynced directories alone as at the cut, so the catch does not hang on
    the seed's coin."""
    method, planted, scenario, mark = PLANTS[plant]
    monkeypatch.setattr(LocalChunkBackend, method, planted)
    s = scenario(root, scratch, kind=f"planted bug: {plant}")
    with pytest.raises(AssertionError) as caught:
        s.check_points(each_directory=True, start=s.marks.get(mark, 0))
    message = str(caught.value)
    assert "CKPT_POWER_SEED=" in message and "crash point #" in message, message
    assert any(what in message for what in ("does not verify", "does not restore")), message
