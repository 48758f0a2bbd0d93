"""What the primary's gc or upgrade did between two runs reaches the replica, and
``--follow`` keeps a replica up to date until SIGTERM.

Terms (tests/replication_support.py): *primary*, *target*, *point*. A
*purge* is ``forget`` giving a point's content up; ``gc --grace 0`` then
reclaims it: packs wholly dead are removed, partly live ones *repacked* (their
live chunks copied into new packs, the old ones removed).
"""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from replication_support import At, Target, assert_replica_of, packs, primary

PURGED = 40  # ckpt.PointPurged


def test_packs_the_primarys_gc_removed_or_repacked_go_from_the_replica_too(
    tmp_path: Path, scratch: Path
) -> None:
    p = primary(tmp_path / "primary", scratch)
    # b3 rewrites the stretch b2 wrote: once b2 is purged its pack is wholly dead;
    # b1's (the whole first image) stays partly live, so it is repacked.
    for name, stretch in (("b1", 0), ("b2", 1), ("b3", 1)):
        p.sync(name, at=stretch)
    p.checkpoint("cp", at=2)
    p.cli.ok("checkpoint", "delete", "web", "cp")
    del p.expected["cp"]
    p.sync("b4", at=3)
    p.sync("b5", at=4)
    target = Target.store(tmp_path / "replica")
    replica = target.cli()
    position = p.replicate(target)["position"]

    plan = p.cli.json("forget", "web", "--keep-last", "2")
    purged = {x["name"] for x in plan["vms"][0]["points"] if x["action"] == "purge"}
    assert purged == {"b1", "b2", "b3", "cp"}
    purged.remove("cp")  # deleted from the tree: restored only --at a position before
    before = packs(p.backend())
    gc = p.cli.json("gc", "--grace", "0")
    after = packs(p.backend())
    assert gc["deleted_packs"] >= 1 and gc["repacked_packs"] >= 1 and after - before, gc
    for name in purged:
        del p.expected[name]

    report = p.replicate(target)
    assert report["removed_packs"] == len(before - after)
    assert report["packs"] == len(after - before)
    assert report["events"] == p.position() - position  # content-purged, -reclaimed
    assert packs(target.backend()) == after
    assert_replica_of(p, replica, scratch)  # verifies clean, restores b4, b5
    for name in purged:
        err = replica.fails(PURGED, "restore", "web", name, "--disk", "D", "-o", scratch / "x")
        assert "was purged at position" in err


def test_a_primary_upgraded_to_grouped_packs_makes_its_replica_grouped_too(
    tmp_path: Path, scratch: Path
) -> None:
    """``ckpt upgrade`` rewrites every version-1 pack as a version-2 one and records
    format 2 (``chunks/FORMAT``); the replica gets the packs, drops the old ones and
    records the format too (it stayed at format 1 holding version-2 packs, and
    would have written version-1 packs once promoted)."""
    fixture = Path(__file__).parent.parent / "fixtures" / "store-v1"
    shutil.copytree(fixture, tmp_path / "primary")
    p, replica = At(["--store", tmp_path / "primary"]), At(["--store", tmp_path / "replica"])
    target = Target.store(tmp_path / "replica")
    p.json("replicate", *target.to)
    assert replica.json("info")["chunk_format"] == 1
    p.ok("upgrade")
    old = packs(target.backend())
    report = p.json("replicate", *target.to)
    upgraded = packs(Target.store(tmp_path / "primary").backend())
    assert report["removed_packs"] == len(old) and report["packs"] == len(upgraded)
    assert packs(target.backend()) == upgraded and not old & upgraded
    assert replica.json("info")["chunk_format"] == 2
    assert replica.json("verify")["ok"] and replica.json("log") == p.json("log")
    for name in ("base", "third", "branch"):
        for side, where in ((p, "a"), (replica, "b")):
            side.ok("restore", "fx", name, "--disk", "Sys", "-o", scratch / where)
        assert (scratch / "a").read_bytes() == (scratch / "b").read_bytes()
        (scratch / "a").unlink()
        (scratch / "b").unlink()


def _lines(stream: object) -> queue.Queue[str]:
    """The lines of ``stream`` as they come, read on a thread (no select on pipes
    of a test runner that may not be POSIX)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_follow_picks_up_a_new_checkpoint_within_seconds_and_ends_cleanly_on_sigterm(
    tmp_path: Path, scratch: Path
) -> None:
    p = primary(tmp_path / "primary", scratch)
    p.checkpoint("c1")
    target = Target.store(tmp_path / "replica")
    command = [
        sys.executable, "-m", "ckpt", "--store", str(p.path), "--actor", "t",
        "replicate", *target.to, "--follow", "--interval", "0.2", "--json",
    ]  # fmt: skip
    # Run outside the work tree: there ``ckpt`` would be the bare source folder.
    follower = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        lines = _lines(follower.stdout)
        try:
            first = json.loads(lines.get(timeout=30))  # the interpreter's start, then a copy
        except queue.Empty:
            follower.kill()
            raise AssertionError(follower.communicate()[1]) from None
        assert first["first_run"] is True and first["position"] == p.position()
        p.checkpoint("c2")
        wanted, began = p.position(), time.monotonic()
        while True:
            report = json.loads(lines.get(timeout=10))
            if report["position"] == wanted:
                break
            assert report["events"] == 0 and report["first_run"] is False
        assert time.monotonic() - began < 5
        assert report["events"] == 2 and report["packs"] == 1
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(timeout=10) == 0
        assert follower.stderr is not None and "Traceback" not in follower.stderr.read()
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert_replica_of(p, target.cli(), scratch)
