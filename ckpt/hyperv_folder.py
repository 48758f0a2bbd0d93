"""Reading a Hyper-V VM folder: its disk trees and configuration files, as a plan to replay.

Terms:
- *disk tree*: the VHDX/AVHDX (or VHD/AVHD) files of one virtual disk, each
  differencing file linked to the parent its locator names; the files without
  a parent are the *bases*, one per disk.
- *frozen file*: a file with children, or a leaf that Now does not run on:
  some checkpoint froze it.
- *configuration*: ``Virtual Machines/<GUID>.vmcx|.xml`` (the VM: its name, id,
  version, Now's disk files, the *current* checkpoint) and
  ``Snapshots/<GUID>.vmcx|.xml`` (one per checkpoint: name, id, parent,
  creation time, type, the files it froze). Read by ``storage/hyperv_config``.
- *claimed* file: a frozen file a checkpoint configuration names.
- *plan*: the checkpoints to recreate, parents before children, each with its
  identity (from its configuration, or from its disk file when that is missing
  or damaged: ``source`` says which, ``note`` why), the file of each disk it
  froze, its state files; Now's files; the current checkpoint. Executed by
  ``hyperv_import``.

Where the configuration and the disk files disagree, the configuration decides
names and the tree (it is what Hyper-V Manager shows) and the disk files decide
content: each checkpoint's content is captured from the file it froze, read
through its whole chain, so the bytes are right whatever the tree says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PureWindowsPath
from uuid import UUID

from ckpt.domain import CheckpointType, DiskFormat, InvalidValue, NotFound, VMState
from ckpt.domain.errors import ConfigurationError, VhdxError
from ckpt.domain.naming import check_findable_name
from ckpt.storage.hyperv_config import CheckpointKind, Configuration, FileKind
from ckpt.storage.hyperv_config.vmcx import read_vmcx
from ckpt.storage.hyperv_config.xml_config import read_xml_config
from ckpt.storage.vhd import VhdReader
from ckpt.storage.vhdx_files import find_parent, open_layer_file, open_vhdx_chain

DISK_SUFFIXES = (".vhdx", ".avhdx", ".vhd", ".avhd")
CONFIG_SUFFIXES = (".vmcx", ".xml")


@dataclass(eq=False)
class DiskFile:
    path: Path
    format: DiskFormat
    parent: DiskFile | None = None
    children: list[DiskFile] = field(default_factory=list)

    @property
    def mtime(self) -> float:
        return self.path.stat().st_mtime

    @property
    def base(self) -> DiskFile:
        walk = self
        while walk.parent is not None:
            walk = walk.parent
        return walk

    def ancestors(self) -> list[DiskFile]:
        """Parent first, base last."""
        out, walk = [], self.parent
        while walk is not None:
            out.append(walk)
            walk = walk.parent
        return out


@dataclass
class PlannedCheckpoint:
    key: str
    name: str
    id: UUID | None
    created_at: datetime | None
    type: CheckpointType
    vm_state: VMState
    files: dict[str, DiskFile]  # disk name -> the file it froze
    parent: str | None  # key of the parent checkpoint
    state_files: dict[str, Path]  # "config", "runtime", "device", "memory" -> file
    source: str  # "configuration" or "disk tree"
    note: str = ""
    order: float = 0.0  # creation time (or file time) as a number, for sibling order


@dataclass
class Plan:
    vm_name: str
    hyperv_id: UUID | None
    version: str | None
    configuration: str  # "vmcx", "xml" or ""
    disks: list[tuple[str, DiskFormat, DiskFile]]  # name, format, base
    checkpoints: dict[str, PlannedCheckpoint]
    now: dict[str, DiskFile]  # disk -> the file Now runs on
    current: str | None  # key of Now's parent checkpoint
    notes: list[str]
    files: int
    same_shape: bool = True


def scan(directory: Path) -> dict[Path, DiskFile]:
    """Every disk file below ``directory``, checked, each linked to its parent."""
    if not directory.exists():  # rglob finds nothing there either: say what is wrong
        raise NotFound(f"cannot read folder {str(directory)!r}: No such file or directory")
    paths = sorted(
        p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in DISK_SUFFIXES
    )
    if not paths:
        raise InvalidValue(f"no .vhdx, .avhdx, .vhd or .avhd files below {directory}")
    nodes: dict[Path, DiskFile] = {}
    parents: dict[Path, Path | None] = {}
    for p in paths:
        try:
            with p.open("rb") as f:
                reader = open_layer_file(f, str(p))
                fmt = DiskFormat.VHD if isinstance(reader, VhdReader) else DiskFormat.VHDX
                parents[p.resolve()] = (
                    find_parent(p, reader.parent_locator or {}, directory).resolve()
                    if reader.has_parent
                    else None
                )
        except OSError as e:
            raise VhdxError(f"cannot read {p}: {e.strerror}") from None
        nodes[p.resolve()] = DiskFile(p, fmt)
    for p, parent in parents.items():
        if parent is None:
            continue
        if parent not in nodes:
            raise VhdxError(f"{p}: its parent {parent} is not in {directory}")
        nodes[p].parent = nodes[parent]
        nodes[parent].children.append(nodes[p])
    for node in nodes.values():  # a cycle never reaches a base
        seen: set[int] = set()
        walk: DiskFile | None = node
        while walk is not None:
            if id(walk) in seen:
                raise VhdxError(f"{node.path}: a cycle of parents")
            seen.add(id(walk))
            walk = walk.parent
    for node in nodes.values():
        node.children.sort(key=lambda c: c.mtime)
    for node in nodes.values():  # every link checked: each leaf's chain down to its base
        if not node.children:
            _, opened, _ = open_vhdx_chain(node.path, directory)
            for done in opened:
                done.close()
    return nodes


def read_configurations(
    directory: Path,
) -> tuple[list[tuple[Path, Configuration]], list[str]]:
    """Every configuration file below ``directory`` that reads, and one note per
    file that does not (damaged, or not a Hyper-V configuration)."""
    found: list[tuple[Path, Configuration]] = []
    notes: list[str] = []
    for p in sorted(directory.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in CONFIG_SUFFIXES:
            continue
        try:
            with p.open("rb") as f:
                config = (
                    read_vmcx(f, str(p))
                    if p.suffix.lower() == ".vmcx"
                    else read_xml_config(f, str(p))
                )
        except ConfigurationError as e:
            notes.append(f"{p.relative_to(directory)}: not read ({e})")
            continue
        except OSError as e:
            notes.append(f"{p.relative_to(directory)}: not read ({e.strerror})")
            continue
        found.append((p, config))
    return found, notes


def _leaves(base: DiskFile) -> list[DiskFile]:
    out, stack = [], [base]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if not node.children:
            out.append(node)
    return out


def _shape(base: DiskFile) -> list[int]:
    """Children counts in depth-first order: equal shapes pair the disks' files."""
    out = [len(base.children)]
    for child in base.children:
        out += _shape(child)
    return out


