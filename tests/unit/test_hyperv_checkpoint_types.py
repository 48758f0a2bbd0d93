"""Issue 17's checkpoint rules on the pure aggregate: production needs configuration
6.2+, ``--type`` stays within the VM's setting, 50 checkpoints per VM, and what a
configuration upgrade does to existing checkpoints (docs/decisions/0001)."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from ckpt.domain import (
    CheckpointType,
    InvalidValue,
    NotAllowed,
    Origin,
    StateFileKind,
    VirtualMachine,
    VMState,
)
from ckpt.domain.checkpoint_rules import MAX_CHECKPOINTS

AT = datetime(2026, 11, 26, 14, 5, 9, tzinfo=UTC)
STANDARD, PRODUCTION = CheckpointType.STANDARD, CheckpointType.PRODUCTION
PRODUCTION_ONLY = CheckpointType.PRODUCTION_ONLY


def origin() -> Origin:
    return Origin("tester", "host1", AT, uuid4())


def new_vm(version: str, ctype: CheckpointType | None = None) -> VirtualMachine:
    vm = VirtualMachine.register(origin(), "VM1", config_version=version, checkpoint_type=ctype)
    vm.collect_events()
    return vm


def created(vm: VirtualMachine) -> VirtualMachine.CheckpointCreated:
    (event,) = [e for e in vm.collect_events() if isinstance(e, VirtualMachine.CheckpointCreated)]
    return event


def kinds(vm: VirtualMachine, cp_id: object) -> list[StateFileKind]:
    return [f.kind for f in vm.checkpoints[cp_id].state_files]  # type: ignore[index]


# ======================================= production needs configuration 6.2+
@pytest.mark.parametrize(
    ("version", "expected"), [("5.0", STANDARD), ("6.2", PRODUCTION), ("10.0", PRODUCTION)]
)
def test_a_new_vm_defaults_to_production_except_on_5_0_which_has_none(
    version: str, expected: CheckpointType
) -> None:
    assert new_vm(version).checkpoint_type is expected


def test_production_only_is_refused_when_a_5_0_vm_is_registered() -> None:
    with pytest.raises(NotAllowed, match=r"configuration version 5\.0.*need 6\.2 or later"):
        VirtualMachine.register(
            origin(), "VM1", config_version="5.0", checkpoint_type=PRODUCTION_ONLY
        )


def test_production_only_is_refused_by_vm_set_on_5_0_unless_it_upgrades_in_the_same_step() -> None:
    vm = new_vm("5.0")
    with pytest.raises(NotAllowed, match=r"5\.0.*6\.2"):
        vm.change_settings(origin(), checkpoint_type=PRODUCTION_ONLY)
    assert vm.checkpoint_type is STANDARD and not vm.collect_events()
    vm.change_settings(origin(), checkpoint_type=PRODUCTION_ONLY, config_version="9.0")
    assert (vm.checkpoint_type, vm.config_version) == (PRODUCTION_ONLY, "9.0")


@pytest.mark.parametrize("state", [VMState.OFF, VMState.RUNNING])
def test_a_5_0_vm_set_to_production_takes_standard_recorded_as_a_fallback(state: VMState) -> None:
    """Off or running, the checkpoint is standard; the event keeps what was asked and why."""
    vm = new_vm("5.0", PRODUCTION)
    if state is VMState.RUNNING:
        vm.start(origin())
    vm.collect_events()
    cp = vm.create_checkpoint(origin(), "cp")
    event = created(vm)
    assert cp.type is STANDARD
    assert (event.requested_type, event.fell_back) == (PRODUCTION, True)
    assert event.fallback_reason == "configuration 5.0 has no production checkpoints"
    memory = state is VMState.RUNNING
    assert cp.has_memory is memory
    assert kinds(vm, cp.id) == (
        [StateFileKind.XML, StateFileKind.VSV, StateFileKind.BIN] if memory else [StateFileKind.XML]
    )


def test_a_5_0_vm_refuses_type_production_only_at_checkpoint_time_and_before_capture() -> None:
    vm = new_vm("5.0")
    with pytest.raises(NotAllowed, match=r"configuration version 5\.0.*6\.2 or later"):
        vm.plan_checkpoint(PRODUCTION_ONLY, True)
    with pytest.raises(NotAllowed, match=r"5\.0.*production-only"):
        vm.create_checkpoint(origin(), "cp", PRODUCTION_ONLY)
    assert not vm.checkpoints and not vm.collect_events()


def test_type_production_on_a_5_0_vm_falls_back_to_standard() -> None:
    vm = new_vm("5.0")
    assert vm.plan_checkpoint(PRODUCTION, True) == (STANDARD, False)
    assert vm.create_checkpoint(origin(), "cp", PRODUCTION).type is STANDARD
    assert created(vm).fallback_reason == "configuration 5.0 has no production checkpoints"


def test_a_true_production_checkpoint_records_no_fallback_reason() -> None:
    vm = new_vm("9.0")
    vm.start(origin())
    vm.collect_events()
    assert vm.create_checkpoint(origin(), "cp").type is PRODUCTION
    event = created(vm)
    assert (event.fell_back, event.fallback_reason) == (False, "")


def test_a_guest_that_cannot_quiesce_is_the_recorded_reason_on_9_0() -> None:
    vm = new_vm("9.0")
    vm.start(origin())
    vm.collect_events()
    vm.create_checkpoint(origin(), "cp", guest_can_quiesce=False)
    assert created(vm).fallback_reason == "the guest could not quiesce"


# ================================= --type stays within the VM's setting
def test_type_standard_on_a_production_only_vm_is_refused_saying_why() -> None:
    vm = new_vm("9.0", PRODUCTION_ONLY)
    with pytest.raises(NotAllowed, match=r"production-only.*never gets a standard checkpoint"):
        vm.create_checkpoint(origin(), "cp", STANDARD)
    with pytest.raises(NotAllowed, match="never gets a standard checkpoint"):
        vm.plan_checkpoint(STANDARD, True)
    assert not vm.checkpoints and not vm.collect_events()


def test_type_production_on_a_production_only_vm_never_falls_back() -> None:
    vm = new_vm("9.0", PRODUCTION_ONLY)
    vm.start(origin())
    with pytest.raises(NotAllowed, match="production-only"):
        vm.create_checkpoint(origin(), "no", PRODUCTION, guest_can_quiesce=False)
    vm.collect_events()
    cp = vm.create_checkpoint(origin(), "yes", PRODUCTION)
    assert cp.type is PRODUCTION
    assert created(vm).requested_type is PRODUCTION_ONLY


@pytest.mark.parametrize(
    ("setting", "override", "expected"),
    [
        (STANDARD, PRODUCTION, PRODUCTION),
        (STANDARD, PRODUCTION_ONLY, PRODUCTION),
        (PRODUCTION, STANDARD, STANDARD),
        (PRODUCTION, PRODUCTION_ONLY, PRODUCTION),
        (PRODUCTION_ONLY, PRODUCTION_ONLY, PRODUCTION),
    ],
)
def test_type_overrides_that_the_setting_allows_are_taken(
    setting: CheckpointType, override: CheckpointType, expected: CheckpointType
) -> None:
    vm = new_vm("9.0", setting)
    assert vm.create_checkpoint(origin(), "cp", override).type is expected
    event = created(vm)
    assert event.fell_back is False


def test_type_disabled_is_invalid_and_a_disabled_vm_refuses_every_type() -> None:
    with pytest.raises(InvalidValue):
        new_vm("9.0").create_checkpoint(origin(), "cp", CheckpointType.DISABLED)
    vm = new_vm("9.0", CheckpointType.DISABLED)
    for override in (None, STANDARD, PRODUCTION, PRODUCTION_ONLY):
        with pytest.raises(NotAllowed, match="disabled"):
            vm.create_checkpoint(origin(), "cp", override)


# ========================================== at most 50 checkpoints per VM
def test_the_51st_checkpoint_is_refused_naming_the_limit_and_its_source() -> None:
    vm = new_vm("9.0", STANDARD)
    ids = [vm.create_checkpoint(origin(), f"c{i}").id for i in range(MAX_CHECKPOINTS)]
    vm.collect_events()
    assert MAX_CHECKPOINTS == 50 and len(vm.checkpoints) == 50
    message = r"has 50 checkpoints, Hyper-V's limit of 50 per VM \(\"Plan for Hyper-V scalability"
    with pytest.raises(NotAllowed, match=message):
        vm.create_checkpoint(origin(), "c50")
    with pytest.raises(NotAllowed, match=message):
        vm.plan_checkpoint(None, True)  # refused before any content is captured
    assert not vm.collect_events()
    vm.delete_checkpoint(origin(), ids[10])  # live checkpoints count, deleted ones not
    assert vm.create_checkpoint(origin(), "c50").name == "c50"
    assert len(vm.checkpoints) == 50


# ============================== configuration upgrade and existing checkpoints
def test_upgrade_is_refused_while_a_checkpoint_holds_saved_state() -> None:
    """Hyper-V upgrades only with no checkpoint with saved state (memory)."""
    vm = new_vm("5.0")
    vm.create_checkpoint(origin(), "off")
    vm.start(origin())
    saved = vm.create_checkpoint(origin(), "with memory")
    vm.stop(origin())
    vm.collect_events()
    with pytest.raises(NotAllowed, match=r"1 checkpoint\(s\) with saved state.*'with memory'"):
        vm.change_settings(origin(), config_version="9.0")
    assert vm.config_version == "5.0" and not vm.collect_events()
    vm.delete_checkpoint(origin(), saved.id)
    vm.change_settings(origin(), config_version="9.0")
    assert vm.config_version == "9.0"


def test_after_an_upgrade_old_checkpoints_keep_their_files_and_new_ones_use_vmcx() -> None:
    vm = new_vm("5.0", PRODUCTION)
    old = vm.create_checkpoint(origin(), "old")
    vm.change_settings(origin(), config_version="9.0")
    vm.start(origin())
    new = vm.create_checkpoint(origin(), "new")
    assert vm.checkpoints[old.id].config_version == "5.0"
    assert kinds(vm, old.id) == [StateFileKind.XML]
    assert (new.config_version, new.type) == ("9.0", PRODUCTION)  # production works now
    assert kinds(vm, new.id) == [StateFileKind.VMCX, StateFileKind.VMRS]
