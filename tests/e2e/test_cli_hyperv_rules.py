"""Issue 17's rules through the command line: the new commands and options, their
one-line refusals with exit code 15 (NotAllowed), and the JSON they keep."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import CLI

NOT_ALLOWED = 15
VM_KEYS = {"name", "state", "checkpoint_type", "config_version", "current"}


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    c = CLI(tmp_path / "store")
    c.ok("init")
    return c


def test_a_5_0_vm_defaults_to_standard_and_refuses_production_only(cli: CLI) -> None:
    vm = cli.json("vm", "add", "Old", "--config-version", "5.0")
    assert vm["checkpoint_type"] == "standard"
    err = cli.fails(
        NOT_ALLOWED, "vm", "add", "Old2", "--config-version", "5.0",
        "--checkpoint-type", "production-only",
    )  # fmt: skip
    assert "5.0" in err and "6.2 or later" in err
    err = cli.fails(NOT_ALLOWED, "vm", "set", "Old", "--checkpoint-type", "production-only")
    assert "5.0" in err and "6.2" in err
    assert cli.json("vm", "add", "New", "--config-version", "9.0")["checkpoint_type"] == (
        "production"
    )


def test_a_running_5_0_vm_set_to_production_gets_a_standard_checkpoint_saying_why(
    cli: CLI,
) -> None:
    cli.ok("vm", "add", "Old", "--config-version", "5.0", "--checkpoint-type", "production")
    cli.ok("vm", "start", "Old")
    out = cli.ok("checkpoint", "create", "Old", "cp")
    assert "created standard checkpoint 'cp'" in out
    assert "(fell back to standard: configuration 5.0 has no production checkpoints)" in out
    kinds = [f["kind"] for f in cli.json("files", "Old", "cp")]
    assert kinds == ["xml", "vsv", "bin"]  # memory and device state saved
    (entry,) = cli.json("log", "Old", "--operation", "checkpoint-created")
    assert entry["details"]["fell_back_from"] == "production"
    assert entry["details"]["fallback_reason"] == "configuration 5.0 has no production checkpoints"
    made = cli.json("checkpoint", "create", "Old", "cp2", "--type", "production")
    assert made["type"] == "standard"
    assert made["fallback_reason"] == "configuration 5.0 has no production checkpoints"
    err = cli.fails(NOT_ALLOWED, "checkpoint", "create", "Old", "x", "--type", "production-only")
    assert "5.0" in err and "6.2 or later" in err


def test_type_standard_on_a_production_only_vm_is_refused(cli: CLI) -> None:
    cli.ok("vm", "add", "DC", "--checkpoint-type", "production-only")
    cli.ok("vm", "start", "DC")
    err = cli.fails(NOT_ALLOWED, "checkpoint", "create", "DC", "cp", "--type", "standard")
    assert "production-only" in err and "never gets a standard checkpoint" in err
    made = cli.json("checkpoint", "create", "DC", "cp", "--type", "production")
    assert made["type"] == "production" and made["fallback_reason"] is None
    assert cli.json("checkpoint", "list", "DC")[0]["name"] == "cp"


def test_the_51st_checkpoint_is_refused_with_exit_15(cli: CLI) -> None:
    cli.ok("vm", "add", "VM", "--checkpoint-type", "standard")
    for i in range(50):
        cli.ok("checkpoint", "create", "VM", f"c{i}")
    err = cli.fails(NOT_ALLOWED, "checkpoint", "create", "VM", "c50")
    assert "limit of 50 per VM" in err and "Plan for Hyper-V scalability" in err
    assert len(cli.json("checkpoint", "list", "VM")) == 50


def test_upgrade_refused_while_a_checkpoint_holds_memory_then_new_ones_use_vmcx(
    cli: CLI,
) -> None:
    cli.ok("vm", "add", "Old", "--config-version", "5.0")
    cli.ok("checkpoint", "create", "Old", "off")
    cli.ok("vm", "start", "Old")
    cli.ok("checkpoint", "create", "Old", "memory")
    cli.ok("vm", "stop", "Old")
    err = cli.fails(NOT_ALLOWED, "vm", "set", "Old", "--config-version", "9.0")
    assert "'memory'" in err and "saved state" in err
    cli.ok("checkpoint", "delete", "Old", "memory")
    assert cli.json("vm", "set", "Old", "--config-version", "9.0")["config_version"] == "9.0"
    cli.ok("checkpoint", "create", "Old", "new")
    assert [f["kind"] for f in cli.json("files", "Old", "off")] == ["xml"]
    assert [f["kind"] for f in cli.json("files", "Old", "new")] == ["vmcx", "vmrs"]


def test_pause_resume_and_turn_off(cli: CLI) -> None:
    cli.ok("vm", "add", "VM", "--automatic-checkpoints")
    started = cli.ok("vm", "start", "VM")
    assert "automatic checkpoint" in started and "taken" in started
    paused = cli.json("vm", "pause", "VM")
    assert paused["state"] == "paused" and set(paused) >= VM_KEYS
    err = cli.fails(NOT_ALLOWED, "vm", "start", "VM")
    assert "ckpt vm resume" in err
    err = cli.fails(NOT_ALLOWED, "vm", "stop", "VM")
    assert "cannot shut down cleanly" in err and "--turn-off" in err
    assert cli.json("vm", "resume", "VM")["state"] == "running"
    cli.ok("vm", "pause", "VM")
    out = cli.ok("vm", "stop", "VM", "--turn-off")
    assert out.strip() == "VM 'VM' is off (turned off)"  # the automatic checkpoint stays
    assert len(cli.json("checkpoint", "list", "VM")) == 1
    cli.ok("vm", "start", "VM")
    out = cli.ok("vm", "stop", "VM")
    assert "(shut down)" in out and "automatic checkpoint" in out and "removed" in out
    assert cli.json("checkpoint", "list", "VM") == []
    states = cli.json("log", "VM", "--operation", "vm-state-changed")
    turned = [e["details"] for e in states if e["details"].get("turned_off")]
    assert turned == [{"from": "paused", "to": "off", "turned_off": True}]


def test_a_checkpoint_of_a_paused_vm_saves_memory(cli: CLI) -> None:
    cli.ok("vm", "add", "VM")
    cli.ok("vm", "start", "VM")
    cli.ok("vm", "pause", "VM")
    made = cli.json("checkpoint", "create", "VM", "cp")
    assert (made["type"], made["vm_state"]) == ("standard", "paused")
    assert made["fallback_reason"] == "the VM is paused, so its guest cannot quiesce"
    assert [f["memory"] for f in cli.json("files", "VM", "cp")] == [False, True]
    assert cli.json("vm", "save", "VM")["state"] == "saved"


def test_a_running_5_0_production_vm_captures_memory_and_vsv_like_any_standard_one(
    cli: CLI, tmp_path: Path
) -> None:
    """Before issue 17 this was a "production" checkpoint: --memory was refused."""
    memory, vsv, xml = tmp_path / "m.bin", tmp_path / "d.vsv", tmp_path / "c.xml"
    memory.write_bytes(b"RAM!" * 3000)
    vsv.write_bytes(b"VSV." * 100)
    xml.write_bytes(b"<configuration/>")
    cli.ok("vm", "add", "Old", "--config-version", "5.0", "--checkpoint-type", "production")
    cli.ok("vm", "start", "Old")
    cli.ok(
        "checkpoint", "create", "Old", "cp", "--memory", memory, "--device-state", vsv,
        "--config", xml,
    )  # fmt: skip
    cli.ok("restore", "Old", "cp", "--memory", "-o", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == memory.read_bytes()
    cli.ok("restore", "Old", "cp", "--state-files", "-o", tmp_path / "state")
    guid = cli.json("checkpoint", "list", "Old")[0]["id"].upper()
    written = tmp_path / "state" / "Snapshots"
    assert (written / guid / f"{guid}.vsv").read_bytes() == vsv.read_bytes()
    assert (written / f"{guid}.xml").read_bytes() == xml.read_bytes()
