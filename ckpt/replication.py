"""Replication (``ckpt replicate``): a second store that follows this one, incrementally.

Terms:
    primary    the open store (``source``); it keeps working meanwhile.
    replica    the target: a store of its own id that records "replica of <primary
               id>" and its *progress* (last position and hash link, table
               ``ckpt_replica``, ``storage/replica_record.py``); it refuses writes
               until ``ckpt replica promote``.
    cut        the primary's last position when a run starts: events up to it are
               sent. Every chunk an event references was durable before the event
               was committed, so packs listed after reading the cut hold them all.
    link       the hash chain over the stored bytes (``storage/log_chain.py``).

A run, in the order that keeps a replica whole whenever it is killed:

1. **Check** the replica is this primary's and a prefix of its log: its progress
   link must equal the primary's link at that position *recomputed from the
   primary's stored events* (an event changed on the primary after it was
   replicated is caught, not copied), else ``ReplicaDiverged`` names the first
   position where the two logs differ, and nothing is written.
2. **Packs** the replica lacks, each made durable (``put``) before its index file,
   both before any event that needs them. A pack the primary's gc removes while
   it is copied is skipped; the primary is listed again, so the pack its chunks
   moved to is copied too. A gc that reclaimed a purge after the cut may have
   deleted chunks events up to the cut reference: when the primary's log holds a
   ``content-reclaimed`` past the cut, the cut moves to its last position and the
   packs are listed again (so the replica never holds a point without its bytes).
3. **Events** after the replica's position, as stored (same bytes at the same
   positions), in batches; each batch commits with the progress it reaches, in
   one transaction, so the progress always matches the log. Before a batch
   commits, its last link is compared with the one the primary recorded when the
   events were written: a primary event changed before it was ever replicated is
   refused too.
4. **Removed packs**: a pack on the replica the primary no longer has is removed
   only if it was already gone from the primary before the cut was read; then the
   gc that removed it recorded what made it unneeded (``content-reclaimed``)
   before the cut, and those events arrive in the same run.
5. A plain replica's read models catch up; an encrypted one's wait for its key:
   the replica is reached without the key (it stores the primary's ciphertext,
   and checks the chain over the stored bytes), so a copy can live at a site not
   trusted with plaintext. Restoring from it needs the key.

A killed run leaves a replica that verifies clean (every event's chunks arrived
before it) and whose log is a prefix of the primary's; the next run sends only
what is missing (packs by name, events after the progress).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict, cast
from uuid import uuid4

from ckpt.domain import ChunkMissing, StoreConflict, StoreMismatch
from ckpt.domain.errors import ReplicaDiverged, StoreCorrupt
from ckpt.domain.purges import PurgeReclaimed
from ckpt.storage.chunks import ChunkBackend
from ckpt.storage.chunks.format import LEGACY, read_format, write_format
from ckpt.storage.chunks.layout import INDEX, PACKS, pack_id_of_index, pack_id_of_pack
from ckpt.storage.event_store import EVENTS_FILE
from ckpt.storage.locations import file_path, kind_of_chunks
from ckpt.storage.log_chain import GENESIS, link
from ckpt.storage.replica_record import ReplicaState

from . import read_only
from .progress_factory import ProgressFactory
from .setup import connect
from .store_config import CHUNKS_DIR, StoreConfig, read_marker, read_remote_meta, write_remote_meta
from .store_config import MARKER as STORE_MARKER
from .unit_of_work import UnitOfWork

BATCH = 1000  # events per transaction on the replica (and per progress update)
ROUNDS = 8  # listings of the primary's packs while its gc moves them, before giving up


class ReplicateDetails(TypedDict):
    """``ReplicateReport.as_dict()``: what ``ckpt replicate --json`` prints."""

    target: str
    first_run: bool
    events: int
    packs: int
    index_files: int
    bytes: int
    skipped_packs: int
    removed_packs: int
    position: int
    link: str
    seconds: float


@dataclass
class ReplicateReport:
    target: str
    first_run: bool
    events: int
    packs: int
    index_files: int
    bytes: int
    skipped_packs: int
    removed_packs: int
    position: int
    link: str
    seconds: float

    def as_dict(self) -> ReplicateDetails:
        return cast(ReplicateDetails, asdict(self))


def replicate(
    source: UnitOfWork,
    to_events: str | None,
    to_chunks: str | None,
    to_dir: Path | None,
    progress: ProgressFactory | None = None,
) -> ReplicateReport:
    began = time.perf_counter()
    source.check_open()
    primary_id = _primary_id(source)
    config, first = _target_config(source, to_events, to_chunks, to_dir)
    _not_the_primary(source, config)
    if first and config.directory is not None:
        read_only.check_can_create(config.directory, "replicate the store")
        read_only.make_directory(config.directory, "replicate the store")
    backend = config.chunk_backend(create=first)
    where = config.describe()
    target = connect(config, source.actor, key=None, create=first)
    try:
        if first:
            _initialise(source, target, config, backend, primary_id)
        state = _check_replica(target, primary_id, where)
        had = set(backend.list(PACKS))  # the replica's packs from earlier runs
        before = set(source.chunks.backend.list(PACKS))  # what the primary had before the cut
        with source.translated():
            source.read_models.catch_up()  # the links the primary recorded, up to the cut
        cut = source.app.last_position()
        _check_prefix(source, target, state, cut, where)
        _follow_format(source, backend)
        packs, index_files, size, skipped = _send_packs(source, backend, progress)
        for _ in range(ROUNDS):
            later = source.app.last_position()
            if not _reclaimed(source, cut, later):
                break
            # A gc reclaimed a purge after the cut: it may have deleted chunks that
            # events up to the cut need (the replica would hold points without their
            # bytes, or purged ones not reclaimed). Send up to its content-reclaimed
            # too, with the packs listed after reading it.
            cut = later
            with source.translated():
                source.read_models.catch_up()  # the recorded links up to the new cut
            more = _send_packs(source, backend, progress)
            packs, index_files, size = packs + more[0], index_files + more[1], size + more[2]
        else:
            raise StoreConflict(
                f"the primary's gc reclaimed purges through {ROUNDS} rounds of this run: "
                "nothing was appended; run `ckpt replicate` again"
            )
        events, position, last = _send_events(source, target, state, cut, progress, primary_id)
        removed = _remove_packs(source, backend, had - before)
        if source.keyring is None:
            with target.translated():
                _build_read_models(target)
    finally:
        target.close()
    return ReplicateReport(
        where, first, events, packs, index_files, size, skipped, removed, position,
        last.hex() if position else "", round(time.perf_counter() - began, 3),
    )  # fmt: skip


def _build_read_models(target: UnitOfWork) -> None:
    """Fold the replicated events into the replica's read models. Read models never
    built (a first run, or one resuming a killed first run) are built a page at a time,
    as ``ckpt copy`` builds its target's: a catch-up decodes every event after its
    position at once, and a first catch-up of a whole log peaked at 905 MiB for
    300,000 events (bench_replicate.py --history 300000; 59 MiB with no history)."""
    models = target.read_models
    if models.recorder.position() == 0:
        models.rebuild()
    else:
        models.catch_up()


def promote(uow: UnitOfWork) -> dict[str, Any]:
    """``ckpt replica promote``: the replica becomes a primary (failover)."""
    uow.check_open()
    state = uow.replica()
    if state is None:
        raise StoreMismatch(f"the store at {uow.where} is not a replica: nothing to promote")
    when = datetime.now(UTC).isoformat(timespec="seconds")
    with uow.translated():
        done = uow.read_models.recorder.promote_replica(when)
    assert done is not None
    return replica_json(uow.read_models.recorder.store_id(), done)


def replica_json(store_id: str | None, state: ReplicaState) -> dict[str, Any]:
    return {
        "store_id": store_id,
        "replica_of": state.primary_id,
        "position": state.position,
        "link": state.link.hex() if state.position else "",
        "promoted_at": state.promoted_at,
    }


# --------------------------------------------------------------------- target
def _primary_id(source: UnitOfWork) -> str:
    with source.translated():
        found = source.read_models.recorder.store_id()
        if found is not None:
            return found
        source.writable("replicate (recording this store's id)")
        return source.read_models.recorder.set_store_id(str(uuid4()))


def _target_config(
    source: UnitOfWork, to_events: str | None, to_chunks: str | None, to_dir: Path | None
) -> tuple[StoreConfig, bool]:
    """The replica's configuration, and whether this is the first run (no store there)."""
    if to_dir is not None:
        if to_dir.exists() and not to_dir.is_dir():
            raise StoreMismatch(f"cannot replicate into {str(to_dir)!r}: it is not a directory")
        if (to_dir / STORE_MARKER).exists():
            return read_marker(to_dir), False
        _check_empty_target(to_dir)
        config = StoreConfig(to_dir, to_events, to_chunks)
    else:
        config = StoreConfig(None, to_events, to_chunks)
        meta = read_remote_meta(config.chunk_backend(), config.describe())
        if meta is not None:
            config.encryption = meta.get("encryption")
            config.store_id = meta.get("store_id")
            return config, False
    return config, True


