"""One focused test per Hyper-V rule of docs/reference HYPERV.md, as ``ckpt.domain`` models them.

Sections covered: "What a checkpoint is", "State files per configuration
version", "Checkpoint types" and "Operations". Every test drives the pure
``VirtualMachine`` aggregate (no files, no store) and asserts concrete values:
file names, event class names, states, layer ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID, uuid4

import pytest

from ckpt.domain import (
    AmbiguousName,
    Checkpoint,
    CheckpointType,
    DiskFormat,
    InvalidValue,
    LayerMerge,
    LayerRemoval,
    NotAllowed,
    Origin,
    StateFile,
    StateFileKind,
    UnknownCheckpoint,
    VirtualMachine,
    VMState,
)

AT = datetime(2026, 11, 26, 14, 5, 9, tzinfo=UTC)
DISK = "Disk0"

E = TypeVar("E")


# ------------------------------------------------------------------ helpers
def origin(at: datetime = AT) -> Origin:
    """A fresh origin per command (the nonce seeds the new ids)."""
    return Origin("tester", "host1", at, uuid4())


def new_vm(
    version: str = "9.0",
    ctype: CheckpointType = CheckpointType.STANDARD,
    disks: tuple[tuple[str, DiskFormat], ...] = ((DISK, DiskFormat.VHDX),),
    automatic: bool = False,
    name: str = "VM1",
) -> VirtualMachine:
    vm = VirtualMachine.register(
        origin(),
        name,
        list(disks),
        config_version=version,
        checkpoint_type=ctype,
        automatic_checkpoints=automatic,
    )
    vm.collect_events()
    return vm


def names(vm: VirtualMachine) -> list[str]:
    """Collect the pending events and return their class names."""
    return [type(e).__name__ for e in vm.collect_events()]


def only(vm: VirtualMachine, cls: type[E]) -> E:
    """Collect the pending events; exactly one must be of class ``cls``."""
    found = [e for e in vm.collect_events() if type(e) is cls]
    assert len(found) == 1, f"expected one {cls.__name__}, got {len(found)}"
    return found[0]


def running_file(vm: VirtualMachine, disk: str = DISK) -> str:
    return vm.layers[vm.running[disk]].file


def vm_file(layer: UUID, disk: str = DISK) -> str:
    """The file name of a differencing layer of a VHDX disk."""
    return f"{disk}_{str(layer).upper()}.avhdx"


def base_id(vm: VirtualMachine, disk: str = DISK) -> UUID:
    (base,) = [la.id for la in vm.layers.values() if la.disk == disk and la.parent is None]
    return base


def files(cp: Checkpoint) -> list[tuple[str, StateFileKind, bool]]:
    return [(f.path, f.kind, f.memory) for f in cp.state_files]


def checkpoint_in_state(
    vm: VirtualMachine,
    state: VMState,
    ctype: CheckpointType | None = None,
    quiesce: bool = True,
) -> Checkpoint:
    if state is not VMState.OFF:
        vm.start(origin())
    if state is VMState.SAVED:
        vm.save(origin())
    return vm.create_checkpoint(origin(), "cp", ctype, quiesce)


# ================================================== What a checkpoint is
def test_checkpoint_freezes_the_current_disk_and_writes_go_to_a_new_differencing_disk() -> None:
    """The current disk is frozen (the checkpoint points to it); a new AVHDX child takes writes."""
    vm = new_vm()
    before = vm.running[DISK]
    cp = vm.create_checkpoint(origin(), "one")
    assert cp.layer(DISK) == before
    now = vm.layers[vm.running[DISK]]
    assert now.id != before
    assert now.parent == before
    assert now.file == f"{DISK}_{str(now.id).upper()}.avhdx"


def test_checkpoint_can_be_taken_with_vm_off_or_running() -> None:
    """A checkpoint can be taken with the VM off or running; it records the VM state."""
    vm = new_vm()
    off = vm.create_checkpoint(origin(), "off")
    vm.start(origin())
    on = vm.create_checkpoint(origin(), "on")
    assert (off.vm_state, on.vm_state) == (VMState.OFF, VMState.RUNNING)
    assert on.parent == off.id


def test_checkpoint_freezes_every_disk_of_the_vm() -> None:
    """Every virtual disk of the VM gets frozen and a new differencing layer."""
    vm = new_vm(disks=(("Boot", DiskFormat.VHDX), ("Data", DiskFormat.VHDX)))
    before = dict(vm.running)
    cp = vm.create_checkpoint(origin(), "both")
    assert dict(cp.layers) == before
    for disk in ("Boot", "Data"):
        assert vm.layers[vm.running[disk]].parent == before[disk]
        assert running_file(vm, disk).startswith(f"{disk}_")


# ===================================== State files per configuration version
def test_v5_standard_checkpoint_of_running_vm_has_xml_vsv_and_bin() -> None:
    """5.0: <GUID>.xml, <GUID>/<GUID>.vsv (device state) and <GUID>/<GUID>.bin (memory)."""
    vm = new_vm(version="5.0")
    cp = checkpoint_in_state(vm, VMState.RUNNING)
    g = str(cp.id).upper()
    assert files(cp) == [
        (f"Snapshots/{g}.xml", StateFileKind.XML, False),
        (f"Snapshots/{g}/{g}.vsv", StateFileKind.VSV, False),
        (f"Snapshots/{g}/{g}.bin", StateFileKind.BIN, True),
    ]


def test_v5_standard_checkpoint_of_saved_vm_has_memory_files() -> None:
    """5.0: a saved VM's memory is saved too, so .vsv and .bin exist."""
    vm = new_vm(version="5.0")
    cp = checkpoint_in_state(vm, VMState.SAVED)
    assert [f.kind for f in cp.state_files] == [
        StateFileKind.XML,
        StateFileKind.VSV,
        StateFileKind.BIN,
    ]


def test_v5_checkpoint_of_off_vm_has_only_xml() -> None:
    """5.0: .vsv and .bin only if running; an off VM's checkpoint has just <GUID>.xml."""
    vm = new_vm(version="5.0")
    cp = checkpoint_in_state(vm, VMState.OFF)
    assert files(cp) == [(f"Snapshots/{str(cp.id).upper()}.xml", StateFileKind.XML, False)]


