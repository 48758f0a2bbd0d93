"""``ckpt replicate``: a replica on other backends follows its primary run by run, and a
log that diverged (on either side) is reported at its position, with nothing appended.

Terms (tests/replication_support.py): the *primary* is driven through the CLI
in-process; its *replica* is a store directory or a pair of URLs. *New stored
bytes* of a run are what ``ckpt stats`` counts as stored that the previous run
did not see: the bytes the run may send, with 10% for pack headers and index
files.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from backends import postgres_url, s3_url
from conftest import Backends
from replication_support import At, Primary, Target, assert_replica_of, files, packs, primary

from ckpt.storage import ZstdCompressor

DIVERGED = 42  # ckpt.ReplicaDiverged
MISMATCH = 35  # ckpt.StoreMismatch: not a replica of this primary


def _other_side(tmp_path: Path, given: dict[str, str]) -> Target:
    """The replica's backends: each of the four combinations of the primary
    replicates to the opposite one (embedded <-> PostgreSQL + S3; PostgreSQL +
    local <-> SQLite + S3), so each backend is on each side once."""
    pg, s3 = "events" in given, "chunks" in given
    if not pg and not s3:
        return Target.urls(postgres_url(), s3_url())
    if pg and s3:
        return Target.store(tmp_path / "replica")
    if pg:
        return Target.urls(f"sqlite://{tmp_path / 'replica.sqlite'}", s3_url())
    return Target.urls(postgres_url(), f"file://{tmp_path / 'replica-chunks'}")


def test_a_replica_on_the_other_backends_gets_only_what_is_new_on_each_run(
    backends: Backends, tmp_path: Path, scratch: Path
) -> None:
    given = backends()
    p = primary(tmp_path / "primary", scratch, **given)
    target = _other_side(tmp_path, given)
    replica = target.cli()
    p.checkpoint("c1")
    p.sync("b1")
    p.checkpoint("c2")
    first = p.replicate(target)
    log = p.log()
    assert first["first_run"] is True
    assert first["events"] == len(log) and first["position"] == log[-1]["position"]
    assert first["link"] == log[-1]["link"]
    assert first["packs"] == len(packs(p.backend())) >= 3  # a pack per capture command
    assert (first["skipped_packs"], first["removed_packs"]) == (0, 0)
    assert files(target.backend()) == files(p.backend())
    if target.events and target.events.startswith("postgresql"):
        password = target.events.split("@")[0].split(":")[-1]
        assert "***" in first["target"] and password not in str(first)
    assert_replica_of(p, replica, scratch)

    # New content: a changed disk, a sync, a delete that merges, a rename.
    stored, old_packs, position = p.stored_bytes(), packs(p.backend()), log[-1]["position"]
    p.checkpoint("c3")
    p.sync("b2")
    assert "merged" in p.cli.ok("checkpoint", "delete", "web", "c2")
    del p.expected["c2"]
    p.cli.ok("checkpoint", "rename", "web", "c1", "first")
    p.expected["first"] = p.expected.pop("c1")
    new_stored = p.stored_bytes() - stored
    second = p.replicate(target)
    assert second["first_run"] is False
    assert second["events"] == p.position() - position
    assert second["packs"] == len(packs(p.backend()) - old_packs) == 2
    assert second["index_files"] == 2 and second["skipped_packs"] == len(old_packs)
    assert 0 < new_stored <= second["bytes"] <= 1.1 * new_stored, (second, new_stored)
    assert files(target.backend()) == files(p.backend())
    assert_replica_of(p, replica, scratch)

    # Nothing new: nothing sent.
    third = p.replicate(target)
    assert (third["events"], third["packs"], third["bytes"]) == (0, 0, 0)
    assert third["position"] == second["position"] and third["link"] == second["link"]


def _embedded_pair(tmp_path: Path, scratch: Path) -> tuple[Primary, Target]:
    """An embedded primary with two checkpoints, replicated once to an embedded replica."""
    p = primary(tmp_path / "primary", scratch)
    p.checkpoint("c1")
    p.checkpoint("c2")
    target = Target.store(tmp_path / "replica")
    p.replicate(target)
    return p, target


def _unchanged(replica: At, log: object, chunk_files: set[str], target: Target) -> None:
    assert replica.json("log") == log
    assert files(target.backend()) == chunk_files
    assert replica.json("verify", "--log")["ok"]


def test_an_event_changed_on_the_primary_after_it_was_replicated_stops_the_next_run(
    tmp_path: Path, scratch: Path
) -> None:
    p, target = _embedded_pair(tmp_path, scratch)
    replica = target.cli()
    log = p.log()
    last = log[-1]["position"]
    # c1's creation, re-encoded with another name: it still decodes, but its
    # bytes (and so every link from it on) are not the ones replicated.
    at = next(e["position"] for e in log if e["operation"] == "checkpoint-created")
    codec = ZstdCompressor()
    with sqlite3.connect(p.path / "events.sqlite") as db:
        (state,) = db.execute("SELECT state FROM stored_events WHERE rowid = ?", (at,)).fetchone()
        plain = codec.decompress(state)
        assert plain.count(b"\xa2c1") == 1  # msgpack's 2-byte string "c1"
        forged = codec.compress(plain.replace(b"\xa2c1", b"\xa2cX"))
        db.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (forged, at))
    db.close()
    p.checkpoint("c3")  # something to send
    chunk_files = files(target.backend())
    for _ in range(2):  # and the next run does not take it either
        err = p.cli.fails(DIVERGED, "replicate", *target.to)
        assert f"differ at position {at} " in err and f"link at {last} " in err, err
        _unchanged(replica, log, chunk_files, target)


def test_an_event_the_primary_never_had_on_the_replica_stops_the_next_run(
    tmp_path: Path, scratch: Path
) -> None:
    p, target = _embedded_pair(tmp_path, scratch)
    last = p.position()
    # The replica's last event again, one version on, at the next position: a
    # writer that went round the read-only guard. (Its read models would choke on
    # the duplicate checkpoint: the replica is looked at through SQLite only.)
    events = tmp_path / "replica" / "events.sqlite"
    with sqlite3.connect(events) as db:
        db.execute(
            "INSERT INTO stored_events (rowid, originator_id, originator_version, topic, state) "
            "SELECT rowid + 1, originator_id, originator_version + 1, topic, state "
            "FROM stored_events ORDER BY rowid DESC LIMIT 1"
        )
        rows = db.execute("SELECT rowid, state FROM stored_events ORDER BY rowid").fetchall()
    db.close()
    assert rows[-1][0] == last + 1
    p.checkpoint("c3")  # the primary's own event at that position
    chunk_files = files(target.backend())
    err = p.cli.fails(DIVERGED, "replicate", *target.to)
    assert f"up to position {last + 1}" in err and f"only up to {last}" in err, err
    with sqlite3.connect(events) as db:
        assert (
            db.execute("SELECT rowid, state FROM stored_events ORDER BY rowid").fetchall() == rows
        )
    db.close()
    assert files(target.backend()) == chunk_files


def test_a_store_is_not_replicated_into_another_primarys_replica_nor_into_a_store(
    tmp_path: Path, scratch: Path
) -> None:
    p, target = _embedded_pair(tmp_path, scratch)
    replica = target.cli()
    log, chunk_files = replica.json("log"), files(target.backend())
    other = primary(tmp_path / "other", scratch)
    other.checkpoint("o1")
    err = other.cli.fails(MISMATCH, "replicate", *target.to)
    assert p.store_id() in err, err  # whose replica it is
    _unchanged(replica, log, chunk_files, target)
    # A store of its own (not a replica) is no target either, in either direction.
    other_files = files(other.backend())
    other_log = other.log()
    p.cli.fails(MISMATCH, "replicate", "--to-store", other.path)
    assert other.log() == other_log and files(other.backend()) == other_files
