"""A VM's checkpoint tree over time, laid out for an SVG timeline (pure: no store).

Terms:
    column   x follows log order: the VM's n-th event (n from 0) sits at
             ``LEFT + n * STEP``, so events seconds or months apart are equally
             readable; the tick labels give log positions.
    lane     a horizontal row: lane 0 is the VM itself (registration, state,
             settings, disk captures, purges, imports, removal), then one lane
             for backup points if the VM has any, then one per checkpoint in
             order of creation. A checkpoint's lane runs from its creation to
             its deletion (or the right edge while it lives).
    branch   the vertical line from a new checkpoint's parent lane to its own at
             its creation: the parent is the VM's current checkpoint then (the
             domain's rule, ``domain/vm.py``), followed through applies and
             deletions here (a deleted current checkpoint hands over to its
             parent; a single deletion re-parents its children).
    mark     one per audit event, in the event's lane and column, its shape and
             colour by *kind* (``KINDS``, the legend).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .data import Event

LEFT = 170  # room for lane labels (checkpoint names are cut at 22 characters)
STEP = 16  # px per event: 200 events make a 3,400 px strip that scrolls sideways
LANE = 22  # px per lane
TOP = 28  # room for tick labels
NAME_CUT = 22

# kind -> (legend text, SVG path around (0, 0)); the colours are in report.css.
KINDS: dict[str, tuple[str, str]] = {
    "create": ("checkpoint created", "M-5,0a5,5 0 1,0 10,0a5,5 0 1,0 -10,0"),
    "apply": ("checkpoint applied or reverted", "M-5,5L0,-6L5,5Z"),
    "rename": ("checkpoint renamed", "M0,-6L6,0L0,6L-6,0Z"),
    "delete": ("checkpoint deleted", "M-5,-5L5,5M5,-5L-5,5"),
    "merge": ("deleted, layers merged", "M-5,-5L5,5M5,-5L-5,5M-7,0a7,7 0 1,0 14,0a7,7 0 1,0 -14,0"),
    "backup": ("backup point (sync)", "M-5,-5h10v10h-10Z"),
    "capture": ("content captured", "M-3,0a3,3 0 1,0 6,0a3,3 0 1,0 -6,0"),
    "purge": ("retention: purge, undo, reclaim", "M-3,-6h6l3,6l-3,6h-6l-3,-6Z"),
    "import": ("Hyper-V import", "M-2,-6h4v4h4v4h-4v4h-4v-4h-4v-4h4Z"),
    "vm": ("VM added, changed or removed", "M-6,-4h12v8h-12Z"),
}
OPERATION_KIND = {
    "checkpoint-created": "create",
    "checkpoint-applied": "apply",
    "checkpoint-reverted": "apply",
    "checkpoint-renamed": "rename",
    "checkpoint-deleted": "delete",
    "backup-point-recorded": "backup",
    "disk-content-captured": "capture",
    "state-files-captured": "capture",
    "content-purged": "purge",
    "purge-withdrawn": "purge",
    "content-reclaimed": "purge",
    "retention-policy-set": "purge",
    "hyperv-folder-imported": "import",
}


@dataclass(frozen=True)
class Mark:
    position: int
    x: int
    y: int
    kind: str
    operation: str
    title: str


@dataclass
class Lane:
    label: str
    y: int
    start: int  # x where it begins
    end: int | None = None  # x where it ends (deleted); None: the right edge
    kind: str = "checkpoint"  # "vm", "backup" or "checkpoint"


@dataclass(frozen=True)
class Branch:
    x: int
    y1: int
    y2: int


@dataclass
class Timeline:
    width: int
    height: int
    lanes: list[Lane] = field(default_factory=list)
    branches: list[Branch] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    ticks: list[tuple[int, int]] = field(default_factory=list)  # (x, position)


def title(e: Event) -> str:
    """The mark's tooltip: what, which point, who, where, when, and the merges."""
    lines = [f"{e.operation}" + (f" {e.checkpoint}" if e.checkpoint else "")]
    d = e.details
    if e.operation == "checkpoint-renamed":
        lines.append(f"renamed from {d.get('old_name')}")
    layers: Any = d.get("layers") or []
    lines += [str(x) for x in layers]
    if e.operation == "content-purged":
        lines.append(f"{len(d.get('points') or [])} points purged")
    lines.append(f"by {e.actor} on {e.host}")
    lines.append(f"{e.iso_time} · position {e.position}")
    return "\n".join(lines)


def kind_of(e: Event) -> str:
    kind = OPERATION_KIND.get(e.operation, "vm")
    if kind == "delete" and any("merged" in str(x) for x in e.details.get("layers") or []):
        return "merge"
    return kind


def layout(events: Sequence[Event]) -> Timeline:
    """Lanes, branches, marks and ticks for one VM's events (log order)."""
    lanes: list[Lane] = [Lane("VM", TOP + LANE // 2, LEFT, kind="vm")]
    by_id: dict[str, Lane] = {}
    backup: Lane | None = None
    parent: dict[str, str | None] = {}
    current: str | None = None
    branches: list[Branch] = []
    marks: list[Mark] = []
    right = LEFT + max(len(events), 1) * STEP

    def new_lane(label: str, x: int, kind: str = "checkpoint") -> Lane:
        lane = Lane(label[:NAME_CUT], TOP + LANE // 2 + len(lanes) * LANE, x, kind=kind)
        lanes.append(lane)
        return lane

    for n, e in enumerate(events):
        x = LEFT + n * STEP + STEP // 2
        cid = str(e.details.get("id") or "")
        lane = lanes[0]
        if e.operation == "backup-point-recorded" or (
            e.operation == "state-files-captured" and cid and cid not in by_id and backup
        ):
            if backup is None:
                backup = new_lane("backup points", x, "backup")
            lane = backup
        elif e.operation == "checkpoint-created" and cid:
            parent[cid] = current
            lane = by_id[cid] = new_lane(e.checkpoint or cid, x)
            above = by_id[current].y if current in by_id else lanes[0].y
            branches.append(Branch(x, above, lane.y))
            current = cid
        elif cid in by_id:
            lane = by_id[cid]
            if e.operation == "checkpoint-renamed" and e.checkpoint:
                lane.label = e.checkpoint[:NAME_CUT]
            elif e.operation == "checkpoint-applied":
                current = cid
            elif e.operation == "checkpoint-deleted":
                current = _delete(cid, bool(e.details.get("subtree")), parent, current, by_id, x)
        marks.append(Mark(e.position, x, lane.y, kind_of(e), e.operation, title(e)))
    ticks = [(m.x, m.position) for i, m in enumerate(marks) if i % 10 == 0]
    height = TOP + len(lanes) * LANE + 6
    return Timeline(right + STEP, height, lanes, branches, marks, ticks)


def _delete(
    cid: str,
    subtree: bool,
    parent: dict[str, str | None],
    current: str | None,
    by_id: dict[str, Lane],
    x: int,
) -> str | None:
    """End the deleted lanes; return the VM's current checkpoint after."""
    gone = {cid}
    if subtree:
        grew = True
        while grew:
            more = {c for c, p in parent.items() if p in gone and c not in gone}
            gone |= more
            grew = bool(more)
    else:  # its children now hang from its parent
        for child, p in parent.items():
            if p == cid:
                parent[child] = parent.get(cid)
    for g in gone:
        lane = by_id.get(g)
        if lane is not None and lane.end is None:
            lane.end = x
    if current in gone:
        return parent.get(cid)
    return current
