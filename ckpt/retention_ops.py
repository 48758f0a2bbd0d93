"""Retention use cases: forget (plan, purge), undo a purge, reclaim purges for gc, a policy.

Terms (``domain/purges.py`` and ``point_history.py`` define point, purge,
reclaimed, withdrawn): a *candidate* is a point a policy may purge: a backup
point, a checkpoint deleted from the tree, and with ``checkpoints`` a live
checkpoint too; not one already purged. The policy (``domain/retention.py``)
sorts the candidates into keep and purge; live checkpoints without
``checkpoints`` are kept ("live checkpoint") and do not count for the rules.

Cost: one pass over the whole log (``point_history.walk``), whatever the VMs
named; a dry run's byte figure walks the manifests of every kept point twice
and the chunk index twice (as ``gc --dry-run``: before and after the purge).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from uuid import UUID

from ckpt.domain import (
    ContentPurged,
    InvalidValue,
    NotFound,
    Origin,
    PointPurged,
    PurgedPoint,
    StoreConflict,
    VirtualMachine,
)
from ckpt.domain import purges as purge_rules
from ckpt.domain.retention import Candidate, Policy, select
from ckpt.storage.references import Reference

from . import queries
from .point_history import BACKUP_POINT, CHECKPOINT, PointContent, VMHistory, walk
from .retained import Gone, kept_references, reclaimed, referenced_ids
from .unit_of_work import BACKOFF_S, RETRIES, UnitOfWork

DELETED_CHECKPOINT = "deleted checkpoint"
FORGET_OPTIONS = "forget options"
STORED_POLICY = "stored policy"


@dataclass(frozen=True)
class PointVerdict:
    """One point of a VM and what forget does with it: ``action`` "keep",
    "purge", or "purged" (an earlier purge, still in force); ``reasons`` why."""

    id: str
    kind: str  # "backup point", "checkpoint" (live) or "deleted checkpoint"
    name: str
    created_at: datetime
    action: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class VMPlan:
    """One VM's points under a policy; ``position``: the purge event's (None when
    nothing was purged, or a dry run)."""

    vm: str
    vm_id: str
    policy: str
    rule: str
    points: list[PointVerdict]
    position: int | None = None

    @property
    def purged(self) -> list[PointVerdict]:
        return [p for p in self.points if p.action == "purge"]


@dataclass(frozen=True)
class ForgetPlan:
    """What ``Store.forget`` decided (and, unless ``dry_run``, recorded).
    ``frees_bytes``: a dry run's estimate of what gc frees after this purge."""

    dry_run: bool
    vms: list[VMPlan] = field(default_factory=list)
    frees_bytes: int | None = None


def timezone(name: str | None) -> tzinfo:
    if name is None or name.upper() == "UTC":
        return UTC
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidValue(
            f"--timezone: unknown time zone {name!r} (e.g. Europe/Berlin, UTC)"
        ) from None


def _kind(p: PointContent) -> str:
    if p.kind == BACKUP_POINT:
        return BACKUP_POINT
    return CHECKPOINT if p.live else DELETED_CHECKPOINT


def plan_vm(
    h: VMHistory,
    policy: Policy,
    rule: str,
    tz: tzinfo,
    checkpoints: bool,
) -> VMPlan:
    """The verdict on every point of one VM (nothing recorded)."""
    vm = h.vm
    candidates: list[Candidate] = []
    fixed: list[PointVerdict] = []
    by_key: dict[str, PointContent] = {}
    for p in h.points:
        mark = vm.purged.get(p.id)
        if mark is not None:
            where = h.positions.get(mark.version)
            at = f"at position {where} " if where is not None else ""
            reason = f"purged {at}by {mark.actor} under policy {mark.policy}"
            fixed.append(
                PointVerdict(str(p.id), _kind(p), p.name, p.created_at, "purged", (reason,))
            )
        elif p.kind == CHECKPOINT and p.live and not checkpoints:
            fixed.append(
                PointVerdict(
                    str(p.id), _kind(p), p.name, p.created_at, "keep", ("live checkpoint",)
                )
            )
        else:
            by_key[str(p.id)] = p
            candidates.append(Candidate(str(p.id), p.created_at))
    verdicts = [
        PointVerdict(v.key, _kind(by_key[v.key]), by_key[v.key].name, by_key[v.key].created_at,
                     "keep" if v.keep else "purge", tuple(v.reasons))
        for v in select(candidates, policy, tz)
    ]  # fmt: skip
    points = sorted(verdicts + fixed, key=lambda v: (v.created_at, v.id), reverse=True)
    return VMPlan(vm.name, str(vm.id), str(policy), rule, points)


