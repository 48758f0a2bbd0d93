"""Retention end to end: ``ckpt forget`` (API and CLI), what a purge refuses, gc, undo.

Terms: a *point* is a backup point or a checkpoint (live, or deleted from the
tree); *purged*: its content given up by a ``content-purged`` event;
*reclaimed*: gc recorded ``content-reclaimed`` and deleted the bytes. The
stores are built through the API with a fixed clock (tests/retention_support.py)
and then driven through the CLI in-process (tests/cli_support.py).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from cli_support import CLI
from conftest import Backends
from retention_support import World, day, restored, stored_bytes, world

from ckpt import DiskFormat, Store
from ckpt.cli_serve import points
from ckpt.domain import InvalidValue, NotFound, PointPurged
from ckpt.exit_codes import TABLE
from ckpt.mount_tree import build

CODE = dict(TABLE)
PURGED = CODE[PointPurged]  # 40


def ten_days(scratch: Path) -> World:
    """VM web with backup points day1..day10, one a day at noon UTC."""
    w = world(scratch / "s")
    for n in range(1, 11):
        w.sync("web", f"day{n}", day(n))
    return w


def cli(w: World) -> CLI:
    return CLI(w.path, actor="bob")


def verified(path: Path) -> bool:
    """verify through a store opened now: one opened before a CLI gc repacked
    holds a chunk index that names packs gc replaced."""
    with Store.open(path) as fresh:
        return fresh.verify().ok


def test_dry_run_lists_every_point_with_its_verdict_and_records_nothing(scratch: Path) -> None:
    w = ten_days(scratch)
    c = cli(w)
    before = len(w.store.log())
    plan = c.json("forget", "web", "--keep-last", "2", "--keep-daily", "3", "--dry-run")
    assert len(w.store.log()) == before
    assert plan["dry_run"] is True and plan["frees_bytes"] > 0
    (vm,) = plan["vms"]
    got = {p["name"]: (p["action"], p["reasons"]) for p in vm["points"]}
    assert got == {
        "day10": ("keep", ["last 1/2"]),
        "day9": ("keep", ["last 2/2"]),
        "day8": ("keep", ["daily 2026-11-08 1/3"]),
        "day7": ("keep", ["daily 2026-11-07 2/3"]),
        "day6": ("keep", ["daily 2026-11-06 3/3"]),
        **{f"day{n}": ("purge", []) for n in range(1, 6)},
    }
    assert vm["position"] is None and vm["kept"] == 5 and vm["purged"] == 5
    text = c.ok("forget", "web", "--keep-last", "2", "--keep-daily", "3", "--dry-run")
    assert "would purge 5 of 10 points" in text and "gc would then free about" in text
    assert len(w.store.log()) == before
    # after a real purge, a dry run shows the purged points as such, with where and who
    position = c.json("forget", "web", "--keep-last", "8")["vms"][0]["position"]
    again = c.json("forget", "web", "--keep-last", "2", "--dry-run")["vms"][0]["points"]
    old = {p["name"]: p for p in again}
    assert old["day1"]["action"] == "purged"
    assert old["day1"]["reasons"] == [f"purged at position {position} by bob under policy last=8"]
    assert old["day3"]["action"] == "purge" and old["day10"]["action"] == "keep"


def test_forget_json_keys_are_the_documented_ones(scratch: Path) -> None:
    w = ten_days(scratch)
    plan = cli(w).json("forget", "--keep-last", "9")
    assert set(plan) == {"dry_run", "frees_bytes", "vms"}
    assert plan["dry_run"] is False and plan["frees_bytes"] is None
    (vm,) = plan["vms"]
    assert set(vm) == {"vm", "vm_id", "policy", "rule", "position", "kept", "purged", "points"}
    assert (vm["vm"], vm["policy"], vm["rule"]) == ("web", "last=9", "forget options")
    assert vm["vm_id"] == str(w.store.vm("web").id)
    assert vm["purged"] == 1 and vm["kept"] == 9 and vm["position"] > 0
    point = vm["points"][-1]
    assert set(point) == {"id", "kind", "name", "created_at", "action", "reasons"}
    assert point == {
        "id": str(w.store.vm("web").find_point("day1").id),
        "kind": "backup point",
        "name": "day1",
        "created_at": "2026-11-01T12:00:00+00:00",
        "action": "purge",
        "reasons": [],
    }


def test_a_purged_point_is_refused_by_restore_export_serve_and_left_out_of_mount(
    scratch: Path,
) -> None:
    w = world(scratch / "s")
    w.checkpoint("web", "cp", day(1))
    at = len(w.store.log())  # the last position where "cp" is in the tree
    w.store.delete_checkpoint("web", "cp")
    w.sync("web", "old", day(2))
    w.sync("web", "new", day(3))
    c = cli(w)
    plan = c.json("forget", "web", "--keep-last", "1")
    position = plan["vms"][0]["position"]
    assert sorted(p["name"] for p in plan["vms"][0]["points"] if p["action"] == "purge") == [
        "cp",
        "old",
    ]
    out = scratch / "out"
    out.mkdir()
    said = f"was purged at position {position} by bob under policy last=1"
    for args in (
        ("restore", "web", "old", "--disk", "D", "-o", out / "x.raw"),
        ("restore", "web", "old", "--disk", "D", "-o", out / "x.vhdx", "--format", "vhdx"),
        ("restore", "web", "cp", "--disk", "D", "-o", out / "y.raw", "--at", at),
        ("export", "web", "cp", "-o", out / "e", "--at", at),
        ("serve", "web", "old", "--port", "0"),
    ):
        err = c.fails(PURGED, *args)
        assert said in err, (args, err)
        assert f"`ckpt forget --undo {position}` gives it back until gc runs" in err
    assert not (out / "x.raw").exists() and not (out / "x.vhdx").exists()
    # serve --all and mount list only the points that still have content
    served = [p.label for p in points(w.store, w.store.vm("web"))]
    assert served == ["new", "Now"]
    listed = build(w.store.unit_of_work, 0.0, at=at, vm="web")
    listed_now = build(w.store.unit_of_work, 0.0, vm="web")
    assert "cp" not in _names(listed, "web") and "cp" not in _names(listed_now, "web")
    assert _names(listed_now, "web") == ["Now", "new"]
    assert restored(w.store, "web", "new") == w.expected["new"]


def _names(root: object, vm: str) -> list[str]:
    folder = root.children[vm]  # type: ignore[attr-defined]
    return sorted(folder.children)


def test_live_checkpoints_are_kept_unless_checkpoints_is_given(scratch: Path) -> None:
    w = world(scratch / "s")
    w.checkpoint("web", "a", day(1))
    w.checkpoint("web", "b", day(2))
    w.sync("web", "p", day(3))
    c = cli(w)
    plan = c.json("forget", "web", "--keep-last", "1", "--dry-run")["vms"][0]["points"]
    assert {p["name"]: (p["kind"], p["action"], p["reasons"]) for p in plan} == {
        "p": ("backup point", "keep", ["last 1/1"]),
        "b": ("checkpoint", "keep", ["live checkpoint"]),
        "a": ("checkpoint", "keep", ["live checkpoint"]),
    }
    plan = c.json("forget", "web", "--keep-last", "1", "--checkpoints", "--dry-run")
    assert {p["name"]: p["action"] for p in plan["vms"][0]["points"]} == {
        "p": "keep",
        "b": "purge",
        "a": "purge",
    }


def test_a_deleted_checkpoints_content_is_purgeable(scratch: Path) -> None:
    w = world(scratch / "s")
    w.checkpoint("web", "gone", day(1))
    at = len(w.store.log())  # the last position where "gone" is in the tree
    w.store.delete_checkpoint("web", "gone")
    w.checkpoint("web", "live", day(2))
    w.sync("web", "p", day(3))
    assert restored(w.store, "web", "gone", at=at) == w.expected["gone"]
    plan = w.store.forget("last=1")
    (vm,) = plan.vms
    assert [(p.name, p.kind, p.action) for p in vm.points] == [
        ("p", "backup point", "keep"),
        ("live", "checkpoint", "keep"),
        ("gone", "deleted checkpoint", "purge"),
    ]
    with pytest.raises(PointPurged):
        restored(w.store, "web", "gone", at=at)
    w.store.gc(0)
    assert w.store.verify().ok
    assert restored(w.store, "web", "live") == w.expected["live"]


def test_purging_a_live_checkpoint_with_children_keeps_their_chain_exportable(
    scratch: Path,
) -> None:
    w = world(scratch / "s")
    w.checkpoint("web", "a", day(1))
    w.checkpoint("web", "b", day(2))
    w.change(4)
    w.store.sync("web", {"D": io.BytesIO(bytes(w.image))}, name="now")
    w.expected["Now"] = bytes(w.image)
    tree_before = [(e.id, e.parent, e.type) for e in w.store.tree("web")]
    c = cli(w)
    plan = c.json("forget", "web", "--keep-last", "2", "--checkpoints")
    assert {p["name"]: p["action"] for p in plan["vms"][0]["points"]} == {
        "now": "keep",
        "b": "keep",
        "a": "purge",
    }
    log_before = [(e.position, e.operation) for e in w.store.log()]
    c.ok("gc", "--grace", "0")
    assert [(e.id, e.parent, e.type) for e in w.store.tree("web")] == tree_before
    log_after = [(e.position, e.operation) for e in w.store.log()]
    assert log_after == [*log_before, (log_before[-1][0] + 1, "content-reclaimed")]
    assert w.store.verify_log().ok
    assert verified(w.path)
    c.fails(PURGED, "restore", "web", "a", "--disk", "D", "-o", scratch / "a.raw")
    for point in ("b", "Now"):
        assert restored(w.store, "web", point) == w.expected[point]
        files = [
            f
            for f in w.store.export("web", None if point == "Now" else point, scratch / point)
            if f.suffix in (".vhdx", ".avhdx")
        ]
        assert len(files) >= 2  # a's layer is the base of the chain, exported as its own file
        fresh = Store.init(scratch / f"fresh-{point}")
        fresh.register_vm("copy", [("D", DiskFormat.VHDX)])
        fresh.import_disk("copy", "D", files[-1])  # the leaf; its parents are found by name
        fresh.create_checkpoint("copy", "imported")
        assert restored(fresh, "copy", "imported") == w.expected[point]
        fresh.close()


def test_a_stored_policy_runs_with_apply_policies(scratch: Path) -> None:
    w = ten_days(scratch)
    other = World(w.store, w.clock, w.path, w.image, w.rng)
    w.store.register_vm("db", [("D", DiskFormat.VHDX)])
    for n in range(1, 4):
        other.sync("db", f"db{n}", day(n))
    c = cli(w)
    c.ok("vm", "set", "web", "--retention", "daily=3,last=1")
    assert w.store.vm("web").retention == "last=1,daily=3"
    plan = c.json("forget", "--apply-policies")
    (vm,) = plan["vms"]  # db has no stored policy: left alone
    assert (vm["vm"], vm["policy"], vm["rule"]) == ("web", "last=1,daily=3", "stored policy")
    assert vm["kept"] == 4 and vm["purged"] == 6
    assert c.json("forget", "--apply-policies")["vms"][0]["purged"] == 0
    assert all(restored(w.store, "db", f"db{n}") == other.expected[f"db{n}"] for n in (1, 2, 3))
    err = c.fails(CODE[InvalidValue], "forget", "--apply-policies", "--keep-last", "1")
    assert "not both" in err
    c.ok("vm", "set", "web", "--retention", "none")
    assert w.store.vm("web").retention == ""


def test_timezone_moves_the_day_boundaries(scratch: Path) -> None:
    """03:00 and 04:00 UTC of Nov 2 are still Nov 1 in New York (UTC-5)."""
    w = world(scratch / "s")
    for name, hour in (("a", 3), ("b", 4), ("c", 12)):
        w.sync("web", name, day(2, hour))
    c = cli(w)

    def verdict(*zone: str) -> dict[str, str]:
        plan = c.json("forget", "--keep-daily", "2", "--dry-run", *zone)["vms"][0]["points"]
        return {p["name"]: p["action"] for p in plan}

    assert verdict() == {"c": "keep", "b": "purge", "a": "purge"}
    assert verdict("--timezone", "UTC") == verdict()
    assert verdict("--timezone", "America/New_York") == {"c": "keep", "b": "keep", "a": "purge"}


def test_undo_before_gc_gives_the_content_back_and_after_gc_says_it_is_gone(
    scratch: Path,
) -> None:
    w = ten_days(scratch)
    c = cli(w)
    position = c.json("forget", "--keep-last", "5")["vms"][0]["position"]
    c.fails(PURGED, "restore", "web", "day1", "--disk", "D", "-o", scratch / "x")
    back = c.json("forget", "--undo", str(position))
    assert back["undone"] == position and len(back["points"]) == 5
    for n in range(1, 11):
        assert restored(w.store, "web", f"day{n}") == w.expected[f"day{n}"]
    assert "already withdrawn" in c.fails(CODE[InvalidValue] + 1, "forget", "--undo", position)
    position = c.json("forget", "--keep-last", "5")["vms"][0]["position"]
    c.ok("gc", "--grace", "0")
    err = c.fails(PURGED, "forget", "--undo", position)
    assert f"the purge at position {position} cannot be undone" in err and "reclaimed" in err
    err = c.fails(PURGED, "restore", "web", "day1", "--disk", "D", "-o", scratch / "x")
    assert "gc has reclaimed its bytes" in err
    assert verified(w.path)


def test_undo_of_a_position_that_is_not_a_purge_or_not_in_the_log_is_refused(
    scratch: Path,
) -> None:
    w = ten_days(scratch)
    c = cli(w)
    end = len(w.store.log())
    err = c.fails(CODE[InvalidValue], "forget", "--undo", "1")
    assert "the event at position 1 is not a purge (content-purged)" in err
    err = c.fails(CODE[NotFound], "forget", "--undo", end + 5)
    assert f"no event at position {end + 5}" in err
    for bad in ("0", "-1", "x"):
        assert c("forget", "--undo", bad)[0] == 2  # argparse: "expected a log position"
    assert len(w.store.log()) == end


def test_gc_dry_run_records_and_deletes_nothing_and_estimates_a_real_gc(scratch: Path) -> None:
    w = ten_days(scratch)
    c = cli(w)
    announced = c.json("forget", "--keep-last", "3", "--dry-run")["frees_bytes"]
    c.ok("forget", "--keep-last", "3")
    end, stored = len(w.store.log()), stored_bytes(w.store)
    dry = c.json("gc", "--grace", "0", "--dry-run")
    assert (len(w.store.log()), stored_bytes(w.store)) == (end, stored)
    restored(w.store, "web", "day10")
    real = c.json("gc", "--grace", "0")
    assert len(w.store.log()) == end + 1  # the content-reclaimed event
    assert dry["reclaimed_purges"] == real["reclaimed_purges"]
    assert real["freed_bytes"] > 0
    assert abs(dry["freed_bytes"] - real["freed_bytes"]) <= 0.05 * real["freed_bytes"]
    assert abs(announced - real["freed_bytes"]) <= 0.05 * real["freed_bytes"]
    with Store.open(w.path) as fresh:  # w.store's chunk index predates the CLI's gc
        shrunk = stored - stored_bytes(fresh)
    assert abs(shrunk - real["freed_bytes"]) <= 0.05 * real["freed_bytes"]


def test_the_log_tells_what_was_purged_by_whom_under_which_policy(scratch: Path) -> None:
    w = ten_days(scratch)
    c = cli(w)
    position = c.json("forget", "web", "--keep-last", "8")["vms"][0]["position"]
    (event,) = c.json("log", "--operation", "content-purged")
    text = json.dumps(event)
    assert event["position"] == position and event["actor"] == "bob", event
    assert "last=8" in text and "forget options" in text, event
    for n in (1, 2):
        assert str(w.store.vm("web").find_point(f"day{n}").id) in text, event
    assert str(w.store.vm("web").find_point("day3").id) not in text, event


def test_a_removed_vms_content_is_untouched_by_forget(scratch: Path) -> None:
    w = ten_days(scratch)
    at = len(w.store.log())
    w.store.remove_vm("web")
    c = cli(w)
    assert c.json("forget", "--keep-last", "1")["vms"] == []
    c.fails(CODE[NotFound] - 2, "forget", "web", "--keep-last", "1")  # UnknownVM: 10
    c.ok("gc", "--grace", "0")
    for n in (1, 5, 10):
        assert restored(w.store, "web", f"day{n}", at=at) == w.expected[f"day{n}"]
    assert verified(w.path)


def test_purging_one_vms_point_keeps_bytes_another_vm_shares(scratch: Path) -> None:
    w = world(scratch / "s")
    w.store.register_vm("twin", [("D", DiskFormat.VHDX)])
    w.sync("web", "p1", day(1))
    w.store.sync("twin", {"D": io.BytesIO(w.expected["p1"])}, name="t1")
    w.sync("web", "p2", day(2))
    w.store.forget("last=1", ["web"])
    w.store.gc(0)
    assert w.store.verify().ok
    assert restored(w.store, "twin", "t1") == w.expected["p1"]
    assert restored(w.store, "web", "p2") == w.expected["p2"]


def test_forget_gc_restore_verify_and_undo_on_every_backend(
    backends: Backends, scratch: Path
) -> None:
    w = world(scratch / "s", size=256 << 10, stretch=16 << 10, **backends())
    s = w.store
    w.checkpoint("web", "cp", day(1))
    at = len(s.log())
    s.delete_checkpoint("web", "cp")
    for n in range(2, 7):
        w.sync("web", f"day{n}", day(n))
    purged = ["cp", "day2", "day3"]
    first = s.forget("last=3")
    assert [p.name for p in first.vms[0].purged] == ["day3", "day2", "cp"]
    s.undo_forget(first.vms[0].position or 0)
    for name in purged:
        assert restored(s, "web", name, at=at if name == "cp" else None) == w.expected[name]
    before = stored_bytes(s)
    dry = s.forget("last=3", dry_run=True)
    plan = s.forget("last=3")
    position = plan.vms[0].position
    assert position is not None and dry.frees_bytes
    report = s.gc(0)
    assert report.reclaimed_purges == [position]
    shrunk = before - stored_bytes(s)
    assert abs(shrunk - dry.frees_bytes) <= 0.05 * dry.frees_bytes + 256, (shrunk, dry)
    assert s.verify().ok
    for n in range(4, 7):
        assert restored(s, "web", f"day{n}") == w.expected[f"day{n}"]
    for name in purged:
        with pytest.raises(PointPurged, match=f"at position {position} by alice"):
            restored(s, "web", name, at=at if name == "cp" else None)
    with pytest.raises(PointPurged, match="reclaimed"):
        s.undo_forget(position)
    s.close()


def test_a_purged_checkpoint_cannot_be_applied_so_now_never_runs_on_reclaimed_bytes(
    scratch: Path,
) -> None:
    """a -> b, Now back under a, then a backup point: with --checkpoints, a and b
    are purged; b is a leaf, so gc deletes its bytes. Applying b would make Now
    (and every checkpoint taken after) read chunks gc deleted."""
    w = world(scratch / "s", size=64 << 10, stretch=4 << 10)
    w.checkpoint("web", "a", day(1))
    w.change(8)
    w.checkpoint("web", "b", day(2))
    w.store.apply_checkpoint("web", "a")
    w.image[:] = w.expected["a"]
    w.sync("web", "p", day(3))
    c = cli(w)
    position = c.json("forget", "--keep-last", "1", "--checkpoints")["vms"][0]["position"]
    end = len(w.store.log())
    err = c.fails(PURGED, "checkpoint", "apply", "web", "b")
    assert f"`ckpt forget --undo {position}` gives it back until gc runs" in err
    assert len(w.store.log()) == end
    c.ok("gc", "--grace", "0")
    end = len(w.store.log())
    err = c.fails(PURGED, "checkpoint", "apply", "web", "b")
    assert f"purged at position {position} by bob" in err and "gc has reclaimed its bytes" in err
    assert len(w.store.log()) == end
    with Store.open(w.path) as fresh:
        assert fresh.verify().ok
        assert restored(fresh, "web", "Now") == w.expected["p"]


def test_verify_names_a_purged_point_as_purged_among_a_chunks_users(scratch: Path) -> None:
    """Until gc, a purged point's bytes are there (an undo gives them back): a bad
    chunk of them names it, marked "(purged)", beside the points still kept."""
    from ckpt.damage import point_users
    from ckpt.point_history import walk

    w = world(scratch / "s")
    w.sync("web", "old", day(1))
    w.sync("web", "new", day(2))
    w.store.forget("last=1")
    uow = w.store.unit_of_work
    old = next(p for p in walk(uow)[w.store.vm("web").id].points if p.name == "old")
    [manifest] = {layer[-1] for layer in old.chains["D"] if layer}
    assert point_users(uow)[("web", manifest)] == ["backup point old (purged) (disk D)"]
    w.store.close()
