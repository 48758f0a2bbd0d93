"""``ckpt vm remove`` (issue 11 item 8): an event, ``VirtualMachine.Removed``; the VM
leaves the live state and every listing, its history stays in the log and ``--at``,
its content stays restorable, and its name is free for a new VM with a new id."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pytest
from cli_support import CLI

from ckpt import Store
from ckpt.domain import EVENT_CLASSES, NotAllowed, Origin, VirtualMachine, vm_id


def _origin() -> Origin:
    return Origin("t", "h", datetime(2026, 12, 1, tzinfo=UTC), uuid4())


def test_removed_is_an_explicit_event_with_a_stable_topic() -> None:
    assert VirtualMachine.Removed in EVENT_CLASSES
    assert VirtualMachine.Removed.TOPIC == "ckpt.domain:VirtualMachine.Removed"
    assert getattr(VirtualMachine.Removed, "class_version", 1) == 1


def test_a_removed_vm_takes_no_more_events_and_a_running_one_is_not_removed() -> None:
    vm = VirtualMachine.register(_origin(), "web")
    vm.start(_origin())
    with pytest.raises(NotAllowed, match="turn it off first"):
        vm.remove(_origin())
    vm.stop(_origin())
    vm.remove(_origin())
    assert vm.removed
    for command in (vm.start, vm.remove, lambda o: vm.create_checkpoint(o, "x")):
        with pytest.raises(NotAllowed, match="was removed"):
            command(_origin())


def test_a_name_registered_again_is_a_new_vm_with_a_new_id() -> None:
    assert vm_id("Web") == vm_id("web")  # generation 0: every id recorded before
    assert vm_id("web", 1) not in (vm_id("web"), vm_id("web", 2))


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    c = CLI(tmp_path / "s", actor="t")
    image = tmp_path / "one.raw"
    image.write_bytes(b"\x01" * 8192 + b"\x02" * 4096)
    assert c("init")[0] == 0
    c.json("vm", "add", "web", "--disk", "D")
    c.json("checkpoint", "create", "web", "base", "--disk", f"D={image}")
    c.json("vm", "add", "db")
    return c


def test_vm_remove_keeps_history_and_content_and_frees_the_name(cli: CLI, tmp_path: Path) -> None:
    old_id = cli.json("vm", "show", "web")["id"]
    before = len(cli.json("log"))
    removed = cli.json("vm", "remove", "web")
    assert removed["id"] == old_id and removed["removed"] is True
    assert [v["name"] for v in cli.json("vm", "list")] == ["db"]
    assert cli.json("info")["vms"] == 1
    code, _, err = cli("tree", "web")
    assert code == 10 and "was removed" in err and err.count("\n") == 1
    assert cli("checkpoint", "create", "web", "x")[0] == 10
    assert cli("vm", "remove", "web")[0] == 10
    # the history stays: in the whole log and under the VM's name
    log = cli.json("log")
    assert len(log) == before + 1 and log[-1]["operation"] == "vm-removed"
    assert [e["operation"] for e in cli.json("log", "web")][-1] == "vm-removed"
    assert cli.json("log", "--operation", "vm-removed")[0]["details"] == {"checkpoints": 1}
    # --at before the removal still shows the VM and restores its content, also after gc
    at = str(before)
    assert [e["name"] for e in cli.json("tree", "web", "--at", at)] == ["base"]
    assert cli.json("vm", "show", "web", "--at", at)["id"] == old_id
    assert cli("gc", "--grace", "0")[0] == 0
    out = tmp_path / "back.raw"
    code, _, err = cli("restore", "web", "base", "--disk", "D", "-o", str(out), "--at", at)
    assert code == 0, err
    assert out.read_bytes() == b"\x01" * 8192 + b"\x02" * 4096
    assert cli.json("verify")["ok"]
    # stats: the removed VM's captures still count, under a name that says so
    stats = cli.json("stats")["vms"]
    assert list(stats) == [f"web (removed, id {old_id})"]
    # the name is free: a new VM, a new id; now the name finds it, --at the old one
    new = cli.json("vm", "add", "web")
    assert new["id"] != old_id and new["checkpoints"] == 0
    assert cli.json("vm", "show", "web")["id"] == new["id"]
    assert cli.json("vm", "show", "web", "--at", at)["id"] == old_id
    assert [e["vm_id"] for e in cli.json("log", "web")] == [new["id"]]
    assert sorted(v["name"] for v in cli.json("vm", "list")) == ["db", "web"]
    code, _, err = cli("vm", "add", "WEB")
    assert code == 16, err  # one live VM per name, as before


def test_read_models_rebuilt_equal_those_kept_up_to_date(cli: CLI) -> None:
    cli.json("vm", "remove", "web")
    cli.json("vm", "add", "web")
    cli.json("checkpoint", "create", "web", "again")
    cli.json("vm", "remove", "web")
    cli.json("vm", "add", "web")
    with Store.open(cli.store) as store:
        recorder = store.read_models.recorder
        incremental = recorder.dump()
        live = {str(vm.id) for vm in store.vms()}
        assert {row[0] for row in incremental["vms"]} == live
        assert {row[0] for row in incremental["state_files"]} <= live
        store.rebuild_read_models()
        assert recorder.dump() == incremental
        assert store.vm("web").id == vm_id("web", 2)
