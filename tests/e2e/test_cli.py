"""The ckpt command line: JSON keys (a contract), one-line errors, stable exit codes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import CLI

from ckpt.demo import demo
from ckpt.exit_codes import TABLE

CKPT = Path(sys.executable).with_name("ckpt")


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    c = CLI(tmp_path / "store")
    c.ok("init")
    c.ok("vm", "add", "VM1", "--disk", "Disk0", "--disk", "Disk1:vhdx", "--config-version", "9.0")
    c.ok("checkpoint", "create", "VM1", "base")
    c.ok("vm", "start", "VM1")
    c.ok("checkpoint", "create", "VM1", "running", "--type", "standard")
    return c


ENTRY_KEYS = {"id", "name", "parent", "type", "vm_state", "created_at", "current"}


def test_tree_and_list_json_keys(cli: CLI) -> None:
    tree = cli.json("tree", "VM1")
    listed = cli.json("checkpoint", "list", "VM1")
    for entries in (tree, listed):
        assert [e["name"] for e in entries] == ["base", "running"]
        assert all(set(e) >= ENTRY_KEYS for e in entries)
        assert entries[1]["parent"] == entries[0]["id"]
        assert [e["current"] for e in entries] == [False, True]
        assert [e["type"] for e in entries] == ["production", "standard"]
        assert [e["vm_state"] for e in entries] == ["off", "running"]


def test_chain_json_gives_file_and_parent_per_disk(cli: CLI) -> None:
    chain = cli.json("chain", "VM1")
    assert set(chain["disks"]) == {"Disk0", "Disk1"}
    files = chain["disks"]["Disk0"]
    assert len(files) == 3
    assert files[0] == files[0] | {"file": "Disk0.vhdx", "parent": None}
    assert files[1]["parent"] == "Disk0.vhdx" and files[1]["file"].endswith(".avhdx")
    assert files[2]["parent"] == files[1]["file"] and files[2]["running"]
    at_base = cli.json("chain", "VM1", "--checkpoint", "base")["disks"]["Disk1"]
    assert [f["file"] for f in at_base] == ["Disk1.vhdx"]


def test_files_json_gives_path_and_kind(cli: CLI) -> None:
    cp = cli.json("checkpoint", "list", "VM1")[1]
    files = cli.json("files", "VM1", "running")
    guid = cp["id"].upper()
    assert files == [
        {"path": f"Snapshots/{guid}.vmcx", "kind": "vmcx", "memory": False},
        {"path": f"Snapshots/{guid}.vmrs", "kind": "vmrs", "memory": True},
    ]


def test_log_json_keys_and_filters(cli: CLI) -> None:
    log = cli.json("log")
    assert all(
        {"position", "time", "actor", "vm", "operation", "checkpoint"} <= set(e) for e in log
    )
    assert [e["operation"] for e in log] == [
        "vm-registered",
        "checkpoint-created",
        "vm-state-changed",
        "checkpoint-created",
    ]
    assert {e["actor"] for e in log} == {"tester"}
    only = cli.json("log", "VM1", "--operation", "checkpoint-created")
    assert [e["checkpoint"] for e in only] == ["base", "running"]
    assert cli.json("log", "--by", "somebody-else") == []


def test_delete_that_merges_reports_the_merge(cli: CLI) -> None:
    out = cli.ok("checkpoint", "delete", "VM1", "running")
    assert "deleted checkpoint 'running'" in out
    assert out.count("merged ") == 2  # Now's AVHDX merged into the deleted one's, per disk
    assert [e["name"] for e in cli.json("tree", "VM1")] == ["base"]


def test_tree_text_draws_now_under_current(cli: CLI) -> None:
    text = cli.ok("tree", "VM1")
    lines = text.splitlines()
    assert lines[0] == "VM1"
    assert lines[1].startswith("└── base")
    assert lines[2].startswith("    └── running")
    assert lines[3] == "        └── ▶ Now (running)"


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("checkpoint", "apply", "VM1", "nope"), 11, "no checkpoint named"),
        (("vm", "show", "VM9"), 10, "no VM named 'VM9'"),
        (("vm", "start", "VM1"), 15, "already running"),
        (("checkpoint", "rename", "VM1", "base", "x" * 101), 14, "101 characters"),
        (("vm", "add", "VM1"), 16, "already exists"),
        (("vm", "add", "VM2", "--config-version", "4.2"), 14, "unknown configuration version"),
        (("init",), 21, "already exists"),
    ],
)
def test_errors_are_one_line_with_stable_codes(
    cli: CLI, args: tuple[str, ...], code: int, needle: str
) -> None:
    got, out, err = cli(*args)
    assert got == code
    assert err.count("\n") == 1 and err.startswith("ckpt: error: ") and needle in err
    assert out == ""


def test_duplicate_names_need_the_id(cli: CLI) -> None:
    cli.ok("checkpoint", "create", "VM1", "base")
    code, _, err = cli("checkpoint", "apply", "VM1", "base")
    assert code == 13 and "2 checkpoints named 'base'" in err
    first = cli.json("checkpoint", "list", "VM1")[0]["id"]
    cli.ok("checkpoint", "apply", "VM1", "{" + first.upper() + "}")
    assert cli.json("vm", "show", "VM1")["current"] == first


def test_exit_code_table_is_unique() -> None:
    codes = [code for _, code in TABLE[:-1]]
    assert len(codes) == len(set(codes))


def test_console_script_store_option_and_environment(tmp_path: Path) -> None:
    env = dict(os.environ, CKPT_STORE=str(tmp_path / "envstore"), CKPT_ACTOR="robot")
    subprocess.run([CKPT, "init"], env=env, check=True, capture_output=True)
    subprocess.run([CKPT, "vm", "add", "A"], env=env, check=True, capture_output=True)
    listed = subprocess.run(
        [CKPT, "vm", "list", "--json"], env=env, check=True, capture_output=True, text=True
    )
    assert [v["name"] for v in json.loads(listed.stdout)] == ["A"]
    log = subprocess.run(
        [CKPT, "--store", str(tmp_path / "envstore"), "log", "--json"],
        env={k: v for k, v in env.items() if k != "CKPT_STORE"},
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(log.stdout)[0]["actor"] == "robot"
    missing = subprocess.run(
        [CKPT, "--store", str(tmp_path / "none"), "vm", "list"], capture_output=True, text=True
    )
    assert missing.returncode == 20
    assert missing.stderr.startswith("ckpt: error: no ckpt store at")


def test_demo_runs_every_step() -> None:
    out = io.StringIO()
    assert demo(out) == 0  # type: ignore[arg-type]
    text = out.getvalue()
    assert "demo finished" in text
    assert "merged " in text and "▶ Now" in text and "checkpoint-deleted" in text
    assert ".bin  [bin, memory]" in text and ".avhd " in text
    assert "identical" in text and "DIFFERENT" not in text  # a deleted checkpoint, via --at
    assert "referenced chunks: OK" in text
    assert "content-purged" in text and "(exit code 40)" in text  # retention, then gc
    assert "reclaimed the purge at position" in text
    assert "walked the hash chain over" in text and "anchor (keep it elsewhere" in text
