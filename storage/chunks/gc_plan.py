"""gc's plan: which packs are dead, which are partly live, streamed over the index.

Terms (gc.py defines keep, live, young, repack, orphan):
    join      the index's winner entries in id order (``ChunkIndex.batches``)
              walked beside ``keep``: an ``IdSet`` in id order too (a merge
              join, one batch of each in memory), or a set asked per id.
    counts    live entries per pack number (``numpy.bincount``: 8 B a pack),
              the only thing kept of the whole walk. A pack to repack (few:
              partly live and past the grace period) reads its own index file
              for its entries afterwards.

Memory: one index batch, one batch of ``keep``, 8 B per pack; not the
``dict[pack, list[PackEntry]]`` of every live entry (~150 B a chunk) of before.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from ckpt.domain.errors import ChunkMissing, IndexCorrupt

from .backend import ChunkBackend
from .id_set import IdSet
from .ids import ID_SIZE
from .index import ChunkIndex, PackInfo
from .index_file import decode_index_file
from .layout import PACKS, index_name, pack_id_of_pack
from .pack import PackEntry
from .run_file import U64, keys_to_ids

GROUP_ROW = 24  # a v2 pack's group table row: u64 offset, 4 x u32


@contextlib.contextmanager
def keep_set(
    keep: AbstractSet[bytes] | IdSet | Iterable[bytes],
) -> Iterator[AbstractSet[bytes] | IdSet]:
    """``keep`` as a set or an ``IdSet``; any other iterable is spilled into an
    ``IdSet`` that is removed afterwards."""
    if isinstance(keep, (IdSet, AbstractSet)):
        yield keep
        return
    with IdSet(keep) as ids:
        yield ids


class _Join:
    """Membership of successive sorted index batches in ``keep``."""

    def __init__(self, keep: AbstractSet[bytes] | IdSet) -> None:
        self._keep = keep
        self._stream = keep.batches() if isinstance(keep, IdSet) else None
        self._held: list[bytes] = []  # keep's ids after the last batch asked about
        self._done = False

    def member(self, keys: U64) -> npt.NDArray[np.bool_]:
        ids = keys_to_ids(keys)
        if self._stream is None:
            assert not isinstance(self._keep, IdSet)
            return np.fromiter((c in self._keep for c in ids), bool, len(ids))
        if not ids:
            return np.zeros(0, bool)
        last = ids[-1]
        while not self._done and (not self._held or self._held[-1] <= last):
            nxt = next(self._stream, None)
            if nxt is None:
                self._done = True
            else:
                self._held += keys_to_ids(nxt)
        cut = bisect.bisect_right(self._held, last)
        wanted = set(self._held[:cut])
        self._held = self._held[cut:]
        return np.fromiter((c in wanted for c in ids), bool, len(ids))


def contains_many(keep: AbstractSet[bytes] | IdSet, ids: list[bytes]) -> list[bool]:
    if isinstance(keep, IdSet):
        return keep.contains_many(ids)
    return [c in keep for c in ids]


@dataclass
class Plan:
    packs: list[PackInfo]
    present: set[str]
    problems: list[str] = field(default_factory=list)
    young: int = 0
    leased: int = 0
    doomed: list[tuple[PackInfo, int]] = field(default_factory=list)  # (pack, live chunks)
    repack: list[PackInfo] = field(default_factory=list)
    # A pack to repack's live entries, read from its index file when it is repacked
    # (None: unreadable). Not held for every pack at once: after a purge nearly every
    # pack is partly live, and the lists held ~150 B per live chunk (a gc of an
    # 8 GiB store peaked at 664 MiB against 310 MiB at 1 GiB).
    live: Callable[[PackInfo], list[PackEntry] | None] = lambda p: None


def plan_collection(
    backend: ChunkBackend,
    index: ChunkIndex,
    keep: AbstractSet[bytes] | IdSet,
    grace_seconds: float,
    now: float,
    writers: bool,
) -> Plan:
    """Count live entries per pack in one streamed join and sort the packs
    into young, fully live, missing, leased, to repack and dead."""
    index.refresh()
    table = index.packs_view()
    counts = np.zeros(len(table), np.int64)
    join = _Join(keep)
    for keys, slots in index.batches():
        member = join.member(keys)
        if member.any():
            counts += np.bincount(slots[member, 0], minlength=len(table))[: len(table)]
    present = {n for n in backend.list(PACKS) if pack_id_of_pack(n) is not None}
    plan = Plan(index.packs(), present)
    plan.live = lambda p: _live_entries(backend, index, keep, p)
    numbers = {p.pack_id: n for n, p in _numbered(table)}
    for p in plan.packs:
        kept = int(counts[numbers[p.pack_id]])
        if now - p.created < grace_seconds:
            plan.young += 1
        elif kept == p.entry_count:
            pass  # fully live
        elif p.name not in present and kept:
            plan.problems.append(f"{p.name}: missing, but {kept} referenced chunks index to it")
        elif writers:
            plan.leased += 1  # a writer may have deduplicated against its unreferenced chunks
        elif kept:
            plan.repack.append(p)
        else:
            plan.doomed.append((p, 0))
    return plan


def _numbered(table: object) -> Iterator[tuple[int, PackInfo]]:
    from .index_cache import PackTable

    assert isinstance(table, PackTable)
    for n in table.live_numbers().tolist():
        yield n, table[n]


def _live_entries(
    backend: ChunkBackend,
    index: ChunkIndex,
    keep: AbstractSet[bytes] | IdSet,
    p: PackInfo,
) -> list[PackEntry] | None:
    """The entries of pack ``p`` that are live: in ``keep`` and the index's
    winner copy. None if its index file cannot be read. The winner is asked of
    the index as it is now (by pack id, not by a number a repack's new packs
    may have moved)."""
    try:
        f = decode_index_file(backend.get(index_name(p.pack_id)), index_name(p.pack_id))
    except (ChunkMissing, IndexCorrupt):
        return None
    ids = [bytes(e.chunk_id) for e in f.entries]
    kept = contains_many(keep, ids)
    packs, slots = index.locate_many(ids)
    numbers: dict[int, bool] = {}  # slot pack number -> is it ``p``

    def here(n: int) -> bool:
        if n not in numbers:
            numbers[n] = packs[n].pack_id == p.pack_id
        return numbers[n]

    return [
        e
        for e, k, s in zip(f.entries, kept, slots, strict=True)
        if k and s is not None and here(s[0]) and s[1] == e.offset
    ]


def orphan_needs(
    entries: list[PackEntry], keep: AbstractSet[bytes] | IdSet, index: ChunkIndex
) -> list[PackEntry]:
    """The entries of an orphan pack that are referenced and indexed nowhere."""
    ids = [bytes(e.chunk_id) for e in entries]
    kept = contains_many(keep, ids)
    indexed = index.contains_many(ids)
    return [e for e, k, i in zip(entries, kept, indexed, strict=True) if k and not i]


class Estimate(NamedTuple):
    """What a gc with this ``keep`` would free: packs deleted whole, packs repacked,
    chunk copies dropped, and bytes (a repacked pack frees its size minus its live
    chunks' share of their frames: a grouped frame's compressed bytes split by its
    chunks' lengths, so a regrouped remainder may differ by a few per cent)."""

    deleted_packs: list[str]
    repacked_packs: list[str]
    removed_chunks: int
    freed_bytes: int
    young_packs: int
    kept_for_leases: int
    problems: list[str]


def estimate(plan: Plan) -> Estimate:
    """The bytes and chunks ``plan`` would free, without touching anything."""
    freed = sum(p.size for p, _ in plan.doomed if p.name in plan.present)
    removed = sum(p.entry_count for p, _ in plan.doomed)
    repacked: list[str] = []
    for p in plan.repack:
        entries = plan.live(p)
        if entries is None:
            plan.problems.append(f"{p.name}: index file unreadable, not repacked")
            continue
        repacked.append(p.name)
        live = sum(
            e.compressed_length * e.chunk_length / max(e.uncompressed_length, 1) for e in entries
        )
        # The new pack's tables: 32 B an entry, 24 B a group (pack.py). Left out
        # they made a dry run over-announce by 7% (1,103 live chunks, 35 KB).
        live += ID_SIZE * len(entries) + GROUP_ROW * len({e.offset for e in entries})
        freed += max(p.size - round(live), 0)
        removed += p.entry_count - len(entries)
    return Estimate(
        [p.name for p, _ in plan.doomed], repacked, removed, freed,
        plan.young, plan.leased, list(plan.problems),
    )  # fmt: skip
