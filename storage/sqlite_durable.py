"""eventsourcing's SQLite persistence, every connection at ``synchronous=FULL``.

Terms:
    WAL         write-ahead logging, the journal mode eventsourcing sets on a file
                database: a commit appends to ``events.sqlite-wal``.
    synchronous how often SQLite syncs. With ``FULL`` it syncs the WAL at every
                commit: a committed transaction survives a power cut, and an
                uncommitted one is rolled back whole (SQLite's promise, and what
                the power-loss suite, tests/powerloss, assumes of the event store).
                With ``NORMAL`` the WAL is synced only at checkpoints: the last
                commits before a cut may roll back, so a checkpoint whose command
                had returned could be gone. Builds differ in the default for WAL
                databases (``SQLITE_DEFAULT_WAL_SYNCHRONOUS``; Debian 12's 3.40.1
                says 2, FULL); ckpt sets it rather than trust the build. FULL costs
                one more fsync per commit (~1-5 ms on an SSD), against a capture's
                tens of pack fsyncs.
"""

from __future__ import annotations

import types

from eventsourcing.sqlite import SQLiteConnection, SQLiteConnectionPool, SQLiteFactory
from eventsourcing.utils import Environment, EnvType

SYNCHRONOUS_FULL = 2  # what ``PRAGMA synchronous`` answers for FULL


class DurableSQLiteFactory(SQLiteFactory):
    """``eventsourcing.sqlite``'s factory whose connections commit durably."""

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        pool = self.datastore.pool
        create = pool._create_connection

        def create_durable(self: SQLiteConnectionPool) -> SQLiteConnection:
            conn = create()
            # The library keeps the sqlite3 connection private and offers no
            # hook for pragmas; tests/unit/test_sqlite_durable.py fails if this
            # stops taking effect.
            conn._sqlite_conn.execute("PRAGMA synchronous=FULL")
            return conn

        # One pool per factory, made just above: no connection exists yet.
        pool._create_connection = types.MethodType(create_durable, pool)  # type: ignore[method-assign]
