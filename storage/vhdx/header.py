"""The file identifier and the two VHDX headers.

Terms:
    file identifier  8-byte signature ``vhdxfile`` then the creator, free text
                     in UTF-16LE (512 bytes), at offset 0.
    header           4 KiB at 64 KiB (header 1) and 128 KiB (header 2): which
                     write session last touched the file and where the log
                     is. A header is *valid* when its signature is ``head`` and
                     its CRC-32C matches; of two valid headers the one with the
                     higher sequence number is *current* (a tie picks header 1).
    log              a journal of metadata updates a writer had not finished.
                     ``LogGuid`` zero means the log is empty. ckpt refuses a
                     file with a non-empty log rather than replaying it: a
                     replay writes to the file (we only read) and a wrong
                     replay silently corrupts a disk, while the fix on the
                     user's side is one mount in Windows.

Header layout (80 bytes used, the rest of the 4 KiB reserved and zero)::

    0  4s  signature "head"        4  u32  CRC-32C       8  u64  sequence number
    16 16s FileWriteGuid          32 16s  DataWriteGuid  48 16s  LogGuid
    64 u16 LogVersion = 0         66 u16  Version = 1    68 u32  LogLength
    72 u64 LogOffset
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from uuid import UUID

from .checksum import structure_crc, with_crc
from .layout import (
    ALIGNMENT,
    CREATOR_OFFSET,
    CREATOR_SIZE,
    FILE_IDENTIFIER_SIGNATURE,
    HEADER_OFFSETS,
    HEADER_SIGNATURE,
    HEADER_SIZE,
    HEADER_VERSION,
    LOG_VERSION,
    ZERO_GUID,
    describe_offset,
)
from .source import Source

_HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")


@dataclass(frozen=True)
class Header:
    """The fields of one header, checksum and signature excluded."""

    sequence_number: int
    file_write_guid: UUID
    data_write_guid: UUID
    log_guid: UUID
    log_version: int
    version: int
    log_length: int
    log_offset: int

    def encode(self) -> bytes:
        """The 4 KiB on-disk form, CRC-32C filled in."""
        raw = bytearray(HEADER_SIZE)
        _HEADER.pack_into(
            raw,
            0,
            HEADER_SIGNATURE,
            0,
            self.sequence_number,
            self.file_write_guid.bytes_le,
            self.data_write_guid.bytes_le,
            self.log_guid.bytes_le,
            self.log_version,
            self.version,
            self.log_length,
            self.log_offset,
        )
        return with_crc(raw)


def encode_file_identifier(creator: str) -> bytes:
    """Signature and creator; the creator is cut to 255 characters plus a NUL."""
    text = creator.encode("utf-16-le")[: CREATOR_SIZE - 2]
    return FILE_IDENTIFIER_SIGNATURE + text.ljust(CREATOR_SIZE, b"\0")


def read_file_identifier(src: Source) -> str:
    """Checks the signature and returns the creator text (undecodable parts replaced)."""
    raw = src.read(0, CREATOR_OFFSET + CREATOR_SIZE, "file identifier")
    if raw[:CREATOR_OFFSET] != FILE_IDENTIFIER_SIGNATURE:
        raise src.corrupt(
            "file identifier", f"signature is {raw[:CREATOR_OFFSET]!r}, not b'vhdxfile'"
        )
    creator = raw[CREATOR_OFFSET:]
    # Cut at the first UTF-16 NUL (an even offset), then decode leniently: the
    # creator is informational and must not make a file unreadable.
    for i in range(0, len(creator), 2):
        if creator[i : i + 2] == b"\0\0":
            creator = creator[:i]
            break
    return creator.decode("utf-16-le", errors="replace")


def _parse(raw: bytes) -> Header | str:
    """The header, or why this copy is not valid."""
    sig, stored, seq, fw, dw, lg, log_version, version, log_len, log_off = _HEADER.unpack_from(raw)
    if sig != HEADER_SIGNATURE:
        return f"signature is {sig!r}, not b'head'"
    computed = structure_crc(raw)
    if stored != computed:
        return f"checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
    return Header(
        seq, UUID(bytes_le=fw), UUID(bytes_le=dw), UUID(bytes_le=lg), log_version, version,
        log_len, log_off,
    )  # fmt: skip


def read_current_header(src: Source) -> Header:
    """The current header, after checking that ckpt can use it."""
    valid: list[Header] = []
    problems: list[str] = []
    for number, offset in enumerate(HEADER_OFFSETS, start=1):
        parsed = _parse(src.read(offset, HEADER_SIZE, f"header {number}"))
        if isinstance(parsed, Header):
            valid.append(parsed)
        else:
            problems.append(f"header {number} (at {describe_offset(offset)}): {parsed}")
    if not valid:
        raise src.corrupt("headers", "both copies are damaged: " + "; ".join(problems))
    current = max(valid, key=lambda h: h.sequence_number)  # max keeps the first of a tie
    if current.version != HEADER_VERSION:
        raise src.unsupported("header", f"format version {current.version}, ckpt reads 1")
    if current.log_guid != ZERO_GUID:
        raise src.unsupported(
            "log",
            f"the log is not empty (LogGuid {current.log_guid}): the file was not closed "
            "cleanly; ckpt does not replay VHDX logs, attach the disk once in Windows "
            "(or Hyper-V) so it replays the log, then retry",
        )
    if current.log_version != LOG_VERSION:
        raise src.unsupported("log", f"log version {current.log_version}, ckpt knows 0")
    if current.log_offset % ALIGNMENT or current.log_length % ALIGNMENT:
        raise src.corrupt(
            "header",
            f"log at {current.log_offset} (+{current.log_length}) is not 1 MiB aligned",
        )
    if current.log_length:
        if current.log_offset < ALIGNMENT:
            raise src.corrupt("header", "log overlaps the header section (first MiB)")
        src.check_span(current.log_offset, current.log_length, "log")
    return current
