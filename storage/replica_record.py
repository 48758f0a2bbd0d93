"""A replica's own record of how far it follows its primary (``ckpt replicate``).

Terms:
    replica    a store that takes its events (as stored: the same bytes at the same
               positions, so the same hash chain) and packs from a *primary*, and
               refuses every other write until it is *promoted*.
    progress   the primary's store id, and the replica's last position and hash link
               (``storage/log_chain.py``) computed over the stored bytes, so an
               encrypted replica keeps it without the key.

One row (``one = 1``) in table ``ckpt_replica``, beside the event log in the same
database: each batch of replicated events and the progress they reach commit in
one transaction, so a run killed at any moment leaves progress that matches the
log exactly. Not a read model: a rebuild never drops it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

CREATE = (
    "CREATE TABLE IF NOT EXISTS ckpt_replica (one INTEGER PRIMARY KEY, primary_id TEXT NOT NULL, "
    "position {bigint} NOT NULL, link {blob} NOT NULL, promoted_at TEXT)"
)


class Cursor(Protocol):
    """What these verbs use of a DB-API cursor: declared here, not imported from
    ``read_model_tables`` (which mixes this class in: a cycle, even under
    ``TYPE_CHECKING``; tests/unit/test_layering.py)."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...


class ReplicaState(NamedTuple):
    primary_id: str
    position: int
    link: bytes
    promoted_at: str | None  # ISO 8601 when promoted, else None

    @property
    def follows(self) -> bool:
        """Still a replica (not promoted): it refuses writes."""
        return self.promoted_at is None


class ReplicaRecord:
    """The verbs on ``ckpt_replica``; mixed into the read-model tables, whose
    ``transaction`` (the event store's database) they use."""

    if TYPE_CHECKING:

        def transaction(self, commit: bool) -> AbstractContextManager[Cursor]: ...
        def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...

    def replica(self) -> ReplicaState | None:
        rows = self._rows("SELECT primary_id, position, link, promoted_at FROM ckpt_replica")
        if not rows:
            return None
        primary, position, link, promoted = rows[0]
        return ReplicaState(str(primary), int(position), bytes(link), promoted)

    def set_replica_progress(self, c: Cursor, primary_id: str, position: int, link: bytes) -> None:
        """In the caller's transaction (the one that appends the events)."""
        c.execute(
            "INSERT INTO ckpt_replica (one, primary_id, position, link) VALUES (1, ?, ?, ?) "
            "ON CONFLICT (one) DO UPDATE SET primary_id = excluded.primary_id, "
            "position = excluded.position, link = excluded.link",
            (primary_id, position, link),
        )

    def promote_replica(self, when: str) -> ReplicaState | None:
        """Record that the replica became a primary (once: a second promote keeps
        the first time)."""
        with self.transaction(commit=True) as c:
            c.execute("UPDATE ckpt_replica SET promoted_at = ? WHERE promoted_at IS NULL", (when,))
        return self.replica()
