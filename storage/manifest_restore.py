"""Restoring manifests from the chunk store: a disk or file's bytes, written to a stream.

Terms: *restoring* reads a chain's state (``disk_state.py``: its last v2
manifest, segment by segment, with v1 diffs laid over it) and writes the bytes
(``restore.write_image``),
fetching chunks in batches with ``ChunkStore.get_views`` on as many threads as
the backend serves well (``parallel_requests``), and at least on ``DECODERS``.

Why two decoding threads on a local store: a batch spends ~60% of its CPU in
zstd and SHA-256, which release the GIL (the multi-frame decompression is one
C call per read). Restoring a 1 GiB disk (256,000 chunks) took 1.49-1.52 s
with two fetching threads against 2.24-2.33 s with one when the second core
was free, and 2.44 against 2.27 s (7% slower) when another process kept it
busy. Before batches were decompressed in one call, two threads were 2.8x
slower (per-chunk Python fought over the GIL).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import BinaryIO

from . import disk_state, manifest
from .chunks.backend import parallel_requests
from .chunks.store import ChunkStore
from .disk_state import State
from .manifest import BlockMap
from .restore import write_image

Progress = Callable[[int], None]
DECODERS = 2  # threads fetching and checking chunks, if the process may use 2 cores


def _workers(chunks: ChunkStore) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(parallel_requests(chunks.backend), min(DECODERS, cores or 1))


def restore_maps(
    maps: list[BlockMap], chunks: ChunkStore, out: BinaryIO, progress: Progress | None = None
) -> int:
    """Fold decoded v1 maps whole and write them (tests and old stores)."""
    entries, block_size, size = manifest.overlay(maps)
    if not maps:
        return 0
    write_image(entries, size, block_size, chunks.get_views, out, progress, _workers(chunks))
    return size


def restore_state(
    state: State, chunks: ChunkStore, out: BinaryIO, progress: Progress | None = None
) -> int:
    """Write a state's bytes, segment by segment (memory: a few segments)."""
    write_image(
        state.present(), state.size, state.block_size, chunks.get_views, out, progress,
        _workers(chunks),
    )  # fmt: skip
    return state.size


def load_state(refs: Sequence[bytes], chunks: ChunkStore) -> State | None:
    """The state after ``refs`` (a chain's manifests, or one file's), None without any."""
    return disk_state.load(refs, chunks.get, chunks.get_many)


def restore_manifest(
    ref: bytes, chunks: ChunkStore, out: BinaryIO, progress: Progress | None = None
) -> int:
    """One file's manifest (v1 or v2), restored."""
    state = load_state([ref], chunks)
    assert state is not None
    return restore_state(state, chunks, out, progress)
