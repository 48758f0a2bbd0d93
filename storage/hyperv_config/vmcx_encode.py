"""Writes a key tree as a Hyper-V key-value container (VMCX/VMRS layout).

Terms: as in ``vmcx_file`` (key tree, value) and ``vmcx_layout`` (structures).

What we write, in file order (every structure as Windows lays it out, with its
CRC-32; offsets chosen by us, see docs/vmcx.md)::

    0x0000  file header, sequence 2        0x1000  file header, sequence 1
    0x2000  object table (227 entries: what one 4 KiB block holds, as in Windows)
    0x3000  replay log, 16 KiB, no pending entries (the size test.VMRS has)
    0x7000  key tables, 4 KiB each, index 1, 2, ... sequence 1
    then    file objects (values of 2 KiB or more), 4 KiB aligned

Entries are written depth first, a parent before its children (a child refers
to its parent's table and offset); siblings get insertion sequences 1, 2, ...
in the order given; a segment ``key[n]`` is written as another sibling named
``key`` (how the reader names repeats); each table's unused tail is one free entry, as in Windows.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import BinaryIO

from . import vmcx_layout as layout
from .vmcx_layout import UnloadedValue, Value

ALIGNMENT = 0x1000
HEADER_SIZE = 0x1000
OBJECT_TABLE_OFFSET = 2 * HEADER_SIZE
LOG_OFFSET = 0x3000
LOG_SIZE = 0x4000
FIRST_TABLE_OFFSET = LOG_OFFSET + LOG_SIZE
TABLE_SIZE = ALIGNMENT
OBJECT_CAPACITY = (ALIGNMENT - layout.OBJECT_TABLE_HEADER.size) // layout.OBJECT_ENTRY.size  # 227
MAX_KEY_BYTES = 254  # data_offset is a u8 and counts the NUL

_Tree = dict[str, "_Tree | Value"]


def write_key_tree(out: BinaryIO, values: Iterable[tuple[str, Value]]) -> None:
    """Writes ``values`` (leaf path, value) as one container to ``out``.

    ``ValueError`` for a tree that cannot be written: an empty path segment, a
    key over 254 UTF-8 bytes, a path that is both a leaf and a node or given
    twice, an integer outside 64 bits, an ``UnloadedValue``, or more than 227
    objects (key tables and file objects)."""
    tree = _build(values)
    tables: list[bytearray] = [_new_table(1)]
    last_entry = [0]  # offset of the last entry in the current table
    file_objects: list[bytes] = []
    _emit(tree, (0, 0), tables, last_entry, file_objects)
    _close_table(tables[-1], last_entry[0])
    out.write(_assemble(tables, file_objects))


def _build(values: Iterable[tuple[str, Value]]) -> _Tree:
    root: _Tree = {}
    for path, value in values:
        if isinstance(value, UnloadedValue):
            raise ValueError(f"{path}: an unloaded file object cannot be written")
        parts = path.split("/")
        for part in parts:
            if not part or "\0" in part or len(part.encode("utf-8")) > MAX_KEY_BYTES:
                raise ValueError(f"{path}: key {part!r} is empty, holds NUL or is too long")
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"{path}: {part!r} is a value, not a node")
            node = child
        if parts[-1] in node:
            raise ValueError(f"{path}: given twice (or also a node)")
        node[parts[-1]] = value
    return root


def _emit(
    node: _Tree,
    parent: tuple[int, int],
    tables: list[bytearray],
    last_entry: list[int],
    file_objects: list[bytes],
) -> None:
    for sequence, (key, child) in enumerate(node.items(), start=1):
        if isinstance(child, dict):
            next_sequence = len(child) + 1 if child else 0
            value = bytes(8) + next_sequence.to_bytes(4, "little")
            ref = _place(tables, last_entry, key, layout.KeyType.NODE, 0, value, parent, sequence)
            _emit(child, ref, tables, last_entry, file_objects)
        else:
            key_type, flags, payload = _encode(child, file_objects)
            _place(tables, last_entry, key, key_type, flags, payload, parent, sequence)


def _encode(value: Value, file_objects: list[bytes]) -> tuple[int, int, bytes]:
    """(key type, flags, value bytes); a large string or array becomes a file
    object, its value bytes a placeholder pointer patched in ``_assemble``."""
    if isinstance(value, bool):
        return layout.KeyType.BOOL, 0, struct.pack("<I", int(value))
    if isinstance(value, int):
        if -(1 << 63) <= value < (1 << 63):
            return layout.KeyType.INT, 0, struct.pack("<q", value)
        if 0 <= value < (1 << 64):
            return layout.KeyType.UINT, 0, struct.pack("<Q", value)
        raise ValueError(f"integer {value} does not fit in 64 bits")
    if isinstance(value, float):
        return layout.KeyType.DOUBLE, 0, struct.pack("<d", value)
    if isinstance(value, str):
        key_type, data = layout.KeyType.STRING, value.encode("utf-16-le", errors="surrogatepass")
    elif isinstance(value, bytes):
        key_type, data = layout.KeyType.ARRAY, value
    else:
        raise ValueError(f"cannot write a value of type {type(value).__name__}")
    if len(data) < layout.FILE_OBJECT_THRESHOLD:
        return key_type, 0, struct.pack("<I", len(data)) + data
    file_objects.append(data)
    # the offset is the object's number until _assemble knows where it goes
    return (
        key_type,
        layout.FLAG_FILE_OBJECT,
        layout.FILE_OBJECT_POINTER.pack(len(data), len(file_objects)),
    )


def _new_table(index: int) -> bytearray:
    return bytearray(layout.KEY_TABLE_HEADER.pack(layout.KEY_TABLE_SIGNATURE, index, 1, 0))


def _place(
    tables: list[bytearray],
    last_entry: list[int],
    key: str,
    key_type: int,
    flags: int,
    value: bytes,
    parent: tuple[int, int],
    sequence: int,
) -> tuple[int, int]:
    repeat = layout.REPEAT.fullmatch(key)
    name = (repeat.group(1) if repeat else key).encode("utf-8") + b"\0"
    size = layout.KEY_ENTRY_HEADER.size + len(name) + len(value)
    table = tables[-1]
    left = TABLE_SIZE - len(table) - size
    if left < 0:
        _close_table(table, last_entry[0])
        table = _new_table(len(tables) + 1)
        tables.append(table)
    header = layout.KEY_ENTRY_HEADER.pack(
        key_type | flags << 8, size, parent[0], parent[1], 0, sequence, len(name)
    )
    offset = len(table)
    table += layout.seal(bytearray(header + name + value), layout.KEY_ENTRY_CRC_FIELD)
    last_entry[0] = offset
    return len(tables), offset


def _close_table(table: bytearray, last: int) -> None:
    """Fills the table's tail: a free entry, or (tail under 21 bytes) the last
    entry's slack, as Windows leaves slack after values."""
    tail = TABLE_SIZE - len(table)
    if tail >= layout.KEY_ENTRY_HEADER.size:
        table += layout.KEY_ENTRY_HEADER.pack(layout.KeyType.FREE, tail, 0, 0, 0, 0, 0)
        table += bytes(tail - layout.KEY_ENTRY_HEADER.size)
    elif tail:
        fields = list(layout.KEY_ENTRY_HEADER.unpack_from(table, last))
        fields[1] += tail
        struct.pack_into(layout.KEY_ENTRY_HEADER.format, table, last, *fields)
        data_offset = fields[6]
        key_type, flags = fields[0] & 0xFF, fields[0] >> 8
        covered = (
            layout.KEY_ENTRY_HEADER.size
            + data_offset
            + _sealed_value_size(
                key_type, flags, table, last + layout.KEY_ENTRY_HEADER.size + data_offset
            )
        )
        entry = bytearray(table[last : last + covered])
        table[last : last + covered] = layout.seal(entry, layout.KEY_ENTRY_CRC_FIELD)
        table += bytes(tail)
    struct.pack_into("<I", table, layout.KEY_TABLE_CRC_FIELD, 0)
    header = layout.seal(
        bytearray(table[: layout.KEY_TABLE_HEADER.size]), layout.KEY_TABLE_CRC_FIELD
    )
    table[: layout.KEY_TABLE_HEADER.size] = header


