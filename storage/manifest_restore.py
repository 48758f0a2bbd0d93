"""Restoring manifests from the chunk store: a disk or file's bytes, written to a stream.

Terms: *restoring* folds a chain's manifests (``manifest.overlay``: later
blocks replace earlier ones) and writes the bytes (``restore.write_image``),
fetching chunks in batches with ``ChunkStore.get_views`` on as many threads as
the backend serves well (``parallel_requests``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from . import manifest
from .chunks.backend import parallel_requests
from .chunks.store import ChunkStore
from .manifest import BlockMap
from .restore import write_image

Progress = Callable[[int], None]


def restore_maps(
    maps: list[BlockMap], chunks: ChunkStore, out: BinaryIO, progress: Progress | None = None
) -> int:
    entries, block_size, size = manifest.overlay(maps)
    if not maps:
        return 0
    workers = parallel_requests(chunks.backend)
    write_image(entries, size, block_size, chunks.get_views, out, progress, workers)
    return size