def test_v5_vm_set_to_production_takes_a_standard_checkpoint_with_vsv_and_bin() -> None:
    """5.0 has no production checkpoints (they need 6.2+): a running 5.0 VM set to
    production gets a standard one, its memory and device state saved."""
    vm = new_vm(version="5.0", ctype=CheckpointType.PRODUCTION)
    cp = checkpoint_in_state(vm, VMState.RUNNING)
    g = str(cp.id).upper()
    assert cp.type is CheckpointType.STANDARD
    assert files(cp) == [
        (f"Snapshots/{g}.xml", StateFileKind.XML, False),
        (f"Snapshots/{g}/{g}.vsv", StateFileKind.VSV, False),
        (f"Snapshots/{g}/{g}.bin", StateFileKind.BIN, True),
    ]


@pytest.mark.parametrize(
    ("version", "state", "ctype", "memory"),
    [
        ("6.2", VMState.RUNNING, CheckpointType.STANDARD, True),
        ("9.0", VMState.RUNNING, CheckpointType.STANDARD, True),
        ("9.0", VMState.SAVED, CheckpointType.STANDARD, True),
        ("9.0", VMState.OFF, CheckpointType.STANDARD, False),
        ("9.0", VMState.RUNNING, CheckpointType.PRODUCTION, False),
        ("10.0", VMState.OFF, CheckpointType.PRODUCTION, False),
        ("12.0", VMState.RUNNING, CheckpointType.STANDARD, True),
    ],
)
def test_v62_plus_checkpoint_has_vmcx_and_vmrs_with_memory_only_when_saved(
    version: str, state: VMState, ctype: CheckpointType, memory: bool
) -> None:
    """6.2+: <GUID>.vmcx + <GUID>.vmrs always; VMRS small (no memory) when off or production."""
    vm = new_vm(version=version)
    cp = checkpoint_in_state(vm, state, ctype)
    g = str(cp.id).upper()
    assert files(cp) == [
        (f"Snapshots/{g}.vmcx", StateFileKind.VMCX, False),
        (f"Snapshots/{g}.vmrs", StateFileKind.VMRS, memory),
    ]
    assert cp.has_memory is memory


def test_state_files_are_named_after_the_checkpoint_id_in_upper_case() -> None:
    """State file names use the checkpoint's GUID, upper case, without braces."""
    vm = new_vm()
    cp = vm.create_checkpoint(origin(), "one")
    stem = cp.state_files[0].path.removeprefix("Snapshots/").removesuffix(".vmcx")
    assert UUID(stem) == cp.id
    assert stem == stem.upper()
    assert stem != str(cp.id)  # a uuid's str() is lower case, so upper-casing happened


def test_state_files_live_in_the_snapshots_folder() -> None:
    """Config/state files live in the VM's Snapshots folder (both formats)."""
    for version in ("5.0", "9.0"):
        vm = new_vm(version=version)
        cp = checkpoint_in_state(vm, VMState.RUNNING)
        assert cp.state_files
        assert all(f.path.startswith("Snapshots/") for f in cp.state_files)


@pytest.mark.parametrize("version", ["9,0", "90", "6.0", "4.0", "13.0", "v9.0"])
def test_unknown_config_version_is_refused(version: str) -> None:
    """Only configuration versions Hyper-V shipped are accepted; a typo is InvalidValue."""
    with pytest.raises(InvalidValue):
        VirtualMachine.register(origin(), "VM1", config_version=version)


def test_checkpoint_records_the_config_version_it_was_taken_at() -> None:
    """The state-file format follows the config version at the time of the checkpoint."""
    vm = new_vm(version="5.0")
    old = vm.create_checkpoint(origin(), "old")
    vm.change_settings(origin(), config_version="9.0")
    new = vm.create_checkpoint(origin(), "new")
    assert (old.config_version, new.config_version) == ("5.0", "9.0")
    assert [f.kind for f in old.state_files] == [StateFileKind.XML]
    assert [f.kind for f in new.state_files] == [StateFileKind.VMCX, StateFileKind.VMRS]
    assert [f.kind for f in vm.checkpoint(old.id).state_files] == [StateFileKind.XML]


def test_differencing_files_sit_beside_the_vhdx_named_disk_underscore_guid_avhdx() -> None:
    """AVHDX files sit beside the parent .vhdx, named <disk name>_<GUID>.avhdx."""
    vm = new_vm(disks=(("Generation 1", DiskFormat.VHDX),))
    assert running_file(vm, "Generation 1") == "Generation 1.vhdx"
    vm.create_checkpoint(origin(), "one")
    vm.create_checkpoint(origin(), "two")
    chain = vm.chain("Generation 1")
    assert chain[0].file == "Generation 1.vhdx"
    for layer in chain[1:]:
        assert layer.file == f"Generation 1_{str(layer.id).upper()}.avhdx"
    assert len(chain) == 3


def test_differencing_files_of_a_vhd_are_avhd() -> None:
    """.avhd (not .avhdx) when the parent is a .vhd; VHDX disks of the same VM keep .avhdx."""
    vm = new_vm(version="5.0", disks=(("Old", DiskFormat.VHD), ("New", DiskFormat.VHDX)))
    assert (running_file(vm, "Old"), running_file(vm, "New")) == ("Old.vhd", "New.vhdx")
    vm.create_checkpoint(origin(), "one")
    old_id = str(vm.running["Old"]).upper()
    new_id = str(vm.running["New"]).upper()
    assert running_file(vm, "Old") == f"Old_{old_id}.avhd"
    assert running_file(vm, "New") == f"New_{new_id}.avhdx"


# ========================================================== Checkpoint types
def test_production_is_the_default_checkpoint_type() -> None:
    """Production (new in 2016) is the default checkpoint type of a new VM."""
    vm = VirtualMachine.register(origin(), "VM1")
    assert vm.checkpoint_type is CheckpointType.PRODUCTION
    vm.start(origin())
    cp = vm.create_checkpoint(origin(), "one")
    assert cp.type is CheckpointType.PRODUCTION


