"""What ``ckpt report`` shows, gathered from the store's read models.

Terms:
    until      the last log position the report covers: ``--at`` (a position or
               a time), else the end of the log.
    history    one VM's audit entries up to ``until``, in log order; a VM is known
               by its id, so a removed VM and a new VM of the same name are two
               histories (the removed one labelled so).
    event      one audit entry (``projections/audit.py``): the report shows each
               once, in the table and as one timeline mark.
    capture    a disk layer or state file recorded (``ckpt_captures``): its
               logical size and its *new bytes*, the content blocks the store did
               not hold yet, counted before compression
               (``storage/content_session.py``).

Cost: reads the audit rows, the hash links and the captures up to ``until``
once each (one query apiece) and holds them while the page is written: measured
~4.7 KB of Python objects per event at the peak (rows, entries, marks, their
tooltips; 849 events: 5.4 MB), so ~1.4 GB for 300,000 events; the page itself
is written as it is rendered (~1 KB of HTML per event). Plus the chunk index's
totals (``ChunkStore.stats``) when ``until`` is the end of the log.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ckpt.domain import InvalidValue, UnknownVM
from ckpt.storage.read_model_tables import AuditRow, CaptureRow
from ckpt.storage.verify_record import VerifyRun

from .. import maintenance, queries
from ..unit_of_work import UnitOfWork
from . import verify_status


@dataclass(frozen=True)
class Event:
    """One audit entry, as the table and the timeline show it."""

    position: int
    time: datetime
    actor: str
    host: str
    vm: str
    vm_id: str
    operation: str
    checkpoint: str | None
    details: dict[str, Any]
    link: str  # hex; "" when the log has no link for it

    @property
    def iso_time(self) -> str:
        return self.time.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class History:
    vm_id: str
    name: str
    removed: bool = False
    events: list[Event] = field(default_factory=list)
    captures: list[CaptureRow] = field(default_factory=list)


@dataclass(frozen=True)
class StoreTotals:
    """The chunk store's figures now (None under ``--at``: the log does not hold them)."""

    logical_bytes: int
    unique_bytes: int
    stored_bytes: int
    dedup_ratio: float | None
    compression_ratio: float | None


@dataclass
class ReportData:
    where: str
    until: int  # the last position covered
    at: str | None  # as the user gave it
    last_position: int  # the end of the log now
    generated_at: datetime
    histories: list[History]
    verification: dict[str, VerifyRun]
    totals: StoreTotals | None

    @property
    def events(self) -> list[Event]:
        return sorted((e for h in self.histories for e in h.events), key=lambda e: e.position)


def gather(uow: UnitOfWork, vms: Sequence[str] | None, at: str | int | None) -> ReportData:
    """Everything the page shows, for ``vms`` (names or ids; None: every VM with a
    history, removed ones too) as of ``at``."""
    uow.catch_up()
    last = uow.app.last_position()
    until = queries.position(uow, at)
    chosen = None if vms is None else _vm_ids(uow, vms)
    recorder = uow.read_models.recorder
    with uow.translated():
        rows = recorder.audit(until=until)
        links = recorder.links(1, until)
        captures = recorder.captures(until)
    histories: dict[str, History] = {}
    for row in rows:
        if chosen is not None and row.vm_id not in chosen:
            continue
        h = histories.get(row.vm_id)
        if h is None:
            h = histories[row.vm_id] = History(row.vm_id, row.vm)
        h.name = row.vm
        h.removed = row.operation == "vm-removed"
        h.events.append(_event(row, links.get(row.position)))
    for c in captures:
        if c.vm_id in histories:
            histories[c.vm_id].captures.append(c)
    if chosen is not None:
        for vm_id in chosen:  # a VM named but without events up to --at
            histories.setdefault(vm_id, History(vm_id, chosen[vm_id]))
    return ReportData(
        where=uow.where,
        until=last if until is None else until,
        at=None if at is None else str(at),
        last_position=last,
        generated_at=uow.clock().astimezone(UTC),
        histories=sorted(histories.values(), key=lambda h: (h.name.lower(), h.removed, h.vm_id)),
        verification=verify_status.last(uow),
        totals=_totals(uow) if until is None else None,
    )


def _vm_ids(uow: UnitOfWork, names: Sequence[str]) -> dict[str, str]:
    """VM id -> the name given, for each name (the live VM, else the last removed
    one, as ``ckpt log VM``); ``UnknownVM`` names the first unknown one."""
    found: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise InvalidValue(f"report: a VM name must be non-empty text, not {name!r}")
        try:
            found[queries.log_vm_id(uow, name)] = name
        except UnknownVM:
            raise UnknownVM(f"report: no VM named {name!r}, now or in the log") from None
    return found


def _event(row: AuditRow, link: bytes | None) -> Event:
    return Event(
        position=row.position,
        time=datetime.fromtimestamp(row.time, UTC),
        actor=row.actor,
        host=row.host,
        vm=row.vm,
        vm_id=row.vm_id,
        operation=row.operation,
        checkpoint=row.checkpoint,
        details=json.loads(row.details),
        link="" if link is None else link.hex(),
    )


def _totals(uow: UnitOfWork) -> StoreTotals:
    total = maintenance.stats(uow)["total"]
    return StoreTotals(
        logical_bytes=total["logical_bytes"],
        unique_bytes=total.get("unique_bytes") or 0,
        stored_bytes=total.get("stored_bytes") or 0,
        dedup_ratio=total.get("dedup_ratio"),
        compression_ratio=total.get("compression_ratio"),
    )
