"""What ``ckpt serve`` offers: exports, and the catalogue that opens them by name.

Terms: an *export* is one disk (or memory image) as of one point, named
``VM/POINT/DISK`` (or ``VM/POINT/memory``); its bytes come from a *source*, a
read-only random-access reader (``ckpt.storage.disk_reader.DiskReader`` in the
product, bytes in the tests). The *catalogue* knows every export's name and how
to open it; it opens one lazily when a client first asks (``NBD_OPT_GO``) and
shares it between connections (a reader's ``pread`` is thread-safe), closing it
when the last connection using it ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ckpt.domain import NotAllowed, NotFound


class Source(Protocol):
    """The random-access reader an export reads: ``DiskReader``'s read side.
    ``extents`` with ``limit`` returns at most the first ``limit`` runs (qemu asks
    for block status one extent at a time: the rest of the range is not walked)."""

    @property
    def size(self) -> int: ...

    def pread(self, offset: int, length: int) -> bytes: ...

    def extents(
        self, offset: int, length: int, limit: int | None = None
    ) -> list[tuple[int, int, bool]]: ...

    def close(self) -> None: ...


class Export(Protocol):
    """An export as the server uses it. ``pread`` and ``extents`` are thread-safe;
    a read-only export (``writable`` false) raises NotAllowed on ``pwrite``."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def writable(self) -> bool: ...

    def pread(self, offset: int, length: int) -> bytes: ...

    def extents(
        self, offset: int, length: int, limit: int | None = None
    ) -> list[tuple[int, int, bool]]: ...

    def pwrite(self, offset: int, data: bytes) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class ReadOnlyExport:
    """A source under a name: reads pass through, writes are refused."""

    def __init__(self, name: str, description: str, source: Source) -> None:
        self._name = name
        self._description = description
        self.source = source

    @property
    def name(self) -> str:
        return self._name

    @property
    def description(self) -> str:
        return self._description

    @property
    def size(self) -> int:
        return self.source.size

    @property
    def writable(self) -> bool:
        return False

    def pread(self, offset: int, length: int) -> bytes:
        return self.source.pread(offset, length)

    def extents(
        self, offset: int, length: int, limit: int | None = None
    ) -> list[tuple[int, int, bool]]:
        return self.source.extents(offset, length, limit)

    def pwrite(self, offset: int, data: bytes) -> None:
        raise NotAllowed(f"export {self._name!r} is read-only")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.source.close()


@dataclass(frozen=True)
class Entry:
    """One export the catalogue offers: its name, a description and its opener."""

    name: str
    description: str
    open: Callable[[], Export]


class Catalogue:
    """Exports by name, opened on first use and shared while in use.

    ``default`` is the export the empty name ("") stands for, if any: old
    clients (and ``nbd://host/``) ask for "".
    """

    def __init__(self, entries: list[Entry], default: str | None = None) -> None:
        self.entries = {e.name: e for e in entries}
        self.default = default
        self._lock = threading.Lock()
        self._open: dict[str, tuple[Export, int]] = {}

    def listing(self) -> list[Entry]:
        return list(self.entries.values())

    def resolve(self, name: str) -> Entry:
        if name == "" and self.default is not None:
            name = self.default
        entry = self.entries.get(name)
        if entry is None:
            raise NotFound(f"no export named {name!r}")
        return entry

    def acquire(self, name: str) -> Export:
        """The export (opened now if no connection has it open); pair with ``release``.
        Opening is serialised: a reader's set-up reads the store's read models."""
        entry = self.resolve(name)
        with self._lock:
            export, users = self._open.get(entry.name) or (entry.open(), 0)
            self._open[entry.name] = (export, users + 1)
            return export

    def release(self, export: Export) -> None:
        with self._lock:
            held = self._open.get(export.name)
            if held is None:
                return
            if held[1] > 1:
                self._open[export.name] = (held[0], held[1] - 1)
                return
            del self._open[export.name]
        export.close()

    def close(self) -> None:
        with self._lock:
            opened, self._open = list(self._open.values()), {}
        for export, _ in opened:
            export.close()
