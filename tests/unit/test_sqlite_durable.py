"""The embedded event store commits durably: every connection runs at
``synchronous=FULL`` (storage/sqlite_durable.py), whatever the SQLite build's
default, so a checkpoint whose command returned survives a power cut."""

from __future__ import annotations

from pathlib import Path

import pytest

import ckpt
from ckpt.storage.sqlite_durable import SYNCHRONOUS_FULL


def test_every_connection_of_the_embedded_event_store_is_synchronous_full(
    tmp_path: Path,
) -> None:
    ckpt.Store.init(tmp_path / "s").close()
    with ckpt.Store.open(tmp_path / "s") as store:
        seen = []
        for recorder in (store.unit_of_work.app.recorder, store.unit_of_work.read_models.recorder):
            with recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
                cursor.execute("PRAGMA synchronous")
                seen.append(cursor.fetchone()[0])
    assert seen == [SYNCHRONOUS_FULL, SYNCHRONOUS_FULL]


def test_a_build_that_defaults_to_normal_is_overridden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulate a build whose WAL default is NORMAL (1): connections still say FULL."""
    import sqlite3

    real_connect = sqlite3.connect

    def connect_normal(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)  # type: ignore[call-overload]
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn  # type: ignore[no-any-return]

    monkeypatch.setattr(sqlite3, "connect", connect_normal)
    ckpt.Store.init(tmp_path / "s").close()
    with ckpt.Store.open(tmp_path / "s") as store:
        datastore = store.unit_of_work.app.recorder.datastore  # type: ignore[attr-defined]
        with datastore.transaction(commit=False) as cursor:
            cursor.execute("PRAGMA synchronous")
            assert cursor.fetchone()[0] == SYNCHRONOUS_FULL
