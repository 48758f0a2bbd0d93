"""The configuration files of an export: ``Virtual Machines/`` and ``Snapshots/``.

Terms:
- *captured configuration*: the VMCX or XML a checkpoint was taken with
  (``checkpoint create --config``): Hyper-V's own file, written back verbatim.
- *generated configuration*: written by ckpt (``storage/hyperv_config``) from
  the event log: name, id, parent, creation time, type, the exported disk files
  and state files, with a ``ckpt`` writer mark. It carries what ``import
  hyperv`` needs to rebuild the tree; it is not a complete Hyper-V
  configuration (no processors, memory, network: ckpt never knew them).

What goes where (decision 0003):
- an exported checkpoint (Export-VMSnapshot): ``Virtual Machines/<id>`` is the
  checkpoint's captured configuration where there is one (the VM as Hyper-V
  described it at that checkpoint), else a generated one; its captured state
  files go to ``Snapshots/`` as before.
- ``--all-checkpoints`` (Export-VM): ``Virtual Machines/<id>`` is generated for
  Now (its parent is the current checkpoint); each checkpoint gets
  ``Snapshots/<checkpoint id>``: its captured configuration when that file
  describes this very checkpoint (same id, name and parent: a VM imported from
  Hyper-V and not renamed since), else a generated one.
``<id>`` is the VM's Hyper-V id when it was imported from a Hyper-V folder,
else ckpt's VM id; ids are upper-case GUIDs, as Hyper-V names its files.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO
from uuid import UUID

from ckpt.domain import Checkpoint, CheckpointType, FileRole, VirtualMachine
from ckpt.domain.errors import ConfigurationError
from ckpt.domain.state_files import uses_vmcx
from ckpt.storage.hyperv_config import CheckpointKind, Configuration, ConfiguredDisk, FileKind
from ckpt.storage.hyperv_config.vmcx import read_vmcx, write_vmcx
from ckpt.storage.hyperv_config.xml_config import read_xml_config, write_xml_config
from ckpt.storage.manifest_restore import restore_manifest

from .unit_of_work import UnitOfWork

VMS_DIR = "Virtual Machines"
SNAPSHOTS_DIR = "Snapshots"


def hyperv_vm_id(vm: VirtualMachine) -> UUID:
    return UUID(vm.hyperv_id) if vm.hyperv_id else vm.id


def _location(i: int) -> str:
    """Where the i-th disk is attached: IDE 0 (two drives), then SCSI 0, as a
    generation 1 VM's first disks are."""
    return f"ide0/{i}" if i < 2 else f"scsi0/{i - 2}"


def _suffix(version: str) -> str:
    return ".vmcx" if uses_vmcx(version) else ".xml"


def _write(out: BinaryIO, config: Configuration) -> None:
    if config.format == "vmcx":
        write_vmcx(out, config)
    else:
        write_xml_config(out, config)


def _read(data: bytes, version: str, name: str) -> Configuration | None:
    with contextlib.suppress(ConfigurationError):
        if uses_vmcx(version):
            return read_vmcx(io.BytesIO(data), name)
        return read_xml_config(io.BytesIO(data), name)
    return None


def _captured(uow: UnitOfWork, vm: VirtualMachine, cp: Checkpoint) -> bytes | None:
    for f in vm.captured_files.get(cp.id, ()):
        if f.role is FileRole.CONFIG:
            buf = io.BytesIO()
            restore_manifest(f.manifest, uow.chunks, buf)
            return buf.getvalue()
    return None


def vm_configuration(
    vm: VirtualMachine, disk_paths: Sequence[str], current: UUID | None, version: str
) -> Configuration:
    """The VM's configuration as ckpt writes it; ``version``: the VM's, or the
    exported checkpoint's (it was taken at that version)."""
    return Configuration(
        kind=FileKind.VM,
        format="vmcx" if uses_vmcx(version) else "xml",
        id=hyperv_vm_id(vm),
        name=vm.name,
        version=version,
        parent=current,
        disks=tuple(ConfiguredDisk(_location(i), p) for i, p in enumerate(disk_paths)),
        writer="ckpt",
    )


def checkpoint_configuration(
    vm: VirtualMachine, cp: Checkpoint, disk_paths: Sequence[str], state_paths: Sequence[str]
) -> Configuration:
    standard = cp.type is CheckpointType.STANDARD
    kind = CheckpointKind.STANDARD if standard else CheckpointKind.PRODUCTION
    return Configuration(
        kind=FileKind.CHECKPOINT,
        format="vmcx" if uses_vmcx(cp.config_version) else "xml",
        id=cp.id,
        name=cp.name,
        version=cp.config_version,
        vm_id=hyperv_vm_id(vm),
        parent=cp.parent,
        created_at=cp.created_at,
        checkpoint_kind=kind,
        disks=tuple(ConfiguredDisk(_location(i), p) for i, p in enumerate(disk_paths)),
        state_files=tuple(state_paths),
        saved_memory=cp.has_memory,
        writer="ckpt",
    )


def write_vm_configuration(
    uow: UnitOfWork,
    vm: VirtualMachine,
    folder: Path,
    config: Configuration,
    captured_from: Checkpoint | None,
    create: Callable[[Path], BinaryIO],
) -> Path:
    """``Virtual Machines/<id>.vmcx|.xml``: ``captured_from``'s captured
    configuration where it has one, else ``config``."""
    path = folder / VMS_DIR / f"{str(hyperv_vm_id(vm)).upper()}{_suffix(config.version or '')}"
    data = None if captured_from is None else _captured(uow, vm, captured_from)
    return _write_file(path, data, config, create)


def write_checkpoint_configuration(
    uow: UnitOfWork,
    vm: VirtualMachine,
    folder: Path,
    cp: Checkpoint,
    config: Configuration,
    create: Callable[[Path], BinaryIO],
) -> Path:
    """``Snapshots/<checkpoint id>.vmcx|.xml``: captured when it describes this
    checkpoint as the log does now, else generated."""
    path = folder / SNAPSHOTS_DIR / f"{str(cp.id).upper()}{_suffix(cp.config_version)}"
    data = _captured(uow, vm, cp)
    if data is not None:
        said = _read(data, cp.config_version, str(path))
        if said is None or (said.id, said.name, said.parent) != (cp.id, cp.name, cp.parent):
            data = None
    return _write_file(path, data, config, create)


def _write_file(
    path: Path, captured: bytes | None, config: Configuration, create: Callable[[Path], BinaryIO]
) -> Path:
    """The captured bytes as they are, else ``config`` in its format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with create(path) as out:
        if captured is not None:
            out.write(captured)
        else:
            _write(out, config)
    return path