def _targets(
    uow: UnitOfWork, histories: dict[UUID, VMHistory], names: Sequence[str]
) -> list[VMHistory]:
    if not names:
        return sorted((h for h in histories.values() if not h.vm.removed), key=lambda h: h.vm.name)
    out: list[VMHistory] = []
    for name in names:
        vm = queries.vm(uow, name)
        h = histories.get(vm.id)
        if h is None:  # pragma: no cover - a VM the walk did not see was registered after it
            raise NotFound(f"VM {name!r} was registered after forget read the log; run it again")
        if h not in out:
            out.append(h)
    return out


def forget(
    uow: UnitOfWork,
    names: Sequence[str],
    policy: Policy | None,
    apply_policies: bool = False,
    checkpoints: bool = False,
    dry_run: bool = False,
    tz: tzinfo = UTC,
) -> ForgetPlan:
    """Plan a purge per VM under ``policy`` (or each VM's stored one) and record it."""
    if apply_policies == (policy is not None and not policy.empty):
        both = ", not both" if apply_policies else ""
        raise InvalidValue(
            "forget needs a policy: --keep-last/--keep-hourly/--keep-daily/--keep-weekly/"
            f"--keep-monthly/--keep-yearly/--keep-within, or --apply-policies{both}"
        )
    if not dry_run:
        uow.writable("forget")
    for attempt in range(RETRIES):
        uow.catch_up()
        histories = walk(uow)
        plans: list[tuple[VMHistory, VMPlan]] = []
        for h in _targets(uow, histories, names):
            chosen = Policy.parse(h.vm.retention) if apply_policies else policy
            if chosen is None or chosen.empty:
                continue
            rule = STORED_POLICY if apply_policies else FORGET_OPTIONS
            plans.append((h, plan_vm(h, chosen, rule, tz, checkpoints)))
        if dry_run:
            return ForgetPlan(True, [p for _, p in plans], _frees(uow, histories, plans))
        try:
            return ForgetPlan(False, [_record(uow, h, p) for h, p in plans])
        except StoreConflict:
            if attempt == RETRIES - 1:
                raise
            time.sleep(random.uniform(0, BACKOFF_S * 2 ** (attempt + 1)))
    raise AssertionError("unreachable")


def _record(uow: UnitOfWork, h: VMHistory, plan: VMPlan) -> VMPlan:
    """Save one VM's purge, on the VM exactly as the walk saw it (else conflict)."""
    if not plan.purged:
        return plan
    vm = uow.app.get_vm(h.vm.id)
    if vm.version != h.vm.version:
        raise StoreConflict(f"VM {vm.name!r} changed while forget planned")
    points = [PurgedPoint(UUID(p.id), p.kind, p.name, p.created_at) for p in plan.purged]
    purge_rules.purge(vm, uow.origin(), points, plan.policy, plan.rule)
    uow.save(vm)
    return VMPlan(plan.vm, plan.vm_id, plan.policy, plan.rule, plan.points, _last_position(uow, vm))


def _last_position(uow: UnitOfWork, vm: VirtualMachine) -> int | None:
    return _audit_position(uow, vm, vm.version)


def _audit_position(
    uow: UnitOfWork, vm: VirtualMachine, version: int, operation: str | None = None
) -> int | None:
    """The log position of ``vm``'s event at ``version``, from the audit read
    model; folding the log into it first when it lacks the event (a command
    killed between its commit and its fold, or whose fold failed, leaves it
    behind until the next catch-up). None when the read models cannot say."""
    for attempt in range(2):
        rows = uow.read_models.recorder.audit(vm_id=str(vm.id), operation=operation)
        found = next((r.position for r in reversed(rows) if r.version == version), None)
        if found is not None or attempt or not uow.caught_up():
            return found
    return None


def _frees(
    uow: UnitOfWork, histories: dict[UUID, VMHistory], plans: list[tuple[VMHistory, VMPlan]]
) -> int:
    """Bytes gc (grace 0) would free after these purges, less what it frees anyway."""
    planned = {UUID(p.id) for _, plan in plans for p in plan.purged}

    def before(h: VMHistory, p: PointContent) -> bool:
        return p.id in h.vm.purged  # every purge in force, as the next gc reclaims them

    def after(h: VMHistory, p: PointContent) -> bool:
        return before(h, p) or p.id in planned

    return _estimate(uow, histories, after) - _estimate(uow, histories, before)


