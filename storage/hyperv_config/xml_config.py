"""Read and write a Hyper-V 2012 R2 XML configuration file (configuration version 5.0).

Terms (docs/hyperv_xml.md gives the source of every element and marks inferences):
    VM file          ``Virtual Machines/<VM GUID>.xml``: ``properties/type_id`` is
                     ``Virtual Machines`` and ``properties/global_id`` equals
                     ``settings/global/logical_id`` (both seen in Windows-written files).
    checkpoint file  ``Snapshots/<GUID>.xml``: ``global_id`` is the checkpoint and
                     ``logical_id`` the VM (inferred); a ``type_id`` other than
                     ``Virtual Machines`` marks one too (ckpt writes ``Snapshots``,
                     inferred). Either sign makes the file a checkpoint.
    version          ``properties/version``: major * 256 + minor (1280 = 5.0).
    creation time    ``properties/creation_time``: base64 of 8 bytes, a little-endian
                     FILETIME (100 ns ticks since 1601-01-01 UTC).
    disk             a drive of type ``VHD`` with a non-empty ``pathname`` under
                     ``_<controller instance>_/controller<N>/drive<M>``. The emulated
                     IDE controller's instance is its class GUID (location
                     ``ide<N>/<M>``); each synthetic SCSI controller has its own
                     instance, listed in ``manifest/vdevNNN`` (``scsi<K>/<M>``, K
                     counting SCSI controllers in manifest order).
    state files      ``savedstate/vsvlocation`` and ``savedstate/memlocation`` (names
                     as vmms.exe reads them; that 5.0 files hold file paths there is
                     inferred).
    ckpt elements    ``properties/ckpt_writer`` ("ckpt"), ``properties/ckpt_parent``
                     and ``properties/ckpt_checkpoint_type``: no public source shows
                     the element Hyper-V uses for the parent (or current) checkpoint
                     or the checkpoint type, so ckpt writes and reads its own.

A damaged structure (not XML, wrong root, a value that is not of its declared
type) raises ``ConfigurationError``; a well-typed value ckpt cannot use (an id
that is not a GUID, a timestamp out of range) leaves the field None and adds a
line to ``problems``.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from typing import BinaryIO
from uuid import UUID

from ckpt.domain.errors import ConfigurationError

from .model import CheckpointKind, Configuration, FileKind
from .xml_disks import add_disks, read_disks
from .xml_tree import MAX_FILE_SIZE, Node, parse_document, render

VM_TYPE_ID = "Virtual Machines"
CHECKPOINT_TYPE_ID = "Snapshots"  # inferred: the folder name, as for VM files
WRITER = "ckpt"
FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
# Production checkpoints need 6.2 (Microsoft's VM version table), so a user
# checkpoint of an older configuration is a standard one.
FIRST_PRODUCTION_VERSION = (6, 2)

NAME, ID, TYPE_ID = "properties/name", "properties/global_id", "properties/type_id"
CREATED, VERSION, LOGICAL_ID = (
    "properties/creation_time",
    "properties/version",
    "settings/global/logical_id",
)
VSV, BIN = "savedstate/vsvlocation", "savedstate/memlocation"
PARENT, KIND, MARKER, SAVED_MEMORY = (
    "properties/ckpt_parent",
    "properties/ckpt_checkpoint_type",
    "properties/ckpt_writer",
    "properties/ckpt_saved_memory",  # a checkpoint's memory saved ("True"/"False")
)

_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")
_VERSION = re.compile(r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})")


def read_xml_config(stream: BinaryIO, name: str = "<stream>") -> Configuration:
    """The configuration ``stream`` holds; ConfigurationError naming ``name`` and
    the element when the file is damaged."""
    data = stream.read(MAX_FILE_SIZE + 1)
    if len(data) > MAX_FILE_SIZE:
        raise ConfigurationError(
            f"{name}: larger than {MAX_FILE_SIZE} bytes, too large for a configuration file"
        )
    root = parse_document(data, name)
    if root.tag != "configuration":
        raise ConfigurationError(f"{name}: root element is <{root.tag}>, not <configuration>")
    return _Reader(root, name).configuration()


def write_xml_config(out: BinaryIO, config: Configuration) -> None:
    """``config`` as a 2012 R2 configuration file; ValueError for a value the
    format cannot hold (see ``_tree``)."""
    out.write(render(_tree(config)))


class _Reader:
    def __init__(self, root: Node, name: str) -> None:
        self.root = root
        self.name = name
        self.problems: list[str] = []

    def configuration(self) -> Configuration:
        type_id = self.string(self.root, TYPE_ID)
        own_id, logical_id = self.guid(ID), self.guid(LOGICAL_ID)
        if type_id not in (None, VM_TYPE_ID, CHECKPOINT_TYPE_ID):
            self.problems.append(
                f"{TYPE_ID} {type_id[:40]!r} is not one ckpt knows: read as a checkpoint"
            )
        checkpoint = (type_id is not None and type_id != VM_TYPE_ID) or (
            own_id is not None and logical_id is not None and own_id != logical_id
        )
        name = self.string(self.root, NAME)
        if not name:
            self.problems.append(f"no {NAME}: the file names no VM or checkpoint")
        if own_id is None and not self.problems_about(ID):
            self.problems.append(f"no {ID}: the file gives no id")
        version = self.version()
        return Configuration(
            kind=FileKind.CHECKPOINT if checkpoint else FileKind.VM,
            format="xml",
            id=own_id,
            name=name or None,
            version=version,
            vm_id=logical_id if checkpoint else None,
            parent=self.guid(PARENT),
            created_at=self.created_at(),
            checkpoint_kind=self.checkpoint_kind(version) if checkpoint else None,
            disks=read_disks(self.root, self.string, self.problems),
            state_files=tuple(
                p for p in (self.string(self.root, VSV), self.string(self.root, BIN)) if p
            ),
            saved_memory={"True": True, "False": False}.get(
                self.string(self.root, SAVED_MEMORY) or ""
            ),
            writer=self.string(self.root, MARKER) or None,
            problems=tuple(self.problems),
        )

    def problems_about(self, path: str) -> bool:
        return any(p.startswith(path) for p in self.problems)

    # -- typed values: a wrong declared type or an unparsable value is damage
    def leaf(self, base: Node, path: str, type_: str) -> Node | None:
        nodes = base.find_all(path)
        if not nodes:
            return None
        node = nodes[0]
        if len(nodes) > 1:
            self.problems.append(f"{node.path}: repeated {len(nodes)} times, the first is read")
        if node.type != type_:
            found = "no type attribute" if node.type is None else f"type {node.type!r}"
            raise ConfigurationError(f"{self.name}: element {node.path} has {found}, not {type_!r}")
        return node

    def string(self, base: Node, path: str) -> str | None:
        node = self.leaf(base, path, "string")
        return None if node is None else node.text

    def integer(self, path: str) -> int | None:
        node = self.leaf(self.root, path, "integer")
        if node is None:
            return None
        if not _INTEGER.fullmatch(node.text.strip()):
            raise ConfigurationError(
                f"{self.name}: element {path} is not an integer: {node.text[:40]!r}"
            )
        return int(node.text)

    def blob(self, path: str) -> bytes | None:
        node = self.leaf(self.root, path, "bytes")
        if node is None:
            return None
        try:
            return base64.b64decode("".join(node.text.split()), validate=True)
        except ValueError:  # binascii.Error, or a non-ASCII character
            raise ConfigurationError(f"{self.name}: element {path} is not base64") from None

    def guid(self, path: str) -> UUID | None:
        text = (self.string(self.root, path) or "").strip()
        if not text:
            return None
        try:
            return UUID(text.removeprefix("{").removesuffix("}"))
        except ValueError:
            self.problems.append(f"{path}: {text[:40]!r} is not a GUID")
            return None

    # -- fields
    def version(self) -> str | None:
        raw = self.integer(VERSION)
        if raw is None:
            return None
        if not 0 < raw <= 0xFFFF:
            self.problems.append(f"{VERSION}: {raw} is not a configuration version")
            return None
        return f"{raw >> 8}.{raw & 0xFF}"

    def created_at(self) -> datetime | None:
        raw = self.blob(CREATED)
        if raw is None:
            return None
        if len(raw) != 8:
            self.problems.append(f"{CREATED}: {len(raw)} bytes, a FILETIME has 8")
            return None
        ticks = int.from_bytes(raw, "little")
        try:
            return FILETIME_EPOCH + timedelta(microseconds=ticks // 10)
        except OverflowError:
            self.problems.append(f"{CREATED}: FILETIME {ticks} is past the year 9999")
            return None

    def checkpoint_kind(self, version: str | None) -> CheckpointKind:
        text = self.string(self.root, KIND)
        if text:
            try:
                return CheckpointKind(text)
            except ValueError:
                self.problems.append(f"{KIND}: {text[:40]!r} is not a checkpoint type")
        if version is not None and tuple(map(int, version.split("."))) < FIRST_PRODUCTION_VERSION:
            return CheckpointKind.STANDARD
        return CheckpointKind.UNKNOWN


def _tree(config: Configuration) -> Node:
    """The element tree of ``config``, properties in the alphabetical order
    Windows writes them. ValueError: a disk location outside ``ide0-1/0-1`` and
    ``scsi0-3/0-63`` or given twice, state files other than one ``.vsv`` and one
    ``.bin``, a version not ``major.minor`` (0-255 each), text XML cannot carry."""
    root = Node("configuration")
    add_disks(root, config.disks, str(config.id))

    checkpoint = config.kind is FileKind.CHECKPOINT
    props = root.add("properties")
    if checkpoint and config.checkpoint_kind is not None:
        props.add("ckpt_checkpoint_type", "string", config.checkpoint_kind.value)
    if config.parent is not None:
        props.add("ckpt_parent", "string", str(config.parent).upper())
    props.add("ckpt_writer", "string", WRITER)
    if config.saved_memory is not None:
        props.add("ckpt_saved_memory", "string", str(config.saved_memory))
    if config.created_at is not None:
        props.add(
            "creation_time", "bytes", base64.b64encode(_filetime(config.created_at)).decode() + "\n"
        )
    if config.id is not None:
        props.add("global_id", "string", str(config.id).upper())
    if config.name is not None:
        props.add("name", "string", config.name)
    props.add("type_id", "string", CHECKPOINT_TYPE_ID if checkpoint else VM_TYPE_ID)
    if config.version is not None:
        props.add("version", "integer", str(_packed_version(config.version)))

    vsv, bin_ = _state_files(config.state_files)
    if vsv or bin_:
        saved = root.add("savedstate")
        if bin_:
            saved.add("memlocation", "string", bin_)
        if vsv:
            saved.add("vsvlocation", "string", vsv)
    logical_id = config.vm_id if checkpoint else config.id
    if logical_id is not None:
        root.add("settings").add("global").add("logical_id", "string", str(logical_id).upper())
    return root


def _state_files(paths: tuple[str, ...]) -> tuple[str | None, str | None]:
    vsv = [p for p in paths if p.lower().endswith(".vsv")]
    bins = [p for p in paths if p.lower().endswith(".bin")]
    if len(vsv) > 1 or len(bins) > 1 or len(vsv) + len(bins) != len(paths):
        raise ValueError(f"state files {paths!r}: an XML configuration names one .vsv and one .bin")
    return (vsv[0] if vsv else None, bins[0] if bins else None)


def _filetime(moment: datetime) -> bytes:
    if moment.tzinfo is None:
        raise ValueError(f"creation time {moment} has no time zone")
    ticks = (moment - FILETIME_EPOCH) // timedelta(microseconds=1) * 10
    if not 0 <= ticks < 1 << 64:
        raise ValueError(f"creation time {moment} is before 1601")
    return ticks.to_bytes(8, "little")


def _packed_version(version: str) -> int:
    match = _VERSION.fullmatch(version)
    major, minor = (int(match.group(1)), int(match.group(2))) if match else (-1, -1)
    if not (0 <= major <= 255 and 0 <= minor <= 255 and major + minor > 0):
        raise ValueError(f"configuration version {version!r} is not major.minor (0-255 each)")
    return major << 8 | minor
