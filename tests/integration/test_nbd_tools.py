"""The NBD server read and written by tools no one here wrote.

qemu-img, qemu-io (Debian's qemu-utils) and nbdinfo (libnbd-bin), installed by
``.ci/run``, against an in-process server over bytes-backed exports
(``tests/nbd_support.py``): what they list, copy, map, read and write; eight
at once; a Unix socket; and a Hypothesis fuzz of the handshake and of request
headers after which a good client is still served.
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nbd_support import catalogue, disk_bytes, make_certificates, serving

from ckpt import nbd_protocol as p
from ckpt.cli_serve import tls_context
from ckpt.nbd_server import NbdServer

TOOLS = ("qemu-img", "qemu-io", "nbdinfo")
MISSING = [t for t in TOOLS if shutil.which(t) is None]
needs_tools = pytest.mark.skipif(
    bool(MISSING), reason=f"{', '.join(MISSING)} missing (apt qemu-utils libnbd-bin; .ci/run)"
)

MIB = 1024 * 1024
PATTERN = 0xAB
PATTERN_AT = (2 * MIB, 256 * 1024)  # a run of 0xab bytes, for qemu-io's read -P


def _disk() -> bytes:
    data = bytearray(disk_bytes(4 * MIB))
    start, length = PATTERN_AT
    data[start : start + length] = bytes([PATTERN]) * length
    return bytes(data)


DATA = _disk()
SMALL = disk_bytes(64 * 1024, seed=3)
NAME = "vm/cp/Disk0"


def holes(data: bytes) -> list[tuple[int, int]]:
    """The 64 KiB-aligned zero runs of ``disk_bytes`` (every third 64 KiB)."""
    step = 65536
    return [(s, step) for s in range(0, len(data), step) if not any(data[s : s + step])]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


@pytest.fixture
def server() -> Iterator[NbdServer]:
    with serving(catalogue({NAME: DATA, "vm/cp/Disk1": SMALL})) as s:
        yield s


@needs_tools
def test_nbdinfo_lists_every_export(server: NbdServer) -> None:
    got = run("nbdinfo", "--list", "--json", server.url)
    assert got.returncode == 0, got.stderr
    assert f'"export-name": "{NAME}"' in got.stdout
    assert '"export-name": "vm/cp/Disk1"' in got.stdout
    assert '"is_read_only": true' in got.stdout


@needs_tools
def test_qemu_img_convert_equals_the_bytes_and_map_reports_the_holes(
    server: NbdServer, tmp_path: Path
) -> None:
    out = tmp_path / "out.raw"
    got = run("qemu-img", "convert", "-O", "raw", server.url + NAME, str(out))
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == DATA
    mapped = run("qemu-img", "map", "--output=json", server.url + NAME)
    assert mapped.returncode == 0, mapped.stderr
    import json

    zero = [(e["start"], e["length"]) for e in json.loads(mapped.stdout) if e["zero"]]
    assert zero == holes(DATA)


@needs_tools
def test_qemu_io_random_reads_see_the_pattern_and_the_holes(server: NbdServer) -> None:
    rng = random.Random(15)
    commands = []
    start, length = PATTERN_AT
    for _ in range(40):
        n = rng.randrange(1, 65536)
        commands += ["-c", f"read -P {PATTERN} {start + rng.randrange(length - n)} {n}"]
    for hole, size in holes(DATA)[:20]:
        n = rng.randrange(1, size)
        commands += ["-c", f"read -P 0 {hole + rng.randrange(size - n)} {n}"]
    got = run("qemu-io", "-r", "-f", "raw", server.url + NAME, *commands)
    assert got.returncode == 0, got.stderr
    assert "failed" not in got.stdout + got.stderr
    assert got.stdout.count("read ") == 60


@needs_tools
def test_writes_are_refused_on_a_read_only_export(server: NbdServer) -> None:
    got = run("qemu-io", "-f", "raw", server.url + NAME, "-c", "write -P 1 0 512")
    assert got.returncode != 0 or "failed" in got.stdout + got.stderr
    assert "wrote" not in got.stdout


@needs_tools
def test_overlay_keeps_writes_across_restarts_and_leaves_the_source(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    with serving(catalogue({NAME: DATA}, overlay=overlay)) as s:
        url = s.url + NAME
        wrote = run("qemu-io", "-f", "raw", url, "-c", "write -P 90 1000 10000", "-c", "flush")
        assert wrote.returncode == 0 and "wrote 10000/10000" in wrote.stdout, wrote
        back = run("qemu-io", "-r", "-f", "raw", url, "-c", "read -P 90 1000 10000")
        assert back.returncode == 0 and "failed" not in back.stdout, back
    with serving(catalogue({NAME: DATA}, overlay=overlay)) as s:
        url = s.url + NAME
        again = run("qemu-io", "-r", "-f", "raw", url, "-c", "read -P 90 1000 10000")
        assert again.returncode == 0 and "failed" not in again.stdout, again
        out = tmp_path / "out.raw"
        assert run("qemu-img", "convert", "-O", "raw", url, str(out)).returncode == 0
    want = bytearray(DATA)
    want[1000:11000] = bytes([90]) * 10000
    assert out.read_bytes() == bytes(want)
    assert _disk() == DATA  # the source was only read


@needs_tools
def test_eight_clients_at_once_each_get_every_byte(server: NbdServer, tmp_path: Path) -> None:
    outs = [tmp_path / f"out{i}.raw" for i in range(8)]
    procs = [
        subprocess.Popen(["qemu-img", "convert", "-O", "raw", server.url + NAME, str(o)])
        for o in outs
    ]
    assert [proc.wait(60) for proc in procs] == [0] * 8
    assert all(o.read_bytes() == DATA for o in outs)


@needs_tools
def test_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "nbd.sock"
    with serving(catalogue({NAME: SMALL}), socket_path=sock) as s:
        assert s.url == f"nbd+unix:///?socket={sock}"
        out = tmp_path / "out.raw"
        got = run("qemu-img", "convert", "-O", "raw", f"nbd+unix:///{NAME}?socket={sock}", str(out))
        assert got.returncode == 0, got.stderr
        assert out.read_bytes() == SMALL
    assert not sock.exists()


# ------------------------------------------------------------------- fuzzing
def _connect(server: NbdServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port or 0), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        part = sock.recv(n - len(out))
        assert part, "the server closed the connection"
        out += part
    return out


def _go(sock: socket.socket, name: str = NAME) -> None:
    """A good client's handshake: fixed newstyle, then NBD_OPT_GO (simple replies)."""
    assert _recv(sock, 18) == p.greeting()
    raw = name.encode()
    data = struct.pack(">I", len(raw)) + raw + b"\0\0"
    sock.sendall(struct.pack(">I", 3) + p.OPTION_HEADER.pack(p.IHAVEOPT, p.OPT_GO, len(data)))
    sock.sendall(data)
    while True:
        _, _, kind, length = p.OPTION_REPLY_HEADER.unpack(_recv(sock, 20))
        _recv(sock, length)
        if kind == p.REP_ACK:
            return


