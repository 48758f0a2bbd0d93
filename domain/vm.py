"""The ``VirtualMachine`` aggregate: a VM's settings, state, disks and checkpoint tree.

Commands (public methods) check Hyper-V's rules and either raise a
``DomainError`` or trigger explicit, past-tense events. Events carry the facts
the command decided (which layer merged into which, which files were
deleted), so replaying them never re-runs a rule: a rule changed later cannot
change the past.

"Now" is the VM's running state; ``current`` is the checkpoint it descends from
(None when it descends from no live checkpoint). Every event class has an
explicit, versioned topic so moving this code never orphans stored events.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from . import checkpoint_rules as type_rules
from . import layers as layer_rules
from .captures import BackupPoint, DiskCapture, FileCapture, FileRole, PurgeMark
from .errors import (
    CaptureOutdated,
    InvalidValue,
    NotAllowed,
    UnknownCheckpoint,
)
from .naming import (
    Candidate,
    base_file_name,
    check_disk_name,
    check_findable_name,
    default_backup_point_name,
    default_checkpoint_name,
    differencing_file_name,
    disk_name_problem,
    find_named,
)
from .state_files import (
    DEFAULT_VERSION,
    check_file_role,
    check_upgrade,
    parse_version,
    state_files,
)
from .values import (
    Checkpoint,
    CheckpointType,
    Disk,
    DiskFormat,
    Layer,
    LayerMerge,
    LayerRemoval,
    Origin,
    StateFileKind,
    VMState,
)

VM_NAMESPACE = uuid5(NAMESPACE_URL, "https://ckpt.invalid/vm")


def vm_id(name: str, generation: int = 0) -> UUID:
    """A VM's id follows from its name (case-insensitive), so a name maps to one live VM.

    ``generation`` counts the VMs of that name removed before (``ckpt vm remove``):
    a name registered again is a new aggregate with a new id, and the removed
    one keeps its history under its own id. Generation 0 is the plain name, the
    id every VM had before removal existed.
    """
    key = name.casefold()
    return uuid5(VM_NAMESPACE, key if generation == 0 else f"{key}\x00{generation}")


def _derived_id(origin: Origin, label: str) -> UUID:
    return uuid5(origin.nonce, label)


def _new_layer(origin: Origin, label: str, disk: Disk, parent: UUID) -> Layer:
    """A differencing layer ``<disk>_<GUID>.avhdx`` whose GUID is its id."""
    lid = _derived_id(origin, f"{label}:{disk.name}")
    return Layer(lid, disk.name, differencing_file_name(disk.name, disk.format, lid), parent)


class VirtualMachine(Aggregate):
    TOPIC = "ckpt.domain:VirtualMachine"

    name: str
    config_version: str
    checkpoint_type: CheckpointType
    automatic_checkpoints: bool
    state: VMState
    disks: tuple[Disk, ...]
    layers: dict[UUID, Layer]
    running: dict[str, UUID]
    checkpoints: dict[UUID, Checkpoint]
    current: UUID | None
    automatic_checkpoint: UUID | None
    contents: dict[UUID, tuple[bytes, ...]]
    captured_files: dict[UUID, tuple[FileCapture, ...]]
    backup_points: dict[UUID, BackupPoint]
    # Set by Removed; a class default so snapshots taken before it existed still load.
    removed: bool = False
    # Set by the retention events (domain/purges.py); class defaults, as ``removed``:
    # why each purged point's content is purged; the purge versions gc reclaimed;
    # the stored policy ("" none). Tuples: a dataclass default must be immutable.
    purge_marks: tuple[PurgeMark, ...] = ()
    reclaimed: tuple[int, ...] = ()
    retention: str = ""
    # Set by HyperVFolderImported (domain/imports.py): the VM's id in Hyper-V, "" if none.
    hyperv_id: str = ""

    @property
    def purged(self) -> dict[UUID, PurgeMark]:
        return {m.point: m for m in self.purge_marks}

    def __init__(self) -> None:
        # State is set by Registered.apply; no constructor arguments, so the
        # library does not turn the annotations above into __init__ parameters.
        pass

    # ----------------------------------------------------------------- events
    class Event(Aggregate.Event):
        TOPIC = "ckpt.domain:VirtualMachine.Event"
        actor: str
        host: str

    class Registered(Aggregate.Created):
        TOPIC = "ckpt.domain:VirtualMachine.Registered"
        actor: str
        host: str
        name: str
        config_version: str
        checkpoint_type: CheckpointType
        automatic_checkpoints: bool
        disks: tuple[Disk, ...]
        base_layers: tuple[Layer, ...]

        def apply(self, vm: VirtualMachine) -> None:
            vm.name = self.name
            vm.config_version = self.config_version
            vm.checkpoint_type = self.checkpoint_type
            vm.automatic_checkpoints = self.automatic_checkpoints
            vm.state = VMState.OFF
            vm.disks = tuple(self.disks)
            vm.layers = {layer.id: layer for layer in self.base_layers}
            vm.running = {layer.disk: layer.id for layer in self.base_layers}
            vm.checkpoints = {}
            vm.current = None
            vm.automatic_checkpoint = None
            vm.contents = {}
            vm.captured_files = {}
            vm.backup_points = {}

    class SettingsChanged(Event):
        TOPIC = "ckpt.domain:VirtualMachine.SettingsChanged"
        checkpoint_type: CheckpointType | None
        automatic_checkpoints: bool | None
        config_version: str | None

        def apply(self, vm: VirtualMachine) -> None:
            if self.checkpoint_type is not None:
                vm.checkpoint_type = self.checkpoint_type
            if self.automatic_checkpoints is not None:
                vm.automatic_checkpoints = self.automatic_checkpoints
            if self.config_version is not None:
                vm.config_version = self.config_version

    class StateChanged(Event):
        """A power-state change; ``turned_off`` marks Turn Off (Stop-VM -TurnOff), hard,
        as opposed to Shut Down (default False: every event before it existed)."""

        TOPIC = "ckpt.domain:VirtualMachine.StateChanged"
        previous: VMState
        state: VMState
        turned_off: bool = False

        def apply(self, vm: VirtualMachine) -> None:
            vm.state = self.state

    class CheckpointCreated(Event):
        """``fallback_reason`` says why a production request became standard ("" when
        it did not, and in every event before it existed)."""

        TOPIC = "ckpt.domain:VirtualMachine.CheckpointCreated"
        checkpoint: Checkpoint
        requested_type: CheckpointType
        fell_back: bool
        new_layers: tuple[Layer, ...]
        fallback_reason: str = ""

        def apply(self, vm: VirtualMachine) -> None:
            vm.checkpoints[self.checkpoint.id] = self.checkpoint
            for layer in self.new_layers:
                vm.layers[layer.id] = layer
                vm.running[layer.disk] = layer.id
            vm.current = self.checkpoint.id
            if self.checkpoint.automatic:
                vm.automatic_checkpoint = self.checkpoint.id

    class CheckpointApplied(Event):
        TOPIC = "ckpt.domain:VirtualMachine.CheckpointApplied"
        checkpoint_id: UUID
        name: str
        new_layers: tuple[Layer, ...]
        changes: tuple[LayerMerge | LayerRemoval, ...]
        previous: VMState
        state: VMState

        def apply(self, vm: VirtualMachine) -> None:
            for layer in self.new_layers:
                vm.layers[layer.id] = layer
                vm.running[layer.disk] = layer.id
            vm._replay_changes(self.changes)
            vm.current = self.checkpoint_id
            vm.state = self.state

    class CheckpointReverted(CheckpointApplied):
        TOPIC = "ckpt.domain:VirtualMachine.CheckpointReverted"

    class CheckpointRenamed(Event):
        TOPIC = "ckpt.domain:VirtualMachine.CheckpointRenamed"
        checkpoint_id: UUID
        old_name: str
        new_name: str

        def apply(self, vm: VirtualMachine) -> None:
            vm.checkpoints[self.checkpoint_id] = replace(
                vm.checkpoints[self.checkpoint_id], name=self.new_name
            )

    class CheckpointDeleted(Event):
        """One checkpoint (or, with ``subtree``, it and all its descendants) deleted.

        ``dependants`` counts the root's child checkpoints plus Now if it
        descended from it; ``changes`` are the merges and file deletions that
        followed; ``reason`` is "user" or "clean-shutdown" (automatic checkpoints).
        """

        TOPIC = "ckpt.domain:VirtualMachine.CheckpointDeleted"
        checkpoint_id: UUID
        name: str
        subtree: bool
        deleted: tuple[UUID, ...]
        dependants: int
        changes: tuple[LayerMerge | LayerRemoval, ...]
        reason: str

        def apply(self, vm: VirtualMachine) -> None:
            gone = set(self.deleted)
            root = vm.checkpoints[self.checkpoint_id]
            for cid in self.deleted:
                del vm.checkpoints[cid]
            for cid, cp in list(vm.checkpoints.items()):
                if cp.parent in gone:
                    vm.checkpoints[cid] = replace(cp, parent=root.parent)
            if vm.current in gone:
                vm.current = root.parent
            if vm.automatic_checkpoint in gone:
                vm.automatic_checkpoint = None
            for cid in self.deleted:
                vm.captured_files.pop(cid, None)
            vm._replay_changes(self.changes)

    class CheckpointExported(Event):
        """A checkpoint (or Now, ``checkpoint_id`` None) written out as a Hyper-V folder."""

        TOPIC = "ckpt.domain:VirtualMachine.CheckpointExported"
        checkpoint_id: UUID | None
        name: str
        destination: str

        def apply(self, vm: VirtualMachine) -> None:
            pass

    class LayerContentRecorded(Event):
        """A disk's running layer content, captured (at a checkpoint or a backup point)."""

        TOPIC = "ckpt.domain:VirtualMachine.LayerContentRecorded"
        capture: DiskCapture

        def apply(self, vm: VirtualMachine) -> None:
            layer = self.capture.layer
            vm.contents[layer] = (*vm.contents.get(layer, ()), self.capture.manifest)

    class StateContentRecorded(Event):
        TOPIC = "ckpt.domain:VirtualMachine.StateContentRecorded"
        checkpoint_id: UUID
        files: tuple[FileCapture, ...]

        def apply(self, vm: VirtualMachine) -> None:
            vm.captured_files[self.checkpoint_id] = self.files

    class BackupPointRecorded(Event):
        TOPIC = "ckpt.domain:VirtualMachine.BackupPointRecorded"
        point: BackupPoint

        def apply(self, vm: VirtualMachine) -> None:
            vm.backup_points[self.point.id] = self.point

    class Removed(Event):
        """The VM is no longer registered (``ckpt vm remove``). Its events stay in the
        log (``--at`` before this one still finds it, its content stays restorable);
        its name is free for a new VM, which gets a new id (``vm_id``'s generation).
        ``checkpoints`` counts the live checkpoints it had."""

        TOPIC = "ckpt.domain:VirtualMachine.Removed"
        name: str
        checkpoints: int

        def apply(self, vm: VirtualMachine) -> None:
            vm.removed = True

    # --------------------------------------------------------------- creation
    @classmethod
    def register(
        cls,
        origin: Origin,
        name: str,
        disks: Sequence[tuple[str, DiskFormat]] = (),
        config_version: str | None = None,
        checkpoint_type: CheckpointType | None = None,
        automatic_checkpoints: bool = False,
        generation: int = 0,
    ) -> VirtualMachine:
        """Register a VM; with no disks given it gets one named after the VM.
        ``checkpoint_type`` defaults to production, standard on 5.0 (no production there).
        ``generation``: how many VMs of this name were removed before (``vm_id``)."""
        check_findable_name(name, "VM")
        version = config_version or DEFAULT_VERSION
        parse_version(version)
        checkpoint_type = checkpoint_type or type_rules.default_type(version)
        type_rules.check_setting(name, checkpoint_type, version)
        problem = None if disks else disk_name_problem(name)
        if problem is not None:
            raise InvalidValue(
                f"VM name {name!r} {problem}, and with no disk given a VM gets one disk "
                "named after it: name its disks (--disk NAME)"
            )
        specs = list(disks) or [(name, DiskFormat.VHDX)]
        seen: set[str] = set()
        made: list[Disk] = []
        for disk_name, fmt in specs:
            check_disk_name(disk_name)
            if disk_name.casefold() in seen:
                raise InvalidValue(f"disk {disk_name!r} is given twice")
            seen.add(disk_name.casefold())
            made.append(Disk(disk_name, fmt, base_file_name(disk_name, fmt)))
        base = tuple(
            Layer(_derived_id(origin, f"base:{d.name}"), d.name, d.base_file, None) for d in made
        )
        return cls._create(
            cls.Registered,
            id=vm_id(name, generation),
            actor=origin.actor,
            host=origin.host,
            name=name,
            config_version=version,
            checkpoint_type=checkpoint_type,
            automatic_checkpoints=automatic_checkpoints,
            disks=tuple(made),
            base_layers=base,
        )

    # --------------------------------------------------------------- settings
    def change_settings(
        self,
        origin: Origin,
        checkpoint_type: CheckpointType | None = None,
        automatic_checkpoints: bool | None = None,
        config_version: str | None = None,
    ) -> None:
        if config_version is not None and config_version != self.config_version:
            if parse_version(config_version) < parse_version(self.config_version):
                raise NotAllowed(
                    f"VM {self.name!r} is at configuration version {self.config_version}; "
                    "Hyper-V can only upgrade a configuration version"
                )
            if self.state is not VMState.OFF:
                raise NotAllowed(
                    f"VM {self.name!r} is {self.state.value}; "
                    "its configuration version can only be changed while it is off"
                )
            check_upgrade(self.name, self.checkpoints.values(), config_version)
        else:
            config_version = None
        type_rules.check_setting(
            self.name,
            checkpoint_type or self.checkpoint_type,
            config_version or self.config_version,
        )
        if checkpoint_type == self.checkpoint_type:
            checkpoint_type = None
        if automatic_checkpoints == self.automatic_checkpoints:
            automatic_checkpoints = None
        if checkpoint_type is None and automatic_checkpoints is None and config_version is None:
            return
        self._trigger(
            origin,
            self.SettingsChanged,
            checkpoint_type=checkpoint_type,
            automatic_checkpoints=automatic_checkpoints,
            config_version=config_version,
        )

    # ------------------------------------------------------------ power state
    def start(self, origin: Origin) -> None:
        if self.state is VMState.RUNNING:
            raise NotAllowed(f"VM {self.name!r} is already running")
        if self.state is VMState.PAUSED:
            raise NotAllowed(f"VM {self.name!r} is paused; resume it (ckpt vm resume)")
        if (
            self.state is VMState.OFF
            and self.automatic_checkpoints
            and not self.checkpoints
            and self.checkpoint_type is not CheckpointType.DISABLED
        ):
            self._create_checkpoint(origin, None, None, True, automatic=True)
        self._trigger(origin, self.StateChanged, previous=self.state, state=VMState.RUNNING)

    def stop(self, origin: Origin, turn_off: bool = False) -> None:
        """Stop-VM: Shut Down (clean, through the guest) when running, discarding the
        saved state when saved; ``turn_off`` (Stop-VM -TurnOff) pulls the plug in any
        state. Only a clean shutdown removes the automatic checkpoint."""
        if self.state is VMState.OFF:
            raise NotAllowed(f"VM {self.name!r} is already off")
        if self.state is VMState.PAUSED and not turn_off:
            raise NotAllowed(
                f"VM {self.name!r} is paused: a paused guest cannot shut down cleanly; "
                "resume it first (ckpt vm resume) or turn it off (ckpt vm stop --turn-off)"
            )
        clean_shutdown = self.state is VMState.RUNNING and not turn_off
        self._trigger(
            origin, self.StateChanged, previous=self.state, state=VMState.OFF, turned_off=turn_off
        )
        if clean_shutdown and self.automatic_checkpoint is not None:
            self._delete(
                origin, self.checkpoints[self.automatic_checkpoint], False, "clean-shutdown"
            )

    def save(self, origin: Origin) -> None:
        if self.state not in (VMState.RUNNING, VMState.PAUSED):
            raise NotAllowed(
                f"VM {self.name!r} is {self.state.value}; only a running or paused VM can be saved"
            )
        self._trigger(origin, self.StateChanged, previous=self.state, state=VMState.SAVED)

    def pause(self, origin: Origin) -> None:
        """Suspend-VM: the guest stops running; its memory stays where it is."""
        if self.state is not VMState.RUNNING:
            raise NotAllowed(
                f"VM {self.name!r} is {self.state.value}; only a running VM can be paused"
            )
        self._trigger(origin, self.StateChanged, previous=self.state, state=VMState.PAUSED)

    def resume(self, origin: Origin) -> None:
        """Resume-VM: a paused VM runs again."""
        if self.state is not VMState.PAUSED:
            raise NotAllowed(
                f"VM {self.name!r} is {self.state.value}; only a paused VM can be resumed"
            )
        self._trigger(origin, self.StateChanged, previous=self.state, state=VMState.RUNNING)

    # ------------------------------------------------------------ checkpoints
    def create_checkpoint(
        self,
        origin: Origin,
        name: str | None = None,
        checkpoint_type: CheckpointType | None = None,
        guest_can_quiesce: bool = True,
        disks: Sequence[DiskCapture] = (),
        files: Sequence[FileCapture] = (),
    ) -> Checkpoint:
        """Checkpoint-VM: freeze every disk's running layer and start new ones.

        ``disks`` record the running layers' content just before they freeze;
        ``files`` the checkpoint's state files and memory (paths are set here).
        """
        _, memory = self.plan_checkpoint(checkpoint_type, guest_can_quiesce)
        self._check_captures(disks)
        for role in {f.role for f in files}:
            self.check_file_role(role, memory)
        if len({f.role for f in files}) != len(files):
            raise InvalidValue("a state file role is given twice")
        self._record_captures(origin, disks)
        checkpoint = self._create_checkpoint(
            origin, name, checkpoint_type, guest_can_quiesce, False
        )
        if files:
            self._trigger(
                origin,
                self.StateContentRecorded,
                checkpoint_id=checkpoint.id,
                files=tuple(replace(f, path=self._role_path(checkpoint, f.role)) for f in files),
            )
        return checkpoint

    def plan_checkpoint(
        self, requested: CheckpointType | None, guest_can_quiesce: bool
    ) -> tuple[CheckpointType, bool]:
        """The type a checkpoint would get now, and whether it would hold memory.

        ``requested`` is the override (``--type``), None for the VM's setting.
        Raises as ``create_checkpoint`` would, so a caller can refuse before
        capturing any content.
        """
        effective, _, _ = self._decide_type(requested, guest_can_quiesce)
        return effective, effective is CheckpointType.STANDARD and self.state is not VMState.OFF

    def _decide_type(
        self, override: CheckpointType | None, guest_can_quiesce: bool
    ) -> tuple[CheckpointType, CheckpointType, str]:
        """(effective type, requested type, fallback reason); refuses a checkpoint
        the setting, the configuration version or the 50-per-VM limit forbids."""
        requested = type_rules.requested_type(self.name, self.checkpoint_type, override)
        type_rules.check_limit(self.name, len(self.checkpoints))
        effective, why = type_rules.effective_type(
            self.name, requested, self.config_version, self.state, guest_can_quiesce
        )
        return effective, requested, why

    def sync(self, origin: Origin, name: str | None, disks: Sequence[DiskCapture]) -> BackupPoint:
        """Record the running layers' content at a moment that is not a checkpoint."""
        if not disks:
            raise InvalidValue("a backup point needs the content of at least one disk")
        self._check_captures(disks)
        label = name or default_backup_point_name(self.name, origin.at)
        check_findable_name(label, "backup point")
        self._record_captures(origin, disks)
        point = BackupPoint(_derived_id(origin, "backup-point"), label, origin.at, self.version + 1)
        self._trigger(origin, self.BackupPointRecorded, point=point)
        return point

    def import_disk_content(self, origin: Origin, capture: DiskCapture) -> None:
        """A disk file's content becomes the running layer's content (``ckpt import disk``);
        the next checkpoint freezes it like any other."""
        self._check_captures([capture])
        self._record_captures(origin, [capture])

    def _check_captures(self, disks: Sequence[DiskCapture]) -> None:
        seen: set[str] = set()
        for capture in disks:
            if capture.disk not in self.running:
                known = ", ".join(self.running)
                raise InvalidValue(
                    f"VM {self.name!r} has no disk {capture.disk!r} (disks: {known})"
                )
            if capture.disk in seen:
                raise InvalidValue(f"disk {capture.disk!r} is captured twice")
            seen.add(capture.disk)
            layer = self.running[capture.disk]
            if capture.layer != layer or capture.base != len(self.contents.get(layer, ())):
                raise CaptureOutdated(
                    f"disk {capture.disk!r} of VM {self.name!r} changed while it was captured"
                )

    def _record_captures(self, origin: Origin, disks: Sequence[DiskCapture]) -> None:
        for capture in disks:
            self._trigger(origin, self.LayerContentRecorded, capture=capture)

    def check_file_role(self, role: FileRole, memory: bool) -> None:
        """Refuse a state file this VM's checkpoint cannot have (memory: it will hold memory)."""
        production_only = self.checkpoint_type is CheckpointType.PRODUCTION_ONLY
        check_file_role(self.name, self.config_version, self.state, production_only, role, memory)

    @staticmethod
    def _role_path(checkpoint: Checkpoint, role: FileRole) -> str:
        kinds = {
            FileRole.CONFIG: (StateFileKind.VMCX, StateFileKind.XML),
            FileRole.RUNTIME_STATE: (StateFileKind.VMRS,),
            FileRole.DEVICE_STATE: (StateFileKind.VSV,),
            FileRole.MEMORY: (StateFileKind.BIN,),
        }[role]
        for f in checkpoint.state_files:
            if f.kind in kinds:
                return f.path
        return ""  # 2016+ memory: inside the VMRS on Hyper-V, restored with --memory here

    def _create_checkpoint(
        self,
        origin: Origin,
        name: str | None,
        override: CheckpointType | None,
        guest_can_quiesce: bool,
        automatic: bool,
    ) -> Checkpoint:
        effective, requested, why = self._decide_type(override, guest_can_quiesce)
        if name is None:
            name = default_checkpoint_name(self.name, origin.at, automatic)
        check_findable_name(name, "checkpoint")
        prefix = "automatic-" if automatic else ""
        checkpoint_id = _derived_id(origin, f"{prefix}checkpoint")
        frozen = tuple((d.name, self.running[d.name]) for d in self.disks)
        new_layers = tuple(
            _new_layer(origin, f"{prefix}layer", d, self.running[d.name]) for d in self.disks
        )
        memory = effective is CheckpointType.STANDARD and self.state is not VMState.OFF
        checkpoint = Checkpoint(
            id=checkpoint_id,
            name=name,
            parent=self.current,
            created_at=origin.at,
            type=effective,
            vm_state=self.state,
            config_version=self.config_version,
            layers=frozen,
            state_files=state_files(checkpoint_id, self.config_version, memory),
            automatic=automatic,
        )
        self._trigger(
            origin,
            self.CheckpointCreated,
            checkpoint=checkpoint,
            requested_type=requested,
            fell_back=bool(why),
            new_layers=new_layers,
            fallback_reason=why,
        )
        return checkpoint

    def apply_checkpoint(self, origin: Origin, checkpoint_id: UUID) -> None:
        """Restore-VMSnapshot: Now restarts from the checkpoint on new layers."""
        self._apply(origin, self.checkpoint(checkpoint_id), self.CheckpointApplied)

    def revert(self, origin: Origin) -> None:
        """Apply the current checkpoint (the one Now descends from)."""
        if self.current is None:
            raise NotAllowed(f"VM {self.name!r} has no current checkpoint to revert to")
        self._apply(origin, self.checkpoints[self.current], self.CheckpointReverted)

    def _apply(self, origin: Origin, target: Checkpoint, event: type[CheckpointApplied]) -> None:
        new_layers = tuple(
            _new_layer(origin, "apply-layer", d, target.layer(d.name)) for d in self.disks
        )
        layers = dict(self.layers) | {layer.id: layer for layer in new_layers}
        pinned = self._checkpoint_layers(self.checkpoints.values()) | {
            layer.id for layer in new_layers
        }
        state = VMState.SAVED if target.has_memory else VMState.OFF
        self._trigger(
            origin,
            event,
            checkpoint_id=target.id,
            name=target.name,
            new_layers=new_layers,
            changes=layer_rules.collapse(layers, pinned),
            previous=self.state,
            state=state,
        )

    def rename_checkpoint(self, origin: Origin, checkpoint_id: UUID, new_name: str) -> None:
        checkpoint = self.checkpoint(checkpoint_id)
        check_findable_name(new_name, "checkpoint")
        self._trigger(
            origin,
            self.CheckpointRenamed,
            checkpoint_id=checkpoint.id,
            old_name=checkpoint.name,
            new_name=new_name,
        )

    def delete_checkpoint(self, origin: Origin, checkpoint_id: UUID, subtree: bool = False) -> None:
        """Remove-VMSnapshot [-IncludeAllChildSnapshots]."""
        self._delete(origin, self.checkpoint(checkpoint_id), subtree, "user")

    def _delete(self, origin: Origin, root: Checkpoint, subtree: bool, reason: str) -> None:
        deleted = self.descendants(root.id) if subtree else [root.id]
        gone = set(deleted)
        dependants = len(self.children(root.id)) + (1 if self.current == root.id else 0)
        survivors = [cp for cid, cp in self.checkpoints.items() if cid not in gone]
        pinned = self._checkpoint_layers(survivors) | set(self.running.values())
        self._trigger(
            origin,
            self.CheckpointDeleted,
            checkpoint_id=root.id,
            name=root.name,
            subtree=subtree,
            deleted=tuple(deleted),
            dependants=dependants,
            changes=layer_rules.collapse(self.layers, pinned),
            reason=reason,
        )

    def export_checkpoint(
        self, origin: Origin, checkpoint_id: UUID | None, destination: str
    ) -> None:
        """Record Export-VMSnapshot of a checkpoint, or of Now when ``checkpoint_id`` is None."""
        name = "Now" if checkpoint_id is None else self.checkpoint(checkpoint_id).name
        self._trigger(
            origin,
            self.CheckpointExported,
            checkpoint_id=checkpoint_id,
            name=name,
            destination=destination,
        )

    def remove(self, origin: Origin) -> None:
        """Remove-VM: the VM leaves the live state; its history and content stay."""
        if self.state is not VMState.OFF:
            raise NotAllowed(
                f"VM {self.name!r} is {self.state.value}; turn it off first (ckpt vm stop)"
            )
        self._trigger(origin, self.Removed, name=self.name, checkpoints=len(self.checkpoints))

    # ---------------------------------------------------------------- queries
    def checkpoint(self, checkpoint_id: UUID) -> Checkpoint:
        try:
            return self.checkpoints[checkpoint_id]
        except KeyError:
            raise UnknownCheckpoint(
                f"VM {self.name!r} has no checkpoint with id {checkpoint_id}"
            ) from None

    def find_checkpoint(self, ref: str | UUID) -> Checkpoint:
        """A checkpoint by id (any case, braces optional) or by exact name; a
        reference matching several (a repeated name, or a name that is another
        checkpoint's id) is ``AmbiguousName``, listing them."""
        if not isinstance(ref, str | UUID):
            raise InvalidValue(f"a checkpoint is named by a str (name or id), got {ref!r}")
        if isinstance(ref, UUID):
            return self.checkpoint(ref)
        found = find_named(ref, self._candidates(False), f"VM {self.name!r}")
        if found is None:
            raise UnknownCheckpoint(f"VM {self.name!r} has no checkpoint named or with id {ref!r}")
        return self.checkpoints[found.id]

    def find_point(self, ref: str | UUID) -> Checkpoint | BackupPoint:
        """A checkpoint or backup point, as ``find_checkpoint`` finds one: a
        backup point named like a checkpoint, or two backup points of one name,
        are ambiguous rather than one silently chosen."""
        found = find_named(ref, self._candidates(True), f"VM {self.name!r}")
        if found is None:
            what = f"with id {ref}" if isinstance(ref, UUID) else f"named or with id {ref!r}"
            raise UnknownCheckpoint(f"VM {self.name!r} has no checkpoint or backup point {what}")
        return self.checkpoints.get(found.id) or self.backup_points[found.id]

    def _candidates(self, backup_points: bool) -> list[Candidate]:
        found = [
            Candidate("checkpoint", cp.id, cp.name, cp.created_at)
            for cp in self.checkpoints.values()
        ]
        if backup_points:
            found += [
                Candidate("backup point", p.id, p.name, p.created_at)
                for p in self.backup_points.values()
            ]
        return found

    def children(self, checkpoint_id: UUID | None) -> list[Checkpoint]:
        return [cp for cp in self.checkpoints.values() if cp.parent == checkpoint_id]

    def descendants(self, checkpoint_id: UUID) -> list[UUID]:
        """The checkpoint and every checkpoint below it, parents before children."""
        out = [checkpoint_id]
        for cid in out:
            out.extend(cp.id for cp in self.children(cid))
        return out

    def chain(self, disk: str, checkpoint_id: UUID | None = None) -> list[Layer]:
        """Files from the base disk to the running layer, or to a checkpoint's layer."""
        if not isinstance(disk, str) or disk not in self.running:
            raise InvalidValue(f"VM {self.name!r} has no disk {disk!r}")
        leaf = (
            self.running[disk]
            if checkpoint_id is None
            else self.checkpoint(checkpoint_id).layer(disk)
        )
        return layer_rules.chain(self.layers, leaf)

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _checkpoint_layers(checkpoints: Iterable[Checkpoint]) -> set[UUID]:
        return {lid for cp in checkpoints for _, lid in cp.layers}

    def _replay_changes(self, changes: Sequence[LayerMerge | LayerRemoval]) -> None:
        for change in changes:
            if isinstance(change, LayerMerge):
                merged = self.contents.get(change.target, ()) + self.contents.get(change.source, ())
                self.contents.pop(change.source, None)
                if merged:
                    self.contents[change.target] = merged
            else:
                self.contents.pop(change.layer, None)
        self.layers, redirect = layer_rules.apply_changes(self.layers, changes)
        if not redirect:
            return
        for disk, lid in self.running.items():
            self.running[disk] = layer_rules.resolve(redirect, lid)
        for cid, cp in self.checkpoints.items():
            moved = tuple((d, layer_rules.resolve(redirect, lid)) for d, lid in cp.layers)
            if moved != cp.layers:
                self.checkpoints[cid] = replace(cp, layers=moved)

    def _trigger(self, origin: Origin, event: type[Aggregate.Event], **facts: Any) -> None:
        if self.removed:  # every command ends here: a removed VM takes no more events
            raise NotAllowed(f"VM {self.name!r} ({self.id}) was removed")
        self.trigger_event(event, actor=origin.actor, host=origin.host, **facts)
