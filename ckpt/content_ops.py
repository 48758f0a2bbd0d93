"""Content operations of a store: capture at checkpoint and sync, restore, verify, gc, stats.

Kept apart from ``store.py`` (the metadata commands) so each stays one
concept; ``Store`` exposes these as methods. Durability order (DESIGN.md §3):
every capture writes its chunks through one writer session, which makes the
packs and their index files durable when it closes; only then is the event
that names them saved.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast
from uuid import UUID

from ckpt.domain import (
    BackupPoint,
    Checkpoint,
    CheckpointType,
    CkptError,
    DiskCapture,
    FileCapture,
    FileRole,
    InvalidValue,
    Origin,
    OutputFailed,
    VirtualMachine,
)

from .content import (
    ManifestCache,
    Reference,
    Session,
    capture_disk,
    capture_file,
    chain_maps,
    open_source,
    referenced_chunks,
    refuse_container,
    restore_maps,
)

if TYPE_CHECKING:
    from .store import Store

ProgressFactory = Callable[[str, int], Callable[[int], None]]
VERIFY_BATCH = 1024  # chunks checked per get_many: 4 MiB of 4 KiB blocks
WORKERS = min(4, os.cpu_count() or 2)  # hashing and zstd release the GIL: one thread per core
Extents = Sequence[tuple[int, int]]


def _bar(progress: ProgressFactory | None, label: str, total: int) -> Callable[[int], None] | None:
    return None if progress is None else progress(label, total)


def _source_sizes(paths: Sequence[str | Path]) -> int:
    total = 0
    for p in paths:
        with contextlib.suppress(OSError):  # an unreadable source fails clearly when opened
            total += Path(p).stat().st_size
    return total


def create_checkpoint(
    store: Store,
    vm: str,
    name: str | None,
    checkpoint_type: CheckpointType | None,
    guest_can_quiesce: bool,
    disks: Mapping[str, str | Path],
    files: Mapping[FileRole, str | Path],
    changed_blocks: Mapping[str, Extents],
    progress: ProgressFactory | None,
    raw: bool = False,
) -> Checkpoint:
    for disk in changed_blocks:
        if disk not in disks:
            raise InvalidValue(f"--changed-blocks for disk {disk!r} needs --disk {disk}=IMAGE")

    def act(v: VirtualMachine, o: Origin) -> Checkpoint:
        _, memory = v.plan_checkpoint(checkpoint_type, guest_can_quiesce)
        for role in files:
            v.check_file_role(role, memory)
        captures, captured = _capture(store, v, disks, files, changed_blocks, progress, raw)
        return v.create_checkpoint(o, name, checkpoint_type, guest_can_quiesce, captures, captured)

    return _leased_command(store, vm, act)


def sync(
    store: Store,
    vm: str,
    name: str | None,
    disks: Mapping[str, str | Path],
    changed_blocks: Mapping[str, Extents],
    progress: ProgressFactory | None,
    raw: bool = False,
) -> BackupPoint:
    def act(v: VirtualMachine, o: Origin) -> BackupPoint:
        captures, _ = _capture(store, v, disks, {}, changed_blocks, progress, raw)
        return v.sync(o, name, captures)

    return _leased_command(store, vm, act)


T = TypeVar("T")


def _leased_command(store: Store, vm: str, act: Callable[[VirtualMachine, Origin], T]) -> T:
    """``store._command`` inside a write lease (storage/chunks/lease.py): taken
    before the first pack is written, released after the event is committed or
    the command failed (Ctrl-C included), so a gc deletes none of the chunks
    the capture writes or reuses. Just before the commit, the lease checks that
    it was respected and that every pack the capture wrote is still there."""
    with store.chunks.write_lease() as lease:

        def checked(v: VirtualMachine, o: Origin) -> T:
            result = act(v, o)
            lease.check()
            return result

        return store._command(vm, checked)


def _capture(
    store: Store,
    v: VirtualMachine,
    disks: Mapping[str, str | Path],
    files: Mapping[FileRole, str | Path],
    changed_blocks: Mapping[str, Extents],
    progress: ProgressFactory | None,
    raw: bool = False,
) -> tuple[list[Any], list[FileCapture]]:
    """Capture each disk image and state file; ``raw``: take an image that looks
    like a VHDX/VHD/qcow2 container as raw bytes instead of refusing it."""
    chunks = store.chunks
    cache = ManifestCache(chunks)
    total = _source_sizes([*disks.values(), *files.values()])
    bar = _bar(progress, f"capture {v.name}", total)
    captures = []
    captured = []
    with chunks.writer() as writer, ThreadPoolExecutor(WORKERS) as pool:
        session = Session(writer, chunks, pool)
        for disk, path in disks.items():
            with open_source(path, f"image of disk {disk!r}") as src:
                if not raw:
                    hint = f"use `ckpt import disk {v.name} {disk} {path}` (it reads a VHDX)"
                    refuse_container(src, str(path), hint)
                captures.append(
                    capture_disk(
                        v, disk, src, str(path), session, cache, changed_blocks.get(disk), bar
                    )
                )
        for role, path in files.items():
            with open_source(path, f"{role.value} file") as src:
                captured.append(capture_file(role, src, str(path), session, bar))
    return captures, captured


def import_disk(store: Store, vm: str, disk: str, path: Path, raw: bool = False) -> DiskCapture:
    """Capture a disk file into the disk's running layer (``ckpt import disk``).

    ``.vhdx``/``.avhdx`` files are read through their parent chain (every
    structure checked; a missing parent or a cycle is refused, naming the
    file); anything else is a raw image, and a VHDX/VHD/qcow2 file under another
    name is refused, unless ``raw`` (which also takes a .vhdx name as raw
    bytes). Nothing is recorded on any error.
    """
    from .interop import ChainStream, open_vhdx_chain

    def act(v: VirtualMachine, o: Origin) -> DiskCapture:
        chunks = store.chunks
        cache = ManifestCache(chunks)
        with chunks.writer() as writer, ThreadPoolExecutor(WORKERS) as pool:
            session = Session(writer, chunks, pool)
            if path.suffix.lower() in (".vhdx", ".avhdx") and not raw:
                with open_source(path, f"VHDX of disk {disk!r}"):  # refuses a device or pipe
                    pass
                vhdx, files, segments = open_vhdx_chain(path)
                try:
                    stream = cast(BinaryIO, ChainStream(vhdx))  # a RawIOBase: read, seek, tell
                    capture = capture_disk(
                        v, disk, stream, str(path), session, cache, segments=segments
                    )
                finally:
                    for f in files:
                        f.close()
            else:
                with open_source(path, f"image of disk {disk!r}") as src:
                    if not raw:
                        hint = "give it a .vhdx name: `ckpt import disk` reads such files as VHDX"
                        refuse_container(src, str(path), hint)
                    capture = capture_disk(v, disk, src, str(path), session, cache)
        v.import_disk_content(o, capture)
        return capture

    return _leased_command(store, vm, act)


# ------------------------------------------------------------------ restore
@dataclass(frozen=True)
class RestorePoint:
    """A checkpoint or backup point, and the VM as of the moment its content was recorded."""

    vm: VirtualMachine
    label: str
    layers: dict[str, UUID]
    files: tuple[FileCapture, ...]


def resolve_point(store: Store, vm: str, ref: str, at: str | int | None = None) -> RestorePoint:
    """A live checkpoint or backup point, now or as of ``at`` (which reaches
    checkpoints deleted since: their content stays until gc may purge it).
    A reference matching several points (of either kind) is ambiguous."""
    v = store.vm(vm, at=at)
    found = v.find_point(ref)
    if isinstance(found, BackupPoint):
        past = store.vm(v.id, version=found.version)
        return RestorePoint(past, f"backup point {found.name!r}", dict(past.running), ())
    layers = dict(found.layers)
    return RestorePoint(v, f"checkpoint {found.name!r}", layers, v.captured_files.get(found.id, ()))


def _disk_maps(store: Store, vm: str, ref: str, disk: str, at: str | int | None) -> list[Any]:
    """The manifests of a disk's chain at a checkpoint or backup point, base first."""
    point = resolve_point(store, vm, ref, at)
    if disk not in point.layers:
        raise InvalidValue(
            f"VM {point.vm.name!r} has no disk {disk!r} (disks: {', '.join(point.layers)})"
        )
    maps = chain_maps(point.vm, point.layers[disk], ManifestCache(store.chunks))
    if not maps:
        raise InvalidValue(f"no content was captured for disk {disk!r} up to {point.label}")
    return maps


