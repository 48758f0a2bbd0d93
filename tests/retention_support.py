"""A store with points placed in time, for the retention tests.

Terms: a *day* is one backup point (``sync``) taken at noon UTC of a
day of November 2026 by the fixed clock of ``Store.init``; each day rewrites
one 64 KiB stretch of the disk image with fresh random bytes, so each point
has some chunks of its own and shares the rest with its neighbours.
"""

from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ckpt import DiskFormat, Store

SIZE = 1 << 20  # 16 stretches of 64 KiB: small enough for ~10 points in well under a second
STRETCH = 64 << 10


@dataclass
class Clock:
    """The store's clock: returns ``now``, which the test moves."""

    now: datetime = datetime(2026, 11, 1, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    """A store, its clock and the disk image every point of VM ``vm`` recorded."""

    store: Store
    clock: Clock
    path: Path
    image: bytearray
    rng: random.Random
    expected: dict[str, bytes] = field(default_factory=dict)  # point name -> disk bytes
    stretch: int = STRETCH

    def change(self, stretches: int = 1) -> None:
        for _ in range(stretches):
            at = self.rng.randrange(len(self.image) // self.stretch) * self.stretch
            self.image[at : at + self.stretch] = self.rng.randbytes(self.stretch)

    def sync(self, vm: str, name: str, when: datetime) -> None:
        self.clock.now = when
        self.change()
        self.store.sync(vm, {"D": io.BytesIO(bytes(self.image))}, name=name)
        self.expected[name] = bytes(self.image)

    def checkpoint(self, vm: str, name: str, when: datetime) -> None:
        self.clock.now = when
        self.change()
        self.store.create_checkpoint(vm, name, disks={"D": io.BytesIO(bytes(self.image))})
        self.expected[name] = bytes(self.image)


def quick_dir() -> str | None:
    """Where a throwaway store goes: /dev/shm when writable (each event's fsync
    there costs nothing; on the CI disk ~5 ms, which made these tests I/O bound)."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def world(
    path: Path,
    seed: int = 16,
    vm: str = "web",
    size: int = SIZE,
    stretch: int = STRETCH,
    **backends: Any,
) -> World:
    clock = Clock()
    store = Store.init(path, actor="alice", clock=clock, **backends)
    store.register_vm(vm, [("D", DiskFormat.VHDX)])
    rng = random.Random(seed)
    return World(store, clock, path, bytearray(rng.randbytes(size)), rng, stretch=stretch)


def day(n: int, hour: int = 12) -> datetime:
    """Noon UTC of November ``n``, 2026 (n may run past 30: into December)."""
    return datetime(2026, 11, 1, hour, tzinfo=UTC) + timedelta(days=n - 1)


def restored(store: Store, vm: str, point: str, at: str | int | None = None) -> bytes:
    """Disk D of ``vm`` at ``point`` (or "Now", which only ``open_disk`` takes)."""
    if point == "Now":
        with store.open_disk(vm, point, "D", at=at) as reader:
            return reader.read()
    out = io.BytesIO()
    store.restore_disk(vm, point, "D", out, at=at)
    return out.getvalue()


def stored_bytes(store: Store) -> int:
    """The size of every pack file, as the chunk backend lists them: what the
    store occupies (the index's ``stored_bytes`` leaves out frame and pack
    headers, ~7% of 4 KiB chunks)."""
    backend = store.unit_of_work.chunks.backend
    return sum(backend.size(name) for name in backend.list("packs/"))
