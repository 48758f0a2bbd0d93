"""Hypothesis properties of retention on a real store (issue 16's "done when").

Terms: a *schedule* is a drawn list of steps on one VM, each a backup point
(``sync``), a live checkpoint, a checkpoint deleted right after it was taken,
applying an earlier live checkpoint (a new branch) or deleting one (its disk
merged into its children), points placed 1 to 60 hours apart by the store's
fixed clock; a *policy* is drawn
with small counts so that both keep and purge happen. Images are 64 KiB (16
blocks of 4 KiB) so an example costs ~0.1 s; few examples each.

Properties:
- forget twice = forget once: the second run purges nothing and keeps the same;
- the newest point of each VM is never purged (also with ``checkpoints``);
- after forget + gc (grace 0) every retained point restores byte-identically,
  every purged one is refused, and verify is clean;
- the stored bytes shrink by what ``forget --dry-run`` announced, within 5%.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from retention_support import World, day, quick_dir, restored, stored_bytes, world

from ckpt import DiskFormat
from ckpt.domain import PointPurged
from ckpt.domain.retention import Duration, Policy

SYNC, LIVE, DELETED = "sync", "checkpoint", "deleted"
APPLY, DELETE_OLDER = "apply", "delete an older checkpoint"
SIZE, STRETCH = 64 << 10, 4 << 10

FEW = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

schedules = st.lists(
    st.tuples(
        st.sampled_from([SYNC, SYNC, LIVE, DELETED, APPLY, DELETE_OLDER, LIVE]), st.integers(1, 60)
    ),
    min_size=1,
    max_size=8,
)
policies = st.builds(
    Policy,
    last=st.integers(0, 2),
    hourly=st.integers(0, 2),
    daily=st.integers(0, 2),
    weekly=st.integers(0, 1),
    monthly=st.integers(0, 1),
    within=st.none() | st.builds(Duration, hours=st.integers(1, 48)),
).filter(lambda p: not p.empty)


@dataclass
class Built:
    w: World
    at: dict[str, int]  # a deleted checkpoint's name -> the last position it was in the tree


def build(path: Path, schedule: list[tuple[str, int]], vm: str = "web", seed: int = 1) -> Built:
    w = world(path, seed=seed, vm=vm, size=SIZE, stretch=STRETCH)
    return extend(Built(w, {}), schedule, vm)


def extend(b: Built, schedule: list[tuple[str, int]], vm: str) -> Built:
    when = day(1, hour=0)
    for i, (kind, hours) in enumerate(schedule):
        when += timedelta(hours=hours)
        name = f"{vm}-{i}"
        live = [c.name for c in b.w.store.checkpoints(vm)]
        # ``hours`` doubles as the choice of checkpoint: one draw, shrinks together
        if kind == APPLY:
            if live:
                target = live[hours % len(live)]
                b.w.store.apply_checkpoint(vm, target)
                b.w.image[:] = b.w.expected[target]
            continue
        if kind == DELETE_OLDER:
            if live:
                target = live[hours % len(live)]
                b.at[target] = len(b.w.store.log())
                b.w.store.delete_checkpoint(vm, target)
            continue
        if kind == SYNC:
            b.w.sync(vm, name, when)
        else:
            b.w.checkpoint(vm, name, when)
            if kind == DELETED:
                b.at[name] = len(b.w.store.log())
                b.w.store.delete_checkpoint(vm, name)
    return b


def verdicts(plan: object) -> dict[str, str]:
    return {p.name: p.action for v in plan.vms for p in v.points}  # type: ignore[attr-defined]


@FEW
@given(schedule=schedules, policy=policies, checkpoints=st.booleans())
def test_forget_then_gc_keeps_every_retained_point_and_frees_what_the_dry_run_said(
    schedule: list[tuple[str, int]], policy: Policy, checkpoints: bool
) -> None:
    with TemporaryDirectory(dir=quick_dir()) as tmp:
        b = build(Path(tmp) / "s", schedule)
        s = b.w.store
        s.gc(0)  # whatever gc would free anyway is gone before the measurement
        before = stored_bytes(s)
        dry = s.forget(policy, checkpoints=checkpoints, dry_run=True)
        plan = s.forget(policy, checkpoints=checkpoints)
        assert verdicts(plan) == verdicts(dry)
        # forget twice = forget once
        again = s.forget(policy, checkpoints=checkpoints)
        assert all(not v.purged and v.position is None for v in again.vms)
        assert verdicts(again) == {
            n: "purged" if a == "purge" else a for n, a in verdicts(plan).items()
        }
        report = s.gc(0)
        freed = before - stored_bytes(s)
        assert dry.frees_bytes is not None
        # within 5% (and a pack header's worth: gc repacks the survivors)
        assert abs(freed - dry.frees_bytes) <= 0.05 * dry.frees_bytes + 256, (freed, dry)
        assert abs(report.freed_bytes - freed) <= 0.05 * freed + 256, (report, freed)
        assert s.verify().ok
        for name, action in verdicts(plan).items():
            if action == "keep":
                assert restored(s, "web", name, at=b.at.get(name)) == b.w.expected[name], name
            else:
                with pytest.raises(PointPurged, match="gc has reclaimed its bytes"):
                    restored(s, "web", name, at=b.at.get(name))
        s.close()


@FEW
@given(
    schedules=st.lists(schedules, min_size=1, max_size=3),
    policy=policies,
    checkpoints=st.booleans(),
)
def test_the_newest_point_of_each_vm_is_never_purged_and_a_second_forget_purges_nothing(
    schedules: list[list[tuple[str, int]]], policy: Policy, checkpoints: bool
) -> None:
    with TemporaryDirectory(dir=quick_dir()) as tmp:
        b = build(Path(tmp) / "s", schedules[0], vm="vm0")
        for i, schedule in enumerate(schedules[1:], start=1):
            b.w.store.register_vm(f"vm{i}", [("D", DiskFormat.VHDX)])
            extend(b, schedule, f"vm{i}")
        s = b.w.store
        plan = s.forget(policy, checkpoints=checkpoints)
        assert sorted(v.vm for v in plan.vms) == [f"vm{i}" for i in range(len(schedules))]
        for v in plan.vms:
            candidates = [
                p for p in v.points if checkpoints or p.kind != "checkpoint"
            ]  # live checkpoints are no candidates without ``checkpoints``
            if not candidates:
                continue
            newest = max(candidates, key=lambda p: p.created_at)
            assert newest.action == "keep", (v.vm, newest)
            assert newest.reasons
        again = s.forget(policy, checkpoints=checkpoints)
        assert all(not v.purged for v in again.vms)
        assert [p.action for v in again.vms for p in v.points] == [
            "purged" if p.action == "purge" else p.action for v in plan.vms for p in v.points
        ]
        # the content of every VM's newest point is still readable
        for v in plan.vms:
            newest = max(v.points, key=lambda p: p.created_at, default=None)
            if newest is not None and newest.action == "keep":
                got = io.BytesIO()
                s.restore_disk(v.vm, newest.name, "D", got, at=b.at.get(newest.name))
                assert got.getvalue() == b.w.expected[newest.name]
        s.close()
