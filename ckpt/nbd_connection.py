"""One NBD client connection: the option haggling, then the transmission phase.

Terms as in ``ckpt.nbd_protocol``. A connection runs in its own thread; it
reads exact byte counts from the socket and answers each request before
reading the next (a client wanting parallel reads opens more connections:
every export says ``CAN_MULTI_CONN``). Whatever a client sends, the worst
outcome is that this connection closes: a protocol error, a short read or a
reset ends ``run`` quietly and the server keeps accepting others.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys

from ckpt.domain import CkptError, NotFound

from . import nbd_protocol as p
from .nbd_exports import Catalogue, Export

# Write-zeroes and cache requests are done in pieces of this size, so a 4 GiB
# request (the protocol's largest) never holds more than 1 MiB of zeros.
PIECE = 1024 * 1024


# A client has this long to finish the handshake (the options included): one
# that connects and says nothing would otherwise hold a thread forever. qemu
# and libnbd finish in milliseconds; nbdkit allows 60 s too (--timeout).
HANDSHAKE_SECONDS = 60.0


class Closed(Exception):
    """The client closed the connection or asked to end it."""


class Connection:
    def __init__(self, sock: socket.socket, catalogue: Catalogue, tls: ssl.SSLContext | None):
        self.sock = sock
        self.catalogue = catalogue
        self.tls = tls
        self.secured = False
        self.no_zeroes = False
        self.structured = False
        self.meta_export: str | None = None  # the export base:allocation was set for

    # ------------------------------------------------------------ socket I/O
    def recv(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            part = self.sock.recv(min(n - got, 1 << 20))
            if not part:
                raise Closed
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def run(self) -> None:
        export: Export | None = None
        try:
            self.sock.settimeout(HANDSHAKE_SECONDS)
            export = self.handshake()
            if export is not None:
                self.sock.settimeout(None)  # transmission: a client may idle between requests
                self.transmit(export)
        except (Closed, p.ProtocolError, OSError, ssl.SSLError, ValueError):
            pass
        except Exception as e:  # a bug: one line for the operator, the server goes on
            sys.stderr.write(f"ckpt: serve: dropped a connection: {type(e).__name__}: {e}\n")
        finally:
            if export is not None:
                self.catalogue.release(export)
            with contextlib.suppress(OSError):
                self.sock.close()

    # ------------------------------------------------------------ handshake
    def handshake(self) -> Export | None:
        self.send(p.greeting())
        flags = p.parse_client_flags(self.recv(4))
        self.no_zeroes = bool(flags & p.FLAG_NO_ZEROES)
        while True:
            option, length = p.parse_option_header(self.recv(p.OPTION_HEADER.size))
            data = self.recv(length)
            if (
                self.tls is not None
                and not self.secured
                and option
                not in (
                    p.OPT_STARTTLS,
                    p.OPT_ABORT,
                )
            ):
                if option == p.OPT_EXPORT_NAME:
                    raise Closed  # no way to answer it with an error
                self.reply(option, p.REP_ERR_TLS_REQD, b"TLS is required")
                continue
            try:
                export = self.option(option, data)
            except p.ProtocolError as e:
                if option == p.OPT_EXPORT_NAME:
                    raise
                self.reply(option, p.REP_ERR_INVALID, str(e).encode())
                continue
            if export is not None:
                return export

    def reply(self, option: int, kind: int, data: bytes = b"") -> None:
        self.send(p.option_reply(option, kind, data))

    def flags(self, export: Export) -> int:
        flags = p.FLAG_HAS_FLAGS | p.FLAG_SEND_FLUSH | p.FLAG_SEND_CACHE | p.FLAG_CAN_MULTI_CONN
        if export.writable:
            return flags | p.FLAG_SEND_FUA | p.FLAG_SEND_TRIM | p.FLAG_SEND_WRITE_ZEROES
        return flags | p.FLAG_READ_ONLY

    def option(self, option: int, data: bytes) -> Export | None:
        """Answer one option; the export when it starts transmission."""
        if option == p.OPT_ABORT:
            try:
                self.reply(option, p.REP_ACK)
            finally:
                raise Closed
        if option == p.OPT_EXPORT_NAME:
            try:
                export = self.catalogue.acquire(p.parse_export_name(data))
            except CkptError:
                raise Closed from None  # the old option has no error reply
            self.send(p.export_name_reply(export.size, self.flags(export), self.no_zeroes))
            return export
        if option == p.OPT_LIST:
            if data:
                raise p.ProtocolError("NBD_OPT_LIST takes no data")
            for entry in self.catalogue.listing():
                self.reply(option, p.REP_SERVER, p.server_reply(entry.name, entry.description))
            self.reply(option, p.REP_ACK)
        elif option == p.OPT_STARTTLS:
            self.starttls(data)
        elif option in (p.OPT_INFO, p.OPT_GO):
            return self.info(option, p.parse_info_request(data))
        elif option == p.OPT_STRUCTURED_REPLY:
            if data:
                raise p.ProtocolError("NBD_OPT_STRUCTURED_REPLY takes no data")
            self.structured = True
            self.reply(option, p.REP_ACK)
        elif option in (p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT):
            self.meta_context(option, p.parse_meta_context_request(data))
        else:
            self.reply(option, p.REP_ERR_UNSUP, f"option {option} is not supported".encode())
        return None

    def starttls(self, data: bytes) -> None:
        if self.tls is None:
            self.reply(p.OPT_STARTTLS, p.REP_ERR_UNSUP, b"this server has no TLS certificate")
        elif self.secured or data:
            raise p.ProtocolError("TLS is already on" if self.secured else "STARTTLS takes no data")
        else:
            self.reply(p.OPT_STARTTLS, p.REP_ACK)
            self.sock = self.tls.wrap_socket(self.sock, server_side=True)
            self.secured = True

    def info(self, option: int, request: p.InfoRequest) -> Export | None:
        try:
            export = self.catalogue.acquire(request.name)
        except NotFound as e:
            self.reply(option, p.REP_ERR_UNKNOWN, str(e).encode())
            return None
        except CkptError as e:  # the point or disk cannot be opened (gone, damaged)
            self.reply(option, p.REP_ERR_UNKNOWN, f"cannot open {request.name!r}: {e}".encode())
            return None
        try:
            self.reply(option, p.REP_INFO, p.info_export(export.size, self.flags(export)))
            if p.INFO_NAME in request.requests:
                self.reply(option, p.REP_INFO, p.info_name(export.name))
            if p.INFO_DESCRIPTION in request.requests:
                self.reply(option, p.REP_INFO, p.info_description(export.description))
            self.reply(option, p.REP_INFO, p.info_block_size())
            self.reply(option, p.REP_ACK)
        except BaseException:
            self.catalogue.release(export)
            raise
        if option == p.OPT_INFO:
            self.catalogue.release(export)
            return None
        if self.meta_export is not None and self.meta_export != export.name:
            self.meta_export = None  # contexts were set for another export
        return export

    def meta_context(self, option: int, request: p.MetaContextRequest) -> None:
        setting = option == p.OPT_SET_META_CONTEXT
        if setting and not self.structured:
            self.reply(option, p.REP_ERR_INVALID, b"negotiate structured replies first")
            return
        try:
            entry = self.catalogue.resolve(request.name)
        except NotFound as e:
            self.reply(option, p.REP_ERR_UNKNOWN, str(e).encode())
            return
        found = p.matching_contexts(request.queries, listing=not setting)
        for name in found:
            self.reply(option, p.REP_META_CONTEXT, p.meta_context_reply(p.BASE_ALLOCATION_ID, name))
        self.reply(option, p.REP_ACK)
        if setting:
            self.meta_export = entry.name if found else None

    # --------------------------------------------------------- transmission
    def transmit(self, export: Export) -> None:
        while True:
            request = p.parse_request(self.recv(p.REQUEST.size))
            payload = b""
            if request.type == p.CMD_WRITE:
                if request.length > p.MAX_REQUEST:
                    raise p.ProtocolError("a write larger than the maximum request")
                payload = self.recv(request.length)
            if request.type == p.CMD_DISC:
                return
            try:
                self.command(export, request, payload)
            except CkptError as e:
                self.error(request, p.EIO, str(e))
            except OSError as e:
                self.error(request, p.ENOSPC if e.errno == p.ENOSPC else p.EIO, str(e))

    def error(self, request: p.Request, errno: int, message: str = "") -> None:
        if self.structured:
            self.send(p.error_chunk(request.cookie, errno, message))
        else:
            self.send(p.simple_reply(request.cookie, errno))

    def ok(self, request: p.Request) -> None:
        self.send(p.simple_reply(request.cookie))

    def command(self, export: Export, r: p.Request, payload: bytes) -> None:
        inside = p.check_range(r.offset, r.length, export.size)
        if r.type in (p.CMD_WRITE, p.CMD_WRITE_ZEROES, p.CMD_TRIM):
            if not export.writable:
                self.error(r, p.EPERM, f"export {export.name!r} is read-only")
            elif not inside:
                self.error(r, p.ENOSPC, "beyond the end of the export")
            elif r.type == p.CMD_TRIM:
                self.ok(r)  # the overlay keeps every block: trimming frees nothing
            else:
                self.write(export, r, payload)
        elif r.type == p.CMD_FLUSH:
            export.flush()
            self.ok(r)
        elif r.type not in (p.CMD_READ, p.CMD_CACHE, p.CMD_BLOCK_STATUS):
            self.error(r, p.EINVAL, f"unknown command {r.type}")
        elif not inside:
            self.error(r, p.EINVAL, "beyond the end of the export")
        elif r.type == p.CMD_READ:
            self.read(export, r)
        elif r.type == p.CMD_CACHE:
            # Prefetch into the reader's cache; past 32 MiB it would only evict
            # what it fetched first.
            end = r.offset + min(r.length, p.MAX_REQUEST)
            for start in range(r.offset, end, PIECE):
                export.pread(start, min(PIECE, end - start))
            self.ok(r)
        else:
            self.block_status(export, r)

    def write(self, export: Export, r: p.Request, payload: bytes) -> None:
        if r.type == p.CMD_WRITE:
            export.pwrite(r.offset, payload)
        else:
            for start in range(r.offset, r.offset + r.length, PIECE):
                export.pwrite(start, bytes(min(PIECE, r.offset + r.length - start)))
        if r.flags & p.CMD_FLAG_FUA:
            export.flush()
        self.ok(r)

    def read(self, export: Export, r: p.Request) -> None:
        if r.length > p.MAX_REQUEST:
            self.error(r, p.EINVAL, "a read larger than the maximum request")
            return
        if not self.structured or r.flags & p.CMD_FLAG_DF:
            data = self.pread(export, r.offset, r.length)
            if self.structured:
                self.send(
                    p.data_chunk(r.cookie, r.offset, data, True) if data else p.done_chunk(r.cookie)
                )
            else:
                self.send(p.simple_reply(r.cookie) + data)
            return
        # One pread per data run, small holes folded in (they read as zeros):
        # a reply of a chunk per 12 KiB run halved the throughput (bench_instant).
        chunks = []
        start = r.offset
        for length, zero in coalesced(export.extents(r.offset, r.length)):
            chunks.append((start, length, b"" if zero else self.pread(export, start, length)))
            start += length
        ends = [r.offset] + [start + length for start, length, _ in chunks]
        if ends[-1] != r.offset + r.length or [c[0] for c in chunks] != ends[:-1]:
            raise CkptError(f"extents of {export.name!r} do not tile the read")
        if not chunks:
            self.send(p.done_chunk(r.cookie))
        for i, (start, length, data) in enumerate(chunks):
            last = i == len(chunks) - 1
            if data:
                self.send(p.data_chunk(r.cookie, start, data, last))
            else:
                self.send(p.hole_chunk(r.cookie, start, length, last))

    def pread(self, export: Export, offset: int, length: int) -> bytes:
        data = export.pread(offset, length)
        if len(data) != length:  # never pad: short data would be wrong bytes
            raise CkptError(f"{export.name!r}: read {len(data)} of {length} bytes")
        return data

    def block_status(self, export: Export, r: p.Request) -> None:
        if self.meta_export != export.name:
            self.error(r, p.EINVAL, "base:allocation was not negotiated")
            return
        if r.length == 0:
            self.error(r, p.EINVAL, "block status of zero bytes")
            return
        runs = coalesced(export.extents(r.offset, r.length, STATUS_RUNS))
        if r.flags & p.CMD_FLAG_REQ_ONE:
            runs = runs[:1]
        self.send(p.block_status_chunk(r.cookie, runs))


# A block-status reply covers at most this many of the store's runs (the spec
# lets a reply cover less than asked; the client asks again from its end):
# answering the rest of the disk each time made a walk O(n^2).
STATUS_RUNS = 1024
# A hole shorter than this is reported as data: a client (qemu-img convert)
# reads each data extent in its own request, and a disk with a hole every 4th
# block then cost one round trip per 12 KiB (38 MB/s for 1 GiB, bench_instant).
# base:allocation is a hint: zeros reported as data still read as zeros, and
# READ replies still send them as holes.
SMALL_HOLE = 64 << 10


def coalesced(extents: list[tuple[int, int, bool]]) -> list[tuple[int, bool]]:
    """(length, is_zero) runs with holes under ``SMALL_HOLE`` folded into data."""
    runs: list[tuple[int, bool]] = []
    for _, n, zero in extents:
        zero = zero and n >= SMALL_HOLE
        if runs and runs[-1][1] == zero:
            runs[-1] = (runs[-1][0] + n, zero)
        else:
            runs.append((n, zero))
    return runs
