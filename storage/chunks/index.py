"""The chunk index: chunk id -> where its frame lies, from every index file of a backend.

Terms:
    index       chunk id -> slot (pack number, frame offset, frame compressed
                length, frame uncompressed length, slice offset, chunk length),
                for every chunk of every index file, kept in a local cache of
                sorted runs (index_cache.py, run_file.py; decision 0011).
    pack info   what the index knows of a pack without opening it: name, id,
                creation time, size, entry count.
    winner      when two packs hold the same chunk (two writers stored it at
                the same time, or gc copied it), the live copy in the pack the
                cache took in first (the smallest pack number) answers; the
                other copy is garbage for GC. A fresh cache numbers packs in
                sorted index-file order, the rule of the old in-memory index.
    pending     index files this process wrote (``add``) and not yet put into
                the cache: held in memory, written as one run at ``refresh``,
                ``close`` or past ``PENDING_LIMIT`` entries.

``refresh`` lists ``index/`` and compares it with the cache's pack table: new
files are read and appended as one run, deleted ones mark their packs gone
(no reload). Memory: a snapshot holds 40 B per pack and 8 B per 512 entries;
runs are mapped while small, read with ``pread`` when large (``MAP_LIMIT``).

The cache is optional: when its device has no room for a run or a manifest
(ENOSPC, EDQUOT: a full store device holds ``.cache`` too), the process goes on
with a throw-away cache in the system's temporary directory, built from the
index files (O(index files), as a first open), and the store's cache stays as
it was: a full disk never fails a command that only reads. ``StoreFull`` only
when that has no room either (decision 0014).
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import struct
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ckpt.domain.errors import IndexCorrupt
from ckpt.storage.no_space import is_no_space, os_reason, store_full

from .backend import ChunkBackend, parallel_requests
from .ids import ID_SIZE, ChunkId
from .index_cache import (
    WINDOW,
    CacheDir,
    PackTable,
    Snapshot,
    cache_dir_for,
    empty_snapshot,
    live_windows,
    merge_runs,
)
from .index_file import IndexFile
from .index_sync import PROBE_BATCH, apply_listing, read_index_file
from .index_types import ChunkStats, Location, PackInfo, Slot
from .layout import INDEX, index_name, pack_id_of_index, pack_name
from .pack import PackEntry
from .run_file import (
    SLOT_WIDTH,
    U32,
    U64,
    ids_to_keys,
    keys_to_ids,
    sort_order,
)

__all__ = ["ChunkIndex", "ChunkStats", "Location", "PackInfo", "Slot", "cache_dir_for"]


# Pending entries (this process's own index files) held in memory before they
# are written as a run: ~180 B each in the dict, 11 MiB at 64 K.
PENDING_LIMIT = 64 << 10
# Runs that together are smaller than this are searched through memory maps
# (the fastest way: 2-5 M lookups/s at 1 M entries); larger ones with ``pread``
# of the key page (and of the rest and slot of a hit): a fault on a map maps
# the whole large folio around it (260-350 KiB measured), and ``ru_maxrss``,
# the memory measure, counts those pages: 556-605 MiB at 10 M entries
# through maps, even with the pages dropped every 768 probes.
MAP_LIMIT = 96 << 20
_KEY = struct.Struct(">4Q")  # a chunk id as the four words of run_file.py's key


@dataclass
class _Pending:
    """This process's own index files, not yet in the cache."""

    files: list[IndexFile] = field(default_factory=list)
    ids: dict[bytes, tuple[int, PackEntry]] = field(default_factory=dict)  # id -> (file, entry)
    names: set[bytes] = field(default_factory=set)

    def add(self, f: IndexFile) -> None:
        j = len(self.files)
        self.files.append(f)
        self.names.add(f.pack_id)
        for e in f.entries:
            self.ids.setdefault(e.chunk_id, (j, e))


@dataclass
class _View:
    snap: Snapshot
    pending: _Pending
    packs: Sequence[PackInfo]  # the snapshot's table, then the pending files' packs


