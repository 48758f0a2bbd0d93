"""Queries: VMs and their trees, chains, files and the audit log, now or as of ``--at``.

Terms: ``--at`` is a *log position* (a number) or an ISO 8601 *time* (the last
position at or before it; a time without an offset is UTC, as the log records
times). A VM is found by *name* (case-insensitive) or *id*; a removed VM's name
belongs to a new *generation* (``vm_id(name, generation)``) and its history
stays in the log. Reads first *catch up* the read models with what other
writers appended.
"""

from __future__ import annotations

import contextlib
import difflib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

from ckpt.domain import (
    Checkpoint,
    CkptError,
    InvalidValue,
    StateFile,
    UnknownVM,
    VirtualMachine,
    vm_id,
)
from ckpt.domain.naming import Candidate, find_named, parse_id
from ckpt.projections import (
    OPERATIONS,
    AuditEntry,
    ChainEntry,
    TreeEntry,
    disk_chains,
    tree_entries,
)
from ckpt.storage.log_chain import ChainReport, parse_anchor, walk
from ckpt.storage.read_model_tables import AuditRow

from .unit_of_work import UnitOfWork


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 time; one without an offset is UTC, as the log records times."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidValue(
            f"{option} {text!r} is neither a log position nor an ISO 8601 time"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def position(uow: UnitOfWork, at: str | int | None) -> int | None:
    """A log position from ``--at``: a position number, or an ISO 8601 time
    (the last position at or before it). None stays None (= now)."""
    if at is None:
        return None
    text = str(at).strip()
    last = uow.app.last_position()
    if text.isdigit():
        found = int(text)
        if found > last:
            raise InvalidValue(f"position {found} is beyond the end of the log ({last})")
        return found
    when = parse_time(text, "--at")
    uow.catch_up()
    return uow.read_models.recorder.position_at(when.timestamp())


def generations(uow: UnitOfWork, name: str) -> tuple[int, VirtualMachine | None]:
    """The first generation of ``name`` never registered, and the live VM of
    that name if there is one (then it is the generation before)."""
    generation = 0
    while True:
        try:
            found = uow.app.get_vm(vm_id(name, generation))
        except UnknownVM:
            return generation, None
        if not found.removed:
            return generation, found
        generation += 1


def vm(
    uow: UnitOfWork, name: str | UUID, version: int | None = None, at: str | int | None = None
) -> VirtualMachine:
    """A VM by name (case-insensitive) or id: now, as of an event version of
    its own (1 to the latest), or as of a log position or time (``at``).

    A name that is another VM's id (an old log may hold one) matches two
    VMs: ``AmbiguousName``, never the id's VM silently. A removed VM is
    found only as of a moment before its removal."""
    where = position(uow, at)
    if where is not None:
        uow.catch_up()
    found: list[VirtualMachine] = []
    tried: list[UUID] = []
    removed: VirtualMachine | None = None
    with uow.translated():
        as_id = name if isinstance(name, UUID) else parse_id(name)
        if as_id is not None:
            tried.append(as_id)
            v = _vm_as_of(uow, as_id, version, where)
            if v is not None and v.removed:
                removed = v
            elif v is not None:
                found.append(v)
        if not isinstance(name, UUID):
            generation = 0
            while True:
                vid = vm_id(name, generation)
                tried.append(vid)
                v = _vm_as_of(uow, vid, version, where)
                if v is None:
                    break
                if not v.removed:
                    if all(f.id != v.id for f in found):
                        found.append(v)
                    break
                removed, generation = v, generation + 1
    if not found and version is not None and where is None:
        _check_version(uow, tried, version)  # the VM may exist, without that version
    scope = [Candidate("VM", v.id, v.name) for v in found]
    pick = find_named(name, scope, f"the store at {uow.where}", fold_case=True)
    if pick is None:
        when = "" if where is None else f" at position {where}"
        gone = (
            ""
            if removed is None
            else f" (VM {removed.name!r}, id {removed.id}, was removed: `ckpt log` keeps its "
            "history and --at before its removal shows it)"
        )
        raise UnknownVM(f"no VM named {name!r}{when} in the store at {uow.where}{gone}")
    chosen = next(v for v in found if v.id == pick.id)
    if version is not None and where is None and chosen.version != version:
        _check_version(uow, [chosen.id], version)  # beyond the latest: not the latest silently
    return chosen


def _check_version(uow: UnitOfWork, ids: Sequence[UUID], version: int) -> None:
    """Refuse an event version a VM of ``ids`` does not have, saying its range."""
    with uow.translated():
        for candidate in ids:
            with contextlib.suppress(UnknownVM):
                latest = uow.app.get_vm(candidate)
                raise InvalidValue(
                    f"VM {latest.name!r} has no version {version}: its versions run "
                    f"from 1 to {latest.version}"
                )


