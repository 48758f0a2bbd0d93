"""Fixtures for the chunk store tests: every backend, a clock we move by hand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from backends import s3_url

from ckpt.storage.chunks import (
    ChunkBackend,
    ChunkStore,
    LocalChunkBackend,
    MemoryChunkBackend,
    S3ChunkBackend,
)


class FakeClock:
    """A clock that only moves when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChunkBackend]:
    """The backend port's contract holds for every adapter: each test that uses
    this fixture runs once per adapter. "s3" runs on the test S3 server under
    a fresh key prefix (skipped without a server, see tests/backends.py)."""
    if request.param == "memory":
        yield MemoryChunkBackend()
    elif request.param == "local":
        yield LocalChunkBackend(tmp_path / "chunks")
    else:
        s3 = S3ChunkBackend(s3_url())
        yield s3
        # The server outlives the test: leave its bucket as we found it.
        for name in s3.list(""):
            s3.delete(name)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(backend: ChunkBackend, clock: FakeClock) -> ChunkStore:
    # 64 KiB packs, so a few dozen chunks span several packs.
    return ChunkStore(backend, pack_size=64 * 1024, clock=clock)
