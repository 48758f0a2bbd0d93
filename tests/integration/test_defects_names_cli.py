"""Issue 11 item 6 (ids vs names) through the command line, and two naming small ones.

The issue's reproductions: a checkpoint named like another one's id (with or
without braces, any case) made `checkpoint delete v <that id>` delete the other
one; the same with VM names and backup points. Now such a reference is refused
as ambiguous (exit 13, one line listing the candidates with kind and id) and
nothing is changed; new names that read as ids are refused (exit 14). Logs
written before the fix are made by putting back the old name check.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from uuid import UUID

import pytest
from cli_support import CLI

import ckpt.domain.vm as vm_module
from ckpt import InvalidValue, Store
from ckpt.domain.naming import check_name


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    c = CLI(tmp_path / "store")
    c.ok("init")
    c.ok("vm", "add", "v")
    return c


@pytest.fixture
def old_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names are checked as before the fix, as in a log written then."""
    monkeypatch.setattr(vm_module, "check_findable_name", check_name, raising=False)


def image(tmp_path: Path, name: str, seed: int) -> str:
    path = tmp_path / name
    path.write_bytes(bytes([seed]) * 4096 + os.urandom(4096))
    return str(path)


def spelling(value: str, form: int) -> str:
    return [value, "{" + value + "}", value.upper(), "{" + value.upper() + "}"][form]


def names(cli: CLI) -> list[str]:
    return [cp["name"] for cp in cli.json("checkpoint", "list", "v")]


@pytest.mark.parametrize("form", range(4), ids=["plain", "braces", "upper", "upper+braces"])
def test_delete_by_an_id_that_is_another_checkpoints_name_deletes_nothing(
    cli: CLI, old_log: None, form: int
) -> None:
    case = cli.json("checkpoint", "create", "v", "Case")["id"]
    ref = spelling(case, form)
    impostor = cli.json("checkpoint", "create", "v", ref)["id"]
    err = cli.fails(13, "checkpoint", "delete", "v", ref)
    assert f"{ref!r} is ambiguous in VM 'v': it is the id of checkpoint 'Case'" in err
    assert f"checkpoint {ref!r}" in err and impostor in err and "name one by its id" in err
    assert names(cli) == ["Case", ref]  # nothing deleted
    for command in (("apply", "v", ref), ("rename", "v", ref, "x")):
        cli.fails(13, "checkpoint", *command)
    cli.fails(13, "files", "v", ref)
    shown = re.search(r"checkpoint 'Case' of \S+ \(id ([^)]+)\)", err)
    assert shown is not None and shown[1] != ref and UUID(shown[1].strip("{}")) == UUID(case)
    assert "deleted checkpoint 'Case'" in cli.ok("checkpoint", "delete", "v", shown[1])
    assert names(cli) == [ref]


def test_delete_by_a_spelling_of_the_id_no_name_uses_deletes_that_checkpoint(
    cli: CLI, old_log: None
) -> None:
    """`checkpoint delete` looks the checkpoint up once: its second step goes by
    the id found, not by the id's text, which another checkpoint's name may be."""
    case = cli.json("checkpoint", "create", "v", "Case")["id"]
    cli.ok("checkpoint", "create", "v", case)
    assert "deleted checkpoint 'Case'" in cli.ok("checkpoint", "delete", "v", "{" + case + "}")
    assert names(cli) == [case]


def test_a_vm_named_like_another_vms_id_makes_that_id_ambiguous(cli: CLI, old_log: None) -> None:
    web = cli.json("vm", "add", "web01")["id"]
    impostor = cli.json("vm", "add", web, "--disk", "D")["id"]
    err = cli.fails(13, "vm", "show", web)
    assert "it is the id of VM 'web01'" in err and "the name of 1 VM" in err
    assert "VM 'web01' (id {" + web + "})" in err and f"(id {impostor})" in err
    cli.fails(13, "checkpoint", "create", web, "x")
    assert cli.json("vm", "show", "{" + web + "}")["name"] == "web01"
    assert cli.json("vm", "show", impostor)["name"] == web
    assert cli.json("vm", "show", "web01")["checkpoints"] == 0  # nothing recorded