def _type(kind: CheckpointKind | None) -> CheckpointType:
    return (
        CheckpointType.PRODUCTION if kind is CheckpointKind.PRODUCTION else CheckpointType.STANDARD
    )


def _time(t: datetime | None, fallback: float) -> float:
    return t.timestamp() if t is not None else fallback


class _Planner:
    def __init__(self, directory: Path, name: str | None) -> None:
        self.directory = directory
        self.nodes = scan(directory)
        self.by_name: dict[str, DiskFile] = {}
        for node in self.nodes.values():
            self.by_name.setdefault(node.path.name.casefold(), node)
        bases = sorted(
            (n for n in self.nodes.values() if n.parent is None), key=lambda n: n.path.name
        )
        self.disk_of: dict[int, str] = {}
        self.disks: list[tuple[str, DiskFormat, DiskFile]] = []
        for b in bases:
            self.disks.append((b.path.stem, b.format, b))
            self.disk_of[id(b)] = b.path.stem
        self.name = name
        self.notes: list[str] = []
        self.state_by_name = {
            p.name.casefold(): p
            for p in sorted(directory.rglob("*"))
            if p.is_file() and p.suffix.lower() in (".vmrs", ".vsv", ".bin")
        }

    def disk(self, f: DiskFile) -> str:
        return self.disk_of[id(f.base)]

    def file_of(self, windows_path: str, what: str) -> DiskFile | None:
        found = self.by_name.get(PureWindowsPath(windows_path).name.casefold())
        if found is None:
            self.notes.append(f"{what} names {windows_path!r}, which is not in the folder")
        return found

    def state_files(self, cid: UUID, config_path: Path, config: Configuration) -> dict[str, Path]:
        """The checkpoint's state files, found by Hyper-V's names (``<GUID>.vmrs``,
        ``<GUID>.vsv``, ``<GUID>.bin``) anywhere in the folder; its configuration
        file too, unless ckpt wrote it (then it holds nothing Hyper-V gave us)."""
        guid = str(cid).casefold()
        out: dict[str, Path] = {}
        if config.writer != "ckpt":
            out["config"] = config_path
        for role, ext in (("runtime", ".vmrs"), ("device", ".vsv"), ("memory", ".bin")):
            found = self.state_by_name.get(f"{guid}{ext}")
            if found is not None:
                out[role] = found
        return out

    def plan(self) -> Plan:
        configs, notes = read_configurations(self.directory)
        self.notes += notes
        vm_configs = [(p, c) for p, c in configs if c.kind is FileKind.VM]
        cp_configs = [(p, c) for p, c in configs if c.kind is FileKind.CHECKPOINT]
        vm_config: Configuration | None = None
        if len(vm_configs) > 1:
            listed = ", ".join(str(p.relative_to(self.directory)) for p, _ in vm_configs)
            raise InvalidValue(
                f"{self.directory} holds the configurations of {len(vm_configs)} VMs ({listed}): "
                "import one VM's folder at a time"
            )
        if vm_configs:
            vm_config = vm_configs[0][1]
            if vm_config.id is not None:
                others = [(p, c) for p, c in cp_configs if c.vm_id not in (None, vm_config.id)]
                for p, c in others:
                    self.notes.append(
                        f"{p.relative_to(self.directory)}: a checkpoint of another VM "
                        f"({c.vm_id}); left out"
                    )
                cp_configs = [(p, c) for p, c in cp_configs if (p, c) not in others]
        else:
            self.notes.append(
                "no VM configuration (Virtual Machines/*.vmcx or .xml) read: "
                "Now is the newest leaf disk file"
            )
        checkpoints = self._claimed(cp_configs)
        now = self._now(vm_config)
        self._fallbacks(checkpoints, now, bool(cp_configs))
        self._break_cycles(checkpoints)
        current = self._current(checkpoints, now, vm_config)
        configuration = (
            vm_config.format if vm_config else (cp_configs[0][1].format if cp_configs else "")
        )
        fmt_version = vm_config.version if vm_config else None
        name = self.name or (vm_config.name if vm_config and vm_config.name else None)
        if name is not None and self.name is None and _name_problem(name, "VM") is not None:
            self.notes.append(
                f"the VM configuration's name is not usable: {_name_problem(name, 'VM')}"
            )
            name = None
        plan = Plan(
            vm_name=name or "",
            hyperv_id=vm_config.id if vm_config else None,
            version=fmt_version,
            configuration=configuration,
            disks=self.disks,
            checkpoints=checkpoints,
            now=now,
            current=current,
            notes=self.notes,
            files=len(self.nodes),
        )
        return plan

    def _claimed(
        self, cp_configs: list[tuple[Path, Configuration]]
    ) -> dict[str, PlannedCheckpoint]:
        out: dict[str, PlannedCheckpoint] = {}
        for path, c in cp_configs:
            rel = path.relative_to(self.directory)
            if c.id is None or not c.name:
                self.notes.append(
                    f"{rel}: no checkpoint id or name in it; its disk files decide instead"
                )
                continue
            problem = _name_problem(c.name, "checkpoint")
            if problem is not None:
                self.notes.append(f"{rel}: {problem}; its disk files decide instead")
                continue
            files: dict[str, DiskFile] = {}
            for d in c.disks:
                f = self.file_of(d.path, str(rel))
                if f is not None:
                    files[self.disk(f)] = f
            if not files:
                self.notes.append(f"{rel}: none of its disk files is in the folder; left out")
                continue
            key = str(c.id)
            if key in out:
                self.notes.append(f"{rel}: a second configuration of checkpoint {c.id}; left out")
                continue
            state = self.state_files(c.id, path, c)
            out[key] = PlannedCheckpoint(
                key=key,
                name=c.name,
                id=c.id,
                created_at=c.created_at,
                type=_type(c.checkpoint_kind),
                vm_state=VMState.RUNNING if "memory" in state or c.saved_memory else VMState.OFF,
                files=files,
                parent=None if c.parent is None else str(c.parent),
                state_files=state,
                source="configuration",
                order=_time(c.created_at, min(f.mtime for f in files.values())),
            )
            for p in c.problems:
                self.notes.append(f"{rel}: {p}")
        return out

    def _now(self, vm_config: Configuration | None) -> dict[str, DiskFile]:
        now: dict[str, DiskFile] = {}
        if vm_config is not None:
            for d in vm_config.disks:
                f = self.file_of(d.path, "the VM configuration")
                if f is not None:
                    now[self.disk(f)] = f
        for disk, _, base in self.disks:
            if disk not in now:
                now[disk] = max(_leaves(base), key=lambda n: n.mtime)
                if vm_config is not None:
                    self.notes.append(
                        f"disk {disk!r}: the VM configuration does not name its file; "
                        "Now is its newest leaf"
                    )
        return now

    def _owner(self, checkpoints: dict[str, PlannedCheckpoint]) -> dict[int, str]:
        return {id(f): cp.key for cp in checkpoints.values() for f in cp.files.values()}

    def _fallbacks(
        self, checkpoints: dict[str, PlannedCheckpoint], now: dict[str, DiskFile], any_config: bool
    ) -> None:
        """Checkpoints for frozen files no configuration claims (named after their file)."""
        first = self.disks[0][0]
        now_file = now[first]
        claimed = self._owner(checkpoints)
        claimed_ancestors = {
            id(a) for cp in checkpoints.values() for f in cp.files.values() for a in f.ancestors()
        }
        base = self.disks[0][2]
        # every file but Now's was frozen by a checkpoint: one with children, or a leaf
        # (a checkpoint with no children whose running file went at the next apply)
        frozen = [n for n in _walk(base) if n is not now_file]
        wanted = set()
        for cp in checkpoints.values():  # a parent id whose configuration is missing
            if cp.parent is not None and cp.parent not in checkpoints:
                f = cp.files.get(first)
                anc = next((a for a in (f.ancestors() if f else []) if id(a) not in claimed), None)
                if anc is not None:
                    wanted.add(id(anc))
                    cp.parent = f"file:{anc.path}"
                else:
                    self.notes.append(
                        f"checkpoint {cp.name!r}: its parent {cp.parent} is not in the folder; "
                        "it becomes a root"
                    )
                    cp.parent = None
        for n in frozen:
            if id(n) in claimed:
                continue
            if id(n) in claimed_ancestors and id(n) not in wanted:
                if len(n.children) > 1:
                    self.notes.append(
                        f"{n.path.name}: kept as the parent of {len(n.children)} branches "
                        "(a deleted checkpoint's disk); no checkpoint"
                    )
                continue
            why = "no configuration names it" if any_config else "no checkpoint configuration read"
            key = f"file:{n.path}"
            files = {first: n}
            checkpoints[key] = PlannedCheckpoint(
                key=key,
                name=f"Imported {n.path.name}"[:100],
                id=None,
                created_at=None,
                type=CheckpointType.STANDARD,
                vm_state=VMState.OFF,
                files=files,
                parent=None,
                state_files={},
                source="disk tree",
                note=f"named after its disk file: {why}",
                order=n.mtime,
            )
        owner = self._owner(checkpoints)
        for cp in checkpoints.values():
            if cp.source != "disk tree":
                continue
            f = cp.files[first]
            cp.parent = next((owner[id(a)] for a in f.ancestors() if id(a) in owner), None)
        if len(self.disks) > 1:
            self._pair_other_disks(checkpoints)

    def _pair_other_disks(self, checkpoints: dict[str, PlannedCheckpoint]) -> None:
        """A disk-tree checkpoint's files of the other disks: the file at the same
        place of each disk's tree when the trees have the same shape."""
        shapes = {tuple(_shape(b)) for _, _, b in self.disks}
        first_base = self.disks[0][2]
        order = list(_walk(first_base))
        positions = {id(n): i for i, n in enumerate(order)}
        for disk, _, base in self.disks[1:]:
            other = list(_walk(base))
            for cp in checkpoints.values():
                if disk in cp.files:
                    continue
                first = cp.files.get(self.disks[0][0])
                if len(shapes) == 1 and first is not None:
                    cp.files[disk] = other[positions[id(first)]]
                else:
                    cp.note += (
                        f"; disk {disk!r} not paired (its files form another tree): "
                        "its content stays as its parent's"
                    )

    def _break_cycles(self, checkpoints: dict[str, PlannedCheckpoint]) -> None:
        """Configurations whose parents form a cycle (damaged or hostile files) never
        reach a root: the earliest of each such group becomes a root, noted."""
        while True:
            reached: set[str] = set()
            frontier = [k for k, cp in checkpoints.items() if cp.parent is None]
            kids: dict[str, list[str]] = {}
            for k, cp in checkpoints.items():
                if cp.parent is not None:
                    kids.setdefault(cp.parent, []).append(k)
            while frontier:
                k = frontier.pop()
                reached.add(k)
                frontier.extend(kids.get(k, []))
            stray = [cp for k, cp in checkpoints.items() if k not in reached]
            if not stray:
                return
            first = min(stray, key=lambda cp: (cp.order, cp.key))
            self.notes.append(
                f"checkpoint {first.name!r}: its parents form a cycle; it becomes a root"
            )
            first.parent = None

    def _current(
        self,
        checkpoints: dict[str, PlannedCheckpoint],
        now: dict[str, DiskFile],
        vm_config: Configuration | None,
    ) -> str | None:
        if (
            vm_config is not None
            and vm_config.parent is not None
            and str(vm_config.parent) in checkpoints
        ):
            return str(vm_config.parent)
        if vm_config is not None and vm_config.parent is not None:
            self.notes.append(f"the current checkpoint {vm_config.parent} is not in the folder")
        owner = self._owner(checkpoints)
        f = now[self.disks[0][0]]
        return next((owner[id(a)] for a in f.ancestors() if id(a) in owner), None)


def _name_problem(name: str, what: str) -> str | None:
    try:
        check_findable_name(name, what)
    except InvalidValue as e:
        return str(e)
    return None


def _walk(base: DiskFile) -> list[DiskFile]:
    """Depth first, children in their (time) order."""
    out, stack = [], [base]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.children))
    return out


def plan_folder(directory: Path, name: str | None = None) -> Plan:
    return _Planner(directory, name).plan()