def test_standard_checkpoint_of_running_vm_saves_memory_and_device_state() -> None:
    """Standard: disks + memory + device state."""
    vm = new_vm(ctype=CheckpointType.STANDARD)
    cp = checkpoint_in_state(vm, VMState.RUNNING)
    event = only(vm, VirtualMachine.CheckpointCreated)
    assert cp.type is CheckpointType.STANDARD
    assert cp.has_memory is True
    assert (event.requested_type, event.fell_back) == (CheckpointType.STANDARD, False)
    assert cp.state_files[1] == StateFile(
        f"Snapshots/{str(cp.id).upper()}.vmrs", StateFileKind.VMRS, True
    )


def test_production_checkpoint_of_off_vm_has_no_memory() -> None:
    """Production: application-consistent, no memory state; always possible when off."""
    vm = new_vm(ctype=CheckpointType.PRODUCTION)
    cp = checkpoint_in_state(vm, VMState.OFF, quiesce=False)
    event = only(vm, VirtualMachine.CheckpointCreated)
    assert cp.type is CheckpointType.PRODUCTION
    assert cp.has_memory is False
    assert event.fell_back is False


def test_production_checkpoint_of_running_vm_whose_guest_quiesces_has_no_memory() -> None:
    """Production via VSS/fsfreeze in the running guest: no memory state."""
    vm = new_vm(ctype=CheckpointType.PRODUCTION)
    cp = checkpoint_in_state(vm, VMState.RUNNING, quiesce=True)
    event = only(vm, VirtualMachine.CheckpointCreated)
    assert cp.type is CheckpointType.PRODUCTION
    assert [f.memory for f in cp.state_files] == [False, False]
    assert (event.requested_type, event.fell_back) == (CheckpointType.PRODUCTION, False)


def test_production_falls_back_to_standard_when_guest_cannot_quiesce() -> None:
    """If the guest cannot do a production checkpoint, Hyper-V falls back to standard."""
    vm = new_vm(ctype=CheckpointType.PRODUCTION)
    cp = checkpoint_in_state(vm, VMState.RUNNING, quiesce=False)
    event = only(vm, VirtualMachine.CheckpointCreated)
    assert cp.type is CheckpointType.STANDARD
    assert cp.has_memory is True
    assert (event.requested_type, event.fell_back) == (CheckpointType.PRODUCTION, True)


def test_production_only_fails_instead_of_falling_back() -> None:
    """ProductionOnly: like Production but fails instead of falling back."""
    vm = new_vm(ctype=CheckpointType.PRODUCTION_ONLY)
    vm.start(origin())
    vm.collect_events()
    with pytest.raises(NotAllowed):
        vm.create_checkpoint(origin(), "cp", guest_can_quiesce=False)
    assert vm.checkpoints == {}
    assert names(vm) == []


def test_production_only_succeeds_as_production_when_guest_quiesces() -> None:
    """ProductionOnly with a guest that can quiesce takes a production checkpoint."""
    vm = new_vm(ctype=CheckpointType.PRODUCTION_ONLY)
    cp = checkpoint_in_state(vm, VMState.RUNNING, quiesce=True)
    event = only(vm, VirtualMachine.CheckpointCreated)
    assert cp.type is CheckpointType.PRODUCTION
    assert (event.requested_type, event.fell_back) == (CheckpointType.PRODUCTION_ONLY, False)


def test_production_of_saved_vm_falls_back_to_standard() -> None:
    """A saved VM's guest cannot quiesce: production falls back to standard (with memory)."""
    vm = new_vm(ctype=CheckpointType.PRODUCTION)
    cp = checkpoint_in_state(vm, VMState.SAVED, quiesce=True)
    event = only(vm, VirtualMachine.CheckpointCreated)
    assert (cp.type, cp.vm_state, cp.has_memory) == (CheckpointType.STANDARD, VMState.SAVED, True)
    assert (event.requested_type, event.fell_back) == (CheckpointType.PRODUCTION, True)


def test_production_only_of_saved_vm_fails() -> None:
    """A saved VM cannot quiesce, so ProductionOnly fails."""
    vm = new_vm(ctype=CheckpointType.PRODUCTION_ONLY)
    vm.start(origin())
    vm.save(origin())
    with pytest.raises(NotAllowed):
        vm.create_checkpoint(origin(), "cp", guest_can_quiesce=True)
    assert vm.checkpoints == {}


def test_disabled_setting_refuses_every_checkpoint() -> None:
    """Disabled: no checkpoints can be taken."""
    vm = new_vm(ctype=CheckpointType.DISABLED)
    for state in (VMState.OFF, VMState.RUNNING):
        if state is VMState.RUNNING:
            vm.start(origin())
        vm.collect_events()
        with pytest.raises(NotAllowed):
            vm.create_checkpoint(origin(), "cp")
        assert names(vm) == []
    assert vm.checkpoints == {}


@pytest.mark.parametrize("override", [CheckpointType.STANDARD, CheckpointType.PRODUCTION])
def test_disabled_setting_refuses_a_checkpoint_with_an_explicit_type(
    override: CheckpointType,
) -> None:
    """Disabled: no checkpoints can be taken, even when a type is given for this one."""
    vm = new_vm(ctype=CheckpointType.DISABLED)
    with pytest.raises(NotAllowed):
        vm.create_checkpoint(origin(), "cp", checkpoint_type=override)
    assert vm.checkpoints == {}


def test_disabled_is_not_a_type_of_checkpoint() -> None:
    """Disabled is a VM setting, not a checkpoint type one can ask for."""
    vm = new_vm(ctype=CheckpointType.STANDARD)
    with pytest.raises(InvalidValue):
        vm.create_checkpoint(origin(), "cp", checkpoint_type=CheckpointType.DISABLED)
    assert vm.checkpoints == {}


def test_automatic_checkpoint_taken_when_vm_with_no_checkpoints_starts() -> None:
    """Automatic checkpoints: one is taken when a VM with no checkpoints starts."""
    vm = new_vm(ctype=CheckpointType.PRODUCTION, automatic=True)
    base = vm.running[DISK]
    vm.start(origin())
    assert names(vm) == ["CheckpointCreated", "StateChanged"]
    (cp,) = vm.checkpoints.values()
    assert cp.automatic is True
    assert vm.automatic_checkpoint == cp.id
    assert (cp.vm_state, cp.type) == (VMState.OFF, CheckpointType.PRODUCTION)
    assert cp.layer(DISK) == base
    assert cp.name == "Automatic Checkpoint - VM1 - (11/26/2026 - 2:05:09 PM)"
    assert vm.state is VMState.RUNNING


