"""Kill points inside ``ckpt forget`` and the ``ckpt gc --grace 0`` that follows it.

A purge is one ``content-purged`` event per VM (``ckpt/retention_ops.py``); gc
records ``content-reclaimed`` for every pending purge, of every VM, in one
transaction before it deletes a chunk (``ckpt/maintenance.py``). Killed
anywhere, neither may lose a retained point's bytes or leave a VM half purged.

Terms (besides the harness's):
    held        a point whose content must restore: every backup point and
                checkpoint captured, less those purged by a purge event in the
                log that was not withdrawn. A checkpoint deleted from the tree
                is held too and restores with ``at`` (a log position at which
                it was still in the tree). ``h.ledger`` is the held points
                that restore without ``at`` (the harness checks those).
    purged      a point a purge event in the log names (and no withdrawal
                since): restoring it is exit 40 (``PointPurged``) and the
                message names the purge's position.
    plan        what ``forget ... --dry-run --json`` says the same command
                purges, per VM, taken just before the kill point: after it, each
                VM has a new purge naming exactly its plan's points, or none.
    round       grow every VM to a few candidates; kill a ``forget`` (one VM
                or every VM, killed any time or late: ``ROUNDS``; the VM, the
                ``--keep-last`` and now and then ``--checkpoints`` seeded);
                run it again uncut (it must complete the plan, adding nothing
                where the killed one had done it); kill ``gc --grace 0``; then,
                for the newest purge, ``forget --undo`` must work iff no
                ``content-reclaimed`` covers it (when it works, the points
                restore again); gc run again uncut leaves no garbage.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import DiskFormat
from ckpt.domain import PointPurged
from ckpt.exit_codes import exit_code
from ckpt.unit_of_work import UnitOfWork

from ._harness import SEED, Harness, Image, MiB, Outcome, Point, file_sha256

VMS = ("r1", "r2")
# Per round: does forget name one VM (else every VM: a purge per VM, and the gc
# after it reclaims several VMs' purges at once), and is it killed late. The
# remote run takes the first REMOTE_ROUNDS.
ROUNDS = (
    ("every VM", "any time"),
    ("one VM", "late"),
    ("every VM", "late"),
    ("one VM", "late"),
    ("every VM", "any time"),
)
# On PostgreSQL + S3 a check takes ~2 s (each command opens the remote store):
# three rounds took 44 s, one (every VM: the gc meets two VMs' purges) ~30 s.
REMOTE_ROUNDS = 1
# Points held per VM before each forget: with one live checkpoint among them and
# --keep-last 1 or 2, every VM a forget names has a purge in its plan.
CANDIDATES = 5
LATE = 0.8  # a late kill point's earliest delay, as a share of the typical duration
PURGED_EXIT = 40  # PointPurged (ckpt/exit_codes.py)


@dataclass
class Held:
    """A point and, for a checkpoint deleted from the tree, where to restore it from."""

    point: Point
    at: int | None = None


class Retention:
    """The harness, the held and purged points, and the log's view of purges."""

    def __init__(self, h: Harness, scratch: Path) -> None:
        self.h = h
        self.scratch = scratch
        self.held: dict[str, Held] = {}
        self.purged: dict[str, tuple[Held, int]] = {}  # name -> (point, purge position)
        self.live: dict[str, list[str]] = {vm: [] for vm in VMS}  # live checkpoints held
        self.images = {vm: Image(scratch / f"{vm}.raw", 2 * MiB, h.rng) for vm in VMS}
        self.numbers = itertools.count()

    # ------------------------------------------------------------ the log
    def log(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.h.json("log")
        return entries

    def purge_log(self) -> tuple[dict[int, tuple[str, frozenset[str]]], set[int]]:
        """The purges in force (position -> (VM, names), none withdrawn) and the
        positions of the purges a ``content-reclaimed`` names, from one log read."""
        found: dict[int, tuple[str, frozenset[str]]] = {}
        reclaimed: set[int] = set()
        for e in self.log():
            if e["operation"] == "content-purged":
                names = frozenset(p["name"] for p in e["details"]["points"])
                found[e["position"]] = (e["vm"], names)
            elif e["operation"] == "purge-withdrawn":
                found.pop(e["details"]["purge_position"], None)
            elif e["operation"] == "content-reclaimed":
                reclaimed.update(e["details"]["purge_positions"])
        return found, reclaimed

    def purges(self) -> dict[int, tuple[str, frozenset[str]]]:
        return self.purge_log()[0]

    def pending(self) -> set[int]:
        """Positions of the purges in force that no ``content-reclaimed`` names."""
        purges, reclaimed = self.purge_log()
        return set(purges) - reclaimed

    def last_position(self) -> int:
        position: int = self.log()[-1]["position"]
        return position

    # ------------------------------------------------------------ growing
    def capture(self, vm: str, backup: bool) -> str:
        image = self.images[vm]
        image.mutate(self.h.rng.randrange(16, 96), self.h.rng.randrange(0, 3) * 64 * 1024)
        name = f"{'b' if backup else 'c'}{next(self.numbers)}"
        disk = f"D={image.path}"
        if backup:
            self.h.ok("sync", vm, "--name", name, "--disk", disk)
        else:
            self.h.ok("checkpoint", "create", vm, name, "--disk", disk)
            self.live[vm].append(name)
        self.held[name] = Held(Point(vm, name, {"D": image.sha}, backup=backup))
        return name

    def grow(self) -> None:
        """Every VM: now and then a checkpoint deleted from the tree (its content
        stays, at ``at``), then at least CANDIDATES held points, one of them the
        one live checkpoint (a checkpoint is captured only when there is none)."""
        for vm in VMS:
            while self.live[vm] and (len(self.live[vm]) > 1 or self.h.rng.random() < 0.4):
                name = self.h.rng.choice(self.live[vm])
                at = self.last_position()
                self.h.ok("checkpoint", "delete", vm, name)
                self.live[vm].remove(name)
                self.held[name].at = at
            while sum(p.point.vm == vm for p in self.held.values()) < CANDIDATES:
                self.capture(vm, backup=bool(self.live[vm]) or self.h.rng.random() < 0.5)
            if not self.live[vm]:
                self.capture(vm, backup=False)
        self.ledger()

    def ledger(self) -> None:
        self.h.ledger = {n: p.point for n, p in self.held.items() if p.at is None}

    # ------------------------------------------------------------ forget
    def forget_args(self, one_vm: bool) -> tuple[str, ...]:
        vms = [self.h.rng.choice(VMS)] if one_vm else []
        args = ("forget", *vms, "--keep-last", str(self.h.rng.randint(1, 2)))
        return (*args, "--checkpoints") if self.h.rng.random() < 0.25 else args

    def plan(self, args: tuple[str, ...]) -> dict[str, frozenset[str]]:
        """Per VM, the points the command would purge (VMs with none left out)."""
        plan = self.h.json(*args, "--dry-run")
        assert plan["dry_run"] and all(v["position"] is None for v in plan["vms"])
        out = {
            v["vm"]: frozenset(p["name"] for p in v["points"] if p["action"] == "purge")
            for v in plan["vms"]
        }
        return {vm: names for vm, names in out.items() if names}

    def settle_forget(
        self, plan: dict[str, frozenset[str]], before: dict[int, tuple[str, frozenset[str]]]
    ) -> dict[str, int]:
        """The purges the command left: per VM, none or exactly its plan's, and
        no other purge. Moves the purged points out of ``held``; returns VM ->
        the new purge's position."""
        h = self.h
        after = self.purges()
        assert set(before) <= set(after), f"{h.where} a purge went: {before} -> {after}"
        new = {pos: after[pos] for pos in sorted(set(after) - set(before))}
        by_vm: dict[str, int] = {}
        for pos, (vm, names) in new.items():
            assert vm not in by_vm, f"{h.where} VM {vm!r} was purged twice: {new}"
            assert names == plan.get(vm), (
                f"{h.where} the purge at {pos} of VM {vm!r} names {sorted(names)}, "
                f"the plan {sorted(plan.get(vm, ()))}: half purged"
            )
            by_vm[vm] = pos
            for name in names:
                held = self.held.pop(name)
                self.purged[name] = (held, pos)
                if name in self.live[vm]:  # a live checkpoint purged (--checkpoints)
                    self.live[vm].remove(name)
        self.ledger()
        return by_vm

    # ------------------------------------------------------------ checks
    def check(self) -> None:
        """The deleted checkpoints held (with ``at``) and every purged point
        refused naming its purge, then the harness's check and ``verify --log``."""
        h = self.h
        # Before any command folds the log into the read models: a forget killed
        # between its commit and its fold leaves them behind, and a restore
        # must name the purge's position all the same.
        target = self.scratch / "out.raw"
        with ckpt.Store.open(h.store, actor="fault-check") as store:
            for name, held in self.held.items():
                if held.at is None:
                    continue  # restored by h.check()
                with target.open("wb") as out:
                    store.restore_disk(held.point.vm, name, "D", out, at=held.at)
                assert file_sha256(target) == held.point.disks["D"], (
                    f"{h.where} deleted checkpoint {name!r} (at {held.at}) restores other bytes"
                )
            for name, (held, pos) in self.purged.items():
                try:
                    with target.open("wb") as out:
                        store.restore_disk(held.point.vm, name, "D", out, at=held.at)
                except ckpt.CkptError as e:
                    assert exit_code(e) == PURGED_EXIT, f"{h.where} {name!r}: {e}"
                    assert f"purged at position {pos} " in str(e), f"{h.where} {name!r}: {e}"
                else:
                    raise AssertionError(f"{h.where} purged point {name!r} restored")
        target.unlink(missing_ok=True)
        h.check()
        report = h.json("verify", "--log")
        assert report["ok"], f"{h.where} verify --log: {report}"

    def garbage_left(self) -> int:
        h = self.h
        return int(h.json("stats")["total"]["chunks"]) - int(h.json("verify")["referenced"])

    def undo(self, position: int, reclaimed: bool) -> None:
        """``forget --undo``: refused (exit 40) once gc reclaimed the purge, else
        it gives every point of the purge back."""
        h = self.h
        code, out, err = h.cli("forget", "--undo", str(position), "--json")
        if reclaimed:
            assert code == PURGED_EXIT and "gc has reclaimed its bytes" in err, (
                f"{h.where} undo of the reclaimed purge at {position} exited {code}: {err}{out}"
            )
            return
        assert code == 0, f"{h.where} undo of the purge at {position} exited {code}: {err}"
        back = {name for name, (_, pos) in self.purged.items() if pos == position}
        assert len(json.loads(out)["points"]) == len(back), f"{h.where} undo gave back {out}"
        for name in back:
            held, _ = self.purged.pop(name)
            self.held[name] = held
            if held.at is None and not held.point.backup:
                self.live[held.point.vm].append(name)
        self.ledger()


def test_forget_and_gc_killed_anywhere_keep_what_is_held_and_purge_whole(
    tmp_path: Path, scratch: Path, backends: tuple[str, str, tuple[str, ...]]
) -> None:
    _, suffix, options = backends
    h = Harness(f"retention{suffix}", tmp_path, scratch, options)
    r = Retention(h, scratch)
    h.init()
    for vm in VMS:
        h.ok("vm", "add", vm, "--disk", "D")

    # Uncut, once each: how long forget and gc take.
    r.grow()
    args = ("forget", "--keep-last", "1")
    plan, before = r.plan(args), r.purges()
    assert set(plan) == set(VMS), plan
    typical_forget = h.timed(*args)
    r.settle_forget(plan, before)
    typical_gc = h.timed("gc", "--grace", "0")
    assert r.garbage_left() == 0 and not r.pending()
    r.check()

    for scope, when in ROUNDS[:REMOTE_ROUNDS] if options else ROUNDS:
        r.grow()
        args = r.forget_args(one_vm=scope == "one VM")
        plan, before = r.plan(args), r.purges()
        assert len(plan) == (1 if scope == "one VM" else len(VMS)), f"{args}: plan {plan}"
        # A late kill point: forget saves its purges in its last ~10% (the
        # first ~85% opens the store and reads the log).
        late = LATE if when == "late" else 0.0
        outcome = h.kill_point(*args, typical=typical_forget, label=f"forget{suffix}", late=late)
        done = r.settle_forget(plan, before)
        assert outcome.killed or set(done) == set(plan), f"{h.where} exited 0, purged {done}"
        h.result(outcome, "done" if set(done) == set(plan) else "some VMs" if done else "none")
        r.check()
        # Forget twice = forget once: the same command again purges what the
        # killed one left of its plan, and nothing on a VM where it was done.
        h.where += " (run again uncut)"
        rest = {vm: names for vm, names in plan.items() if vm not in done}
        assert r.plan(args) == rest, f"{h.where} plans {r.plan(args)}, left {rest}"
        between = r.purges()
        typical_forget = max(typical_forget, _timed_here(h, *args))
        done |= r.settle_forget(rest, between)
        assert set(done) == set(plan), f"{h.where} purged {done}, plan {plan}"

        pending = r.pending()
        gc = h.kill_point(
            "gc", "--grace", "0", typical=typical_gc, label=f"gc after forget{suffix}"
        )
        reclaimed = pending - r.pending()
        # One transaction records every pending purge's reclaim, of every VM.
        assert reclaimed in (set(), pending), f"{h.where} reclaimed {reclaimed} of {pending}"
        assert gc.killed or reclaimed == pending, f"{h.where} exited 0, reclaimed {reclaimed}"
        h.result(gc, "reclaimed" if reclaimed else "not reclaimed")
        r.check()
        took = _undo_then_gc(r, gc, max(done.values()) if done else None, bool(reclaimed))
        typical_gc = max(typical_gc, took)

    h.where = f"[{h.kind}: the end]"
    h.ok("gc", "--grace", "0")
    assert r.garbage_left() == 0, h.where
    r.check()
    h.final_check()


def _timed_here(h: Harness, *args: str) -> float:
    """Run a command uncut in this process (no interpreter start-up: cheaper
    than ``Harness.timed``); how long ``ckpt.cli.run`` took. The rounds keep
    the longest of these and the first subprocess measure as the typical
    duration: the log grows round by round, and so does the command."""
    began = time.perf_counter()
    h.ok(*args)
    return time.perf_counter() - began


def _undo_then_gc(r: Retention, gc: Outcome, position: int | None, reclaimed: bool) -> float:
    """After the gc kill point: undo the newest purge (refused iff reclaimed, or
    by a seeded coin not tried), gc again uncut; then an undo is refused.
    Returns how long that gc took (``_timed_here``)."""
    h = r.h
    if position is not None and (reclaimed or h.rng.random() < 0.5):
        r.undo(position, reclaimed)  # the points it gave back restore in the check below
    h.where = gc.describe(h.kind) + " (gc run again uncut)"
    took = _timed_here(h, "gc", "--grace", "0")
    assert r.garbage_left() == 0, f"{h.where} unreferenced chunks survived"
    assert not r.pending(), f"{h.where} a purge is not reclaimed"
    if position is not None and position in r.purges():
        r.undo(position, reclaimed=True)
    r.check()
    return took


def _backups(store: Path, scratch: Path, vm: str, count: int) -> None:
    """``vm`` with ``count`` backup points of different images (in this process)."""
    image = Image(scratch / f"{vm}.raw", 256 * 1024, random.Random(f"{SEED}/{vm}"))
    with ckpt.Store.open(store, actor="fault-check") as opened:
        opened.register_vm(vm, disks=[("D", DiskFormat.VHDX)])
        for i in range(count):
            image.mutate(8)
            opened.sync(vm, {"D": str(image.path)}, name=f"{vm}-b{i}")


def test_a_forget_cut_between_its_commit_and_the_read_models_fold_still_names_the_purge(
    tmp_path: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one kill point a random delay rarely hits, made exact in this process:
    forget's transaction committed, the read models' fold (``after_save``) not
    run, nor any catch-up. The next restore of a purged point must still say
    at which position it was purged and how to undo it; and a forget whose own
    fold failed must still report its purge's position."""
    store = tmp_path / "store"
    ckpt.Store.init(store).close()
    _backups(store, scratch, "cut", 3)
    _backups(store, scratch, "failed", 3)
    with monkeypatch.context() as m:
        m.setattr(UnitOfWork, "after_save", lambda self, vm: None)
        m.setattr(UnitOfWork, "caught_up", lambda self: False)  # and nothing else folds
        with ckpt.Store.open(store, actor="fault") as opened:
            opened.forget("last=1", ["cut"])
    with ckpt.Store.open(store, actor="fault-check") as opened:
        with pytest.raises(PointPurged) as refused:
            opened.restore_disk("cut", "cut-b0", "D", io.BytesIO())
        (cut,) = [e.position for e in opened.log() if e.operation == "content-purged"]
    assert f"purged at position {cut} by fault" in str(refused.value)
    assert f"ckpt forget --undo {cut}`" in str(refused.value)

    with monkeypatch.context() as m:
        m.setattr(UnitOfWork, "after_save", lambda self, vm: None)  # the fold failed
        with ckpt.Store.open(store, actor="fault") as opened:
            (failed,) = opened.forget("last=1", ["failed"]).vms
    with ckpt.Store.open(store, actor="fault-check") as opened:
        assert failed.position == opened.log(operation="content-purged")[-1].position