def _served(server: NbdServer) -> None:
    """A good client reads 4 KiB correctly."""
    with _connect(server) as sock:
        _go(sock)
        sock.sendall(p.pack_request(p.CMD_READ, 1, 8192, 4096))
        assert p.SIMPLE_REPLY.unpack(_recv(sock, 16)) == (p.SIMPLE_REPLY_MAGIC, 0, 1)
        assert _recv(sock, 4096) == DATA[8192:12288]


def _send_and_drop(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(2)
        while sock.recv(65536):
            pass
    except OSError:
        pass  # the server closed first: what it may do with garbage


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[NbdServer]:
    with serving(catalogue({NAME: DATA})) as s:
        yield s


option_header = st.builds(
    lambda magic, opt, data: p.OPTION_HEADER.pack(magic, opt, len(data)) + data,
    st.sampled_from([p.IHAVEOPT, p.IHAVEOPT, 0, 2**64 - 1]),
    st.integers(0, 12) | st.integers(0, 2**32 - 1),
    st.binary(max_size=64),
)


@settings(max_examples=60, deadline=None)
@given(
    flags=st.sampled_from([b"\0\0\0\3", b"\0\0\0\1", b"\0\0\0\0", b"\xff\xff\xff\xff"]),
    options=st.lists(option_header | st.binary(max_size=40), max_size=4),
)
def test_fuzzed_handshakes_never_bring_the_server_down(
    fuzzed: NbdServer, flags: bytes, options: list[bytes]
) -> None:
    with _connect(fuzzed) as sock:
        _recv(sock, 18)
        _send_and_drop(sock, flags + b"".join(options))
    _served(fuzzed)


@settings(max_examples=60, deadline=None)
@given(
    magic=st.sampled_from([p.REQUEST_MAGIC, p.REQUEST_MAGIC, 0]),
    flags=st.integers(0, 0xFFFF),
    kind=st.integers(0, 10) | st.integers(0, 0xFFFF),
    offset=st.sampled_from([0, len(DATA) - 1, len(DATA), 2**63, 2**64 - 1])
    | st.integers(0, 2**64 - 1),
    length=st.sampled_from([0, 1, 4096, p.MAX_REQUEST + 1, 2**32 - 1]) | st.integers(0, 2**32 - 1),
    tail=st.binary(max_size=64),
)
def test_fuzzed_requests_never_bring_the_server_down(
    fuzzed: NbdServer, magic: int, flags: int, kind: int, offset: int, length: int, tail: bytes
) -> None:
    with _connect(fuzzed) as sock:
        _go(sock)
        _send_and_drop(sock, struct.pack(">IHHQQI", magic, flags, kind, 9, offset, length) + tail)
    _served(fuzzed)


# ----------------------------------------------------------------------- TLS
def _tls_dir(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    d = tmp_path / "pki"
    d.mkdir()
    make_certificates(d)
    args = argparse.Namespace(tls_cert=None, tls_key=None, tls_ca=None, tls_dir=str(d))
    context = tls_context(args)
    assert context is not None
    return d, context


@needs_tools
def test_tls_clients_with_certificates_read_and_plain_ones_are_refused(tmp_path: Path) -> None:
    pki, context = _tls_dir(tmp_path)
    with serving(catalogue({NAME: SMALL}), tls=context) as s:
        port = s.port
        out = tmp_path / "out.raw"
        got = run(
            "qemu-img", "convert", "-O", "raw",
            "--object", f"tls-creds-x509,id=tls0,dir={pki},endpoint=client",
            "--image-opts",
            f"driver=nbd,host=127.0.0.1,port={port},export={NAME},tls-creds=tls0",
            str(out),
        )  # fmt: skip
        assert got.returncode == 0, got.stderr
        assert out.read_bytes() == SMALL
        listed = run("nbdinfo", "--list", f"nbds://127.0.0.1:{port}/?tls-certificates={pki}")
        assert listed.returncode == 0 and NAME in listed.stdout, listed.stderr
        plain = run("nbdinfo", "--size", f"nbd://127.0.0.1:{port}/{NAME}")
        assert plain.returncode != 0
        assert "TLS" in plain.stderr or "tls" in plain.stderr
        for cert in ("client-cert.pem", "client-key.pem"):  # no client certificate
            (pki / cert).unlink()
        anonymous = run(
            "nbdinfo", "--size", f"nbds://127.0.0.1:{port}/{NAME}?tls-certificates={pki}"
        )
        assert anonymous.returncode != 0
        _served_tls_still(s)


def _served_tls_still(server: NbdServer) -> None:
    """After refused clients, a plain probe still gets its TLS-required answer."""
    with _connect(server) as sock:
        assert _recv(sock, 18) == p.greeting()
        sock.sendall(struct.pack(">I", 3) + p.OPTION_HEADER.pack(p.IHAVEOPT, p.OPT_LIST, 0))
        assert p.OPTION_REPLY_HEADER.unpack(_recv(sock, 20))[2] == p.REP_ERR_TLS_REQD
