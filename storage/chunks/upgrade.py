"""Converting a store's version-1 packs to version 2 (``ckpt upgrade``).

Terms:
    v1 pack    a pack of one zstd-1 frame per chunk (docs/chunk-format.md §3).
    convert    gc's repack path (repack.py) applied to every chunk a v1 pack
               holds as the index's copy: its frames are checked, their chunks
               regrouped (pack order is capture order) into 64 KiB zstd-3
               group frames of a new v2 pack, which with its index file is
               made durable (§5); then the old index file is deleted, then the
               old pack. Chunks are moved, never dropped: an unreferenced chunk
               stays for gc to judge.
    source     the v2 index file of a converted pack records the id of the v1
               pack it came from. A run killed after the new index file and
               before the old deletes finds, on resume, the chunks already
               converted, converts only the rest (none) and deletes the old
               index file and pack; killed between those two deletes, it left
               a v1 pack without an index file, which the next run deletes
               because a v2 index file names it. Nothing is converted twice
               and nothing is lost, whatever the point of the kill.
    progress   the set of v1 packs still indexed (no state file): the oldest
               (by creation time) go first.

``FORMAT`` is written (durably) before the first v2 pack, so a killed upgrade
leaves a store that this release reads and keeps writing v2 packs into.

Writers: a capture's flushed packs must stay until its lease check, so while
a write lease is live no pack created after its start minus ``SKEW`` is
converted (counted as ``kept_for_leases``); the next run takes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from ckpt.domain.errors import ChunkCorrupt, ChunkMissing, IndexCorrupt

from .backend import ChunkBackend
from .codec import ChunkCodec
from .format import CURRENT, read_format, write_format
from .index_file import PACK_ID_SIZE, IndexFile, decode_index_file
from .layout import INDEX, index_name, pack_id_of_index, pack_name
from .lease import SKEW, LeaseInfo
from .pack import PackEntry
from .repack import copy_live
from .writer import ChunkWriter

if TYPE_CHECKING:  # numpy: imported when an index is searched, not by every command
    from .index import ChunkIndex

ZERO_SOURCE = bytes(PACK_ID_SIZE)


class UpgradeReport(NamedTuple):
    """What an upgrade did: the format before and after, v1 packs converted
    (``resumed``: of which an earlier, killed run had already written the v2
    copy), v1 packs left (``remaining``: a later run takes them), v2 packs
    written, bytes of the v1 packs and of what replaced them, and problems."""

    format_before: int
    format: int
    converted_packs: int
    resumed: int
    remaining: int
    new_packs: int
    bytes_before: int
    bytes_after: int
    kept_for_leases: int
    problems: list[str]


Progress = Callable[[int], None]


def upgrade_packs(
    backend: ChunkBackend,
    index: ChunkIndex,
    codec: ChunkCodec,
    new_writer: Callable[[bytes], ChunkWriter],
    writers: Sequence[LeaseInfo] = (),
    stop: Callable[[], bool] = lambda: False,
    start: Callable[[int, int], Progress | None] = lambda packs, size: None,
) -> UpgradeReport:
    """See the module docstring. ``new_writer(source)`` makes a v2 writer session
    whose index files record ``source``; ``start(packs, bytes)`` is told the
    work once and returns an update called with the bytes of each pack done."""
    before = read_format(backend)
    if before < CURRENT:
        write_format(backend, CURRENT)  # before the first v2 pack
    index.reload()
    cutoff = min((w.started for w in writers), default=float("inf")) - SKEW
    v1: list[IndexFile] = []
    converted: dict[bytes, set[bytes]] = {}
    for name in backend.list(INDEX):
        if pack_id_of_index(name) is None:
            continue
        try:
            f = decode_index_file(backend.get(name), name)
        except ChunkMissing:
            continue
        if not f.grouped:
            v1.append(f._replace(entries=[]))  # the entries come from the index below
        elif f.source != ZERO_SOURCE:
            converted.setdefault(f.source, set()).update(e.chunk_id for e in f.entries)
    v1.sort(key=lambda f: (f.created, f.pack_id))
    problems: list[str] = []
    done = resumed = leased = new_packs = bytes_before = bytes_after = 0
    update = start(len(v1), sum(f.pack_size for f in v1))
    for f in v1:
        if stop():
            problems.append("stopped early: a capture is waiting; run ckpt upgrade again")
            break
        name = pack_name(f.pack_id)
        if f.created >= cutoff:
            leased += 1
            continue
        already = converted.get(f.pack_id, set())
        resumed += 1 if already else 0
        written: list[str] = []
        try:
            live = _indexed_here(backend, index, f.pack_id, already)
            if live:
                data = backend.get(name)
                with new_writer(f.pack_id) as writer:
                    copy_live(codec, writer, data, name, live)
                written = writer.flushed_packs
        except (ChunkMissing, ChunkCorrupt, IndexCorrupt) as error:
            problems.append(f"{name}: not converted: {error}")
            continue
        # The new packs and index files are durable: the old index file, then the pack.
        backend.delete(index_name(f.pack_id))
        with contextlib.suppress(ChunkMissing):
            backend.delete(name)
        done += 1
        new_packs += len(written)
        bytes_before += f.pack_size
        bytes_after += sum(backend.size(n) for n in written)
        if update is not None:
            update(f.pack_size)
    # A run killed between the old index file's delete and the old pack's left
    # the pack without an index file; the v2 index files name it: delete it now.
    indexed = {f.pack_id for f in v1}
    for source in converted:
        if source not in indexed and backend.exists(pack_name(source)):
            with contextlib.suppress(ChunkMissing):
                backend.delete(pack_name(source))
            resumed += 1
    index.reload()
    remaining = sum(1 for n in backend.list(INDEX) if _is_v1(backend, n))
    return UpgradeReport(
        before,
        CURRENT,
        done,
        resumed,
        remaining,
        new_packs,
        bytes_before,
        bytes_after,
        leased,
        problems,
    )


def _indexed_here(
    backend: ChunkBackend, index: ChunkIndex, pack_id: bytes, skip: set[bytes]
) -> list[PackEntry]:
    """The entries of a v1 pack that the index reads from it (a duplicate copy
    indexed elsewhere is left behind, as gc would), less ``skip``. Read from
    its index file, one pack at a time: the upgrade's memory does not grow
    with the store."""
    name = index_name(pack_id)
    f = decode_index_file(backend.get(name), name)
    here = pack_name(pack_id)
    out: list[PackEntry] = []
    for e in f.entries:
        if e.chunk_id in skip:
            continue
        loc = index.location(e.chunk_id)
        if loc is not None and loc.pack == here:
            out.append(e)
    return out


def _is_v1(backend: ChunkBackend, name: str) -> bool:
    """Whether an index file is version 1 (its header's version word)."""
    if pack_id_of_index(name) is None:
        return False
    try:
        head = backend.get(name, 0, 12)
    except ChunkMissing:
        return False
    return len(head) == 12 and int.from_bytes(head[8:12], "little") == 1
