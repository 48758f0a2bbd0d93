"""Issue 11: the Python API raises only ``ckpt.CkptError``, naming what it expected.

A table feeds wrong types to every public method of ``Store``; another calls
every method on a closed store. A last test walks ``Store`` so that a public
method added later without a row here fails.
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import CheckpointType, DiskFormat, FileRole, Store

Call = Callable[[Store, Path], Any]
BOOT = 8192


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, Path]]:
    tmp = tmp_path_factory.mktemp("api")
    image = tmp / "boot.raw"
    image.write_bytes(b"\x01" * BOOT)
    with Store.init(tmp / "store", actor="tester") as store:
        store.register_vm("v", [("Boot", DiskFormat.VHDX)])
        store.create_checkpoint("v", "a", disks={"Boot": image})
        yield store, tmp


IMAGE = "boot.raw"


def _img(tmp: Path) -> Path:
    return tmp / IMAGE


# (case id, call, words the message must hold)
WRONG: list[tuple[str, Call, str]] = [
    ("forget-policy", lambda s, t: s.forget(5), "forget: policy must be"),
    ("forget-policy-text", lambda s, t: s.forget("daily=x"), "'daily=x'"),
    ("forget-vms", lambda s, t: s.forget("last=1", "web"), "forget: vms must be"),
    ("forget-dry-run", lambda s, t: s.forget("last=1", dry_run="y"), "dry_run must be"),
    ("forget-zone", lambda s, t: s.forget("last=1", timezone="Mars/Base"), "unknown time zone"),
    ("undo-position", lambda s, t: s.undo_forget("3"), "undo_forget: position must be"),
    ("set-retention", lambda s, t: s.set_retention("v", 5), "set_retention: policy must be"),
    ("init-path", lambda s, t: Store.init(5), "path must be a path"),
    ("init-encrypt", lambda s, t: Store.init(t / "n1", encrypt="yes"), "encrypt must be True"),
    ("init-key-str", lambda s, t: Store.init(t / "n2", encrypt=True, key="ab" * 32), "32 bytes"),
    ("init-option", lambda s, t: Store.init(t / "n3", colour=1), "unknown option 'colour'"),
    ("init-events", lambda s, t: Store.init(None, events=5), "events must be a str"),
    ("open-path", lambda s, t: Store.open(3.5), "path must be a path"),
    ("open-actor", lambda s, t: Store.open(t / "store", actor=7), "actor must be a str"),
    ("open-clock", lambda s, t: Store.open(t / "store", clock="now"), "clock must be a callable"),
    ("register-str-disks", lambda s, t: s.register_vm("w", "Boot"), "list of (disk name"),
    ("register-name", lambda s, t: s.register_vm(5), "register_vm: name must be a str"),
    ("new-vm-disks", lambda s, t: s.new_vm("w", "Boot"), "list of (disk name"),
    ("save-new-vm", lambda s, t: s.save_new_vm("w"), "a VirtualMachine made by new_vm"),
    ("remove-vm-name", lambda s, t: s.remove_vm(None), "remove_vm: name must be a str"),
    ("register-format", lambda s, t: s.register_vm("w", [("Boot", "qcow2")]), "DiskFormat"),
    ("register-pair", lambda s, t: s.register_vm("w", [("Boot",)]), "(disk name, DiskFormat)"),
    ("register-disk-name", lambda s, t: s.register_vm("w", [(1, "vhdx")]), "disk name must be"),
    ("register-ctype", lambda s, t: s.register_vm("w", checkpoint_type="x"), "CheckpointType"),
    ("register-auto", lambda s, t: s.register_vm("w", automatic_checkpoints="no"), "True or"),
    ("register-version", lambda s, t: s.register_vm("w", config_version=9.0), "config_version"),
    ("set-name", lambda s, t: s.set_vm(None), "set_vm: name must be a str"),
    ("set-ctype", lambda s, t: s.set_vm("v", checkpoint_type=1), "CheckpointType"),
    ("set-auto", lambda s, t: s.set_vm("v", automatic_checkpoints="off"), "True or False"),
    ("start", lambda s, t: s.start_vm(["v"]), "start_vm: name must be a str"),
    ("stop", lambda s, t: s.stop_vm(b"v"), "stop_vm: name must be a str"),
    ("save", lambda s, t: s.save_vm(1), "save_vm: name must be a str"),
    ("pause", lambda s, t: s.pause_vm(1), "pause_vm: name must be a str"),
    ("resume", lambda s, t: s.resume_vm(None), "resume_vm: name must be a str"),
    ("stop-turn-off", lambda s, t: s.stop_vm("v", turn_off="yes"), "turn_off must be True or"),
    ("create-vm", lambda s, t: s.create_checkpoint(1), "create_checkpoint: vm must be a str"),
    ("create-raw", lambda s, t: s.create_checkpoint("v", raw="yes"), "raw must be True or False"),
    ("sync-raw", lambda s, t: s.sync("v", {"Boot": _img(t)}, raw=1), "raw must be True or False"),
    ("import-raw", lambda s, t: s.import_disk("v", "Boot", _img(t), raw=None), "raw must be True"),
    ("create-name", lambda s, t: s.create_checkpoint("v", 2), "name must be a str or None"),
    ("create-type", lambda s, t: s.create_checkpoint("v", "b", "fast"), "CheckpointType"),
    (
        "create-disks-list",
        lambda s, t: s.create_checkpoint("v", "b", disks=[str(_img(t))]),
        "disks must be a mapping of disk name to image path",
    ),
    (
        "create-disks-path",
        lambda s, t: s.create_checkpoint("v", "b", disks={"Boot": 5}),
        "must be a path",
    ),
    (
        "create-disks-text-stream",
        lambda s, t: s.create_checkpoint("v", "b", disks={"Boot": io.StringIO("x")}),
        "a binary stream open for reading",
    ),
    (
        "create-disks-write-only",
        lambda s, t: s.create_checkpoint("v", "b", disks={"Boot": (t / "w.raw").open("wb")}),
        "(this one is not readable)",
    ),
    (
        "create-disks-stream-size",
        lambda s, t: s.create_checkpoint(
            "v", "b", disks={"Boot": ckpt.StreamSource(io.BytesIO(b""), size=-1)}
        ),
        "size must be an int >= 0",
    ),
    (
        "create-disks-stream-not-a-stream",
        lambda s, t: s.create_checkpoint("v", "b", disks={"Boot": ckpt.StreamSource(b"data")}),
        "a binary stream open for reading",
    ),
    (
        "create-files-stream-size",
        lambda s, t: s.create_checkpoint(
            "v", "b", files={ckpt.FileRole.MEMORY: ckpt.StreamSource(io.BytesIO(), size=1.5)}
        ),
        "size must be an int >= 0",
    ),
    (
        "sync-disks-stream-name",
        lambda s, t: s.sync("v", {"Boot": ckpt.StreamSource(io.BytesIO(), name=3)}),
        "name must be a str or None",
    ),
    (
        "create-files",
        lambda s, t: s.create_checkpoint("v", "b", files=[_img(t)]),
        "files must be a mapping of FileRole",
    ),
    (
        "create-files-role",
        lambda s, t: s.create_checkpoint("v", "b", files={"ram": _img(t)}),
        "FileRole",
    ),
    (
        "create-changed",
        lambda s, t: s.create_checkpoint(
            "v", "b", disks={"Boot": _img(t)}, changed_blocks={"Boot": [(0, -1)]}
        ),
        "a length must be an int >= 0",
    ),
    (
        "create-changed-pairs",
        lambda s, t: s.create_checkpoint(
            "v", "b", disks={"Boot": _img(t)}, changed_blocks={"Boot": (0, 4096)}
        ),
        "(offset, length) pairs",
    ),
    (
        "create-progress",
        lambda s, t: s.create_checkpoint("v", "b", disks={"Boot": _img(t)}, progress=1),
        "progress must be None or a callable",
    ),
    ("create-quiesce", lambda s, t: s.create_checkpoint("v", "b", None, "no"), "True or False"),
    ("sync-disks", lambda s, t: s.sync("v", [str(_img(t))]), "sync: disks must be a mapping"),
    ("sync-vm", lambda s, t: s.sync(None, {"Boot": _img(t)}), "sync: vm must be a str"),
    ("sync-name", lambda s, t: s.sync("v", {"Boot": _img(t)}, 3), "sync: name must be"),
    (
        "restore-out-str",
        lambda s, t: s.restore_disk("v", "a", "Boot", out="path"),
        "out must be a binary stream open for writing",
    ),
    (
        "restore-out-text",
        lambda s, t: s.restore_disk("v", "a", "Boot", io.StringIO()),
        "binary stream",
    ),
    (
        "restore-out-readonly",
        lambda s, t: s.restore_disk("v", "a", "Boot", _img(t).open("rb")),
        "not writable",
    ),
    (
        "restore-out-path",
        lambda s, t: s.restore_disk("v", "a", "Boot", t / "out.raw"),
        "binary stream",
    ),
    ("restore-point", lambda s, t: s.restore_disk("v", 1, "Boot", io.BytesIO()), "point must be"),
    ("restore-disk", lambda s, t: s.restore_disk("v", "a", None, io.BytesIO()), "disk must be"),
    ("restore-at", lambda s, t: s.restore_disk("v", "a", "Boot", io.BytesIO(), at=1.5), "at must"),
    (
        "restore-vhdx-out",
        lambda s, t: s.restore_disk_vhdx("v", "a", "Boot", str(t / "x.vhdx")),
        "seekable binary stream",
    ),
    (
        "restore-vhd-out",
        lambda s, t: s.restore_disk_vhd("v", "a", "Boot", str(t / "x.vhd")),
        "seekable binary stream",
    ),
    ("import-hyperv-dir", lambda s, t: s.import_hyperv(3), "directory must be"),
    ("replicate-dir", lambda s, t: s.replicate(to_dir=3), "to_dir must be"),
    ("replicate-nowhere", lambda s, t: s.replicate(), "give to_dir, or to_events and to_chunks"),
    ("import-hyperv-name", lambda s, t: s.import_hyperv(t, name=3), "name must be"),
    ("restore-memory-out", lambda s, t: s.restore_memory("v", "a", "m.bin"), "binary stream"),
    ("open-disk-disk", lambda s, t: s.open_disk("v", "a", 3), "disk must be"),
    ("open-disk-at", lambda s, t: s.open_disk("v", "a", "Boot", at=1.5), "at must"),
    ("open-memory-point", lambda s, t: s.open_memory("v", None), "point must be"),
    ("follow-after", lambda s, t: s.follow(after="3"), "follow: after must be a log position"),
    ("follow-vm", lambda s, t: s.follow(vm=3), "follow: vm must be"),
    ("follow-idle", lambda s, t: s.follow(idle=float("inf")), "follow: idle must be"),
    ("diff-b", lambda s, t: s.diff("v", "a", 3), "diff: b must be a str"),
    ("diff-disk", lambda s, t: s.diff("v", "a", "Now", disk=3), "diff: disk must be"),
    ("diff-at", lambda s, t: s.diff("v", "a", "Now", at=1.5), "diff: at must"),
    (
        "restore-state-dir",
        lambda s, t: s.restore_state_files("v", "a", 5),
        "directory must be a path",
    ),
    ("verify-sample-str", lambda s, t: s.verify("0.5"), "sample must be a finite number"),
    ("verify-sample-nan", lambda s, t: s.verify(float("nan")), "(0, 1]"),
    ("gc-negative", lambda s, t: s.gc(-5), "grace_seconds must be a finite number in [0"),
    ("gc-nan", lambda s, t: s.gc(float("nan")), "grace_seconds must be a finite number"),
    ("gc-inf", lambda s, t: s.gc(float("inf")), "grace_seconds must be a finite number"),
    ("gc-str", lambda s, t: s.gc("3600"), "grace_seconds"),
    ("upgrade-progress", lambda s, t: s.upgrade(progress=5), "progress"),
    ("copy-events", lambda s, t: s.copy_to(5, None), "copy_to: events must be"),
    ("copy-directory", lambda s, t: s.copy_to(None, None, 5), "copy_to: directory must be a path"),
    ("stats-vm", lambda s, t: s.stats(5), "stats: vm must be"),
    ("stats-at", lambda s, t: s.stats(at=[1]), "stats: at must be"),
    ("apply", lambda s, t: s.apply_checkpoint("v", 0), "apply_checkpoint: checkpoint must be"),
    ("revert", lambda s, t: s.revert(5), "revert: vm must be a str"),
    ("rename", lambda s, t: s.rename_checkpoint("v", "a", 5), "new_name must be a str"),
    ("delete", lambda s, t: s.delete_checkpoint("v", None), "checkpoint must be a str"),
    ("delete-subtree", lambda s, t: s.delete_checkpoint("v", "a", "yes"), "True or False"),
    ("export-dir", lambda s, t: s.export("v", "a", None), "directory must be a path"),
    ("export-flatten", lambda s, t: s.export("v", "a", t / "e", flatten=1), "True or False"),
    ("record-export", lambda s, t: s.record_export("v", "zz", "x"), "a checkpoint id (a UUID)"),
    ("import-path", lambda s, t: s.import_disk("v", "Boot", 5), "import_disk: path must be"),
    ("position", lambda s, t: s.position(-3), "a log position (int >= 0)"),
    ("vm-name", lambda s, t: s.vm(5), "vm: name must be a str"),
    ("vm-version-0", lambda s, t: s.vm("v", version=0), "its versions run from 1 to"),
    ("vm-version-str", lambda s, t: s.vm("v", version="1"), "an int >= 1"),
    ("vm-version-beyond", lambda s, t: s.vm("v", version=999), "has no version 999"),
    ("tree", lambda s, t: s.tree(None), "tree: vm must be a str"),
    ("checkpoints", lambda s, t: s.checkpoints(1), "checkpoints: vm must be a str"),
    ("chain", lambda s, t: s.chain("v", checkpoint=1), "chain: checkpoint must be"),
    ("files", lambda s, t: s.files("v", 3), "files: checkpoint must be a str"),
    ("log-operation-type", lambda s, t: s.log(operation=5), "log: operation must be"),
    ("log-operation-typo", lambda s, t: s.log(operation="checkpoint-delete"), "checkpoint-deleted"),
    ("log-since", lambda s, t: s.log(since=2.5), "log: since must be"),
    ("verify-log", lambda s, t: s.verify_log(anchor=5), "verify_log: anchor must be"),
    ("report-out", lambda s, t: s.report(io.BytesIO()), "report: out must be a text stream"),
    ("report-vms", lambda s, t: s.report(io.StringIO(), "v"), "report: vms must be a sequence"),
    ("report-at", lambda s, t: s.report(io.StringIO(), at=2.5), "report: at must be"),
    ("find-checkpoint", lambda s, t: s.vm("v").find_checkpoint(None), "named by a str"),
    ("vm-chain-disk", lambda s, t: s.vm("v").chain(["Boot"]), "has no disk ['Boot']"),
    ("checkpoint-layer", lambda s, t: s.vm("v").find_checkpoint("a").layer("D"), "no disk 'D'"),
]


@pytest.mark.parametrize(("call", "words"), [w[1:] for w in WRONG], ids=[w[0] for w in WRONG])
def test_a_wrong_argument_is_an_invalid_value_naming_what_was_expected(
    world: tuple[Store, Path], call: Call, words: str
) -> None:
    store, tmp = world
    with pytest.raises(ckpt.InvalidValue) as caught:
        call(store, tmp)
    assert words in str(caught.value)


def test_the_message_says_what_was_expected_and_what_came(world: tuple[Store, Path]) -> None:
    store, _ = world
    with pytest.raises(ckpt.InvalidValue) as caught:
        store.register_vm("w", "Boot")  # type: ignore[arg-type]
    assert str(caught.value) == (
        "register_vm: disks must be a list of (disk name, DiskFormat) pairs, "
        "e.g. [('Boot', ckpt.DiskFormat.VHDX)], got str 'Boot'"
    )


def test_a_str_value_of_an_enum_is_taken_as_the_enum(world: tuple[Store, Path]) -> None:
    store, _ = world
    vm = store.register_vm("strings", [("Boot", "vhdx")], checkpoint_type="standard")  # type: ignore[list-item, arg-type]
    assert vm.disks[0].format is DiskFormat.VHDX
    assert vm.checkpoint_type is CheckpointType.STANDARD
    assert store.vm("strings").disks[0].base_file == "Boot.vhdx"


# Every public method, called rightly, on a closed store.
RIGHT: dict[str, Call] = {
    "close": lambda s, t: s.close(),
    "register_vm": lambda s, t: s.register_vm("w"),
    "new_vm": lambda s, t: s.new_vm("w"),
    "save_new_vm": lambda s, t: s.save_new_vm(s.new_vm("w")),
    "remove_vm": lambda s, t: s.remove_vm("v"),
    "set_vm": lambda s, t: s.set_vm("v", CheckpointType.STANDARD),
    "start_vm": lambda s, t: s.start_vm("v"),
    "stop_vm": lambda s, t: s.stop_vm("v"),
    "save_vm": lambda s, t: s.save_vm("v"),
    "pause_vm": lambda s, t: s.pause_vm("v"),
    "resume_vm": lambda s, t: s.resume_vm("v"),
    "create_checkpoint": lambda s, t: s.create_checkpoint("v", "b"),
    "sync": lambda s, t: s.sync("v", {"Boot": _img(t)}),
    "restore_disk": lambda s, t: s.restore_disk("v", "a", "Boot", io.BytesIO()),
    "restore_disk_vhdx": lambda s, t: s.restore_disk_vhdx("v", "a", "Boot", io.BytesIO()),
    "restore_disk_vhd": lambda s, t: s.restore_disk_vhd("v", "a", "Boot", io.BytesIO()),
    "import_hyperv": lambda s, t: s.import_hyperv(t / "nothing-here"),
    "replicate": lambda s, t: s.replicate(to_dir=t / "replica"),
    "promote_replica": lambda s, t: s.promote_replica(),
    "restore_memory": lambda s, t: s.restore_memory("v", "a", io.BytesIO()),
    "restore_state_files": lambda s, t: s.restore_state_files("v", "a", t / "state"),
    "open_disk": lambda s, t: s.open_disk("v", "a", "Boot").close(),
    "open_memory": lambda s, t: s.open_memory("v", "a").close(),
    "diff": lambda s, t: s.diff("v", "a", "Now"),
    "verify": lambda s, t: s.verify(),
    "repair": lambda s, t: s.repair(),
    "gc": lambda s, t: s.gc(),
    "forget": lambda s, t: s.forget("last=1", dry_run=True),
    "undo_forget": lambda s, t: s.undo_forget(1),
    "set_retention": lambda s, t: s.set_retention("v", "daily=7"),
    "upgrade": lambda s, t: s.upgrade(),
    "info": lambda s, t: s.info(),
    "copy_to": lambda s, t: s.copy_to(None, None, t / "copy"),
    "stats": lambda s, t: s.stats(),
    "chunks": lambda s, t: s.chunks,
    "read_only": lambda s, t: s.read_only,
    "apply_checkpoint": lambda s, t: s.apply_checkpoint("v", "a"),
    "revert": lambda s, t: s.revert("v"),
    "rename_checkpoint": lambda s, t: s.rename_checkpoint("v", "a", "b"),
    "delete_checkpoint": lambda s, t: s.delete_checkpoint("v", "a"),
    "export": lambda s, t: s.export("v", "a", t / "export"),
    "record_export": lambda s, t: s.record_export("v", None, "x"),
    "import_disk": lambda s, t: s.import_disk("v", "Boot", _img(t)),
    "position": lambda s, t: s.position(1),
    "catch_up": lambda s, t: s.catch_up(),
    "rebuild_read_models": lambda s, t: s.rebuild_read_models(),
    "vm": lambda s, t: s.vm("v"),
    "vms": lambda s, t: s.vms(),
    "tree": lambda s, t: s.tree("v"),
    "checkpoints": lambda s, t: s.checkpoints("v"),
    "chain": lambda s, t: s.chain("v"),
    "files": lambda s, t: s.files("v", "a"),
    "log": lambda s, t: s.log(),
    "follow": lambda s, t: s.follow(),
    "verify_log": lambda s, t: s.verify_log(),
    "report": lambda s, t: s.report(io.StringIO()),
}


@pytest.fixture(scope="module")
def closed(world: tuple[Store, Path]) -> tuple[Store, Path]:
    _, tmp = world
    store = Store.open(tmp / "store", actor="tester")
    store.close()
    return store, tmp


@pytest.mark.parametrize("method", sorted(set(RIGHT) - {"close"}))
def test_every_method_of_a_closed_store_says_it_is_closed(
    closed: tuple[Store, Path], method: str
) -> None:
    store, tmp = closed
    with pytest.raises(ckpt.StoreClosed, match="is closed"):
        RIGHT[method](store, tmp)


def test_closing_twice_is_harmless(closed: tuple[Store, Path]) -> None:
    store, tmp = closed
    RIGHT["close"](store, tmp)
    with store:  # entering a closed store is allowed; using it is not
        pass


def _public(cls: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls) if not name.startswith("_")}


def test_every_public_method_has_a_row_in_the_tables() -> None:
    methods = _public(Store) - {"init", "open"}
    assert methods == set(RIGHT), "add the new method to RIGHT (and its wrong types to WRONG)"
    takes_arguments = {
        name
        for name in methods | {"init", "open"}
        if callable(getattr(Store, name))
        and len(inspect.signature(getattr(Store, name)).parameters) > 1
    }
    named = {name for _, call, _ in WRONG for name in call.__code__.co_names}
    missing = takes_arguments - named
    assert not missing, f"no wrong-type row for {sorted(missing)}"
    assert issubclass(ckpt.StoreClosed, ckpt.CkptError)


def test_files_roles_accept_their_str_values(world: tuple[Store, Path]) -> None:
    # the check must not refuse what works: a FileRole or its value
    store, tmp = world
    config = tmp / "x.vmcx"
    config.write_bytes(b"config")
    store.register_vm("roles")
    cp = store.create_checkpoint("roles", "c", files={"config": config})  # type: ignore[dict-item]
    assert {f.role for f in store.vm("roles").captured_files[cp.id]} == {FileRole.CONFIG}
