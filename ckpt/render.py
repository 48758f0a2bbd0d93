"""Turning read models into text for people and JSON for scripts.

The JSON keys are a contract with users' scripts (see README "JSON output");
add keys freely, never rename or remove one. Text shows user-given strings
(names, actors, paths) through ``printable``: a name cannot start a new line
(U+2028 split ``tree`` lines into fake entries, issue 11) or send a terminal
escape sequence.
"""

from __future__ import annotations

import argparse
import json
import unicodedata
from collections.abc import Sequence
from typing import Any, TextIO
from uuid import UUID

from ckpt.domain import StateFile, VirtualMachine
from ckpt.projections import AuditEntry, ChainEntry, TreeEntry

# Unicode categories a terminal does not show as themselves: controls (Cc; ESC
# starts an escape sequence, CR rewrites a line), format characters (Cf; U+202E
# reverses the rest of a line), line and paragraph separators (Zl, Zp), private
# use (Co), surrogates (Cs), unassigned (Cn).
HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"})
# Zero-width (non-)joiners are Cf but hold emoji sequences together (a family: 3 people, 2 ZWJ).
JOINERS = frozenset({"\u200c", "\u200d"})


def printable(text: str) -> str:
    """``text`` with every hidden character written as a Python escape (``\\x1b``,
    ``\\u2028``), so one string is one stretch of one line on any terminal."""
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c in JOINERS or unicodedata.category(c) not in HIDDEN:
            out.append(c)
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) < 0x10000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return "".join(out)


def printable_lines(text: str) -> str:
    """Text of several lines: each line through ``printable``, the newlines kept."""
    return "\n".join(printable(line) for line in text.split("\n"))


def emit(out: TextIO, args: argparse.Namespace, data: Any, text: str) -> None:
    """``--json``: the document; otherwise the text (nothing when it is empty), with
    every character a terminal would not show as itself escaped, line by line."""
    if getattr(args, "json", False):
        json.dump(data, out, indent=2, ensure_ascii=False)
        out.write("\n")
    elif text:
        out.write(printable_lines(text) + "\n")


# ------------------------------------------------------------------- text
def _label(e: TreeEntry) -> str:
    when = e.created_at.strftime("%Y-%m-%d %H:%M:%S")
    return f"{e.name}  [{e.type}, {e.vm_state}, {when}, {str(e.id)[:8]}]"


def tree_text(vm: VirtualMachine, entries: Sequence[TreeEntry]) -> str:
    """Like Hyper-V Manager's checkpoint pane: the tree, and "Now" under the current one."""
    children: dict[UUID | None, list[TreeEntry]] = {}
    for e in entries:
        children.setdefault(e.parent, []).append(e)
    now = f"▶ Now ({vm.state.value})"
    lines = [vm.name]

    def walk(parent: UUID | None, prefix: str) -> None:
        kids: list[TreeEntry | str] = list(children.get(parent, []))
        if vm.current == parent:
            kids.append(now)
        for i, kid in enumerate(kids):
            last = i == len(kids) - 1
            branch = "└── " if last else "├── "
            if isinstance(kid, str):
                lines.append(prefix + branch + kid)
                continue
            lines.append(prefix + branch + _label(kid))
            walk(kid.id, prefix + ("    " if last else "│   "))

    walk(None, "")
    return "\n".join(lines)


def chain_text(chains: dict[str, list[ChainEntry]]) -> str:
    lines = []
    for disk, entries in chains.items():
        lines.append(f"disk {disk}:")
        for e in entries:
            role = (
                "running (Now)"
                if e.running
                else (f"frozen by {e.frozen_by!r}" if e.frozen_by else "shared parent")
            )
            parent = e.parent or "-"
            lines.append(f"  {e.file}  <- parent {parent}  [{role}]")
    return "\n".join(lines)


def files_text(files: Sequence[StateFile]) -> str:
    return "\n".join(f"{f.path}  [{f.kind.value}{', memory' if f.memory else ''}]" for f in files)


def _item(value: object) -> str:
    """One item of a listed detail: a purged point (a dict) as its kind and name."""
    if isinstance(value, dict) and "name" in value:
        return f"{value.get('kind', 'point')} {value['name']!r}"
    return str(value)


def log_text(entries: Sequence[AuditEntry]) -> str:
    lines = []
    for e in entries:
        cp = f" {e.checkpoint!r}" if e.checkpoint else ""
        extra = "; ".join(
            f"{k}={', '.join(map(_item, v)) if isinstance(v, list) else v}"
            for k, v in e.details.items()
            if v not in ([], None) and k != "id"
        )
        when = e.time.strftime("%Y-%m-%d %H:%M:%S")
        # The actor and host are not checked as names are: a newline in one is escaped too.
        lines.append(
            printable(
                f"{e.position:>6}  {when}  {e.actor}@{e.host}  {e.vm}  {e.operation}{cp}"
                + (f"  ({extra})" if extra else "")
            )
        )
    return "\n".join(lines)


def vm_text(vm: VirtualMachine) -> str:
    disks = ", ".join(d.base_file for d in vm.disks)
    automatic = "on" if vm.automatic_checkpoints else "off"
    return (
        f"{vm.name}  state={vm.state.value}  config={vm.config_version}  "
        f"checkpoint-type={vm.checkpoint_type.value}  automatic={automatic}  "
        f"checkpoints={len(vm.checkpoints)}  disks={disks}"
        + (f"  hyperv-id={vm.hyperv_id}" if vm.hyperv_id else "")
    )
