"""The NBD wire format: constants, and packing and parsing as pure functions on bytes.

Terms (the protocol as qemu, nbdkit and libnbd speak it, NetworkBlockDevice/nbd
doc/proto.md): the *handshake* is the server's greeting (``NBDMAGIC``,
``IHAVEOPT``, 16-bit flags) and the client's 32-bit flags; then *options*
(``IHAVEOPT``, option, length, data), each answered by one or more *option
replies*; ``NBD_OPT_GO`` (or the old ``NBD_OPT_EXPORT_NAME``) ends them and
*transmission* starts: 28-byte *requests* (magic, flags, type, cookie, offset,
length), answered by *simple replies* (16 bytes, then the data of a read) or,
once ``NBD_OPT_STRUCTURED_REPLY`` was agreed, by *structured reply chunks*
(20-byte header, then a payload) of which the last carries ``NBD_REPLY_FLAG_DONE``.
All integers are big-endian. Nothing here touches a socket: the server
(``ckpt.nbd_server``) reads exact byte counts and hands them to these functions.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ckpt.domain import InvalidValue

NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPTION_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

# Handshake flags (server) and client flags.
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
CLIENT_FLAGS = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES

# Options.
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

# Option reply types; errors have bit 31 set.
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_POLICY = (1 << 31) + 2
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_TLS_REQD = (1 << 31) + 5
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_TOO_BIG = (1 << 31) + 9

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# Transmission flags.
FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_FUA = 1 << 3
FLAG_SEND_TRIM = 1 << 5
FLAG_SEND_WRITE_ZEROES = 1 << 6
FLAG_CAN_MULTI_CONN = 1 << 8
FLAG_SEND_CACHE = 1 << 10

# Commands and their flags.
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3

# Structured reply chunk types and flags.
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1

# base:allocation states.
STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1
BASE_ALLOCATION = "base:allocation"
BASE_ALLOCATION_ID = 1  # the one meta context this server offers

# Errors (the protocol's numbers, which are Linux's errno values).
EPERM = 1
EIO = 5
EINVAL = 22
ENOSPC = 28
ENOTSUP = 95

# Block sizes advertised by NBD_INFO_BLOCK_SIZE: any byte offset works (min 1);
# 4096 is a disk block (the reader's cache unit); 32 MiB is the largest request
# we buffer, what qemu-nbd and nbdkit also use as their maximum.
MIN_BLOCK = 1
PREFERRED_BLOCK = 4096
MAX_REQUEST = 32 * 1024 * 1024
# Option data is names and short lists: 4096 bytes is the protocol's name limit,
# 64 KiB leaves room for a meta context query list and refuses a memory bomb.
MAX_OPTION = 64 * 1024
MAX_NAME = 4096

GREETING = struct.Struct(">QQH")
OPTION_HEADER = struct.Struct(">QII")
OPTION_REPLY_HEADER = struct.Struct(">QIII")
REQUEST = struct.Struct(">IHHQQI")
SIMPLE_REPLY = struct.Struct(">IIQ")
STRUCTURED_HEADER = struct.Struct(">IHHQI")


class ProtocolError(InvalidValue):
    """What a client sent breaks the protocol: the connection closes (the server stays up)."""


def greeting() -> bytes:
    return GREETING.pack(NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)


def parse_client_flags(data: bytes) -> int:
    (flags,) = struct.unpack(">I", data)
    if flags & ~CLIENT_FLAGS:
        raise ProtocolError(f"unknown client flags {flags:#x}")
    if not flags & FLAG_FIXED_NEWSTYLE:
        raise ProtocolError("the client does not speak fixed newstyle")
    return int(flags)


def parse_option_header(data: bytes) -> tuple[int, int]:
    """(option, length) of an option header; a wrong magic or a length over
    ``MAX_OPTION`` is a protocol error."""
    magic, option, length = OPTION_HEADER.unpack(data)
    if magic != IHAVEOPT:
        raise ProtocolError(f"bad option magic {magic:#x}")
    if length > MAX_OPTION:
        raise ProtocolError(f"option {option} data of {length} bytes is too long")
    return option, length


def option_reply(option: int, kind: int, data: bytes = b"") -> bytes:
    return OPTION_REPLY_HEADER.pack(OPTION_REPLY_MAGIC, option, kind, len(data)) + data


def server_reply(name: str, description: str = "") -> bytes:
    raw = name.encode()
    return struct.pack(">I", len(raw)) + raw + description.encode()


def info_export(size: int, flags: int) -> bytes:
    return struct.pack(">HQH", INFO_EXPORT, size, flags)


def info_block_size() -> bytes:
    return struct.pack(">HIII", INFO_BLOCK_SIZE, MIN_BLOCK, PREFERRED_BLOCK, MAX_REQUEST)


def info_name(name: str) -> bytes:
    return struct.pack(">H", INFO_NAME) + name.encode()


def info_description(text: str) -> bytes:
    return struct.pack(">H", INFO_DESCRIPTION) + text.encode()


def export_name_reply(size: int, flags: int, no_zeroes: bool) -> bytes:
    """The answer to NBD_OPT_EXPORT_NAME: size, flags and (unless NO_ZEROES) 124 zeros."""
    return struct.pack(">QH", size, flags) + (b"" if no_zeroes else bytes(124))


def meta_context_reply(context_id: int, name: str) -> bytes:
    return struct.pack(">I", context_id) + name.encode()


class _Reader:
    """A cursor over option data: every read is bounds-checked (ProtocolError)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise ProtocolError("option data is shorter than its contents say")
        self.at += n
        return self.data[self.at - n : self.at]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def text(self, n: int) -> str:
        if n > MAX_NAME:
            raise ProtocolError(f"a name of {n} bytes is longer than {MAX_NAME}")
        try:
            return self.take(n).decode()
        except UnicodeDecodeError:
            raise ProtocolError("a name is not UTF-8") from None

    def end(self) -> None:
        if self.at != len(self.data):
            raise ProtocolError("option data is longer than its contents say")