class _Packs(Sequence[PackInfo]):
    """A snapshot's pack table followed by the pending files' packs."""

    def __init__(self, table: PackTable, pending: list[IndexFile]) -> None:
        self._table = table
        self._pending = pending

    def __len__(self) -> int:
        return len(self._table) + len(self._pending)

    def __getitem__(self, i: int) -> PackInfo:  # type: ignore[override]
        if i < len(self._table):
            return self._table[i]
        f = self._pending[i - len(self._table)]
        return PackInfo(pack_name(f.pack_id), f.pack_id, f.created, f.pack_size, len(f.entries))


def _slot_of(number: int, e: PackEntry) -> Slot:
    return (
        number, e.offset, e.compressed_length, e.uncompressed_length, e.slice_offset,
        e.chunk_length,
    )  # fmt: skip


class ChunkIndex:
    """The index of one backend, in its cache directory. Thread-safe; loads lazily."""

    def __init__(self, backend: ChunkBackend, cache_dir: Path | None = None) -> None:
        self._backend = backend
        self._lock = threading.RLock()
        self._dir = cache_dir
        self._temp: str | None = None
        self._cache: CacheDir | None = None
        self._view: _View | None = None

    # ----------------------------------------------------------- set-up
    def _cache_dir(self) -> CacheDir:
        if self._cache is None:
            path = self._dir if self._dir is not None else cache_dir_for(self._backend)
            if path is None:
                self._temp = tempfile.mkdtemp(prefix="ckpt-chunk-index-")
                atexit.register(shutil.rmtree, self._temp, True)
                path = Path(self._temp)
            self._cache = CacheDir(path)
        return self._cache

    def _spill(self, error: OSError) -> bool:
        """After ``error`` writing the cache: True if it was for room and the
        index now uses a fresh temporary cache (write again there); False if it
        is another error (raise it). ``StoreFull`` if the temporary cache is the
        one that is full."""
        if not is_no_space(error):
            return False
        cache = self._cache_dir()
        if self._temp is not None:
            raise store_full(
                "the chunk-index cache", str(cache.path), None, os_reason(error), cache.path
            ) from error
        self._temp = tempfile.mkdtemp(prefix="ckpt-chunk-index-")
        atexit.register(shutil.rmtree, self._temp, True)
        self._cache = CacheDir(Path(self._temp))
        return True

    def persist(self) -> None:
        """Write pending entries (``add``) into the cache now, as one run."""
        with self._lock:
            if self._view is not None and self._view.pending.files:
                self._persist(self._names_known())

    def close(self) -> None:
        """Write pending entries into the cache (a later process then need not
        read their index files) and remove a temporary cache."""
        with self._lock:
            view = self._view
            if self._temp is None and view is not None and view.pending.files:
                # the cache is only a cache: the next refresh reads the files (no
                # spill to a temporary cache here: it would be built to be deleted)
                with contextlib.suppress(OSError):
                    self._persist_in(self._cache_dir(), self._names_known(), False)
            self._view = None
            if self._temp is not None:
                shutil.rmtree(self._temp, ignore_errors=True)
                self._temp, self._cache = None, None

    def _ensure_loaded(self) -> _View:
        view = self._view
        if view is None:
            self.refresh()
            view = self._view
            assert view is not None
        return view

    # ----------------------------------------------------------- refresh
    def reload(self) -> None:
        """Forget the cache and read every index file again (after
        ``rebuild_index`` rewrote them)."""
        with self._lock:
            cache = self._cache_dir()
            with cache.locked():
                cache.clear()
            self._view = None
            self.refresh()

    def refresh(self) -> None:
        """Take in index files written or deleted since the last look (by any
        process). ``IndexCorrupt`` names the first damaged file (and the index
        stays as it was); ``ChunkStore.rebuild_index`` repairs it."""
        view = self._view
        listed_after = set(view.pending.names) if view is not None else set()
        names = {pid for n in self._backend.list(INDEX) if (pid := pack_id_of_index(n)) is not None}
        with self._lock:
            # Pending files added before the listing and not in it were deleted
            # since (a gc); those added while it ran may simply be too new for it.
            view = self._view
            if view is not None:
                names |= view.pending.names - listed_after
            self._persist(names, drop_unlisted=True)

    def _names_known(self) -> set[bytes]:
        assert self._view is not None
        return set(self._view.snap.packs.live_ids()) | self._view.pending.names

    def _persist(self, names: set[bytes], drop_unlisted: bool = False) -> None:
        """Bring the cache to ``names`` (the index files there are) plus this
        process's pending files (``drop_unlisted``: only those in ``names``),
        under the cache lock if anything changes; in a temporary cache if the
        cache's device is full (``_spill``)."""
        for _ in range(2):
            try:
                self._persist_in(self._cache_dir(), names, drop_unlisted)
                return
            except OSError as e:
                if not self._spill(e):  # StoreFull when the temporary cache is full too
                    raise

    def _persist_in(self, cache: CacheDir, names: set[bytes], drop_unlisted: bool) -> None:
        old = self._view
        pending = old.pending if old is not None else _Pending()
        if drop_unlisted:
            kept = _Pending()
            for f in pending.files:
                if f.pack_id in names:
                    kept.add(f)
            pending = kept
        names = names | pending.names
        snap = old.snap if old is not None else None
        if snap is None or cache.signature() != snap.signature:
            snap = cache.load()
        if snap is not None and not pending.files and set(snap.packs.live_ids()) == names:
            self._set_view(snap, _Pending())
            return
        with cache.locked():
            loaded = cache.load()
            if loaded is None:
                cache.clear()
                loaded = empty_snapshot()
            snap = apply_listing(self._backend, cache, loaded, names, pending.files, MAP_LIMIT)
        self._set_view(snap, _Pending())

    def _set_view(self, snap: Snapshot, pending: _Pending) -> None:
        self._view = _View(snap, pending, _Packs(snap.packs, pending.files))

    # ----------------------------------------------------------- writes
    def add(self, f: IndexFile) -> None:
        """Record an index file this process has just written (durably)."""
        view = self._ensure_loaded()
        with self._lock:
            view = self._view or view
            if f.pack_id in view.pending.names or f.pack_id in view.snap.packs.live_ids():
                return
            # In place: readers only ``get`` from the dict and index files by
            # number, and a number once handed out keeps its meaning.
            pending = view.pending
            pending.add(f)
            if len(pending.ids) >= PENDING_LIMIT:
                self._persist(self._names_known())

    # ----------------------------------------------------------- lookups
    def location(self, cid: bytes) -> Location | None:
        view = self._ensure_loaded()
        slot = self._find_one(view, cid)
        if slot is None:
            return None
        number, offset, clen, ulen, soff, length = slot
        sl = -1 if (soff == 0 and length == ulen) else length
        return Location(view.packs[number].name, offset, clen, ulen, soff, sl)

    def _find_one(self, view: _View, cid: bytes) -> Slot | None:
        if len(cid) != ID_SIZE:
            return None
        slot = self._find_in_runs(view, cid)
        if slot is not None:
            return slot
        hit = view.pending.ids.get(cid)
        if hit is None:
            return None
        return _slot_of(len(view.snap.packs) + hit[0], hit[1])

    def locate_many(self, cids: Sequence[bytes]) -> tuple[Sequence[PackInfo], list[Slot | None]]:
        """Where each of ``cids`` is, as (packs, one ``Slot`` or None per id), in
        the caller's order. A slot's first field indexes the packs (a read-only
        view of one index generation). Sorted internally, probed in batches."""
        if not cids:
            return [], []  # without loading: nothing to answer (and nothing to raise)
        view = self._ensure_loaded()
        slots, found = self._locate(view, cids)
        out: list[Slot | None] = [None] * len(cids)
        rows = slots.tolist()
        for i in np.flatnonzero(found).tolist():
            r = rows[i]
            out[i] = (r[0], r[1], r[2], r[3], r[4], r[5])
        if view.pending.ids:
            base = len(view.snap.packs)
            for i, cid in enumerate(cids):
                if out[i] is None:
                    hit = view.pending.ids.get(cid)
                    if hit is not None:
                        out[i] = _slot_of(base + hit[0], hit[1])
        return view.packs, out

    def _locate(self, view: _View, cids: Sequence[bytes]) -> tuple[U32, npt.NDArray[np.bool_]]:
        """Slots and found flags of ``cids`` (caller's order) in the runs."""
        n = len(cids)
        slots = np.zeros((n, SLOT_WIDTH), np.uint32)
        found = np.zeros(n, bool)
        good = [i for i, c in enumerate(cids) if len(c) == ID_SIZE]
        if len(good) < 8:
            for i in good:
                s = self._find_in_runs(view, cids[i])
                if s is not None:
                    slots[i], found[i] = s, True
            return slots, found
        for start in range(0, len(good), PROBE_BATCH):
            part = np.array(good[start : start + PROBE_BATCH], np.int64)
            keys = ids_to_keys([cids[i] for i in part.tolist()])
            order = sort_order(keys)
            got, hit = self._probe(view, keys[order])
            at = part[order]
            slots[at] = got
            found[at] = hit
        return slots, found

    def _find_in_runs(self, view: _View, cid: bytes) -> Slot | None:
        k = _KEY.unpack(cid)
        snap = view.snap
        mapped = snap.mapped_bytes <= MAP_LIMIT
        for run in snap.runs:
            s = run.lookup_one(k, snap.live_bytes, mapped)
            if s is not None:
                return (s[0], s[1], s[2], s[3], s[4], s[5])
        return None

    def _probe(self, view: _View, keys: U64) -> tuple[U32, npt.NDArray[np.bool_]]:
        """Slots and found flags of sorted ``keys`` against the runs, oldest first."""
        slots = np.zeros((len(keys), SLOT_WIDTH), np.uint32)
        found = np.zeros(len(keys), bool)
        snap = view.snap
        mapped = snap.mapped_bytes <= MAP_LIMIT
        for run in snap.runs:
            todo = np.flatnonzero(~found)
            if not len(todo):
                break
            pos, got = run.lookup(keys[todo], snap.packs.live, snap.live_bytes, mapped)
            hit = pos >= 0
            slots[todo[hit]] = got[hit]
            found[todo[hit]] = True
        return slots, found

    def location_order(self, cids: Sequence[bytes]) -> list[int]:
        """The positions of ``cids`` ordered by where they are stored (pack
        number, then offset; ids the index does not know last), computed in
        numpy: a verify of 786 K ids held ~250 MiB more as a tuple key each."""
        if not cids:
            return []
        view = self._ensure_loaded()
        slots, found = self._locate(view, cids)
        if view.pending.ids:
            base = len(view.snap.packs)
            for i in np.flatnonzero(~found).tolist():
                hit = view.pending.ids.get(cids[i])
                if hit is not None:
                    slots[i] = _slot_of(base + hit[0], hit[1])
                    found[i] = True
        order = np.lexsort((slots[:, 1], slots[:, 0], ~found))
        return [int(i) for i in order.tolist()]

    def contains_many(self, cids: Sequence[bytes]) -> list[bool]:
        """``cid in index`` for each of ``cids``, in one batch."""
        if not cids:
            return []
        view = self._ensure_loaded()
        _, found = self._locate(view, cids)
        out: list[bool] = found.tolist()
        if view.pending.ids:
            pending = view.pending.ids
            out = [f or c in pending for f, c in zip(out, cids, strict=True)]
        return out

    def __contains__(self, cid: object) -> bool:
        # The dedup question of a capture, asked per block (~2-4 us here, against
        # ~1 us for a ``contains_many`` batch of 256: batch where you can).
        if not isinstance(cid, bytes) or len(cid) != ID_SIZE:
            return False
        view = self._view or self._ensure_loaded()
        if cid in view.pending.ids:
            return True
        return self._find_in_runs(view, cid) is not None

    def __len__(self) -> int:
        return self.stats().chunks

    # ----------------------------------------------------------- whole index
    def _settled(self) -> _View:
        """The view with pending files written and totals known (a full merge
        if a tombstone made them unknown)."""
        view = self._ensure_loaded()
        with self._lock:
            view = self._view or view
            if view.pending.files:
                self._persist(self._names_known())
                view = self._view or view
            if view.snap.totals is None:
                cache = self._cache_dir()
                try:
                    with cache.locked():
                        snap = cache.load()
                        if snap is None or snap.signature != view.snap.signature:
                            snap = None
                        if snap is not None and snap.totals is None:
                            snap = merge_runs(cache, snap, 0, count_totals=True)
                except OSError as e:
                    if not self._spill(e):
                        raise
                    snap = None  # built afresh in the temporary cache, totals counted
                if snap is None:
                    self._view = None
                    self.refresh()  # changed meanwhile: take that state in
                    return self._settled()
                self._set_view(snap, _Pending())
                view = self._view or view
        return view

    def batches(self, window: int = WINDOW) -> Iterator[tuple[U64, U32]]:
        """Every chunk's winner copy in id order, as sorted batches of (keys
        (m, 4) u64, slots (m, 6) u32): the streamed form of ``items``."""
        view = self._settled()
        yield from live_windows(view.snap.runs, view.snap.packs.live, True, window)

    def packs_view(self) -> Sequence[PackInfo]:
        """The pack table the slots of ``batches`` index (gone packs included)."""
        return self._settled().snap.packs

    def ids(self) -> Iterator[ChunkId]:
        for keys, _ in self.batches():
            for cid in keys_to_ids(keys):
                yield ChunkId(cid)

    def packs(self) -> list[PackInfo]:
        """Every live pack, in the order the cache took them in."""
        table = self._settled().snap.packs
        return [table[int(n)] for n in table.live_numbers()]

    def items(self) -> Iterator[tuple[PackInfo, PackEntry]]:
        """Every chunk with the pack that holds it (the winner copy), in id order."""
        table = self._settled().snap.packs
        for keys, slots in self.batches():
            for cid, s in zip(keys_to_ids(keys), slots.tolist(), strict=True):
                sl = -1 if (s[4] == 0 and s[5] == s[3]) else s[5]
                yield table[s[0]], PackEntry(ChunkId(cid), s[1], s[2], s[3], s[4], sl)

    def stats(self) -> ChunkStats:
        view = self._settled()
        table = view.snap.packs
        assert view.snap.totals is not None
        chunks, stored, uncompressed = view.snap.totals
        live = table.live
        pack_bytes = int(table.records["size"][live].sum(dtype=np.uint64))
        return ChunkStats(chunks, stored, uncompressed, int(live.sum()), pack_bytes)

    def check(self) -> list[str]:
        """Decode every index file the cache holds (the cache answers without
        reading them again, so only this finds one damaged since) and compare
        every run's checksum. A damaged run drops the cache (the next lookup
        rebuilds it: not a fault of the store). The damaged index files found."""
        try:
            view = self._settled()
        except IndexCorrupt as e:
            return [str(e)]  # a new file: the refresh read it and found it damaged
        damaged_runs = False
        for run in view.snap.runs:
            try:
                run.check()
            except IndexCorrupt:
                damaged_runs = True
        if damaged_runs:
            cache = self._cache_dir()
            with self._lock, cache.locked():
                cache.clear()
                self._view = None
        table = view.snap.packs
        names = [index_name(table[n].pack_id) for n in table.live_numbers().tolist()]

        def damage(name: str) -> str | None:
            try:
                read_index_file(self._backend, name)
            except IndexCorrupt as e:
                return str(e)
            return None

        workers = parallel_requests(self._backend)
        if workers > 1 and len(names) > 1:  # S3: a GET per file, several at once
            with ThreadPoolExecutor(workers, thread_name_prefix="ckpt-index-check") as pool:
                found = list(pool.map(damage, names))
        else:
            found = [damage(name) for name in names]
        return [p for p in found if p is not None]
