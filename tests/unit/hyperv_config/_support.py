"""Helpers for the VMCX tests: where the Windows fixtures are, dissect.hypervisor's
view of a file as flat paths, and re-sealing every CRC-32 of a (mutated) image.

The re-sealer computes CRC-32 with ``zlib`` and its own offsets, not with ckpt's
``vmcx_layout``, so that a wrong checksum rule in ckpt cannot hide.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(
    os.environ.get(
        "CKPT_HYPERV_FIXTURES", Path(__file__).resolve().parents[4] / "shared/fixtures/hyperv"
    )
)


def fixture_bytes(name: str) -> bytes:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"Windows fixture {path} is not there (set CKPT_HYPERV_FIXTURES)")
    return path.read_bytes()


def dissect_leaves(data: bytes) -> dict[str, object]:
    """Every leaf dissect.hypervisor's HyperVFile finds, by ``/``-joined path
    (a repeated sibling key keeps only its last value there)."""
    hyperv = pytest.importorskip("dissect.hypervisor.descriptor.hyperv")
    root: dict[str, Any] = hyperv.HyperVFile(io.BytesIO(data)).as_dict()
    return dict(_flatten(root, ""))


def _flatten(node: dict[str, Any], prefix: str) -> Iterator[tuple[str, object]]:
    for key, value in node.items():
        path = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict):
            yield from _flatten(value, path)
        else:
            yield path, value


def _seal(image: bytearray, start: int, length: int, field: int) -> None:
    if start < 0 or start + length > len(image):
        return
    image[start + field : start + field + 4] = bytes(4)
    crc = zlib.crc32(bytes(image[start : start + length]))
    image[start + field : start + field + 4] = crc.to_bytes(4, "little")


def reseal(image: bytearray) -> None:
    """Recomputes the CRC-32 of both file headers, the replay log headers they
    name, the first object table's
    entries, and every key table header and key entry those entries locate,
    wherever the (possibly mutated) fields still let us find them."""
    for header in (0, 0x1000):
        if header + 46 <= len(image):
            log = struct.unpack_from("<Q", image, header + 26)[0]
            _seal(image, log, 34, 4)  # the replay log header
        _seal(image, header, 46, 4)
    if len(image) < 0x2008:
        return
    count = min(struct.unpack_from("<I", image, 0x2004)[0], 227)
    for i in range(count):
        entry = 0x2008 + 18 * i
        if entry + 18 > len(image):
            return
        kind, _, offset, size, allocated = struct.unpack_from("<BIQIB", image, entry)
        if kind == 2 and allocated and 10 <= size <= 0x10000 and offset + size <= len(image):
            _seal_key_table(image, offset, size)
        _seal(image, entry, 18, 1)


def _seal_key_table(image: bytearray, base: int, size: int) -> None:
    _seal(image, base, 10, 6)
    at = 10
    while at + 21 <= size:
        kind, length, _, _, _, _, data_offset = struct.unpack_from("<HIHIIIB", image, base + at)
        if length < 21 or at + length > size:
            return
        value_at = base + at + 21 + data_offset
        low, flags = kind & 0xFF, kind >> 8
        if flags & 1 or low == 9:
            value = 12
        elif low in (6, 7) and value_at + 4 <= len(image):
            value = 4 + struct.unpack_from("<I", image, value_at)[0]
        elif low in (3, 4, 5):
            value = 8
        elif low == 8:
            value = 4
        else:
            value = -1
        covered = 21 + data_offset + value
        if low != 1 and value >= 0 and covered <= length:
            _seal(image, base + at, covered, 12)
        at += length
