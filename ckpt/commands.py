"""Commands on VMs and checkpoints that record metadata only (no content).

Terms: a *command* names its VM; ``run`` loads it fresh, lets the domain
decide (``act``), and saves, retried on fresh state when another writer
changed the VM first (``UnitOfWork.retry``). Registering a VM is the one
command without a VM to load: ``new_vm`` builds it in memory (refusing a
name a live VM has; a removed VM's name gets the next generation) and
``save_new_vm`` records all its events at once, or none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar
from uuid import UUID

from ckpt.domain import (
    AlreadyExists,
    Checkpoint,
    CheckpointType,
    DiskFormat,
    Origin,
    StoreBusy,
    StoreConflict,
    UnknownVM,
    VirtualMachine,
)
from ckpt.projections import describe_changes

from . import queries
from .retention_ops import purged_error
from .unit_of_work import UnitOfWork

T = TypeVar("T")
Act = Callable[[VirtualMachine, Origin], T]


def run(uow: UnitOfWork, name: str | UUID, act: Act[T]) -> T:
    """Run ``act`` on VM ``name`` as it is now and save; retried on a conflict."""
    return uow.retry(lambda: queries.vm(uow, name), act)


def new_vm(
    uow: UnitOfWork,
    name: str,
    disks: Sequence[tuple[str, DiskFormat]] = (),
    config_version: str | None = None,
    checkpoint_type: CheckpointType | None = None,
    automatic_checkpoints: bool = False,
) -> VirtualMachine:
    """A VM registered in memory, not saved yet (``save_new_vm``); ``checkpoint_type``
    None is production, standard on 5.0 (``VirtualMachine.register``)."""
    with uow.translated():
        generation, live = queries.generations(uow, name)
    if live is not None:
        raise AlreadyExists(f"a VM named {live.name!r} already exists")
    return VirtualMachine.register(
        uow.origin(), name, disks, config_version, checkpoint_type, automatic_checkpoints,
        generation,
    )  # fmt: skip


def save_new_vm(uow: UnitOfWork, vm: VirtualMachine) -> VirtualMachine:
    """Save a VM made by ``new_vm`` with all its pending events, atomically."""
    try:
        with uow.translated():
            uow.app.save(vm)
    except StoreBusy:
        raise
    except StoreConflict:
        raise AlreadyExists(
            f"a VM named {_existing_name(uow, vm.id) or vm.name!r} already exists"
        ) from None
    uow.after_save(vm)
    return vm


def _existing_name(uow: UnitOfWork, vid: UUID) -> str | None:
    try:
        return uow.app.get_vm(vid).name
    except UnknownVM:
        return None


def on_vm(change: Callable[[VirtualMachine, Origin], None]) -> Act[VirtualMachine]:
    """An ``act`` that applies ``change`` and returns the VM."""

    def act(vm: VirtualMachine, origin: Origin) -> VirtualMachine:
        change(vm, origin)
        return vm

    return act


def set_vm(
    uow: UnitOfWork,
    name: str,
    checkpoint_type: CheckpointType | None,
    automatic_checkpoints: bool | None,
    config_version: str | None,
) -> VirtualMachine:
    def change(vm: VirtualMachine, origin: Origin) -> None:
        vm.change_settings(origin, checkpoint_type, automatic_checkpoints, config_version)

    return run(uow, name, on_vm(change))


def stop_vm(uow: UnitOfWork, name: str, turn_off: bool) -> VirtualMachine:
    """Stop-VM: Shut Down, or with ``turn_off`` Turn Off (the automatic checkpoint stays)."""

    def change(vm: VirtualMachine, origin: Origin) -> None:
        vm.stop(origin, turn_off)

    return run(uow, name, on_vm(change))


def create_checkpoint(
    uow: UnitOfWork,
    vm: str,
    name: str | None,
    checkpoint_type: CheckpointType | None,
    guest_can_quiesce: bool,
) -> Checkpoint:
    """Checkpoint-VM without content."""
    return run(
        uow, vm, lambda v, o: v.create_checkpoint(o, name, checkpoint_type, guest_can_quiesce)
    )


def apply_checkpoint(uow: UnitOfWork, vm: str, checkpoint: str | UUID) -> Checkpoint:
    def act(v: VirtualMachine, o: Origin) -> Checkpoint:
        cp = v.find_checkpoint(checkpoint)
        if cp.id in v.purged:
            # Now would run on content gc deletes (or has deleted): every later read fails.
            refused = purged_error(uow, v, cp.id, f"checkpoint {cp.name!r}")
            assert refused is not None
            raise refused
        v.apply_checkpoint(o, cp.id)
        return cp

    return run(uow, vm, act)


def revert(uow: UnitOfWork, vm: str) -> Checkpoint:
    def act(v: VirtualMachine, o: Origin) -> Checkpoint:
        v.revert(o)
        assert v.current is not None
        return v.checkpoints[v.current]

    return run(uow, vm, act)


def rename_checkpoint(
    uow: UnitOfWork, vm: str, checkpoint: str | UUID, new_name: str
) -> Checkpoint:
    def act(v: VirtualMachine, o: Origin) -> Checkpoint:
        cp = v.find_checkpoint(checkpoint)
        v.rename_checkpoint(o, cp.id, new_name)
        return v.checkpoints[cp.id]

    return run(uow, vm, act)


def delete_checkpoint(
    uow: UnitOfWork, vm: str, checkpoint: str | UUID, subtree: bool = False
) -> list[str]:
    """Delete; return what happened to the layer files, one line each."""

    def act(v: VirtualMachine, o: Origin) -> list[str]:
        cp = v.find_checkpoint(checkpoint)
        v.delete_checkpoint(o, cp.id, subtree)
        event = v.pending_events[-1]
        assert isinstance(event, VirtualMachine.CheckpointDeleted)
        return describe_changes(event.changes)

    return run(uow, vm, act)


def record_export(
    uow: UnitOfWork, vm: str | UUID, checkpoint_id: UUID | None, destination: str
) -> None:
    """Record that a checkpoint (or Now, ``checkpoint_id`` None) was exported."""

    def change(v: VirtualMachine, o: Origin) -> None:
        v.export_checkpoint(o, checkpoint_id, destination)

    run(uow, vm, on_vm(change))
