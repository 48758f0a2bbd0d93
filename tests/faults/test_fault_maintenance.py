"""Kill points inside store maintenance: ``gc --grace 0`` and ``projections rebuild``.

gc deletes index files before packs and makes repacked copies durable before it
deletes anything (storage/chunks/gc.py); a rebuild empties the read models and
folds the log again in pages (ckpt/read_model_updates.py). Killed anywhere, neither may
lose a chunk an event references, and the next command must find read models
equal to a rebuild.
"""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import ckpt
from ckpt.domain import Origin

from ._harness import BLOCK, Harness, Image, MiB, Point

GC_KILLS = 7
REMOTE_GC_KILLS = 4  # as REMOTE_CAPTURE_KILLS (test_fault_capture.py)
REBUILD_KILLS = 6
BULK_EVENTS = 6000  # more than one rebuild page (5,000 events)


def test_gc_killed_anywhere_loses_nothing_referenced(
    tmp_path: Path, scratch: Path, backends: tuple[str, str, tuple[str, ...]]
) -> None:
    _, suffix, options = backends
    h = Harness(f"gc{suffix}", tmp_path, scratch, options)
    h.init()
    h.ok("vm", "add", "g", "--disk", "D")
    disk = Image(scratch / "d.raw", 8 * MiB, h.rng)
    number = 0

    def garbage_then_capture() -> None:
        """A capture that died after its chunks were flushed and before its event
        was saved, then the same capture again: the retry finds most of its
        chunks stored (dedup) and references them, the rest stays garbage in the
        same pack, which gc must repack, not delete."""
        nonlocal number
        new_blocks = disk.mutate(h.rng.randrange(64, 256), h.rng.randrange(0, 2) * MiB)
        with ckpt.Store.open(h.store) as store, store.chunks.writer() as writer:
            for block in new_blocks:
                writer.add(block)
            for _ in range(h.rng.randrange(64, 512)):
                writer.add(h.rng.randbytes(BLOCK))
        name = f"c{number}"
        number += 1
        h.ok("checkpoint", "create", "g", name, "--disk", f"D={disk.path}")
        h.ledger[name] = Point("g", name, {"D": disk.sha})
        if len(h.ledger) > 4:  # a merge now and then (its chunks stay referenced)
            oldest = min(h.ledger, key=lambda n: int(n[1:]))
            h.ok("checkpoint", "delete", "g", oldest)
            del h.ledger[oldest]

    def garbage_left() -> int:
        return int(h.json("stats")["total"]["chunks"]) - int(h.json("verify")["referenced"])

    garbage_then_capture()
    garbage_then_capture()
    assert garbage_left() > 0
    typical = h.timed("gc", "--grace", "0")
    assert garbage_left() == 0, "an uncut gc --grace 0 left unreferenced chunks"
    h.check()

    for _ in range(REMOTE_GC_KILLS if options else GC_KILLS):
        garbage_then_capture()
        outcome = h.kill_point("gc", "--grace", "0", typical=typical)
        h.result(outcome, "done" if garbage_left() == 0 else "not done")
        h.check()

    h.where = f"[{h.kind}: an uncut gc --grace 0 after the kill points]"
    h.ok("gc", "--grace", "0")
    assert garbage_left() == 0, f"{h.where} unreferenced chunks survived"
    h.check()
    h.final_check()


def _read_model_progress(db: Path) -> str:
    """Where a killed rebuild stopped, from the tables (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        last = c.execute("SELECT MAX(rowid) FROM stored_events").fetchone()[0]
        rows = c.execute("SELECT COUNT(*) FROM ckpt_audit").fetchone()[0]
        tracked = c.execute(
            "SELECT notification_id FROM tracking WHERE application_name = 'ckpt-read-models'"
        ).fetchone()
    if tracked is not None and tracked[0] == last and rows == last:
        return "done"
    if tracked is None:
        return "killed while emptied" if rows == 0 else "killed part-folded"
    return "not done"


def test_rebuild_killed_anywhere_is_redone(tmp_path: Path, scratch: Path) -> None:
    h = Harness("projections rebuild", tmp_path, scratch)
    h.ok("init")
    h.ok("vm", "add", "rb1", "--disk", "D")
    h.ok("vm", "add", "rb2", "--disk", "D", "--disk", "E")
    disk = Image(scratch / "d.raw", 4 * MiB, h.rng)
    for i in range(3):  # captures: rows in ckpt_captures, which verify and gc read
        disk.mutate(64)
        h.ok("checkpoint", "create", "rb1", f"c{i}", "--disk", f"D={disk.path}")
        h.ledger[f"c{i}"] = Point("rb1", f"c{i}", {"D": disk.sha})
    h.ok("checkpoint", "create", "rb2", "renamed")
    # Thousands of events in one transaction, straight through the aggregate: the
    # commands would take 2 ms each. They are ordinary CheckpointRenamed events.
    with ckpt.Store.open(h.store, actor="bulk") as store:
        vm = store.vm("rb2")
        (cp,) = vm.checkpoints.values()
        for i in range(BULK_EVENTS):
            origin = Origin("bulk", "fault-test", datetime.now(UTC), uuid4())
            vm.rename_checkpoint(origin, cp.id, f"renamed-{i}")
        store.app.save(vm)
    typical = h.timed("projections", "rebuild")
    h.check()

    for i in range(REBUILD_KILLS):
        # a few events after the last rebuild, for the next catch-up to fold
        h.ok("checkpoint", "rename", "rb2", f"renamed-{BULK_EVENTS - 1 + i}", f"renamed-x{i}")
        h.ok("checkpoint", "rename", "rb2", f"renamed-x{i}", f"renamed-{BULK_EVENTS + i}")
        outcome = h.kill_point("projections", "rebuild", typical=typical)
        progress = _read_model_progress(h.store / "events.sqlite")
        print(f"{h.where} left the read models {progress}")
        h.result(outcome, progress)
        h.check()
    h.final_check()
