"""Checks of the public API's arguments, for callers mypy does not see.

A typed caller is checked by mypy; a script or a notebook is not, and a wrong
type used to surface deep inside as Python's own words: ``register_vm("w",
"Boot")`` was "not enough values to unpack", ``restore_disk(out="path")`` was
"'str' object has no attribute 'seekable'" (issue 11). Each check here names
the method, the parameter, what it expects and what it got, as an
``InvalidValue``; it returns the value, with the value of a str enum (``"vhdx"``)
turned into its member, so the rest of the code sees the declared types.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TypeVar
from uuid import UUID

from ckpt.domain import DiskFormat, FileRole, InvalidValue
from ckpt.storage.sources import StreamSource

E = TypeVar("E", bound=Enum)
SHOWN = 60  # characters of a wrong value's repr quoted in the message


def got(value: object) -> str:
    text = repr(value)
    if len(text) > SHOWN:
        text = text[: SHOWN - 3] + "..."
    return f"{type(value).__name__} {text}"


def fail(what: str, expected: str, value: object) -> NoReturn:
    raise InvalidValue(f"{what} must be {expected}, got {got(value)}")


def text(what: str, value: object) -> str:
    if not isinstance(value, str):
        fail(what, "a str", value)
    return value


def ref(what: str, value: object) -> str | UUID:
    """A name or id: a str, or a UUID."""
    if not isinstance(value, str | UUID):
        fail(what, "a str (name or id) or a UUID", value)
    return value


def optional_text(what: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        fail(what, "a str or None", value)
    return value


def flag(what: str, value: object) -> bool:
    # Not truthiness: automatic_checkpoints="off" would be True.
    if not isinstance(value, bool):
        fail(what, "True or False", value)
    return value


def optional_flag(what: str, value: object) -> bool | None:
    return None if value is None else flag(what, value)


def path(what: str, value: object) -> Path:
    if not isinstance(value, str | os.PathLike) or isinstance(value, bytes):
        fail(what, "a path (str or pathlib.Path)", value)
    return Path(value)


def optional_path(what: str, value: object) -> Path | None:
    return None if value is None else path(what, value)


def choice(what: str, value: object, kind: type[E]) -> E:
    """A member of ``kind``, or the str value of one (any case)."""
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        for member in kind:
            if str(member.value) == value.lower():
                return member
    names = ", ".join(repr(m.value) for m in kind)
    fail(what, f"a {kind.__name__} ({names})", value)


def optional_choice(what: str, value: object, kind: type[E]) -> E | None:
    return None if value is None else choice(what, value, kind)


def disk_specs(what: str, value: object) -> list[tuple[str, DiskFormat]]:
    expected = "a list of (disk name, DiskFormat) pairs, e.g. [('Boot', ckpt.DiskFormat.VHDX)]"
    if isinstance(value, str | bytes | Mapping) or not hasattr(value, "__iter__"):
        fail(what, expected, value)
    specs = []
    for item in value:
        if not isinstance(item, tuple | list) or len(item) != 2:
            fail(what, expected, item)
        specs.append((text(f"{what}: a disk name", item[0]), choice(what, item[1], DiskFormat)))
    return specs


def _mapping(what: str, value: object, expected: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        fail(what, expected, value)
    return value


SOURCE = "a path (str or pathlib.Path), a binary stream open for reading or a ckpt.StreamSource"


def source(what: str, value: object) -> Path | StreamSource:
    """A path, a readable binary stream (taken as ``StreamSource(stream)``) or a
    ``StreamSource`` whose stream reads bytes and whose size is an int >= 0 or None."""
    if isinstance(value, str | os.PathLike) and not isinstance(value, bytes):
        return Path(value)
    given = value if isinstance(value, StreamSource) else StreamSource(value)  # type: ignore[arg-type]
    stream: object = given.stream
    read = getattr(stream, "read", None)
    if isinstance(stream, io.TextIOBase | str | bytes) or not callable(read):
        fail(what, SOURCE, value)
    readable = getattr(stream, "readable", None)
    if callable(readable) and not readable():
        fail(what, SOURCE + " (this one is not readable)", value)
    if given.size is not None:
        _count(f"{what}: size", given.size)
    optional_text(f"{what}: name", given.name)
    return given


def sources(what: str, value: object) -> dict[str, Path | StreamSource]:
    """Disk name -> image (a path or a stream)."""
    given = _mapping(what, value, "a mapping of disk name to image path, e.g. {'Boot': 'b.raw'}")
    return {text(f"{what}: a disk name", k): source(f"{what}[{k!r}]", v) for k, v in given.items()}


def roles(what: str, value: object) -> dict[FileRole, Path | StreamSource]:
    """File role -> file (a path or a stream)."""
    given = _mapping(
        what, value, "a mapping of FileRole to path, e.g. {ckpt.FileRole.CONFIG: 'x.vmcx'}"
    )
    return {choice(what, k, FileRole): source(f"{what}[{k!r}]", v) for k, v in given.items()}


def _count(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        fail(what, "an int >= 0", value)
    return value


def extents(what: str, value: object) -> dict[str, list[tuple[int, int]]]:
    """Disk name -> (offset, length) pairs."""
    given = _mapping(what, value, "a mapping of disk name to a list of (offset, length) pairs")
    out: dict[str, list[tuple[int, int]]] = {}
    for disk, spans in given.items():
        where = f"{what}[{disk!r}]"
        text(f"{what}: a disk name", disk)
        if isinstance(spans, str | bytes | Mapping) or not hasattr(spans, "__iter__"):
            fail(where, "a list of (offset, length) pairs", spans)
        pairs = []
        for span in spans:
            if not isinstance(span, tuple | list) or len(span) != 2:
                fail(where, "a list of (offset, length) pairs", span)
            pairs.append(
                (_count(f"{where}: an offset", span[0]), _count(f"{where}: a length", span[1]))
            )
        out[disk] = pairs
    return out


def output(what: str, value: object, seekable: bool = False) -> BinaryIO:
    """A binary stream open for writing (``open(path, "wb")``, ``io.BytesIO()``)."""
    expected = "a binary stream open for writing, e.g. open(path, 'wb')"
    if seekable:
        expected = "a seekable " + expected.removeprefix("a ")
    write = getattr(value, "write", None)
    if isinstance(value, io.TextIOBase | str | bytes | os.PathLike) or not callable(write):
        fail(what, expected, value)
    writable = getattr(value, "writable", None)
    if callable(writable) and not writable():
        fail(what, expected + " (this one is not writable)", value)
    if seekable:
        can_seek = getattr(value, "seekable", None)
        if not callable(getattr(value, "seek", None)) or (callable(can_seek) and not can_seek()):
            fail(what, expected, value)
    return value  # type: ignore[return-value]  # duck-typed: whatever writes bytes


def at(what: str, value: object) -> str | int | None:
    """A log position (int >= 0 or its digits) or an ISO 8601 time; None is now."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    fail(what, "a log position (int >= 0) or an ISO 8601 time (str), or None", value)


def number(
    what: str, value: object, low: float, high: float | None = None, low_open: bool = False
) -> float:
    """A finite real number in [low, high] (``low_open``: (low, high])."""
    span = ("(" if low_open else "[") + f"{low:g}, " + ("inf)" if high is None else f"{high:g}]")
    expected = f"a finite number in {span}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        fail(what, expected, value)
    x = float(value)
    if (
        not math.isfinite(x)
        or x < low
        or (low_open and x == low)
        or (high is not None and x > high)
    ):
        fail(what, expected, value)
    return x


def version(what: str, value: object) -> int | None:
    if value is None:
        return None
    # the range (1 to the latest) is checked against the VM, which can say it
    if isinstance(value, bool) or not isinstance(value, int):
        fail(what, "an event version (an int >= 1) or None", value)
    return value


def progress(what: str, value: object) -> Callable[[str, int], Callable[[int], None]] | None:
    if value is not None and not callable(value):
        fail(what, "None or a callable (label, total) -> update(n)", value)
    return value


def key(what: str, value: object) -> bytes | None:
    if value is not None and not isinstance(value, bytes):
        fail(what, "the store key as 32 bytes (bytes.fromhex of its 64 hex digits)", value)
    return value
