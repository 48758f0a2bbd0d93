"""The checksum of the VHD footer and dynamic header.

Both use the same rule: the one's complement of the 32-bit sum of every byte
of the structure, with the 4-byte checksum field itself counted as zero (at
byte 64 of the footer, byte 36 of the dynamic header).
"""

from __future__ import annotations

FOOTER_CHECKSUM_OFFSET = 64
HEADER_CHECKSUM_OFFSET = 36


def ones_complement_sum(data: bytes, field: int) -> int:
    """The checksum of ``data`` whose checksum field starts at ``field``."""
    total = sum(data) - sum(data[field : field + 4])
    return ~total & 0xFFFFFFFF


def with_checksum(data: bytearray, field: int) -> bytes:
    """Stores the checksum in its field and returns the bytes."""
    data[field : field + 4] = bytes(4)
    data[field : field + 4] = ones_complement_sum(bytes(data), field).to_bytes(4, "big")
    return bytes(data)
