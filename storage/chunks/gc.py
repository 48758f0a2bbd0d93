"""Garbage collection: deleting chunks no event references.

Terms:
    keep      the chunk ids some event still references (the caller folds them
              from the event log; deleted checkpoints count until purged).
    age       ``now`` minus the pack's creation time, which the writer took from
              the store's clock and stored in the pack trailer and index file.
              No file-system time is used: an object store may not keep one and
              a copy or restore would reset it.
    grace     packs younger than ``grace_seconds`` are never touched: a writer
              may have flushed them and not yet saved the events that
              reference them (docs/design.md, "Durability order": between
              steps 1 and 2).
    live      a chunk of a pack that is in ``keep`` and whose indexed copy is
              in that pack (a duplicate copy in another pack is garbage).
    repack    copy a partly live pack's live chunks into new packs (repack.py:
              whole live frames checked and copied, mixed groups decompressed,
              checked and regrouped), make those durable with their index
              files, then delete the old index file, then the old pack.
    orphan    a pack without an index file: a session that failed before its
              flush, or a GC that crashed between the two deletes.

A repack that finds no room (``StoreFull``) is dropped; the wholly dead packs
and the orphans are still deleted, so a gc on a full device gives space back.

Order of deletes: index file first, then pack. A crash in between leaves an
orphan pack, which a later run deletes; the reverse order could leave an index
file pointing at a missing pack.

Writers: a writer that skipped a chunk because the index had it relies on that
chunk staying, and its own packs are not referenced until its event is saved.
So while any writer holds a live lease (lease.py; the caller lists them after
taking its own gc lease and passes them as ``writers``), no indexed pack is
deleted or repacked, and no orphan pack created after the oldest lease's start
minus ``SKEW`` is deleted: those are kept and counted (``kept_for_leases``).
Only older orphans go, which no index lists, so no writer can use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, NamedTuple, TypedDict

from ckpt.domain.errors import ChunkCorrupt, ChunkMissing, PackCorrupt, StoreFull

from .backend import ChunkBackend
from .codec import ChunkCodec
from .layout import index_name, read_pack_meta
from .lease import SKEW, LeaseInfo
from .repack import copy_live
from .writer import ChunkWriter

if TYPE_CHECKING:
    from .id_set import IdSet
    from .index import ChunkIndex


class GcReport(NamedTuple):
    """What a GC run did. ``removed_chunks`` counts chunk copies dropped
    (duplicates included); ``freed_bytes`` is old pack bytes deleted minus new
    pack bytes written; ``young_packs`` were skipped for the grace period;
    ``problems`` lists what was left alone and why. ``orphan_packs`` and
    ``orphan_bytes``: packs without an index file deleted (in ``deleted_packs``
    too); ``index_files_removed``: index files deleted (their packs deleted or
    repacked); ``kept_for_leases``: packs gc would have deleted or repacked but
    kept because a writer held a live lease."""

    deleted_packs: list[str]
    repacked_packs: list[str]
    new_packs: list[str]
    removed_chunks: int
    freed_bytes: int
    young_packs: int
    problems: list[str]
    orphan_packs: int = 0
    orphan_bytes: int = 0
    index_files_removed: int = 0
    kept_for_leases: int = 0
    # Filled in by the store's gc (ckpt/maintenance.py), which knows the log:
    referenced: int = 0  # chunks the recorded captures need (all kept)
    live_leases: list[str] = []  # noqa: RUF012 - a NamedTuple default, never mutated
    dead_leases_removed: int = 0
    reclaimed_purges: list[int] = []  # noqa: RUF012 - log positions of the purges reclaimed
    dry_run: bool = False  # nothing was deleted: the figures are what a gc would do

    @property
    def details(self) -> GcDetails:
        """What ``ckpt gc --json`` prints beside the totals, from what gc did (not
        from the index before and after: orphan packs are in no index, and a
        "removed 0, freed 0 bytes" once hid 241 MB)."""
        return GcDetails(
            deleted_packs=len(self.deleted_packs),
            orphan_packs=self.orphan_packs,
            orphan_bytes=self.orphan_bytes,
            index_files_removed=self.index_files_removed,
            repacked_packs=len(self.repacked_packs),
            new_packs=len(self.new_packs),
            young_packs=self.young_packs,
            kept_for_leases=self.kept_for_leases,
            live_leases=list(self.live_leases),
            dead_leases_removed=self.dead_leases_removed,
            problems=list(self.problems),
        )


class GcDetails(TypedDict):
    """``GcReport.details``: counts of what a gc did, keyed as ``ckpt gc --json`` prints them."""

    deleted_packs: int
    orphan_packs: int
    orphan_bytes: int
    index_files_removed: int
    repacked_packs: int
    new_packs: int
    young_packs: int
    kept_for_leases: int
    live_leases: list[str]
    dead_leases_removed: int
    problems: list[str]


def delete_unreferenced(
    backend: ChunkBackend,
    index: ChunkIndex,
    codec: ChunkCodec,
    new_writer: Callable[[], ChunkWriter],
    keep: AbstractSet[bytes] | IdSet | Iterable[bytes],
    grace_seconds: float,
    now: float,
    writers: Sequence[LeaseInfo] = (),
    stop: Callable[[], bool] = lambda: False,
) -> GcReport:
    """See the module docstring. ``stop`` is asked before each delete: when it
    says yes (a capture is waiting for this gc), the rest is left for next time.
    ``keep``: a set, an ``IdSet`` (ids beyond memory), or any iterable of ids
    (spilled into an ``IdSet`` first)."""
    from .gc_plan import keep_set  # numpy: imported when a gc runs

    with keep_set(keep) as keeping:
        return _collect(
            backend, index, codec, new_writer, keeping, grace_seconds, now, writers, stop
        )


def _collect(
    backend: ChunkBackend,
    index: ChunkIndex,
    codec: ChunkCodec,
    new_writer: Callable[[], ChunkWriter],
    keep: AbstractSet[bytes] | IdSet,
    grace_seconds: float,
    now: float,
    writers: Sequence[LeaseInfo],
    stop: Callable[[], bool],
) -> GcReport:
    from .gc_plan import orphan_needs, plan_collection

    # Orphans created from here on may be a live writer's packs, not yet indexed.
    cutoff = min((w.started for w in writers), default=float("inf")) - SKEW
    plan = plan_collection(backend, index, keep, grace_seconds, now, bool(writers))
    packs, present, problems = plan.packs, plan.present, plan.problems
    young, leased, doomed, repack = plan.young, plan.leased, plan.doomed, plan.repack

    writer = new_writer()
    dead = list(doomed)  # wholly dead packs: deleting them needs no room
    try:
        with writer:  # on an error, no put of it outlives this block
            for p in repack:
                kept = plan.live(p)
                if kept is None:
                    problems.append(f"{p.name}: index file unreadable, not repacked")
                    continue
                try:
                    copy_live(codec, writer, backend.get(p.name), p.name, kept)
                except (ChunkMissing, ChunkCorrupt) as error:
                    problems.append(f"{p.name}: not repacked: {error}")
                    continue
                doomed.append((p, len(kept)))
            writer.flush()  # new packs and their index files are durable before any delete
    except StoreFull as error:
        # A full device is when a gc matters most: free what needs no new pack
        # (dead packs, orphans) and leave the partly live ones for a later run.
        # Packs this repack made durable are duplicate copies: the next gc's garbage.
        doomed = dead
        problems.append(f"partly live packs not repacked: {error}")
    new_packs = writer.flushed_packs

    removed = freed = index_files = 0
    stopped = False
    for p, kept_count in doomed:
        if stop():
            stopped = True
            break
        backend.delete(index_name(p.pack_id))
        index_files += 1
        if p.name in present:
            backend.delete(p.name)
            freed += p.size
        removed += p.entry_count - kept_count
    freed -= sum(backend.size(n) for n in new_packs)

    done = doomed[:index_files]
    deleted = [p.name for p, n in done if n == 0]
    index.refresh()  # the deleted index files mark their packs gone
    orphans = orphan_bytes = 0
    for name in sorted(present - {p.name for p in packs}):
        if stopped or stop():
            stopped = True
            break
        try:
            meta = read_pack_meta(backend, name)
        except (PackCorrupt, ChunkMissing) as error:
            problems.append(f"orphan pack unreadable, left alone: {error}")
            continue
        if now - meta.created < grace_seconds:
            young += 1
            continue
        if meta.created >= cutoff:
            leased += 1  # perhaps a live writer's, flushed but not yet indexed
            continue
        # A referenced chunk indexed elsewhere is a duplicate copy: not needed.
        needed = orphan_needs(meta.entries, keep, index)
        if needed:
            problems.append(
                f"{name}: no index file, holds {len(needed)} referenced chunks; run rebuild_index"
            )
            continue
        backend.delete(name)
        deleted.append(name)
        removed += len(meta.entries)
        freed += meta.size
        orphans += 1
        orphan_bytes += meta.size
    if stopped:
        problems.append("stopped early: a capture is waiting for this gc; run gc again later")
    repacked = [p.name for p, n in done if n > 0]
    return GcReport(
        deleted,
        repacked,
        new_packs,
        removed,
        freed,
        young,
        problems,
        orphans,
        orphan_bytes,
        index_files,
        leased,
    )
