"""Copying a whole store to other backends (``ckpt copy``): how a user moves from
the embedded store to PostgreSQL + S3, or back.

Terms:
    source     the open store being copied; it may keep working meanwhile.
    target     the backends named by ``--to-events`` / ``--to-chunks`` (and
               ``--to-store DIR``, whose marker then names them); they must
               hold no store yet.
    cut        the source's last position when the copy starts: events up to
               it are copied. Every chunk an event references was durable
               before the event was committed, so the packs listed after
               reading the cut hold every chunk the copied events need.

Order, for the same crash safety as every other command: packs, then their
index files, then events (in log order, at their positions, as stored: the
bytes, and so the hash chain, are the source's), then snapshots, then the
target's read models are rebuilt and its last hash link compared with the
source's (equal links: the copied log is the source's, event for event and
byte for byte), and only then the meta object and marker that make the
target a store. A copy killed (or refused) before them leaves a target that
is not a store (``init`` and ``copy`` refuse it: empty it first). Chunks are
copied once each: packs are the unit of deduplication, each is copied whole.
The copy gets a store id of its own.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypedDict, cast
from uuid import uuid4

from ckpt.domain import ChunkMissing, StoreConflict, StoreCorrupt, StoreExists
from ckpt.storage.chunks import ChunkBackend
from ckpt.storage.chunks.format import LEGACY, write_format
from ckpt.storage.chunks.layout import INDEX, PACKS, pack_id_of_index, pack_id_of_pack

from . import read_only
from .progress_factory import ProgressFactory
from .setup import check_empty_directory, connect
from .store_config import StoreConfig, read_remote_meta, write_remote_meta
from .unit_of_work import UnitOfWork

BATCH = 1000  # events per insert transaction into the target


class CopyDetails(TypedDict):
    """``CopyReport.as_dict()``: what ``ckpt copy --json`` prints."""

    target: str
    events: int
    snapshots: int
    packs: int
    index_files: int
    bytes: int
    skipped_packs: int
    link: str
    seconds: float


@dataclass
class CopyReport:
    target: str
    events: int
    snapshots: int
    packs: int
    index_files: int
    bytes: int
    skipped_packs: int
    link: str
    seconds: float

    def as_dict(self) -> CopyDetails:
        return cast(CopyDetails, asdict(self))  # the same fields, typed for --json


def copy_store(
    source: UnitOfWork,
    to_events: str | None,
    to_chunks: str | None,
    to_dir: Path | None,
    progress: ProgressFactory | None = None,
) -> CopyReport:
    began = time.perf_counter()
    config = StoreConfig(to_dir, to_events, to_chunks)
    config.encryption = _encryption(source)
    config.store_id = str(uuid4())  # a copy is a store of its own from now on
    if to_dir is not None:
        check_empty_directory(to_dir)
        read_only.check_can_create(to_dir, "copy the store")
        read_only.make_directory(to_dir, "copy the store")
    backend = config.chunk_backend()
    where = config.describe()
    if read_remote_meta(backend, where) is not None or next(iter(backend.list(PACKS)), None):
        raise StoreExists(
            f"the chunk storage of {where} already holds a store: copy needs it empty"
        )
    target = connect(config, source.actor, key=source.key, create=True)
    try:
        if target.app.last_position():
            raise StoreExists(f"the event store of {where} already holds events: it must be empty")
        cut = source.app.last_position()
        packs, index_files, size, skipped = _copy_chunks(source, backend, progress)
        events, snapshots = _copy_events(source, target, cut, progress)
        with target.translated():
            target.read_models.rebuild()
        link = _last_link(target, cut)
        expected = _last_link(source, cut)
        if link != expected:  # checked before the marker: a bad copy never looks like a store
            raise StoreCorrupt(
                f"the copy's hash chain ends in {link} at position {cut}, the source's in "
                f"{expected}: the target is not a store; empty it before copying again"
            )
        config.store_id = target.read_models.recorder.set_store_id(config.store_id)
        if config.remote:
            write_remote_meta(backend, config)
        if to_dir is not None:
            config.write_marker()
    finally:
        target.close()
    return CopyReport(where, events, snapshots, packs, index_files, size, skipped,
                      link, round(time.perf_counter() - began, 3))  # fmt: skip


def _encryption(source: UnitOfWork) -> dict[str, Any] | None:
    if source.keyring is None:
        return None
    return {"cipher": "AES-256-GCM", "key_check": source.keyring.key_check}


def _copy_chunks(
    source: UnitOfWork, backend: ChunkBackend, progress: ProgressFactory | None
) -> tuple[int, int, int, int]:
    """Every pack, then every index file whose pack was copied (an index names
    its pack: ``index/<id>.idx`` for ``packs/<ab>/<id>.pack``)."""
    src = source.chunks.backend
    pack_names = list(src.list(PACKS))
    index_names = list(src.list(INDEX))
    # Progress in packs (~16 MiB each): sizing them first would cost a request per
    # pack on S3, and fail on a pack a gc of the source removed meanwhile.
    bar = None if progress is None else progress("copy packs", len(pack_names))
    if source.chunks.format > LEGACY:
        write_format(backend, source.chunks.format)  # before its first v2 pack, as upgrade
    copied: set[bytes] = set()
    size = skipped = 0
    for name in pack_names:
        try:
            data = src.get(name)
        except ChunkMissing:  # a gc of the source repacked it meanwhile: its index went first
            skipped += 1
            continue
        backend.put(name, data)
        pack_id = pack_id_of_pack(name)
        if pack_id is not None:
            copied.add(pack_id)
        size += len(data)
        if bar:
            bar(1)
    indexes = 0
    for name in index_names:
        if pack_id_of_index(name) not in copied:
            continue
        try:
            data = src.get(name)
        except ChunkMissing:
            continue
        backend.put(name, data)
        indexes += 1
        size += len(data)
    return len(copied), indexes, size, skipped


def _copy_events(
    source: UnitOfWork, target: UnitOfWork, cut: int, progress: ProgressFactory | None
) -> tuple[int, int]:
    """Events up to ``cut`` at their own positions (PostgreSQL leaves gaps where
    an insert failed, and the hash chain covers the position), in transactions of
    ``BATCH``; then each VM's snapshots up to the last version copied."""
    bar = None if progress is None else progress("copy events", cut)
    recorder = target.read_models.recorder
    versions: dict[Any, int] = {}
    batch: list[tuple[int, Any, int, str, bytes]] = []
    copied = 0

    def flush() -> None:
        nonlocal copied
        if not batch:
            return
        with recorder.transaction(commit=True) as c:
            recorder.insert_stored_rows(c, batch)
        copied += len(batch)
        if bar:
            bar(batch[-1][0] - batch[0][0] + 1)
        batch.clear()

    for n in source.app.read_rows(1, cut):
        versions[n.originator_id] = max(versions.get(n.originator_id, 0), n.originator_version)
        batch.append((n.id, n.originator_id, n.originator_version, n.topic, n.state))
        if len(batch) >= BATCH:
            flush()
    flush()
    if target.app.last_position() != cut:
        raise StoreConflict(
            f"the target's log ends at position {target.app.last_position()}, the source's "
            f"at {cut}: another writer used the target during the copy"
        )
    snapshots = 0
    if source.app.snapshots is not None and target.app.snapshots is not None:
        for originator, version in sorted(versions.items(), key=lambda kv: str(kv[0])):
            # Not past the cut: a snapshot of a later version would make the copied
            # VM skip versions its log does not hold.
            stored = source.app.snapshots.recorder.select_events(originator, lte=version)
            if stored:
                target.app.snapshots.recorder.insert_events(list(stored))
                snapshots += len(stored)
    return copied, snapshots


def _last_link(store: UnitOfWork, position: int) -> str:
    if position == 0:
        return ""
    store.read_models.catch_up()
    link = store.read_models.recorder.links(position, position).get(position)
    return link.hex() if link else ""
