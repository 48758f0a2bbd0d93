"""Kill points inside content capture: ``checkpoint create --disk --memory`` and ``sync``.

A capture writes chunks (packs, then index files), then saves the event that
names them (docs/design.md, "Durability order"). Killed anywhere, the store must
verify clean, every earlier checkpoint must restore, and the killed checkpoint
(or backup point) must exist with all its bytes or not at all.
"""

from __future__ import annotations

from pathlib import Path

from ._harness import Harness, Image, MiB, Point

CAPTURE_KILLS = 12
# On PostgreSQL + S3 each check after a kill point opens ~10 stores, each with its
# connections and S3 client (~3-5 s a kill point on two shared cores): fewer there.
REMOTE_CAPTURE_KILLS = 6
SYNC_KILLS = 8


def _running_vm(h: Harness, vm: str, *disks: str) -> None:
    h.init()
    h.ok("vm", "add", vm, *(a for d in disks for a in ("--disk", d)))
    h.ok("vm", "start", vm)


def test_capture_killed_anywhere_leaves_all_or_nothing(
    tmp_path: Path, scratch: Path, backends: tuple[str, str, tuple[str, ...]]
) -> None:
    _, suffix, options = backends
    h = Harness(f"capture{suffix}", tmp_path, scratch, options)
    _running_vm(h, "cap", "Boot", "Data")
    boot = Image(scratch / "boot.raw", 12 * MiB, h.rng)
    data = Image(scratch / "data.raw", 4 * MiB, h.rng, fill=0.3)
    memory = Image(scratch / "memory.bin", 2 * MiB, h.rng)

    def create(name: str) -> tuple[str, ...]:
        return (
            "checkpoint", "create", "cap", name, "--type", "standard",
            "--disk", f"Boot={boot.path}", "--disk", f"Data={data.path}",
            "--memory", str(memory.path),
        )  # fmt: skip

    def point(name: str) -> Point:
        return Point("cap", name, {"Boot": boot.sha, "Data": data.sha}, memory.sha)

    def change() -> None:
        big = h.rng.random() < 0.5
        boot.mutate(h.rng.randrange(64, 512), (h.rng.randrange(1, 5) * MiB) if big else 0)
        data.mutate(h.rng.randrange(8, 64))
        memory.mutate(h.rng.randrange(64, 256))

    h.timed(*create("full"))  # the first capture stores everything
    h.ledger["full"] = point("full")
    change()
    typical = h.timed(*create("typical"))  # an incremental one: what the loop kills
    h.ledger["typical"] = point("typical")
    h.check()

    for i in range(REMOTE_CAPTURE_KILLS if options else CAPTURE_KILLS):
        change()
        name = f"cap-{i}"
        outcome = h.kill_point(*create(name), typical=typical)
        present = name in h.names("cap")
        assert present or outcome.killed, f"{h.where} exited 0 but {name!r} is not in the tree"
        h.result(outcome, "done" if present else "not done")
        if present:  # complete: every disk and the memory restore (checked by h.check)
            h.ledger[name] = point(name)
        else:
            (got,) = h.restore(point(name))
            assert set(got.values()) == {11}, f"{h.where} {name!r} is not in the tree: {got}"
        h.check()

    # Orphans of killed captures go with gc; nothing any checkpoint needs goes with them.
    h.where = f"[{h.kind}: gc --grace 0 after the kill points]"
    h.ok("gc", "--grace", "0")
    h.check()
    h.final_check()


def test_sync_killed_anywhere_leaves_all_or_nothing(tmp_path: Path, scratch: Path) -> None:
    h = Harness("sync", tmp_path, scratch)
    _running_vm(h, "sy", "D")
    disk = Image(scratch / "d.raw", 8 * MiB, h.rng)

    def sync(name: str) -> tuple[str, ...]:
        return ("sync", "sy", "--disk", f"D={disk.path}", "--name", name)

    def change() -> None:
        disk.mutate(h.rng.randrange(64, 512), h.rng.randrange(0, 4) * MiB)

    h.ok("checkpoint", "create", "sy", "base", "--disk", f"D={disk.path}")
    h.ledger["base"] = Point("sy", "base", {"D": disk.sha})
    change()
    typical = h.timed(*sync("bp-typical"))
    h.ledger["bp-typical"] = Point("sy", "bp-typical", {"D": disk.sha}, backup=True)
    h.check()

    for i in range(SYNC_KILLS):
        change()
        if i % 3 == 2:  # a checkpoint in between: the next sync diffs against a new layer
            name = f"ck-{i}"
            h.ok("checkpoint", "create", "sy", name, "--disk", f"D={disk.path}")
            h.ledger[name] = Point("sy", name, {"D": disk.sha})
            change()
        name = f"bp-{i}"
        outcome = h.kill_point(*sync(name), typical=typical)
        candidate = Point("sy", name, {"D": disk.sha}, backup=True)
        (got,) = h.restore(candidate)
        h.result(outcome, "not done" if got == {"disk D": 11} else "done")
        if got == {"disk D": 11}:  # not recorded at all
            assert outcome.killed, f"{h.where} exited 0 but backup point {name!r} is unknown"
        else:
            assert got == h.expected(candidate), f"{h.where} backup point {name!r}: {got}"
            h.ledger[name] = candidate
        h.check()

    h.where = f"[{h.kind}: gc --grace 0 after the kill points]"
    h.ok("gc", "--grace", "0")
    h.check()
    h.final_check()