def parse_export_name(data: bytes) -> str:
    """NBD_OPT_EXPORT_NAME's data: the whole of it is the name."""
    r = _Reader(data)
    return r.text(len(data))


@dataclass(frozen=True)
class InfoRequest:
    """NBD_OPT_INFO/GO: an export name and the info types the client asks for."""

    name: str
    requests: tuple[int, ...]


def parse_info_request(data: bytes) -> InfoRequest:
    r = _Reader(data)
    name = r.text(r.u32())
    count = r.u16()
    requests = tuple(r.u16() for _ in range(count))
    r.end()
    return InfoRequest(name, requests)


@dataclass(frozen=True)
class MetaContextRequest:
    name: str
    queries: tuple[str, ...]


def parse_meta_context_request(data: bytes) -> MetaContextRequest:
    r = _Reader(data)
    name = r.text(r.u32())
    count = r.u32()
    queries = tuple(r.text(r.u32()) for _ in range(count))
    r.end()
    return MetaContextRequest(name, queries)


def matching_contexts(queries: tuple[str, ...], listing: bool) -> list[str]:
    """The contexts a query list selects: ``base:allocation`` for itself, and when
    listing also for an empty list or the namespace query ``base:``."""
    if listing and (not queries or "base:" in queries):
        return [BASE_ALLOCATION]
    return [BASE_ALLOCATION] if BASE_ALLOCATION in queries else []


@dataclass(frozen=True)
class Request:
    flags: int
    type: int
    cookie: int
    offset: int
    length: int


def parse_request(data: bytes) -> Request:
    magic, flags, kind, cookie, offset, length = REQUEST.unpack(data)
    if magic != REQUEST_MAGIC:
        raise ProtocolError(f"bad request magic {magic:#x}")
    return Request(flags, kind, cookie, offset, length)


def pack_request(kind: int, cookie: int, offset: int, length: int, flags: int = 0) -> bytes:
    return REQUEST.pack(REQUEST_MAGIC, flags, kind, cookie, offset, length)


def simple_reply(cookie: int, error: int = 0) -> bytes:
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def chunk(cookie: int, kind: int, payload: bytes, done: bool) -> bytes:
    flags = REPLY_FLAG_DONE if done else 0
    return STRUCTURED_HEADER.pack(STRUCTURED_REPLY_MAGIC, flags, kind, cookie, len(payload)) + (
        payload
    )


def data_chunk(cookie: int, offset: int, data: bytes, done: bool) -> bytes:
    return chunk(cookie, REPLY_TYPE_OFFSET_DATA, struct.pack(">Q", offset) + data, done)


def hole_chunk(cookie: int, offset: int, length: int, done: bool) -> bytes:
    return chunk(cookie, REPLY_TYPE_OFFSET_HOLE, struct.pack(">QI", offset, length), done)


def error_chunk(cookie: int, error: int, message: str = "") -> bytes:
    text = message.encode()[:4096]
    return chunk(cookie, REPLY_TYPE_ERROR, struct.pack(">IH", error, len(text)) + text, True)


def done_chunk(cookie: int) -> bytes:
    return chunk(cookie, REPLY_TYPE_NONE, b"", True)


def block_status_chunk(cookie: int, extents: list[tuple[int, bool]]) -> bytes:
    """base:allocation descriptors: (length, is_zero) -> 32-bit length and state."""
    body = b"".join(
        struct.pack(">II", length, STATE_HOLE | STATE_ZERO if zero else 0)
        for length, zero in extents
    )
    return chunk(
        cookie, REPLY_TYPE_BLOCK_STATUS, struct.pack(">I", BASE_ALLOCATION_ID) + body, True
    )


def check_range(offset: int, length: int, size: int) -> bool:
    """A request inside the export (``offset + length <= size``)."""
    return offset + length <= size
