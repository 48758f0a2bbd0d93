"""Random access to a disk or memory image as of a point: ``Store.open_disk``/``open_memory``.

Every read is checked against ``restore`` of the same point (the reference),
on a disk with holes spanning three segments (4,096 blocks each), a backup
point, Now, a checkpoint deleted since (reached with ``at``) and a memory
image whose size is not a multiple of its block size.
"""

from __future__ import annotations

import io
import random
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt import (
    CheckpointType,
    ChunkCorrupt,
    DiskFormat,
    DiskReader,
    NotFound,
    Store,
    UnknownCheckpoint,
)
from ckpt.domain import FileRole
from ckpt.restore_ops import open_disk, resolve_point
from ckpt.storage.chunks.codec import Chunk
from ckpt.storage.disk_reader import SEGMENTS
from ckpt.storage.manifest_cache import chain_manifest_ids
from ckpt.storage.manifest_restore import load_state

B = 4096
SIZE = 40 << 20  # three segments of 4,096 blocks (16 MiB each), the last partial
MEMORY = 3 * 65536 + 12345  # not a multiple of any block size


@dataclass
class Fixture:
    store: Store
    root: Path
    expected: dict[tuple[str, str | int | None], bytes]  # (point, at) -> disk bytes
    memory: bytes


def _image(rng: random.Random, base: bytes | None = None) -> bytearray:
    """Data runs of 1-300 blocks among holes; ``base`` changed in places."""
    image = bytearray(SIZE) if base is None else bytearray(base)
    for _ in range(12):
        start = rng.randrange(SIZE // B) * B
        n = rng.randint(1, 300) * B
        image[start : start + n] = rng.randbytes(min(n, SIZE - start))
    for _ in range(4):  # holes punched into data
        start = rng.randrange(SIZE // B) * B
        image[start : start + 3 * B] = bytes(len(image[start : start + 3 * B]))
    image[B : 2 * B] = rng.randbytes(B)  # one lone block near the start
    return image


def _sparse(path: Path, data: bytes) -> Path:
    """Write only the non-zero blocks: capture skips the holes (SEEK_DATA)."""
    with path.open("wb") as f:
        f.truncate(len(data))
        for at in range(0, len(data), B):
            block = data[at : at + B]
            if any(block):
                f.seek(at)
                f.write(block)
    return path


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    root = tmp_path_factory.mktemp("reader")
    rng = random.Random(15)
    store = Store.init(root / "s", actor="t")
    store.register_vm("VM", [("D", DiskFormat.VHDX)], "9.0", CheckpointType.STANDARD)
    expected: dict[tuple[str, str | int | None], bytes] = {}
    a = _image(rng)
    store.create_checkpoint("VM", "a", disks={"D": _sparse(root / "d", a)})
    expected["a", None] = bytes(a)
    nightly = _image(rng, a)
    store.sync("VM", {"D": _sparse(root / "d", nightly)}, name="nightly")
    expected["nightly", None] = bytes(nightly)
    gone = _image(rng, nightly)
    store.create_checkpoint("VM", "gone", disks={"D": _sparse(root / "d", gone)})
    before = store.log()[-1].position
    store.delete_checkpoint("VM", "gone")
    expected["gone", before] = bytes(gone)
    store.start_vm("VM")
    memory = rng.randbytes(70000) + bytes(65536) + rng.randbytes(MEMORY - 135536)
    b = _image(rng, gone)
    store.create_checkpoint(
        "VM", "b", disks={"D": _sparse(root / "d", b)},
        files={FileRole.MEMORY: _sparse(root / "m", memory)},
    )  # fmt: skip
    expected["b", None] = bytes(b)
    now = _image(rng, b)
    store.sync("VM", {"D": _sparse(root / "d", now)})
    expected["Now", None] = bytes(now)
    for (point, at), data in expected.items():  # the reference is restore itself
        out = io.BytesIO()
        store.restore_disk("VM", "a" if point == "Now" else point, "D", out, at=at)
        if point != "Now":
            assert out.getvalue() == data
    yield Fixture(store, root, expected, memory)
    store.close()


POINTS = [("a", None), ("nightly", None), ("gone", "at"), ("b", None), ("Now", None)]


def _open(fx: Fixture, point: str, at: str | None) -> tuple[DiskReader, bytes]:
    key = next(k for k in fx.expected if k[0] == point)
    return fx.store.open_disk("VM", point, "D", at=key[1] if at else None), fx.expected[key]


reads = st.lists(
    st.tuples(
        st.one_of(st.integers(0, SIZE + B), st.integers(0, SIZE // B).map(lambda b: b * B)),
        st.one_of(st.integers(0, 3 * B), st.integers(0, 2 << 20), st.just(B)),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=30, deadline=None)
@given(which=st.sampled_from(POINTS), ops=reads)
def test_random_preads_equal_the_restored_bytes(
    fx: Fixture, which: tuple[str, str | None], ops: list[tuple[int, int]]
) -> None:
    reader, data = _open(fx, *which)
    with reader:
        assert (reader.size, reader.block_size) == (SIZE, B)
        for offset, length in ops:
            assert reader.pread(offset, length) == data[offset : offset + length]
        assert reader.tell() == 0  # pread leaves the position alone


@settings(max_examples=20, deadline=None)
@given(ops=reads)
def test_memory_of_odd_size_reads_its_tail(fx: Fixture, ops: list[tuple[int, int]]) -> None:
    with fx.store.open_memory("VM", "b") as reader:
        assert reader.size == MEMORY
        assert MEMORY % reader.block_size != 0
        for offset, length in [*ops, (MEMORY - 7, 100), (MEMORY - reader.block_size, 1 << 20)]:
            assert reader.pread(offset, length) == fx.memory[offset : offset + length]
        assert reader.read() == fx.memory


@settings(max_examples=30, deadline=None)
@given(which=st.sampled_from(POINTS), offset=st.integers(0, SIZE), length=st.integers(0, SIZE))
def test_extents_cover_the_range_and_agree_with_the_bytes(
    fx: Fixture, which: tuple[str, str | None], offset: int, length: int
) -> None:
    reader, data = _open(fx, *which)
    with reader:
        runs = reader.extents(offset, length)
        end = min(offset + length, SIZE)
        at = offset
        for i, (start, n, zero) in enumerate(runs):
            assert start == at and n > 0
            if i:
                assert zero != runs[i - 1][2]  # adjacent runs of one kind are merged
            if zero:
                assert not any(data[start : start + n])
            else:  # every block of a data run was stored non-zero
                lo = start // B * B
                for block in range(lo, start + n, B):
                    assert any(data[block : block + B])
            at += n
        assert at == max(end, offset) if runs else offset >= end


@settings(max_examples=30, deadline=None)
@given(
    which=st.sampled_from(POINTS),
    offset=st.integers(0, SIZE),
    length=st.integers(0, SIZE),
    limit=st.integers(1, 5),
)
def test_a_limit_returns_the_first_runs_whole(
    fx: Fixture, which: tuple[str, str | None], offset: int, length: int, limit: int
) -> None:
    """What an NBD client asking for one extent at a time gets (``REQ_ONE``)."""
    reader, _ = _open(fx, *which)
    with reader:
        assert reader.extents(offset, length, limit) == reader.extents(offset, length)[:limit]


def test_extents_of_the_whole_disk_read_no_chunk(fx: Fixture) -> None:
    uow = fx.store.unit_of_work
    point = resolve_point(uow, "VM", "a")
    state = load_state(chain_manifest_ids(point.vm, point.layers["D"]), uow.chunks)
    assert state is not None
    fetched: list[int] = []

    def fetch(ids: Sequence[bytes]) -> Sequence[Chunk]:
        fetched.append(len(ids))
        return uow.chunks.get_views(ids)

    with DiskReader(state, fetch) as reader:
        runs = reader.extents(0, SIZE)
        assert fetched == []
        holes = sum(n for _, n, zero in runs if zero)
        assert holes == sum(
            B for at in range(0, SIZE, B) if not any(fx.expected["a", None][at : at + B])
        )


def _counting(fx: Fixture, cache_bytes: int) -> tuple[DiskReader, list[int]]:
    uow = fx.store.unit_of_work
    base = open_disk(uow, "VM", "a", "D", cache_bytes=cache_bytes)
    calls: list[int] = []
    fetch = base._fetch  # the store's get_views, counted

    def counted(ids: Sequence[bytes]) -> Sequence[Chunk]:
        calls.append(len(ids))
        return fetch(ids)

    base._fetch = counted
    return base, calls


def test_sequential_reads_fetch_ahead_in_few_batches(fx: Fixture) -> None:
    reader, calls = _counting(fx, 64 << 20)
    data = fx.expected["a", None]
    with reader:
        for at in range(0, 8 << 20, B):
            assert reader.pread(at, B) == data[at : at + B]
    blocks = sum(1 for at in range(0, 8 << 20, B) if any(data[at : at + B]))
    ahead = sum(1 for at in range(8 << 20, 12 << 20, B) if any(data[at : at + B]))
    assert blocks <= sum(calls) <= blocks + ahead  # each stored block fetched once (and
    # at most 4 MiB read ahead past the end)
    assert len(calls) < blocks / 8  # ... in batches, not block by block


def test_the_cache_stays_within_its_bound(fx: Fixture) -> None:
    reader, _ = _counting(fx, 32 * B)
    data = fx.expected["a", None]
    rng = random.Random(3)
    with reader:
        for _ in range(200):
            at = rng.randrange(SIZE)
            assert reader.pread(at, 3 * B) == data[at : at + 3 * B]
            assert reader.cached_chunks <= 32
            assert reader.cached_segments <= SEGMENTS
        assert reader.pread(0, 1 << 20) == data[: 1 << 20]  # a read larger than the cache
        assert reader.cached_chunks <= 32
    assert reader.cached_chunks == 0  # closing releases the caches


def test_eight_threads_reading_at_once_get_the_right_bytes(fx: Fixture) -> None:
    reader, data = _open(fx, "b", None)
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        at = rng.randrange(SIZE)
        for _ in range(60):
            if rng.random() < 0.3:
                at = rng.randrange(SIZE)
            n = rng.choice([B, 512, 65536, 300000])
            if reader.pread(at, n) != data[at : at + n]:
                errors.append(f"thread {seed}: {n} bytes at {at}")
            at += n  # mostly sequential: eight streams at once

    with reader:
        threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_reads_past_the_end_and_bad_arguments(fx: Fixture) -> None:
    reader, data = _open(fx, "a", None)
    with reader:
        assert reader.pread(SIZE, 10) == b""
        assert reader.pread(SIZE + 5, 10) == b""
        assert reader.pread(SIZE - 3, 10) == data[-3:]
        assert reader.extents(SIZE, 10) == []
        with pytest.raises(ValueError):
            reader.pread(-1, 10)
        with pytest.raises(ValueError):
            reader.extents(-1, 10)
        reader.seek(SIZE + 100)
        assert reader.read(10) == b""
        assert reader.seek(-5, io.SEEK_END) == SIZE - 5
        assert reader.read() == data[-5:]
        with pytest.raises(ValueError):
            reader.seek(-1)
    with pytest.raises(ValueError):
        reader.pread(0, 1)  # closed


def test_buffered_reader_and_copyfileobj(fx: Fixture, tmp_path: Path) -> None:
    reader, data = _open(fx, "nightly", None)
    with io.BufferedReader(reader, buffer_size=1 << 20) as buffered:
        buffered.seek(B - 10)
        assert buffered.read(20) == data[B - 10 : B + 10]
        buffered.seek(0)
        out = tmp_path / "copy.raw"
        with out.open("wb") as f:
            shutil.copyfileobj(buffered, f, 1 << 20)
    assert out.read_bytes() == data


def test_unknown_points_and_disks_are_refused(fx: Fixture) -> None:
    with pytest.raises(UnknownCheckpoint):
        fx.store.open_disk("VM", "gone", "D")  # deleted: only ``at`` reaches it
    with pytest.raises(NotFound, match="no disk 'E'"):
        fx.store.open_disk("VM", "a", "E")
    with pytest.raises(NotFound):
        fx.store.open_memory("VM", "nope")


def test_a_damaged_chunk_fails_only_the_reads_that_cover_it(fx: Fixture) -> None:
    reader, _ = _counting(fx, 64 << 20)
    data = fx.expected["a", None]
    blocks = [at for at in range(0, SIZE, B) if any(data[at : at + B])]
    bad_at = blocks[40]  # inside the read-ahead window of a stream from the start
    bad = dict(reader._ids(bad_at // B, bad_at // B + 1))[bad_at // B]
    fetch = reader._fetch

    def damaged(ids: Sequence[bytes]) -> Sequence[Chunk]:
        if bad in ids:
            raise ChunkCorrupt(f"chunk {bad.hex()}: content does not hash to its id")
        return fetch(ids)

    reader._fetch = damaged
    with reader:
        for at in range(0, bad_at, B):  # sequential: read-ahead reaches the bad block
            assert reader.pread(at, B) == data[at : at + B]
        with pytest.raises(ChunkCorrupt):
            reader.pread(bad_at, B)
        assert reader.pread(bad_at + B, B) == data[bad_at + B : bad_at + 2 * B]
