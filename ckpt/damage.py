"""What damaged or unreadable content costs: the checkpoints and backup points it affects.

Terms: the *references* are every capture the event log records, read from the
log itself (not from the read models: gc deletes what is not listed, so the
list must come from the source of truth even if a read model lags or is
damaged). A *user* of a capture is a live checkpoint, a backup point, or Now,
whose bytes are read through that capture's manifest. An *unreadable pack* is
one whose file the medium failed to read (``StoreIOError``: EIO, ...): its
chunk ids come from its index file (a separate file, usually still readable).

``verify`` names the users of each bad chunk with ``name_users``; a restore,
export or copy stopped by an unreadable pack names them in its error
(``naming_affected``), so the user learns at once which other points are
still whole: every point that does not need the pack restores byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from ckpt.domain import CkptError, StoreIOError, VirtualMachine
from ckpt.storage.chunks.index_file import decode_index_file
from ckpt.storage.chunks.layout import index_name, pack_id_of_pack
from ckpt.storage.chunks.verify import AffectedCapture, BadChunk
from ckpt.storage.disk_state import effective_refs
from ckpt.storage.manifest_cache import chain_manifest_ids
from ckpt.storage.references import Reference, manifest_ids

from . import queries
from .point_history import walk
from .unit_of_work import UnitOfWork

# Points named in an error message; the rest are counted ("and N more"): an
# error is one line, and a pack of 16 MiB can hold a block of every checkpoint.
NAMED = 10


def references(uow: UnitOfWork) -> list[Reference]:
    """Every capture the event log records, read from the log itself (the one
    walk, ``point_history``: a removed VM's captures named as such)."""
    return [r for h in walk(uow).values() for r in h.refs]


def point_users(uow: UnitOfWork) -> dict[tuple[str, bytes], list[str]]:
    """(VM name, manifest id) -> the live checkpoints, backup points and Now
    whose bytes are read through that manifest; a purged one (``ckpt forget``)
    is named "(purged)": until gc, an undo gives its bytes back.

    A disk capture is needed by every point whose chain's state reads its
    manifest: the chain's last v2 manifest and any v1 diffs after it (merges
    move manifests to the surviving layer, so this follows them); a state file
    by its own checkpoint. A manifest that cannot be read counts as needed
    (``effective_refs`` is conservative).
    """
    users: dict[tuple[str, bytes], list[str]] = {}
    memo: dict[bytes, bool | None] = {}

    def chain_refs(vm: VirtualMachine, leaf: UUID) -> list[bytes]:
        return effective_refs(chain_manifest_ids(vm, leaf), uow.chunks.get, memo)

    for vm in queries.vms(uow):
        purged = vm.purged  # named as such: its bytes are given up (back only by an undo)
        for cp in vm.checkpoints.values():
            name = f"{cp.name} (purged)" if cp.id in purged else cp.name
            for disk, leaf in cp.layers:
                for ref in chain_refs(vm, leaf):
                    users.setdefault((vm.name, ref), []).append(f"{name} (disk {disk})")
            for f in vm.captured_files.get(cp.id, ()):
                users.setdefault((vm.name, f.manifest), []).append(f"{name} ({f.role.value})")
        for disk, leaf in vm.running.items():
            for ref in chain_refs(vm, leaf):
                users.setdefault((vm.name, ref), []).append(f"Now (disk {disk})")
        for point in vm.backup_points.values():
            past = queries.vm(uow, vm.id, version=point.version)
            for disk, leaf in past.running.items():
                for ref in chain_refs(past, leaf):
                    tag = " (purged)" if point.id in purged else ""
                    label = f"backup point {point.name}{tag} (disk {disk})"
                    users.setdefault((vm.name, ref), []).append(label)
    return users


def name_users(uow: UnitOfWork, bad: list[tuple[bytes, str, list[Reference]]]) -> list[BadChunk]:
    """Each bad chunk with the captures that need it and their users."""
    users = point_users(uow)

    def affected(ref: Reference) -> AffectedCapture:
        return AffectedCapture(
            vm=ref.vm,
            what=ref.what,
            position=ref.position,
            checkpoints=sorted(set(users.get((ref.vm, ref.manifest), []))),
        )

    return [
        BadChunk(chunk=cid.hex(), reason=reason, affects=[affected(r) for r in refs])
        for cid, reason, refs in bad
    ]


def pack_chunk_ids(uow: UnitOfWork, pack: str) -> list[bytes]:
    """The chunk ids a pack holds, from its index file (``StoreIOError``,
    ``ChunkMissing``, ``IndexCorrupt`` when that cannot be read either)."""
    pack_id = pack_id_of_pack(pack)
    if pack_id is None:
        return []
    name = index_name(pack_id)
    return [
        bytes(e.chunk_id) for e in decode_index_file(uow.chunks.backend.get(name), name).entries
    ]


def affected_points(uow: UnitOfWork, pack: str, ids: list[bytes]) -> list[str]:
    """ "VM v: checkpoint c (disk d)" for every point whose bytes need one of
    ``ids`` (the chunks of ``pack``): a second pass over the manifests, as
    verify's ``who_needs``; a manifest whose own pieces or segments are in the
    unreadable pack is needed too (its walk stops there)."""
    wanted = set(ids)
    hit: list[Reference] = []
    for ref in references(uow):
        try:
            batches, _ = manifest_ids(ref.manifest, uow.chunks)
            if any(cid in wanted for batch in batches for cid in batch):
                hit.append(ref)
        except StoreIOError as e:
            if e.name == pack or ref.manifest in wanted:
                hit.append(ref)
        except CkptError:
            if ref.manifest in wanted:
                hit.append(ref)
    users = point_users(uow)
    return sorted(
        {f"VM {ref.vm}: {user}" for ref in hit for user in users.get((ref.vm, ref.manifest), ())}
    )


def summary(points: list[str], limit: int = NAMED) -> str:
    """The first ``limit`` points, then "and N more"."""
    if not points:
        return "no live checkpoint, backup point or Now needs it (history only)"
    more = f" and {len(points) - limit} more" if len(points) > limit else ""
    return "; ".join(points[:limit]) + more


def explain(uow: UnitOfWork, error: StoreIOError) -> StoreIOError:
    """``error`` with the points its pack's chunks are needed by appended."""
    if error.explained or error.name is None or pack_id_of_pack(error.name) is None:
        return error
    try:
        points = affected_points(uow, error.name, pack_chunk_ids(uow, error.name))
        tail = f"; it holds chunks of: {summary(points)}"
    except CkptError as e:
        tail = f"; which checkpoints it affects is unknown: {e}"
    better = StoreIOError(f"{error}{tail}", error.name, error.path)
    better.explained = True
    return better


@contextmanager
def naming_affected(uow: UnitOfWork) -> Iterator[None]:
    """Re-raise an unreadable pack's ``StoreIOError`` naming the points it affects."""
    try:
        yield
    except StoreIOError as e:
        better = explain(uow, e)
        if better is e:
            raise
        raise better from e
