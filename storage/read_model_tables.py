"""The read-model tables in the store's SQLite database, with their tracking record.

Terms: a *batch* is everything a catch-up derived from a run of events; it is
written in one transaction together with the position reached (an
eventsourcing tracking record, application name ``READ_MODELS``), so the
tables and the position never disagree. Tables (all prefixed ``ckpt_``):

- ``audit``: one row per event: position, time, VM, version, actor, host,
  operation, checkpoint, details (JSON). Indexed by time and by (VM, position),
  which answers "which version had this VM reached at position P" and "which
  position is time T".
- ``captures``: the chunk references: one row per captured disk layer or file,
  with its manifest id (verify and gc expand manifests to chunks).
- ``vms``: per VM one row with its present summary, checkpoint tree (in
  display order) and disk chains (Now), as the JSON documents ``--json``
  prints; the row is replaced for every VM a batch touched (one row, not one
  per checkpoint: a command then costs one statement, whatever the tree size).
- ``state_files``: one row per live checkpoint, added when it is created and
  removed when it is deleted (its files never change in between).

A removed VM (``vm remove``) has no ``vms`` or ``state_files`` rows; its audit
and capture rows stay, as its events do.

Deleting these tables loses nothing: ``rebuild`` folds the log again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import groupby
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from uuid import UUID

from eventsourcing.sqlite import SQLiteTrackingRecorder

from ckpt.domain.read_model_rows import Batch
from ckpt.storage.keyring import Keyring
from ckpt.storage.replica_record import CREATE as REPLICA_TABLE
from ckpt.storage.replica_record import ReplicaRecord

READ_MODELS = "ckpt-read-models"

TABLES = ("audit", "captures", "vms", "state_files")
COLUMNS = {
    "audit": ["position", "time", "vm_id", "version", "vm", "actor", "host", "operation",
              "checkpoint", "details"],
    "captures": ["position", "seq", "vm_id", "vm", "kind", "subject", "label", "manifest",
                 "size", "new_bytes"],
    "vms": ["vm_id", "name", "doc", "tree", "chain"],
    "state_files": ["vm_id", "checkpoint", "doc"],
}  # fmt: skip


class AuditRow(NamedTuple):
    """One row of ``ckpt_audit``: an event, as ``ckpt log`` shows it."""

    position: int
    time: float
    vm_id: str
    version: int
    vm: str
    actor: str
    host: str
    operation: str
    checkpoint: str | None
    details: str  # JSON


class CaptureRow(NamedTuple):
    """One row of ``ckpt_captures``: a captured disk layer or file."""

    position: int
    seq: int
    vm_id: str
    vm: str
    kind: str
    subject: str
    label: str
    manifest: bytes
    size: int
    new_bytes: int


class Cursor(Protocol):
    """What the verbs below use of a DB-API cursor (``?`` placeholders)."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


def create_statements(types: dict[str, str]) -> list[str]:
    """The tables, in the dialect's column ``types`` (real, blob, bigint)."""
    return [
        "CREATE TABLE IF NOT EXISTS ckpt_audit (position {bigint} PRIMARY KEY, "
        "time {real} NOT NULL, vm_id TEXT NOT NULL, version {bigint} NOT NULL, "
        "vm TEXT NOT NULL, actor TEXT NOT NULL, host TEXT NOT NULL, "
        "operation TEXT NOT NULL, checkpoint TEXT, details TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS ckpt_audit_time ON ckpt_audit (time)",
        "CREATE INDEX IF NOT EXISTS ckpt_audit_vm ON ckpt_audit (vm_id, position)",
        "CREATE TABLE IF NOT EXISTS ckpt_captures (position {bigint} NOT NULL, "
        "seq {bigint} NOT NULL, vm_id TEXT NOT NULL, vm TEXT NOT NULL, kind TEXT NOT NULL, "
        "subject TEXT NOT NULL, label TEXT NOT NULL, manifest {blob} NOT NULL, "
        "size {bigint} NOT NULL, new_bytes {bigint} NOT NULL, PRIMARY KEY (position, seq))",
        "CREATE TABLE IF NOT EXISTS ckpt_vms (vm_id TEXT PRIMARY KEY, name TEXT NOT NULL, "
        "doc TEXT NOT NULL, tree TEXT NOT NULL, chain TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS ckpt_state_files (vm_id TEXT NOT NULL, "
        "checkpoint TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (vm_id, checkpoint))",
        # One row that every read-model writer writes (or locks) first: it takes the
        # write lock at the start of the transaction, so two catch-ups (or a catch-up
        # and a rebuild) never interleave their reads of the position and their writes.
        "CREATE TABLE IF NOT EXISTS ckpt_lock (id INTEGER PRIMARY KEY)",
        # Not a read model: the hash chain (storage/log_chain.py). Never dropped by a
        # rebuild, and a rebuild never overwrites a recorded link (ON CONFLICT DO
        # NOTHING), so a rewritten event cannot launder its own link.
        "CREATE TABLE IF NOT EXISTS ckpt_links (position {bigint} PRIMARY KEY, "
        "link {blob} NOT NULL)",
        # Not a read model either: the id of the store this event log belongs to (its
        # chunk storage's meta object names the same id; an open compares them).
        # One row (one = 1): two hosts creating the store at once agree on the first id.
        "CREATE TABLE IF NOT EXISTS ckpt_store (one INTEGER PRIMARY KEY, id TEXT NOT NULL)",
        # Not a read model: how far a replica follows its primary (storage/replica_record.py).
        REPLICA_TABLE,
    ]


