"""On-disk chunk index candidates (issue 13, goal 3): build, batched lookups, inserts, RSS.

The map measured: chunk id (32 bytes) -> (pack number u32, offset u32, compressed length
u32, uncompressed length u32), the slot of the old in-memory ``ChunkMap``. Ids are
synthetic (uniform random bytes, like SHA-256/HMAC ids); entries arrive per pack of
``--per-pack`` entries, unsorted, as when a cache is rebuilt from the index files.

Candidates (``--candidates``, comma separated):

    sqlite   a WITHOUT ROWID table keyed by the id (WAL, synchronous=NORMAL), inserts with
             executemany per pack, lookups of a sorted batch with ``id IN (?, ...)``.
    lmdb     the ``lmdb`` package: one put per entry (``putmulti`` per pack), lookups with
             ``Cursor.getmulti`` over the sorted batch.
    lmdb-sorted  lmdb built sorted (the runs' spill and merge) and appended in key order;
             captures insert as lmdb does.
    ckpt     the implementation (``storage/chunks/index.py``): see ``CkptIndex``.
    runs     sorted runs of fixed-size records in files read through a memory map with
             numpy: per run three columns, key u64 (the first 8 bytes of the id, big-endian, so
             integer order is byte order), the other 24 bytes of the id, the 16-byte slot: 48 B
             per entry, and a sidecar ``.fence`` (every 512th key: one per 4 KiB key page).
             New entries become a small sorted run; runs merge size-tiered (a run merges with
             its neighbour when that is < 4x its size), streamed with ``pread`` in bounded
             blocks. Lookup: the fence names each id's key page, a branchless binary search in
             that page for all ids at once, the other 24 bytes compared where the key matched;
             oldest run first (the first location wins). The mapped pages are dropped every
             ``BENCH_INDEX_RELEASE_EVERY`` lookup batches (default 1).
    hashpart the same records in 256 partition files by the id's first byte, each a sorted
             run rewritten (merged) on insert: (d) of the brief.

Every candidate runs in a child process of its own (its peak RSS is the child's
``ru_maxrss``); the harness stays small. One table per run; medians over ``--repeat``.
Cold cache: with ``--drop-caches`` (root) the page cache is dropped before the first lookup
batch after a fresh open. Concurrency: a writer process inserts packs for ``--concurrency-s``
seconds while the measuring process looks up batches; reported: lookups/s while writing,
inserts/s of the writer, errors.

    .venv/bin/python bench/bench_index.py --entries 1000000 --candidates sqlite,lmdb,runs
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ID = 32
SLOT = 16
REC = np.dtype([("key", "<u8"), ("rest", "V24"), ("slot", "<u4", (4,))])
MISS_SEED = 0xDEAD
# runs: every FENCE-th key of a run (one 4 KiB page of keys) in a sidecar ``.fence`` file, read
# into memory at open (16 KiB per 1 M entries): a lookup searches it first, then one key page
FENCE = 512
# runs: drop the mapped pages after this many lookup batches (a batch of 4096 random ids
# touches ~2 pages per id: 32 MiB that ru_maxrss counts until they are dropped)
RELEASE_EVERY = int(os.environ.get("BENCH_INDEX_RELEASE_EVERY", "1"))


# -- synthetic data --------------------------------------------------------------------------


def pack_ids(seed: int, pack: int, per_pack: int) -> np.ndarray:
    """The ids of one pack: (per_pack, 32) uint8, deterministic."""
    rng = np.random.default_rng([seed, pack])
    return np.frombuffer(rng.bytes(ID * per_pack), np.uint8).reshape(per_pack, ID)


def pack_slots(pack: int, per_pack: int) -> np.ndarray:
    slots = np.empty((per_pack, 4), "<u4")
    slots[:, 0] = pack
    slots[:, 1] = np.arange(per_pack, dtype="<u4") * 1600 + 12
    slots[:, 2] = 1600
    slots[:, 3] = 4096
    return slots


def pack_batch_ids(seed: int, packs: int, per_pack: int, size: int, n: int) -> np.ndarray:
    """A sorted batch: half ids present (drawn from 8 random packs: cheap to regenerate),
    half absent (random)."""
    rng = np.random.default_rng([seed, n, 1])
    hits = size // 2
    chosen = rng.choice(packs, min(8, packs), replace=False)
    parts = [pack_ids(seed, int(p), per_pack) for p in chosen]
    pool = np.concatenate(parts)
    hit = pool[rng.choice(len(pool), hits, replace=False)]
    miss = np.frombuffer(rng.bytes(ID * (size - hits)), np.uint8).reshape(-1, ID)
    ids = np.concatenate([hit, miss])
    return ids[np.lexsort(ids.T[::-1])]


def to_records(ids: np.ndarray, slots: np.ndarray) -> np.ndarray:
    rec = np.empty(len(ids), REC)
    rec["key"] = ids[:, :8].copy().view(">u8").ravel().astype("<u8")
    rec["rest"] = ids[:, 8:].copy().view("V24").ravel()
    rec["slot"] = slots
    return rec


# -- candidates ------------------------------------------------------------------------------


class SqliteIndex:
    def __init__(self, path: Path) -> None:
        import sqlite3

        self.db = sqlite3.connect(path / "index.sqlite", isolation_level=None, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA cache_size=-65536")  # 64 MiB
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS chunk (id BLOB PRIMARY KEY, pack INT, off INT,"
            " clen INT, ulen INT) WITHOUT ROWID"
        )

    def insert_packs(self, packs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        for ids, slots in packs:
            rows = zip(
                [bytes(r) for r in ids], *(slots[:, i].tolist() for i in range(4)), strict=True
            )
            self.db.executemany("INSERT OR IGNORE INTO chunk VALUES (?,?,?,?,?)", rows)
        self.db.execute("COMMIT")

    def lookup(self, ids: np.ndarray) -> int:
        keys = [bytes(r) for r in ids]
        found = 0
        for start in range(0, len(keys), 4096):
            part = keys[start : start + 4096]
            marks = ",".join("?" * len(part))
            q = f"SELECT id, pack, off, clen, ulen FROM chunk WHERE id IN ({marks})"
            found += len(self.db.execute(q, part).fetchall())
        return found

    def close(self) -> None:
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()


class LmdbIndex:
    def __init__(self, path: Path) -> None:
        import lmdb

        self.path = path
        self.env = lmdb.open(
            str(path / "index.lmdb"), map_size=1 << 40, sync=False, metasync=False, readahead=False
        )

    def insert_packs(self, packs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        with self.env.begin(write=True) as txn:
            cur = txn.cursor()
            for ids, slots in packs:
                vals = slots.tobytes()
                cur.putmulti(
                    [(bytes(ids[i]), vals[i * SLOT : (i + 1) * SLOT]) for i in range(len(ids))],
                    overwrite=False,
                )

    def lookup(self, ids: np.ndarray) -> int:
        with self.env.begin() as txn:
            return len(txn.cursor().getmulti([bytes(r) for r in ids]))

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        self.env.sync(True)
        self.env.close()


class Run:
    """A run file mapped as three contiguous columns: keys (u64, so ``searchsorted`` works on
    the map without a copy), the ids' other 24 bytes, the slots."""

    def __init__(self, path: Path | None = None, rec: np.ndarray | None = None) -> None:
        self.mm: mmap.mmap | None = None
        self.fd = -1
        self.fence: np.ndarray | None = None
        if rec is not None:
            self.key, self.rest, self.slot = rec["key"], rec["rest"], rec["slot"]
            return
        assert path is not None
        n = path.stat().st_size // REC.itemsize
        if n == 0:
            self.key, self.rest, self.slot = (np.empty(0, REC)[f] for f in REC.names)
            return
        self.fd = os.open(path, os.O_RDONLY)
        self.mm = mmap.mmap(self.fd, 0, prot=mmap.PROT_READ)
        raw = np.frombuffer(self.mm, np.uint8)
        self.key = raw[: 8 * n].view("<u8")
        self.rest = raw[8 * n : 32 * n].view("V24")
        self.slot = raw[32 * n :].view("<u4").reshape(n, 4)
        fence = path.with_suffix(".fence")
        self.fence = np.fromfile(fence, "<u8") if fence.exists() else self.key[::FENCE].copy()

    def __len__(self) -> int:
        return len(self.key)

    def release(self) -> None:
        """Drop the map's pages from this process (they stay in the page cache): without
        it ``ru_maxrss`` counts every page a lookup or merge ever touched."""
        if self.mm is not None:
            self.mm.madvise(mmap.MADV_DONTNEED)

    def take(self, a: int, b: int) -> np.ndarray:
        """Records a..b, read with ``pread`` (a merge reads each run once, in order: through
        the map, the kernel maps whole large folios of the page cache, and ``ru_maxrss``
        counted ~12 MiB per run per merge step)."""
        rec = np.empty(b - a, REC)
        if self.fd < 0 or b <= a:
            rec["key"], rec["rest"], rec["slot"] = self.key[a:b], self.rest[a:b], self.slot[a:b]
            return rec
        n = len(self.key)
        for col, base, size in (("key", 0, 8), ("rest", 8 * n, 24), ("slot", 32 * n, 16)):
            data = os.pread(self.fd, size * (b - a), base + size * a)
            rec[col] = np.frombuffer(data, REC[col].base).reshape(rec[col].shape)
        return rec

    def keys(self, a: int, b: int) -> np.ndarray:
        """Keys a..b, read with ``pread`` when the run is a file."""
        if self.fd < 0:
            return self.key[a:b]
        return np.frombuffer(os.pread(self.fd, 8 * (b - a), 8 * a), "<u8")

    def __del__(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


def _write_run(path: Path, rec: np.ndarray) -> None:
    np.ascontiguousarray(rec["key"][::FENCE]).tofile(path.with_suffix(".fence"))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for col in REC.names:
            f.write(np.ascontiguousarray(rec[col]).tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _dedup_sorted(rec: np.ndarray) -> np.ndarray:
    """Drop records whose id equals the previous one (stable sort: the older wins)."""
    if len(rec) < 2:
        return rec
    same = (rec["key"][1:] == rec["key"][:-1]) & (rec["rest"][1:] == rec["rest"][:-1])
    if not same.any():
        return rec
    keep = np.ones(len(rec), bool)
    keep[1:] = ~same
    return rec[keep]


def merge_runs(runs: list[Run], out: Path, budget: int = 1 << 18) -> int:
    """Stream-merge sorted runs (oldest first) into ``out``, ~``budget`` records in memory.

    The columns are written to three temporary files, then concatenated into the run (a
    second pass over the output: simple, and still sequential I/O)."""
    pos = [0] * len(runs)
    block = max(1024, budget // len(runs))
    total = 0
    fence: list[np.ndarray] = []
    cols = {c: open(out.with_suffix(f".{c}"), "w+b") for c in REC.names}  # noqa: SIM115
    try:
        while True:
            live = [i for i, r in enumerate(runs) if pos[i] < len(r)]
            if not live:
                break
            heads = {i: runs[i].keys(pos[i], min(pos[i] + block, len(runs[i]))) for i in live}
            pivot = min(int(heads[i][-1]) for i in live)
            parts = []
            for i in live:
                end = pos[i] + int(np.searchsorted(heads[i], np.uint64(pivot), "right"))
                parts.append(runs[i].take(pos[i], end))
                pos[i] = end
            for i in live:
                runs[i].release()
            merged = np.concatenate(parts)
            merged = _dedup_sorted(merged[np.argsort(merged["key"], kind="stable")])
            for c, f in cols.items():
                f.write(np.ascontiguousarray(merged[c]).tobytes())
            fence.append(merged["key"][(-total) % FENCE :: FENCE].copy())
            total += len(merged)
        np.concatenate(fence or [np.empty(0, "<u8")]).tofile(out.with_suffix(".fence"))
        tmp = out.with_suffix(".tmp")
        with open(tmp, "wb") as dst:
            for f in cols.values():
                f.seek(0)
                shutil.copyfileobj(f, dst, 1 << 22)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, out)
    finally:
        for c, f in cols.items():
            f.close()
            out.with_suffix(f".{c}").unlink(missing_ok=True)
    return total


class RunsIndex:
    """Sorted runs + a manifest (``runs.json``: the run files, oldest first), replaced
    atomically; readers re-open when it changes. One writer (an flock in real code)."""

    RATIO = 4

    def __init__(self, path: Path, buffer_entries: int = 1 << 18) -> None:
        self.dir = path
        self.manifest = path / "runs.json"
        self.buffer_entries = buffer_entries
        self.runs: list[tuple[str, Run]] = []
        self.batches = 0
        self.stamp = None
        self.seq = 0
        self._reopen()

    def _reopen(self) -> None:
        """Map the runs the manifest names. A merge in another process may delete a run
        between reading the manifest and opening the run: read the manifest again (a run
        once mapped stays readable after its unlink, so only the open can race)."""
        while True:
            try:
                st = self.manifest.stat()
            except FileNotFoundError:
                return
            stamp = (st.st_mtime_ns, st.st_ino)
            if stamp == self.stamp:
                return
            names = json.loads(self.manifest.read_text())
            old = dict(self.runs)
            try:
                self.runs = [(n, old[n] if n in old else self._map(n)) for n in names]
            except FileNotFoundError:
                continue
            self.seq = max([int(n.split(".")[0]) for n in names] + [self.seq])
            self.stamp = stamp
            return

    def _map(self, name: str) -> Run:
        return Run(self.dir / name)

    def _publish(self) -> None:
        tmp = self.manifest.with_suffix(".tmp")
        tmp.write_text(json.dumps([n for n, _ in self.runs]))
        os.replace(tmp, self.manifest)
        st = self.manifest.stat()
        self.stamp = (st.st_mtime_ns, st.st_ino)

    def _new_name(self) -> str:
        self.seq += 1
        return f"{self.seq:08d}.run"

    def build(self, packs) -> None:
        """Rebuild from every index file: sorted runs of ``buffer_entries``, then one merge."""
        buf: list[np.ndarray] = []
        held = 0
        tmp_runs: list[str] = []
        for ids, slots in packs:
            buf.append(to_records(ids, slots))
            held += len(ids)
            if held >= self.buffer_entries:
                tmp_runs.append(self._spill(buf))
                buf, held = [], 0
        if buf:
            tmp_runs.append(self._spill(buf))
        name = self._new_name()
        merge_runs([self._map(n) for n in tmp_runs], self.dir / name)
        for n in tmp_runs:
            _unlink_run(self.dir / n)
        self.runs = [(name, self._map(name))]
        self._publish()

    def _spill(self, buf: list[np.ndarray]) -> str:
        rec = np.concatenate(buf)
        rec = _dedup_sorted(rec[np.argsort(rec["key"], kind="stable")])
        name = self._new_name()
        _write_run(self.dir / name, rec)
        return name

    def insert_packs(self, packs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self._reopen()
        rec = np.concatenate([to_records(i, s) for i, s in packs])
        rec = _dedup_sorted(rec[np.argsort(rec["key"], kind="stable")])
        name = self._new_name()
        _write_run(self.dir / name, rec)
        self.runs.append((name, self._map(name)))
        # size-tiered: merge the newest runs while the one below is < RATIO x their size
        while len(self.runs) > 1:
            tail = self.runs[-1][1]
            below = self.runs[-2][1]
            if len(below) >= self.RATIO * len(tail):
                break
            name = self._new_name()
            merge_runs([below, tail], self.dir / name)
            gone = self.runs[-2:]
            self.runs[-2:] = [(name, self._map(name))]
            self._publish()
            for n, _ in gone:
                _unlink_run(self.dir / n)
        self._publish()

    def lookup(self, ids: np.ndarray) -> int:
        self._reopen()
        q = to_records(ids, np.zeros((len(ids), 4), "<u4"))
        found = np.zeros(len(ids), bool)
        for _, run in self.runs:
            found |= probe(run, q) & ~found
        self.batches += 1
        if self.batches % RELEASE_EVERY == 0:
            for _, run in self.runs:
                run.release()
        return int(found.sum())


def _unlink_run(path: Path) -> None:
    path.unlink()
    path.with_suffix(".fence").unlink(missing_ok=True)


def probe(run: Run, q: np.ndarray) -> np.ndarray:
    """Which of the sorted query records ``q`` are in ``run`` (exact 32-byte compare)."""
    n = len(run)
    if n == 0:
        return np.zeros(len(q), bool)
    qk = q["key"]
    if run.fence is not None and n > FENCE:
        # the fence (in memory) names the key page; a branchless binary search inside that
        # page, all ids at once (9 gathers): each id maps one key page, not the ~log2(n) pages
        # a binary search over the whole column touches
        page = np.maximum(np.searchsorted(run.fence, qk, "right") - 1, 0)
        base = page.astype(np.int64) * FENCE
        width = FENCE
        while width > 1:
            half = width // 2
            probe_at = np.minimum(base + half, n - 1)
            base = np.where(run.key[probe_at] < qk, probe_at, base)
            width -= half
        pos = base + (run.key[base] < qk)
    else:
        pos = np.searchsorted(run.key, qk)
    pos[pos >= n] = n - 1
    same_key = run.key[pos] == q["key"]
    # the other 24 bytes only where the key matched: a miss (most dedup questions) reads one
    # key page and no rest page, so misses need only the key column (8 B/entry) in the cache
    hit = np.zeros(len(q), bool)
    cand = np.flatnonzero(same_key)
    hit[cand] = run.rest[pos[cand]] == q["rest"][cand]
    # an 8-byte key shared by two ids (p ~ N^2 / 2^65): check the neighbours exactly
    for i in np.flatnonzero(same_key & ~hit):
        j = int(pos[i]) + 1
        while j < n and run.key[j] == q["key"][i]:
            if run.rest[j] == q["rest"][i]:
                hit[i] = True
                break
            j += 1
    return hit


class HashPartIndex(RunsIndex):
    """256 partitions by the id's first byte; each partition one sorted run, merged on
    every insert (rewrite cost: 1/256 of the index per partition touched)."""

    PARTS = 256

    def __init__(self, path: Path, buffer_entries: int = 1 << 18) -> None:
        self.dir = path
        self.buffer_entries = buffer_entries
        self.parts: dict[int, Run] = {}

    def _part(self, p: int) -> Run:
        if p not in self.parts:
            f = self.dir / f"p{p:03d}.run"
            self.parts[p] = Run(f) if f.exists() else Run(rec=np.empty(0, REC))
        return self.parts[p]

    def build(self, packs) -> None:
        self._add(packs)

    def insert_packs(self, packs) -> None:
        self._add(packs)

    def _add(self, packs) -> None:
        buf: list[np.ndarray] = []
        held = 0
        for ids, slots in packs:
            buf.append(to_records(ids, slots))
            held += len(ids)
            if held >= self.buffer_entries:
                self._flush(buf)
                buf, held = [], 0
        if buf:
            self._flush(buf)

    def _flush(self, buf: list[np.ndarray]) -> None:
        rec = np.concatenate(buf)
        rec = rec[np.argsort(rec["key"], kind="stable")]
        first = (rec["key"] >> np.uint64(56)).astype(np.int64)
        bounds = np.searchsorted(first, np.arange(self.PARTS + 1))
        for p in range(self.PARTS):
            new = rec[bounds[p] : bounds[p + 1]]
            if not len(new):
                continue
            old = self._part(p)
            merged = np.concatenate([old.take(0, len(old)), new])
            merged = _dedup_sorted(merged[np.argsort(merged["key"], kind="stable")])
            self.parts.pop(p)
            _write_run(self.dir / f"p{p:03d}.run", merged)

    def lookup(self, ids: np.ndarray) -> int:
        q = to_records(ids, np.zeros((len(ids), 4), "<u4"))
        first = (q["key"] >> np.uint64(56)).astype(np.int64)
        bounds = np.searchsorted(first, np.arange(self.PARTS + 1))
        found = 0
        for p in np.unique(first):
            found += int(probe(self._part(int(p)), q[bounds[p] : bounds[p + 1]]).sum())
        return found


class LmdbSortedIndex(LmdbIndex):
    """``lmdb`` built the way a rebuild can: sorted first (the runs' spill and merge), then
    appended in key order (``append=True``: pages filled, no splits). Captures insert as
    ``lmdb`` does."""

    def build(self, packs) -> None:
        tmp = self.path / "sort"
        tmp.mkdir()
        runs = RunsIndex(tmp)
        runs.build(packs)
        ((_, run),) = runs.runs
        ids = np.empty((1 << 16, ID), np.uint8)
        with self.env.begin(write=True) as txn:
            cur = txn.cursor()
            for a in range(0, len(run), 1 << 16):
                b = min(a + (1 << 16), len(run))
                n = b - a
                ids[:n, :8] = run.key[a:b].astype(">u8").view(np.uint8).reshape(n, 8)
                ids[:n, 8:] = np.frombuffer(run.rest[a:b].tobytes(), np.uint8).reshape(n, 24)
                vals = np.ascontiguousarray(run.slot[a:b]).tobytes()
                cur.putmulti(
                    [(ids[i].tobytes(), vals[i * SLOT : (i + 1) * SLOT]) for i in range(n)],
                    append=True,
                )
        shutil.rmtree(tmp)


class CkptIndex:
    """The real thing: ``ckpt.storage.chunks.index.ChunkIndex`` (decision 0011 as built:
    56-byte entries with the six-u32 slot, a cache directory beside index files in a local
    backend). ``build`` writes the index files first (not timed) and times the cache's
    build from them (``refresh``); a capture's packs are index files ``add``-ed then
    ``persist``-ed as one run; lookups are ``contains_many`` of the unsorted batch."""

    def __init__(self, path: Path) -> None:
        from ckpt.storage.chunks import LocalChunkBackend
        from ckpt.storage.chunks.index import ChunkIndex

        self.backend = LocalChunkBackend(path / "files")
        self.cache_path = path / "cache"
        self.index = ChunkIndex(self.backend, cache_dir=self.cache_path)
        self.refresh_each_lookup = False
        self.build_s: float | None = None

    def _file(self, ids: np.ndarray, slots: np.ndarray):  # -> IndexFile
        from ckpt.storage.chunks import ChunkId, PackEntry
        from ckpt.storage.chunks.index_file import IndexFile, encode_index_file
        from ckpt.storage.chunks.layout import index_name

        pack = int(slots[0, 0])
        pack_id = pack.to_bytes(16, "big")
        raw = ids.tobytes()
        entries = [
            PackEntry(ChunkId(raw[32 * i : 32 * i + 32]), int(o) + 16, int(c), int(u))
            for i, (o, c, u) in enumerate(slots[:, 1:].tolist())
        ]
        size = int(slots[-1, 1]) + 16 + int(slots[-1, 2]) + 48 * len(entries) + 40
        f = IndexFile(pack_id, 1_700_000_000.0 + pack, size, entries)
        self.backend.put(index_name(pack_id), encode_index_file(f))
        return f

    def build(self, packs) -> None:
        for ids, slots in packs:
            self._file(ids, slots)
        t = time.perf_counter()
        self.index.refresh()
        self.build_s = time.perf_counter() - t

    def insert_packs(self, packs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for ids, slots in packs:
            self.index.add(self._file(ids, slots))
        self.index.persist()

    def lookup(self, ids: np.ndarray) -> int:
        if self.refresh_each_lookup:
            self.index.refresh()
        raw = ids.tobytes()
        return sum(self.index.contains_many([raw[i : i + 32] for i in range(0, len(raw), 32)]))

    def close(self) -> None:
        self.index.close()


CANDIDATES = {
    "ckpt": CkptIndex,
    "sqlite": SqliteIndex,
    "lmdb": LmdbIndex,
    "lmdb-sorted": LmdbSortedIndex,
    "runs": RunsIndex,
    "hashpart": HashPartIndex,
}


# -- the child: one candidate, every measurement ---------------------------------------------


def du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def rss_anon_mib() -> float:
    """Anonymous resident memory now (what a mapped file's clean pages do not count in:
    ``ru_maxrss`` counts those too, though the kernel reclaims them under pressure)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return 0.0


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> dict:
    name = args.child
    work = Path(args.work)
    seed = args.seed
    per_pack = args.per_pack
    packs = max(1, args.entries // per_pack)
    cls = CANDIDATES[name]
    out: dict = {"candidate": name, "entries": packs * per_pack}

    def stream(first: int, count: int):
        for p in range(first, first + count):
            yield pack_ids(seed, p, per_pack), pack_slots(p, per_pack)

    # build (per pack, unsorted, as from index files)
    idx = cls(work)
    t = time.perf_counter()
    if hasattr(idx, "build"):
        idx.build(stream(0, packs))
    else:
        group: list = []
        for item in stream(0, packs):
            group.append(item)
            if len(group) >= 64:
                idx.insert_packs(group)
                group = []
        if group:
            idx.insert_packs(group)
    if hasattr(idx, "sync"):
        idx.sync()
    out["build_s"] = time.perf_counter() - t
    if getattr(idx, "build_s", None) is not None:
        out["build_s"] = idx.build_s  # the cache's build from written index files
    anon = [rss_anon_mib()]
    if hasattr(idx, "close"):
        idx.close()
    measured = getattr(idx, "cache_path", work)
    out["bytes_per_entry"] = du(measured) / out["entries"]

    # cold: fresh open, page cache dropped, first batch of 4096
    dropped = drop_caches() if args.drop_caches else False
    t = time.perf_counter()
    idx = cls(work)
    b = pack_batch_ids(seed, packs, per_pack, 4096, 999)
    found = idx.lookup(b)
    out["cold_first_4096_s"] = time.perf_counter() - t
    out["cold_dropped"] = dropped
    assert found == 2048, (name, found)

    # warm batched lookups, 50% hits: the index read into the page cache first (after a
    # drop, the lookups below would otherwise measure the disk)
    for f in work.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 22):
                    pass
    for size in (256, 4096):
        batches = [pack_batch_ids(seed, packs, per_pack, size, k) for k in range(args.batches)]
        for bt in batches[:2]:
            idx.lookup(bt)
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            n = 0
            for bt in batches:
                got = idx.lookup(bt)
                assert got == size // 2, (name, size, got)
                n += len(bt)
            rates.append(n / (time.perf_counter() - t))
        out[f"lookups_per_s_{size}"] = statistics.median(rates)
        anon.append(rss_anon_mib())

    # a capture's new entries: 16 packs (~64K entries), three captures, median
    times = []
    for k in range(3):
        t = time.perf_counter()
        idx.insert_packs(list(stream(packs + 16 * k, 16)))
        if hasattr(idx, "sync"):
            idx.sync()
        times.append(time.perf_counter() - t)
    out["insert_capture_s"] = statistics.median(times)
    out["insert_per_s"] = 16 * per_pack / out["insert_capture_s"]
    anon.append(rss_anon_mib())
    out["rss_anon_mib"] = max(anon)
    if hasattr(idx, "close"):
        idx.close()
    out["bytes_on_disk"] = du(measured)

    # concurrency: a writer process appends packs while this process looks up
    if args.concurrency_s > 0:
        out.update(concurrency(name, work, seed, packs + 48, per_pack, args.concurrency_s, packs))
    import resource

    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def writer(name: str, work: str, seed: int, first: int, per_pack: int, seconds: float) -> None:
    idx = CANDIDATES[name](Path(work))
    end = time.monotonic() + seconds
    p = first
    n = 0
    while time.monotonic() < end:
        idx.insert_packs([(pack_ids(seed, p, per_pack), pack_slots(p, per_pack))])
        if hasattr(idx, "sync"):
            idx.sync()
        p += 1
        n += per_pack
    if hasattr(idx, "close"):
        idx.close()
    print(json.dumps({"written": n}))


def concurrency(name, work, seed, first, per_pack, seconds, packs) -> dict:
    proc = subprocess.Popen(
        [
            *(sys.executable, __file__, "--writer", name, "--work", str(work)),
            *("--seed", str(seed), "--first", str(first), "--per-pack", str(per_pack)),
            *("--concurrency-s", str(seconds)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    idx = CANDIDATES[name](work)
    if hasattr(idx, "refresh_each_lookup"):
        idx.refresh_each_lookup = True  # take in the writer's runs as the others re-open
    batches = [pack_batch_ids(seed, packs, per_pack, 4096, 500 + k) for k in range(8)]
    n = errors = 0
    t = time.perf_counter()
    while proc.poll() is None:
        for bt in batches:
            try:
                got = idx.lookup(bt)
                if got != 2048:
                    errors += 1
            except Exception as e:  # counted and reported
                errors += 1
                print(f"{name}: reader error {e!r}", file=sys.stderr)
            n += len(bt)
    elapsed = time.perf_counter() - t
    written = json.loads(proc.stdout.read() or "{}").get("written", 0)
    if hasattr(idx, "close"):
        idx.close()
    return {
        "conc_lookups_per_s": n / elapsed,
        "conc_inserts_per_s": written / seconds,
        "conc_errors": errors,
    }


# -- the harness -----------------------------------------------------------------------------


def run_child(args: argparse.Namespace, name: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"idx-{name}-", dir=args.work))
    try:
        cmd = [sys.executable, __file__, "--child", name, "--work", str(work)]
        cmd += ["--entries", str(args.entries), "--per-pack", str(args.per_pack)]
        cmd += ["--batches", str(args.batches), "--seed", str(args.seed)]
        cmd += ["--concurrency-s", str(args.concurrency_s)]
        if args.drop_caches:
            cmd.append("--drop-caches")
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        text = proc.stdout.read()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{name} failed (exit {status})")
        res = json.loads(text)
        res["child_rss_mib"] = usage.ru_maxrss / 1024
        res["wall_s"] = time.perf_counter() - t
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


ROWS = [
    ("build s", "build_s", "{:.1f}"),
    ("build entries/s", None, None),
    ("bytes on disk / entry", "bytes_per_entry", "{:.1f}"),
    ("lookups/s, batches of 256", "lookups_per_s_256", "{:,.0f}"),
    ("lookups/s, batches of 4096", "lookups_per_s_4096", "{:,.0f}"),
    ("cold open + first 4096 s", "cold_first_4096_s", "{:.3f}"),
    ("capture insert (64K entries) s", "insert_capture_s", "{:.3f}"),
    ("capture inserts/s", "insert_per_s", "{:,.0f}"),
    ("lookups/s while a writer appends", "conc_lookups_per_s", "{:,.0f}"),
    ("writer inserts/s (1 pack per txn)", "conc_inserts_per_s", "{:,.0f}"),
    ("reader errors", "conc_errors", "{}"),
    ("peak RSS MiB (ru_maxrss)", "child_rss_mib", "{:.0f}"),
    ("anonymous RSS MiB after each phase, max", "rss_anon_mib", "{:.0f}"),
]


def table(results: dict[str, list[dict]]) -> str:
    names = list(results)
    med = {n: {} for n in names}
    for n, reps in results.items():
        for k in reps[0]:
            vals = [r[k] for r in reps if isinstance(r.get(k), int | float)]
            med[n][k] = statistics.median(vals) if vals else reps[0][k]
        med[n]["build_rate"] = med[n]["entries"] / med[n]["build_s"]
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, key, fmt in ROWS:
        if key is None:
            cells = [f"{med[n]['build_rate']:,.0f}" for n in names]
        else:
            cells = [fmt.format(med[n][key]) if key in med[n] else "" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--candidates", default="sqlite,lmdb,lmdb-sorted,runs,hashpart")
    ap.add_argument("--per-pack", type=int, default=4096, help="entries per index file")
    ap.add_argument("--batches", type=int, default=16, help="lookup batches per size")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--concurrency-s", type=float, default=3.0)
    ap.add_argument("--drop-caches", action="store_true", help="root: cold first lookup")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--writer", help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.writer:
        writer(args.writer, args.work, args.seed, args.first, args.per_pack, args.concurrency_s)
        return
    if args.child:
        print(json.dumps(child(args)))
        return
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    for n in names:
        if n not in CANDIDATES:
            raise SystemExit(f"unknown candidate {n!r}; known: {', '.join(CANDIDATES)}")
    own = args.work is None
    args.work = args.work or tempfile.mkdtemp(prefix="ckpt-bench-index-")
    os.makedirs(args.work, exist_ok=True)
    try:
        results: dict[str, list[dict]] = {}
        for _ in range(args.repeat):
            for n in names:
                res = run_child(args, n)
                results.setdefault(n, []).append(res)
                print(f"{n}: {json.dumps(res)}", file=sys.stderr, flush=True)
        print(
            f"entries {results[names[0]][0]['entries']:,}, {args.per_pack} per pack, "
            f"median of {args.repeat}"
        )
        print(table(results))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        if own:
            shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
