"""A real "database or disk is full" from SQLite, for the disk-full tests."""

from __future__ import annotations

import sqlite3


def real_sqlite_full() -> sqlite3.OperationalError:
    """SQLite's own "database or disk is full", from a database capped at 2 pages."""
    db = sqlite3.connect(":memory:")
    db.execute("PRAGMA max_page_count = 2")
    db.execute("CREATE TABLE t (x BLOB)")
    try:
        db.execute("INSERT INTO t VALUES (?)", (bytes(100_000),))
    except sqlite3.OperationalError as e:
        return e
    finally:
        db.close()
    raise AssertionError("SQLite took 100 KB into two pages")
