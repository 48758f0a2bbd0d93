"""The chunk store: content-addressed, deduplicated, compressed chunks.

Terms:
    ChunkStore  the facade: a backend, the index loaded from it, a codec and a
                clock. Safe to share between threads; any number of stores (in
                any number of processes) may use one backend at once.
    writer      a session adding chunks (writer.py); its chunks become visible
                when it flushes.
    get         one ranged read of the chunk's frame, decompressed no further
                than the recorded length, sliced (a group frame holds several
                chunks) and checked against its SHA-256 id.
    format      1 or 2 (format.py): which pack version writers write; read
                once, lazily. Readers take both versions in any store.

Readers pick up other processes' flushed packs lazily: a ``get`` of an id the
index does not know, or whose pack has vanished (a GC repacked it), refreshes
the index once before giving up. ``has`` never refreshes (it answers "is it
stored as far as this process knows", the question dedup asks); call
``refresh`` to see other writers' chunks.

Captures and gc hold leases (lease.py): ``write_lease`` around a capture and
its commit, ``gc_lease`` around a gc's reading of the log and its deletes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ckpt.domain.errors import ChunkCorrupt, ChunkMissing, StoreBusy
from ckpt.storage.keyring import Keyring

from .backend import ChunkBackend, parallel_requests
from .codec import DEFAULT_LEVEL, Chunk, ChunkCodec
from .format import CURRENT, read_format, write_format
from .gc import GcReport, delete_unreferenced
from .ids import ChunkId
from .index_types import ChunkStats, Location
from .layout import INDEX, PACKS, pack_id_of_index, pack_id_of_pack, pack_name
from .lease import GC, WRITE, Lease, LeaseInfo, held, read_leases, wait_for
from .pack import DEFAULT_PACK_SIZE, GROUPED, MAX_PACK_SIZE, VERSION
from .repair import RebuildReport, rebuild_index
from .upgrade import UpgradeReport, upgrade_packs
from .verify import VerifyReport, verify_chunks
from .writer import ChunkWriter

if TYPE_CHECKING:
    from .gc_plan import Estimate
    from .id_set import IdSet
    from .index import ChunkIndex

GAP = 64 << 10  # read through gaps up to 64 KiB: cheaper than another read call
SPAN = 8 << 20  # but never read more than 8 MiB at once
# A gc asks at most this often whether a new capture waits for it (one list of
# leases/ each time, ~3 ms on S3).
GC_YIELD_CHECK_S = 1.0


Located = tuple[int, int, int, int, int, int, int]
"""(pack number, frame offset, position in the ids asked for, frame compressed
length, frame uncompressed length, slice offset, chunk length)"""


class GcLeases(NamedTuple):
    """What a gc found when it took its lease: the live write leases it must
    respect, the dead leases it deleted, and whether a capture that started
    since is waiting for it (``waiting()``: then the gc stops early)."""

    writers: list[LeaseInfo]
    dead_removed: list[LeaseInfo]
    waiting: Callable[[], bool]


class ChunkStore:
    """Chunks by id in packs on a ``ChunkBackend``; see the module docstring."""

    def __init__(
        self,
        backend: ChunkBackend,
        pack_size: int = DEFAULT_PACK_SIZE,
        level: int = DEFAULT_LEVEL,
        clock: Callable[[], float] = time.time,
        keyring: Keyring | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        """``cache_dir``: where the chunk-index cache lives (default: see
        ``index.cache_dir_for``)."""
        if not 0 < pack_size <= MAX_PACK_SIZE:
            raise ValueError(f"pack size {pack_size} is outside 1..{MAX_PACK_SIZE}")
        self._backend = backend
        self._pack_size = pack_size
        self._codec = ChunkCodec(level, keyring)
        self._clock = clock
        from .index import ChunkIndex  # numpy: imported by content commands only

        self._index: ChunkIndex = ChunkIndex(backend, cache_dir)
        self._pool: ThreadPoolExecutor | None = None  # spans read at once (remote backends)
        self._pool_lock = threading.Lock()
        self._local = threading.local()  # .leases: the write leases this thread holds
        self._format: int | None = None  # read from the backend on first need

    def __repr__(self) -> str:
        return f"ChunkStore({self._backend!r})"

    @property
    def backend(self) -> ChunkBackend:
        return self._backend

    @property
    def codec(self) -> ChunkCodec:
        """How this store names, compresses and (if encrypted) seals chunks."""
        return self._codec

    @property
    def format(self) -> int:
        """The store's format (format.py); ``StoreCorrupt`` if newer than this release."""
        if self._format is None:
            self._format = read_format(self._backend)
        return self._format

    def set_format(self, value: int = CURRENT) -> None:
        """Record the store's format durably (``init`` and ``ckpt upgrade``)."""
        write_format(self._backend, value)
        self._format = value

    def writer(self, version: int | None = None) -> ChunkWriter:
        """A new writer session: ``with store.writer() as w: w.add(data)``.
        It writes the pack version of the store's format unless ``version``
        says otherwise."""
        if version is None:
            version = GROUPED if self.format >= 2 else VERSION
        leases: list[Lease] = getattr(self._local, "leases", [])
        on_flush = leases[-1].packs.append if leases else None
        return ChunkWriter(
            self._backend,
            self._index,
            self._codec,
            self._pack_size,
            self._clock,
            on_flush,
            version,
        )

    @contextlib.contextmanager
    def write_lease(
        self, on_wait: Callable[[list[LeaseInfo]], None] | None = None
    ) -> Iterator[Lease]:
        """Hold a write lease around a capture, from before its first pack until
        after its event is committed: gc then deletes none of the chunks it may
        use. Waits first for any gc that was running when the lease was taken,
        then refreshes the index (that gc may have deleted index files this
        process had loaded). Writers made in this thread meanwhile report their
        packs to the lease; call ``lease.check()`` just before committing.
        ``on_wait`` hears of the gc leases waited for, once, if there are any."""
        lease = Lease(self._backend, WRITE, self._clock)
        with held(lease) as others:
            now = self._clock()
            running = [x for x in others if x.kind == GC and not x.dead(now)]
            wait_for(self._backend, running, self._clock, on_wait=on_wait)
            self._index.refresh()
            stack: list[Lease] = self._local.__dict__.setdefault("leases", [])
            stack.append(lease)
            try:
                yield lease
            finally:
                stack.remove(lease)

    @contextlib.contextmanager
    def gc_lease(self) -> Iterator[GcLeases]:
        """Hold a gc lease; read the log for ``keep`` only inside it. Deletes
        dead leases; ``StoreBusy`` if another gc holds a live one."""
        lease = Lease(self._backend, GC, self._clock)
        with held(lease) as others:
            now = self._clock()
            dead = [x for x in others if x.dead(now)]
            for x in dead:
                with contextlib.suppress(ChunkMissing):
                    self._backend.delete(x.name)
            live = [x for x in others if not x.dead(now)]
            gcs = [x for x in live if x.kind == GC]
            if gcs:
                raise StoreBusy(
                    f"another gc is running on this store: {gcs[0].describe()}; "
                    "run gc again when it has finished"
                )
            seen = {x.name for x in others} | {lease.name}
            last = [time.monotonic()]

            def waiting() -> bool:
                # Leases written after ours was listed: a capture that may be
                # waiting for us (it saw our lease) or a gc (which refuses).
                if time.monotonic() - last[0] < GC_YIELD_CHECK_S:
                    return False
                last[0] = time.monotonic()
                at = self._clock()
                return any(
                    x.kind == WRITE and x.name not in seen and not x.dead(at)
                    for x in read_leases(self._backend)
                )

            yield GcLeases([x for x in live if x.kind == WRITE], dead, waiting)

    def gc_leases_seen(self) -> GcLeases:
        """What ``gc_lease`` would find, for a dry run: the live write leases,
        read only (no lease written, no dead lease deleted), so an estimate runs
        on read-only media too; a running gc does not stop it."""
        now = self._clock()
        live = [x for x in read_leases(self._backend) if not x.dead(now)]
        return GcLeases([x for x in live if x.kind == WRITE], [], lambda: False)

    def refresh(self) -> None:
        """Pick up index files other processes have written (or deleted)."""
        self._index.refresh()

    def has(self, cid: bytes) -> bool:
        return cid in self._index

    def has_many(self, ids: Sequence[bytes]) -> list[bool]:
        """``has`` of each id, as one sorted batch against the index (~10x the
        rate of ``has`` one by one on a large index: bench/README.md)."""
        return self._index.contains_many(ids)

    def ids(self) -> Iterator[ChunkId]:
        return self._index.ids()

    def stats(self) -> ChunkStats:
        return self._index.stats()

    def get(self, cid: bytes) -> bytes:
        """The chunk's bytes. ``ChunkMissing`` if no index file lists it (or its
        pack is gone); ``ChunkCorrupt`` naming chunk and pack if its stored
        bytes are truncated, do not decompress, or do not hash to ``cid``."""
        loc = self._index.location(cid)
        if loc is None:
            self._index.refresh()
            loc = self._index.location(cid)
            if loc is None:
                raise ChunkMissing(f"chunk {cid.hex()} is not in the index of {self._backend!r}")
        try:
            return self._read(cid, loc)
        except ChunkMissing:
            self._index.refresh()  # a GC may have moved it into a new pack
            moved = self._index.location(cid)
            if moved is None or moved == loc:
                raise
            return self._read(cid, moved)

    def close(self) -> None:
        """Stop the threads that read spans of a remote backend (if any ran) and
        write this process's new index entries into the index cache."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._index.close()

    def in_pack_order(self, ids: Iterable[bytes]) -> list[bytes]:
        """``ids`` sorted by where they are stored (ids the index does not know
        last): ``get_many`` of a run of them then reads few, long spans."""
        listed = list(ids)
        return [listed[i] for i in self._index.location_order(listed)]

    def get_many(self, ids: Sequence[bytes]) -> list[bytes]:
        """The bytes of several chunks, each checked as ``get`` checks it."""
        return [c if isinstance(c, bytes) else bytes(c) for c in self.get_views(ids)]

    def get_views(self, ids: Sequence[bytes]) -> list[Chunk]:
        """As ``get_many``, but a chunk may come back as a read-only view into
        a batch's decompressed buffer (no copy per chunk): what a restore wants.

        Frames that lie close together in one pack are read with one ranged
        read (gaps up to ``GAP`` bytes are read and dropped): a restore reads
        4 KiB chunks mostly in the order a capture packed them, so one read
        serves ~100 chunks instead of 100 opens and seeks. The frames of one
        read are decompressed together (``ChunkCodec.decode_span``).
        """
        packs, slots = self._index.locate_many(ids)
        out: list[Chunk | None] = [None] * len(ids)
        # (pack number, frame offset, position in ids, frame compressed and
        # uncompressed length, slice offset, chunk length)
        located: list[Located] = []
        for i, slot in enumerate(slots):
            if slot is None:
                out[i] = self.get(ids[i])  # refreshes the index, or raises ChunkMissing
            else:
                number, offset, clen, ulen, slice_offset, length = slot
                located.append((number, offset, i, clen, ulen, slice_offset, length))
        located.sort()  # mostly sorted already: a restore reads in capture order
        groups: list[tuple[str, int, int, list[Located]]] = []
        start = 0
        while start < len(located):
            number, first, _, clen, *_ = located[start]
            last = first + clen
            end = start + 1
            while end < len(located):
                n, offset, _, clen, *_ = located[end]
                if n != number or offset - last > GAP or offset + clen - first > SPAN:
                    break
                last = max(last, offset + clen)
                end += 1
            groups.append((packs[number].name, first, last, located[start:end]))
            start = end
        for (pack, first, last, group), data in zip(groups, self._read_spans(groups), strict=True):
            if data is None:  # a GC may have moved them: one by one
                for _, _, i, *_ in group:
                    out[i] = self.get(ids[i])
                continue
            if len(data) < last - first:
                self._truncated(data, pack, first, group, ids)
            frames: list[tuple[int, int]] = []
            cids: list[bytes] = []
            lengths: list[int] = []
            slices: list[tuple[int, int]] = []
            for _, offset, i, clen, ulen, slice_offset, length in group:
                frames.append((offset - first, clen))
                cids.append(ids[i])
                lengths.append(ulen)
                slices.append((slice_offset, length))
            decoded = self._codec.decode_span(data, frames, cids, lengths, pack, slices)
            for (_, _, i, *_), chunk in zip(group, decoded, strict=True):
                out[i] = chunk
        result = [b for b in out if b is not None]
        if len(result) != len(ids):  # pragma: no cover - every branch above fills or raises
            raise AssertionError(f"{len(ids) - len(result)} chunks were neither read nor reported")
        return result

    @staticmethod
    def _truncated(
        data: bytes,
        pack: str,
        first: int,
        group: list[Located],
        ids: Sequence[bytes],
    ) -> None:
        """Raise ``ChunkCorrupt`` for the first chunk of ``group`` whose frame
        lies (partly) beyond the ``data`` read from ``pack`` at ``first``."""
        for _, offset, i, clen, *_ in group:
            if offset - first + clen > len(data):
                got = max(0, len(data) - (offset - first))
                raise ChunkCorrupt(
                    f"chunk {ids[i].hex()} in {pack}: pack truncated, {got} of "
                    f"{clen} bytes at offset {offset}"
                )

    def _read_spans(self, groups: Sequence[tuple[str, int, int, object]]) -> list[bytes | None]:
        """The byte span of each group (None: its pack is gone). Spans of a
        latency-bound backend (S3) are read several at once."""

        def read(group: tuple[str, int, int, object]) -> bytes | None:
            pack, first, last, _ = group
            try:
                return self._backend.get(pack, first, last - first)
            except ChunkMissing:
                return None

        workers = parallel_requests(self._backend)
        if workers == 1 or len(groups) < 2:
            return [read(g) for g in groups]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ckpt-chunk-get")
        return list(self._pool.map(read, groups))

    def _read(self, cid: bytes, loc: Location) -> bytes:
        frame = self._backend.get(loc.pack, loc.offset, loc.compressed_length)
        if len(frame) != loc.compressed_length:
            raise ChunkCorrupt(
                f"chunk {cid.hex()} in {loc.pack}: pack truncated, {len(frame)} of "
                f"{loc.compressed_length} bytes at offset {loc.offset}"
            )
        return self._codec.decode(
            frame, cid, loc.uncompressed_length, loc.pack, loc.slice_offset, loc.chunk_length
        )

    def verify(
        self,
        ids: Iterable[bytes] | None = None,
        sample: float = 1.0,
        seed: int | None = None,
        refresh: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> VerifyReport[dict[ChunkId, str]]:
        """Check that chunks read back (all, pack by pack; ``ids``; or a random
        ``sample``); ``refresh``: pick up other processes' index files first;
        ``progress``: told the chunks checked as the walk goes."""
        return verify_chunks(
            self._backend, self._index, self._codec, ids, sample, seed, refresh, progress
        )

    def check_index(self) -> list[str]:
        """Damaged index files (each named, with the remedy); also checks the
        local index cache's runs and drops the cache if one is damaged."""
        return self._index.check()

    def stale_index_files(self) -> list[str]:
        """Index files whose pack is gone. Every writer puts a pack before its
        index file and gc deletes the index file before its pack, each durably
        (decision 0016), so none exists unless a file system lost that order.
        ``verify`` cannot see one through the chunks events reference: a capture
        deduplicating against its chunks would record references to bytes that
        no longer exist. Races with writers and gc are ruled out by looking
        again, pack first: a pack gone before its index file was seen still
        there was gone while that index file existed."""
        packs = {pack_id_of_pack(n) for n in self._backend.list(PACKS)}
        stale = []
        for name in self._backend.list(INDEX):
            pack_id = pack_id_of_index(name)
            if pack_id is None or pack_id in packs:
                continue
            if not self._backend.exists(pack_name(pack_id)) and self._backend.exists(name):
                stale.append(name)
        return stale

    def delete_unreferenced(
        self,
        keep: AbstractSet[bytes] | IdSet,
        grace_seconds: float,
        now: float,
        leases: GcLeases | None = None,
    ) -> GcReport:
        """Delete chunks not in ``keep`` from packs older than the grace period;
        see gc.py. ``leases``: what ``gc_lease`` found (without it, run this
        only while no writer session is open in any process)."""
        return delete_unreferenced(
            self._backend,
            self._index,
            self._codec,
            self.writer,
            keep,
            grace_seconds,
            now,
            writers=() if leases is None else leases.writers,
            stop=(lambda: False) if leases is None else leases.waiting,
        )

    def estimate_unreferenced(
        self,
        keep: AbstractSet[bytes] | IdSet,
        grace_seconds: float,
        now: float,
        leases: GcLeases | None = None,
    ) -> Estimate:
        """What ``delete_unreferenced`` would free with the same arguments (packs
        without an index file, which it deletes too, are not counted)."""
        from .gc_plan import estimate, plan_collection

        writers = bool(leases is not None and leases.writers)
        plan = plan_collection(self._backend, self._index, keep, grace_seconds, now, writers)
        return estimate(plan)

    def upgrade(
        self,
        leases: GcLeases | None = None,
        start: Callable[[int, int], Callable[[int], None] | None] = lambda n, b: None,
    ) -> UpgradeReport:
        """Convert every version-1 pack to version 2 and record format 2; see
        upgrade.py. ``leases``: what ``gc_lease`` found (hold it around this)."""

        def new_writer(source: bytes) -> ChunkWriter:
            return ChunkWriter(
                self._backend,
                self._index,
                self._codec,
                self._pack_size,
                self._clock,
                version=GROUPED,
                source=source,
            )

        report = upgrade_packs(
            self._backend,
            self._index,
            self._codec,
            new_writer,
            writers=() if leases is None else leases.writers,
            stop=(lambda: False) if leases is None else leases.waiting,
            start=start,
        )
        self._format = report.format
        return report

    def rebuild_index(self) -> RebuildReport:
        """Recreate every index file from its pack; see repair.py."""
        return rebuild_index(self._backend, self._index)