def test_two_backup_points_of_one_name_are_ambiguous_and_the_id_picks_one(
    cli: CLI, tmp_path: Path
) -> None:
    first_image = image(tmp_path, "one.raw", 1)
    first = cli.json("sync", "v", "--disk", f"v={first_image}", "--name", "nightly")["id"]
    second = cli.json(
        "sync", "v", "--disk", f"v={image(tmp_path, 'two.raw', 2)}", "--name", "nightly"
    )
    out = str(tmp_path / "out.raw")
    err = cli.fails(13, "restore", "v", "nightly", "--disk", "v", "-o", out)
    assert "VM 'v' has 2 backup points named 'nightly'" in err
    assert first in err and second["id"] in err
    assert not Path(out).exists()
    cli.ok("restore", "v", first.upper(), "--disk", "v", "-o", out)
    assert Path(out).read_bytes() == Path(first_image).read_bytes()


def test_a_backup_point_named_like_a_checkpoint_is_ambiguous_also_at_a_position(
    cli: CLI, tmp_path: Path
) -> None:
    cp = cli.json("checkpoint", "create", "v", "nightly", "--disk", f"v={image(tmp_path, 'a', 1)}")
    point = cli.json("sync", "v", "--disk", f"v={image(tmp_path, 'b', 2)}", "--name", "nightly")
    position = str(cli.json("info")["position"])
    out = str(tmp_path / "out.raw")
    for at in ((), ("--at", position)):
        err = cli.fails(13, "restore", "v", "nightly", "--disk", "v", "-o", out, *at)
        assert "it is the name of 2 things" in err
        assert "checkpoint 'nightly' of " in err and f"(id {cp['id']})" in err
        assert "backup point 'nightly' of " in err and f"(id {point['id']})" in err
    cli.ok("restore", "v", cp["id"], "--disk", "v", "-o", out)
    assert Path(out).read_bytes() == Path(tmp_path / "a").read_bytes()


def test_a_backup_point_named_like_a_checkpoints_id_is_ambiguous(
    cli: CLI, old_log: None, tmp_path: Path
) -> None:
    cp = cli.json("checkpoint", "create", "v", "Case", "--disk", f"v={image(tmp_path, 'a', 1)}")
    cli.ok("sync", "v", "--disk", f"v={image(tmp_path, 'b', 2)}", "--name", cp["id"])
    err = cli.fails(13, "restore", "v", cp["id"], "--disk", "v", "-o", str(tmp_path / "o"))
    assert "it is the id of checkpoint 'Case' and the name of 1 backup point" in err


ID = "6f1c2a0e-8f7b-4a39-9a59-0c1d2e3f4a5b"


@pytest.mark.parametrize("name", [ID, "{" + ID + "}", ID.upper(), ID.replace("-", "")])
def test_new_names_that_read_as_ids_are_refused(cli: CLI, tmp_path: Path, name: str) -> None:
    cli.fails(14, "vm", "add", name, "--disk", "D")
    assert "reads as an id" in cli.fails(14, "checkpoint", "create", "v", name)
    cli.ok("checkpoint", "create", "v", "fine")
    cli.fails(14, "checkpoint", "rename", "v", "fine", name)
    cli.fails(14, "sync", "v", "--disk", f"v={image(tmp_path, 'i', 1)}", "--name", name)
    assert [v["name"] for v in cli.json("vm", "list")] == ["v"]
    assert names(cli) == ["fine"]


def test_vm_add_with_a_name_that_cannot_name_its_default_disk_talks_about_the_vm(cli: CLI) -> None:
    err = cli.fails(14, "vm", "add", "a/b")
    assert "VM name 'a/b' cannot be a Windows file name" in err and "--disk NAME" in err
    assert "disk name 'a/b'" not in err
    cli.ok("vm", "add", "a/b", "--disk", "Boot")


def test_a_vm_version_outside_its_range_says_the_range(tmp_path: Path) -> None:
    with Store.init(tmp_path / "s") as store:
        store.register_vm("web01")
        store.create_checkpoint("web01", "a")
        for version in (0, -1, 3, 99):
            with pytest.raises(InvalidValue) as caught:
                store.vm("web01", version=version)
            assert str(caught.value) == (
                f"VM 'web01' has no version {version}: its versions run from 1 to 2"
            )
        assert store.vm("web01", version=1).checkpoints == {}
        assert store.vm(UUID(str(store.vm("WEB01").id)), version=2).version == 2