def test_no_automatic_checkpoint_when_vm_already_has_checkpoints() -> None:
    """Automatic checkpoints are only taken for a VM with no checkpoints."""
    vm = new_vm(automatic=True)
    manual = vm.create_checkpoint(origin(), "manual")
    vm.collect_events()
    vm.start(origin())
    assert names(vm) == ["StateChanged"]
    assert list(vm.checkpoints) == [manual.id]
    assert vm.automatic_checkpoint is None


def test_no_automatic_checkpoint_when_the_setting_is_off() -> None:
    """Automatic checkpoints are a setting; off means start takes none."""
    vm = new_vm(automatic=False)
    vm.start(origin())
    assert names(vm) == ["StateChanged"]
    assert vm.checkpoints == {}


def test_no_automatic_checkpoint_when_checkpoints_are_disabled() -> None:
    """Disabled: no checkpoints can be taken, automatic ones included; the VM still starts."""
    vm = new_vm(ctype=CheckpointType.DISABLED, automatic=True)
    vm.start(origin())
    assert names(vm) == ["StateChanged"]
    assert (vm.checkpoints, vm.state) == ({}, VMState.RUNNING)


def test_automatic_checkpoint_removed_at_clean_shutdown() -> None:
    """The automatic checkpoint is removed at clean shutdown; Now merges into the base disk."""
    vm = new_vm(automatic=True)
    base = base_id(vm)
    vm.start(origin())
    auto = vm.automatic_checkpoint
    assert auto is not None
    running = vm.running[DISK]
    vm.collect_events()
    vm.stop(origin())
    events = vm.collect_events()
    assert [type(e).__name__ for e in events] == ["StateChanged", "CheckpointDeleted"]
    deleted = events[1]
    assert isinstance(deleted, VirtualMachine.CheckpointDeleted)
    assert (deleted.checkpoint_id, deleted.reason) == (auto, "clean-shutdown")
    assert deleted.changes == (LayerMerge(DISK, running, vm_file(running), base, "Disk0.vhdx"),)
    assert vm.checkpoints == {}
    assert vm.automatic_checkpoint is None
    assert vm.running[DISK] == base
    assert vm.state is VMState.OFF


def test_automatic_checkpoint_removal_follows_the_normal_merge_rules() -> None:
    """Removing the automatic checkpoint at shutdown merges its one dependant into it."""
    vm = new_vm(automatic=True)
    base = base_id(vm)
    vm.start(origin())
    child = vm.create_checkpoint(origin(), "while running")
    child_layer = child.layer(DISK)
    vm.collect_events()
    vm.stop(origin())
    deleted = only(vm, VirtualMachine.CheckpointDeleted)
    assert deleted.dependants == 1
    assert deleted.changes == (
        LayerMerge(DISK, child_layer, vm_file(child_layer), base, "Disk0.vhdx"),
    )
    assert list(vm.checkpoints) == [child.id]
    assert vm.checkpoint(child.id).parent is None
    assert vm.checkpoint(child.id).layer(DISK) == base
    assert vm.layers[vm.running[DISK]].parent == base


def test_stop_from_saved_state_is_not_a_clean_shutdown_and_keeps_automatic_checkpoint() -> None:
    """Only a clean shutdown removes the automatic checkpoint; turning off a saved VM does not."""
    vm = new_vm(automatic=True)
    vm.start(origin())
    auto = vm.automatic_checkpoint
    vm.save(origin())
    vm.collect_events()
    vm.stop(origin())
    assert names(vm) == ["StateChanged"]
    assert auto is not None and list(vm.checkpoints) == [auto]
    assert vm.automatic_checkpoint == auto
    assert vm.state is VMState.OFF


# ================================================================ Operations
@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (datetime(2026, 11, 26, 14, 5, 9, tzinfo=UTC), "VM1 - (11/26/2026 - 2:05:09 PM)"),
        (datetime(2027, 1, 2, 9, 7, 3, tzinfo=UTC), "VM1 - (1/2/2027 - 9:07:03 AM)"),
        (datetime(2026, 3, 4, 0, 0, 0, tzinfo=UTC), "VM1 - (3/4/2026 - 12:00:00 AM)"),
        (datetime(2026, 12, 31, 12, 30, 59, tzinfo=UTC), "VM1 - (12/31/2026 - 12:30:59 PM)"),
        (datetime(2026, 7, 9, 23, 59, 0, tzinfo=UTC), "VM1 - (7/9/2026 - 11:59:00 PM)"),
    ],
)
def test_default_checkpoint_name_is_vm_name_and_date_time(at: datetime, expected: str) -> None:
    """Checkpoint-VM default name: <VM name> - (<M/D/YYYY - h:mm:ss AM/PM>)."""
    vm = new_vm()
    cp = vm.create_checkpoint(origin(at))
    assert cp.name == expected
    assert cp.created_at == at


def test_default_checkpoint_name_of_a_100_character_vm_name_stays_within_100() -> None:
    """Names are 1 to 100 chars, so a default name built from a long VM name is cut to fit."""
    vm = new_vm(name="V" * 100)
    cp = vm.create_checkpoint(origin())
    assert len(cp.name) == 100
    assert cp.name.endswith(" - (11/26/2026 - 2:05:09 PM)")
    assert cp.name.startswith("V" * 72)


@pytest.mark.parametrize("length", [1, 100])
def test_checkpoint_names_of_1_to_100_characters_are_accepted(length: int) -> None:
    """Names: 1 to 100 characters (both ends accepted, on create and rename)."""
    vm = new_vm()
    cp = vm.create_checkpoint(origin(), "n" * length)
    assert cp.name == "n" * length
    vm.rename_checkpoint(origin(), cp.id, "r" * length)
    assert vm.checkpoint(cp.id).name == "r" * length