def _check_empty_target(directory: Path) -> None:
    """The first run needs an empty directory, or what a first run interrupted before
    the marker leaves (an event log without events, chunk storage without packs,
    the marker's temporary file when the kill came while it was written), which it
    starts again. Refused: other files (``--to-store ~/Documents`` by
    mistake: the replica would mix with them) and the rest of a killed ``copy``
    (events or packs: a store's data). Looked at without writing anything."""
    try:
        names = [p.name for p in directory.iterdir()] if directory.is_dir() else []
        ours = (CHUNKS_DIR, f".{STORE_MARKER}.tmp")  # write_file's temporary name
        other = [n for n in names if n not in ours and not n.startswith(EVENTS_FILE)]
        data = _holds_packs(directory / CHUNKS_DIR) or _holds_events(directory / EVENTS_FILE)
    except OSError as e:
        raise StoreMismatch(f"cannot replicate into {str(directory)!r}: {e.strerror}") from None
    if other:
        raise StoreMismatch(
            f"cannot replicate into {str(directory)!r}: it holds other files and no store; "
            "give a new or empty directory"
        )
    if data:
        raise StoreMismatch(
            f"cannot replicate into {str(directory)!r}: it holds events or packs but no "
            f"{STORE_MARKER} (the rest of a killed copy?); empty it or use another directory"
        )


