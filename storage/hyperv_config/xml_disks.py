"""The virtual hard disks of a 2012 R2 XML configuration: controllers and drives.

Terms (sources in docs/hyperv_xml.md):
    device section   ``_<instance GUID>_`` below the root, one per virtual device
                     instance, lower-case GUID.
    manifest         ``manifest/vdevNNN`` (``device``: the device class GUID,
                     ``instance``: the section's GUID): which sections are which
                     devices. A Windows-written 5.0 file lists the synthetic SCSI
                     controller there but not the emulated IDE controller, whose
                     section is named after its class GUID.
    drive            ``controller<N>/drive<M>`` inside a controller section, with
                     ``type`` (``VHD`` for a virtual hard disk, also for VHDX and
                     AVHD(X) files; ``ISO``, ``VFD``, ``NONE`` for the rest) and
                     ``pathname``.
    location         how ckpt names a drive: ``ide<N>/<M>`` (controller N of the IDE
                     device, 2 x 2 drives), ``scsi<K>/<M>`` (the K-th SCSI controller
                     in manifest order, 64 drives each; each synthetic SCSI controller
                     is its own device with one ``controller0``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from uuid import UUID, uuid5

from .model import ConfiguredDisk
from .xml_tree import Node

IDE_CONTROLLER = UUID("83f8638b-8dca-4152-9eda-2ca8b33039b4")  # Microsoft Emulated IDE Controller
SCSI_CONTROLLER = UUID("d422512d-2bf2-4752-809d-7b82b5fcb1b4")  # Synthetic SCSI Controller

_NUMBERED = re.compile(r"(controller|drive)([0-9]{1,3})")
_IDE_LOCATION = re.compile(r"ide([01])/([01])")
_SCSI_LOCATION = re.compile(r"scsi([0-3])/([0-9]|[1-5][0-9]|6[0-3])")

# reads a typed string below a node (raising on damage); the reader's own
StringReader = Callable[[Node, str], str | None]


def read_disks(root: Node, string: StringReader, problems: list[str]) -> tuple[ConfiguredDisk, ...]:
    """Every drive of type VHD with a path, IDE first, in controller order."""
    sections: dict[str, Node] = {}
    for child in root.children:  # one pass: a hostile file may have 10^5 sections
        sections.setdefault(child.tag, child)
    disks: list[ConfiguredDisk] = []
    scsi = 0
    for bus, tag in _controller_sections(root, sections, string):
        section = sections.get(tag)
        if section is None:
            problems.append(f"manifest names device {tag[:40]}, the file has no such element")
            scsi += bus == "scsi"
            continue
        for number, controller in _numbered(section, "controller"):
            where = f"ide{number}" if bus == "ide" else f"scsi{scsi}"
            scsi += bus == "scsi"
            for drive_number, drive in _numbered(controller, "drive"):
                kind = string(drive, "type") or ""
                path = string(drive, "pathname") or ""
                if kind.strip().upper() == "VHD" and path:
                    disks.append(ConfiguredDisk(f"{where}/{drive_number}", path))
    return tuple(disks)


def _controller_sections(
    root: Node, sections: dict[str, Node], string: StringReader
) -> list[tuple[str, str]]:
    """(bus, section tag) of each disk controller device: IDE first, then SCSI in
    manifest order, then a section named after a class GUID the manifest left out."""
    found: dict[str, dict[str, None]] = {"ide": {}, "scsi": {}}  # ordered sets
    manifest = root.child("manifest")
    for vdev in manifest.children if manifest else []:
        if not vdev.tag.startswith("vdev"):
            continue
        device = (string(vdev, "device") or "").strip().lower()
        instance = (string(vdev, "instance") or "").strip().lower()
        bus = {str(IDE_CONTROLLER): "ide", str(SCSI_CONTROLLER): "scsi"}.get(device)
        if bus and instance:
            found[bus].setdefault(f"_{instance}_")
    ide_class, scsi_class = f"_{IDE_CONTROLLER}_", f"_{SCSI_CONTROLLER}_"
    ide = [ide_class] if ide_class in sections and ide_class not in found["ide"] else []
    ide += list(found["ide"])
    scsi = list(found["scsi"])
    scsi += [scsi_class] if scsi_class in sections and scsi_class not in found["scsi"] else []
    return [("ide", t) for t in ide] + [("scsi", t) for t in scsi]


def _numbered(node: Node, prefix: str) -> list[tuple[int, Node]]:
    """Children named ``<prefix><number>``, in number order."""
    items = []
    for child in node.children:
        match = _NUMBERED.fullmatch(child.tag)
        if match and match.group(1) == prefix:
            items.append((int(match.group(2)), child))
    return sorted(items, key=lambda item: item[0])


def add_disks(root: Node, disks: tuple[ConfiguredDisk, ...], seed: str) -> None:
    """The controller sections and the manifest for ``disks``. SCSI controller
    instance GUIDs are derived from ``seed`` (the configuration's id), so the same
    configuration always writes the same file. ValueError: a location outside
    ``ide0-1/0-1`` and ``scsi0-3/0-63``, given twice, or an empty path."""
    ide, scsi = _controllers(disks)
    if ide:
        _add_controllers(root.add(f"_{IDE_CONTROLLER}_"), ide)
    instances = [uuid5(SCSI_CONTROLLER, f"{seed}/scsi{k}") for k in range(len(scsi))]
    for instance, drives in zip(instances, scsi, strict=True):
        _add_controllers(root.add(f"_{instance}_"), {0: drives})
    vdevs = [(IDE_CONTROLLER, IDE_CONTROLLER, "Microsoft Emulated IDE Controller")] if ide else []
    vdevs += [(SCSI_CONTROLLER, instance, "Synthetic SCSI Controller") for instance in instances]
    manifest = root.add("manifest")
    manifest.add("size", "integer", str(len(vdevs)))
    for number, (device, instance, label) in enumerate(vdevs, 1):
        vdev = manifest.add(f"vdev{number:03d}")
        vdev.add("device", "string", str(device))
        vdev.add("flags", "integer", "1")
        vdev.add("instance", "string", str(instance).upper())
        vdev.add("name", "string", label)
    # what manifest/version holds in a Windows-written 5.0 file
    manifest.add("version", "integer", "260")


def _controllers(
    disks: tuple[ConfiguredDisk, ...],
) -> tuple[dict[int, dict[int, str]], list[dict[int, str]]]:
    """IDE drives by controller and drive number; SCSI drives per controller 0..K
    (empty controllers fill gaps, so the K-th SCSI controller reads back as K)."""
    ide: dict[int, dict[int, str]] = {}
    scsi: dict[int, dict[int, str]] = {}
    for disk in disks:
        match = _IDE_LOCATION.fullmatch(disk.location) or _SCSI_LOCATION.fullmatch(disk.location)
        if match is None or not disk.path:
            raise ValueError(f"disk {disk.location!r} {disk.path!r}: not a writable location")
        bus = ide if disk.location.startswith("ide") else scsi
        drives = bus.setdefault(int(match.group(1)), {})
        if int(match.group(2)) in drives:
            raise ValueError(f"two disks at {disk.location}")
        drives[int(match.group(2))] = disk.path
    return ide, [scsi.get(k, {}) for k in range(max(scsi, default=-1) + 1)]


def _add_controllers(section: Node, controllers: dict[int, dict[int, str]]) -> None:
    for number in sorted(controllers):
        controller = section.add(f"controller{number}")
        for drive_number, path in sorted(controllers[number].items()):
            drive = controller.add(f"drive{drive_number}")
            drive.add("pathname", "string", path)
            drive.add("type", "string", "VHD")
