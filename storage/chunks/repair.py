"""Rebuilding the index files from the packs.

Terms:
    rebuilt  an index file rewritten from its pack's own table (header,
             trailer and table: three ranged gets, never the frames).
    damaged  a pack whose header, trailer or table fails its checks; it gets
             no new index file. An existing one is kept if it still decodes
             (its chunks may still read back: ``verify`` tells) and deleted
             if it is damaged too.
    stale    an index file whose pack no longer exists; it is deleted, as
             every chunk it lists is gone anyway.

Every index file is rewritten, intact or not: the pack is the source of truth
and a rewrite is an atomic ``put``, so a crash mid-rebuild leaves each file
either old or new. Run it while no writer session is open: a session's
staged packs would otherwise become visible before its flush.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from ckpt.domain.errors import ChunkMissing, IndexCorrupt, PackCorrupt

from .backend import ChunkBackend
from .index_file import IndexFile, decode_index_file, encode_index_file
from .layout import INDEX, PACKS, index_name, pack_id_of_index, pack_id_of_pack, read_pack_meta

if TYPE_CHECKING:
    from .index import ChunkIndex


class RebuildReport(NamedTuple):
    """Index files written, damaged packs with the reason, index files deleted."""

    rebuilt: list[str]
    damaged_packs: dict[str, str]
    removed: list[str]


def rebuild_index(backend: ChunkBackend, index: ChunkIndex) -> RebuildReport:
    """Rewrite the index file of every pack, delete stale ones, reload ``index``."""
    rebuilt: list[str] = []
    removed: list[str] = []
    damaged: dict[str, str] = {}
    present: set[bytes] = set()
    for name in backend.list(PACKS):
        pack_id = pack_id_of_pack(name)
        if pack_id is None:
            continue
        present.add(pack_id)
        try:
            meta = read_pack_meta(backend, name)
        except (PackCorrupt, ChunkMissing) as e:
            damaged[name] = str(e)
            # Keep its index file if that still reads (its chunks may too);
            # a damaged one would make every later load fail, so it goes.
            try:
                decode_index_file(backend.get(index_name(pack_id)), index_name(pack_id))
            except ChunkMissing:
                pass
            except IndexCorrupt:
                backend.delete(index_name(pack_id))
                removed.append(index_name(pack_id))
            continue
        f = IndexFile(pack_id, meta.created, meta.size, meta.entries)
        backend.put(index_name(pack_id), encode_index_file(f))
        rebuilt.append(index_name(pack_id))
    for name in backend.list(INDEX):
        pack_id = pack_id_of_index(name)
        if pack_id is not None and pack_id not in present:
            backend.delete(name)
            removed.append(name)
    index.reload()
    return RebuildReport(rebuilt, damaged, removed)