def _holds_packs(chunks: Path) -> bool:
    packs = chunks / PACKS.rstrip("/")
    return packs.is_dir() and any(p.is_file() for p in packs.rglob("*"))


def _holds_events(events: Path) -> bool:
    if not events.exists():
        return False
    try:
        with contextlib.closing(
            sqlite3.connect(events.resolve().as_uri() + "?mode=ro", uri=True)
        ) as db:
            return db.execute("SELECT 1 FROM stored_events LIMIT 1").fetchone() is not None
    except sqlite3.OperationalError as e:
        return "no such table" not in str(e)  # a log never written to is empty
    except sqlite3.Error:
        return True  # not a database we know: someone's data


def _not_the_primary(source: UnitOfWork, config: StoreConfig) -> None:
    """Refuse a target that shares the primary's event store or chunk storage,
    however it is named (``--to-store`` the primary's directory, or its own files
    by URL: a new, empty store became a replica of itself that way)."""
    mine, theirs = _backends(source.config), _backends(config)
    if mine[0] == theirs[0] or mine[1] == theirs[1]:
        raise StoreMismatch(f"{config.describe()} is this store itself: replicate to another")


def _backends(config: StoreConfig) -> tuple[str, str]:
    """(events, chunks) of a configuration: resolved paths for SQLite and local
    chunks, the URLs otherwise."""
    sqlite = config.sqlite_file()
    events = str(sqlite.resolve()) if sqlite is not None else str(config.events)
    if config.chunks is None:
        assert config.directory is not None
        chunks = str((config.directory / CHUNKS_DIR).resolve())
    elif kind_of_chunks(config.chunks) == "file":
        chunks = str(file_path(config.chunks).resolve())
    else:
        chunks = config.chunks
    return events, chunks


def _initialise(
    source: UnitOfWork,
    target: UnitOfWork,
    config: StoreConfig,
    backend: ChunkBackend,
    primary_id: str,
) -> None:
    """Make the empty target a replica: its own id, the primary's key check and
    chunk format, the replica row (position 0), then its meta and marker."""
    where = config.describe()
    if read_remote_meta(backend, where) is not None or next(iter(backend.list(PACKS)), None):
        raise StoreMismatch(f"the chunk storage of {where} already holds a store or packs")
    if target.app.last_position():
        raise StoreMismatch(f"the event store of {where} already holds events: it must be empty")
    if source.keyring is not None:
        config.encryption = {"cipher": "AES-256-GCM", "key_check": source.keyring.key_check}
    recorder = target.read_models.recorder
    with target.translated():
        config.store_id = recorder.set_store_id(str(uuid4()))
        with recorder.transaction(commit=True) as c:
            recorder.set_replica_progress(c, primary_id, 0, GENESIS)
    if source.chunks.format > LEGACY:
        write_format(backend, source.chunks.format)  # before its first v2 pack, as copy
    if config.remote:
        write_remote_meta(backend, config)
    if config.directory is not None:
        config.write_marker()


