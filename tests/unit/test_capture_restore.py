"""Capture and restore round trips on an in-memory chunk dict (no chunk store needed)."""

from __future__ import annotations

import hashlib
import io
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ckpt.domain import InvalidValue, StoreCorrupt
from ckpt.storage import capture_stream as capture_stream_module
from ckpt.storage import manifest
from ckpt.storage.capture import capture, data_segments, parse_extents
from ckpt.storage.capture_stream import capture_stream
from ckpt.storage.manifest import KIND_DISK, ZERO_ID, BlockMap
from ckpt.storage.restore import write_image
from ckpt.storage.sources import Source

BS = 512


class Chunks:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def sink(self, cid: bytes, data: bytes) -> int:
        assert hashlib.sha256(data).digest() == cid
        if cid in self.data:
            return 0
        self.data[cid] = data
        return len(data)

    def add(self, data: bytes) -> bytes:
        cid = hashlib.sha256(data).digest()
        self.data[cid] = data
        return cid

    def fetch(self, ids: Sequence[bytes]) -> list[bytes]:
        return [self.data[i] for i in ids]


writes = st.lists(
    st.tuples(st.integers(0, 40 * BS), st.binary(min_size=1, max_size=3 * BS) | st.just(bytes(BS))),
    max_size=6,
)


@given(
    size=st.integers(0, 40 * BS),
    steps=st.lists(writes, min_size=1, max_size=4),
    use_extents=st.booleans(),
)
def test_chain_of_captures_restores_every_step(
    size: int, steps: list[list[tuple[int, bytes]]], use_extents: bool
) -> None:
    chunks = Chunks()
    image = bytearray(size)
    chain: list[BlockMap] = []
    expected: list[bytes] = []
    for step in steps:
        extents = []
        for offset, data in step:
            data = data[: max(0, size - offset)]
            image[offset : offset + len(data)] = data
            extents.append((offset, len(data)))
        parent, _, _ = manifest.overlay(chain)
        result = capture(
            io.BytesIO(bytes(image)), size, BS, parent, chunks.sink,
            extents if use_extents and chain else None,
        )  # fmt: skip
        ref = manifest.store(BlockMap(KIND_DISK, BS, size, result.entries), chunks.add)
        chain.append(manifest.load(ref, chunks.data.__getitem__))
        expected.append(bytes(image))
    for k, want in enumerate(expected):
        entries, bs, sz = manifest.overlay(chain[: k + 1])
        out = io.BytesIO()
        write_image(entries, sz, bs, chunks.fetch, out)
        assert out.getvalue() == want


def test_unchanged_blocks_are_not_recorded_and_zero_blocks_never_stored() -> None:
    chunks = Chunks()
    image = bytes(BS) * 4 + b"a" * BS + bytes(BS) * 3
    first = capture(io.BytesIO(image), len(image), BS, {}, chunks.sink)
    assert set(first.entries) == {4} and len(chunks.data) == 1
    again = capture(io.BytesIO(image), len(image), BS, first.entries, chunks.sink)
    assert again.entries == {} and again.added_bytes == 0
    wiped = capture(io.BytesIO(bytes(len(image))), len(image), BS, first.entries, chunks.sink)
    assert wiped.entries == {4: ZERO_ID}


