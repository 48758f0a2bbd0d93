"""Hyper-V's key-value container (the file under VMCX and VMRS): read and write.

Terms:
    key tree    what the container holds: named *nodes* (inner keys) and
                *leaves* (typed values), addressed by ``/``-joined paths such as
                ``configuration/properties/name``. Siblings keep the order of
                their insertion sequence (the order Hyper-V added them).
    value       a leaf's content: ``bool``, ``int`` (signed or unsigned 64-bit),
                ``float``, ``str`` (UTF-16LE in the file) or ``bytes`` (an
                "array"); GUIDs and times are strings or bytes, as Hyper-V
                stored them. A file object larger than ``MAX_LOADED_VALUE`` is
                not loaded: its value is an ``UnloadedValue`` (where it is).
    repeat      siblings may share a key (test.VMRS has three ``devicetype``
                nodes under one ``metrics``); the second is addressed as
                ``devicetype[1]``, the third ``devicetype[2]``, in insertion order
                (dissect.hypervisor's dict keeps only the last of them).
    replayed    how many pending replay-log writes were applied before reading
                (Hyper-V applies them when it next opens the file; we apply them
                in memory and never write to the file).

The byte layout is in ``vmcx_layout`` and docs/vmcx.md. Damage (a bad signature,
checksum, size, offset or reference) raises ``ConfigurationError`` naming the
file, the structure and its offset; memory is bounded by the file's structure
sizes (each checked against the file and fixed caps before it is read).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from ckpt.domain.errors import ConfigurationError

from . import vmcx_layout as layout
from .vmcx_encode import write_key_tree
from .vmcx_layout import UnloadedValue, Value


@dataclass(frozen=True)
class KeyTree:
    """The parsed tree: leaves by path, and each node's children in order
    (the root node's path is ``""``)."""

    leaves: dict[str, Value]
    nodes: dict[str, tuple[str, ...]]
    replayed: int = 0
    sequence: int = field(default=0, compare=False)  # the current header's

    def get(self, path: str) -> Value | None:
        return self.leaves.get(path)

    def children(self, path: str) -> list[str]:
        return list(self.nodes.get(path, ()))

    def walk(self) -> Iterator[tuple[str, Value]]:
        """Every leaf, depth first, siblings in insertion order."""
        stack: list[str] = [""]
        while stack:
            path = stack.pop()
            if path in self.leaves:
                yield path, self.leaves[path]
                continue
            prefix = f"{path}/" if path else ""
            stack.extend(prefix + name for name in reversed(self.nodes.get(path, ())))


__all__ = ["KeyTree", "UnloadedValue", "Value", "read_key_tree", "write_key_tree"]


@dataclass
class _Entry:
    table: int
    offset: int
    key: str
    parent: tuple[int, int]
    key_type: int
    sequence: int
    value: Value | None  # None for a node


class _File:
    """Bounded reads from the stream with the replay log's writes laid over."""

    def __init__(self, stream: BinaryIO, name: str) -> None:
        self.stream = stream
        self.name = name
        try:
            self.size = stream.seek(0, 2)
        except OSError as exc:
            raise self.error(f"cannot be read ({exc})") from exc
        self.patches: list[tuple[int, bytes]] = []

    def error(self, message: str) -> ConfigurationError:
        return ConfigurationError(f"{self.name}: {message}")

    def read(self, offset: int, size: int, what: str) -> bytes:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise self.error(
                f"{what} at offset {offset:#x} ({size} bytes) runs past the end of the "
                f"file ({self.size:#x})"
            )
        try:
            self.stream.seek(offset)
            data = self.stream.read(size)
        except OSError as exc:
            raise self.error(f"{what} at offset {offset:#x} cannot be read ({exc})") from exc
        if len(data) != size:
            raise self.error(f"{what} at offset {offset:#x} is truncated")
        if self.patches:
            buffer = bytearray(data)
            for target, patch in self.patches:
                start, end = max(target, offset), min(target + len(patch), offset + size)
                if start < end:
                    buffer[start - offset : end - offset] = patch[start - target : end - target]
            data = bytes(buffer)
        return data


def read_key_tree(stream: BinaryIO, name: str = "<stream>") -> KeyTree:
    """Parses a VMCX/VMRS container; ``ConfigurationError`` if it is damaged."""
    file = _File(stream, name)
    header = _current_header(file)
    alignment, log_offset, log_size, header_size = header[5], header[6], header[7], header[8]
    replayed = _replay_log(file, log_offset, log_size)
    tables, file_objects = _objects(file, 2 * header_size, alignment)
    entries: dict[tuple[int, int], _Entry] = {}
    for index, (offset, data) in sorted(tables.items()):
        for entry in _entries(file, index, offset, data, file_objects):
            entries[(entry.table, entry.offset)] = entry
    leaves, nodes = _tree(file, entries)
    return KeyTree(leaves=leaves, nodes=nodes, replayed=replayed, sequence=header[2])


def _current_header(file: _File) -> tuple[int, ...]:
    valid: list[tuple[int, ...]] = []
    problems: list[str] = []
    for offset in layout.FILE_HEADER_OFFSETS:
        data = file.read(offset, layout.FILE_HEADER.size, "file header")
        fields = layout.FILE_HEADER.unpack(data)
        if fields[0] != layout.FILE_HEADER_SIGNATURE:
            problems.append(f"file header at {offset:#x}: signature {fields[0]:#010x}")
        elif layout.crc_with_zero_field(data, layout.FILE_HEADER_CRC_FIELD) != fields[1]:
            problems.append(f"file header at {offset:#x}: CRC-32 mismatch")
        else:
            valid.append(fields)
    if not valid:
        raise file.error("; ".join(problems) + " (no valid file header)")
    header = max(valid, key=lambda fields: fields[2])  # a tie keeps the first
    where = f"file header (sequence {header[2]})"
    if header[3] != layout.FORMAT_VERSION:
        raise file.error(f"{where}: format version {header[3]:#x}, only 0x400 is known")
    alignment, header_size = header[5], header[8]
    if alignment < 0x200 or alignment > layout.MAX_ALIGNMENT or alignment & (alignment - 1):
        raise file.error(f"{where}: alignment {alignment:#x} is not a power of two <= 64 KiB")
    if header_size < layout.FILE_HEADER.size or header_size > layout.MAX_ALIGNMENT:
        raise file.error(f"{where}: header size {header_size:#x} out of range")
    return header


def _replay_log(file: _File, offset: int, size: int) -> int:
    """Lays the log's pending writes over the file; returns how many."""
    what = f"replay log header at {offset:#x}"
    data = file.read(offset, layout.REPLAY_LOG_HEADER.size, "replay log header")
    fields = layout.REPLAY_LOG_HEADER.unpack(data)
    if fields[0] != layout.REPLAY_LOG_SIGNATURE:
        raise file.error(f"{what}: signature {fields[0]:#010x}")
    if layout.crc_with_zero_field(data, layout.REPLAY_LOG_CRC_FIELD) != fields[1]:
        raise file.error(f"{what}: CRC-32 mismatch")
    count: int = fields[2]
    if count == 0:
        return 0
    if count > fields[4]:
        raise file.error(f"{what}: {count} entries, more than its maximum {fields[4]}")
    if count * layout.REPLAY_ENTRY.size + layout.REPLAY_LOG_HEADER.size > size:
        raise file.error(f"{what}: {count} entries do not fit in the log's {size:#x} bytes")
    table = file.read(
        offset + layout.REPLAY_LOG_HEADER.size,
        count * layout.REPLAY_ENTRY.size,
        "replay log entries",
    )
    patches: list[tuple[int, bytes]] = []
    for i in range(count):
        raw = table[i * layout.REPLAY_ENTRY.size : (i + 1) * layout.REPLAY_ENTRY.size]
        target, length, data_at, _, crc, data_crc = layout.REPLAY_ENTRY.unpack(raw)
        where = f"replay log entry {i} at {offset + layout.REPLAY_LOG_HEADER.size + i * 28:#x}"
        if layout.crc_with_zero_field(raw, layout.REPLAY_ENTRY_CRC_FIELD) != crc:
            raise file.error(f"{where}: CRC-32 mismatch")
        if data_at + length > size or target + length > file.size:
            raise file.error(f"{where}: {length} bytes at {data_at:#x} -> {target:#x} out of range")
        payload = file.read(offset + data_at, length, f"{where} data")
        if zlib.crc32(payload) != data_crc:
            raise file.error(f"{where}: data CRC-32 mismatch")
        patches.append((target, payload))
    file.patches = patches
    return count


def _objects(
    file: _File, first: int, alignment: int
) -> tuple[dict[int, tuple[int, bytes]], dict[int, int]]:
    """Key tables (index -> (offset, bytes), the highest valid sequence per index)
    and file objects (offset -> size) of every object table."""
    pending = [(first, alignment)]
    seen: set[int] = set()
    tables: dict[int, tuple[int, int, bytes]] = {}
    file_objects: dict[int, int] = {}
    total = table_bytes = 0
    while pending:
        offset, size = pending.pop()
        if offset in seen:
            raise file.error(f"object table at {offset:#x} is chained twice")
        seen.add(offset)
        what = f"object table at {offset:#x}"
        signature, count = layout.OBJECT_TABLE_HEADER.unpack(
            file.read(offset, layout.OBJECT_TABLE_HEADER.size, "object table")
        )
        if signature != layout.OBJECT_TABLE_SIGNATURE:
            raise file.error(f"{what}: signature {signature:#010x}")
        if layout.OBJECT_TABLE_HEADER.size + count * layout.OBJECT_ENTRY.size > size:
            raise file.error(f"{what}: {count} entries do not fit in {size:#x} bytes")
        total += count
        if total > layout.MAX_OBJECTS:
            raise file.error(f"{what}: more than {layout.MAX_OBJECTS} objects")
        raw = file.read(offset + 8, count * layout.OBJECT_ENTRY.size, "object table entries")
        for i in range(count):
            entry = raw[i * layout.OBJECT_ENTRY.size : (i + 1) * layout.OBJECT_ENTRY.size]
            kind, crc, at, length, allocated = layout.OBJECT_ENTRY.unpack(entry)
            where = f"{what} entry {i}"
            if layout.crc_with_zero_field(entry, layout.OBJECT_ENTRY_CRC_FIELD) != crc:
                raise file.error(f"{where}: CRC-32 mismatch")
            if not allocated:
                continue
            if kind == layout.ObjectType.OBJECT_TABLE:
                pending.append((at, length))
            elif kind == layout.ObjectType.KEY_TABLE:
                table_bytes += length
                if table_bytes > file.size:  # overlapping tables: memory past the file's size
                    raise file.error(f"{where}: key tables add up to more than the file")
                _key_table(file, at, length, where, tables)
            elif kind == layout.ObjectType.FILE:
                file_objects[at] = length  # read (and range-checked) when a key uses it
    return {index: (at, data) for index, (at, _, data) in tables.items()}, file_objects


def _key_table(
    file: _File, offset: int, size: int, where: str, tables: dict[int, tuple[int, int, bytes]]
) -> None:
    if size < layout.KEY_TABLE_HEADER.size or size > layout.MAX_KEY_TABLE_SIZE:
        raise file.error(f"{where}: key table size {size:#x} out of range")
    data = file.read(offset, size, f"key table ({where})")
    signature, index, sequence, crc = layout.KEY_TABLE_HEADER.unpack_from(data)
    what = f"key table at {offset:#x}"
    if signature != layout.KEY_TABLE_SIGNATURE:
        raise file.error(f"{what}: signature {signature:#06x}")
    if (
        layout.crc_with_zero_field(data[: layout.KEY_TABLE_HEADER.size], layout.KEY_TABLE_CRC_FIELD)
        != crc
    ):
        raise file.error(f"{what}: header CRC-32 mismatch")
    if index == 0:
        raise file.error(f"{what}: table index 0 (indexes start at 1)")
    if index not in tables or tables[index][1] < sequence:
        tables[index] = (offset, sequence, data)


_FIXED = {
    layout.KeyType.INT: "<q",
    layout.KeyType.UINT: "<Q",
    layout.KeyType.DOUBLE: "<d",
    layout.KeyType.BOOL: "<I",
}


def _entries(
    file: _File, index: int, base: int, data: bytes, file_objects: dict[int, int]
) -> Iterator[_Entry]:
    offset = layout.KEY_TABLE_HEADER.size
    while offset + layout.KEY_ENTRY_HEADER.size <= len(data):
        fields = layout.KEY_ENTRY_HEADER.unpack_from(data, offset)
        type_flags, size, parent_table, parent_offset, crc, sequence, data_offset = fields
        where = f"key entry at {base + offset:#x} (table {index} offset {offset:#x})"
        if size == 0:
            return
        if size < layout.KEY_ENTRY_HEADER.size or offset + size > len(data):
            raise file.error(f"{where}: size {size} runs outside its table")
        key_type, flags = type_flags & 0xFF, type_flags >> 8
        if key_type == layout.KeyType.FREE:
            offset += size
            continue
        if (
            not layout.KeyType.FREE < key_type <= layout.KeyType.NODE
            or key_type == layout.KeyType.UNKNOWN
        ):
            raise file.error(f"{where}: unknown value type {key_type}")
        entry = data[offset : offset + size]
        start = layout.KEY_ENTRY_HEADER.size + data_offset
        if data_offset < 1 or start > size or entry[start - 1] != 0:
            raise file.error(f"{where}: key length {data_offset} is not a NUL-terminated name")
        try:
            key = entry[layout.KEY_ENTRY_HEADER.size : start - 1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise file.error(f"{where}: key is not UTF-8") from exc
        if not key or "/" in key or "\0" in key or layout.REPEAT.fullmatch(key):
            raise file.error(f"{where}: key {key!r} is empty, holds '/' or NUL, or ends in [n]")
        value_size = _value_size(file, where, key_type, flags, entry, start)
        if start + value_size > size:
            raise file.error(f"{where}: value of {value_size} bytes runs past the entry")
        if (
            layout.crc_with_zero_field(entry[: start + value_size], layout.KEY_ENTRY_CRC_FIELD)
            != crc
        ):
            raise file.error(f"{where}: CRC-32 mismatch")
        value = _value(
            file, where, key_type, flags, entry[start : start + value_size], file_objects
        )
        yield _Entry(index, offset, key, (parent_table, parent_offset), key_type, sequence, value)
        offset += size


def _value_size(file: _File, where: str, key_type: int, flags: int, entry: bytes, at: int) -> int:
    if flags & layout.FLAG_FILE_OBJECT:
        return layout.FILE_OBJECT_POINTER.size
    if key_type == layout.KeyType.NODE:
        return layout.NODE_VALUE_SIZE
    if key_type in (layout.KeyType.STRING, layout.KeyType.ARRAY):
        if at + 4 > len(entry):
            raise file.error(f"{where}: value length runs past the entry")
        return 4 + int.from_bytes(entry[at : at + 4], "little")
    return struct.calcsize(_FIXED[layout.KeyType(key_type)])


def _value(
    file: _File, where: str, key_type: int, flags: int, raw: bytes, file_objects: dict[int, int]
) -> Value | None:
    if key_type == layout.KeyType.NODE:
        if flags & layout.FLAG_FILE_OBJECT:
            raise file.error(f"{where}: a node cannot point to a file object")
        return None
    if flags & layout.FLAG_FILE_OBJECT:
        if key_type not in (layout.KeyType.STRING, layout.KeyType.ARRAY):
            raise file.error(f"{where}: a fixed-size value points to a file object")
        size, offset = layout.FILE_OBJECT_POINTER.unpack(raw)
        if offset not in file_objects or size > file_objects[offset]:
            raise file.error(f"{where}: no file object of {size} bytes at {offset:#x}")
        if size > layout.MAX_LOADED_VALUE:
            return UnloadedValue(key_type, offset, size)
        payload = file.read(offset, size, f"file object of {where}")
    elif key_type in (layout.KeyType.STRING, layout.KeyType.ARRAY):
        payload = raw[4:]
    else:
        number = struct.unpack(_FIXED[layout.KeyType(key_type)], raw)[0]
        return bool(number) if key_type == layout.KeyType.BOOL else number
    if key_type == layout.KeyType.ARRAY:
        return payload
    if len(payload) % 2:
        raise file.error(f"{where}: UTF-16 string of odd length {len(payload)}")
    return payload.decode("utf-16-le", errors="surrogatepass")


def _tree(
    file: _File, entries: dict[tuple[int, int], _Entry]
) -> tuple[dict[str, Value], dict[str, tuple[str, ...]]]:
    children: dict[tuple[int, int] | None, list[_Entry]] = {}
    for entry in entries.values():
        if entry.parent[0] == 0:
            parent_ref: tuple[int, int] | None = None
        else:
            parent = entries.get(entry.parent)
            if parent is None or parent.key_type != layout.KeyType.NODE:
                where = f"key entry {entry.key!r} (table {entry.table} offset {entry.offset:#x})"
                raise file.error(
                    f"{where}: parent (table {entry.parent[0]} offset {entry.parent[1]:#x}) "
                    "is not a node"
                )
            parent_ref = entry.parent
        children.setdefault(parent_ref, []).append(entry)
    leaves: dict[str, Value] = {}
    nodes: dict[str, tuple[str, ...]] = {}
    stack: list[tuple[tuple[int, int] | None, str, int]] = [(None, "", 0)]
    reached = 0
    while stack:
        ref, path, depth = stack.pop()
        if depth > layout.MAX_DEPTH:
            raise file.error(f"key {path!r} nests deeper than {layout.MAX_DEPTH}")
        kids = sorted(children.get(ref, ()), key=lambda e: (e.sequence, e.table, e.offset))
        names = _names(kids)
        nodes[path] = names
        for kid, name in zip(kids, names, strict=True):
            reached += 1
            kid_path = f"{path}/{name}" if path else name
            if kid.value is None:
                stack.append(((kid.table, kid.offset), kid_path, depth + 1))
            else:
                leaves[kid_path] = kid.value
    if reached != len(entries):
        raise file.error(f"{len(entries) - reached} key entries are in a parent cycle")
    return leaves, nodes


def _names(kids: list[_Entry]) -> tuple[str, ...]:
    """Sibling keys as path segments: a repeated key (a VMRS lists several
    ``devicetype`` nodes under one ``metrics``) is ``key``, ``key[1]``, ``key[2]``..."""
    seen: dict[str, int] = {}
    names: list[str] = []
    for kid in kids:
        count = seen.get(kid.key, 0)
        seen[kid.key] = count + 1
        names.append(f"{kid.key}[{count}]" if count else kid.key)
    return tuple(names)