def _check_replica(target: UnitOfWork, primary_id: str, where: str) -> ReplicaState:
    state = target.replica()
    if state is None:
        raise StoreMismatch(f"{where} holds a store that is not a replica: replicate elsewhere")
    if state.primary_id != primary_id:
        raise StoreMismatch(
            f"{where} is a replica of store {state.primary_id}, not of this store ({primary_id})"
        )
    if not state.follows:
        raise StoreMismatch(
            f"{where} was promoted to a primary at {state.promoted_at}: it follows no store now"
        )
    last = target.app.last_position()
    if last != state.position:
        raise ReplicaDiverged(
            f"the replica at {where} holds events up to position {last}, but it replicated "
            f"only up to {state.position}: something else wrote to it; nothing was appended"
        )
    return state


# ---------------------------------------------------------------------- check
def _check_prefix(
    source: UnitOfWork, target: UnitOfWork, state: ReplicaState, cut: int, where: str
) -> None:
    """The replica's log is a prefix of the primary's, by the primary's stored bytes."""
    if state.position > cut:
        raise ReplicaDiverged(
            f"the replica at {where} holds events up to position {state.position}, this store "
            f"only up to {cut}: it is not a replica of this log; nothing was appended"
        )
    if state.position == 0:
        return
    previous = GENESIS
    for n in source.app.read_rows(1, state.position):
        previous = link(previous, n.id, n.originator_id, n.originator_version, n.topic, n.state)
    if previous == state.link:
        return
    differs = _first_difference(source, target, state.position)
    raise ReplicaDiverged(
        f"the replica at {where} and this store differ at position {differs} (the replica's "
        f"link at {state.position} is {state.link.hex()[:16]}..., this store's stored events "
        f"give {previous.hex()[:16]}...): an event was changed, added or removed after it was "
        "replicated; nothing was appended"
    )


def _first_difference(source: UnitOfWork, target: UnitOfWork, upto: int) -> int:
    mine: Iterator[Any] = source.app.read_rows(1, upto)
    theirs: Iterator[Any] = target.app.read_rows(1, upto)
    for a, b in zip(mine, theirs, strict=False):
        if (a.id, a.originator_id, a.originator_version, a.topic, a.state) != (
            b.id, b.originator_id, b.originator_version, b.topic, b.state,
        ):  # fmt: skip
            return int(min(a.id, b.id))
    return upto


# ---------------------------------------------------------------------- packs
def _follow_format(source: UnitOfWork, backend: ChunkBackend) -> None:
    """The primary's chunk format, recorded before its packs of that format arrive,
    as ``ckpt upgrade`` does: a primary upgraded since the first run (read now,
    not from the open store: a ``--follow`` outlives an upgrade by another process)
    would otherwise leave a replica of format 1 holding version-2 packs, which
    writes version-1 packs once promoted."""
    primary = read_format(source.chunks.backend)
    if primary > read_format(backend):
        write_format(backend, primary)


def _send_packs(
    source: UnitOfWork, backend: ChunkBackend, progress: ProgressFactory | None
) -> tuple[int, int, int, int]:
    """Every pack the replica lacks, then its index file (also an index file a
    killed run did not get to); listed again while the primary's gc moves packs.

    A pack copied whose index file is gone by the time the index files are
    listed was being repacked: gc writes the new pack before it deletes the old
    one's index, so listing the packs again finds where its chunks went. (A
    pack that never had an index, the orphan of a killed capture, stays without
    one: the listing after it finds nothing new.)"""
    src = source.chunks.backend
    have = {pack_id_of_pack(n) for n in backend.list(PACKS)} - {None}
    have_index = {pack_id_of_index(n) for n in backend.list(INDEX)} - {None}
    skipped = len(have)
    packs = index_files = size = 0
    unindexed: set[bytes | None] = set()
    for _ in range(ROUNDS):
        names = [n for n in src.list(PACKS) if pack_id_of_pack(n) not in have]
        if unindexed and not names:  # listed again only for packs left without an index
            return packs, index_files, size, skipped
        bar = None if progress is None or not names else progress("replicate packs", len(names))
        vanished = 0
        for name in names:
            try:
                data = src.get(name)
            except ChunkMissing:  # a gc of the primary repacked it meanwhile
                vanished += 1
                continue
            backend.put(name, data)  # durable before its index, and before any event
            have.add(pack_id_of_pack(name))
            packs += 1
            size += len(data)
            if bar:
                bar(1)
        for name in src.list(INDEX):
            pack = pack_id_of_index(name)
            if pack is None or pack not in have or pack in have_index:
                continue
            try:
                data = src.get(name)
            except ChunkMissing:
                continue
            backend.put(name, data)
            have_index.add(pack)
            index_files += 1
            size += len(data)
        unindexed = {pack_id_of_pack(n) for n in names} & have - have_index
        if not vanished and not unindexed:
            return packs, index_files, size, skipped
    raise StoreConflict(
        f"the primary's packs kept moving (a gc running through {ROUNDS} listings): "
        "nothing was appended; run `ckpt replicate` again"
    )