@pytest.mark.parametrize("length", [0, 101])
def test_checkpoint_names_outside_1_to_100_characters_are_refused(length: int) -> None:
    """Names: 1 to 100 characters; 0 and 101 are InvalidValue on create and rename."""
    vm = new_vm()
    with pytest.raises(InvalidValue):
        vm.create_checkpoint(origin(), "n" * length)
    cp = vm.create_checkpoint(origin(), "ok")
    vm.collect_events()
    with pytest.raises(InvalidValue):
        vm.rename_checkpoint(origin(), cp.id, "r" * length)
    assert vm.checkpoint(cp.id).name == "ok"
    assert names(vm) == []


@pytest.mark.parametrize("bad", ["a\nb", "tab\there", "nul\x00", "del\x7f", "\x1b[31mred"])
def test_checkpoint_names_with_control_characters_are_refused(bad: str) -> None:
    """Checkpoint names must not contain control characters."""
    vm = new_vm()
    with pytest.raises(InvalidValue):
        vm.create_checkpoint(origin(), bad)
    assert vm.checkpoints == {}


def test_duplicate_checkpoint_names_are_allowed_and_told_apart_by_id() -> None:
    """Duplicate names are allowed (as in Hyper-V); checkpoints are told apart by id."""
    vm = new_vm()
    a = vm.create_checkpoint(origin(), "same")
    b = vm.create_checkpoint(origin(), "same")
    assert a.id != b.id
    assert [cp.name for cp in vm.checkpoints.values()] == ["same", "same"]
    assert b.parent == a.id


def test_find_checkpoint_by_duplicated_name_is_ambiguous_but_by_id_works() -> None:
    """A duplicated name is ambiguous (AmbiguousName); the id always names one checkpoint."""
    vm = new_vm()
    a = vm.create_checkpoint(origin(), "same")
    b = vm.create_checkpoint(origin(), "same")
    with pytest.raises(AmbiguousName):
        vm.find_checkpoint("same")
    assert vm.find_checkpoint(str(a.id)) == a
    assert vm.find_checkpoint("{" + str(b.id).upper() + "}") == b
    vm.rename_checkpoint(origin(), b.id, "other")
    assert vm.find_checkpoint("same").id == a.id


def test_apply_creates_a_new_differencing_disk_under_the_checkpoints_frozen_disk() -> None:
    """Restore-VMSnapshot: a new differencing disk is created under the checkpoint's frozen disk."""
    vm = new_vm()
    a = vm.create_checkpoint(origin(), "a")
    vm.create_checkpoint(origin(), "b")
    vm.collect_events()
    vm.apply_checkpoint(origin(), a.id)
    event = only(vm, VirtualMachine.CheckpointApplied)
    (new,) = event.new_layers
    assert vm.running[DISK] == new.id
    assert new.parent == a.layer(DISK)
    assert new.file == vm_file(new.id)
    assert vm.current == a.id
    assert [la.file for la in vm.chain(DISK)] == ["Disk0.vhdx", new.file]


def test_apply_discards_the_old_running_state() -> None:
    """Apply discards the old running state: its differencing disk is deleted (LayerRemoval)."""
    vm = new_vm()
    a = vm.create_checkpoint(origin(), "a")
    old = vm.running[DISK]
    vm.collect_events()
    vm.apply_checkpoint(origin(), a.id)
    event = only(vm, VirtualMachine.CheckpointApplied)
    assert event.changes == (LayerRemoval(DISK, old, vm_file(old)),)
    assert old not in vm.layers
    assert a.layer(DISK) in vm.layers


def test_apply_standard_checkpoint_taken_while_running_leaves_vm_saved() -> None:
    """A standard checkpoint holds memory: the VM applied to it comes back saved."""
    vm = new_vm(ctype=CheckpointType.STANDARD)
    cp = checkpoint_in_state(vm, VMState.RUNNING)
    vm.stop(origin())
    vm.collect_events()
    vm.apply_checkpoint(origin(), cp.id)
    event = only(vm, VirtualMachine.CheckpointApplied)
    assert (event.previous, event.state) == (VMState.OFF, VMState.SAVED)
    assert vm.state is VMState.SAVED


def test_apply_production_checkpoint_leaves_vm_off() -> None:
    """Production: a VM applied to it comes up off."""
    vm = new_vm(ctype=CheckpointType.PRODUCTION)
    cp = checkpoint_in_state(vm, VMState.RUNNING)
    assert cp.type is CheckpointType.PRODUCTION
    vm.collect_events()
    vm.apply_checkpoint(origin(), cp.id)
    event = only(vm, VirtualMachine.CheckpointApplied)
    assert (event.previous, event.state) == (VMState.RUNNING, VMState.OFF)
    assert vm.state is VMState.OFF


def test_apply_fallen_back_production_checkpoint_leaves_vm_saved() -> None:
    """A production request that fell back to standard holds memory, so apply leaves it saved."""
    vm = new_vm(ctype=CheckpointType.PRODUCTION)
    cp = checkpoint_in_state(vm, VMState.RUNNING, quiesce=False)
    vm.apply_checkpoint(origin(), cp.id)
    assert vm.state is VMState.SAVED


def test_apply_checkpoint_taken_while_off_leaves_vm_off() -> None:
    """A checkpoint of an off VM has no memory: applying it leaves the VM off."""
    vm = new_vm(ctype=CheckpointType.STANDARD)
    cp = vm.create_checkpoint(origin(), "off")
    vm.start(origin())
    vm.apply_checkpoint(origin(), cp.id)
    assert vm.state is VMState.OFF


def test_applying_an_older_checkpoint_then_creating_makes_a_branch() -> None:
    """Apply an older checkpoint, then create: a branch; the tree keeps every checkpoint."""
    vm = new_vm()
    a = vm.create_checkpoint(origin(), "a")
    b = vm.create_checkpoint(origin(), "b")
    c = vm.create_checkpoint(origin(), "c")
    vm.apply_checkpoint(origin(), a.id)
    d = vm.create_checkpoint(origin(), "d")
    assert set(vm.checkpoints) == {a.id, b.id, c.id, d.id}
    assert {cp.id for cp in vm.children(a.id)} == {b.id, d.id}
    assert vm.checkpoint(c.id).parent == b.id
    assert vm.current == d.id
    # Both branches still read through a's frozen disk.
    assert vm.chain(DISK, c.id)[0].id == a.layer(DISK)
    assert vm.layers[d.layer(DISK)].parent == a.layer(DISK)


