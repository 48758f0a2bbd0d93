"""Keeping the read models up to date: catch-up after every command, rebuild on demand.

A catch-up reads the log after the tracked position, folds it
(``projections.fold``) and writes rows and position in one transaction.
Commands call it right after they save (passing their VM, so its documents
cost no reload); read commands call it first, so events other processes
wrote are visible. ``rebuild`` empties the tables and folds the whole log,
writing the audit and capture rows page by page and every VM's documents once
at the end, with the position.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification

from ckpt.domain import VirtualMachine
from ckpt.domain.read_model_rows import Batch
from ckpt.projections.fold import Folder, add_documents
from ckpt.storage.log_chain import GENESIS, link
from ckpt.storage.read_model_tables import ReadModelsSQL, SQLiteReadModels

from .app import CheckpointApplication

PAGE = 5000  # events folded per transaction during a rebuild


@contextmanager
def _without_cycle_collector() -> Iterator[None]:
    """Decoded events hold no reference cycles: reference counting frees them.
    The cycle collector, triggered by the sheer number of allocations, still
    walked the heap again and again: 1.7 s of a 60,000-event fold with it,
    0.7 s without."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class ReadModels:
    def __init__(self, app: CheckpointApplication) -> None:
        self.app = app
        made: object
        if app.factory.__class__.__module__ == "eventsourcing.postgres":
            # Imported only here: psycopg is needed only by PostgreSQL stores.
            from ckpt.storage.read_model_tables_pg import PostgresReadModels

            made = app.factory.tracking_recorder(PostgresReadModels)
        else:
            made = app.factory.tracking_recorder(SQLiteReadModels)
        assert isinstance(made, ReadModelsSQL)
        self.recorder = made
        self.folder = Folder()

    def _get_vm(self, vm_id: UUID, version: int) -> VirtualMachine:
        return self.app.get_vm(vm_id, version)

    def catch_up(self, known: VirtualMachine | None = None) -> int:
        """Fold every event after the tracked position; return how many.

        One write transaction, its lock taken first: a second process's catch-up
        waits, then finds nothing left to do (two catch-ups that interleaved lost
        rows, found by the concurrent-writers test).
        """
        nothing_new = known is None and self.app.last_position() <= self.recorder.position()
        if nothing_new and self.recorder.consistent():
            return 0  # the common read: nothing new, no write lock taken
        with self.recorder.transaction(commit=True) as c:
            self.recorder.lock(c)
            if not self.recorder.consistent_in(c):
                return self._rebuild_in(c)[0]
            start = self.recorder.position_in(c)
            rows = self._rows_after(c, start)
            if not rows:
                return 0
            previous = self.recorder.last_link_in(c, start) if start else GENESIS
            if previous is None:  # links lag the read models: recompute from the start
                previous = self._chain_to(start)
            links: list[tuple[int, bytes]] = []
            events = self._linked(iter(rows), links, previous)
            batch, reached, position = self.folder.fold(events, self._get_vm)
            batch.links = links
            add_documents(batch, reached, self._get_vm, {known.id: known} if known else None)
            self.recorder.write_in(c, batch, position)
            return len(batch.audit)

    def _rows_after(self, c: Any, start: int) -> list[tuple[Notification, Any]]:
        """Every stored event after ``start``, decoded (a catch-up: usually a few)."""
        out: list[tuple[Notification, Any]] = []
        while page := self._page(c, start):
            out += page
            start = page[-1][0].id
        return out

    def rebuild(self) -> tuple[int, float]:
        """Fold the whole log again into empty tables; return events and seconds.

        One write transaction: other writers wait for it (their events are saved
        once it commits), and no catch-up can write into half-rebuilt tables.
        """
        with self.recorder.transaction(commit=True) as c:
            self.recorder.lock(c)
            return self._rebuild_in(c)

    def _rebuild_in(self, c: Any) -> tuple[int, float]:
        with _without_cycle_collector():
            began = time.perf_counter()
            self.recorder.drop_in(c)
            self.folder = Folder()
            reached: dict[UUID, int] = {}
            events = 0
            position = 0
            previous = GENESIS
            start = 0
            while True:
                page = self._page(c, start)
                if not page:
                    break
                links: list[tuple[int, bytes]] = []
                folded = list(self._linked(iter(page), links, previous))
                previous = links[-1][1]
                batch, got, position = self.folder.fold(folded, self._get_vm)
                batch.links = links
                reached.update(got)
                self.recorder.write_in(c, batch, None)
                events += len(page)
                start = page[-1][0].id
            final = Batch()
            add_documents(final, reached, self._get_vm)
            self.recorder.write_in(c, final, position)
            return events, time.perf_counter() - began

    def _page(self, c: Any, start: int) -> list[tuple[Notification, Any]]:
        decode = self.app._decoder()
        out = []
        for rowid, originator, version, topic, state in self.recorder.rows_in(c, start, PAGE):
            n = Notification(
                id=rowid,
                originator_id=UUID(originator),
                originator_version=version,
                topic=topic,
                state=state,
            )
            out.append((n, decode(n)))
        return out

    def _linked(
        self,
        rows: Iterator[tuple[Notification, Any]],
        links: list[tuple[int, bytes]],
        previous: bytes,
    ) -> Iterator[tuple[int, Any]]:
        """Positions and events, appending each row's hash-chain link to ``links``."""
        for n, event in rows:
            previous = link(previous, n.id, n.originator_id, n.originator_version, n.topic, n.state)
            links.append((n.id, previous))
            yield n.id, event

    def _chain_to(self, position: int) -> bytes:
        """The link at ``position``, recomputed from the log's first event."""
        previous = GENESIS
        for n in self.app.read_rows(1, position):
            previous = link(previous, n.id, n.originator_id, n.originator_version, n.topic, n.state)
        return previous
