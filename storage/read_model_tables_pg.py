"""The read models in the PostgreSQL database of the event store.

Same tables and verbs as the SQLite adapter (storage/read_model_tables.py); this
module supplies what differs: the tables live in the store's schema (each
transaction sets ``search_path`` to it, so the shared SQL needs no schema
names), placeholders are ``%s``, rows are tuples, sealed values are base64
text (PostgreSQL's TEXT holds no bytes), and the write lock is PostgreSQL's
own table lock on ``ckpt_lock``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresTrackingRecorder
from psycopg import Cursor as PgCursor
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from .read_model_tables import COLUMNS, Cursor, ReadModelsSQL, create_statements


class _Translated:
    """A psycopg cursor that takes the shared SQL's ``?`` placeholders."""

    def __init__(self, cursor: PgCursor[Any]) -> None:
        self._c = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._c.execute(sql.replace("?", "%s"), params, prepare=False)

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any:
        if params:
            self._c.executemany(sql.replace("?", "%s"), params)

    def fetchone(self) -> Any:
        return self._c.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._c.fetchall())


class PostgresReadModels(ReadModelsSQL, PostgresTrackingRecorder):
    """The read models next to the events, in the schema of the store."""

    position_column = "notification_id"
    originator_text = "originator_id::text"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # eventsourcing names the tables after the application: ckpt_events,
        # ckpt_tracking (the application recorder is built with the same prefix).
        self.tracking_table = self.tracking_table_name
        self.events_table = self.tracking_table_name.removesuffix("_tracking") + "_events"

    def _use_schema(self, c: PgCursor[Any]) -> None:
        c.execute(
            SQL("SET LOCAL search_path TO {}").format(Identifier(self.datastore.schema)),
            prepare=False,
        )

    def _create_table(self, curs: PgCursor[Any]) -> None:
        super()._create_table(curs)
        curs.row_factory = tuple_row
        self._use_schema(curs)
        c = _Translated(curs)
        found = {}
        for table in COLUMNS:
            c.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = ? "
                "AND table_name = ? ORDER BY ordinal_position",
                (self.datastore.schema, f"ckpt_{table}"),
            )
            found[table] = [row[0] for row in c.fetchall()]
        if self.stale_layout(found):
            self.drop_stale(c)
        for statement in create_statements({}):
            c.execute(statement.format(real="DOUBLE PRECISION", blob="BYTEA", bigint="BIGINT"))

    @contextmanager
    def transaction(self, commit: bool) -> Iterator[Cursor]:
        with self.datastore.transaction(commit=commit) as curs:
            # The pool's connections make dicts; the shared SQL indexes rows by position.
            curs.row_factory = tuple_row  # type: ignore[assignment]
            self._use_schema(curs)
            yield _Translated(curs)

    def lock(self, c: Cursor) -> None:
        # EXCLUSIVE blocks other writers of the read models (and other locks of this
        # table) until commit, and lets plain reads go on. A catch-up waits at most a
        # minute behind a rebuild (50,000 events take ~5 s), then the next read retries.
        c.execute("SET LOCAL lock_timeout = '60s'")
        c.execute("LOCK TABLE ckpt_lock IN EXCLUSIVE MODE")

    def insert_stored_rows(
        self, c: Cursor, rows: Sequence[tuple[int, Any, int, str, bytes]]
    ) -> None:
        # The library's own lock, so positions still commit in order; then the
        # sequence continues after the copied positions.
        c.execute(f"LOCK TABLE {self.events_table} IN EXCLUSIVE MODE")
        c.executemany(
            f"INSERT INTO {self.events_table} (notification_id, originator_id, "
            "originator_version, topic, state) VALUES (?, ?, ?, ?, ?)",
            [(pos, UUID(str(o)), v, t, s) for pos, o, v, t, s in rows],
        )
        c.execute(
            f"SELECT setval(pg_get_serial_sequence('{self.events_table}', 'notification_id'), "
            f"(SELECT MAX(notification_id) FROM {self.events_table}))"
        )

    def _seal(self, text: str | None) -> Any:
        sealed = super()._seal(text)
        if self.keyring is None or sealed is None:
            return sealed
        return base64.b64encode(sealed).decode()

    def _open(self, value: Any) -> Any:
        if self.keyring is None or value is None:
            return value
        return super()._open(base64.b64decode(value))