def _sealed_value_size(key_type: int, flags: int, table: bytearray, at: int) -> int:
    if flags & layout.FLAG_FILE_OBJECT:
        return layout.FILE_OBJECT_POINTER.size
    if key_type == layout.KeyType.NODE:
        return layout.NODE_VALUE_SIZE
    if key_type in (layout.KeyType.STRING, layout.KeyType.ARRAY):
        return 4 + int.from_bytes(table[at : at + 4], "little")
    return 4 if key_type == layout.KeyType.BOOL else 8


def _assemble(tables: list[bytearray], file_objects: list[bytes]) -> bytes:
    if len(tables) + len(file_objects) > OBJECT_CAPACITY:
        raise ValueError(
            f"{len(tables)} key tables and {len(file_objects)} file objects exceed the "
            f"{OBJECT_CAPACITY} objects one object table holds"
        )
    object_offsets: list[int] = []
    at = FIRST_TABLE_OFFSET + len(tables) * TABLE_SIZE
    for data in file_objects:
        object_offsets.append(at)
        at += -(-len(data) // ALIGNMENT) * ALIGNMENT
    image = bytearray(at)
    for number, table in enumerate(tables):
        _patch_pointers(table, object_offsets)
        start = FIRST_TABLE_OFFSET + number * TABLE_SIZE
        image[start : start + TABLE_SIZE] = table
    for data, offset in zip(file_objects, object_offsets, strict=True):
        image[offset : offset + len(data)] = data
    objects = [
        (layout.ObjectType.KEY_TABLE, FIRST_TABLE_OFFSET + n * TABLE_SIZE, TABLE_SIZE)
        for n in range(len(tables))
    ]
    objects += [
        (layout.ObjectType.FILE, offset, -(-len(data) // ALIGNMENT) * ALIGNMENT)
        for data, offset in zip(file_objects, object_offsets, strict=True)
    ]
    table = bytearray(
        layout.OBJECT_TABLE_HEADER.pack(layout.OBJECT_TABLE_SIGNATURE, OBJECT_CAPACITY)
    )
    for number in range(OBJECT_CAPACITY):
        kind, offset, size = objects[number] if number < len(objects) else (0, 0, 0)
        entry = bytearray(layout.OBJECT_ENTRY.pack(kind, 0, offset, size, 1 if kind else 0))
        table += layout.seal(entry, layout.OBJECT_ENTRY_CRC_FIELD)
    image[OBJECT_TABLE_OFFSET : OBJECT_TABLE_OFFSET + len(table)] = table
    log = bytearray(
        layout.REPLAY_LOG_HEADER.pack(layout.REPLAY_LOG_SIGNATURE, 0, 0, 0, 0x91, 0, 0, 0, 0, 0)
    )
    image[LOG_OFFSET : LOG_OFFSET + len(log)] = layout.seal(log, layout.REPLAY_LOG_CRC_FIELD)
    for offset, sequence in zip(layout.FILE_HEADER_OFFSETS, (2, 1), strict=True):
        header = layout.FILE_HEADER.pack(
            layout.FILE_HEADER_SIGNATURE, 0, sequence, layout.FORMAT_VERSION, 0,
            ALIGNMENT, LOG_OFFSET, LOG_SIZE, HEADER_SIZE,
        )  # fmt: skip
        image[offset : offset + len(header)] = layout.seal(
            bytearray(header), layout.FILE_HEADER_CRC_FIELD
        )
    return bytes(image)


def _patch_pointers(table: bytearray, object_offsets: list[int]) -> None:
    """Replaces each file-object placeholder (its number) by the object's offset."""
    offset = layout.KEY_TABLE_HEADER.size
    while offset + layout.KEY_ENTRY_HEADER.size <= len(table):
        fields = layout.KEY_ENTRY_HEADER.unpack_from(table, offset)
        if fields[1] == 0:
            return
        if fields[0] >> 8 & layout.FLAG_FILE_OBJECT:
            at = offset + layout.KEY_ENTRY_HEADER.size + fields[6]
            size, number = layout.FILE_OBJECT_POINTER.unpack_from(table, at)
            layout.FILE_OBJECT_POINTER.pack_into(table, at, size, object_offsets[number - 1])
            covered = at + layout.FILE_OBJECT_POINTER.size - offset
            table[offset : offset + covered] = layout.seal(
                bytearray(table[offset : offset + covered]), layout.KEY_ENTRY_CRC_FIELD
            )
        offset += fields[1]
