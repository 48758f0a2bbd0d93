"""When ``verify`` and ``verify --log`` last ran, as ``ckpt report`` shows it.

``note_chunks`` and ``note_log`` keep a finished check in the store's verify
record (storage/verify_record.py) when the store can be written; ``last``
reads it. A record is a convenience for the report: it is skipped on a
replica that follows its primary, on read-only media, or when the database
refuses the write, and never makes the check itself fail.
"""

from __future__ import annotations

import logging
from typing import Any

from ckpt.storage.chunks.verify import VerifyReport
from ckpt.storage.log_chain import ChainReport
from ckpt.storage.read_model_tables import SQLiteReadModels
from ckpt.storage.verify_record import VerifyRun, last_runs, record

from ..unit_of_work import UnitOfWork

log = logging.getLogger(__name__)


def note_chunks(uow: UnitOfWork, report: VerifyReport[Any]) -> None:
    bad = len(report.bad) + len(report.unreadable) + len(report.stale_index)
    _note(uow, VerifyRun("chunks", _now(uow), report.ok, bad, report.checked))


def note_log(uow: UnitOfWork, report: ChainReport) -> None:
    bad = len(report.problems) + (report.anchor_found is False)
    run = VerifyRun(
        "log", _now(uow), report.ok, bad, report.events, report.last_position,
        report.last_link.hex(),
    )  # fmt: skip
    _note(uow, run)


def last(uow: UnitOfWork) -> dict[str, VerifyRun]:
    """The last run of each kind ("chunks", "log"); empty: never verified."""
    recorder = uow.read_models.recorder
    dialect = "sqlite" if isinstance(recorder, SQLiteReadModels) else "postgresql"
    with uow.translated():
        return last_runs(recorder, dialect)


def _now(uow: UnitOfWork) -> str:
    return uow.clock().isoformat()


def _note(uow: UnitOfWork, run: VerifyRun) -> None:
    try:
        uow.writable("the verify record")
        with uow.translated():
            record(uow.read_models.recorder, run)
    # Any failure (a replica, read-only media, a locked or full database, a driver
    # error translated or not): the check ran and its answer stands without a record.
    except Exception as e:
        log.debug("verify record not kept: %s", e)
