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
index files, then events (in log order, as stored: the bytes, and so the
hash chain, are the source's), then snapshots, then the marker that makes the
target a store. A copy killed before the marker leaves a target that is not
a store (``init`` and ``copy`` refuse it: empty it first). Chunks are copied
once each: packs are the unit of deduplication, each is copied whole.
The target's read models are then rebuilt from its log and the last hash
link compared with the source's: equal links mean the copied log is the
source's, event for event and byte for byte.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import StoredEvent

from ckpt.domain import ChunkMissing, StoreConflict, StoreCorrupt, StoreExists
from ckpt.storage.chunks.layout import INDEX, PACKS, pack_id_of_index, pack_id_of_pack

from .content_ops import ProgressFactory
from .store_config import StoreConfig, read_remote_meta, write_remote_meta

if TYPE_CHECKING:
    from .store import Store

BATCH = 1000  # events per insert transaction into the target


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

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def copy_store(
    source: Store,
    to_events: str | None,
    to_chunks: str | None,
    to_dir: Path | None,
    progress: ProgressFactory | None = None,
) -> CopyReport:
    from .store import Store

    began = time.perf_counter()
    config = StoreConfig(to_dir, to_events, to_chunks)
    config.encryption = _encryption(source)
    if to_dir is not None and (to_dir / "ckpt-store.json").exists():
        raise StoreExists(f"a ckpt store already exists at {to_dir}")
    if to_dir is not None:
        to_dir.mkdir(parents=True, exist_ok=True)
    backend = config.chunk_backend()
    where = config.describe()
    if read_remote_meta(backend, where) is not None or next(iter(backend.list(PACKS)), None):
        raise StoreExists(
            f"the chunk storage of {where} already holds a store: copy needs it empty"
        )
    with Store(to_dir, config=config, key=source._key, actor=source.actor) as target:
        if target.app.last_position():
            raise StoreExists(f"the event store of {where} already holds events: it must be empty")
        cut = source.app.last_position()
        packs, index_files, size, skipped = _copy_chunks(source, backend, progress)
        events, snapshots = _copy_events(source, target, cut, progress)
        if config.remote:
            write_remote_meta(backend, config)
        if to_dir is not None:
            config.write_marker()
        target.rebuild_read_models()
        link = _last_link(target, cut)
    expected = _last_link(source, cut)
    if link != expected:
        raise StoreCorrupt(
            f"the copy's hash chain ends in {link} at position {cut}, the source's in {expected}"
        )
    return CopyReport(where, events, snapshots, packs, index_files, size, skipped,
                      link, round(time.perf_counter() - began, 3))  # fmt: skip


def _encryption(source: Store) -> dict[str, Any] | None:
    if source.keyring is None:
        return None
    return {"cipher": "AES-256-GCM", "key_check": source.keyring.key_check}


def _copy_chunks(
    source: Store, backend: Any, progress: ProgressFactory | None
) -> tuple[int, int, int, int]:
    """Every pack, then every index file whose pack was copied (an index names
    its pack: ``index/<id>.idx`` for ``packs/<ab>/<id>.pack``)."""
    src = source.chunks.backend
    pack_names = list(src.list(PACKS))
    index_names = list(src.list(INDEX))
    total = sum(src.size(n) for n in pack_names)
    bar = None if progress is None else progress("copy chunks", total)
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
            bar(len(data))
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
    source: Store, target: Store, cut: int, progress: ProgressFactory | None
) -> tuple[int, int]:
    bar = None if progress is None else progress("copy events", cut)
    recorder = target.app.recorder
    originators: set[Any] = set()
    batch: list[StoredEvent] = []
    copied = 0

    def flush() -> None:
        nonlocal copied
        if not batch:
            return
        recorder.insert_events(batch)
        copied += len(batch)
        if bar:
            bar(len(batch))
        batch.clear()

    for n in source.app.read_rows(1, cut):
        originators.add(n.originator_id)
        batch.append(StoredEvent(n.originator_id, n.originator_version, n.topic, n.state))
        if len(batch) >= BATCH:
            flush()
    flush()
    if target.app.last_position() != cut:
        raise StoreConflict(
            f"the target's log ends at position {target.app.last_position()} after copying "
            f"{cut} events: another writer used it during the copy"
        )
    snapshots = 0
    if source.app.snapshots is not None and target.app.snapshots is not None:
        for originator in sorted(originators, key=str):
            stored = source.app.snapshots.recorder.select_events(originator)
            if stored:
                target.app.snapshots.recorder.insert_events(list(stored))
                snapshots += len(stored)
    return copied, snapshots


def _last_link(store: Store, position: int) -> str:
    if position == 0:
        return ""
    store.read_models.catch_up()
    link = store.read_models.recorder.links(position).get(position)
    return link.hex() if link else ""
