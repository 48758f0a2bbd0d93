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
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pytest
from backends import postgres_url, s3_url
from conftest import Backends
from replication_support import At, Primary, Target, assert_replica_of, files, packs, primary

from ckpt import AlreadyExists, CheckpointType, Store
from ckpt.domain import Origin, VirtualMachine
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
    assert replica.json("log") == log  # the rest is checked after the second run

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


def _forge(events: Path, position: int, old: bytes, new: bytes) -> None:
    """Re-encode the stored event at ``position`` with ``old`` replaced by ``new``:
    it still decodes, but its bytes (so every link from it on) are not the ones
    the hash chain recorded."""
    codec = ZstdCompressor()
    with sqlite3.connect(events) as db:
        query = "SELECT state FROM stored_events WHERE rowid = ?"
        (state,) = db.execute(query, (position,)).fetchone()
        plain = codec.decompress(state)
        assert plain.count(old) == 1
        forged = codec.compress(plain.replace(old, new))
        db.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (forged, position))
    db.close()


def test_an_event_changed_on_the_primary_after_it_was_replicated_stops_the_next_run(
    tmp_path: Path, scratch: Path
) -> None:
    p, target = _embedded_pair(tmp_path, scratch)
    replica = target.cli()
    log = p.log()
    last = log[-1]["position"]
    at = next(e["position"] for e in log if e["operation"] == "checkpoint-created")
    _forge(p.path / "events.sqlite", at, b"\xa2c1", b"\xa2cX")  # msgpack's string "c1"
    p.checkpoint("c3")  # something to send
    chunk_files = files(target.backend())
    for _ in range(2):  # and the next run does not take it either
        err = p.cli.fails(DIVERGED, "replicate", *target.to)
        assert f"differ at position {at} " in err and f"link at {last} " in err, err
        _unchanged(replica, log, chunk_files, target)


def test_an_event_changed_on_the_primary_before_it_was_ever_replicated_is_not_sent(
    tmp_path: Path, scratch: Path
) -> None:
    p, target = _embedded_pair(tmp_path, scratch)
    replica = target.cli()
    log = p.log()
    p.checkpoint("c3")
    at = p.position()  # c3's creation, after the replica's position
    _forge(p.path / "events.sqlite", at, b"\xa2c3", b"\xa2cY")
    err = p.cli.fails(DIVERGED, "replicate", *target.to)
    assert f"at or before position {at} was changed" in err, err
    assert replica.json("log") == log and replica.json("verify", "--log")["ok"]


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


def test_a_postgresql_log_with_gaps_replicates_at_its_own_positions(tmp_path: Path) -> None:
    """A failed insert leaves a gap in PostgreSQL's positions, which the hash chain
    covers: the replica keeps the gaps, before and after its position."""

    def lose_a_race(store: Store) -> None:
        # A second host registering the same name at once: its insert is refused by
        # the database after it took a position, which stays unused.
        late = VirtualMachine.register(Origin("t", "h", datetime.now(UTC), uuid4()), "WEB")
        with pytest.raises(AlreadyExists):
            store.save_new_vm(late)

    with Store.init(tmp_path / "pg", events=postgres_url()) as store:
        store.register_vm("web", checkpoint_type=CheckpointType.STANDARD)
        lose_a_race(store)
        store.create_checkpoint("web", "one")
        first = store.replicate(to_dir=tmp_path / "replica")
        assert (first.events, first.position) == (2, 3)
        lose_a_race(store)
        store.create_checkpoint("web", "two")
        second = store.replicate(to_dir=tmp_path / "replica")
        assert (second.events, second.position) == (1, 5)
        assert second.link == store.verify_log().last_link.hex()
    with Store.open(tmp_path / "replica") as replica:
        assert [e.position for e in replica.log()] == [1, 3, 5]
        assert replica.verify_log().ok
