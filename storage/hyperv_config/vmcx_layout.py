"""The byte layout of Hyper-V's key-value container (VMCX and VMRS files).

Microsoft does not document the format; docs/vmcx.md lists the public sources
and what each told us, and marks what we inferred from real files ourselves.
Everything is little-endian and packed (no padding between fields).

Terms:
    file header     46 bytes at offset 0 and again (an older copy) at 4 KiB;
                    the valid one with the higher sequence number is current.
    object table    at 2 x header_size (8 KiB): a count and 18-byte entries,
                    one per *object*, a region of the file: a key table, a file
                    object (a large value), free space, another object table.
    key table       one object (4 KiB in every file seen) holding *key entries*
                    back to back after a 10-byte header; the entries of all
                    tables form one tree through (table index, offset) parent
                    references.
    key entry       21-byte header, the key (UTF-8, NUL-terminated, its length
                    with the NUL in ``data_offset``), then the value.
    file object     a value of 2 KiB or more, stored outside the key tables;
                    the entry holds its size and absolute offset.
    replay log      a journal of writes (target offset, size, data) Hyper-V had
                    not yet applied; ``num_entries`` zero means nothing pending.

Every structure carries a CRC-32 (zlib's polynomial, not VHDX's CRC-32C) over
itself with its checksum field taken as zero; a key entry's covers its header,
key and value, not the slack Hyper-V leaves after the value (12 bytes for most
entries). We verified all four kinds against every structure in the two
Windows-written fixtures (409 + 113 key entries).

File header (46 bytes)::

    0  u32 signature 0x01282014   4  u32 CRC-32      8  u16 sequence number
    10 u32 format version 0x400   14 u64 (unknown, 0)
    22 u32 alignment (0x1000)     26 u64 replay log offset
    34 u64 replay log size        42 u32 header size (0x1000)

Object table: ``u32 signature 0x01110001, u32 count`` then ``count`` entries of
``u8 type, u32 CRC-32, u64 offset, u32 size, u8 allocated``.

Replay log header (34 bytes): ``u32 signature 0x01110003, u32 CRC-32,
u32 num_entries, u8, u32 max_entries (0x91), 4 x u32, u8`` then entries of
``u64 target offset, u32 size, u32 data offset (from the log's start), u32,
u32 CRC-32 of the entry, u32 CRC-32 of the data``.

Key table header (10 bytes): ``u16 signature 2, u16 table index (from 1),
u16 sequence number, u32 CRC-32``.

Key entry header (21 bytes): ``u16 type (low byte) and flags (high byte),
u32 size of the entry with slack, u16 parent table index (0 = a root key),
u32 parent entry's offset in that table, u32 CRC-32, u32 insertion sequence,
u8 data_offset``.
"""

from __future__ import annotations

import enum
import re
import struct
import zlib
from dataclasses import dataclass

FILE_HEADER = struct.Struct("<IIHIQIQQI")
FILE_HEADER_SIGNATURE = 0x01282014
FILE_HEADER_OFFSETS = (0x0000, 0x1000)
FORMAT_VERSION = 0x400  # the only version seen (dissect.hypervisor accepts only it too)

OBJECT_TABLE_HEADER = struct.Struct("<II")
OBJECT_TABLE_SIGNATURE = 0x01110001
OBJECT_ENTRY = struct.Struct("<BIQIB")

REPLAY_LOG_HEADER = struct.Struct("<IIIBIIIIIB")
REPLAY_LOG_SIGNATURE = 0x01110003
REPLAY_LOG_MAX_ENTRIES = 0x91  # what both Windows files hold
REPLAY_ENTRY = struct.Struct("<QIIIII")

KEY_TABLE_HEADER = struct.Struct("<HHHI")
KEY_TABLE_SIGNATURE = 0x0002
KEY_ENTRY_HEADER = struct.Struct("<HIHIIIB")

# Windows files: header_size and alignment 4 KiB, key tables one alignment unit.
# A reader refuses anything past these bounds instead of allocating by them.
MAX_ALIGNMENT = 0x10000  # dissect.hypervisor's note: "can't be over 0x10000"
MAX_KEY_TABLE_SIZE = 0x100000  # 1 MiB; Windows writes 4 KiB
MAX_OBJECTS = 1 << 16  # object entries over all object tables
MAX_DEPTH = 64  # key nesting; test.vmcx is 9 deep
# A file object is read into memory only up to this size: a VMRS of a running VM
# holds guest memory (GiBs) in file objects, which a key-tree reader must not load.
MAX_LOADED_VALUE = 0x100000
# Values of this many bytes or more live in a file object (dissect.hypervisor:
# "Values are stored in a file object if their size >= 0x800").
FILE_OBJECT_THRESHOLD = 0x800

# A path segment "key[n]" names the (n+1)-th sibling called "key" (see vmcx_file).
REPEAT = re.compile(r"(.+)\[([1-9][0-9]*)\]")

NODE_VALUE_SIZE = 12  # 8 bytes of unknown meaning (zero) + u32 next child sequence
FILE_OBJECT_POINTER = struct.Struct("<IQ")  # size, absolute offset
FLAG_FILE_OBJECT = 0x01


class ObjectType(enum.IntEnum):
    UNUSED = 0
    OBJECT_TABLE = 1
    KEY_TABLE = 2
    FILE = 3
    FREE = 4
    UNKNOWN_HEADER = 5
    REPLAY_LOG = 6
    CHANGE_TRACKING_BUFFER = 7


class KeyType(enum.IntEnum):
    FREE = 1
    UNKNOWN = 2
    INT = 3  # signed 64-bit
    UINT = 4  # unsigned 64-bit
    DOUBLE = 5
    STRING = 6  # u32 byte length + UTF-16LE, no terminator
    ARRAY = 7  # u32 byte length + bytes
    BOOL = 8  # u32, non-zero is true
    NODE = 9  # an inner key


def crc_with_zero_field(data: bytes | memoryview, field: int) -> int:
    """CRC-32 of ``data`` with the 4-byte checksum field at ``field`` read as zero."""
    crc = zlib.crc32(data[:field])
    crc = zlib.crc32(b"\0\0\0\0", crc)
    return zlib.crc32(data[field + 4 :], crc)


def seal(data: bytearray, field: int) -> bytes:
    """Stores the structure's CRC-32 in its checksum field at ``field``."""
    data[field : field + 4] = crc_with_zero_field(bytes(data), field).to_bytes(4, "little")
    return bytes(data)


FILE_HEADER_CRC_FIELD = 4
OBJECT_ENTRY_CRC_FIELD = 1
REPLAY_LOG_CRC_FIELD = 4
REPLAY_ENTRY_CRC_FIELD = 20
KEY_TABLE_CRC_FIELD = 6
KEY_ENTRY_CRC_FIELD = 12


@dataclass(frozen=True)
class UnloadedValue:
    """A string or array in a file object larger than ``MAX_LOADED_VALUE``, left
    unread (guest memory in a VMRS): its type, absolute offset and size."""

    key_type: int  # KeyType.STRING or KeyType.ARRAY
    offset: int
    size: int


# A leaf's value as a reader returns it and a writer takes it.
Value = bool | int | float | str | bytes | UnloadedValue
