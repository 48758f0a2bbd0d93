"""The parent locator: how a differencing file names its parent.

Terms:
    parent locator  a metadata item: a locator type GUID and a list of
                    key/value pairs, both UTF-16LE strings without a NUL.
    parent_linkage  the parent's DataWriteGuid as ``{lowercase-guid}``; a
                    reader checks it against the parent it found. Windows may
                    add ``parent_linkage2`` (another accepted DataWriteGuid).
    paths           ``relative_path`` (from the child's folder, e.g.
                    ``.\\base.vhdx``), ``volume_path`` (``\\\\?\\Volume{...}\\...``)
                    and ``absolute_win32_path`` (``C:\\...``); readers try them in
                    that order. At least one must be present.

Layout (offsets relative to the item's start)::

    0  16s  locator type B04AEFB7-D19E-4A81-B789-25B8E9445913
    16 u16  reserved = 0        18 u16  key/value count n
    20      n x (u32 key offset | u32 value offset | u16 key length | u16 value length)
    20+12n  the strings; ckpt writes key, value, key, value, ... back to back
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from uuid import UUID

from .layout import VHDX_PARENT_LOCATOR_TYPE
from .source import Source

_HEADER = struct.Struct("<16sHH")
_ENTRY = struct.Struct("<IIHH")
PATH_KEYS = ("relative_path", "volume_path", "absolute_win32_path")
_WHAT = "metadata item Parent Locator"


def format_linkage(guid: UUID) -> str:
    """A DataWriteGuid as parent_linkage spells it: ``{lowercase}``."""
    return "{" + str(guid) + "}"


def parse_linkage(src: Source, value: str, key: str = "parent_linkage") -> UUID:
    try:
        return UUID(value)  # accepts the braces and either case
    except ValueError:
        raise src.corrupt(_WHAT, f"{key} {value!r} is not a GUID") from None


def encode_parent_locator(entries: Mapping[str, str]) -> bytes:
    """The item's bytes; raises ``ValueError`` for a string longer than a u16 length."""
    table = bytearray(_HEADER.pack(VHDX_PARENT_LOCATOR_TYPE.bytes_le, 0, len(entries)))
    strings = bytearray()
    base = _HEADER.size + _ENTRY.size * len(entries)
    for key, value in entries.items():
        k, v = key.encode("utf-16-le"), value.encode("utf-16-le")
        if not k or not v or len(k) > 0xFFFF or len(v) > 0xFFFF:
            raise ValueError(f"parent locator {key!r}: key and value must be 1 to 32767 chars")
        key_offset = base + len(strings)
        table += _ENTRY.pack(key_offset, key_offset + len(k), len(k), len(v))
        strings += k + v
    return bytes(table + strings)


def parse_parent_locator(src: Source, raw: bytes) -> dict[str, str]:
    """The key/value pairs, checked: known type, in-bounds strings, no duplicate
    keys, a parent_linkage that is a GUID, at least one path."""
    if len(raw) < _HEADER.size:
        raise src.corrupt(_WHAT, f"{len(raw)} bytes, shorter than its 20-byte header")
    kind, _, count = _HEADER.unpack_from(raw)
    if UUID(bytes_le=kind) != VHDX_PARENT_LOCATOR_TYPE:
        raise src.unsupported(_WHAT, f"unknown locator type {UUID(bytes_le=kind)}")
    if _HEADER.size + count * _ENTRY.size > len(raw):
        raise src.corrupt(_WHAT, f"{count} entries do not fit in {len(raw)} bytes")
    entries: dict[str, str] = {}
    for i in range(count):
        key_off, value_off, key_len, value_len = _ENTRY.unpack_from(
            raw, _HEADER.size + i * _ENTRY.size
        )
        key = _string(src, raw, key_off, key_len, f"entry {i} key")
        value = _string(src, raw, value_off, value_len, f"entry {i} ({key}) value")
        if key in entries:
            raise src.corrupt(_WHAT, f"key {key!r} appears twice")
        entries[key] = value
    if "parent_linkage" not in entries:
        raise src.corrupt(_WHAT, "no parent_linkage (the parent's DataWriteGuid)")
    parse_linkage(src, entries["parent_linkage"])
    if not any(k in entries for k in PATH_KEYS):
        raise src.corrupt(_WHAT, "no path to the parent (" + ", ".join(PATH_KEYS) + ")")
    return entries


def _string(src: Source, raw: bytes, offset: int, length: int, what: str) -> str:
    if length == 0 or offset + length > len(raw):
        raise src.corrupt(_WHAT, f"{what}: {length} bytes at {offset} outside the item")
    try:
        return raw[offset : offset + length].decode("utf-16-le")
    except UnicodeDecodeError:
        raise src.corrupt(_WHAT, f"{what} is not UTF-16LE") from None
