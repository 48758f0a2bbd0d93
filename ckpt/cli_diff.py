"""``ckpt diff VM A B``: what point B holds that point A does not (``diff_ops``).

Formats: ``extents`` (default) is text for people, or with ``--json`` the
``PointDiff.as_dict`` document; ``changed-blocks`` prints one disk's changed
extents as ``OFFSET LENGTH`` lines (decimal), exactly what ``checkpoint create``
and ``sync`` take with ``--changed-blocks`` (``capture.parse_extents``), each
line written as it is found.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TextIO

from ckpt.domain import InvalidValue

from . import diff_ops, render
from .damage import naming_affected
from .diff_ops import DiskDiff, PointDiff
from .store import Store

CHANGED_BLOCKS = "changed-blocks"


def _side(p: diff_ops.DiffPoint) -> str:
    return p.point if p.id is None else f"{p.kind} {p.point!r}"


def _disk_text(d: DiskDiff) -> list[str]:
    size = f"{d.size_to}" if not d.size_changed else f"{d.size_from} -> {d.size_to}"
    lines = [
        f"disk {d.disk}: size {size} bytes, {d.changed_bytes} bytes changed in "
        f"{len(d.extents)} extent{'s' if len(d.extents) != 1 else ''}, "
        f"{d.zeroed_bytes} bytes zeroed"
    ]
    lines += [f"  {e.offset} {e.length}" for e in d.extents]
    lines += [f"  zeroed {e.offset} {e.length}" for e in d.zeroed]
    return lines


def diff_text(d: PointDiff) -> str:
    at = "" if d.at is None else f" as of position {d.at}"
    lines = [f"VM {d.vm}: {_side(d.source)} -> {_side(d.target)}{at}"]
    for disk in d.disks:
        lines += _disk_text(disk)
    for f in d.files:
        state = {True: "changed", False: "unchanged", None: "in one point only"}[f.changed]
        lines.append(f"{f.role}: {state}")
    return "\n".join(lines)


def _diff(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    if a.format == CHANGED_BLOCKS:
        if a.json:
            raise InvalidValue(
                "--json does not go with --format changed-blocks (it prints 'OFFSET LENGTH' "
                "lines); use --format extents --json"
            )
        with naming_affected(s.unit_of_work):
            for e in diff_ops.stream_extents(s.unit_of_work, a.vm, a.a, a.b, a.disk, a.at):
                out.write(f"{e.offset} {e.length}\n")
        return
    d = s.diff(a.vm, a.a, a.b, disk=a.disk, at=a.at)
    render.emit(out, a, d.as_dict(), diff_text(d))


def register(sub: Any, cmd: Callable[..., argparse.ArgumentParser]) -> None:
    q = cmd(
        sub,
        "diff",
        _diff,
        "what point B holds that point A does not: changed extents per disk, state files "
        "changed or not (from manifests, no chunk data read)",
        json_out=True,
    )
    q.add_argument("vm")
    q.add_argument("a", metavar="A", help="checkpoint or backup point (name or id), or Now")
    q.add_argument("b", metavar="B", help="checkpoint or backup point (name or id), or Now")
    q.add_argument("--disk", metavar="DISK", help="only this disk")
    q.add_argument(
        "--at",
        metavar="POSITION|TIME",
        help="find both points as of then (reaches deleted checkpoints)",
    )
    q.add_argument(
        "--format",
        choices=("extents", CHANGED_BLOCKS),
        default="extents",
        help="extents (default): text or --json; changed-blocks: one disk's 'OFFSET LENGTH' "
        "lines, the input of checkpoint create/sync --changed-blocks",
    )
