"""Taking index files into the chunk-index cache: reading them, appending runs,
marking packs gone (called with the cache's lock held).

Terms (index.py and index_cache.py define the rest):
    listing   the pack ids whose index files are in ``index/`` now.
    own       index files this process wrote and holds (``ChunkIndex.add``): taken
              in without reading them back.
    fresh     a cache being built from nothing: runs of ``WINDOW`` entries are
              appended without merging or counting, then merged once, counting.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ckpt.domain.errors import ChunkMissing, IndexCorrupt

from .backend import ChunkBackend, parallel_requests
from .index_cache import (
    PACK_RECORD,
    WINDOW,
    CacheDir,
    PackTable,
    Snapshot,
    first_of_each,
    merge_runs,
    stored_share,
    tiered_merges,
)
from .index_columns import PackColumns, columns_of, parse_index_columns
from .index_file import IndexFile
from .layout import index_name, pack_id_of_index
from .run_file import SLOT_WIDTH, U32, U64, Run, sort_order, write_run

PROBE_BATCH = 2048  # ids per numpy probe batch


def read_index_file(backend: ChunkBackend, name: str) -> PackColumns | None:
    """The columns of index file ``name`` (None: deleted meanwhile);
    ``IndexCorrupt`` names it if damaged."""
    try:
        data = backend.get(name)
    except ChunkMissing:
        return None  # deleted between list and get: its pack is going too
    f = parse_index_columns(data, name)
    if f.pack_id != pack_id_of_index(name):
        raise IndexCorrupt(
            f"index file {name!r} is damaged: it describes pack {f.pack_id.hex()}; "
            "run rebuild_index"
        )
    return f


def read_index_files(backend: ChunkBackend, pack_ids: list[bytes]) -> list[PackColumns]:
    todo = [index_name(pid) for pid in pack_ids]
    workers = parallel_requests(backend)
    if workers > 1 and len(todo) > 1:
        # S3: one GET per index file, ~2-4 ms each; 300 of them in turn held
        # a capture up 1-3 s.
        with ThreadPoolExecutor(workers, thread_name_prefix="ckpt-index-get") as pool:
            files = list(pool.map(lambda n: read_index_file(backend, n), todo))
    else:
        files = [read_index_file(backend, name) for name in todo]
    return [f for f in files if f is not None]


def apply_listing(
    backend: ChunkBackend,
    cache: CacheDir,
    snap: Snapshot,
    names: set[bytes],
    own_files: list[IndexFile],
    map_limit: int,
) -> Snapshot:
    """Append the index files of ``names`` the snapshot lacks, mark gone the
    packs it has that ``names`` lacks; publish. ``map_limit``: below it the
    runs are probed through their maps (index.py, ``MAP_LIMIT``)."""
    live = snap.packs.live_ids()
    gone = [n for pid, n in live.items() if pid not in names]
    new = sorted(pid for pid in names if pid not in live)  # sorted index-file order
    own = {f.pack_id: f for f in own_files}
    records = snap.packs.records.copy()
    if gone:
        records["live"][gone] = 0
    totals = snap.totals if not gone else None
    fresh = not snap.runs and not len(records)
    snap = Snapshot(snap.runs, snap.names, PackTable(records), totals, snap.next_run)
    batch: list[PackColumns] = []
    count = 0
    for i in range(0, len(new), 64):
        cols = read_index_files(backend, [pid for pid in new[i : i + 64] if pid not in own])
        cols += [columns_of(own[pid]) for pid in new[i : i + 64] if pid in own]
        for c in cols:
            batch.append(c)
            count += len(c.keys)
            if count >= WINDOW:
                snap = append_files(cache, snap, batch, not fresh, map_limit)
                batch, count = [], 0
    if batch or gone or new:
        snap = append_files(cache, snap, batch, not fresh, map_limit)
    if fresh and snap.runs:
        snap = merge_runs(cache, snap, 0, count_totals=True)
    return snap


def append_files(
    cache: CacheDir, snap: Snapshot, files: list[PackColumns], count_totals: bool, map_limit: int
) -> Snapshot:
    """One run of ``files``' entries (their packs numbered next), published,
    then the size-tiered merges (none while ``count_totals`` is off: a fresh
    build merges once at its end, 10 M entries in 4.3 s against 16.5 s)."""
    first = len(snap.packs)
    table = np.zeros(len(files), PACK_RECORD)
    for j, f in enumerate(files):
        table[j] = (np.void(f.pack_id), f.created, f.pack_size, len(f.keys), 1, np.void(bytes(3)))
    packs = PackTable(np.concatenate([snap.packs.records, table]))
    names, runs, totals = list(snap.names), list(snap.runs), snap.totals
    n = sum(len(f.keys) for f in files)
    if n:
        keys = np.concatenate([f.keys for f in files])
        slots = np.empty((n, SLOT_WIDTH), np.uint32)
        slots[:, 0] = np.repeat(
            np.arange(first, first + len(files), dtype=np.uint32), [len(f.keys) for f in files]
        )
        slots[:, 1:] = np.concatenate([f.slots for f in files])
        order = sort_order(keys, slots[:, 0])
        keys, slots = keys[order], slots[order]
        if totals is not None and count_totals:
            totals = _add_totals(totals, snap, keys, slots, map_limit)
        elif not count_totals:
            totals = None
        name = cache.run_name(snap)
        write_run(cache.path / name, keys, slots)
        names.append(name)
        runs.append(Run(cache.path / name))
    new = cache.publish(Snapshot(runs, names, packs, totals, snap.next_run))
    return new if not count_totals else tiered_merges(cache, new)


def _add_totals(
    totals: tuple[int, int, int], snap: Snapshot, keys: U64, slots: U32, map_limit: int
) -> tuple[int, int, int]:
    """``totals`` plus the entries of a new sorted run whose id no live copy in
    ``snap`` holds yet (and only the first copy of each id in the run)."""
    first = first_of_each(keys)
    keys, slots = keys[first], slots[first]
    found = np.zeros(len(keys), bool)
    live = snap.packs.live
    mapped = snap.mapped_bytes <= map_limit
    for run in snap.runs:
        todo = np.flatnonzero(~found)
        for start in range(0, len(todo), PROBE_BATCH):
            part = todo[start : start + PROBE_BATCH]
            pos, _ = run.lookup(keys[part], live, snap.live_bytes, mapped)
            found[part[pos >= 0]] = True
    new = ~found
    return (
        totals[0] + int(new.sum()),
        totals[1] + stored_share(slots[new]),
        totals[2] + int(slots[new, 5].sum(dtype=np.uint64)),
    )