def test_revert_applies_the_current_checkpoint() -> None:
    """Revert: apply the current checkpoint (the parent of Now); recorded as CheckpointReverted."""
    vm = new_vm()
    vm.create_checkpoint(origin(), "a")
    b = vm.create_checkpoint(origin(), "b")
    vm.start(origin())
    old = vm.running[DISK]
    vm.collect_events()
    vm.revert(origin())
    events = vm.collect_events()
    assert [type(e).__name__ for e in events] == ["CheckpointReverted"]
    event = events[0]
    assert isinstance(event, VirtualMachine.CheckpointReverted)
    assert event.checkpoint_id == b.id
    assert event.changes == (LayerRemoval(DISK, old, vm_file(old)),)
    assert vm.current == b.id
    assert vm.layers[vm.running[DISK]].parent == b.layer(DISK)
    assert vm.state is VMState.OFF


def test_revert_without_a_current_checkpoint_is_not_allowed() -> None:
    """Revert needs a current checkpoint (a parent of Now)."""
    vm = new_vm()
    with pytest.raises(NotAllowed):
        vm.revert(origin())
    cp = vm.create_checkpoint(origin(), "only")
    vm.delete_checkpoint(origin(), cp.id)
    vm.collect_events()
    with pytest.raises(NotAllowed):
        vm.revert(origin())
    assert names(vm) == []


def test_rename_changes_only_the_name() -> None:
    """Rename-VMSnapshot: renames, nothing else changes."""
    vm = new_vm()
    a = vm.create_checkpoint(origin(), "a")
    vm.start(origin())
    b = vm.create_checkpoint(origin(), "b")
    layers, running, current, state = dict(vm.layers), dict(vm.running), vm.current, vm.state
    vm.collect_events()
    vm.rename_checkpoint(origin(), b.id, "renamed")
    event = only(vm, VirtualMachine.CheckpointRenamed)
    assert (event.checkpoint_id, event.old_name, event.new_name) == (b.id, "b", "renamed")
    assert vm.checkpoint(b.id) == replace(b, name="renamed")
    assert vm.checkpoint(b.id).state_files == b.state_files
    assert vm.checkpoint(a.id) == a
    assert (vm.layers, vm.running, vm.current, vm.state) == (layers, running, current, state)


def test_delete_with_no_dependants_deletes_its_differencing_disk() -> None:
    """Delete, no dependants (no child, not the parent of Now): its differencing disk is deleted."""
    vm = new_vm()
    a = vm.create_checkpoint(origin(), "a")
    b = vm.create_checkpoint(origin(), "b")
    vm.apply_checkpoint(origin(), a.id)  # Now leaves b: b is a leaf with no dependants
    frozen = b.layer(DISK)
    running = vm.running[DISK]
    vm.collect_events()
    vm.delete_checkpoint(origin(), b.id)
    event = only(vm, VirtualMachine.CheckpointDeleted)
    assert (event.dependants, event.deleted, event.subtree) == (0, (b.id,), False)
    assert event.changes == (LayerRemoval(DISK, frozen, vm_file(frozen)),)
    assert frozen not in vm.layers
    assert list(vm.checkpoints) == [a.id]
    assert vm.running[DISK] == running


def test_delete_with_one_child_checkpoint_merges_the_child_into_the_deleted_disk() -> None:
    """Delete, one dependant (a child checkpoint): child AVHDX merged into it, child re-pointed."""
    vm = new_vm()
    a = vm.create_checkpoint(origin(), "a")
    b = vm.create_checkpoint(origin(), "b")
    c = vm.create_checkpoint(origin(), "c")
    target, source = b.layer(DISK), c.layer(DISK)
    running = vm.running[DISK]
    vm.collect_events()
    vm.delete_checkpoint(origin(), b.id)
    event = only(vm, VirtualMachine.CheckpointDeleted)
    assert event.dependants == 1
    assert event.changes == (LayerMerge(DISK, source, vm_file(source), target, vm_file(target)),)
    assert source not in vm.layers  # the child file is deleted
    assert vm.checkpoint(c.id).layer(DISK) == target  # the dependant is re-pointed
    assert vm.checkpoint(c.id).parent == a.id
    assert vm.layers[running].parent == target
    assert [la.id for la in vm.chain(DISK)] == [a.layer(DISK), target, running]


def test_delete_with_now_as_only_dependant_merges_the_running_disk_into_it() -> None:
    """Delete, one dependant (the running state): Now's AVHDX merged into it, Now re-pointed."""
    vm = new_vm()
    a = vm.create_checkpoint(origin(), "a")
    b = vm.create_checkpoint(origin(), "b")
    vm.start(origin())  # merges run live
    target, source = b.layer(DISK), vm.running[DISK]
    vm.collect_events()
    vm.delete_checkpoint(origin(), b.id)
    event = only(vm, VirtualMachine.CheckpointDeleted)
    assert event.dependants == 1
    assert event.changes == (LayerMerge(DISK, source, vm_file(source), target, vm_file(target)),)
    assert source not in vm.layers
    assert vm.running[DISK] == target
    assert vm.current == a.id
    assert vm.state is VMState.RUNNING


def test_delete_first_checkpoint_merges_the_running_disk_into_the_base_vhdx() -> None:
    """Deleting the only checkpoint merges Now's AVHDX into the base .vhdx, which Now uses again."""
    vm = new_vm()
    base = base_id(vm)
    cp = vm.create_checkpoint(origin(), "a")
    source = vm.running[DISK]
    vm.collect_events()
    vm.delete_checkpoint(origin(), cp.id)
    event = only(vm, VirtualMachine.CheckpointDeleted)
    assert event.changes == (LayerMerge(DISK, source, vm_file(source), base, "Disk0.vhdx"),)
    assert vm.running[DISK] == base
    assert [la.file for la in vm.chain(DISK)] == ["Disk0.vhdx"]
    assert list(vm.layers) == [base]
    assert vm.current is None


