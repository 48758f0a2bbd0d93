"""Names as Hyper-V gives and checks them.

- VM and checkpoint names: 1 to 100 characters (Hyper-V's limit), no control
  characters, not only blanks. Duplicate checkpoint names are allowed, as in
  Hyper-V; checkpoints are told apart by id.
- A reference is a name or an id (any case, braces optional). A new VM,
  checkpoint or backup point name that reads as an id is refused; a reference
  that still matches several things (names repeat; an old log may hold a name
  that is another thing's id) is ambiguous, never settled silently
  (docs/decisions/0008-names-and-ids.md).
- Default checkpoint name: ``<VM name> - (<M/D/YYYY - h:mm:ss AM>)``, the form
  Hyper-V Manager uses (en-US); automatic ones are prefixed "Automatic Checkpoint".
- Disk names become file names (``<disk>.vhdx``, ``<disk>_<GUID>.avhdx``), so
  they exclude the characters Windows forbids in file names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from .errors import AmbiguousName, InvalidValue
from .values import DiskFormat

MAX_NAME = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Characters Windows refuses in a file name, and the names that open a device
# ("nul.txt" too): shared by disk names and the export's folder names.
FORBIDDEN_IN_FILE = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
RESERVED_FILE_NAMES = (
    {"CON", "PRN", "AUX", "NUL"}
    | {f"COM{i}" for i in range(1, 10)}
    | {f"LPT{i}" for i in range(1, 10)}
)
# An ambiguity error lists the things a reference matches. A scheduler running
# `sync --name nightly` every night makes hundreds of them; the first 10 are
# enough to show what happened and one id to use.
MAX_LISTED = 10


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


def check_findable_name(name: str, what: str) -> str:
    """``check_name``, and refuse a name a lookup would read as an id: a name
    equal to another thing's id would make that id name two things."""
    check_name(name, what)
    if parse_id(name) is not None:
        raise InvalidValue(
            f"{what} name {name!r} reads as an id (a UUID); a {what} is looked up by "
            "name or id, so its name must not look like an id: choose another name"
        )
    return name


def disk_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be the stem of a Windows file name, or None if it can."""
    if FORBIDDEN_IN_FILE.search(name) or name.rstrip(" .") != name:
        return 'cannot be a Windows file name (no <>:"/\\|?* and no trailing dot or blank)'
    if name.split(".")[0].upper() in RESERVED_FILE_NAMES:
        return "is a reserved Windows device name"
    return None


def check_disk_name(name: str) -> str:
    """Return ``name`` if it can be the stem of a Windows file name."""
    check_name(name, "disk")
    problem = disk_name_problem(name)
    if problem is not None:
        raise InvalidValue(f"disk name {name!r} {problem}")
    return name


def parse_id(ref: str) -> UUID | None:
    """The id a reference spells (any case, braces and blanks around optional), or None."""
    try:
        return UUID(ref.strip().strip("{}"))
    except ValueError:
        return None


@dataclass(frozen=True)
class Candidate:
    """Something a reference may name: its kind ("checkpoint", "backup point",
    "VM"), id and name; ``created_at`` tells duplicates apart in a message."""

    kind: str
    id: UUID
    name: str
    created_at: datetime | None = None


def find_named(
    ref: str | UUID, candidates: Sequence[Candidate], owner: str, fold_case: bool = False
) -> Candidate | None:
    """The one candidate ``ref`` names, by id or by exact name (case-folded with
    ``fold_case``, as VM names are); None if none. Several: ``AmbiguousName``
    listing them (``owner`` says where, e.g. "VM 'web01'"); an id never silently
    wins over a name, nor the latest of a repeated name over the others."""
    if isinstance(ref, UUID):
        return next((c for c in candidates if c.id == ref), None)
    as_id = parse_id(ref)
    key = ref.casefold() if fold_case else ref
    by_id = [c for c in candidates if c.id == as_id]
    by_name = [
        c
        for c in candidates
        if (c.name.casefold() if fold_case else c.name) == key and c.id != as_id
    ]
    found = by_id + by_name
    if len(found) < 2:
        return found[0] if found else None
    raise AmbiguousName(_ambiguity(ref, by_id, by_name, candidates, owner, fold_case))


def _ambiguity(
    ref: str,
    by_id: list[Candidate],
    by_name: list[Candidate],
    scope: Sequence[Candidate],
    owner: str,
    fold_case: bool,
) -> str:
    found = by_id + by_name
    kinds = sorted({c.kind for c in by_name})
    named = f"{len(by_name)} {_plural(kinds[0], len(by_name))}" if len(kinds) == 1 else None
    if not by_id and named is not None:
        head = f"{owner} has {named} named {ref!r}"
    else:
        parts = [f"the id of {c.kind} {c.name!r}" for c in by_id]
        if by_name:
            parts.append(f"the name of {named or f'{len(by_name)} things'}")
        head = f"{ref!r} is ambiguous in {owner}: it is " + " and ".join(parts)
    names = {c.name.casefold() if fold_case else c.name for c in scope}
    listed = ", ".join(
        f"{c.kind} {c.name!r}{_when(c.created_at)} (id {_id_form(c.id, names, fold_case)})"
        for c in found[:MAX_LISTED]
    )
    more = f", and {len(found) - MAX_LISTED} more" if len(found) > MAX_LISTED else ""
    return f"{head}: {listed}{more}; name one by its id as shown"


def _id_form(value: UUID, names: set[str], fold_case: bool) -> str:
    """A spelling of ``value`` that no name in scope equals, so it names only that thing."""
    text = str(value)
    for form in (text, f"{{{text}}}", text.upper(), f"{{{text.upper()}}}"):
        if (form.casefold() if fold_case else form) not in names:
            return form
    return text


def _when(at: datetime | None) -> str:
    return "" if at is None else f" of {at.isoformat(timespec='seconds')}"


def _plural(kind: str, n: int) -> str:
    return kind if n == 1 else f"{kind}s"


def default_checkpoint_name(vm_name: str, at: datetime, automatic: bool = False) -> str:
    hour = at.hour % 12 or 12
    meridiem = "AM" if at.hour < 12 else "PM"
    stamp = f"{at.month}/{at.day}/{at.year} - {hour}:{at.minute:02d}:{at.second:02d} {meridiem}"
    prefix = "Automatic Checkpoint - " if automatic else ""
    suffix = f" - ({stamp})"
    room = MAX_NAME - len(prefix) - len(suffix)
    return f"{prefix}{vm_name[:room]}{suffix}"


def default_backup_point_name(vm_name: str, at: datetime) -> str:
    """``<VM name> - backup point (<ISO time>)``, the VM name shortened to fit 100 characters."""
    suffix = f" - backup point ({at.isoformat(timespec='seconds')})"
    return f"{vm_name[: MAX_NAME - len(suffix)]}{suffix}"


def guid_text(value: UUID) -> str:
    """GUIDs in Hyper-V file names are upper case without braces."""
    return str(value).upper()


def base_file_name(disk: str, fmt: DiskFormat) -> str:
    return f"{disk}.{fmt.value}"


def differencing_file_name(disk: str, fmt: DiskFormat, layer: UUID) -> str:
    return f"{disk}_{guid_text(layer)}.{fmt.differencing_extension}"
