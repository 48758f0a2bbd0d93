"""Retention under odd input: every refusal is one line, its exit code, nothing recorded.

Terms: *refused* means the command exits with the code of its error class
(ckpt/exit_codes.py), prints one line ``ckpt: error: ...`` (argparse's usage
errors: exit 2) and leaves the log as it was; *nothing recorded* is checked
as an unchanged log length.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_support import CLI
from retention_support import World, day, restored, world

from ckpt import DiskFormat, Store, retention_ops
from ckpt.domain import (
    InvalidValue,
    NotAllowed,
    NotFound,
    PointPurged,
    StoreConflict,
    StoreReadOnly,
    UnknownVM,
)
from ckpt.exit_codes import TABLE

CODE = dict(TABLE)


@pytest.fixture
def w(scratch: Path) -> World:
    """VM web with three backup points (days 1-3) and an empty VM."""
    w = world(scratch / "s", size=64 << 10, stretch=4 << 10)
    for n in (1, 2, 3):
        w.sync("web", f"day{n}", day(n))
    w.store.register_vm("empty", [("D", DiskFormat.VHDX)])
    return w


def log_length(w: World) -> int:
    return len(w.store.log())


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--keep-within", "0d"], InvalidValue, "duration '0d': must not be zero"),
        (["--keep-within", "1x"], InvalidValue, "duration '1x': expected years, months"),
        (["--keep-within", ""], InvalidValue, "duration '': expected"),
        (["--keep-last", "1", "--timezone", "Nowhere"], InvalidValue, "unknown time zone"),
        (["--keep-last", "1", "--timezone", "../../etc/passwd"], InvalidValue, "unknown time"),
        ([], InvalidValue, "forget needs a policy"),
        (["web"], InvalidValue, "forget needs a policy"),
        (["--keep-last", "0", "--keep-daily", "0"], InvalidValue, "forget needs a policy"),
        (["--apply-policies", "--keep-last", "1"], InvalidValue, "not both"),
        (["nosuch", "--keep-last", "1"], UnknownVM, "no VM named 'nosuch'"),
        (["--undo", "1", "web"], InvalidValue, "takes no VM, policy or --dry-run"),
        (["--undo", "1", "--dry-run"], InvalidValue, "takes no VM, policy or --dry-run"),
        (["--undo", "1"], InvalidValue, "is not a purge"),
        (["--undo", "999"], NotFound, "no event at position 999 (the log ends at"),
        (["--undo", "99999999999999999999"], NotFound, "no event at position 9999"),
    ],
)
def test_odd_forget_input_is_refused_with_one_line(
    w: World, args: list[str], code: type[Exception], says: str
) -> None:
    before = log_length(w)
    err = CLI(w.path).fails(CODE[code], "forget", *args)  # type: ignore[index]
    assert says in err
    assert log_length(w) == before


@pytest.mark.parametrize("args", [["--keep-last", "-1"], ["--keep-daily", "x"], ["--undo", "0"]])
def test_malformed_numbers_are_usage_errors(w: World, args: list[str]) -> None:
    before = log_length(w)
    assert CLI(w.path)("forget", *args)[0] == 2
    assert log_length(w) == before


def test_a_position_past_the_end_is_not_found_through_the_api_too(w: World) -> None:
    with pytest.raises(NotFound, match="the log ends at"):
        w.store.undo_forget(1 << 80)


@pytest.mark.parametrize(
    "policy", ["daily=-1", "daily", "within=0d", "bogus=1", "daily=1,daily=2", "last=1.5"]
)
def test_a_bad_stored_policy_is_refused(w: World, policy: str) -> None:
    before = log_length(w)
    err = CLI(w.path).fails(CODE[InvalidValue], "vm", "set", "web", "--retention", policy)
    assert "retention policy" in err
    assert log_length(w) == before


def test_a_vm_without_points_and_a_store_without_policies_purge_nothing(w: World) -> None:
    c = CLI(w.path)
    before = log_length(w)
    plan = c.json("forget", "empty", "--keep-last", "1")
    assert plan["vms"][0]["points"] == [] and plan["vms"][0]["position"] is None
    assert c.json("forget", "--apply-policies")["vms"] == []
    assert "no VM to forget in" in c.ok("forget", "--apply-policies")
    assert log_length(w) == before


def test_a_name_that_reads_as_an_id_is_refused_and_an_id_names_its_vm(w: World) -> None:
    web_id = str(w.store.vm("web").id)
    point_id = str(w.store.vm("web").find_point("day1").id)
    c = CLI(w.path)
    before = log_length(w)
    assert "reads as an id" in c.fails(CODE[InvalidValue], "vm", "add", point_id)
    assert log_length(w) == before
    # forget takes a VM by name or by its id, as ``vm show`` prints it
    by_id = c.json("forget", web_id, "--keep-last", "1", "--dry-run")
    assert [v["vm"] for v in by_id["vms"]] == ["web"]
    c.fails(CODE[UnknownVM], "forget", point_id, "--keep-last", "1")  # a point's id is no VM


def test_a_vm_named_twice_is_planned_once(w: World) -> None:
    plan = w.store.forget("last=1", ["web", "web"])
    assert [v.vm for v in plan.vms] == ["web"]
    assert len(w.store.log(operation="content-purged")) == 1


def test_undo_twice_is_refused_the_second_time(w: World) -> None:
    c = CLI(w.path)
    position = c.json("forget", "web", "--keep-last", "1")["vms"][0]["position"]
    c.ok("forget", "--undo", position)
    before = log_length(w)
    err = c.fails(CODE[NotAllowed], "forget", "--undo", position)
    assert f"the purge at position {position} was already withdrawn" in err
    assert log_length(w) == before
    assert restored(w.store, "web", "day1") == w.expected["day1"]


def test_two_forgets_at_once_on_one_vm_purge_each_point_once(w: World) -> None:
    """Both plan from the same log; the second to save finds the VM changed and
    plans again (nothing left to purge) or gives up with StoreConflict (22)."""
    c1, c2 = CLI(w.path, actor="one"), CLI(w.path, actor="two")
    gate = threading.Barrier(2)
    results: list[tuple[int, str, str]] = []

    def run(c: CLI) -> None:
        gate.wait()
        results.append(c("forget", "web", "--keep-last", "1", "--json"))

    threads = [threading.Thread(target=run, args=(c,)) for c in (c1, c2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(code for code, _, _ in results) in ([0, 0], [0, CODE[StoreConflict]])
    events = w.store.log(operation="content-purged")
    assert len(events) == 1
    purged = {p.name for v in w.store.forget("last=1", dry_run=True).vms for p in v.points
              if p.action == "purged"}  # fmt: skip
    assert purged == {"day1", "day2"}
    with pytest.raises(PointPurged):
        restored(w.store, "web", "day1")


def _leases(w: World) -> list[str]:
    return sorted(w.store.unit_of_work.chunks.backend.list("leases/"))


def test_gc_dry_run_writes_no_lease_and_deletes_no_dead_one(w: World) -> None:
    w.store.forget("last=1", ["web"])
    dead = w.path / "chunks" / "leases" / f"write-{'0' * 32}.json"
    dead.parent.mkdir(parents=True, exist_ok=True)
    body = {"kind": "write", "host": "gone", "machine": "another-host", "pid": 1,
            "started": 0.0, "renewed": 0.0, "ttl": 300.0}  # fmt: skip
    dead.write_text(json.dumps(body))  # renewed in 1970: dead, a real gc deletes it
    before, end = _leases(w), log_length(w)
    seen: list[list[str]] = []
    real = w.store.unit_of_work.chunks.estimate_unreferenced

    def estimate(*args: object, **kwargs: object) -> object:
        seen.append(_leases(w))  # the leases while the dry run holds (or not) its own
        return real(*args, **kwargs)  # type: ignore[arg-type]

    w.store.unit_of_work.chunks.estimate_unreferenced = estimate  # type: ignore[method-assign]
    report = w.store.gc(0, dry_run=True)
    assert report.dry_run and report.dead_leases_removed == 0
    assert seen == [before] and _leases(w) == before and log_length(w) == end


def test_gc_dry_run_works_on_a_read_only_store(w: World, scratch: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = scratch / "media"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        w.store.forget("last=1", ["web"])
        w.store.close()
        shutil.copytree(w.path, mnt / "s")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        c = CLI(mnt / "s")
        report = c.json("gc", "--grace", "0", "--dry-run")
        assert report["dry_run"] is True and report["freed_bytes"] > 0
        assert len(report["reclaimed_purges"]) == 1
        assert "needs to write" in c.fails(CODE[StoreReadOnly], "gc", "--grace", "0")
        plan = c.json("forget", "--keep-last", "1", "--dry-run")
        assert {p["action"] for v in plan["vms"] for p in v["points"]} == {"keep", "purged"}
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def _after_first_log_read(monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], object]) -> None:
    """Run ``meanwhile`` (another process's command) right after gc or forget
    read the log the first time, before it records or deletes anything."""
    real = retention_ops.walk
    calls = [0]

    def walk(*args: Any, **kwargs: Any) -> Any:
        found = real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == 1:
            meanwhile()
        return found

    monkeypatch.setattr(retention_ops, "walk", walk)


def test_an_undo_between_gcs_read_and_its_record_keeps_the_content(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    position = w.store.forget("last=1", ["web"]).vms[0].position
    assert position is not None

    def undo() -> None:
        with Store.open(w.path, actor="other") as other:
            other.undo_forget(position)

    _after_first_log_read(monkeypatch, undo)
    report = w.store.gc(0)
    assert report.reclaimed_purges == []  # it read the log again: nothing pending
    assert w.store.log(operation="content-reclaimed") == []
    monkeypatch.undo()
    for n in (1, 2, 3):
        assert restored(w.store, "web", f"day{n}") == w.expected[f"day{n}"]
    assert w.store.verify().ok


def test_a_forget_between_gcs_read_and_its_deletes_loses_nothing_and_can_be_undone(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    plans: list[int | None] = []

    def forget() -> None:
        with Store.open(w.path, actor="other") as other:
            plans.append(other.forget("last=1", ["web"]).vms[0].position)

    _after_first_log_read(monkeypatch, forget)
    report = w.store.gc(0)
    monkeypatch.undo()
    (position,) = plans
    assert position is not None and report.reclaimed_purges == []
    w.store.undo_forget(position)  # gc did not reclaim it: undo still works
    for n in (1, 2, 3):
        assert restored(w.store, "web", f"day{n}") == w.expected[f"day{n}"]
    assert w.store.verify().ok


def test_undo_gives_back_only_its_own_purge_and_gc_reclaims_only_the_rest(w: World) -> None:
    c = CLI(w.path)
    first = c.json("forget", "web", "--keep-last", "2")["vms"][0]
    second = c.json("forget", "web", "--keep-last", "1")["vms"][0]
    assert [p["name"] for p in first["points"] if p["action"] == "purge"] == ["day1"]
    assert [p["name"] for p in second["points"] if p["action"] == "purge"] == ["day2"]
    withdrawn = c.json("forget", "--undo", first["position"])
    assert len(withdrawn["points"]) == 1
    for position in (len(w.store.log()), 1):  # purge-withdrawn, vm-registered
        assert "is not a purge" in c.fails(CODE[InvalidValue], "forget", "--undo", position)
    assert restored(w.store, "web", "day1") == w.expected["day1"]
    with pytest.raises(PointPurged):
        restored(w.store, "web", "day2")
    assert w.store.gc(0).reclaimed_purges == [second["position"]]
    assert restored(w.store, "web", "day1") == w.expected["day1"]
    assert restored(w.store, "web", "day3") == w.expected["day3"]
    assert "is not a purge" in c.fails(CODE[InvalidValue], "forget", "--undo", len(w.store.log()))
    assert w.store.verify().ok


def test_a_forget_that_loses_the_race_plans_again_and_purges_nothing_twice(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other forget commits while this one plans: this one's save finds the
    VM changed, reads the log again and finds nothing left to purge."""
    other: list[int | None] = []

    def forget() -> None:
        with Store.open(w.path, actor="other") as s:
            other.append(s.forget("last=1", ["web"]).vms[0].position)

    _after_first_log_read(monkeypatch, forget)
    plan = w.store.forget("last=1", ["web"])
    assert other[0] is not None and plan.vms[0].position is None
    assert [p.action for p in plan.vms[0].points] == ["keep", "purged", "purged"]
    assert len(w.store.log(operation="content-purged")) == 1
