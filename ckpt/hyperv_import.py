"""``ckpt import hyperv DIR``: a Hyper-V VM folder becomes a VM, its checkpoint tree and content.

``hyperv_folder`` reads the folder into a plan: the disk trees (VHDX/AVHDX or
VHD/AVHD), and the configuration files that name each checkpoint, its id,
parent, creation time, type, the files it froze and its state files, and the
VM's current checkpoint; where a configuration is missing or damaged the disk
files decide, and the plan says so per checkpoint.

The tree is rebuilt by replaying it: for each checkpoint, parents first and
siblings in creation order, its parent is applied when Now is elsewhere, each
disk's frozen file is imported into the running layer (a capture of the chain
read through that file, so only what it changes is recorded), then the
checkpoint is recorded with its own id, name, time and type, and its state
files attached. The branch that leads to the current checkpoint comes last,
and Now's files are imported at the end. Several root checkpoints (their
common parent was deleted in Hyper-V) hang from a *holder* checkpoint on the
base files, deleted at the end (its file stays, as in Hyper-V).

Every file is opened and checked, and every chain link too, before any content
is read; the VM is built in memory and saved with all its events in one
transaction at the end, so a failure at any step records nothing and a retry
starts afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ckpt.domain import (
    Checkpoint,
    CheckpointType,
    FileCapture,
    FileRole,
    InvalidValue,
    VirtualMachine,
)
from ckpt.domain.imports import (
    ImportedCheckpoint,
    attach_state_files,
    import_checkpoint,
    record_import,
)
from ckpt.domain.state_files import DEFAULT_VERSION, parse_version, uses_vmcx

from . import commands
from .capture_ops import capture_disk_file, capture_state_file
from .hyperv_export import safe_folder_name
from .hyperv_folder import DiskFile, Plan, PlannedCheckpoint, plan_folder
from .unit_of_work import UnitOfWork

HOLDER = "ckpt import: common parent of the root checkpoints"
_ROLES = {
    "config": FileRole.CONFIG,
    "runtime": FileRole.RUNTIME_STATE,
    "device": FileRole.DEVICE_STATE,
    "memory": FileRole.MEMORY,
}


@dataclass
class ImportReport:
    vm: str
    disks: list[str]
    checkpoints: list[str]
    files: int
    current: str | None
    hyperv_id: str | None
    configuration: str | None
    version: str
    notes: list[str]


def _version(plan: Plan) -> str:
    """The configuration version: the VM configuration's, else what the files say
    (XML configurations or VHD disks: 5.0; VMCX: the default)."""
    if plan.version is not None:
        try:
            parse_version(plan.version)
            return plan.version
        except InvalidValue:
            plan.notes.append(
                f"configuration version {plan.version} is not one ckpt knows; "
                f"{DEFAULT_VERSION} used"
            )
    if plan.configuration == "xml":
        return "5.0"
    if plan.configuration == "" and all(fmt.value == "vhd" for _, fmt, _ in plan.disks):
        return "5.0"
    return DEFAULT_VERSION


def import_folder(uow: UnitOfWork, directory: Path, name: str | None = None) -> ImportReport:
    uow.writable("import hyperv")
    plan = plan_folder(directory, name)
    vm_name = plan.vm_name or safe_folder_name(directory.resolve().name)
    version = _version(plan)
    vm = commands.new_vm(
        uow,
        vm_name,
        [(d, fmt) for d, fmt, _ in plan.disks],
        checkpoint_type=CheckpointType.STANDARD
        if not uses_vmcx(version)
        else CheckpointType.PRODUCTION,
        config_version=version,
    )
    replay = _Replay(uow, vm, directory, plan)
    # A write lease from the first pack to the commit, as every capture holds one:
    # a gc meanwhile keeps the chunks the import writes or reuses (decision 0006).
    with uow.chunks.write_lease() as lease:
        replay.run()
        record_import(
            vm, uow.origin(), str(directory.resolve()), plan.hyperv_id, plan.configuration,
            replay.notes,
        )  # fmt: skip
        lease.check()
        commands.save_new_vm(uow, vm)  # every event at once, or none
    current = vm.checkpoints[vm.current].name if vm.current else None
    return ImportReport(
        vm_name,
        [d for d, _, _ in plan.disks],
        replay.created,
        plan.files,
        current,
        None if plan.hyperv_id is None else str(plan.hyperv_id),
        plan.configuration or None,
        version,
        replay.notes,
    )


class _Replay:
    """The replay's steps on a VM that is not saved yet: each disk file's content
    is captured (its chunks written; unreferenced ones go at the next gc if the
    import fails) and recorded as an event of the unsaved VM."""

    def __init__(self, uow: UnitOfWork, vm: VirtualMachine, root: Path, plan: Plan) -> None:
        self.uow, self.vm, self.root, self.plan = uow, vm, root, plan
        self.made: dict[str, Checkpoint] = {}
        self.created: list[str] = []
        self.notes: list[str] = list(plan.notes)
        self.children: dict[str | None, list[PlannedCheckpoint]] = {}
        for cp in plan.checkpoints.values():
            self.children.setdefault(cp.parent, []).append(cp)
        leads = self._leads_to_current()
        for kids in self.children.values():  # creation order; the current branch last
            kids.sort(key=lambda c: (c.key in leads, c.order, c.name))

    def _leads_to_current(self) -> set[str]:
        out: set[str] = set()
        key = self.plan.current
        while key is not None and key not in out:
            out.add(key)
            key = self.plan.checkpoints[key].parent
        return out

    def run(self) -> None:
        roots = self.children.get(None, [])
        holder: Checkpoint | None = None
        if len(roots) > 1:  # Hyper-V deleted their common parent: recreate and delete it
            for disk, _, base in self.plan.disks:
                self._import(disk, base)
            holder = self.vm.create_checkpoint(self.uow.origin(), HOLDER)
        for i, root in enumerate(roots):
            if holder is not None and i > 0:
                self.vm.apply_checkpoint(self.uow.origin(), holder.id)
            self._visit(root)
        current = self.plan.current
        want = None if current is None else self.made[current].id
        if self.vm.current != want and want is not None:
            self.vm.apply_checkpoint(self.uow.origin(), want)
        elif self.vm.current != want and holder is not None:
            self.vm.apply_checkpoint(self.uow.origin(), holder.id)
        for disk, f in self.plan.now.items():
            self._import(disk, f)
        self.notes.append(f"Now: runs on {', '.join(f.path.name for f in self.plan.now.values())}")
        if holder is not None:
            self.vm.delete_checkpoint(self.uow.origin(), holder.id)

    def _visit(self, planned: PlannedCheckpoint) -> None:
        parent = None if planned.parent is None else self.made[planned.parent].id
        if parent is not None and self.vm.current != parent:
            self.vm.apply_checkpoint(self.uow.origin(), parent)
        for disk, f in planned.files.items():
            self._import(disk, f)
        made = import_checkpoint(
            self.vm,
            self.uow.origin(),
            ImportedCheckpoint(
                planned.name, planned.id, planned.created_at, planned.type, planned.vm_state
            ),
        )
        files = self._state_files(planned, made)
        if files:
            attach_state_files(self.vm, self.uow.origin(), made, files)
        self.made[planned.key] = made
        self.created.append(planned.name)
        where = planned.source + (f" ({planned.note})" if planned.note else "")
        attached = ", ".join(sorted(planned.state_files)) or "none"
        self.notes.append(f"checkpoint {planned.name!r}: from the {where}; state files: {attached}")
        for child in self.children.get(planned.key, []):
            self._visit(child)

    def _state_files(self, planned: PlannedCheckpoint, made: Checkpoint) -> list[FileCapture]:
        out = []
        for role_name, path in sorted(planned.state_files.items()):
            role = _ROLES[role_name]
            try:
                self.vm.check_file_role(role, made.has_memory)
            except InvalidValue as e:  # a file this version's checkpoint cannot have
                self.notes.append(f"{path.name}: not attached ({e})")
                continue
            out.append(capture_state_file(self.uow, role, path))
        return out

    def _import(self, disk: str, f: DiskFile) -> None:
        capture = capture_disk_file(self.uow, self.vm, disk, f.path, root=self.root)
        self.vm.import_disk_content(self.uow.origin(), capture)
