"""Chunk ids are SHA-256 of the content; zero detection."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt.storage.chunks import chunk_id, from_hex, is_zero, to_hex


@given(st.binary(max_size=4096))
def test_chunk_id_is_the_sha256_of_the_content(data: bytes) -> None:
    cid = chunk_id(data)
    assert cid == hashlib.sha256(data).digest()
    assert len(cid) == 32
    assert from_hex(to_hex(cid)) == cid


def test_known_id() -> None:
    # Pins the hash function: changing it would orphan every stored chunk.
    assert to_hex(chunk_id(b"abc")) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


@pytest.mark.parametrize("text", ["", "ab", "zz" * 32, "a" * 63])
def test_from_hex_refuses_malformed_ids(text: str) -> None:
    with pytest.raises(ValueError):
        from_hex(text)


@settings(max_examples=60)
@given(size=st.integers(1, 70_000), data=st.data())
def test_is_zero_is_false_with_any_one_nonzero_byte(size: int, data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, size - 1))
    value = data.draw(st.integers(1, 255))
    block = bytearray(size)
    assert is_zero(bytes(block))
    block[pos] = value
    assert not is_zero(bytes(block))


@pytest.mark.parametrize("size", [0, 1, 4096, (16 << 20) + 1, (17 << 20) + 5])
def test_is_zero_at_the_edges_of_its_cache(size: int) -> None:
    assert is_zero(bytes(size))
    if size:
        assert not is_zero(bytes(size - 1) + b"\x01")
        assert not is_zero(b"\x01" + bytes(size - 1))
