"""msgpack transcoder for events and snapshots.

eventsourcing sets a decoded event's ``__dict__`` directly, so every value must
come back with its exact type. msgpack has no UUID, datetime, tuple, enum or
dataclass; they travel as:

    UUID         ext 1, the 16 bytes
    datetime     msgpack's own timestamp (ext -1), decoded in C; aware datetimes
                 only, and they come back in UTC (the same instant)
    tuple        array [ext 3 (empty), item, item, ...]
    value type   array [ext 4 (its registered name), field, field, ...]

Tuples and value types are arrays tagged by a leading marker rather than
packed inside an extension: one msgpack pass decodes a whole event (the first
design nested a pack per value and spent 25 us decoding an event; this one
about 8 us, which is what lets a rebuild fold 50,000 events/s). Value types
are the domain's ``VALUE_TYPES``: enums (one field, the value) and frozen
dataclasses (fields in declaration order). Names, not module paths, are
stored, so moving a class never orphans stored events. Packing with
``strict_types`` keeps tuples and str-based enums from turning silently into
lists and strings.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any
from uuid import UUID, SafeUUID

import msgpack
from eventsourcing.persistence import Transcoder

from ckpt.domain.errors import StoreCorrupt

EXT_UUID = 1
EXT_DATETIME = 2
EXT_TUPLE = 3
EXT_VALUE = 4

UUID_CACHE = 65536
MAX_EVENT_BYTES = 16 * 1024 * 1024  # an event is facts, not content: 16 MiB is far above any

_TUPLE = msgpack.ExtType(EXT_TUPLE, b"")


class _Tag:
    """What ext 3 and ext 4 decode to: the marker at the head of a tagged array."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[list[Any]], Any]) -> None:
        self.make = make


def _uuid(payload: bytes) -> UUID:
    # UUID(bytes=...) validates its arguments for ~1.5 us; 16 stored bytes need none.
    u = object.__new__(UUID)
    object.__setattr__(u, "int", int.from_bytes(payload, "big"))
    object.__setattr__(u, "is_safe", SafeUUID.unknown)
    return u


class MsgPackTranscoder(Transcoder):
    def __init__(self, value_types: Iterable[type] = ()) -> None:
        self._by_type: dict[type, tuple[msgpack.ExtType, Callable[[Any], list[Any]]]] = {}
        self._tags: dict[bytes, _Tag] = {b"": _Tag(lambda items: tuple(items))}
        # The same checkpoint and layer ids recur in event after event: reusing
        # the (immutable) UUID objects saves ~0.5 us each. Cleared when full.
        self._uuids: dict[bytes, UUID] = {}
        for cls in value_types:
            self.register(cls)

    def register(self, cls: type) -> None:
        name = cls.__name__.encode()
        if name in self._tags:
            raise ValueError(f"value type name {cls.__name__!r} registered twice")
        marker = msgpack.ExtType(EXT_VALUE, name)
        if issubclass(cls, enum.Enum):
            enum_cls: type[enum.Enum] = cls
            self._by_type[cls] = (marker, lambda v: [v.value])
            self._tags[name] = _Tag(lambda items: enum_cls(items[0]))
        elif dataclasses.is_dataclass(cls):
            fields = [f.name for f in dataclasses.fields(cls)]
            self._by_type[cls] = (marker, lambda v: [getattr(v, f) for f in fields])
            self._tags[name] = _Tag(lambda items: cls(*items))
        else:
            raise TypeError(f"{cls!r} is neither an enum nor a dataclass")

    def encode(self, obj: Any) -> bytes:
        return msgpack.packb(
            obj, default=self._default, strict_types=True, use_bin_type=True, datetime=True
        )

    def decode(self, data: bytes) -> Any:
        try:
            return msgpack.unpackb(
                data,
                ext_hook=self._ext_hook,
                list_hook=self._list_hook,
                raw=False,
                strict_map_key=False,
                timestamp=3,
            )
        except StoreCorrupt:
            raise
        except Exception as e:
            raise StoreCorrupt(f"cannot decode a stored record ({len(data)} bytes): {e}") from e

    def _default(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is UUID:
            return msgpack.ExtType(EXT_UUID, obj.bytes)
        if kind is datetime:  # a naive one (aware ones are packed natively, in C)
            raise TypeError(f"cannot encode a naive datetime ({obj}): give it a time zone")
        if kind is tuple:
            return [_TUPLE, *obj]
        entry = self._by_type.get(kind)
        if entry is not None:
            marker, fields = entry
            return [marker, *fields(obj)]
        # strict_types also sends subclasses of plain types (a str enum) here:
        # an unregistered one is a programming error, not something to coerce.
        raise TypeError(f"cannot encode {kind.__qualname__}: register it as a value type")

    def _ext_hook(self, code: int, payload: bytes) -> Any:
        if code == EXT_UUID:
            found = self._uuids.get(payload)
            if found is None:
                if len(payload) != 16:
                    raise StoreCorrupt(f"stored UUID has {len(payload)} bytes, not 16")
                if len(self._uuids) >= UUID_CACHE:
                    self._uuids.clear()
                found = self._uuids[payload] = _uuid(payload)
            return found
        if code == EXT_DATETIME:
            return datetime.fromisoformat(payload.decode())
        if code == EXT_TUPLE and payload:
            raise StoreCorrupt(f"stored tuple marker carries {len(payload)} unexpected bytes")
        if code in (EXT_TUPLE, EXT_VALUE):
            tag = self._tags.get(payload)
            if tag is None:
                raise StoreCorrupt(f"stored record names unknown value type {payload.decode()!r}")
            return tag
        raise StoreCorrupt(f"stored record has unknown msgpack extension type {code}")

    @staticmethod
    def _list_hook(items: list[Any]) -> Any:
        if items and type(items[0]) is _Tag:
            return items[0].make(items[1:])
        return items