@contextlib.contextmanager
def _writing(out: BinaryIO) -> Iterator[None]:
    """An ``OSError`` out of a restore is the output's (no space, quota, I/O error,
    a closed pipe): the chunk backends translate their own. The Python API then
    raises ``OutputFailed`` naming the stream, as the CLI does for its files."""
    try:
        yield
    except OSError as e:
        name = getattr(out, "name", None)
        where = repr(name) if isinstance(name, str) else "the output stream"
        raise OutputFailed(f"cannot write {where}: {e.strerror or e}") from e


def restore_disk(
    store: Store,
    vm: str,
    ref: str,
    disk: str,
    out: BinaryIO,
    progress: ProgressFactory | None,
    at: str | int | None = None,
) -> int:
    maps = _disk_maps(store, vm, ref, disk, at)
    size = maps[-1].size
    with _writing(out):
        return restore_maps(maps, store.chunks, out, _bar(progress, f"restore {disk}", size))


def restore_disk_vhdx(
    store: Store, vm: str, ref: str, disk: str, out: BinaryIO, at: str | int | None = None
) -> int:
    from .interop import write_disk_vhdx

    maps = _disk_maps(store, vm, ref, disk, at)
    with _writing(out):
        return write_disk_vhdx(maps, store, out)


def _file(point: RestorePoint, role: FileRole) -> FileCapture:
    for f in point.files:
        if f.role is role:
            return f
    raise InvalidValue(f"no {role.value} content was captured for {point.label}")


