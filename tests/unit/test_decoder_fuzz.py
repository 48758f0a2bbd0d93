"""Fuzz targets for every decoder of stored bytes: whatever the bytes, only our own
error class escapes, promptly, and nothing larger than the input's own limits is
allocated. (The VHDX decoders have theirs in tests/unit/vhdx/test_vhdx_fuzz.py.)"""

from __future__ import annotations

import contextlib
import hashlib
import os
from uuid import UUID

from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt.domain import VALUE_TYPES, CkptError, StoreCorrupt
from ckpt.storage import MsgPackTranscoder, ZstdCompressor, manifest
from ckpt.storage.chunks.index_file import IndexFile, decode_index_file, encode_index_file
from ckpt.storage.chunks.pack import PackWriter, read_pack_index
from ckpt.storage.manifest import KIND_DISK, BlockMap

FUZZ = settings(max_examples=300, deadline=None)
codec = MsgPackTranscoder(VALUE_TYPES)
_good_event = codec.encode(
    {"name": "x", "ids": (UUID(int=1), UUID(int=2)), "n": 3, "nested": {"a": [1, (2, 3)]}}
)
_good_manifest = manifest.encode(
    BlockMap(KIND_DISK, 4096, 1 << 20, {i: hashlib.sha256(bytes([i])).digest() for i in range(20)})
)


def _mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for position, value in flips:
        if out:
            out[position % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


mutations = st.tuples(
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6),
    st.none() | st.integers(0, 4096),
)


@FUZZ
@given(mutations)
def test_event_transcoder(m: tuple[list[tuple[int, int]], int | None]) -> None:
    with contextlib.suppress(StoreCorrupt):
        codec.decode(_mutate(_good_event, *m))


@FUZZ
@given(st.binary(max_size=512))
def test_event_compressor(data: bytes) -> None:
    with contextlib.suppress(StoreCorrupt):
        ZstdCompressor().decompress(data)


@FUZZ
@given(mutations)
def test_manifest_decoder(m: tuple[list[tuple[int, int]], int | None]) -> None:
    try:
        bm = manifest.decode(_mutate(_good_manifest, *m))
    except StoreCorrupt:
        return
    assert len(bm.entries) <= (len(_good_manifest) - 28) // 40


def _pack() -> bytes:
    import zstandard

    writer = PackWriter(1 << 20)
    for i in range(8):
        data = os.urandom(64) + bytes(i)
        frame = zstandard.ZstdCompressor().compress(data)
        writer.add(hashlib.sha256(data).digest(), frame, len(data))  # type: ignore[arg-type]
    return writer.finish(1.0)


_good_pack = _pack()


@FUZZ
@given(mutations)
def test_pack_table_decoder(m: tuple[list[tuple[int, int]], int | None]) -> None:
    with contextlib.suppress(CkptError):
        read_pack_index(_mutate(_good_pack, *m), "fuzz.pack")


_good_index = encode_index_file(
    IndexFile(bytes(16), 1.0, len(_good_pack), read_pack_index(_good_pack, "p"))
)


@FUZZ
@given(mutations)
def test_index_file_decoder(m: tuple[list[tuple[int, int]], int | None]) -> None:
    with contextlib.suppress(CkptError):
        decode_index_file(_mutate(_good_index, *m), "fuzz.idx")
