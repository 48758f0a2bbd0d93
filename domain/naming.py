"""Names as Hyper-V gives and checks them.

- VM and checkpoint names: 1 to 100 characters (Hyper-V's limit), no control
  characters, not only blanks. Duplicate checkpoint names are allowed, as in
  Hyper-V; checkpoints are told apart by id.
- Default checkpoint name: ``<VM name> - (<M/D/YYYY - h:mm:ss AM>)``, the form
  Hyper-V Manager uses (en-US); automatic ones are prefixed "Automatic Checkpoint".
- Disk names become file names (``<disk>.vhdx``, ``<disk>_<GUID>.avhdx``), so
  they exclude the characters Windows forbids in file names.
"""

from __future__ import annotations

import re
from datetime import datetime
from uuid import UUID

from .errors import InvalidValue
from .values import DiskFormat

MAX_NAME = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FORBIDDEN_IN_FILE = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
_RESERVED = (
    {"CON", "PRN", "AUX", "NUL"}
    | {f"COM{i}" for i in range(1, 10)}
    | {f"LPT{i}" for i in range(1, 10)}
)


def check_name(name: str, what: str) -> str:
    """Return ``name`` if Hyper-V would accept it for a VM or checkpoint."""
    if not name or not name.strip():
        raise InvalidValue(f"{what} name must not be empty")
    if len(name) > MAX_NAME:
        raise InvalidValue(
            f"{what} name is {len(name)} characters long; Hyper-V allows 1 to {MAX_NAME}"
        )
    if _CONTROL.search(name):
        raise InvalidValue(f"{what} name {name!r} contains a control character")
    return name


def check_disk_name(name: str) -> str:
    """Return ``name`` if it can be the stem of a Windows file name."""
    check_name(name, "disk")
    if _FORBIDDEN_IN_FILE.search(name) or name.rstrip(" .") != name:
        raise InvalidValue(
            f"disk name {name!r} cannot be a Windows file name "
            '(no <>:"/\\|?* and no trailing dot or blank)'
        )
    if name.split(".")[0].upper() in _RESERVED:
        raise InvalidValue(f"disk name {name!r} is a reserved Windows device name")
    return name


def default_checkpoint_name(vm_name: str, at: datetime, automatic: bool = False) -> str:
    hour = at.hour % 12 or 12
    meridiem = "AM" if at.hour < 12 else "PM"
    stamp = f"{at.month}/{at.day}/{at.year} - {hour}:{at.minute:02d}:{at.second:02d} {meridiem}"
    prefix = "Automatic Checkpoint - " if automatic else ""
    suffix = f" - ({stamp})"
    room = MAX_NAME - len(prefix) - len(suffix)
    return f"{prefix}{vm_name[:room]}{suffix}"


def guid_text(value: UUID) -> str:
    """GUIDs in Hyper-V file names are upper case without braces."""
    return str(value).upper()


def base_file_name(disk: str, fmt: DiskFormat) -> str:
    return f"{disk}.{fmt.value}"


def differencing_file_name(disk: str, fmt: DiskFormat, layer: UUID) -> str:
    return f"{disk}_{guid_text(layer)}.{fmt.differencing_extension}"