def restore_memory(
    store: Store,
    vm: str,
    ref: str,
    out: BinaryIO,
    progress: ProgressFactory | None,
    at: str | int | None = None,
) -> int:
    point = resolve_point(store, vm, ref, at)
    f = _file(point, FileRole.MEMORY)
    cache = ManifestCache(store.chunks)
    with _writing(out):
        return restore_maps(
            [cache.load(f.manifest)], store.chunks, out, _bar(progress, "restore memory", f.size)
        )


def restore_state_files(
    store: Store, vm: str, ref: str, directory: Path, at: str | int | None = None
) -> list[Path]:
    """Write the captured state files under their Hyper-V names below ``directory``.

    A file that fails (no space, Ctrl-C) is removed; those written before it stay.
    """
    from ckpt.domain import OutputFailed

    if directory.exists() and not directory.is_dir():
        raise InvalidValue(
            f"{str(directory)!r} is not a directory: --state-files writes the state files "
            "under their Hyper-V names into -o DIR"
        )
    point = resolve_point(store, vm, ref, at)
    cache = ManifestCache(store.chunks)
    written = []
    for f in point.files:
        if not f.path:  # 2016+ memory lives inside the VMRS: `restore --memory` gives it
            continue
        target = directory.joinpath(*f.path.split("/"))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as out:
                restore_maps([cache.load(f.manifest)], store.chunks, out)
        except BaseException as e:
            with contextlib.suppress(OSError):
                target.unlink()
            if isinstance(e, OSError):
                raise OutputFailed(
                    f"cannot write {str(target)!r}: {e.strerror or e}; that file was removed"
                ) from None
            raise
        written.append(target)
    if not written:
        raise InvalidValue(f"no state files were captured for {point.label}")
    return written


# ------------------------------------------------------------ verify and gc
@dataclass
class VerifyReport:
    checked: int = 0
    referenced: int = 0
    bad: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad


def _references(store: Store) -> list[Reference]:
    """Every capture the event log records, read from the log itself.

    Not from the read models: gc deletes what is not listed here, so the list
    must come from the source of truth even if a read model lags or is damaged.
    """
    names: dict[UUID, str] = {}
    removed: dict[UUID, str] = {}  # a removed VM's captures stay referenced, named as such
    refs: list[tuple[UUID, Reference]] = []
    with store._translated():
        for position, event in store.app.read_log():
            owner = event.originator_id
            if isinstance(event, VirtualMachine.Registered):
                names[owner] = event.name
            elif isinstance(event, VirtualMachine.Removed):
                removed[owner] = f"{event.name} (removed, id {owner})"
            vm = names.get(owner, str(owner))
            if isinstance(event, VirtualMachine.LayerContentRecorded):
                c = event.capture
                what = f"disk {c.disk} (layer {c.layer})"
                refs.append((owner, Reference(position, vm, what, c.manifest)))
            elif isinstance(event, VirtualMachine.StateContentRecorded):
                for f in event.files:
                    what = f"{f.path or f.role.value} of checkpoint {event.checkpoint_id}"
                    refs.append((owner, Reference(position, vm, what, f.manifest)))
    return [replace(r, vm=removed[o]) if o in removed else r for o, r in refs]