def _estimate(uow: UnitOfWork, histories: dict[UUID, VMHistory], gone: Gone) -> int:
    broken: list[tuple[Reference, str]] = []
    refs = kept_references(uow, histories, gone)
    with referenced_ids(refs, uow.chunks, broken, lenient=True) as needed:
        return uow.chunks.estimate_unreferenced(needed, 0, time.time()).freed_bytes


def undo(uow: UnitOfWork, position: int) -> tuple[VirtualMachine, list[UUID]]:
    """Withdraw the purge recorded at log ``position``: its VM and the points back."""
    uow.writable("forget --undo")
    end = uow.app.last_position()
    found = None
    if position <= end:  # beyond it, SQLite cannot even bind a position past 2**63
        with uow.translated():
            found = next(iter(uow.app.read_log(start=position, stop=position)), None)
    if found is None or found[0] != position:
        raise NotFound(f"no event at position {position} (the log ends at {end})")
    event = found[1]
    if not isinstance(event, ContentPurged):
        raise InvalidValue(f"the event at position {position} is not a purge (content-purged)")
    version = event.originator_version

    def act(vm: VirtualMachine, origin: Origin) -> tuple[VirtualMachine, list[UUID]]:
        return vm, purge_rules.withdraw(vm, origin, version, position)

    return uow.retry(lambda: uow.app.get_vm(event.originator_id), act)


def reclaim_purges(uow: UnitOfWork, dry_run: bool) -> tuple[dict[UUID, VMHistory], Gone, list[int]]:
    """For gc: the histories, which points are gone for it, and the log positions
    of the purges it reclaims. Unless ``dry_run``, records ``PurgeReclaimed`` on
    every VM with a purge not reclaimed yet, in one transaction, before gc
    deletes anything; a VM changed meanwhile makes it read the log again."""
    for attempt in range(RETRIES):
        histories = walk(uow)
        pending = {
            vid: purge_rules.pending(h.vm) for vid, h in histories.items() if not h.vm.removed
        }
        pending = {vid: v for vid, v in pending.items() if v}

        def gone(h: VMHistory, p: PointContent, pending: dict[UUID, list[int]] = pending) -> bool:
            mark = h.vm.purged.get(p.id)
            return reclaimed(h, p) or (
                mark is not None and mark.version in pending.get(h.vm.id, ())
            )

        positions = sorted(histories[vid].positions[v] for vid, vs in pending.items() for v in vs)
        if dry_run or not pending:
            return histories, gone, positions
        vms: list[VirtualMachine] = []
        for vid, versions in pending.items():
            vm = uow.app.get_vm(vid)
            if vm.version != histories[vid].vm.version:
                break
            where = [histories[vid].positions[v] for v in versions]
            purge_rules.reclaim(vm, uow.origin(), versions, where)
            vms.append(vm)
        else:
            try:
                with uow.translated():
                    uow.app.save(*vms)
                for vm in vms:
                    uow.after_save(vm)
                return histories, gone, positions
            except StoreConflict:
                pass
        if attempt < RETRIES - 1:
            time.sleep(random.uniform(0, BACKOFF_S * 2 ** (attempt + 1)))
    raise StoreConflict("gc: VMs with purges kept changing while gc read the log; run it again")


def set_retention(uow: UnitOfWork, name: str, text: str) -> VirtualMachine:
    """Store ``text`` (checked, made canonical) as the VM's policy; "none" removes it."""
    policy = Policy.parse(text)
    canonical = "" if policy.empty else str(policy)

    def act(vm: VirtualMachine, origin: Origin) -> VirtualMachine:
        purge_rules.set_retention(vm, origin, canonical)
        return vm

    return uow.retry(lambda: queries.vm(uow, name), act)


def purged_error(uow: UnitOfWork, vm: VirtualMachine, pid: UUID, label: str) -> PointPurged | None:
    """The error for reading a purged point's content (None when it is not purged)."""
    try:
        latest = uow.app.get_vm(vm.id)
    except NotFound:
        return None
    mark = latest.purged.get(pid)
    if mark is None:
        return None
    where = _audit_position(uow, vm, mark.version, "content-purged")
    at = f" at position {where}" if where is not None else ""
    if mark.version in latest.reclaimed or latest.removed:
        tail = "; gc has reclaimed its bytes"
    else:
        tail = f"; `ckpt forget --undo {where}` gives it back until gc runs" if where else ""
    return PointPurged(
        f"the content of {label} of VM {vm.name!r} was purged{at} by {mark.actor} "
        f"under policy {mark.policy}{tail}"
    )
