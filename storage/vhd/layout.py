"""Constants of the VHD format and its time stamps.

Terms:
    sector      512 bytes: VHD knows no other sector size.
    time stamp  an unsigned 32-bit count of seconds since 2000-01-01 00:00 UTC
                (the footer's and the parent's time stamps).

Every integer in a VHD file is big-endian (the Virtual Hard Disk Image Format
Specification, "network byte order"); docs/vhd.md lists the fields.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

SECTOR = 512
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

FOOTER_SIZE = 512
# Virtual PC before 2004 wrote 511-byte footers (the last reserved byte missing).
SHORT_FOOTER_SIZE = 511
DYNAMIC_HEADER_SIZE = 1024

FOOTER_COOKIE = b"conectix"
DYNAMIC_COOKIE = b"cxsparse"
FORMAT_VERSION = 0x00010000  # footer "file format version" and header "header version"
FEATURE_RESERVED = 0x00000002  # "must always be set"
NO_OFFSET = 0xFFFFFFFFFFFFFFFF  # a fixed disk's data offset, the header's next offset
UNALLOCATED = 0xFFFFFFFF  # a BAT entry of a block the file does not store

DISK_FIXED = 2
DISK_DYNAMIC = 3
DISK_DIFFERENCING = 4
DISK_TYPES = {DISK_FIXED: "fixed", DISK_DYNAMIC: "dynamic", DISK_DIFFERENCING: "differencing"}

# The specification's stated limit: 2040 GB (read as GiB: 0xFF000000 sectors,
# the largest size qemu's vpc driver also allows).
MAX_VIRTUAL_SIZE = 2040 * GiB
DEFAULT_BLOCK_SIZE = 2 * MiB  # the specification's default, and what Hyper-V writes

# Parent locator platform codes.
PLATFORM_W2RU = b"W2ru"  # relative Windows path, UTF-16LE
PLATFORM_W2KU = b"W2ku"  # absolute Windows path, UTF-16LE
PLATFORM_WI2R = b"Wi2r"  # deprecated: relative path, ANSI
PLATFORM_WI2K = b"Wi2k"  # deprecated: absolute path, ANSI
PLATFORM_NONE = bytes(4)

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
MAX_TIMESTAMP = 0xFFFFFFFF


def from_timestamp(seconds: int) -> datetime:
    """A VHD time stamp as an aware UTC datetime."""
    return EPOCH + timedelta(seconds=seconds)


def to_timestamp(when: datetime) -> int:
    """Seconds since 2000-01-01 UTC (a naive datetime is taken as UTC);
    ``ValueError`` outside the 32-bit range the field holds."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = int((when - EPOCH).total_seconds())
    if not 0 <= seconds <= MAX_TIMESTAMP:
        raise ValueError(f"time stamp {when.isoformat()} is outside 2000-01-01 .. 2136-02-07")
    return seconds


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_up(value: int, unit: int) -> int:
    return ceil_div(value, unit) * unit