def verify(
    store: Store,
    sample: float = 1.0,
    progress: ProgressFactory | None = None,
    seed: int | None = None,
) -> VerifyReport:
    if not 0 < sample <= 1:
        raise InvalidValue(f"--sample must be in (0, 1], not {sample}")
    chunks = store.chunks
    problems = database_problems(store)
    if problems:
        from ckpt.domain import StoreCorrupt

        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise StoreCorrupt(f"the store's database is damaged: {'; '.join(problems[:2])}{more}")
    needed, broken = referenced_chunks(_references(store), chunks)
    report = VerifyReport(referenced=len(needed))
    for ref, reason in broken:
        report.bad.append(
            {"chunk": ref.manifest.hex(), "reason": reason, "affects": [_affect(ref)]}
        )
    ids = sorted(needed)
    if sample < 1:
        ids = random.Random(seed).sample(ids, max(1, round(len(ids) * sample))) if ids else []
    bar = _bar(progress, "verify", len(ids))
    broken_ids = {bytes.fromhex(b["chunk"]) for b in report.bad}
    # In pack order and VERIFY_BATCH at a time: on S3 one request per chunk was 4 ms
    # (17.7 s for 4,600 chunks); a batch reads each pack's stretch once. Only a batch
    # with a bad chunk is read again chunk by chunk, to name each bad one.
    todo = chunks.in_pack_order(c for c in ids if c not in broken_ids)
    report.checked += len(ids) - len(todo)
    if bar is not None and len(ids) > len(todo):
        bar(len(ids) - len(todo))
    for start in range(0, len(todo), VERIFY_BATCH):
        batch = todo[start : start + VERIFY_BATCH]
        try:
            chunks.get_many(batch)
        except CkptError:
            for cid in batch:
                try:
                    chunks.get(cid)
                except CkptError as e:
                    affects = [_affect(r) for r in needed[cid]]
                    report.bad.append({"chunk": cid.hex(), "reason": str(e), "affects": affects})
        report.checked += len(batch)
        if bar is not None:
            bar(len(batch))
    if report.bad:
        _name_checkpoints(store, report.bad)
    return report


def repair(store: Store) -> dict[str, Any]:
    """Rebuild what can be rebuilt from what remains: every index file from its pack,
    the read models from the event log. Content lost from a pack cannot come back."""
    rebuilt = store.chunks.rebuild_index()
    result: dict[str, Any] = {
        "index_files_rebuilt": len(rebuilt.rebuilt),
        "stale_index_files_removed": len(rebuilt.removed),
        "damaged_packs": dict(rebuilt.damaged_packs),
    }
    try:
        events, _ = store.rebuild_read_models()
        result["read_models_rebuilt_from_events"] = events
    except CkptError as e:
        result["read_models_error"] = str(e)
    return result


def database_problems(store: Store) -> list[str]:
    """SQLite's own check of the database file (pages, b-trees, indexes).
    PostgreSQL checks its own pages (checksums, amcheck): that is the DBA's."""
    import sqlite3

    from ckpt.storage.event_store import EVENTS_FILE

    path = store.config.sqlite_file()
    if path is None:
        return []
    try:
        with sqlite3.connect(path) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as e:
        return [f"{EVENTS_FILE}: {e}"]
    lines = [line for r in rows for line in str(r[0]).splitlines() if line.strip()]
    return [] if lines == ["ok"] else [f"{EVENTS_FILE}: {line}" for line in lines[:10]]


def _affect(ref: Reference) -> dict[str, Any]:
    return {
        "vm": ref.vm,
        "what": ref.what,
        "position": ref.position,
        "manifest": ref.manifest.hex(),
    }


def _name_checkpoints(store: Store, bad: list[dict[str, Any]]) -> None:
    """Replace each affected capture's manifest id with the live checkpoints (and Now)
    whose bytes need it.

    A disk capture is needed by every checkpoint whose chain holds its manifest
    (merges move manifests to the surviving layer, so this follows them); a
    state file by its own checkpoint.
    """
    users: dict[tuple[str, bytes], list[str]] = {}
    for vm in store.vms():
        for cp in vm.checkpoints.values():
            for disk, leaf in cp.layers:
                for ref in _chain_refs(vm, leaf):
                    users.setdefault((vm.name, ref), []).append(f"{cp.name} (disk {disk})")
            for f in vm.captured_files.get(cp.id, ()):
                users.setdefault((vm.name, f.manifest), []).append(f"{cp.name} ({f.role.value})")
        for disk, leaf in vm.running.items():
            for ref in _chain_refs(vm, leaf):
                users.setdefault((vm.name, ref), []).append(f"Now (disk {disk})")
    for entry in bad:
        for affect in entry["affects"]:
            manifest_id = bytes.fromhex(affect.pop("manifest"))
            affect["checkpoints"] = sorted(set(users.get((affect["vm"], manifest_id), [])))


