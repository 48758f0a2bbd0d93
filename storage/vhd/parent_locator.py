"""A differencing disk's parent locator: where to find its parent.

Terms:
    locator     the key/value pairs ckpt reports for a differencing VHD, with
                the keys VHDX uses so that callers treat both alike:
                ``parent_linkage`` (the parent's unique id, "{lowercase}"),
                ``relative_path`` (from the W2ru entry, or the deprecated
                Wi2r), ``absolute_win32_path`` (W2ku, or the deprecated
                Wi2k) and ``parent_name`` (the header's parent unicode name).
    entry data  the bytes a locator entry points at: a path in UTF-16LE
                (W2ru, W2ku) or in the ANSI code page (Wi2r, Wi2k), with no
                terminator (trailing NULs are dropped).

Entries of other platforms (Mac, MacX) are checked for bounds and ignored.
"""

from __future__ import annotations

from uuid import UUID

from ckpt.storage.vhdx.source import Source

from .dynamic_header import DynamicHeader, LocatorEntry
from .layout import PLATFORM_W2KU, PLATFORM_W2RU, PLATFORM_WI2K, PLATFORM_WI2R

# A Windows path is at most 32,767 UTF-16 units; anything longer is damage.
MAX_LOCATOR_DATA = 65536

_KEYS = {
    PLATFORM_W2RU: ("relative_path", "utf-16-le"),
    PLATFORM_W2KU: ("absolute_win32_path", "utf-16-le"),
    PLATFORM_WI2R: ("relative_path", "cp1252"),
    PLATFORM_WI2K: ("absolute_win32_path", "cp1252"),
}


def format_linkage(unique_id: UUID) -> str:
    return "{" + str(unique_id) + "}"


def read_locator(src: Source, header: DynamicHeader, data_start: int) -> dict[str, str]:
    """The locator of a differencing disk (module docstring). ``data_start``
    is where the header and BAT end: entry data may not overlap them."""
    locator = {"parent_linkage": format_linkage(header.parent_unique_id)}
    if header.parent_name:
        locator["parent_name"] = header.parent_name
    deprecated: dict[str, str] = {}
    for entry in header.locators:
        value = _entry_value(src, entry, data_start)
        key_codec = _KEYS.get(entry.platform)
        if key_codec is None or not value:
            continue
        key = key_codec[0]
        target = deprecated if entry.platform in (PLATFORM_WI2R, PLATFORM_WI2K) else locator
        target.setdefault(key, value)
    for key, value in deprecated.items():  # only where no Unicode entry gave the key
        locator.setdefault(key, value)
    return locator


def _entry_value(src: Source, entry: LocatorEntry, data_start: int) -> str:
    what = f"parent locator entry {entry.index} ({entry.platform!r})"
    if entry.data_length > MAX_LOCATOR_DATA:
        raise src.corrupt(what, f"data length {entry.data_length} exceeds {MAX_LOCATOR_DATA}")
    if entry.data_length > entry.space_bytes:
        raise src.corrupt(
            what, f"data length {entry.data_length} exceeds its data space {entry.data_space}"
        )
    if entry.data_length and entry.data_offset < data_start:
        raise src.corrupt(what, f"data offset {entry.data_offset:#x} lies inside the header or BAT")
    raw = src.read(entry.data_offset, entry.data_length, what) if entry.data_length else b""
    codec = _KEYS.get(entry.platform)
    if codec is None:
        return ""
    if codec[1] == "utf-16-le" and len(raw) % 2:
        raise src.corrupt(what, f"UTF-16 data of odd length {len(raw)}")
    try:
        text = raw.decode(codec[1])
    except UnicodeDecodeError:
        raise src.corrupt(what, f"data is not {codec[1]}") from None
    return text.rstrip("\0")
