"""Maintenance of a store: verify, repair, gc, stats, info.

Terms: the *references* are every capture the event log records, read from the
log itself (not from the read models: gc deletes what is not listed, so the
list must come from the source of truth even if a read model lags or is
damaged). *Verify* reads back every referenced chunk (or a sample) and names
the checkpoints a bad one affects; *gc* deletes the chunks no reference needs,
under a gc lease (docs/decisions/0006-gc-leases.md); *repair* rebuilds what can
be rebuilt (index files from packs, read models from the log).
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Required, TypedDict

from ckpt.domain import CkptError, InvalidValue, StoreCorrupt
from ckpt.storage.chunks import GcReport, VerifyReport
from ckpt.storage.chunks.store import ChunkStore
from ckpt.storage.chunks.verify import BadChunk
from ckpt.storage.event_store import EVENTS_FILE
from ckpt.storage.locations import display
from ckpt.storage.references import Reference, who_needs

from . import queries
from .damage import name_users
from .point_history import walk
from .progress_factory import ProgressFactory, bar
from .read_only import immutable_uri
from .retained import kept_references, referenced_ids
from .retention_ops import reclaim_purges
from .store_config import CHUNKS_DIR, FORMAT
from .unit_of_work import UnitOfWork

LOOKUP_BATCH = 1 << 16  # referenced ids checked against the index per sorted batch
MISSING_DETAILED = 64  # missing chunks named in the store's own words; the rest briefly


class RepairReport(TypedDict, total=False):
    """``Store.repair()``: index files rebuilt from their packs, stale ones removed,
    packs found damaged (name -> reason), and the read models rebuilt from the
    log (or why that failed)."""

    index_files_rebuilt: Required[int]
    stale_index_files_removed: Required[int]
    damaged_packs: Required[dict[str, str]]
    read_models_rebuilt_from_events: int
    read_models_error: str


class StoreInfo(TypedDict):
    """``Store.info()``: where the store is and what it holds (passwords masked)."""

    store: str | None
    events_backend: str
    events: str
    chunks_backend: str
    chunks: str
    format: int
    encrypted: bool
    position: int
    vms: int | None
    chunk_format: int  # 1: one zstd frame per chunk; 2: grouped (``ckpt upgrade``)
    replica: ReplicaInfo | None  # a replica's primary and progress (``ckpt replicate``)


class ReplicaInfo(TypedDict):
    of: str
    position: int
    link: str
    promoted_at: str | None


class VMStats(TypedDict):
    """Bytes one VM handed over (``logical_bytes``) and stored new (``new_bytes``)."""

    logical_bytes: int
    new_bytes: int
    captures: int
    dedup_ratio: float | None


class TotalStats(TypedDict, total=False):
    """Store-wide figures; as of ``--at`` only ``logical_bytes`` and ``position``."""

    logical_bytes: Required[int]
    unique_bytes: int
    stored_bytes: int
    chunks: int
    dedup_ratio: float | None
    compression_ratio: float | None
    position: int


class StoreStats(TypedDict):
    """``Store.stats()``: per VM (by name) and in total."""

    vms: dict[str, VMStats]
    total: TotalStats


def database_problems(events_file: Path | None, read_only: bool = False) -> list[str]:
    """SQLite's own check of the database file (pages, b-trees, indexes).
    PostgreSQL checks its own pages (checksums, amcheck): that is the DBA's.
    ``read_only``: the file is on read-only media (opened ``immutable``)."""
    if events_file is None:
        return []
    name = immutable_uri(events_file) if read_only else str(events_file)
    try:
        with sqlite3.connect(name, uri=read_only) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as e:
        return [f"{EVENTS_FILE}: {e}"]
    lines = [line for r in rows for line in str(r[0]).splitlines() if line.strip()]
    return [] if lines == ["ok"] else [f"{EVENTS_FILE}: {line}" for line in lines[:10]]


def verify(
    uow: UnitOfWork,
    sample: float = 1.0,
    progress: ProgressFactory | None = None,
    seed: int | None = None,
) -> VerifyReport[list[BadChunk]]:
    """Read back every chunk the recorded captures need (or a ``sample``), in pack
    order and ``VERIFY_BATCH`` at a time with the chunk store's verifier; name the
    live checkpoints each bad one affects."""
    if not 0 < sample <= 1:
        raise InvalidValue(f"--sample must be in (0, 1], not {sample}")
    chunks = uow.chunks
    problems = database_problems(uow.events_file, uow.read_only is not None)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise StoreCorrupt(f"the store's database is damaged: {'; '.join(problems[:2])}{more}")
    # The index cache answers without reading index files again: a file damaged
    # since it was cached is found only here (storage/chunks/index.py, ``check``).
    damaged = chunks.check_index()
    if damaged:
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise StoreCorrupt(f"{damaged[0]}{more}; ckpt verify --repair rebuilds them")
    broken: list[tuple[Reference, str]] = []
    refs = kept_references(uow, walk(uow))  # less what only reclaimed purges needed
    with referenced_ids(refs, chunks, broken) as needed:
        referenced = len(needed)
        bad: list[tuple[bytes, str, list[Reference]]] = [
            (ref.manifest, reason, [ref]) for ref, reason in broken
        ]
        broken_ids = {cid for cid, _, _ in bad}
        # Every referenced chunk must be indexed: sorted batches against the index.
        missing = 0
        for batch in _batches(iter(needed), LOOKUP_BATCH):
            for cid, found in zip(batch, chunks.has_many(batch), strict=True):
                if found or cid in broken_ids:
                    continue
                missing += 1
                bad.append((cid, _missing_reason(chunks, cid, missing), []))
        # Then every indexed chunk (or a sample) read back pack by pack: each pack
        # read once, however the ids are spread (sorting every referenced id into
        # pack order held ~100 B per chunk). A bad copy the index does not read
        # from, or a chunk no capture needs (gc's), is not reported.
        update = bar(progress, "verify", chunks.stats().chunks)
        report = chunks.verify(None, sample, seed, refresh=False, progress=update)
        io_errors = set(report.unreadable.values())
        for cid, reason in report.bad.items():
            if cid in broken_ids or cid not in needed:
                continue
            if reason in io_errors:  # the pack's read failed: reading each chunk again
                bad.append((cid, reason, []))  # would only repeat it (seconds each on a
                continue  # failing disk)
            try:
                chunks.get(cid)  # follows a chunk a concurrent gc moved; names the fault
            except CkptError as e:
                bad.append((cid, str(e), []))
    checked = report.checked
    if bad:  # who needs each bad chunk: a second pass, only now (never kept per chunk)
        users = who_needs(refs, chunks, [cid for cid, _, refs in bad if not refs])
        bad = [(cid, reason, refs or users.get(cid, [])) for cid, reason, refs in bad]
    named = name_users(uow, bad) if bad else []
    # An index file whose pack is gone (a file system lost gc's order) is a
    # finding even when no capture references its chunks yet (decision 0016).
    stale = chunks.stale_index_files()
    return VerifyReport(
        checked, named, referenced, unreadable=dict(report.unreadable), stale_index=stale
    )


def _batches(ids: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    while batch := list(itertools.islice(ids, size)):
        yield batch


def _missing_reason(chunks: ChunkStore, cid: bytes, nth: int) -> str:
    """Why ``cid`` cannot be read: the store's own words for the first few (a
    ``get`` refreshes the index: a list of index/ each), a short one after."""
    if nth <= MISSING_DETAILED:
        try:
            chunks.get(cid)
        except CkptError as e:
            return str(e)
    return f"chunk {cid.hex()} is missing: no index file names it"


def repair(uow: UnitOfWork) -> RepairReport:
    """Rebuild what can be rebuilt from what remains: every index file from its pack,
    the read models from the event log. Content lost from a pack cannot come back."""
    rebuilt = uow.chunks.rebuild_index()
    result = RepairReport(
        index_files_rebuilt=len(rebuilt.rebuilt),
        stale_index_files_removed=len(rebuilt.removed),
        damaged_packs=dict(rebuilt.damaged_packs),
    )
    try:
        with uow.translated():
            events, _ = uow.read_models.rebuild()
        result["read_models_rebuilt_from_events"] = events
    except CkptError as e:
        result["read_models_error"] = str(e)
    return result


def gc(
    uow: UnitOfWork,
    grace_seconds: float,
    progress: ProgressFactory | None = None,
    dry_run: bool = False,
) -> GcReport:
    """Delete the chunks no retained point needs, from packs older than the grace
    period; first record the purges this frees as reclaimed (no undo after).
    ``dry_run``: record and delete nothing, report what a gc would free."""
    chunks = uow.chunks
    # The lease first, the log second: a capture that commits before we read the
    # log is in ``needed``; one that commits later held a lease we see (or waits
    # for ours). See docs/decisions/0006-gc-leases.md.
    # A dry run deletes nothing, so it needs no lease (and writes none: read-only media).
    held = contextlib.nullcontext(chunks.gc_leases_seen()) if dry_run else chunks.gc_lease()
    with held as leases:
        histories, gone, positions = reclaim_purges(uow, dry_run)
        broken: list[tuple[Reference, str]] = []
        refs = kept_references(uow, histories, gone)
        # lenient: a manifest that reads but breaks a rule still names its chunks (kept)
        with referenced_ids(refs, chunks, broken, lenient=True) as needed:
            if broken:
                # A manifest we cannot read hides what it references: deleting anything
                # then could delete live data. Refuse, and let verify name the damage.
                raise InvalidValue(
                    f"gc refused: {len(broken)} manifests cannot be read; run ckpt verify"
                )
            if dry_run:
                e = chunks.estimate_unreferenced(needed, grace_seconds, time.time(), leases)
                result = GcReport(
                    e.deleted_packs, e.repacked_packs, [], e.removed_chunks, e.freed_bytes,
                    e.young_packs, e.problems, kept_for_leases=e.kept_for_leases, dry_run=True,
                )  # fmt: skip
            else:
                result = chunks.delete_unreferenced(needed, grace_seconds, time.time(), leases)
            referenced = len(needed)
    return result._replace(
        referenced=referenced,
        live_leases=[x.describe() for x in leases.writers],
        dead_leases_removed=len(leases.dead_removed),
        reclaimed_purges=positions,
    )


def _zero_vm() -> VMStats:
    return VMStats(logical_bytes=0, new_bytes=0, captures=0, dedup_ratio=None)


def stats(uow: UnitOfWork, vm: str | None = None, at: str | int | None = None) -> StoreStats:
    """Logical bytes handed over, stored bytes, dedup and compression ratios, per VM and total.

    With ``at``, the per-VM figures are those of the log up to that point, and
    the store-wide chunk figures (which the log does not record) are left out.
    """
    until = queries.position(uow, at)
    uow.catch_up()
    recorder = uow.read_models.recorder
    # Keyed by VM id: a removed VM's name may belong to a new VM now. A removed VM's
    # captures still count (gc keeps their chunks), under "<name> (removed, id ...)".
    gone = {r.vm_id for r in recorder.audit(operation="vm-removed", until=until)}
    by_id: dict[str, VMStats] = {}
    names: dict[str, str] = {}
    for row in recorder.captures(until):
        entry = by_id.setdefault(row.vm_id, _zero_vm())
        names[row.vm_id] = f"{row.vm} (removed, id {row.vm_id})" if row.vm_id in gone else row.vm
        entry["logical_bytes"] += row.size
        entry["new_bytes"] += row.new_bytes
        entry["captures"] += 1
    per_vm = {names[vid]: entry for vid, entry in by_id.items()}
    if vm is not None:
        found = queries.vm(uow, vm, at=at)
        per_vm = {found.name: by_id.get(str(found.id), _zero_vm())}
    s = uow.chunks.stats()
    logical = sum(r["logical_bytes"] for r in per_vm.values())
    total = TotalStats(
        logical_bytes=logical,
        unique_bytes=s.uncompressed_bytes,
        stored_bytes=s.stored_bytes,
        chunks=s.chunks,
        dedup_ratio=round(logical / s.uncompressed_bytes, 3) if s.uncompressed_bytes else None,
        compression_ratio=round(s.uncompressed_bytes / s.stored_bytes, 3)
        if s.stored_bytes
        else None,
    )
    vms = {
        name: VMStats(
            logical_bytes=row["logical_bytes"],
            new_bytes=row["new_bytes"],
            captures=row["captures"],
            dedup_ratio=round(row["logical_bytes"] / row["new_bytes"], 3)
            if row["new_bytes"]
            else None,
        )
        for name, row in per_vm.items()
    }
    if until is not None:
        total = TotalStats(logical_bytes=logical, position=until)
    return StoreStats(vms=vms, total=total)


def info(uow: UnitOfWork) -> StoreInfo:
    """Where the store is and what it holds; safe to print (passwords masked)."""
    config = uow.config
    events = config.events or str(config.sqlite_file())
    chunks = config.chunks or str(config.directory / CHUNKS_DIR if config.directory else "")
    return StoreInfo(
        store=None if config.directory is None else str(config.directory),
        events_backend=config.events_kind,
        events=display(events),
        chunks_backend=config.chunks_kind,
        chunks=display(chunks),
        format=FORMAT,
        encrypted=uow.keyring is not None,
        position=uow.app.last_position(),
        vms=len(uow.read_models.recorder.vms()) if uow.caught_up() else None,
        chunk_format=uow.chunks.format,
        replica=_replica_info(uow),
    )


def _replica_info(uow: UnitOfWork) -> ReplicaInfo | None:
    state = uow.replica()
    if state is None:
        return None
    return ReplicaInfo(
        of=state.primary_id,
        position=state.position,
        link=state.link.hex() if state.position else "",
        promoted_at=state.promoted_at,
    )
