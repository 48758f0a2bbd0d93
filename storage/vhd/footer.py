"""The hard disk footer: 512 bytes at the end of every VHD file (a copy at
offset 0 of a dynamic or differencing one).

Terms:
    end footer    the footer in the file's last 512 bytes, or its last 511
                  bytes in files from Virtual PC before 2004 (a 511-byte
                  footer lacks the last reserved byte, which is zero, so its
                  checksum is the same).
    footer copy   the footer mirrored at offset 0 of dynamic and differencing
                  files. The specification keeps it "for redundancy" because
                  the footer is crucial: the end one is rewritten every time
                  the file grows, so a torn write can damage it. ckpt uses the
                  copy when the end footer is damaged, and refuses a file
                  whose two valid footers disagree on what is read.

Field offsets (big-endian): cookie 0 (8), features 8, version 12, data
offset 16 (8), time stamp 24, creator application 28 (4 bytes), creator
version 32 (major 16 bits, minor 16 bits), creator host OS 36 (4 bytes),
original size 40 (8), current size 48 (8), geometry 56 (cylinders 16 bits,
heads 8, sectors per track 8), disk type 60, checksum 64, unique id 68 (16,
RFC 4122 byte order), saved state 84 (1), reserved 85..511 (zero).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO
from uuid import UUID

from ckpt.domain.errors import VhdxError
from ckpt.storage.vhdx.source import Source

from .checksum import FOOTER_CHECKSUM_OFFSET, ones_complement_sum, with_checksum
from .layout import (
    DISK_FIXED,
    DISK_TYPES,
    FEATURE_RESERVED,
    FOOTER_COOKIE,
    FOOTER_SIZE,
    FORMAT_VERSION,
    MAX_VIRTUAL_SIZE,
    NO_OFFSET,
    SECTOR,
    SHORT_FOOTER_SIZE,
    from_timestamp,
)

_LAYOUT = struct.Struct(">8sIIQI4sHH4sQQHBBII16sB")  # 85 bytes, then reserved zeros


@dataclass(frozen=True)
class Footer:
    """The fields of a footer ckpt reads or writes."""

    data_offset: int
    timestamp: int
    creator_app: bytes
    creator_major: int
    creator_minor: int
    creator_host: bytes
    original_size: int
    current_size: int
    geometry: tuple[int, int, int]
    disk_type: int
    unique_id: UUID
    features: int = FEATURE_RESERVED
    saved_state: int = 0

    @property
    def kind(self) -> str:
        return DISK_TYPES[self.disk_type]

    @property
    def time(self) -> datetime:
        return from_timestamp(self.timestamp)

    @property
    def creator(self) -> str:
        """Application, version and host as one line, e.g. ``win  6.3 Wi2k``."""
        return f"{_text(self.creator_app)} {self.creator_major}.{self.creator_minor} " + _text(
            self.creator_host
        )

    def encode(self) -> bytes:
        cylinders, heads, per_track = self.geometry
        raw = bytearray(FOOTER_SIZE)
        _LAYOUT.pack_into(
            raw, 0, FOOTER_COOKIE, self.features, FORMAT_VERSION, self.data_offset,
            self.timestamp, self.creator_app, self.creator_major, self.creator_minor,
            self.creator_host, self.original_size, self.current_size, cylinders, heads,
            per_track, self.disk_type, 0, self.unique_id.bytes, self.saved_state,
        )  # fmt: skip
        return with_checksum(raw, FOOTER_CHECKSUM_OFFSET)


def _text(raw: bytes) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in raw.decode("latin-1"))


def decode_footer(src: Source, raw: bytes, what: str) -> Footer:
    """Checks and decodes ``raw`` (511 or 512 bytes); ``VhdxCorrupt`` or
    ``VhdxUnsupported`` naming ``what`` (e.g. "footer at the end")."""
    raw = raw.ljust(FOOTER_SIZE, b"\0")
    (
        cookie, features, version, data_offset, timestamp, app, major, minor, host,
        original_size, current_size, cylinders, heads, per_track, disk_type, checksum,
        unique_id, saved_state,
    ) = _LAYOUT.unpack_from(raw)  # fmt: skip
    if cookie != FOOTER_COOKIE:
        raise src.corrupt(what, f"cookie {cookie!r}, expected {FOOTER_COOKIE!r}")
    expected = ones_complement_sum(raw, FOOTER_CHECKSUM_OFFSET)
    if checksum != expected:
        raise src.corrupt(what, f"checksum {checksum:#010x}, the bytes sum to {expected:#010x}")
    if version >> 16 != FORMAT_VERSION >> 16:
        raise src.unsupported(what, f"file format version {version:#010x}, ckpt reads 1.x")
    if disk_type not in DISK_TYPES:
        raise src.unsupported(
            what, f"disk type {disk_type} (ckpt reads 2 fixed, 3 dynamic, 4 differencing)"
        )
    if current_size % SECTOR:
        raise src.corrupt(what, f"current size {current_size} is not a multiple of {SECTOR}")
    if current_size > MAX_VIRTUAL_SIZE:
        raise src.unsupported(what, f"current size {current_size} exceeds VHD's 2040 GiB")
    if disk_type != DISK_FIXED and data_offset == NO_OFFSET:
        raise src.corrupt(what, f"a {DISK_TYPES[disk_type]} disk without a data offset")
    return Footer(
        data_offset, timestamp, app, major, minor, host, original_size, current_size,
        (cylinders, heads, per_track), disk_type, UUID(bytes=unique_id), features, saved_state,
    )  # fmt: skip


@dataclass(frozen=True)
class FoundFooter:
    footer: Footer
    length: int  # bytes the footer takes at the end of the file (512 or 511)
    from_copy: bool  # the end footer was damaged; this is the copy at offset 0


def _end_footer(src: Source) -> tuple[bytes, int] | None:
    """The raw end footer and its length, found by its cookie; None without one."""
    for length in (FOOTER_SIZE, SHORT_FOOTER_SIZE):
        if src.size >= length:
            raw = src.read(src.size - length, length, "footer at the end")
            if raw.startswith(FOOTER_COOKIE):
                return raw, length
    return None


def read_footer(src: Source) -> FoundFooter:
    """The footer that describes the file (see the module docstring)."""
    if src.size < SHORT_FOOTER_SIZE:
        raise src.corrupt("footer", f"the file has {src.size} bytes, less than a footer")
    end = _end_footer(src)
    copy_raw = src.read(0, FOOTER_SIZE, "footer copy at 0") if src.size >= FOOTER_SIZE else b""
    if end is not None:
        raw, length = end
        try:
            footer = decode_footer(src, raw, "footer at the end")
        except VhdxError:
            if not _copy_usable(src, copy_raw, length):
                raise
        else:
            if footer.disk_type != DISK_FIXED:
                _check_copy(src, footer, copy_raw)
            return FoundFooter(footer, length, False)
        # The end footer is damaged and the copy at 0 is sound: the copy's
        # purpose (module docstring). A fixed disk has no copy, so a damaged
        # end footer there is always an error.
        return FoundFooter(decode_footer(src, copy_raw, "footer copy at 0"), length, True)
    if _copy_usable(src, copy_raw, FOOTER_SIZE):
        return FoundFooter(decode_footer(src, copy_raw, "footer copy at 0"), FOOTER_SIZE, True)
    raise src.corrupt(
        "footer at the end", f"no {FOOTER_COOKIE.decode()} cookie in the last 512 or 511 bytes"
    )


def _copy_usable(src: Source, raw: bytes, end_length: int) -> bool:
    """Whether the copy at 0 can stand in for a damaged end footer: sound, of
    a dynamic or differencing disk, and leaving room for the footer at the end."""
    if not raw.startswith(FOOTER_COOKIE):
        return False
    try:
        copy = decode_footer(src, raw, "footer copy at 0")
    except VhdxError:
        return False
    return copy.disk_type != DISK_FIXED and src.size >= FOOTER_SIZE + end_length


def _check_copy(src: Source, footer: Footer, raw: bytes) -> None:
    """A sound copy at 0 must agree with the end footer on what decides the
    bytes read (qemu reads the copy, ckpt the end footer); a damaged one is
    ignored, being only a backup."""
    try:
        copy = decode_footer(src, raw, "footer copy at 0")
    except VhdxError:
        return
    for name in ("data_offset", "current_size", "disk_type", "unique_id"):
        if getattr(copy, name) != getattr(footer, name):
            raise src.corrupt(
                "footer copy at 0",
                f"its {name.replace('_', ' ')} {getattr(copy, name)} differs from the footer "
                f"at the end ({getattr(footer, name)})",
            )


def has_footer_cookie(stream: BinaryIO, size: int) -> bool:
    """Whether ``stream`` (``size`` bytes) has a VHD footer cookie at its end
    (512 or 511 bytes from it) or at offset 0 (a dynamic disk's copy)."""
    for offset in (size - FOOTER_SIZE, size - SHORT_FOOTER_SIZE, 0):
        if offset < 0 or offset + len(FOOTER_COOKIE) > size:
            continue
        stream.seek(offset)
        if stream.read(len(FOOTER_COOKIE)) == FOOTER_COOKIE:
            return True
    return False
