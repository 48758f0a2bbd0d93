"""CRC-32C (Castagnoli) as VHDX uses it for headers and region tables.

The checksum covers the whole structure (4 KiB header, 64 KiB region table)
with its own 4-byte checksum field, at byte 4 in both, taken as zero.
"""

from __future__ import annotations

import crc32c as _crc32c

CHECKSUM_OFFSET = 4
_ZERO_FIELD = bytes(4)


def structure_crc(data: bytes) -> int:
    """CRC-32C of ``data`` with bytes 4..8 (the checksum field) read as zero."""
    crc = _crc32c.crc32c(data[:CHECKSUM_OFFSET])
    crc = _crc32c.crc32c(_ZERO_FIELD, crc)
    return _crc32c.crc32c(memoryview(data)[CHECKSUM_OFFSET + 4 :], crc)


def with_crc(data: bytearray) -> bytes:
    """Stores the structure's CRC-32C in its checksum field and returns the bytes."""
    data[CHECKSUM_OFFSET : CHECKSUM_OFFSET + 4] = structure_crc(bytes(data)).to_bytes(4, "little")
    return bytes(data)
