"""Wiring of eventsourcing's persistence: where events live and how they are encoded.

The embedded default is one SQLite file per store directory (WAL mode, set by
the library; ``synchronous=FULL``, set by ``sqlite_durable``); the scale-out
choice is PostgreSQL (eventsourcing's own persistence), one schema per store.
Events are msgpack (``MsgPackTranscoder``) then zstd (``ZstdCompressor``), in
that order, as the library applies them on write.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from .locations import PostgresLocation

EVENTS_FILE = "events.sqlite"
LOCK_TIMEOUT_S = 30  # a second writer waits this long for SQLite's lock, then fails clearly

COMPRESSOR_TOPIC = "ckpt.storage.compressor:ZstdCompressor"


def sqlite_environment(store_dir: Path) -> dict[str, str]:
    """eventsourcing settings for the embedded SQLite event store in ``store_dir``."""
    return {
        "PERSISTENCE_MODULE": "ckpt.storage.sqlite_durable:DurableSQLiteFactory",
        "SQLITE_DBNAME": str(store_dir / EVENTS_FILE),
        "SQLITE_LOCK_TIMEOUT": str(LOCK_TIMEOUT_S),
        "COMPRESSOR_TOPIC": COMPRESSOR_TOPIC,
    }


# PostgreSQL: a command holds one connection at a time; two more serve the
# read-model catch-up and a retry while the first is returned (5 by default:
# 8 writer processes would hold 40 server connections for nothing).
PG_POOL_SIZE = 1
PG_MAX_OVERFLOW = 3
PG_CONNECT_TIMEOUT_S = 10
# eventsourcing tries an insert that failed to get the lock 10 times (0.2 s apart):
# 5 s a try bounds a save on a stuck table at ~50 s (each insert holds it for ms).
PG_LOCK_TIMEOUT_S = 5


# Every table of a store in its schema: eventsourcing's (named after the
# application, "ckpt") and the read models' (storage/read_model_tables.py).
PG_TABLES = (
    "ckpt_events", "ckpt_snapshots", "ckpt_tracking", "ckpt_audit", "ckpt_captures",
    "ckpt_vms", "ckpt_state_files", "ckpt_lock", "ckpt_links", "ckpt_store",
)  # fmt: skip


def postgres_environment(loc: PostgresLocation, create_tables: bool = True) -> dict[str, str]:
    """eventsourcing settings for the PostgreSQL event store at ``loc``: tables
    ``ckpt_events``, ``ckpt_snapshots``, ``ckpt_tracking`` in ``loc.schema``.
    ``create_tables=False`` skips the library's CREATE TABLE IF NOT EXISTS
    statements: run by 9 processes at once on existing tables they still failed
    with "tuple concurrently updated"; they also cost a round trip each."""
    return {
        "CREATE_TABLE": "yes" if create_tables else "no",
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": loc.dbname,
        "POSTGRES_HOST": loc.host,
        "POSTGRES_PORT": str(loc.port),
        "POSTGRES_USER": loc.user,
        "POSTGRES_PASSWORD": loc.password,
        "POSTGRES_SCHEMA": loc.schema,
        "POSTGRES_POOL_SIZE": str(PG_POOL_SIZE),
        "POSTGRES_MAX_OVERFLOW": str(PG_MAX_OVERFLOW),
        "POSTGRES_CONNECT_TIMEOUT": str(PG_CONNECT_TIMEOUT_S),
        # Every insert takes the events table's EXCLUSIVE lock (so positions commit
        # in order); a writer waits this long for it, then fails clearly.
        "POSTGRES_LOCK_TIMEOUT": str(PG_LOCK_TIMEOUT_S),
        "COMPRESSOR_TOPIC": COMPRESSOR_TOPIC,
    }


EVENT_TABLES = ("ckpt_events", "ckpt_snapshots", "ckpt_tracking")


def check_schema(loc: PostgresLocation, create: bool) -> str:
    """Connect once, directly, and say what the store's schema holds: ``"none"``
    (no event tables), ``"events"`` (event tables, not every read-model table) or
    ``"complete"``. With ``create`` (``init``, ``copy``), create the schema if it is
    missing; an open never creates anything, so a mistyped schema is "no store
    there", never a new empty one (whose ``gc`` would see no references at all),
    and a role with only table privileges can use the store.

    Connecting outside the pool turns a wrong password or a refused connection
    into PostgreSQL's own words at once; through the pool it is "couldn't get a
    connection after 10 s". Raises ``psycopg.Error``; the caller names the store."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        dbname=loc.dbname,
        host=loc.host,
        port=loc.port,
        user=loc.user,
        password=loc.password,
        connect_timeout=PG_CONNECT_TIMEOUT_S,
        autocommit=True,
    ) as conn:
        if create and loc.schema != "public":
            schema = sql.Identifier(loc.schema)
            # Two first commands at once can both miss the schema; one wins.
            with contextlib.suppress(psycopg.errors.UniqueViolation):
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
            "AND table_name = ANY(%s)",
            (loc.schema, list(PG_TABLES)),
        ).fetchall()
    found = {row[0] for row in rows}
    if not set(EVENT_TABLES) <= found:
        return "none"
    return "complete" if found >= set(PG_TABLES) else "events"