def test_delete_with_two_dependants_keeps_its_disk_and_reparents_the_children() -> None:
    """Delete, two or more dependants: its disk is kept (parent of several branches)."""
    vm = new_vm()
    p = vm.create_checkpoint(origin(), "p")
    a = vm.create_checkpoint(origin(), "a")
    b = vm.create_checkpoint(origin(), "b")
    vm.apply_checkpoint(origin(), a.id)
    c = vm.create_checkpoint(origin(), "c")
    kept = a.layer(DISK)
    vm.collect_events()
    vm.delete_checkpoint(origin(), a.id)
    event = only(vm, VirtualMachine.CheckpointDeleted)
    assert event.dependants == 2
    assert event.changes == ()
    assert kept in vm.layers
    assert a.id not in vm.checkpoints
    assert vm.checkpoint(b.id).parent == p.id
    assert vm.checkpoint(c.id).parent == p.id
    assert vm.layers[b.layer(DISK)].parent == kept
    assert vm.layers[c.layer(DISK)].parent == kept


def test_delete_with_a_child_and_now_counts_two_dependants() -> None:
    """A child checkpoint plus Now below the checkpoint are two dependants: the disk is kept."""
    vm = new_vm()
    a = vm.create_checkpoint(origin(), "a")
    b = vm.create_checkpoint(origin(), "b")
    vm.create_checkpoint(origin(), "c")
    vm.apply_checkpoint(origin(), b.id)
    vm.collect_events()
    vm.delete_checkpoint(origin(), b.id)
    event = only(vm, VirtualMachine.CheckpointDeleted)
    assert event.dependants == 2
    assert event.changes == ()
    assert b.layer(DISK) in vm.layers
    assert vm.current == a.id


def test_delete_removes_the_checkpoints_config_and_state_files_at_once() -> None:
    """Remove-VMSnapshot: the checkpoint's config and state files go at once."""
    vm = new_vm()
    vm.start(origin())
    a = vm.create_checkpoint(origin(), "a")
    b = vm.create_checkpoint(origin(), "b")
    vm.delete_checkpoint(origin(), a.id)
    assert list(vm.checkpoints) == [b.id]
    live = {f.path for cp in vm.checkpoints.values() for f in cp.state_files}
    assert live == {f.path for f in b.state_files}
    assert not live & {f.path for f in a.state_files}


def test_delete_subtree_removes_the_checkpoint_and_all_its_descendants() -> None:
    """Remove-VMSnapshot -IncludeAllChildSnapshots: the checkpoint and all its descendants."""
    vm = new_vm()
    a = vm.create_checkpoint(origin(), "a")
    b = vm.create_checkpoint(origin(), "b")
    c = vm.create_checkpoint(origin(), "c")
    d = vm.create_checkpoint(origin(), "d")
    vm.apply_checkpoint(origin(), a.id)  # Now is outside b's subtree
    running = vm.running[DISK]
    vm.collect_events()
    vm.delete_checkpoint(origin(), b.id, subtree=True)
    event = only(vm, VirtualMachine.CheckpointDeleted)
    assert event.subtree is True
    assert event.deleted == (b.id, c.id, d.id)
    assert list(vm.checkpoints) == [a.id]
    removed = {ch.layer for ch in event.changes if isinstance(ch, LayerRemoval)}
    assert removed == {b.layer(DISK), c.layer(DISK), d.layer(DISK)}
    assert set(vm.layers) == {a.layer(DISK), running}
    assert vm.current == a.id


def test_delete_subtree_above_now_merges_nows_data_up_so_the_chain_stays_valid() -> None:
    """Deleting a subtree that Now descends from keeps Now's data: it is merged upwards."""
    vm = new_vm()
    p = vm.create_checkpoint(origin(), "p")
    a = vm.create_checkpoint(origin(), "a")
    b = vm.create_checkpoint(origin(), "b")
    running = vm.running[DISK]
    vm.collect_events()
    vm.delete_checkpoint(origin(), a.id, subtree=True)
    event = only(vm, VirtualMachine.CheckpointDeleted)
    assert event.deleted == (a.id, b.id)
    assert event.changes == (
        LayerMerge(DISK, running, vm_file(running), b.layer(DISK), vm_file(b.layer(DISK))),
        LayerMerge(
            DISK, b.layer(DISK), vm_file(b.layer(DISK)), a.layer(DISK), vm_file(a.layer(DISK))
        ),
    )
    assert list(vm.checkpoints) == [p.id]
    assert vm.current == p.id
    assert vm.running[DISK] == a.layer(DISK)
    assert [la.id for la in vm.chain(DISK)] == [p.layer(DISK), a.layer(DISK)]
    assert set(vm.layers) == {p.layer(DISK), a.layer(DISK)}


def test_export_is_recorded_and_changes_nothing_else() -> None:
    """Export-VMSnapshot exports one checkpoint; the VM and its tree are unchanged."""
    vm = new_vm()
    a = vm.create_checkpoint(origin(), "a")
    vm.start(origin())
    snapshot = (
        dict(vm.checkpoints),
        dict(vm.layers),
        dict(vm.running),
        vm.current,
        vm.state,
    )
    vm.collect_events()
    vm.export_checkpoint(origin(), a.id, "D:/exports/a")
    event = only(vm, VirtualMachine.CheckpointExported)
    assert (event.checkpoint_id, event.name, event.destination) == (a.id, "a", "D:/exports/a")
    assert (vm.checkpoints, vm.layers, vm.running, vm.current, vm.state) == snapshot


UNKNOWN_OPS: dict[str, Callable[[VirtualMachine, UUID], Any]] = {
    "apply": lambda vm, cid: vm.apply_checkpoint(origin(), cid),
    "rename": lambda vm, cid: vm.rename_checkpoint(origin(), cid, "x"),
    "delete": lambda vm, cid: vm.delete_checkpoint(origin(), cid),
    "delete-subtree": lambda vm, cid: vm.delete_checkpoint(origin(), cid, subtree=True),
    "export": lambda vm, cid: vm.export_checkpoint(origin(), cid, "D:/x"),
    "get": lambda vm, cid: vm.checkpoint(cid),
    "find": lambda vm, cid: vm.find_checkpoint(str(cid)),
    "chain": lambda vm, cid: vm.chain(DISK, cid),
}


