"""The NBD server on bytes: handshake, options, each command and its errors.

Each test drives one ``Connection`` over a socketpair with raw protocol bytes
(no listener, no tools): what qemu and libnbd would send, and what they must not.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbd_support import catalogue, disk_bytes

from ckpt import nbd_protocol as p
from ckpt.nbd_connection import Connection
from ckpt.nbd_exports import Catalogue
from ckpt.nbd_overlay import HEADER, OverlayExport, overlay_stem

DATA = disk_bytes(256 * 1024)
OTHER = bytes(range(256)) * 32
NAME = "vm/cp/Disk0"


class Client:
    """The client side of a socketpair whose other end a Connection serves."""

    def __init__(self, cat: Catalogue) -> None:
        self.sock, theirs = socket.socketpair()
        self.sock.settimeout(10)
        self.thread = threading.Thread(target=Connection(theirs, cat, None).run, daemon=True)
        self.thread.start()

    def recv(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            part = self.sock.recv(n - len(out))
            if not part:
                raise EOFError(f"closed after {len(out)} of {n} bytes")
            out += part
        return out

    def closed(self) -> bool:
        self.thread.join(5)
        return not self.thread.is_alive() and self.sock.recv(1) == b""

    def start(self, flags: int = p.CLIENT_FLAGS) -> None:
        assert self.recv(18) == p.greeting()
        self.sock.sendall(struct.pack(">I", flags))

    def option(self, option: int, data: bytes = b"") -> list[tuple[int, bytes]]:
        """Send an option; its replies up to the final one (ACK or an error)."""
        self.sock.sendall(p.OPTION_HEADER.pack(p.IHAVEOPT, option, len(data)) + data)
        replies = []
        while True:
            magic, opt, kind, length = p.OPTION_REPLY_HEADER.unpack(self.recv(20))
            assert (magic, opt) == (p.OPTION_REPLY_MAGIC, option)
            replies.append((kind, self.recv(length)))
            if kind == p.REP_ACK or kind & (1 << 31):
                return replies

    def go(self, name: str = NAME, structured: bool = True, meta: bool = True) -> int:
        """Negotiate and enter transmission; the transmission flags."""
        if structured:
            assert self.option(p.OPT_STRUCTURED_REPLY) == [(p.REP_ACK, b"")]
        if meta:
            self.option(p.OPT_SET_META_CONTEXT, meta_request(name, [p.BASE_ALLOCATION]))
        replies = self.option(p.OPT_GO, info_request(name))
        assert replies[-1] == (p.REP_ACK, b"")
        export = next(d for k, d in replies if k == p.REP_INFO and d[:2] == b"\0\0")
        _, size, flags = struct.unpack(">HQH", export)
        assert size == len(DATA)
        return int(flags)

    def request(self, kind: int, offset: int, length: int, flags: int = 0, cookie: int = 7) -> None:
        self.sock.sendall(p.pack_request(kind, cookie, offset, length, flags))

    def simple(self, cookie: int = 7) -> int:
        magic, error, got = p.SIMPLE_REPLY.unpack(self.recv(16))
        assert (magic, got) == (p.SIMPLE_REPLY_MAGIC, cookie)
        return int(error)

    def chunks(self, cookie: int = 7) -> list[tuple[int, bytes]]:
        out = []
        while True:
            magic, flags, kind, got, length = p.STRUCTURED_HEADER.unpack(self.recv(20))
            assert (magic, got) == (p.STRUCTURED_REPLY_MAGIC, cookie)
            out.append((kind, self.recv(length)))
            if flags & p.REPLY_FLAG_DONE:
                return out


def info_request(name: str, *infos: int) -> bytes:
    raw = name.encode()
    return (
        struct.pack(">I", len(raw))
        + raw
        + struct.pack(">H", len(infos))
        + b"".join(struct.pack(">H", i) for i in infos)
    )


def meta_request(name: str, queries: list[str]) -> bytes:
    raw = name.encode()
    body = b"".join(struct.pack(">I", len(q.encode())) + q.encode() for q in queries)
    return struct.pack(">I", len(raw)) + raw + struct.pack(">I", len(queries)) + body


@pytest.fixture
def client() -> Iterator[Client]:
    c = Client(catalogue({NAME: DATA, "vm/cp/Disk1": OTHER}))
    c.start()
    yield c
    c.sock.close()


def test_list_names_every_export_then_acks(client: Client) -> None:
    replies = client.option(p.OPT_LIST)
    names = [d[4 : 4 + struct.unpack(">I", d[:4])[0]].decode() for k, d in replies[:-1]]
    assert names == [NAME, "vm/cp/Disk1"]
    assert replies[-1] == (p.REP_ACK, b"")


def test_unknown_option_is_unsupported_and_the_haggling_goes_on(client: Client) -> None:
    assert client.option(999, b"junk")[-1][0] == p.REP_ERR_UNSUP
    assert client.option(p.OPT_LIST, b"x")[-1][0] == p.REP_ERR_INVALID
    assert client.option(p.OPT_STARTTLS)[-1][0] == p.REP_ERR_UNSUP  # no certificate given
    assert client.go() & p.FLAG_READ_ONLY


def test_info_names_size_flags_and_block_sizes_and_unknown_exports(client: Client) -> None:
    replies = client.option(p.OPT_INFO, info_request(NAME, p.INFO_NAME, p.INFO_DESCRIPTION))
    infos = {struct.unpack(">H", d[:2])[0]: d[2:] for k, d in replies if k == p.REP_INFO}
    _, flags = struct.unpack(">QH", infos[p.INFO_EXPORT])
    for flag in (p.FLAG_READ_ONLY, p.FLAG_SEND_FLUSH, p.FLAG_SEND_CACHE, p.FLAG_CAN_MULTI_CONN):
        assert flags & flag
    assert infos[p.INFO_NAME] == NAME.encode()
    assert struct.unpack(">III", infos[p.INFO_BLOCK_SIZE]) == (1, 4096, 32 * 1024 * 1024)
    assert client.option(p.OPT_INFO, info_request("vm/nope/Disk0"))[-1][0] == p.REP_ERR_UNKNOWN
    assert client.option(p.OPT_GO, b"\0\0\0\xff")[-1][0] == p.REP_ERR_INVALID  # truncated


def test_meta_contexts_offer_base_allocation_after_structured_replies(client: Client) -> None:
    listed = client.option(p.OPT_LIST_META_CONTEXT, meta_request(NAME, []))
    assert listed[0] == (p.REP_META_CONTEXT, p.meta_context_reply(1, p.BASE_ALLOCATION))
    refused = client.option(p.OPT_SET_META_CONTEXT, meta_request(NAME, [p.BASE_ALLOCATION]))
    assert refused[-1][0] == p.REP_ERR_INVALID  # structured replies first
    client.option(p.OPT_STRUCTURED_REPLY)
    none = client.option(p.OPT_SET_META_CONTEXT, meta_request(NAME, ["qemu:dirty-bitmap:x"]))
    assert none == [(p.REP_ACK, b"")]


def test_simple_read_returns_the_bytes(client: Client) -> None:
    client.go(structured=False, meta=False)
    client.request(p.CMD_READ, 5000, 70000)
    assert client.simple() == 0
    assert client.recv(70000) == DATA[5000:75000]


def test_structured_read_sends_holes_as_holes_and_covers_the_range(client: Client) -> None:
    client.go()
    client.request(p.CMD_READ, 60000, 100000)
    got = bytearray(100000)
    holes = 0
    for kind, payload in client.chunks():
        (offset,) = struct.unpack(">Q", payload[:8])
        if kind == p.REPLY_TYPE_OFFSET_DATA:
            got[offset - 60000 : offset - 60000 + len(payload) - 8] = payload[8:]
        else:
            assert kind == p.REPLY_TYPE_OFFSET_HOLE
            holes += struct.unpack(">I", payload[8:])[0]
    assert bytes(got) == DATA[60000:160000]
    assert holes == 65536  # the 64 KiB hole at 64 KiB, not sent as zeros


def test_block_status_reports_holes_as_hole_and_zero(client: Client) -> None:
    client.go()
    client.request(p.CMD_BLOCK_STATUS, 0, 256 * 1024)
    [(kind, payload)] = client.chunks()
    assert kind == p.REPLY_TYPE_BLOCK_STATUS
    words = struct.unpack(f">I{(len(payload) - 4) // 4}I", payload)
    assert words[0] == p.BASE_ALLOCATION_ID
    hole = p.STATE_HOLE | p.STATE_ZERO
    assert list(zip(words[1::2], words[2::2], strict=True)) == [
        (65536, 0), (65536, hole), (131072, 0)
    ]  # fmt: skip
    client.request(p.CMD_BLOCK_STATUS, 0, 256 * 1024, flags=p.CMD_FLAG_REQ_ONE)
    assert len(client.chunks()[0][1]) == 4 + 8


def test_block_status_without_base_allocation_is_einval(client: Client) -> None:
    client.go(meta=False)
    client.request(p.CMD_BLOCK_STATUS, 0, 4096)
    [(kind, payload)] = client.chunks()
    assert kind == p.REPLY_TYPE_ERROR and struct.unpack(">I", payload[:4])[0] == p.EINVAL


@pytest.mark.parametrize("kind", [p.CMD_WRITE, p.CMD_WRITE_ZEROES, p.CMD_TRIM])
def test_writes_to_a_read_only_export_are_eperm_and_the_connection_goes_on(
    client: Client, kind: int
) -> None:
    client.go(structured=False, meta=False)
    client.request(kind, 0, 512)
    if kind == p.CMD_WRITE:
        client.sock.sendall(b"\xee" * 512)
    assert client.simple() == p.EPERM
    client.request(p.CMD_READ, 0, 512)
    assert client.simple() == 0 and client.recv(512) == DATA[:512]


def test_out_of_range_and_oversized_requests_are_einval(client: Client) -> None:
    client.go(structured=False, meta=False)
    for offset, length in ((len(DATA) - 10, 11), (2**64 - 1, 1), (0, 33 * 1024 * 1024)):
        client.request(p.CMD_READ, offset, length)
        assert client.simple() == p.EINVAL
    client.request(p.CMD_CACHE, len(DATA), 1)
    assert client.simple() == p.EINVAL
    client.request(42, 0, 1)
    assert client.simple() == p.EINVAL


def test_flush_cache_and_disconnect(client: Client) -> None:
    client.go(structured=False, meta=False)
    for kind in (p.CMD_FLUSH, p.CMD_CACHE):
        client.request(kind, 0, 4096)
        assert client.simple() == 0
    client.request(p.CMD_DISC, 0, 0)
    assert client.closed()


def test_export_name_reaches_the_default_export_with_zero_padding() -> None:
    c = Client(catalogue({NAME: DATA}, default=NAME))
    c.start(flags=p.FLAG_FIXED_NEWSTYLE)
    c.sock.sendall(p.OPTION_HEADER.pack(p.IHAVEOPT, p.OPT_EXPORT_NAME, 0))
    size, flags = struct.unpack(">QH", c.recv(10))
    assert size == len(DATA) and flags & p.FLAG_READ_ONLY
    assert c.recv(124) == bytes(124)
    c.request(p.CMD_READ, 0, 8)
    assert c.simple() == 0 and c.recv(8) == DATA[:8]


@pytest.mark.parametrize(
    "send",
    [
        struct.pack(">I", 1 << 7),  # unknown client flags
        struct.pack(">I", 3) + b"IHAVEOPX" + bytes(8),  # bad option magic
        struct.pack(">I", 3) + p.OPTION_HEADER.pack(p.IHAVEOPT, p.OPT_GO, 1 << 30),  # huge option
        struct.pack(">I", 3) + p.OPTION_HEADER.pack(p.IHAVEOPT, p.OPT_EXPORT_NAME, 3) + b"bad",
        struct.pack(">I", 3) + p.OPTION_HEADER.pack(p.IHAVEOPT, p.OPT_ABORT, 0),
    ],
)
def test_malformed_handshakes_close_the_connection(send: bytes) -> None:
    c = Client(catalogue({NAME: DATA}))
    c.recv(18)
    c.sock.sendall(send)
    c.sock.settimeout(5)
    with pytest.raises(EOFError):
        while True:
            c.recv(1)


def test_a_bad_request_magic_or_huge_write_closes_the_connection(client: Client) -> None:
    client.go()
    client.sock.sendall(b"\x00" * 28)
    assert client.closed()


def test_catalogue_opens_once_shares_and_closes_after_the_last_user() -> None:
    cat = catalogue({NAME: DATA})
    a, b = cat.acquire(NAME), cat.acquire(NAME)
    assert a is b
    cat.release(a)
    assert not a.source.closed  # type: ignore[attr-defined]
    cat.release(b)
    assert a.source.closed  # type: ignore[attr-defined]


def test_overlay_merges_partial_writes_and_survives_reopening(tmp_path: Path) -> None:
    cat = catalogue({NAME: DATA}, overlay=tmp_path)
    export = cat.acquire(NAME)
    assert export.writable
    export.pwrite(65536 + 100, b"\x5a" * 5000)  # into the hole, two blocks partly
    want = bytearray(DATA)
    want[65636:70636] = b"\x5a" * 5000
    assert export.pread(0, len(DATA)) == bytes(want)
    assert export.extents(0, 256 * 1024) == [
        (0, 73728, False), (73728, 57344, True), (131072, 131072, False)
    ]  # fmt: skip
    export.flush()
    cat.close()
    again = catalogue({NAME: DATA}, overlay=tmp_path).acquire(NAME)
    assert again.pread(0, len(DATA)) == bytes(want)
    stem = overlay_stem(NAME)
    assert sorted(f.name for f in tmp_path.iterdir()) == [f"{stem}.map", f"{stem}.overlay"]
    assert (tmp_path / f"{stem}.map").stat().st_size == HEADER.size + 8


def test_overlay_of_another_size_is_refused(tmp_path: Path) -> None:
    catalogue({NAME: DATA}, overlay=tmp_path).acquire(NAME).pwrite(0, b"x")
    with pytest.raises(p.InvalidValue, match="overlay of a 262144-byte export"):
        catalogue({NAME: DATA[:4096]}, overlay=tmp_path).acquire(NAME)


def test_overlay_names_are_unambiguous_file_names() -> None:
    assert overlay_stem("a_b/c/d") != overlay_stem("a/b_c/d")
    assert "/" not in overlay_stem("../../etc/passwd")
    assert isinstance(OverlayExport, type)


def test_an_overlay_export_takes_writes_zeroes_and_trims(tmp_path: Path) -> None:
    c = Client(catalogue({NAME: DATA}, overlay=tmp_path))
    c.start()
    flags = c.go(structured=False, meta=False)
    assert not flags & p.FLAG_READ_ONLY and flags & p.FLAG_SEND_WRITE_ZEROES
    c.request(p.CMD_WRITE, 10, 3, flags=p.CMD_FLAG_FUA)
    c.sock.sendall(b"abc")
    assert c.simple() == 0
    c.request(p.CMD_WRITE_ZEROES, 0, 4)
    assert c.simple() == 0
    c.request(p.CMD_TRIM, 0, 4096)
    assert c.simple() == 0
    c.request(p.CMD_WRITE, len(DATA) - 1, 2)
    c.sock.sendall(b"zz")
    assert c.simple() == p.ENOSPC
    c.request(p.CMD_READ, 0, 16)
    assert c.simple() == 0 and c.recv(16) == bytes(4) + DATA[4:10] + b"abc" + DATA[13:16]


def test_a_client_silent_in_the_handshake_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ckpt.nbd_connection.HANDSHAKE_SECONDS", 0.2)
    c = Client(catalogue({NAME: DATA}))
    c.recv(18)  # the greeting; then nothing
    assert c.closed()


def test_block_status_folds_small_holes_into_data() -> None:
    """A hole under 64 KiB is reported as data (one read instead of a round trip
    per run); a hole of 64 KiB or more stays a hole."""
    from ckpt.nbd_connection import SMALL_HOLE, coalesced

    k = 4096
    extents = [(0, k, False), (k, k, True), (2 * k, k, False), (3 * k, SMALL_HOLE, True)]
    assert coalesced(extents) == [(3 * k, False), (SMALL_HOLE, True)]
    assert coalesced([(0, k, True)]) == [(k, False)]
    assert coalesced([(0, SMALL_HOLE, True), (SMALL_HOLE, k, False)]) == [
        (SMALL_HOLE, True),
        (k, False),
    ]
