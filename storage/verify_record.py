"""The store's own record of the last ``ckpt verify`` and ``ckpt verify --log``.

Terms:
    run      one finished check: ``kind`` "chunks" (``verify``: chunk data read
             back) or "log" (``verify --log``: the hash chain walked); when it
             finished (ISO 8601, UTC), ``ok``, ``bad`` (chunks that failed, or
             the chain's problems), ``checked`` (chunks read, or events walked),
             and for "log" the ``position`` and hash ``link`` (hex) it ended at:
             the anchor a later ``verify --log --anchor`` can check.

One row per kind in table ``ckpt_verify``, beside the event log in the same
database (SQLite or PostgreSQL), the last run replacing the one before. It is
not an event (a check changes nothing about the VMs, and the log must not grow
every time someone reads it), not a read model (a rebuild, ``projections
rebuild``, never drops it) and not replicated (``ckpt replicate`` copies events
and packs: a replica says when *it* was last verified, and keeps no record of
its own while it follows, since it refuses writes). The table is created on the
first record, so a store that was never verified, or one on read-only media,
has none: ``last_runs`` then answers an empty dict ("never verified").
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, Protocol

KINDS = ("chunks", "log")

# One statement both dialects accept: SQLite takes BIGINT as an integer type.
CREATE = (
    "CREATE TABLE IF NOT EXISTS ckpt_verify (kind TEXT PRIMARY KEY, finished_at TEXT NOT NULL, "
    "ok INTEGER NOT NULL, bad BIGINT NOT NULL, checked BIGINT NOT NULL, position BIGINT, "
    "link TEXT)"
)
UPSERT = (
    "INSERT INTO ckpt_verify (kind, finished_at, ok, bad, checked, position, link) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind) DO UPDATE SET "
    "finished_at = excluded.finished_at, ok = excluded.ok, bad = excluded.bad, "
    "checked = excluded.checked, position = excluded.position, link = excluded.link"
)


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Database(Protocol):
    """What these verbs use of the read-model tables (storage/read_model_tables.py):
    a transaction on the event store's database."""

    def transaction(self, commit: bool) -> AbstractContextManager[Cursor]: ...


class VerifyRun(NamedTuple):
    kind: str  # "chunks" or "log"
    finished_at: str  # ISO 8601, UTC
    ok: bool
    bad: int
    checked: int
    position: int | None = None  # "log": the last position walked
    link: str | None = None  # "log": its hash link, hex


def record(db: Database, run: VerifyRun) -> None:
    """Replace the record of ``run.kind`` with ``run`` (creating the table)."""
    if run.kind not in KINDS:
        raise ValueError(f"verify record: unknown kind {run.kind!r}")
    with db.transaction(commit=True) as c:
        c.execute(CREATE)
        c.execute(UPSERT, (run.kind, run.finished_at, int(run.ok), run.bad, run.checked,
                           run.position, run.link))  # fmt: skip


def last_runs(db: Database, dialect: str) -> dict[str, VerifyRun]:
    """The last run of each kind recorded, by kind (empty: never verified).
    ``dialect``: "sqlite" or "postgresql" (how to ask whether the table exists
    without creating it: a read-only store must stay untouched)."""
    if dialect == "sqlite":
        exists = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'ckpt_verify'"
    else:  # the search path is the store's schema (read_model_tables_pg.py)
        exists = "SELECT COUNT(*) FROM pg_catalog.pg_tables WHERE tablename = 'ckpt_verify' AND schemaname = current_schema()"  # noqa: E501
    with db.transaction(commit=False) as c:
        c.execute(exists)
        if not c.fetchall()[0][0]:
            return {}
        c.execute("SELECT kind, finished_at, ok, bad, checked, position, link FROM ckpt_verify")
        rows = c.fetchall()
    return {
        str(r[0]): VerifyRun(
            str(r[0]),
            str(r[1]),
            bool(r[2]),
            int(r[3]),
            int(r[4]),
            None if r[5] is None else int(r[5]),
            r[6],
        )
        for r in rows
        if r[0] in KINDS
    }
