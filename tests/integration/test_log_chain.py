"""Tamper evidence: the hash chain over the event log names where it was changed."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from pathlib import Path

import pytest

from ckpt import CheckpointType, InvalidValue, Store, StoreCorrupt
from ckpt.cli import run
from ckpt.storage.event_store import EVENTS_FILE
from ckpt.storage.log_chain import GENESIS, link


def _store(tmp_path: Path) -> Store:
    store = Store.init(tmp_path / "s", actor="auditor")
    store.register_vm("VM", checkpoint_type=CheckpointType.STANDARD)
    for name in ("one", "two", "three"):
        store.create_checkpoint("VM", name)
    store.rename_checkpoint("VM", "two", "deux")
    store.delete_checkpoint("VM", "one")
    return store


def _db(store: Store) -> sqlite3.Connection:
    return sqlite3.connect(store.path / EVENTS_FILE)


def test_an_untouched_log_verifies_and_gives_an_anchor(tmp_path: Path) -> None:
    store = _store(tmp_path)
    report = store.verify_log()
    assert report.ok and report.events == 6 and report.last_position == 6
    anchor = f"{report.last_position}:{report.last_link.hex()}"
    store.create_checkpoint("VM", "later")
    later = store.verify_log(anchor)
    assert later.ok and later.anchor_found  # appending keeps earlier anchors valid


def test_log_json_links_can_be_recomputed_by_an_outsider(tmp_path: Path) -> None:
    store = _store(tmp_path)
    out = io.StringIO()
    assert run(["--store", str(store.path), "log", "--json"], out, io.StringIO()) == 0
    entries = json.loads(out.getvalue())
    rows = (
        _db(store)
        .execute(
            "SELECT rowid, originator_id, originator_version, topic, state FROM stored_events "
            "ORDER BY rowid"
        )
        .fetchall()
    )
    previous = GENESIS
    for entry, (position, originator, version, topic, state) in zip(entries, rows, strict=True):
        previous = link(previous, position, str(originator), version, topic, bytes(state))
        assert entry["link"] == previous.hex()
    assert hashlib.sha256(b"").digest() != previous  # a real chain, not a constant


@pytest.mark.parametrize("attack", ["change", "remove", "reorder"])
def test_tampering_is_named_by_position(tmp_path: Path, attack: str) -> None:
    store = _store(tmp_path)
    anchor = store.verify_log()
    db = _db(store)
    if attack == "change":  # flip a byte of the 3rd event's stored state
        (state,) = db.execute("SELECT state FROM stored_events WHERE rowid = 3").fetchone()
        forged = bytearray(state)
        forged[-1] ^= 1
        db.execute("UPDATE stored_events SET state = ? WHERE rowid = 3", (bytes(forged),))
        expected = "changed, or its events reordered, at position 3"
    elif attack == "remove":
        db.execute("DELETE FROM stored_events WHERE rowid = 4")
        expected = "removed from the log at position 4"
    else:  # swap the states (and topics) of events 2 and 3
        r2 = db.execute("SELECT topic, state FROM stored_events WHERE rowid = 2").fetchone()
        r3 = db.execute("SELECT topic, state FROM stored_events WHERE rowid = 3").fetchone()
        db.execute("UPDATE stored_events SET topic = ?, state = ? WHERE rowid = 2", r3)
        db.execute("UPDATE stored_events SET topic = ?, state = ? WHERE rowid = 3", r2)
        expected = "at position 2"
    db.commit()
    db.close()
    reopened = Store.open(store.path)
    report = reopened.verify_log(f"{anchor.last_position}:{anchor.last_link.hex()}")
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems
    assert report.anchor_found is False
    try:
        reopened.rebuild_read_models()  # a rebuild does not launder the forged event
    except StoreCorrupt as e:  # an undecodable or missing event is a clear error, too
        assert "position 3" in str(e) or "out of sequence" in str(e)
    assert not reopened.verify_log().ok
    out, err = io.StringIO(), io.StringIO()
    code = run(["--store", str(store.path), "verify", "--log"], out, err)
    assert code == 23 and "hash chain" in err.getvalue()


def test_bad_anchor_text_is_a_clear_error(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(InvalidValue, match="--anchor"):
        store.verify_log("6:nothex")
