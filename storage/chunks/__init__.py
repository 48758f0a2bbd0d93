"""ckpt.storage.chunks: the content-addressed chunk store.

Chunks (disk blocks, memory pages, manifests) are stored once per content,
named by the SHA-256 of their uncompressed bytes, compressed with zstd one
frame per chunk, gathered into ~16 MiB packs, and found through one small
index file per pack. docs/chunk-format.md specifies the formats byte by byte.

Modules, from the bottom up:
    ids         ChunkId, hashing, the all-zero convention
    backend     the ChunkBackend port; memory and local-directory adapters
    s3          the S3 adapter of the port; parsing s3:// URLs
    pack        the pack format (bytes only)
    index_file  the index file format (bytes only)
    layout      object names in the backend; reading a pack's own table
    codec       zstd per thread; checked decoding
    run_file    one sorted run of the index cache (mapped, searched with numpy)
    index_cache the cache directory: runs, pack table, manifest, lock, merges
    index_columns  an index file's entries as numpy columns
    index_types the index's answers (numpy-free: PackInfo, Location, ChunkStats)
    index_sync  taking index files into the cache (read, append, mark gone)
    index       the chunk index: the cache kept up to date with the index files
    id_set      IdSet: a set of chunk ids spilled to sorted files
    writer      writer sessions: add, flush
    verify      read-back checks
    gc_plan     gc's streamed plan (live counts per pack)
    gc          deleting unreferenced chunks, repacking
    repair      rebuilding index files from packs
    store       ChunkStore, the facade
"""

from typing import TYPE_CHECKING

from .backend import ChunkBackend, LocalChunkBackend, MemoryChunkBackend
from .codec import DEFAULT_LEVEL
from .gc import GcReport
from .ids import ChunkId, chunk_id, from_hex, is_zero, to_hex
from .index_types import ChunkStats
from .pack import DEFAULT_PACK_SIZE, PackEntry, PackWriter, read_pack_index
from .repair import RebuildReport
from .s3 import S3ChunkBackend, S3Location, parse_s3_url
from .store import ChunkStore
from .upgrade import UpgradeReport
from .verify import VerifyReport
from .writer import ChunkWriter

if TYPE_CHECKING:
    from .id_set import IdSet


def __getattr__(name: str) -> object:
    """``IdSet`` on first use: it imports numpy (~50 ms), which commands that
    never search the chunk index do not need."""
    if name == "IdSet":
        from .id_set import IdSet

        return IdSet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_PACK_SIZE",
    "ChunkBackend",
    "ChunkId",
    "ChunkStats",
    "ChunkStore",
    "ChunkWriter",
    "GcReport",
    "IdSet",
    "LocalChunkBackend",
    "MemoryChunkBackend",
    "PackEntry",
    "PackWriter",
    "RebuildReport",
    "S3ChunkBackend",
    "S3Location",
    "UpgradeReport",
    "VerifyReport",
    "chunk_id",
    "from_hex",
    "is_zero",
    "parse_s3_url",
    "read_pack_index",
    "to_hex",
]