@pytest.mark.parametrize("op", sorted(UNKNOWN_OPS))
def test_operation_on_unknown_checkpoint_id_raises_unknown_checkpoint(op: str) -> None:
    """Every operation on a checkpoint id the VM does not have raises UnknownCheckpoint."""
    vm = new_vm()
    vm.create_checkpoint(origin(), "a")
    vm.collect_events()
    with pytest.raises(UnknownCheckpoint):
        UNKNOWN_OPS[op](vm, uuid4())
    assert names(vm) == []


def test_operation_on_a_deleted_checkpoint_raises_unknown_checkpoint() -> None:
    """A deleted checkpoint is unknown from then on."""
    vm = new_vm()
    a = vm.create_checkpoint(origin(), "a")
    vm.delete_checkpoint(origin(), a.id)
    with pytest.raises(UnknownCheckpoint):
        vm.apply_checkpoint(origin(), a.id)
    with pytest.raises(UnknownCheckpoint):
        vm.find_checkpoint("a")


@pytest.mark.parametrize("start_from", [VMState.OFF, VMState.SAVED])
def test_start_is_allowed_from_off_and_saved(start_from: VMState) -> None:
    """Start: from off or saved, to running."""
    vm = new_vm()
    if start_from is VMState.SAVED:
        vm.start(origin())
        vm.save(origin())
    vm.collect_events()
    vm.start(origin())
    event = only(vm, VirtualMachine.StateChanged)
    assert (event.previous, event.state) == (start_from, VMState.RUNNING)
    assert vm.state is VMState.RUNNING


def test_start_of_a_running_vm_is_not_allowed() -> None:
    """A running VM cannot be started again."""
    vm = new_vm()
    vm.start(origin())
    with pytest.raises(NotAllowed):
        vm.start(origin())


@pytest.mark.parametrize("stop_from", [VMState.RUNNING, VMState.SAVED])
def test_stop_is_allowed_from_running_and_saved(stop_from: VMState) -> None:
    """Stop (turn off): from running or saved, to off."""
    vm = new_vm()
    vm.start(origin())
    if stop_from is VMState.SAVED:
        vm.save(origin())
    vm.collect_events()
    vm.stop(origin())
    event = only(vm, VirtualMachine.StateChanged)
    assert (event.previous, event.state) == (stop_from, VMState.OFF)


def test_stop_of_an_off_vm_is_not_allowed() -> None:
    """An off VM cannot be stopped."""
    vm = new_vm()
    with pytest.raises(NotAllowed):
        vm.stop(origin())


@pytest.mark.parametrize("bad", [VMState.OFF, VMState.SAVED])
def test_save_is_only_allowed_from_running(bad: VMState) -> None:
    """Save: only a running VM can be saved."""
    vm = new_vm()
    if bad is VMState.SAVED:
        vm.start(origin())
        vm.save(origin())
    vm.collect_events()
    with pytest.raises(NotAllowed):
        vm.save(origin())
    assert vm.state is bad
    assert names(vm) == []
    if bad is VMState.OFF:
        vm.start(origin())
        vm.save(origin())
        assert vm.state is VMState.SAVED


def test_config_version_can_be_upgraded_while_off() -> None:
    """The configuration version can be upgraded while the VM is off."""
    vm = new_vm(version="5.0")
    vm.change_settings(origin(), config_version="9.0")
    event = only(vm, VirtualMachine.SettingsChanged)
    assert event.config_version == "9.0"
    assert vm.config_version == "9.0"


def test_config_version_cannot_be_downgraded() -> None:
    """The configuration version can only be upgraded."""
    vm = new_vm(version="9.0")
    with pytest.raises(NotAllowed):
        vm.change_settings(origin(), config_version="8.0")
    with pytest.raises(NotAllowed):
        vm.change_settings(origin(), config_version="5.0")
    assert vm.config_version == "9.0"
    assert names(vm) == []


@pytest.mark.parametrize("state", [VMState.RUNNING, VMState.SAVED])
def test_config_version_cannot_be_upgraded_unless_off(state: VMState) -> None:
    """The configuration version can only be changed while the VM is off."""
    vm = new_vm(version="8.0")
    vm.start(origin())
    if state is VMState.SAVED:
        vm.save(origin())
    vm.collect_events()
    with pytest.raises(NotAllowed):
        vm.change_settings(origin(), config_version="9.0")
    assert vm.config_version == "8.0"
    assert names(vm) == []


def test_config_version_upgrade_to_an_unknown_version_is_refused() -> None:
    """Upgrading to a version Hyper-V never shipped is InvalidValue."""
    vm = new_vm(version="8.0")
    with pytest.raises(InvalidValue):
        vm.change_settings(origin(), config_version="9,0")
    assert vm.config_version == "8.0"


def test_every_command_records_explicit_past_tense_events() -> None:
    """Each command records what happened as a named, past-tense event."""
    vm = VirtualMachine.register(origin(), "VM1", config_version="9.0")
    assert names(vm) == ["Registered"]
    vm.change_settings(origin(), checkpoint_type=CheckpointType.STANDARD)
    vm.start(origin())
    a = vm.create_checkpoint(origin(), "a")
    vm.save(origin())
    vm.rename_checkpoint(origin(), a.id, "A")
    vm.export_checkpoint(origin(), a.id, "D:/x")
    vm.apply_checkpoint(origin(), a.id)
    vm.revert(origin())
    vm.stop(origin())
    vm.delete_checkpoint(origin(), a.id)
    assert names(vm) == [
        "SettingsChanged",
        "StateChanged",
        "CheckpointCreated",
        "StateChanged",
        "CheckpointRenamed",
        "CheckpointExported",
        "CheckpointApplied",
        "CheckpointReverted",
        "StateChanged",
        "CheckpointDeleted",
    ]


def test_events_carry_who_and_where() -> None:
    """Events record the actor and host of the command's origin."""
    vm = new_vm()
    vm.create_checkpoint(Origin("alice", "hv-07", AT, uuid4()), "a")
    event = only(vm, VirtualMachine.CheckpointCreated)
    assert (event.actor, event.host) == ("alice", "hv-07")
