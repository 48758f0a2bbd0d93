"""Following the log: audit entries as they are committed, by this or any other process.

Terms: the *cursor* is the last log position already handed out; a *poll* asks
the event store for its last position (one ``SELECT MAX`` on the indexed
notification id: ~50 us on SQLite, one round trip on PostgreSQL). When it moved
past the cursor, the read models are caught up (the audit rows and hash links
of the new events, ``read_model_updates``) and the new rows are handed out.

Why polling, also on PostgreSQL: the event store's writers are the
``eventsourcing`` recorders, which send no NOTIFY; a trigger would make every
store's schema ours to migrate. A poll every ``interval`` (0.25 s by default)
bounds the delay to one interval plus a catch-up (a few ms per event), well
inside the 1 s the issue asks, at 4 cheap queries a second per follower.

The cursor moves to the read models' position, not the event store's: a store
whose read models cannot be brought up to date here (a replica: its
``replicate`` folds them; read-only media) hands out what they hold and waits
for the rest, never a gap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from ckpt.domain import InvalidValue
from ckpt.projections import AuditEntry
from ckpt.projections.audit import OPERATIONS

from . import queries
from .unit_of_work import UnitOfWork

INTERVAL = 0.25  # seconds between polls: a new event shows within ~0.3 s
MAX_WAIT = 7 * 24 * 3600.0  # a week: time.sleep refuses ~9.2e9 s (OverflowError)
PAGE = 1000  # audit rows read at once when the follower is far behind

Sleep = Callable[[float], None]


def follow(
    uow: UnitOfWork,
    vm: str | None = None,
    operation: str | None = None,
    actor: str | None = None,
    after: int | None = None,
    interval: float = INTERVAL,
    idle: float | None = None,
    sleep: Sleep = time.sleep,
) -> Iterator[AuditEntry]:
    """Audit entries after position ``after`` (None: from the log's end now), in
    position order, as they are committed; filtered as ``log`` filters. Ends when
    nothing new came for ``idle`` seconds (None: never; stop iterating to end).
    A bad filter or an unknown VM is raised here, not at the first ``next``."""
    if operation not in (None, *OPERATIONS.values()):
        raise InvalidValue(queries.unknown_operation(str(operation)))
    only = None if vm is None else queries.log_vm_id(uow, vm)
    with uow.translated():
        cursor = uow.app.last_position() if after is None else after
    return _entries(uow, only, operation, actor, cursor, interval, idle, sleep)


def _entries(
    uow: UnitOfWork,
    only: str | None,
    operation: str | None,
    actor: str | None,
    cursor: int,
    interval: float,
    idle: float | None,
    sleep: Sleep,
) -> Iterator[AuditEntry]:
    recorder = uow.read_models.recorder
    quiet_since = time.monotonic()
    while True:
        with uow.translated():
            newest = uow.app.last_position()
        if newest > cursor:
            uow.caught_up()  # what other processes appended; a replica's replicate folds them
            with uow.translated():
                folded = min(recorder.position(), newest)
            while cursor < folded:
                upto = min(folded, cursor + PAGE)
                with uow.translated():
                    rows = recorder.audit(only, operation, actor, cursor + 1, upto)
                    entries = queries.audit_entries(uow, rows)
                cursor = upto
                yield from entries
            if folded == newest:
                quiet_since = time.monotonic()
        if idle is not None and time.monotonic() - quiet_since >= idle:
            return
        sleep(interval)
