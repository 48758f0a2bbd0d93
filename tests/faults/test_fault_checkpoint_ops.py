"""Kill points inside checkpoint operations: apply, delete (with its merges),
delete --subtree and rename, on one VM whose checkpoints all hold content.

Each operation is one event saved in one transaction: killed, it has happened
entirely or not at all. After every kill point the tree holds exactly the
checkpoints of the ledger (none half-deleted, none lost), and every one of them
restores the bytes it captured, whatever merges the deletes made.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from ._harness import Harness, Image, MiB, Point

VM = "ops"
KILLS = {"apply": 5, "delete": 6, "delete --subtree": 5, "rename": 5}
LIVE = 6  # checkpoints kept in the tree before each kill point


def _subtree(tree: list[dict[str, Any]], root: str) -> set[str]:
    """Names of the checkpoint named ``root`` and of every checkpoint below it."""
    by_id = {e["id"]: e for e in tree}
    root_id = next(e["id"] for e in tree if e["name"] == root)
    found = {root_id}
    changed = True
    while changed:
        more = {e["id"] for e in tree if e["parent"] in found} - found
        found |= more
        changed = bool(more)
    return {by_id[i]["name"] for i in found}


def _current(tree: list[dict[str, Any]]) -> str | None:
    return next((e["name"] for e in tree if e["current"]), None)


def test_checkpoint_operations_killed_anywhere_are_all_or_nothing(
    tmp_path: Path, scratch: Path
) -> None:
    h = Harness("checkpoint-ops", tmp_path, scratch)
    h.ok("init")
    h.ok("vm", "add", VM, "--disk", "D")
    h.ok("vm", "start", VM)
    disk = Image(scratch / "d.raw", 8 * MiB, h.rng)
    memory = Image(scratch / "memory.bin", 1 * MiB, h.rng)
    numbers = itertools.count()

    def capture() -> None:
        """A checkpoint with content, uncut (with memory while the VM is not off)."""
        disk.mutate(h.rng.randrange(32, 256), h.rng.randrange(0, 2) * MiB)
        memory.mutate(32)
        name = f"c{next(numbers)}"
        args = ["checkpoint", "create", VM, name, "--type", "standard", "--disk", f"D={disk.path}"]
        with_memory = h.vm_state(VM) != "off"
        if with_memory:
            args += ["--memory", str(memory.path)]
        h.ok(*args)
        h.ledger[name] = Point(VM, name, {"D": disk.sha}, memory.sha if with_memory else None)

    def grow() -> None:
        """At least LIVE checkpoints, on branches (an apply now and then)."""
        while len(h.ledger) < LIVE:
            if h.ledger and h.rng.random() < 0.35:
                h.ok("checkpoint", "apply", VM, h.rng.choice(sorted(h.ledger)))
            capture()

    def pick(op: str, tree: list[dict[str, Any]]) -> tuple[str, ...]:
        names = sorted(e["name"] for e in tree)
        if op == "apply":
            target = h.rng.choice([n for n in names if n != _current(tree)])
            return ("checkpoint", "apply", VM, target)
        if op == "delete":
            return ("checkpoint", "delete", VM, h.rng.choice(names))
        if op == "delete --subtree":
            # a root with descendants, not the whole tree, when there is one
            roots = [n for n in names if 1 < len(_subtree(tree, n)) < len(names)] or names
            return ("checkpoint", "delete", VM, h.rng.choice(roots), "--subtree")
        target = h.rng.choice(names)
        return ("checkpoint", "rename", VM, target, f"r{next(numbers)}")

    def settle(op: str, args: tuple[str, ...], before: list[dict[str, Any]], done: bool) -> bool:
        """Check the tree after an operation ran (``done``: it returned 0) or was
        killed; update the ledger; return whether its effect is there."""
        after = h.tree(VM)
        names = {e["name"] for e in after}
        old = {e["name"] for e in before}
        target = args[3]
        if op == "apply":
            happened = _current(after) == target
            assert happened or _current(after) == _current(before), (
                f"{h.where} Now is under {_current(after)!r}, neither {target!r} nor where it was"
            )
            assert names == old, f"{h.where} apply changed the checkpoints: {old} -> {names}"
        elif op in ("delete", "delete --subtree"):
            gone = _subtree(before, target) if op == "delete --subtree" else {target}
            happened = names == old - gone
            assert happened or names == old, (
                f"{h.where} {op} {target!r} left part of it: had {sorted(old)}, "
                f"should lose {sorted(gone)}, has {sorted(names)}"
            )
            if happened:
                for name in gone:
                    del h.ledger[name]
        else:
            new = args[4]
            target_id = next(e["id"] for e in before if e["name"] == target)
            now = next((e["name"] for e in after if e["id"] == target_id), None)
            assert now in (target, new), f"{h.where} {target!r} is now named {now!r}"
            happened = now == new
            if happened:
                point = h.ledger.pop(target)
                point.name = new
                h.ledger[new] = point
        assert happened or not done, f"{h.where} exited 0 but {op} did not happen"
        assert names == set(h.ledger), (
            f"{h.where} the tree holds {sorted(names)}, the ledger {sorted(h.ledger)}"
        )
        return happened

    # Once per kind, uncut: how long the command takes.
    typical: dict[str, float] = {}
    for op in KILLS:
        grow()
        before = h.tree(VM)
        args = pick(op, before)
        typical[op] = h.timed(*args)
        h.where = f"[{h.kind} set-up: {' '.join(args)}]"
        settle(op, args, before, done=True)
    h.check()

    plan = [op for op, n in KILLS.items() for _ in range(n)]
    h.rng.shuffle(plan)
    for op in plan:
        grow()
        before = h.tree(VM)
        args = pick(op, before)
        outcome = h.kill_point(*args, typical=typical[op], label=op)
        happened = settle(op, args, before, done=not outcome.killed)
        h.result(outcome, "done" if happened else "not done")
        h.check()
    h.final_check()