def _reclaimed(source: UnitOfWork, after: int, upto: int) -> bool:
    """Whether the primary recorded a ``content-reclaimed`` in (after, upto]: the
    only event after which its gc deletes chunks that earlier events reference
    (docs/design.md; the topic is stored in the clear, also when encrypted)."""
    if upto <= after:
        return False
    return any(n.topic == PurgeReclaimed.TOPIC for n in source.app.read_rows(after + 1, upto))


def _remove_packs(source: UnitOfWork, backend: ChunkBackend, gone: set[str]) -> int:
    """Packs an earlier run sent that the primary had removed before this run
    read the cut (so the events that made them unneeded came in this run). A pack
    sent in this run is never removed in it: a second gc of the primary may have
    repacked it into a pack this run did not list."""
    if not gone:
        return 0
    still = set(source.chunks.backend.list(PACKS))
    indexes = {pack_id_of_index(n): n for n in backend.list(INDEX)}
    removed = 0
    for name in sorted(gone):
        if name in still:  # written by the primary after ``before`` was listed
            continue
        index = indexes.get(pack_id_of_pack(name))
        if index is not None:
            backend.delete(index)  # the index first: a pack without one is an orphan
        backend.delete(name)
        removed += 1
    return removed


# --------------------------------------------------------------------- events
def _send_events(
    source: UnitOfWork,
    target: UnitOfWork,
    state: ReplicaState,
    cut: int,
    progress: ProgressFactory | None,
    primary_id: str,
) -> tuple[int, int, bytes]:
    """Events after the replica's position up to the cut, as stored, each batch
    committed with its progress; returns (events sent, last position, its link)."""
    recorder = target.read_models.recorder
    primary = source.read_models.recorder

    def recorded(at: int) -> bytes | None:
        """The link the primary recorded at ``at``, one row at a time: a map of every link
        after the replica's position held ~330 bytes an event (330 MiB for a first copy
        of 1 M events)."""
        with source.translated(), primary.transaction(commit=False) as c:
            return primary.last_link_in(c, at)

    bar = (
        None
        if progress is None or cut <= state.position
        else progress("replicate events", cut - state.position)
    )
    batch: list[tuple[int, Any, int, str, bytes]] = []
    previous, position, sent = state.link, state.position, 0

    def flush() -> None:
        nonlocal sent
        if not batch:
            return
        expected = recorded(position)
        if expected is not None and expected != previous:
            raise ReplicaDiverged(
                f"this store's event at or before position {position} was changed after it "
                f"was recorded (its stored bytes give link {previous.hex()[:16]}..., the "
                f"recorded link is {expected.hex()[:16]}...): not replicated; run "
                "`ckpt verify --log`"
            )
        try:
            with target.translated(), recorder.transaction(commit=True) as c:
                recorder.insert_stored_rows(c, batch)
                recorder.set_replica_progress(c, primary_id, position, previous)
        except StoreConflict as e:  # the positions were taken meanwhile: a second run
            raise StoreConflict(
                f"another run replicates into the replica at the same time (position "
                f"{batch[0][0]} was taken meanwhile): this run stopped without appending this "
                "batch; the replica stays a prefix of this store; run again when the other ends"
            ) from e
        sent += len(batch)
        if bar:
            bar(batch[-1][0] - batch[0][0] + 1)
        batch.clear()

    for n in source.app.read_rows(state.position + 1, cut):
        previous = link(previous, n.id, n.originator_id, n.originator_version, n.topic, n.state)
        position = n.id
        batch.append((n.id, n.originator_id, n.originator_version, n.topic, n.state))
        if len(batch) >= BATCH:
            flush()
    flush()
    if target.app.last_position() != position:
        raise StoreCorrupt(
            f"the replica's log ends at position {target.app.last_position()} after the run, "
            f"expected {position}: another writer used it"
        )
    return sent, position, previous