def _chain_refs(vm: VirtualMachine, leaf: UUID) -> list[bytes]:
    from ckpt.domain.layers import chain

    return [ref for layer in chain(vm.layers, leaf) for ref in vm.contents.get(layer.id, ())]


@dataclass
class GcReport:
    referenced: int
    removed_chunks: int
    freed_bytes: int
    details: dict[str, Any]


def gc(store: Store, grace_seconds: float, progress: ProgressFactory | None = None) -> GcReport:
    chunks = store.chunks
    # The lease first, the log second: a capture that commits before we read the
    # log is in ``needed``; one that commits later held a lease we see (or waits
    # for ours). See docs/decisions/0006-gc-leases.md.
    with chunks.gc_lease() as leases:
        # lenient: a manifest that reads but breaks a rule still names its chunks (kept)
        needed, broken = referenced_chunks(_references(store), chunks, lenient=True)
        if broken:
            # A manifest we cannot read hides what it references: deleting anything then
            # could delete live data. Refuse, and let verify name the damage.
            raise InvalidValue(
                f"gc refused: {len(broken)} manifests cannot be read; run ckpt verify"
            )
        result = chunks.delete_unreferenced(set(needed), grace_seconds, time.time(), leases)
    # From what gc did, not from the index before and after: orphan packs (no
    # index file) are in no index, and a "removed 0, freed 0 bytes" once hid 241 MB.
    details: dict[str, Any] = {
        "deleted_packs": len(result.deleted_packs),
        "orphan_packs": result.orphan_packs,
        "orphan_bytes": result.orphan_bytes,
        "index_files_removed": result.index_files_removed,
        "repacked_packs": len(result.repacked_packs),
        "new_packs": len(result.new_packs),
        "young_packs": result.young_packs,
        "kept_for_leases": result.kept_for_leases,
        "live_leases": [x.describe() for x in leases.writers],
        "dead_leases_removed": len(leases.dead_removed),
        "problems": list(result.problems),
    }
    return GcReport(
        referenced=len(needed),
        removed_chunks=result.removed_chunks,
        freed_bytes=result.freed_bytes,
        details=details,
    )


def stats(store: Store, vm: str | None = None, at: str | int | None = None) -> dict[str, Any]:
    """Logical bytes handed over, stored bytes, dedup and compression ratios, per VM and total.

    With ``at``, the per-VM figures are those of the log up to that point, and
    the store-wide chunk figures (which the log does not record) are left out.
    """
    until = store.position(at)
    store.catch_up()
    recorder = store.read_models.recorder
    # Keyed by VM id: a removed VM's name may belong to a new VM now. A removed VM's
    # captures still count (gc keeps their chunks), under "<name> (removed, id ...)".
    gone = {r[2] for r in recorder.audit(operation="vm-removed", until=until)}
    by_id: dict[str, dict[str, int]] = {}
    names: dict[str, str] = {}
    for row in recorder.captures(until):
        entry = by_id.setdefault(row[2], {"logical_bytes": 0, "new_bytes": 0, "captures": 0})
        names[row[2]] = f"{row[3]} (removed, id {row[2]})" if row[2] in gone else row[3]
        entry["logical_bytes"] += row[8]
        entry["new_bytes"] += row[9]
        entry["captures"] += 1
    per_vm = {names[vid]: entry for vid, entry in by_id.items()}
    if vm is not None:
        found = store.vm(vm, at=at)
        per_vm = {
            found.name: by_id.get(
                str(found.id), {"logical_bytes": 0, "new_bytes": 0, "captures": 0}
            )
        }
    s = store.chunks.stats()
    logical = sum(r["logical_bytes"] for r in per_vm.values())
    total: dict[str, Any] = {
        "logical_bytes": logical,
        "unique_bytes": s.uncompressed_bytes,
        "stored_bytes": s.stored_bytes,
        "chunks": s.chunks,
        "dedup_ratio": round(logical / s.uncompressed_bytes, 3) if s.uncompressed_bytes else None,
        "compression_ratio": round(s.uncompressed_bytes / s.stored_bytes, 3)
        if s.stored_bytes
        else None,
    }
    vms = {
        name: dict(
            row,
            dedup_ratio=round(row["logical_bytes"] / row["new_bytes"], 3)
            if row["new_bytes"]
            else None,
        )
        for name, row in per_vm.items()
    }
    if until is not None:
        total = {"logical_bytes": logical, "position": until}
    return {"vms": vms, "total": total}
