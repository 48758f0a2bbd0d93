"""CLI commands of retention: ``ckpt forget`` (and ``--undo``), ``gc --dry-run``'s text.

``forget --json`` keys (a contract, README "Retention"): ``dry_run``,
``frees_bytes`` (a dry run's estimate, else null), ``vms``: a list of
``vm``, ``vm_id``, ``policy``, ``rule``, ``position`` (the ``content-purged``
event's, null when nothing was purged or a dry run), ``kept``, ``purged``,
``points``: a list of ``id``, ``kind``, ``name``, ``created_at``, ``action``
("keep", "purge" or "purged": an earlier purge), ``reasons``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TextIO

from ckpt.domain import InvalidValue
from ckpt.domain.retention import RULES, Duration, Policy

from . import render
from .retention_ops import ForgetPlan, VMPlan
from .store import Store


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {text!r}")
    return int(text)


def _policy(a: argparse.Namespace) -> Policy | None:
    counts = {rule: getattr(a, f"keep_{rule}") for rule in RULES}
    within = None if a.keep_within is None else Duration.parse(a.keep_within)
    if all(v is None for v in counts.values()) and within is None:
        return None
    return Policy(**{k: v or 0 for k, v in counts.items()}, within=within)


def plan_json(plan: ForgetPlan) -> dict[str, Any]:
    return {
        "dry_run": plan.dry_run,
        "frees_bytes": plan.frees_bytes,
        "vms": [_vm_json(v) for v in plan.vms],
    }


def _vm_json(v: VMPlan) -> dict[str, Any]:
    return {
        "vm": v.vm,
        "vm_id": v.vm_id,
        "policy": v.policy,
        "rule": v.rule,
        "position": v.position,
        "kept": sum(p.action == "keep" for p in v.points),
        "purged": len(v.purged),
        "points": [
            {
                "id": p.id,
                "kind": p.kind,
                "name": p.name,
                "created_at": p.created_at.isoformat(),
                "action": p.action,
                "reasons": list(p.reasons),
            }
            for p in v.points
        ],
    }


def plan_text(plan: ForgetPlan) -> str:
    lines: list[str] = []
    for v in plan.vms:
        verb = "would purge" if plan.dry_run else "purged"
        where = f" (position {v.position})" if v.position is not None else ""
        lines.append(
            f"VM {v.vm!r}: policy {v.policy} ({v.rule}): {verb} {len(v.purged)} of "
            f"{len(v.points)} points{where}"
        )
        for p in v.points:
            when = p.created_at.strftime("%Y-%m-%d %H:%M:%S")
            why = f"  {'; '.join(p.reasons)}" if p.reasons else ""
            lines.append(f"  {p.action:<6} {when}  {p.kind}: {p.name}  [{p.id[:8]}]{why}")
    if not plan.vms:
        lines.append("no VM to forget in (no VM named, or none with a stored policy)")
    if plan.frees_bytes is not None and plan.vms:
        lines.append(f"gc would then free about {plan.frees_bytes:,} bytes")
    elif not plan.dry_run and any(v.purged for v in plan.vms):
        lines.append("the bytes go at the next `ckpt gc`; until then `ckpt forget --undo POSITION`")
    return "\n".join(lines)


def _forget(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    if a.undo is not None:
        if a.vm or _policy(a) is not None or a.apply_policies or a.dry_run:
            raise InvalidValue("forget --undo POSITION takes no VM, policy or --dry-run")
        back = s.undo_forget(a.undo)
        data = {"undone": a.undo, "points": [str(p) for p in back]}
        points = "1 point has its" if len(back) == 1 else f"{len(back)} points have their"
        text = f"withdrew the purge at position {a.undo}: {points} content back"
        render.emit(out, a, data, text)
        return
    plan = s.forget(
        _policy(a), a.vm, apply_policies=a.apply_policies, checkpoints=a.checkpoints,
        dry_run=a.dry_run, timezone=a.timezone,
    )  # fmt: skip
    render.emit(out, a, plan_json(plan), plan_text(plan))


def register(sub: Any, cmd: Callable[..., argparse.ArgumentParser]) -> None:
    q = cmd(
        sub,
        "forget",
        _forget,
        "purge the content of old backup points and deleted checkpoints under a keep-policy",
        json_out=True,
    )
    q.add_argument("vm", nargs="*", help="the VMs (default: every VM)")
    for rule in RULES:
        q.add_argument(f"--keep-{rule}", type=_count, metavar="N",
                       help=f"keep the newest point of each of the last N {rule} periods"
                       if rule != "last" else "keep the N newest points")  # fmt: skip
    q.add_argument(
        "--keep-within",
        metavar="DURATION",
        help="keep every point within DURATION of the newest (e.g. 2d, 1y6m, 36h)",
    )
    q.add_argument(
        "--apply-policies",
        action="store_true",
        help="run each VM's stored policy (vm set --retention)",
    )
    q.add_argument(
        "--checkpoints",
        action="store_true",
        help="live checkpoints count too (by default they are always kept)",
    )
    q.add_argument("--dry-run", action="store_true", help="list keep/purge and why; record nothing")
    q.add_argument("--timezone", metavar="ZONE", help="periods in this zone (default UTC)")
    q.add_argument(
        "--undo",
        type=_position,
        metavar="POSITION",
        help="withdraw the purge recorded at POSITION (until gc reclaims it)",
    )


def _position(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a log position (1, 2, ...), not {text!r}")
    return int(text)
