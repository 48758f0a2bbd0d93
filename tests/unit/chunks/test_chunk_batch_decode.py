"""Batches of frames decoded together (``ChunkCodec.decode_span``, ``ChunkStore.get_views``):
every chunk still checked against its id, and a bad one named exactly."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import zstandard

from ckpt.domain.errors import ChunkCorrupt
from ckpt.storage.chunks import (
    ChunkBackend,
    ChunkId,
    ChunkStore,
    LocalChunkBackend,
    read_pack_index,
)
from ckpt.storage.chunks.codec import ChunkCodec
from ckpt.storage.keyring import Keyring
from ckpt.storage.manifest import KIND_DISK, ZERO_ID, BlockMap
from ckpt.storage.manifest_restore import restore_maps


def _blocks(n: int, size: int = 4096) -> list[bytes]:
    return [os.urandom(size // 4) + bytes(size - size // 4) for _ in range(n)]


def _span(
    codec: ChunkCodec, blocks: list[bytes]
) -> tuple[bytes, list[tuple[int, int]], list[bytes]]:
    """The frames of ``blocks`` back to back, their (offset, length) and ids."""
    ids = [codec.identify(b) for b in blocks]
    frames = [codec.compress(b, cid) for b, cid in zip(blocks, ids, strict=True)]
    at, where = 0, []
    for f in frames:
        where.append((at, len(f)))
        at += len(f)
    return b"".join(frames), where, ids


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "encrypted"])
def test_a_span_of_frames_decodes_to_the_chunks_in_order(keyed: bool) -> None:
    codec = ChunkCodec(keyring=Keyring(os.urandom(32)) if keyed else None)
    blocks = _blocks(40)
    span, frames, ids = _span(codec, blocks)
    got = codec.decode_span(span, frames, ids, [4096] * 40, "packs/p")
    assert [bytes(c) for c in got] == blocks


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "encrypted"])
def test_a_flipped_byte_in_one_frame_of_a_batch_names_that_chunk(keyed: bool) -> None:
    codec = ChunkCodec(keyring=Keyring(os.urandom(32)) if keyed else None)
    span, frames, ids = _span(codec, _blocks(40))
    damaged = bytearray(span)
    at, n = frames[17]
    damaged[at + n // 2] ^= 0x01
    with pytest.raises(ChunkCorrupt, match=re.escape(f"chunk {ids[17].hex()} in packs/p: ")):
        codec.decode_span(bytes(damaged), frames, ids, [4096] * 40, "packs/p")


def test_a_frame_that_decodes_to_other_bytes_of_the_right_size_is_named() -> None:
    """zstd is happy (a valid frame of the right size), the SHA-256 is not."""
    codec = ChunkCodec()
    blocks = _blocks(8)
    span, frames, ids = _span(codec, blocks)
    ids[3] = ChunkId(bytes(32))
    with pytest.raises(ChunkCorrupt) as info:
        codec.decode_span(span, frames, ids, [4096] * 8, "packs/p")
    assert str(info.value).startswith(f"chunk {bytes(32).hex()} in packs/p: ")
    assert "does not hash to its id" in str(info.value)


@pytest.mark.parametrize("recorded", [4095, 4097, 8192])
def test_a_frame_that_decompresses_to_another_size_than_recorded_is_named(recorded: int) -> None:
    codec = ChunkCodec()
    span, frames, ids = _span(codec, _blocks(8))
    lengths = [4096] * 8
    lengths[5] = recorded
    with pytest.raises(ChunkCorrupt) as info:
        codec.decode_span(span, frames, ids, lengths, "packs/p")
    assert str(info.value) == (
        f"chunk {ids[5].hex()} in packs/p: frame declares 4096 bytes, the index records {recorded}"
    )


def test_a_frame_whose_data_runs_past_its_declared_size_is_named() -> None:
    """A frame that declares 4 KiB but holds 8 KiB is refused, not decompressed
    into a larger buffer."""
    codec = ChunkCodec()
    blocks = _blocks(6)
    span, frames, ids = _span(codec, blocks)
    liar = bytearray(zstandard.ZstdCompressor(write_content_size=False).compress(bytes(8192)))
    parts = [span[a : a + n] for a, n in frames]
    parts[2] = bytes(liar)
    at, where = 0, []
    for p in parts:
        where.append((at, len(p)))
        at += len(p)
    with pytest.raises(ChunkCorrupt, match=re.escape(f"chunk {ids[2].hex()} in packs/p: ")):
        codec.decode_span(b"".join(parts), where, ids, [4096] * 6, "packs/p")


def test_bytes_that_are_not_a_frame_in_a_batch_are_named() -> None:
    codec = ChunkCodec()
    span, frames, ids = _span(codec, _blocks(6))
    damaged = bytearray(span)
    at, _ = frames[4]
    damaged[at : at + 4] = b"junk"
    with pytest.raises(ChunkCorrupt) as info:
        codec.decode_span(bytes(damaged), frames, ids, [4096] * 6, "packs/p")
    assert str(info.value).startswith(f"chunk {ids[4].hex()} in packs/p: not a zstd frame")


def test_get_views_gives_the_bytes_of_get_many_with_repeats_and_gaps(
    backend: ChunkBackend,
) -> None:
    store = ChunkStore(backend)
    blocks = _blocks(300)
    with store.writer() as w:
        ids = [w.add(b) for b in blocks]
    assert all(c is not None for c in ids)
    cids = [ChunkId(c) for c in ids if c is not None]
    # Out of pack order, one chunk several times, others skipped (gaps in spans).
    wanted = [cids[7], *cids[100:200:3], cids[7], *reversed(cids[:50]), cids[7]]
    views = ChunkStore(backend).get_views(wanted)
    assert [bytes(v) for v in views] == [blocks[cids.index(c)] for c in wanted]
    assert store.get_many(wanted) == [bytes(v) for v in views]
    assert all(isinstance(b, bytes) for b in store.get_many(wanted))


def test_a_flipped_byte_in_a_batch_read_names_the_chunk_and_its_pack(
    backend: ChunkBackend,
) -> None:
    store = ChunkStore(backend)
    blocks = _blocks(64)
    with store.writer() as w:
        cids = [ChunkId(c) for b in blocks if (c := w.add(b)) is not None]
    victim = cids[33]
    (pack,) = backend.list("packs/")
    (entry,) = [e for e in read_pack_index(backend.get(pack)) if e.chunk_id == victim]
    data = bytearray(backend.get(pack))
    data[entry.offset + entry.compressed_length // 2] ^= 0x40
    backend.put(pack, bytes(data))
    with pytest.raises(ChunkCorrupt) as info:
        ChunkStore(backend).get_views(cids)
    assert str(info.value).startswith(f"chunk {victim.hex()} in {pack}: ")
    assert ChunkStore(backend).get_many(cids[:33] + cids[34:]) == blocks[:33] + blocks[34:]


def _disk(store: ChunkStore, blocks: list[bytes], size: int) -> BlockMap:
    """A block map of ``blocks`` (4 KiB each; ``bytes(4096)`` a zero block)."""
    entries: dict[int, bytes] = {}
    with store.writer() as w:
        for i, b in enumerate(blocks):
            cid = w.add(b)
            entries[i] = ZERO_ID if cid is None else cid
    return BlockMap(KIND_DISK, 4096, size, entries)


def test_a_restore_over_many_batches_on_decoding_threads_writes_every_byte_in_place(
    tmp_path: Path,
) -> None:
    store = ChunkStore(LocalChunkBackend(tmp_path / "chunks"))
    unique = _blocks(700)
    # Repeats (dedup inside the disk), zero runs (holes) and a partial last block.
    blocks = [unique[i % 700] if i % 97 else bytes(4096) for i in range(1500)]
    blocks[800:1100] = [unique[3]] * 300
    size = 1500 * 4096 - 1000
    out = tmp_path / "out.img"
    with out.open("wb") as f:
        assert restore_maps([_disk(store, blocks, size)], store, f) == size
    assert out.read_bytes() == b"".join(blocks)[:size]


def test_a_corrupt_chunk_late_in_a_restore_is_named_and_raised(tmp_path: Path) -> None:
    backend = LocalChunkBackend(tmp_path / "chunks")
    store = ChunkStore(backend)
    blocks = _blocks(1200)
    disk = _disk(store, blocks, 1200 * 4096)
    victim = disk.entries[1100]
    for pack in backend.list("packs/"):
        for e in read_pack_index(backend.get(pack)):
            if e.chunk_id == victim:
                data = bytearray(backend.get(pack))
                data[e.offset + e.compressed_length - 3] ^= 0x10
                backend.put(pack, bytes(data))
                break
    with (tmp_path / "out.img").open("wb") as f, pytest.raises(ChunkCorrupt) as info:
        restore_maps([disk], ChunkStore(backend), f)
    assert str(info.value).startswith(f"chunk {victim.hex()} in packs/")
