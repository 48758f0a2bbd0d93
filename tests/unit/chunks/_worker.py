"""Code run in child processes by test_chunk_concurrency.py (spawned, so it
must be importable, and cheap to import: no pytest, no hypothesis)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from ckpt.storage.chunks import ChunkStore, LocalChunkBackend


def blocks(seed: int, n: int) -> list[bytes]:
    """``n`` 4 KiB blocks, half random, half zero; the same for the same seed."""
    rng = random.Random(seed)
    return [rng.randbytes(2048) + bytes(2048) for _ in range(n)]


def write(root: str, seed: int, n: int, barrier: Any) -> None:
    """Write own blocks and blocks every worker shares, in several sessions."""
    store = ChunkStore(LocalChunkBackend(Path(root)), pack_size=32 * 1024)
    mine, shared = blocks(seed, n), blocks(0, n)
    barrier.wait(timeout=30)  # start together, so the writes interleave
    for start in range(0, n, 10):
        with store.writer() as w:
            for own, common in zip(
                mine[start : start + 10], shared[start : start + 10], strict=True
            ):
                w.add(own)
                w.add(common)