def test_sparse_file_reads_only_its_data(tmp_path: Path) -> None:
    path = tmp_path / "sparse.img"
    size = 1 << 30
    with path.open("wb") as f:
        f.truncate(size)
        f.seek(512 << 20)
        f.write(b"x" * 4096)
    with path.open("rb") as f:
        segments = data_segments(f, size)
        result = capture(f, size, 4096, {}, Chunks().sink)
    assert sum(e - s for s, e in segments) < 1 << 20
    assert result.read_bytes < 1 << 20
    assert list(result.entries) == [(512 << 20) // 4096]
    out = tmp_path / "restored.img"
    chunks = Chunks()
    with path.open("rb") as f:
        result = capture(f, size, 4096, {}, chunks.sink)
    with out.open("wb") as o:
        write_image(result.entries, size, 4096, chunks.fetch, o)
    assert out.stat().st_size == size
    assert out.stat().st_blocks * 512 < 1 << 20  # restored sparse, not 1 GiB of zeros
    with out.open("rb") as o:
        o.seek(512 << 20)
        assert o.read(4097) == b"x" * 4096 + b"\0"


def test_restore_to_a_pipe_writes_the_zeros_and_cuts_the_last_block() -> None:
    chunks = Chunks()
    image = b"\0" * 700 + b"z" * 300
    result = capture(io.BytesIO(image), len(image), BS, {}, chunks.sink)

    class Pipe(io.BytesIO):
        def seekable(self) -> bool:
            return False

    out = Pipe()
    write_image(result.entries, len(image), BS, chunks.fetch, out)
    assert out.getvalue() == image


def test_manifest_refuses_malformed_bytes() -> None:
    good = manifest.encode(BlockMap(KIND_DISK, 4096, 8192, {1: b"\1" * 32, 0: b"\2" * 32}))
    assert manifest.decode(good).entries[0] == b"\2" * 32
    with pytest.raises(StoreCorrupt, match="shorter than a manifest header"):
        manifest.decode(good[:10])
    with pytest.raises(StoreCorrupt, match="need"):
        manifest.decode(good[:-1])
    with pytest.raises(StoreCorrupt, match="not a version-1 manifest"):
        manifest.decode(b"XXXX" + good[4:])
    with pytest.raises(InvalidValue, match="beyond"):  # encode never writes such a map
        manifest.encode(BlockMap(KIND_DISK, 4096, 4096, {5: b"\1" * 32}))
    size_4096 = (4096).to_bytes(8, "little")
    bad_index = good[:12] + size_4096 + good[20:36] + (5).to_bytes(8, "little") + good[44:]
    with pytest.raises(StoreCorrupt, match="block 5 lies beyond the 1 blocks"):
        manifest.decode(bad_index)
    unordered = good[:28] + good[36:44] + good[28:36] + good[44:]
    with pytest.raises(StoreCorrupt, match="not ascending"):
        manifest.decode(unordered)


def test_large_manifest_is_split_into_pieces() -> None:
    chunks = Chunks()
    entries = {i: hashlib.sha256(str(i).encode()).digest() for i in range(30_000)}
    ref = manifest.store(BlockMap(KIND_DISK, 4096, 30_000 * 4096, entries), chunks.add)
    own, loaded = manifest.chunk_refs(ref, chunks.data.__getitem__)
    assert len(own) == 3  # root + two 1 MiB pieces for 30,000 x 40 bytes
    assert loaded.entries == entries


def test_changed_extents_parse_and_errors() -> None:
    assert parse_extents("0 4096\n0x2000, 0x1000 # rct\n\n", "f") == [(0, 4096), (8192, 4096)]
    with pytest.raises(InvalidValue, match="f line 1"):
        parse_extents("12", "f")


def test_a_pool_never_reads_a_shared_stream_from_two_threads() -> None:
    """A stream without a file descriptor is read in order even when a pool is given."""
    from concurrent.futures import ThreadPoolExecutor

    class Slow(io.RawIOBase):  # like a VHDX chain read in Python: other threads run mid-read
        def __init__(self, data: bytes) -> None:
            self.data, self.pos = data, 0

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return True

        def seek(self, offset: int, whence: int = 0) -> int:
            self.pos = offset if whence == 0 else len(self.data) + offset
            return self.pos

        def tell(self) -> int:
            return self.pos

        def readinto(self, buffer: Any) -> int:
            time.sleep(0.002)  # yields the GIL between the seek and the copy
            chunk = self.data[self.pos : self.pos + len(buffer)]
            buffer[: len(chunk)] = chunk
            self.pos += len(chunk)
            return len(chunk)

    image = random.Random(11).randbytes(24 << 20)
    want = capture(io.BytesIO(image), len(image), 4096, {}, Chunks().sink).entries
    with ThreadPoolExecutor(2) as pool:
        got = capture(Slow(image), len(image), 4096, {}, Chunks().sink, pool=pool)  # type: ignore[arg-type]
    assert got.entries == want


@given(
    before=st.binary(max_size=12 * BS),
    after=st.binary(max_size=12 * BS),
    piece=st.integers(1, 3 * BS),
)
def test_a_stream_read_in_order_records_what_a_file_read_at_offsets_does(
    before: bytes, after: bytes, piece: int
) -> None:
    """capture_stream (a pipe, read once, delivered in pieces of any size, through
    read buffers of 2 blocks) and capture (pread at offsets) give one block map."""

    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data, self.pos = data, 0

        def readable(self) -> bool:
            return True

        def readinto(self, buf: Any) -> int:
            n = min(len(buf), piece, len(self.data) - self.pos)
            buf[:n] = self.data[self.pos : self.pos + n]
            self.pos += n
            return n

    chunks = Chunks()
    parent = capture(io.BytesIO(before), len(before), BS, {}, chunks.sink).entries
    by_offset = capture(
        io.BytesIO(after), len(after), BS, parent, chunks.sink, parent_size=len(before)
    )
    source = Source(Trickle(after), "pipe", one_shot=True)  # type: ignore[arg-type]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(capture_stream_module, "READ", 2 * BS)
        in_order, size = capture_stream(source, BS, parent, chunks.sink)
    assert size == len(after)
    assert in_order.entries == by_offset.entries
    assert in_order.read_bytes == len(after)
