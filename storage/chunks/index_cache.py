"""The chunk-index cache directory: sorted runs, a pack table, a manifest, a lock.

Terms (decision 0011; docs/chunk-format.md §9 has the bytes):
    cache       one directory per store and host, derived from the store's index
                files (which stay the only authority): never repaired, rebuilt.
    pack table  pack number (what a slot holds; assigned in the order packs
                reach the cache) -> pack id, created, size, entry count, live.
                A pack whose index file is gone is *gone* (a tombstone): lookups
                skip its slots and merges drop them.
    snapshot    one published state: the runs (oldest first), the pack table
                and the totals ``stats`` reports. Immutable; readers take one
                and never lock.
    totals      distinct chunks, their stored and uncompressed bytes (the copy
                with the smallest live pack number counts). Kept exactly by
                appends; a tombstone makes them unknown until the next full
                merge (``compact``), which ``stats`` runs when they are.

Writers (appends, merges, rebuilds) hold ``flock`` on ``lock``; every file is
written to a temporary name, fsynced and renamed, the manifest last, so a crash
leaves the old snapshot or the new one; a run no manifest names is deleted by
the next lock holder. Anything unreadable, damaged or of another version makes
``load`` return None and the caller rebuild from the index files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import numpy as np
import numpy.typing as npt

from ckpt.domain.errors import ChunkMissing, IndexCorrupt

from .backend import ChunkBackend, LocalChunkBackend
from .index_types import PackInfo
from .layout import pack_name
from .run_file import ENTRY_BYTES, U32, U64, Run, RunWriter, sort_order

CACHE_ENV = "XDG_CACHE_HOME"
META_OBJECT = "ckpt-store.json"  # a remote store's meta (ckpt/store_config.py): its store id
MANIFEST = "MANIFEST"
LOCK = "lock"
MAGIC = b"CKPTCIDX"
VERSION = 1
_HEAD = struct.Struct("<8sII")
_CRC = struct.Struct("<I")
# 40 B a pack: id, created, size, entry count, live (1) or gone (0), padding
PACK_RECORD = np.dtype(
    [
        ("id", "V16"),
        ("created", "<f8"),
        ("size", "<u8"),
        ("entries", "<u4"),
        ("live", "u1"),
        ("pad", "V3"),
    ]
)
SLOT_NAMES = ["pack", "frame_offset", "frame_clen", "frame_ulen", "slice_offset", "chunk_length"]
# Entries per merge window (and per streamed batch of ``items``, and per run of
# a rebuild): 64 K x 56 B = 3.5 MiB of columns, ~5x that with the sort's and
# filters' copies. 256 K held ~70 MiB in a capture's process (its merges after
# the append); 64 K builds 10 M entries at the same rate (bench/README.md).
WINDOW = 64 << 10
# A run merges with the one before it while that one is < RATIO x its size:
# ~log4(N / 64 K) runs, 6-8 at 100 M entries.
RATIO = 4


class PackTable(Sequence[PackInfo]):
    """The pack table of one snapshot, as ``PackInfo`` made on demand (40 B a
    pack held, not a Python object each)."""

    def __init__(self, records: npt.NDArray[np.void]) -> None:
        self.records = records  # never changed once here: a change makes a new table
        self.live = records["live"].astype(bool)
        self._live_ids: dict[bytes, int] | None = None

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, i: int) -> PackInfo: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[PackInfo]: ...
    def __getitem__(self, i: int | slice) -> PackInfo | Sequence[PackInfo]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        r = self.records[i]
        pack_id = r["id"].tobytes()
        return PackInfo(
            pack_name(pack_id), pack_id, float(r["created"]), int(r["size"]), int(r["entries"])
        )

    def live_numbers(self) -> npt.NDArray[np.int64]:
        return np.flatnonzero(self.live)

    def live_ids(self) -> dict[bytes, int]:
        """pack id -> number, of the live packs (made once per table: do not change it)."""
        if self._live_ids is None:
            ids = self.records["id"]
            self._live_ids = {ids[n].tobytes(): int(n) for n in self.live_numbers()}
        return self._live_ids


@dataclass
class Snapshot:
    runs: list[Run]
    names: list[str]
    packs: PackTable
    totals: tuple[int, int, int] | None  # chunks, stored, uncompressed; None: unknown
    next_run: int
    signature: tuple[int, int, int] = (0, 0, 0)  # the manifest's (inode, mtime, size)
    live_bytes: bytearray = field(default_factory=bytearray)
    mapped_bytes: int = 0

    def __post_init__(self) -> None:
        self.live_bytes = bytearray(self.packs.live.astype(np.uint8).tobytes())
        self.mapped_bytes = sum(r.n for r in self.runs) * ENTRY_BYTES  # all runs mapped whole

    @property
    def count(self) -> int:
        return sum(r.n for r in self.runs)


def empty_snapshot() -> Snapshot:
    return Snapshot([], [], PackTable(np.zeros(0, PACK_RECORD)), (0, 0, 0), 0)


class CacheDir:
    """One cache directory; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path / MANIFEST)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the writers' lock (appenders, mergers, rebuilds; never readers)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    # ----------------------------------------------------------- reading
    def load(self) -> Snapshot | None:
        """The published snapshot, or None if there is none or it is damaged,
        of another version, or names a run that is gone or damaged (retried
        once: a merger may have replaced both meanwhile)."""
        for _ in range(3):
            sig = self.signature()
            if sig is None:
                return None
            try:
                data = (self.path / MANIFEST).read_bytes()
                return self._decode(data, sig)
            except FileNotFoundError:
                continue  # a merger replaced the manifest or deleted a run: read again
            except (IndexCorrupt, ValueError, KeyError, TypeError, OSError):
                return None
        return None

    def _decode(self, data: bytes, sig: tuple[int, int, int]) -> Snapshot:
        if len(data) < _HEAD.size + _CRC.size:
            raise IndexCorrupt("manifest too short")
        magic, version, head_len = _HEAD.unpack_from(data)
        (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
        if magic != MAGIC or version != VERSION or zlib.crc32(data[: -_CRC.size]) != crc:
            raise IndexCorrupt("manifest damaged or of another version")
        head = json.loads(data[_HEAD.size : _HEAD.size + head_len])
        table = data[_HEAD.size + head_len : -_CRC.size]
        if len(table) % PACK_RECORD.itemsize:
            raise IndexCorrupt("pack table damaged")
        records = np.frombuffer(table, PACK_RECORD).copy()
        names = [str(r["name"]) for r in head["runs"]]
        runs = [Run(self.path / n) for n in names]
        for r, want in zip(runs, head["runs"], strict=True):
            if r.n != int(want["count"]):
                raise IndexCorrupt(f"run {r.path} holds {r.n} entries, manifest says {want}")
        totals = head["totals"]
        return Snapshot(
            runs,
            names,
            PackTable(records),
            None if totals is None else (int(totals[0]), int(totals[1]), int(totals[2])),
            int(head["next_run"]),
            sig,
        )

    # ----------------------------------------------------------- writing
    def publish(self, snap: Snapshot) -> Snapshot:
        """Write ``snap``'s manifest (temp, fsync, rename, directory fsync) and
        delete the runs it no longer names. Call with the lock held."""
        head = json.dumps(
            {
                "runs": [
                    {"name": n, "count": r.n} for n, r in zip(snap.names, snap.runs, strict=True)
                ],
                "totals": None if snap.totals is None else list(snap.totals),
                "next_run": snap.next_run,
                "slot": SLOT_NAMES,
            }
        ).encode()
        body = _HEAD.pack(MAGIC, VERSION, len(head)) + head + snap.packs.records.tobytes()
        _write_file(self.path / MANIFEST, body + _CRC.pack(zlib.crc32(body)))
        snap.signature = self.signature() or (0, 0, 0)
        self.sweep(set(snap.names))
        return snap

    def sweep(self, keep: set[str]) -> None:
        """Delete run files and temporaries ``keep`` does not name (a crashed
        writer's, or runs a merge replaced). Call with the lock held."""
        for entry in os.scandir(self.path):
            if entry.name.endswith(".tmp") or (
                entry.name.endswith(".run") and entry.name not in keep
            ):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def clear(self) -> None:
        """Forget everything (the lock file stays). Call with the lock held."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path / MANIFEST)
        self.sweep(set())

    @staticmethod
    def run_name(snap: Snapshot) -> str:
        """A fresh run name (``snap``'s counter moves on)."""
        name = f"{snap.next_run:010d}.run"
        snap.next_run += 1
        return name

    def new_run(self, snap: Snapshot, n: int) -> tuple[str, RunWriter]:
        name = self.run_name(snap)
        return name, RunWriter(self.path / name, n)


def _write_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # on a full disk, give back what it took now
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cache_dir_for(backend: ChunkBackend) -> Path | None:
    """Where the cache of ``backend`` lives: ``<root>/.cache/chunk-index`` for a
    local directory (hidden names are never listed as objects), else
    ``$XDG_CACHE_HOME/ckpt/<store id>/chunk-index`` (``~/.cache`` without it),
    the store id read from the store's meta object (a hash of the backend's
    address for a bare chunk store). None for a memory backend: a temporary
    directory, removed at ``close``."""
    if isinstance(backend, LocalChunkBackend):
        return backend.root / ".cache" / "chunk-index"
    if type(backend).__name__ == "MemoryChunkBackend":
        return None
    key = None
    try:
        meta = json.loads(backend.get(META_OBJECT))
        key = str(meta["store_id"]) if isinstance(meta, dict) and meta.get("store_id") else None
    except (ChunkMissing, ValueError, KeyError):
        key = None
    if key is None or not key.replace("-", "").isalnum():
        key = hashlib.sha256(repr(backend).encode()).hexdigest()[:32]
    base = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache")
    return Path(base) / "ckpt" / key / "chunk-index"


# --------------------------------------------------------------- streaming
def cut_keys(fences: Sequence[U64], window: int, spacing: int = 512) -> list[int]:
    """Keys that cut sorted runs into pieces of ~``window`` entries in all.

    Fence key i of a run has ``spacing * i`` entries of that run below it, so
    the entries of all runs below any fence key are known within ``spacing``
    per run; boundaries are the fence keys where that count crosses multiples
    of ``window`` (a piece is at most ``window + spacing x runs``). Fence keys
    alone, taken every so often, would not do: the runs' first keys all lie
    near the smallest id."""
    keys = np.unique(np.concatenate(list(fences))) if fences else np.zeros(0, np.uint64)
    below = np.zeros(len(keys), np.int64)
    for fence in fences:
        below += spacing * np.searchsorted(fence, keys, "left").astype(np.int64)
    targets = np.arange(window, int(below[-1]) + 1 if len(below) else 0, window, dtype=np.int64)
    at = np.searchsorted(below, targets, "left")
    return [int(k) for k in np.unique(keys[at[at < len(keys)]])]


def windows(runs: Sequence[Run], window: int = WINDOW) -> Iterator[tuple[U64, U32]]:
    """Every entry of ``runs`` in (key, pack number) order, in sorted batches of
    about ``window`` entries (read with ``pread``: memory is one batch).

    Batch boundaries come from ``cut_keys``; all copies of one key fall into
    the same batch."""
    if not runs:
        return
    bounds = cut_keys([r.fence for r in runs], window)
    cuts = [[0, *(r.lower_bound_one(b) for b in bounds), r.n] for r in runs]
    for j in range(len(bounds) + 1):
        pieces = [
            r.read(c[j], c[j + 1]) for r, c in zip(runs, cuts, strict=True) if c[j + 1] > c[j]
        ]
        if not pieces:
            continue
        keys = np.concatenate([p[0] for p in pieces])
        slots = np.concatenate([p[1] for p in pieces])
        if len(pieces) > 1:
            order = sort_order(keys, slots[:, 0])
            keys, slots = keys[order], slots[order]
        yield keys, slots


def first_of_each(keys: U64) -> npt.NDArray[np.bool_]:
    """Where a sorted batch's id differs from the previous row's: the winners."""
    first = np.ones(len(keys), bool)
    if len(keys) > 1:
        first[1:] = np.any(keys[1:] != keys[:-1], axis=1)
    return first


def stored_share(slots: U32) -> int:
    """The stored (compressed) bytes of ``slots``' chunks: each chunk's share of
    its frame, ``frame compressed x chunk length / frame uncompressed``. A v1
    frame is one chunk (its whole frame); the 16 chunks of a 64 KiB group share
    one frame, which counted whole for each made ``stats`` report 15x the pack
    bytes (100 MB stored for 6.4 MB of packs)."""
    clen = slots[:, 2].astype(np.uint64)
    return int((clen * slots[:, 5] // np.maximum(slots[:, 3], 1)).sum(dtype=np.uint64))


def live_windows(
    runs: Sequence[Run], live: npt.NDArray[np.bool_], winners_only: bool, window: int = WINDOW
) -> Iterator[tuple[U64, U32]]:
    """``windows`` without slots of gone packs; ``winners_only``: one row per id."""
    for keys, slots in windows(runs, window):
        keep = live[slots[:, 0]]
        keys, slots = keys[keep], slots[keep]
        if winners_only and len(keys):
            first = first_of_each(keys)
            keys, slots = keys[first], slots[first]
        if len(keys):
            yield keys, slots


def merge_runs(cache: CacheDir, snap: Snapshot, start: int, count_totals: bool = False) -> Snapshot:
    """Merge runs ``start``.. of ``snap`` into one (gone packs dropped), publish
    it and return the new snapshot. ``count_totals`` (a merge of every run):
    the totals are recounted on the way."""
    merging = snap.runs[start:]
    live = snap.packs.live
    if live.all():
        n = sum(r.n for r in merging)
    else:  # count what survives first: a run's size is in its header
        n = sum(len(keys) for keys, _ in live_windows(merging, live, False))
    totals = [0, 0, 0]
    names = snap.names[:start]
    runs = snap.runs[:start]
    if n:
        name, w = cache.new_run(snap, n)
        try:
            for keys, slots in live_windows(merging, live, False):
                w.write(keys, slots)
                if count_totals:
                    first = first_of_each(keys)
                    totals[0] += int(first.sum())
                    totals[1] += stored_share(slots[first])
                    totals[2] += int(slots[first, 5].sum(dtype=np.uint64))
            w.finish()
        except BaseException:
            w.abandon()
            raise
        names.append(name)
        runs.append(Run(cache.path / name))
    new_totals = (totals[0], totals[1], totals[2]) if count_totals else snap.totals
    new = Snapshot(runs, names, snap.packs, new_totals, snap.next_run)
    return cache.publish(new)


def tiered_merges(cache: CacheDir, snap: Snapshot) -> Snapshot:
    """Merge the newest runs while the one before is < ``RATIO`` x the newest."""
    runs = snap.runs
    start = len(runs) - 1
    size = runs[-1].n if runs else 0
    while start > 0 and runs[start - 1].n < RATIO * size:
        start -= 1
        size += runs[start].n
    if start < len(runs) - 1:
        snap = merge_runs(cache, snap, start)
    return snap
