"""msgpack transcoder for events and snapshots.

eventsourcing sets a decoded event's ``__dict__`` directly, so every value must
come back with its exact type. msgpack has no UUID, datetime, tuple, enum or
dataclass, so each travels as an extension type (ext code -> payload):

    1  UUID          the 16 bytes
    2  datetime      ISO 8601 text (keeps the offset; the library uses UTC)
    3  tuple         msgpack array of the items
    4  value type    msgpack array [registered name, field values...]

Value types are the domain's ``VALUE_TYPES``: enums (payload: the value) and
frozen dataclasses (payload: the fields in declaration order). Names, not
module paths, are stored, so moving a class never orphans stored events.
Packing with ``strict_types`` keeps tuples (and str-based enums) from being
silently turned into lists and strings.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

import msgpack
from eventsourcing.persistence import Transcoder

from ckpt.domain.errors import StoreCorrupt

EXT_UUID = 1
EXT_DATETIME = 2
EXT_TUPLE = 3
EXT_VALUE = 4

MAX_EVENT_BYTES = 16 * 1024 * 1024  # an event is facts, not content: 16 MiB is far above any


class MsgPackTranscoder(Transcoder):
    def __init__(self, value_types: Iterable[type] = ()) -> None:
        self._by_type: dict[type, tuple[str, Callable[[Any], list[Any]]]] = {}
        self._by_name: dict[str, Callable[[list[Any]], Any]] = {}
        for cls in value_types:
            self.register(cls)

    def register(self, cls: type) -> None:
        name = cls.__name__
        if name in self._by_name:
            raise ValueError(f"value type name {name!r} registered twice")
        if issubclass(cls, enum.Enum):
            enum_cls: type[enum.Enum] = cls
            self._by_type[cls] = (name, lambda v: [v.value])
            self._by_name[name] = lambda data: enum_cls(data[0])
        elif dataclasses.is_dataclass(cls):
            fields = [f.name for f in dataclasses.fields(cls)]
            self._by_type[cls] = (name, lambda v: [getattr(v, f) for f in fields])
            self._by_name[name] = lambda data: cls(*data)
        else:
            raise TypeError(f"{cls!r} is neither an enum nor a dataclass")

    def encode(self, obj: Any) -> bytes:
        return msgpack.packb(obj, default=self._default, strict_types=True, use_bin_type=True)

    def decode(self, data: bytes) -> Any:
        try:
            return msgpack.unpackb(
                data,
                ext_hook=self._ext_hook,
                raw=False,
                strict_map_key=False,
            )
        except StoreCorrupt:
            raise
        except Exception as e:
            raise StoreCorrupt(f"cannot decode a stored record ({len(data)} bytes): {e}") from e

    def _default(self, obj: Any) -> msgpack.ExtType:
        kind = type(obj)
        if kind is UUID:
            return msgpack.ExtType(EXT_UUID, obj.bytes)
        if kind is datetime:
            return msgpack.ExtType(EXT_DATETIME, obj.isoformat().encode())
        if kind is tuple:
            return msgpack.ExtType(EXT_TUPLE, self.encode(list(obj)))
        entry = self._by_type.get(kind)
        if entry is not None:
            name, fields = entry
            return msgpack.ExtType(EXT_VALUE, self.encode([name, *fields(obj)]))
        # strict_types also sends subclasses of plain types (a str enum) here:
        # an unregistered one is a programming error, not something to coerce.
        raise TypeError(f"cannot encode {kind.__qualname__}: register it as a value type")

    def _ext_hook(self, code: int, payload: bytes) -> Any:
        if code == EXT_UUID:
            return UUID(bytes=payload)
        if code == EXT_DATETIME:
            return datetime.fromisoformat(payload.decode())
        if code == EXT_TUPLE:
            return tuple(self.decode(payload))
        if code == EXT_VALUE:
            name, *data = self.decode(payload)
            try:
                make = self._by_name[name]
            except KeyError:
                raise StoreCorrupt(f"stored record names unknown value type {name!r}") from None
            return make(data)
        raise StoreCorrupt(f"stored record has unknown msgpack extension type {code}")
