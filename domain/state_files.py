"""Configuration versions and the state files each checkpoint gets.

A configuration version is ``major.minor``. Version 5.0 is Windows Server
2012 R2: a checkpoint has ``<GUID>.xml`` and, only when memory was saved,
``<GUID>/<GUID>.vsv`` (device state) and ``<GUID>/<GUID>.bin`` (memory).
Version 6.2 and later (Windows 10 / Server 2016+) use ``<GUID>.vmcx`` and
``<GUID>.vmrs``; the VMRS always exists and holds the memory only when it was
saved. All these files live in the VM's ``Snapshots`` folder.

Versions outside the list Hyper-V has shipped are refused, so a typo such as
``9,0`` or ``90`` does not silently pick a format.

An *upgrade* (Update-VMVersion) changes the file structure of the VM's
configuration and checkpoint files; Hyper-V does it only while the VM is off
and no checkpoint holds saved state (memory). Here a checkpoint keeps the
files and the version it was taken with (docs/decisions/0001, item 7).
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from .captures import FileRole
from .errors import InvalidValue, NotAllowed
from .naming import guid_text
from .values import Checkpoint, StateFile, StateFileKind, VMState

KNOWN_VERSIONS = (
    "5.0", "6.2", "7.0", "7.1", "8.0", "8.1", "8.2", "8.3",
    "9.0", "9.1", "9.2", "9.3", "10.0", "11.0", "12.0",
)  # fmt: skip
DEFAULT_VERSION = "10.0"  # Windows Server 2022's default
SNAPSHOTS = "Snapshots"


def parse_version(text: str) -> tuple[int, int]:
    if text not in KNOWN_VERSIONS:
        raise InvalidValue(
            f"unknown configuration version {text!r}; known: {', '.join(KNOWN_VERSIONS)}"
        )
    major, minor = text.split(".")
    return int(major), int(minor)


def uses_vmcx(version: str) -> bool:
    """True for 6.2 and later (VMCX/VMRS), False for 5.0 (XML/VSV/BIN)."""
    return parse_version(version) >= (6, 2)


def state_files(checkpoint: UUID, version: str, with_memory: bool) -> tuple[StateFile, ...]:
    guid = guid_text(checkpoint)
    if uses_vmcx(version):
        return (
            StateFile(f"{SNAPSHOTS}/{guid}.vmcx", StateFileKind.VMCX, False),
            StateFile(f"{SNAPSHOTS}/{guid}.vmrs", StateFileKind.VMRS, with_memory),
        )
    files = [StateFile(f"{SNAPSHOTS}/{guid}.xml", StateFileKind.XML, False)]
    if with_memory:
        files.append(StateFile(f"{SNAPSHOTS}/{guid}/{guid}.vsv", StateFileKind.VSV, False))
        files.append(StateFile(f"{SNAPSHOTS}/{guid}/{guid}.bin", StateFileKind.BIN, True))
    return tuple(files)


def check_upgrade(vm: str, checkpoints: Iterable[Checkpoint], version: str) -> None:
    """Refuse an upgrade while a checkpoint holds saved state: Hyper-V converts the
    configuration and checkpoint files to the new structure and cannot convert a
    saved state (Update-SCVMVersion's documented preconditions)."""
    saved = [cp.name for cp in checkpoints if cp.has_memory]
    if saved:
        shown = ", ".join(repr(n) for n in saved[:3]) + (", ..." if len(saved) > 3 else "")
        raise NotAllowed(
            f"VM {vm!r} has {len(saved)} checkpoint(s) with saved state (memory): {shown}; "
            f"Hyper-V upgrades a configuration version only without them (delete them "
            f"first); upgrade to {version} refused"
        )


def check_file_role(
    vm: str, version: str, state: VMState, production_only: bool, role: FileRole, memory: bool
) -> None:
    """Refuse a state file a checkpoint of this VM cannot have (memory: it will hold memory)."""
    vmcx = uses_vmcx(version)
    if role is FileRole.RUNTIME_STATE and not vmcx:
        raise InvalidValue(
            f"VM {vm!r} (configuration {version}) has no VMRS file; "
            "give --device-state (VSV) instead"
        )
    if role is FileRole.DEVICE_STATE and (vmcx or not memory):
        raise InvalidValue(
            "a VSV device-state file exists only for a 5.0 VM's checkpoint with memory"
            if not vmcx
            else f"VM {vm!r} (configuration {version}) keeps device "
            "state in the VMRS; give --runtime-state instead"
        )
    if role is FileRole.MEMORY and not memory:
        # A checkpoint holds no memory for exactly two reasons; name the one
        # that applies, with what the user can do about it.
        if state is VMState.OFF:
            raise InvalidValue(
                f"this checkpoint of VM {vm!r} holds no memory: the VM is off, "
                "so there is nothing in memory to save; --memory refused"
            )
        instead = (
            "the VM is production-only, so it never gets a standard checkpoint"
            if production_only
            else "take a standard checkpoint (--type standard) to save memory"
        )
        raise InvalidValue(
            f"this checkpoint of VM {vm!r} would be a production checkpoint: "
            f"production checkpoints hold no memory; {instead}; --memory refused"
        )
