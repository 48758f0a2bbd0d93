"""The chunk index: every index file of a backend, loaded into memory.

Terms:
    index       chunk id -> ``Location`` (pack name, offset, compressed length,
                uncompressed length), for every chunk of every index file.
    pack info   what the index knows of a pack without opening it: name, id,
                creation time, size, entry count.
    winner      when two packs hold the same chunk (two writers stored it at
                the same time), the index keeps the location read first, in
                sorted index-file order; the other copy is garbage for GC.

Loading lists ``index/`` and reads every file (cached; ``refresh`` reads only
files it has not seen). If a file it had loaded is gone (GC or repack in
another process deleted it), ``refresh`` reloads everything, because entries
cannot be removed from the insert-only ``ChunkMap`` and a chunk may have moved.
Memory: 57 bytes per chunk measured (200,000 chunks in 1 MiB packs, pack
infos included; see chunk_map.py). Loading costs ~1.6 us per entry.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from ckpt.domain.errors import ChunkMissing, IndexCorrupt

from .backend import ChunkBackend, parallel_requests
from .chunk_map import ChunkMap, Slot
from .ids import ChunkId
from .index_file import IndexFile, decode_index_file
from .layout import INDEX, index_name, pack_id_of_index, pack_name
from .pack import PackEntry


class PackInfo(NamedTuple):
    name: str
    pack_id: bytes
    created: float
    size: int
    entry_count: int


class Location(NamedTuple):
    """Where a chunk is: its frame (offset, lengths) and its slice of the
    decompressed frame (a v1 frame: 0 and the frame's uncompressed length)."""

    pack: str
    offset: int
    compressed_length: int
    uncompressed_length: int
    slice_offset: int = 0
    chunk_length: int = -1


class ChunkStats(NamedTuple):
    """Counts for ``ChunkStore.stats``: stored bytes are compressed frame bytes,
    pack bytes add headers, tables, trailers and not-yet-collected garbage."""

    chunks: int
    stored_bytes: int
    uncompressed_bytes: int
    packs: int
    pack_bytes: int


class _State:
    """One consistent generation of the index. Readers take ``self._state``
    once per call, so a concurrent reload (which builds a new ``_State`` and
    swaps it in) never shows them an empty or half-built index."""

    def __init__(self) -> None:
        self.map = ChunkMap()
        self.packs: list[PackInfo] = []  # appended before their chunks are added
        self.files: dict[str, int] = {}  # index file name -> pack number

    def insert(self, f: IndexFile) -> None:
        number = len(self.packs)
        self.packs.append(
            PackInfo(pack_name(f.pack_id), f.pack_id, f.created, f.pack_size, len(f.entries))
        )
        self.files[index_name(f.pack_id)] = number
        self.map.add_many(number, f.entries)


class ChunkIndex:
    """The in-memory index of one backend. Thread-safe; loads lazily."""

    def __init__(self, backend: ChunkBackend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._loaded = False
        self._state = _State()

    def _ensure_loaded(self) -> _State:
        if not self._loaded:
            self.refresh()
        return self._state

    def reload(self) -> None:
        """Forget everything and read every index file again."""
        self._refresh(_State())

    def refresh(self) -> None:
        """Read index files written since the last load (by any process).

        ``IndexCorrupt`` names the first damaged file (and the index stays as
        it was); ``ChunkStore.rebuild_index`` repairs it."""
        self._refresh(None)

    def _refresh(self, fresh: _State | None) -> None:
        with self._lock:
            names = [n for n in self._backend.list(INDEX) if pack_id_of_index(n) is not None]
            state = self._state if fresh is None else fresh
            if state is self._state and self._loaded and not state.files.keys() <= set(names):
                state = _State()
            todo = [name for name in names if name not in state.files]
            workers = parallel_requests(self._backend)
            if workers > 1 and len(todo) > 1:
                # S3: one GET per index file, ~2-4 ms each; a reload of 300 of them
                # (after a gc repacked one) held a capture up 1-3 s when done in turn.
                with ThreadPoolExecutor(workers, thread_name_prefix="ckpt-index-get") as pool:
                    files = list(pool.map(self._read_file, todo))
            else:
                files = [self._read_file(name) for name in todo]
            for f in files:
                if f is not None:
                    state.insert(f)
            self._state = state
            self._loaded = True

    def _read_file(self, name: str) -> IndexFile | None:
        try:
            data = self._backend.get(name)
        except ChunkMissing:
            return None  # deleted between list and get: its pack is going too
        f = decode_index_file(data, name)
        if f.pack_id != pack_id_of_index(name):
            raise IndexCorrupt(
                f"index file {name!r} is damaged: it describes pack {f.pack_id.hex()}; "
                "run rebuild_index"
            )
        return f

    def add(self, f: IndexFile) -> None:
        """Record an index file this process has just written (durably)."""
        self._ensure_loaded()
        with self._lock:
            if index_name(f.pack_id) not in self._state.files:
                self._state.insert(f)

    def location(self, cid: bytes) -> Location | None:
        state = self._ensure_loaded()
        slot = state.map.get(cid)
        if slot is None:
            return None
        number, offset, clen, ulen, slice_offset, length = slot
        return Location(state.packs[number].name, offset, clen, ulen, slice_offset, length)

    def locate_many(self, cids: Sequence[bytes]) -> tuple[Sequence[PackInfo], list[Slot | None]]:
        """Where each of ``cids`` is, as (packs, one ``Slot`` or None per id):
        ``location`` of each without a ``Location`` per id. A slot's first
        field indexes the packs (a read-only view of one index generation)."""
        state = self._ensure_loaded()
        return state.packs, state.map.get_many(cids)

    def __contains__(self, cid: object) -> bool:
        return cid in self._ensure_loaded().map

    def __len__(self) -> int:
        return len(self._ensure_loaded().map)

    def ids(self) -> Iterator[ChunkId]:
        for cid, *_ in self._ensure_loaded().map.items():
            yield cid

    def packs(self) -> list[PackInfo]:
        """Every indexed pack, in load order."""
        return list(self._ensure_loaded().packs)

    def items(self) -> Iterator[tuple[PackInfo, PackEntry]]:
        """Every chunk with the pack that holds it (the winner copy)."""
        state = self._ensure_loaded()
        for cid, number, offset, clen, ulen, slice_offset, length in state.map.items():
            yield state.packs[number], PackEntry(cid, offset, clen, ulen, slice_offset, length)

    def stats(self) -> ChunkStats:
        state = self._ensure_loaded()
        m = state.map
        pack_bytes = sum(p.size for p in state.packs)
        return ChunkStats(
            len(m), m.stored_bytes, m.uncompressed_bytes, len(state.packs), pack_bytes
        )
