"""Configuration versions and the state files each checkpoint gets.

A configuration version is ``major.minor``. Version 5.0 is Windows Server
2012 R2: a checkpoint has ``<GUID>.xml`` and, only when memory was saved,
``<GUID>/<GUID>.vsv`` (device state) and ``<GUID>/<GUID>.bin`` (memory).
Version 6.2 and later (Windows 10 / Server 2016+) use ``<GUID>.vmcx`` and
``<GUID>.vmrs``; the VMRS always exists and holds the memory only when it was
saved. All these files live in the VM's ``Snapshots`` folder.

Versions outside the list Hyper-V has shipped are refused, so a typo such as
``9,0`` or ``90`` does not silently pick a format.
"""

from __future__ import annotations

from uuid import UUID

from .errors import InvalidValue
from .naming import guid_text
from .values import StateFile, StateFileKind

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
