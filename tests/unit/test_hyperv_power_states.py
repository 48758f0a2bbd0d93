"""Issue 17's power states on the pure aggregate: Paused (Suspend-VM / Resume-VM) and
Turn Off (hard) as distinct from Shut Down (clean); and that events recorded before
these existed still load (docs/decisions/0001)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest

from ckpt.domain import (
    VALUE_TYPES,
    CheckpointType,
    NotAllowed,
    Origin,
    StateFileKind,
    VirtualMachine,
    VMState,
)
from ckpt.storage import MsgPackTranscoder

AT = datetime(2026, 11, 26, 14, 5, 9, tzinfo=UTC)


def origin() -> Origin:
    return Origin("tester", "host1", AT, uuid4())


def new_vm(
    ctype: CheckpointType = CheckpointType.PRODUCTION, automatic: bool = False
) -> VirtualMachine:
    vm = VirtualMachine.register(
        origin(),
        "VM1",
        config_version="9.0",
        checkpoint_type=ctype,
        automatic_checkpoints=automatic,
    )
    vm.collect_events()
    return vm


def in_state(state: VMState, ctype: CheckpointType = CheckpointType.PRODUCTION) -> VirtualMachine:
    vm = new_vm(ctype)
    if state is not VMState.OFF:
        vm.start(origin())
    if state is VMState.SAVED:
        vm.save(origin())
    if state is VMState.PAUSED:
        vm.pause(origin())
    vm.collect_events()
    return vm


def state_events(vm: VirtualMachine) -> list[tuple[VMState, VMState, bool]]:
    return [
        (e.previous, e.state, e.turned_off)
        for e in vm.collect_events()
        if isinstance(e, VirtualMachine.StateChanged)
    ]


Command = Callable[[VirtualMachine], None]
COMMANDS: dict[str, Command] = {
    "start": lambda vm: vm.start(origin()),
    "shut down": lambda vm: vm.stop(origin()),
    "turn off": lambda vm: vm.stop(origin(), turn_off=True),
    "save": lambda vm: vm.save(origin()),
    "pause": lambda vm: vm.pause(origin()),
    "resume": lambda vm: vm.resume(origin()),
}
OFF, RUNNING, SAVED, PAUSED = VMState.OFF, VMState.RUNNING, VMState.SAVED, VMState.PAUSED
# (command, state before) -> state after; a pair not listed is NotAllowed.
ALLOWED = {
    ("start", OFF): RUNNING,
    ("start", SAVED): RUNNING,
    ("shut down", RUNNING): OFF,
    ("shut down", SAVED): OFF,  # discards the saved state, as before issue 17
    ("turn off", RUNNING): OFF,
    ("turn off", SAVED): OFF,
    ("turn off", PAUSED): OFF,
    ("save", RUNNING): SAVED,
    ("save", PAUSED): SAVED,
    ("pause", RUNNING): PAUSED,
    ("resume", PAUSED): RUNNING,
}


@pytest.mark.parametrize("state", list(VMState))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_power_state_transitions(command: str, state: VMState) -> None:
    vm = in_state(state)
    after = ALLOWED.get((command, state))
    if after is None:
        with pytest.raises(NotAllowed, match="VM 'VM1' is"):
            COMMANDS[command](vm)
        assert vm.state is state and not vm.collect_events()
        return
    COMMANDS[command](vm)
    assert vm.state is after
    assert state_events(vm) == [(state, after, command == "turn off")]


def test_a_paused_vm_is_resumed_not_started() -> None:
    with pytest.raises(NotAllowed, match=r"paused; resume it \(ckpt vm resume\)"):
        in_state(PAUSED).start(origin())


def test_a_paused_vm_cannot_shut_down_cleanly_and_is_told_its_two_ways_out() -> None:
    with pytest.raises(NotAllowed, match=r"cannot shut down cleanly.*vm resume.*--turn-off"):
        in_state(PAUSED).stop(origin())


def test_turn_off_keeps_the_automatic_checkpoint_and_shut_down_removes_it() -> None:
    vm = new_vm(automatic=True)
    vm.start(origin())
    (auto,) = vm.checkpoints
    vm.stop(origin(), turn_off=True)
    assert list(vm.checkpoints) == [auto] and vm.automatic_checkpoint == auto
    vm.start(origin())  # it has a checkpoint: no second automatic one
    vm.stop(origin())
    assert not vm.checkpoints and vm.automatic_checkpoint is None
    deleted = [e for e in vm.collect_events() if isinstance(e, VirtualMachine.CheckpointDeleted)]
    assert [e.reason for e in deleted] == ["clean-shutdown"]


def test_turning_off_a_paused_vm_keeps_the_automatic_checkpoint() -> None:
    vm = new_vm(automatic=True)
    vm.start(origin())
    vm.pause(origin())
    vm.stop(origin(), turn_off=True)
    assert vm.state is OFF and len(vm.checkpoints) == 1


def test_a_checkpoint_of_a_paused_vm_is_standard_with_memory() -> None:
    """A paused guest runs no code, so it cannot quiesce: production falls back."""
    vm = in_state(PAUSED)
    cp = vm.create_checkpoint(origin(), "paused")
    (event,) = [e for e in vm.collect_events() if isinstance(e, VirtualMachine.CheckpointCreated)]
    assert (cp.type, cp.vm_state, cp.has_memory) == (CheckpointType.STANDARD, PAUSED, True)
    assert [(f.kind, f.memory) for f in cp.state_files] == [
        (StateFileKind.VMCX, False),
        (StateFileKind.VMRS, True),
    ]
    assert event.fallback_reason == "the VM is paused, so its guest cannot quiesce"
    assert vm.state is PAUSED  # taking a checkpoint does not change the power state


def test_production_only_fails_on_a_paused_vm() -> None:
    vm = in_state(PAUSED, CheckpointType.PRODUCTION_ONLY)
    with pytest.raises(NotAllowed, match=r"the VM is paused.*production-only"):
        vm.create_checkpoint(origin(), "no")
    assert not vm.checkpoints


def test_applying_a_checkpoint_taken_while_paused_leaves_the_vm_saved() -> None:
    vm = in_state(PAUSED)
    cp = vm.create_checkpoint(origin(), "paused")
    vm.resume(origin())
    vm.stop(origin())
    vm.apply_checkpoint(origin(), cp.id)
    assert vm.state is SAVED


@pytest.mark.parametrize("state", [PAUSED, SAVED, RUNNING])
def test_a_configuration_upgrade_or_a_removal_needs_the_vm_off(state: VMState) -> None:
    vm = in_state(state)
    with pytest.raises(NotAllowed):
        vm.change_settings(origin(), config_version="10.0")
    with pytest.raises(NotAllowed):
        vm.remove(origin())


def _reload(event: Any, drop: str) -> Any:
    """The event as a release before issue 17 stored it: without field ``drop``."""
    codec = MsgPackTranscoder(VALUE_TYPES)
    state = codec.decode(codec.encode(dict(vars(event))))
    del state[drop]
    copy = object.__new__(type(event))
    object.__setattr__(copy, "__dict__", state)
    return copy


def test_events_stored_before_the_new_fields_existed_still_replay() -> None:
    vm = VirtualMachine.register(origin(), "VM1", config_version="9.0")
    vm.start(origin())
    vm.create_checkpoint(origin(), "cp", guest_can_quiesce=False)
    vm.stop(origin())
    old = []
    for event in vm.collect_events():
        if isinstance(event, VirtualMachine.StateChanged):
            event = _reload(event, "turned_off")
        elif isinstance(event, VirtualMachine.CheckpointCreated):
            event = _reload(event, "fallback_reason")
        old.append(event)
    replayed: Any = None
    for event in old:
        replayed = event.mutate(replayed)
    assert replayed.state is OFF and replayed.checkpoints == vm.checkpoints
    assert [getattr(e, "turned_off", None) for e in old if hasattr(e, "previous")] == [
        False,
        False,
    ]
    (cc,) = [e for e in old if isinstance(e, VirtualMachine.CheckpointCreated)]
    assert "fallback_reason" not in vars(cc) and cc.fallback_reason == ""
