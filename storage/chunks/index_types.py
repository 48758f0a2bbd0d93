"""What the chunk index answers with, without numpy (the CLI's metadata commands
import the chunk store's types but never search the index: numpy's import costs
~50 ms and ~17 MiB of every command).

Terms:
    pack info   what the index knows of a pack without opening it: name, id,
                creation time, size, entry count.
    location    where one chunk's frame lies: pack name, frame offset and lengths,
                the chunk's slice of the decompressed frame (v1: all of it).
    slot        the index's six u32 for a chunk (docs/chunk-format.md §9): pack
                number, frame offset, frame compressed length, frame uncompressed
                length, slice offset, chunk length.
"""

from __future__ import annotations

from typing import NamedTuple

Slot = tuple[int, int, int, int, int, int]


class PackInfo(NamedTuple):
    name: str
    pack_id: bytes
    created: float
    size: int
    entry_count: int


class Location(NamedTuple):
    """Where a chunk is: its frame (offset, lengths) and its slice of the
    decompressed frame (a v1 frame: 0 and the frame's uncompressed length;
    -1 also means the whole frame)."""

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
