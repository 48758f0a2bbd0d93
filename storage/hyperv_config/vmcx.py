"""What a VMCX file means: its key tree read into (and written from) a ``Configuration``.

Terms:
    key          a ``/``-joined path in the key tree (``vmcx_file``).
    known key    one seen in a configuration Windows wrote (test.vmcx, and the
                 VM files of the public sources in docs/vmcx.md):
                 ``configuration/properties/{name,global_id,type_id,version,
                 creation_time}``, ``configuration/settings/global/logical_id``,
                 the drives under the IDE controller node
                 ``configuration/_83f8638b-..._/controller<c>/drive<d>/{type,pathname}``
                 and under each synthetic SCSI controller's node (its instance
                 id is listed in ``configuration/manifest/vdevNNN``),
                 ``configuration/global_settings/snapshots/user_type``.
    chosen key   one no public source shows (there is no checkpoint VMCX among
                 them): the parent checkpoint, the checkpoint type, the writer
                 marker. We write ``configuration/properties/parent_snapshot_id``,
                 ``.../snapshot_type`` and ``.../ckpt_writer``; the reader also
                 accepts the other plausible names in ``PARENT_KEYS``.
    version      ``configuration/properties/version``: major << 8 | minor
                 (0x900 = 2304 is 9.0; the 2012 R2 XML files say 1280 = 5.0).
    created      ``configuration/properties/creation_time``: 8 bytes, a Windows
                 FILETIME (100 ns ticks since 1601-01-01 UTC), little-endian.
    checkpoint   a file is a checkpoint configuration when its ``type_id`` names
                 a snapshot (``Snapshots``, ``Microsoft:Hyper-V:Snapshot:*``) or
                 it says ``is_snapshot``; ``Virtual Machines`` is a VM. Note
                 ``properties/subtype`` is the VM generation (0 = 1, 1 = 2), not
                 a checkpoint marker.

A sound file lacking a field leaves it None and says so in ``problems``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import BinaryIO
from uuid import UUID, uuid5

from .model import CheckpointKind, Configuration, ConfiguredDisk, FileKind
from .vmcx_file import KeyTree, Value, read_key_tree, write_key_tree

ROOT = "configuration"
PROPERTIES = f"{ROOT}/properties"
NAME_KEY = f"{PROPERTIES}/name"
ID_KEY = f"{PROPERTIES}/global_id"
TYPE_KEY = f"{PROPERTIES}/type_id"
VERSION_KEY = f"{PROPERTIES}/version"
CREATED_KEY = f"{PROPERTIES}/creation_time"
VM_ID_KEY = f"{ROOT}/settings/global/logical_id"
USER_TYPE_KEY = f"{ROOT}/global_settings/snapshots/user_type"
WRITER_KEY = f"{PROPERTIES}/ckpt_writer"
# Ours: whether a checkpoint's runtime state holds memory (a Hyper-V VMCX says it in
# no key we have seen; the VMRS itself does, read_vmrs_summary).
SAVED_MEMORY_KEY = f"{PROPERTIES}/ckpt_saved_memory"
KIND_KEY = f"{PROPERTIES}/snapshot_type"
IS_SNAPSHOT_KEY = f"{PROPERTIES}/is_snapshot"
PARENT_KEYS = (  # the first is the one we write
    f"{PROPERTIES}/parent_snapshot_id",
    f"{PROPERTIES}/parent_id",
    f"{PROPERTIES}/parent",
    f"{ROOT}/global_settings/snapshots/parent",
    f"{ROOT}/global_settings/snapshots/parent_id",
    f"{ROOT}/global_settings/snapshots/current",
    f"{ROOT}/global_settings/snapshots/current_snapshot",
)
VM_TYPE_ID = "Virtual Machines"
CHECKPOINT_TYPE_ID = "Snapshots"  # chosen: the folder checkpoint files live in, as VMs' is

IDE_DEVICE = "83f8638b-8dca-4152-9eda-2ca8b33039b4"  # Microsoft Emulated IDE Controller
SCSI_DEVICE = "d422512d-2bf2-4752-809d-7b82b5fcb1b4"  # Synthetic SCSI Controller
GUEST_STATE_DEVICE = "917bd8cb-3bb6-4124-9383-b7d21ac07f79"  # Microsoft Guest Runtime State
STATE_EXTENSIONS = (".vmrs", ".vsv", ".bin", ".vmgs")
OUR_STATE_FILES = f"{ROOT}/ckpt_state_files"  # chosen: Hyper-V's key for a VMRS is unknown

# Msvm_VirtualSystemSettingData.UserSnapshotType: 2 disabled, 3 production,
# 4 production only, 5 standard (Microsoft's WMI reference).
USER_TYPE_PRODUCTION, USER_TYPE_PRODUCTION_ONLY, USER_TYPE_STANDARD = 3, 4, 5

_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_DRIVE = re.compile(r"controller(\d+)/drive(\d+)")
_LOCATION = re.compile(r"(ide|scsi)(\d+)/(\d+)")
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
_NAMESPACE = UUID("6f1c59f4-0a4e-4a43-9a0b-3c6b1bbf5e0e")  # ckpt's SCSI controller ids


def read_vmcx(stream: BinaryIO, name: str = "<stream>") -> Configuration:
    """Reads a VMCX configuration; ``ConfigurationError`` if its container is damaged."""
    tree = read_key_tree(stream, name)
    problems: list[str] = []
    kind = _kind(tree, problems)
    config_id = _guid(tree, ID_KEY, problems, required=True)
    vm_id = _guid(tree, VM_ID_KEY, problems, required=kind is FileKind.CHECKPOINT)
    parent = None
    for key in PARENT_KEYS:
        if tree.get(key) is not None:
            parent = _guid(tree, key, problems, required=False)
            break
    created = _created(tree, problems, required=kind is FileKind.CHECKPOINT)
    writer = tree.get(WRITER_KEY)
    saved = tree.get(SAVED_MEMORY_KEY)
    return Configuration(
        kind=kind,
        format="vmcx",
        id=config_id,
        name=_text(tree, NAME_KEY, problems),
        version=_version(tree, problems),
        vm_id=vm_id if kind is FileKind.CHECKPOINT else None,
        parent=parent,
        created_at=created,
        checkpoint_kind=_checkpoint_kind(tree, problems) if kind is FileKind.CHECKPOINT else None,
        disks=tuple(_disks(tree)),
        state_files=tuple(_state_files(tree)),
        saved_memory=saved if isinstance(saved, bool) else None,
        writer=writer if isinstance(writer, str) else None,
        problems=tuple(problems),
    )


def _kind(tree: KeyTree, problems: list[str]) -> FileKind:
    type_id = tree.get(TYPE_KEY)
    if tree.get(IS_SNAPSHOT_KEY) is True:
        return FileKind.CHECKPOINT
    if isinstance(type_id, str):
        lowered = type_id.lower()
        if "snapshot" in lowered or "checkpoint" in lowered:
            return FileKind.CHECKPOINT
        if lowered == VM_TYPE_ID.lower() or ":system:" in lowered:
            return FileKind.VM
        problems.append(f"{TYPE_KEY}: unknown type {type_id!r}, read as a VM configuration")
        return FileKind.VM
    problems.append(f"{TYPE_KEY}: missing, read as a VM configuration")
    return FileKind.VM


def _text(tree: KeyTree, key: str, problems: list[str]) -> str | None:
    value = tree.get(key)
    if value is None:
        problems.append(f"{key}: missing")
        return None
    if not isinstance(value, str):
        problems.append(f"{key}: not a string ({type(value).__name__})")
        return None
    return value


def _guid(tree: KeyTree, key: str, problems: list[str], *, required: bool) -> UUID | None:
    value = tree.get(key)
    if value is None:
        if required:
            problems.append(f"{key}: missing")
        return None
    match = _GUID.search(value) if isinstance(value, str) else None
    if match is None:
        if value != "":
            problems.append(f"{key}: {value!r} holds no GUID")
        elif required:
            problems.append(f"{key}: empty")
        return None
    guid = UUID(match.group(0))
    return None if guid.int == 0 else guid


def _version(tree: KeyTree, problems: list[str]) -> str | None:
    value = tree.get(VERSION_KEY)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 16:
        problems.append(f"{VERSION_KEY}: missing or not a 16-bit integer ({value!r})")
        return None
    return f"{value >> 8}.{value & 0xFF}"


def _created(tree: KeyTree, problems: list[str], *, required: bool) -> datetime | None:
    value = tree.get(CREATED_KEY)
    if value is None:
        if required:
            problems.append(f"{CREATED_KEY}: missing")
        return None
    if isinstance(value, bytes) and len(value) == 8:
        ticks = int.from_bytes(value, "little")
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        ticks = value
    else:
        problems.append(f"{CREATED_KEY}: not an 8-byte FILETIME ({value!r:.40})")
        return None
    try:
        return _FILETIME_EPOCH + timedelta(microseconds=ticks // 10)
    except OverflowError:
        problems.append(f"{CREATED_KEY}: FILETIME {ticks} is past year 9999")
        return None


def _checkpoint_kind(tree: KeyTree, problems: list[str]) -> CheckpointKind:
    explicit = tree.get(KIND_KEY)
    if isinstance(explicit, str) and explicit.lower() in {k.value for k in CheckpointKind}:
        return CheckpointKind(explicit.lower())
    type_id = tree.get(TYPE_KEY)
    lowered = type_id.lower() if isinstance(type_id, str) else ""
    if "recovery" in lowered:
        return CheckpointKind.RECOVERY
    if "replica" in lowered:
        return CheckpointKind.REPLICA
    user_type = tree.get(USER_TYPE_KEY)
    if user_type == USER_TYPE_STANDARD:
        return CheckpointKind.STANDARD  # a standard setting takes nothing else
    if user_type == USER_TYPE_PRODUCTION_ONLY:
        return CheckpointKind.PRODUCTION  # production only never falls back
    if user_type == USER_TYPE_PRODUCTION:
        problems.append(
            f"{USER_TYPE_KEY}: production (may have fallen back to standard), read as production"
        )
        return CheckpointKind.PRODUCTION
    problems.append(f"{KIND_KEY}: missing and no checkpoint setting to infer it from")
    return CheckpointKind.UNKNOWN


def _controllers(tree: KeyTree) -> Iterator[tuple[str, int, str]]:
    """(bus, controller number, node path) for the IDE node and each SCSI controller:
    SCSI numbers follow the manifest's order (a node named by the device id itself
    comes first, as dissect.target also accepts it)."""
    children = {name.lower(): name for name in tree.children(ROOT)}
    if f"_{IDE_DEVICE}_" in children:
        yield "ide", 0, f"{ROOT}/{children[f'_{IDE_DEVICE}_']}"
    instances: list[str] = []
    if f"_{SCSI_DEVICE}_" in children:
        instances.append(SCSI_DEVICE)
    for vdev in tree.children(f"{ROOT}/manifest"):
        device = tree.get(f"{ROOT}/manifest/{vdev}/device")
        instance = tree.get(f"{ROOT}/manifest/{vdev}/instance")
        is_scsi = isinstance(device, str) and device.lower() == SCSI_DEVICE
        if is_scsi and isinstance(instance, str) and instance.lower() not in instances:
            instances.append(instance.lower())
    for number, instance in enumerate(instances):
        if f"_{instance}_" in children:
            yield "scsi", number, f"{ROOT}/{children[f'_{instance}_']}"


def _disks(tree: KeyTree) -> Iterator[ConfiguredDisk]:
    for bus, number, node in _controllers(tree):
        for controller in tree.children(node):
            for drive in tree.children(f"{node}/{controller}"):
                match = _DRIVE.fullmatch(f"{controller}/{drive}")
                base = f"{node}/{controller}/{drive}"
                path, kind = tree.get(f"{base}/pathname"), tree.get(f"{base}/type")
                if match is None or not isinstance(path, str) or not path or kind != "VHD":
                    continue  # an empty drive, a DVD (ISO) or floppy (VFD)
                # IDE: two controllers of two drives; SCSI: one node per controller
                c = int(match.group(1)) if bus == "ide" else number
                yield ConfiguredDisk(f"{bus}{c}/{match.group(2)}", path)


def _state_files(tree: KeyTree) -> Iterator[str]:
    """Every string that is a path of a state file (VMRS, VSV, BIN, VMGS), once."""
    seen: set[str] = set()
    for _, value in tree.walk():
        if not isinstance(value, str) or value in seen or "\\" not in value:
            continue
        if value.lower().endswith(STATE_EXTENSIONS):
            seen.add(value)
            yield value


def read_vmrs_summary(stream: BinaryIO, name: str = "<stream>") -> dict[str, object]:
    """What a VMRS says about itself: its configuration version, whether it holds
    guest memory (``RamBlock<n>``/``RamMemoryBlock<n>`` keys) and saved device state
    (a ``savedstate`` node), and how many keys it has."""
    tree = read_key_tree(stream, name)
    segments = {part for path, _ in tree.walk() for part in path.split("/")}
    segments |= {part for path in tree.nodes for part in path.split("/") if part}
    version = tree.get(VERSION_KEY)
    return {
        "version": _version(tree, []) if version is not None else None,
        "holds_memory": any(s.startswith(("RamBlock", "RamMemoryBlock")) for s in segments),
        "saved_state": "savedstate" in segments,
        "keys": len(tree.leaves),
    }


def write_vmcx(out: BinaryIO, config: Configuration) -> None:
    """Writes ``config`` as a VMCX file with Hyper-V's key names where they are
    known (docs/vmcx.md), the chosen ones elsewhere, and ``ckpt_writer = ckpt``.
    ``ValueError`` for a disk location other than ``ide<c>/<d>`` or ``scsi<c>/<d>``."""
    write_key_tree(out, _values(config))


def _values(config: Configuration) -> Iterator[tuple[str, Value]]:
    checkpoint = config.kind is FileKind.CHECKPOINT
    if config.id is not None:
        yield ID_KEY, str(config.id).upper()
    if config.name is not None:
        yield NAME_KEY, config.name
    yield TYPE_KEY, CHECKPOINT_TYPE_ID if checkpoint else VM_TYPE_ID
    if config.version is not None:
        major, _, minor = config.version.partition(".")
        yield VERSION_KEY, int(major) << 8 | int(minor or 0)
    if config.created_at is not None:
        created = config.created_at
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        ticks = (created - _FILETIME_EPOCH) // timedelta(microseconds=1) * 10
        yield CREATED_KEY, ticks.to_bytes(8, "little")
    if config.parent is not None:
        yield PARENT_KEYS[0], str(config.parent).upper()
    if checkpoint and config.checkpoint_kind is not None:
        yield KIND_KEY, config.checkpoint_kind.value
    yield WRITER_KEY, "ckpt"
    if config.saved_memory is not None:
        yield SAVED_MEMORY_KEY, config.saved_memory
    vm_id = config.vm_id if checkpoint else config.id
    if vm_id is not None:
        yield VM_ID_KEY, str(vm_id).upper()
    yield from _disk_values(config)
    guest_state = [p for p in config.state_files if p.lower().endswith(".vmgs")][:1]
    if guest_state:
        yield f"{ROOT}/_{GUEST_STATE_DEVICE}_/StateFilePath", guest_state[0]
    others = [p for p in config.state_files if p not in guest_state]
    for number, path in enumerate(others):
        yield f"{OUR_STATE_FILES}/file{number}", path


def _disk_values(config: Configuration) -> Iterator[tuple[str, Value]]:
    ide: list[tuple[int, int, str]] = []
    scsi: dict[int, list[tuple[int, str]]] = {}
    for disk in config.disks:
        match = _LOCATION.fullmatch(disk.location)
        if match is None:
            raise ValueError(f"disk {disk.path!r}: location {disk.location!r} is not ide<c>/<d>")
        controller, drive = int(match.group(2)), int(match.group(3))
        if match.group(1) == "ide":
            ide.append((controller, drive, disk.path))
        else:
            scsi.setdefault(controller, []).append((drive, disk.path))
    devices: list[tuple[str, str, str]] = []  # device, instance, name
    if ide:
        devices.append((IDE_DEVICE, IDE_DEVICE, "Microsoft Emulated IDE Controller"))
        for controller, drive, path in sorted(ide):
            base = f"{ROOT}/_{IDE_DEVICE}_/controller{controller}/drive{drive}"
            yield f"{base}/type", "VHD"
            yield f"{base}/pathname", path
    # Windows numbers SCSI controllers by manifest order: write every number up to
    # the highest used, so that scsi<c> reads back as the same c.
    for number in range(max(scsi) + 1 if scsi else 0):
        instance = str(uuid5(_NAMESPACE, f"{config.vm_id or config.id}/scsi{number}"))
        devices.append((SCSI_DEVICE, instance, "Synthetic SCSI Controller"))
        for drive, path in sorted(scsi.get(number, [])):
            base = f"{ROOT}/_{instance}_/controller0/drive{drive}"
            yield f"{base}/type", "VHD"
            yield f"{base}/pathname", path
    if devices:
        yield f"{ROOT}/manifest/version", 512
        yield f"{ROOT}/manifest/size", len(devices)
    for number, (device, instance, name) in enumerate(devices, start=1):
        base = f"{ROOT}/manifest/vdev{number:03d}"
        yield f"{base}/device", device
        yield f"{base}/instance", instance
        yield f"{base}/name", name
        yield f"{base}/flags", 1