def _vm_as_of(
    uow: UnitOfWork, vid: UUID, version: int | None, at: int | None
) -> VirtualMachine | None:
    """The VM with id ``vid`` at ``version`` or as of position ``at``; None if it did not exist."""
    if at is not None:
        version = uow.read_models.recorder.version_at(str(vid), at)
        if version is None:
            return None
    try:
        return uow.app.get_vm(vid, version)
    except UnknownVM:
        return None


def vms(uow: UnitOfWork) -> list[VirtualMachine]:
    uow.catch_up()
    with uow.translated():
        return [uow.app.get_vm(UUID(doc["id"])) for doc in uow.read_models.recorder.vms()]


def tree(uow: UnitOfWork, name: str, at: str | int | None = None) -> list[TreeEntry]:
    return tree_entries(vm(uow, name, at=at))


def checkpoints(uow: UnitOfWork, name: str, at: str | int | None = None) -> list[Checkpoint]:
    return list(vm(uow, name, at=at).checkpoints.values())


def chain(
    uow: UnitOfWork, name: str, checkpoint: str | None = None, at: str | int | None = None
) -> dict[str, list[ChainEntry]]:
    v = vm(uow, name, at=at)
    return disk_chains(v, None if checkpoint is None else v.find_checkpoint(checkpoint).id)


def files(
    uow: UnitOfWork, name: str, checkpoint: str, at: str | int | None = None
) -> tuple[StateFile, ...]:
    return vm(uow, name, at=at).find_checkpoint(checkpoint).state_files


def unknown_operation(operation: str) -> str:
    """Naming the operations: a typo used to print nothing with exit 0 (issue 11)."""
    known = list(OPERATIONS.values())
    close = difflib.get_close_matches(operation, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"no operation {operation!r}{hint}; the operations are: {', '.join(known)}"


def log(
    uow: UnitOfWork,
    name: str | None = None,
    operation: str | None = None,
    actor: str | None = None,
    since: str | int | None = None,
    until: str | int | None = None,
) -> list[AuditEntry]:
    """The audit trail from the read model; ``since``/``until`` are positions
    or ISO times, inclusive (a time means the last position at or before it)."""
    if operation not in (None, *OPERATIONS.values()):
        raise InvalidValue(unknown_operation(str(operation)))
    only = None if name is None else log_vm_id(uow, name)
    uow.catch_up()
    low = None if since is None else first_position_since(uow, since)
    recorder = uow.read_models.recorder
    return audit_entries(uow, recorder.audit(only, operation, actor, low, position(uow, until)))


def audit_entries(uow: UnitOfWork, rows: Sequence[AuditRow]) -> list[AuditEntry]:
    """Audit rows as ``AuditEntry``s, each with its hash-chain link."""
    recorder = uow.read_models.recorder
    links = recorder.links(rows[0].position, rows[-1].position) if rows else {}
    return [
        AuditEntry(
            position=r.position,
            time=datetime.fromtimestamp(r.time, UTC),
            actor=r.actor,
            host=r.host,
            vm=r.vm,
            vm_id=UUID(r.vm_id),
            operation=r.operation,
            checkpoint=r.checkpoint,
            details=json.loads(r.details),
            link=links.get(r.position),
        )
        for r in rows
    ]


def log_vm_id(uow: UnitOfWork, ref: str) -> str:
    """The id whose history ``log VM`` shows: the live VM of that name or id, else
    the last removed one (its history stays in the log)."""
    try:
        return str(vm(uow, ref).id)
    except UnknownVM:
        with uow.translated():
            generation, _ = generations(uow, ref)
            if generation:
                return str(vm_id(ref, generation - 1))
            with contextlib.suppress(ValueError, UnknownVM):
                return str(uow.app.get_vm(UUID(ref.strip().strip("{}"))).id)
        raise


def first_position_since(uow: UnitOfWork, since: str | int) -> int:
    """A position, or for a time the first position at or after it."""
    text = str(since).strip()
    if text.isdigit():
        return int(text)
    return uow.read_models.recorder.first_position_from(parse_time(text, "--since").timestamp())


def verify_log(uow: UnitOfWork, anchor: str | None = None) -> ChainReport:
    """Walk the hash chain over every stored event: name the first position where
    the log was changed, removed or reordered; check an anchor if given."""
    parsed = None
    if anchor is not None:
        try:
            parsed = parse_anchor(anchor)
        except ValueError as e:
            raise InvalidValue(f"--anchor {anchor!r}: {e}") from None
    # Link any new events first; a log too damaged to decode is still walked.
    with contextlib.suppress(CkptError):
        uow.catch_up()
    with uow.translated():
        rows = (
            (n.id, n.originator_id, n.originator_version, n.topic, n.state)
            for n in uow.app.read_rows(1)
        )
        return walk(rows, uow.read_models.recorder.links(), parsed)