class ReadModelsSQL(ReplicaRecord):
    """The read models over any SQL database the event store uses: every verb is
    written once, in SQL both SQLite (3.24+) and PostgreSQL accept; an adapter
    supplies ``transaction``, ``lock``, ``columns`` and where the events and the
    tracking record are. With a ``keyring`` (an encrypted store) every name,
    document and detail is sealed before it is written; positions, times, VM ids
    and versions stay plain (``--at`` needs them; a VM id is a hash of the name,
    not the name)."""

    keyring: Keyring | None = None
    # Set by the adapter: the events table, its position column, the tracking table.
    events_table = "stored_events"
    position_column = "rowid"
    originator_text = "originator_id"
    tracking_table = "tracking"

    if TYPE_CHECKING:  # supplied by the eventsourcing tracking recorder

        def max_tracking_id(self, application_name: str) -> int | None: ...

    @contextmanager
    def transaction(self, commit: bool) -> Iterator[Cursor]:
        raise NotImplementedError
        yield  # pragma: no cover

    def lock(self, c: Cursor) -> None:
        raise NotImplementedError

    def _seal(self, text: str | None) -> Any:
        return text if self.keyring is None else self.keyring.seal_text(text)

    def _open(self, value: Any) -> Any:
        if self.keyring is None or value is None:
            return value
        return self.keyring.open_text(bytes(value))

    @staticmethod
    def stale_layout(found: dict[str, list[str]]) -> bool:
        """Whether tables of another layout exist (then they are all dropped:
        they are only a cache of the log, the next catch-up rebuilds them)."""
        return any(cols and cols != COLUMNS[table] for table, cols in found.items())

    @staticmethod
    def drop_stale(c: Cursor) -> None:
        for other in ("audit", "captures", "vms", "state_files", "checkpoints", "chain"):
            c.execute(f"DROP TABLE IF EXISTS ckpt_{other}")

    # ------------------------------------------------------------- store id
    def store_id(self) -> str | None:
        rows = self._rows("SELECT id FROM ckpt_store")
        return str(rows[0][0]) if rows else None

    def set_store_id(self, store_id: str) -> str:
        """Record ``store_id`` unless an id is recorded already; return the one kept."""
        with self.transaction(commit=True) as c:
            c.execute("INSERT INTO ckpt_store VALUES (1, ?) ON CONFLICT DO NOTHING", (store_id,))
            c.execute("SELECT id FROM ckpt_store")
            return str(c.fetchone()[0])

    def insert_stored_rows(
        self, c: Cursor, rows: Sequence[tuple[int, Any, int, str, bytes]]
    ) -> None:
        """Events as another store holds them, at the same positions (``copy``:
        the hash chain covers the position; PostgreSQL leaves gaps where an insert
        failed, so positions are not 1..n)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ write
    def position(self) -> int:
        return self.max_tracking_id(READ_MODELS) or 0

    def consistent(self) -> bool:
        """The audit table ends where the tracking record says (false after the
        tables were dropped or emptied behind our back: then rebuild)."""
        with self.transaction(commit=False) as c:
            return self.consistent_in(c)

    # Cursor-level verbs: the read-model runner does a whole catch-up or rebuild in
    # one transaction, after ``lock``.
    def position_in(self, c: Cursor) -> int:
        c.execute(
            f"SELECT notification_id FROM {self.tracking_table} WHERE application_name = ?",
            (READ_MODELS,),
        )
        row = c.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def consistent_in(self, c: Cursor) -> bool:
        c.execute("SELECT MAX(position) FROM ckpt_audit")
        return (c.fetchone()[0] or 0) == self.position_in(c)

    @staticmethod
    def last_link_in(c: Cursor, position: int) -> bytes | None:
        c.execute("SELECT link FROM ckpt_links WHERE position = ?", (position,))
        row = c.fetchone()
        return bytes(row[0]) if row else None

    def rows_in(self, c: Cursor, after: int, limit: int) -> list[tuple[int, str, int, str, bytes]]:
        pos = self.position_column
        c.execute(
            f"SELECT {pos}, {self.originator_text}, originator_version, topic, state "
            f"FROM {self.events_table} WHERE {pos} > ? ORDER BY {pos} LIMIT ?",
            (after, limit),
        )
        return [(r[0], r[1], r[2], r[3], bytes(r[4])) for r in c.fetchall()]

    def drop_in(self, c: Cursor) -> None:
        for table in TABLES:
            c.execute(f"DELETE FROM ckpt_{table}")
        c.execute(f"DELETE FROM {self.tracking_table} WHERE application_name = ?", (READ_MODELS,))

    def write_in(self, c: Cursor, batch: Batch, position: int | None) -> None:
        """A batch's rows, its VM documents and (unless None) the position reached."""
        self._write_rows(c, batch)
        c.executemany(
            "INSERT INTO ckpt_vms VALUES (?, ?, ?, ?, ?) ON CONFLICT (vm_id) DO UPDATE SET "
            "name = excluded.name, doc = excluded.doc, tree = excluded.tree, "
            "chain = excluded.chain",
            [
                (vm_id, self._seal(d.vm["name"]), self._seal(json.dumps(d.vm)),
                 self._seal(json.dumps(d.checkpoints)), self._seal(json.dumps(d.chain)))
                for vm_id, d in batch.vms.items()
            ],
        )  # fmt: skip
        for table in ("vms", "state_files"):  # after the rows above: a removal is final
            c.executemany(
                f"DELETE FROM ckpt_{table} WHERE vm_id = ?", [(v,) for v in batch.removed]
            )
        if position is not None:
            c.execute(
                f"INSERT INTO {self.tracking_table} VALUES (?, ?) ON CONFLICT (application_name) "
                "DO UPDATE SET notification_id = excluded.notification_id",
                (READ_MODELS, position),
            )

    def write(self, batch: Batch, position: int) -> None:
        """Everything a batch derived, and the position it reached, atomically."""
        with self.transaction(commit=True) as c:
            self.lock(c)
            self.write_in(c, batch, position)

    def _write_rows(self, c: Cursor, batch: Batch) -> None:
        audit, captures = batch.audit, batch.captures
        if self.keyring is not None:
            seal = self._seal
            audit = [(*r[:4], *map(seal, r[4:])) for r in audit]
            captures = [(*r[:3], seal(r[3]), r[4], r[5], seal(r[6]), *r[7:]) for r in captures]
        c.executemany("INSERT INTO ckpt_audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", audit)
        c.executemany("INSERT INTO ckpt_captures VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", captures)
        c.executemany("INSERT INTO ckpt_links VALUES (?, ?) ON CONFLICT DO NOTHING", batch.links)
        # In event order, consecutive additions (or removals) in one statement each.
        for removal, group in groupby(batch.state_files, key=lambda op: op[2] is None):
            ops = list(group)
            if removal:
                c.executemany(
                    "DELETE FROM ckpt_state_files WHERE vm_id = ? AND checkpoint = ?",
                    [(vm_id, checkpoint) for vm_id, checkpoint, _ in ops],
                )
            else:
                c.executemany(
                    "INSERT INTO ckpt_state_files VALUES (?, ?, ?)",
                    [(vm_id, checkpoint, self._seal(doc)) for vm_id, checkpoint, doc in ops],
                )

    # ------------------------------------------------------------------- read
    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self.transaction(commit=False) as c:
            c.execute(sql, params)
            return list(c.fetchall())

    def vms(self) -> list[dict[str, Any]]:
        docs = [json.loads(self._open(r[0])) for r in self._rows("SELECT doc FROM ckpt_vms")]
        return sorted(docs, key=lambda d: d["name"])

    def checkpoints(self, vm_id: str) -> list[dict[str, Any]]:
        rows = self._rows("SELECT tree FROM ckpt_vms WHERE vm_id = ?", (vm_id,))
        return json.loads(self._open(rows[0][0])) if rows else []

    def chain(self, vm_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT chain FROM ckpt_vms WHERE vm_id = ?", (vm_id,))
        return json.loads(self._open(rows[0][0])) if rows else None

    def state_files(self, vm_id: str, checkpoint: str) -> list[dict[str, Any]] | None:
        rows = self._rows(
            "SELECT doc FROM ckpt_state_files WHERE vm_id = ? AND checkpoint = ?",
            (vm_id, checkpoint),
        )
        return json.loads(self._open(rows[0][0])) if rows else None

    def audit(
        self,
        vm_id: str | None = None,
        operation: str | None = None,
        actor: str | None = None,
        since: int | None = None,
        until: int | None = None,
    ) -> list[AuditRow]:
        """Audit rows in position order; positions ``since`` and ``until`` are inclusive."""
        sealed = self.keyring is not None  # sealed columns are filtered after opening
        where, params = ["TRUE"], []
        for clause, value in (
            ("vm_id = ?", vm_id),
            ("operation = ?", None if sealed else operation),
            ("actor = ?", None if sealed else actor),
            ("position >= ?", since),
            ("position <= ?", until),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        rows = self._rows(
            f"SELECT * FROM ckpt_audit WHERE {' AND '.join(where)} ORDER BY position",
            params,
        )
        if not sealed:
            return [AuditRow(*r) for r in rows]
        opened = [AuditRow(*r[:4], *map(self._open, r[4:])) for r in rows]
        return [
            r
            for r in opened
            if (operation is None or r.operation == operation)
            and (actor is None or r.actor == actor)
        ]

    def version_at(self, vm_id: str, position: int) -> int | None:
        rows = self._rows(
            "SELECT MAX(version) FROM ckpt_audit WHERE vm_id = ? AND position <= ?",
            (vm_id, position),
        )
        return rows[0][0] if rows else None

    def position_at(self, time: float) -> int:
        """The last position whose event time is at or before ``time`` (0: none)."""
        rows = self._rows("SELECT MAX(position) FROM ckpt_audit WHERE time <= ?", (time,))
        return rows[0][0] or 0

    def links(self, since: int = 0, until: int | None = None) -> dict[int, bytes]:
        """The hash-chain links at positions ``since`` to ``until`` (inclusive)."""
        sql, params = "SELECT position, link FROM ckpt_links WHERE position >= ?", [since]
        if until is not None:
            sql += " AND position <= ?"
            params.append(until)
        return {r[0]: bytes(r[1]) for r in self._rows(sql, params)}

    def first_position_from(self, time: float) -> int:
        """The first position whose event time is at or after ``time`` (past the end: none)."""
        rows = self._rows("SELECT MIN(position) FROM ckpt_audit WHERE time >= ?", (time,))
        return rows[0][0] if rows[0][0] is not None else self.position() + 1

    def captures(self, until: int | None = None) -> list[CaptureRow]:
        sql = "SELECT * FROM ckpt_captures"
        params: list[Any] = []
        if until is not None:
            sql += " WHERE position <= ?"
            params.append(until)
        rows = self._rows(sql + " ORDER BY position, seq", params)
        if self.keyring is None:
            return [CaptureRow(*r) for r in rows]
        return [
            CaptureRow(r[0], r[1], r[2], self._open(r[3]), r[4], r[5], self._open(r[6]), *r[7:10])
            for r in rows
        ]

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every read model, in key order (for comparing two builds)."""
        return {
            table: [tuple(r) for r in self._rows(f"SELECT * FROM ckpt_{table} ORDER BY 1, 2")]
            for table in TABLES
        }


class SQLiteReadModels(ReadModelsSQL, SQLiteTrackingRecorder):
    """The read models in the store's SQLite file (the embedded default)."""

    def construct_create_table_statements(self) -> list[str]:
        types = {"real": "REAL", "blob": "BLOB", "bigint": "INTEGER"}
        statements = [s.format(**types) for s in create_statements(types)]
        return [*super().construct_create_table_statements(), *statements]

    def create_table(self) -> None:
        with self.datastore.transaction(commit=True) as c:
            found = {}
            for table in COLUMNS:
                c.execute(f"PRAGMA table_info(ckpt_{table})")
                found[table] = [row[1] for row in c.fetchall()]
            if self.stale_layout(found):
                self.drop_stale(c)
        super().create_table()

    @contextmanager
    def transaction(self, commit: bool) -> Iterator[Cursor]:
        with self.datastore.transaction(commit=commit) as c:
            yield c

    def lock(self, c: Cursor) -> None:
        c.execute("INSERT OR REPLACE INTO ckpt_lock VALUES (1)")

    def insert_stored_rows(
        self, c: Cursor, rows: Sequence[tuple[int, Any, int, str, bytes]]
    ) -> None:
        c.executemany(
            "INSERT INTO stored_events (rowid, originator_id, originator_version, topic, state) "
            "VALUES (?, ?, ?, ?, ?)",
            [(pos, UUID(str(o)).hex, v, t, s) for pos, o, v, t, s in rows],
        )
