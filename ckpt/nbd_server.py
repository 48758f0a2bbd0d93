"""The NBD listener: a TCP or Unix socket, a thread per connection.

Terms: the *server* accepts connections and hands each to a
``ckpt.nbd_connection.Connection`` in its own thread (reads of one export run
concurrently: the reader is thread-safe). ``close`` stops accepting, drops the
connections still open (their clients see the socket close, as after
``qemu-nbd`` is killed) and waits for their threads, so the store can be
closed after it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import ssl
import stat
import threading
from pathlib import Path
from typing import Any

from ckpt.domain import InvalidValue

from .nbd_connection import Connection
from .nbd_exports import Catalogue

# How long close() waits for a connection thread after dropping its socket; a
# thread inside a slow read (S3) finishes that read first.
JOIN_SECONDS = 10.0


class _Handler(socketserver.BaseRequestHandler):
    server: Any  # _TCPServer | _UnixServer (both carry .nbd)

    def handle(self) -> None:
        nbd: NbdServer = self.server.nbd
        sock: socket.socket = self.request
        if not nbd.track(sock):
            return
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # A reply is several sends (structured chunks): without NODELAY a small
            # one waits for the client's delayed ACK, 40 ms on Linux.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            Connection(sock, nbd.catalogue, nbd.tls).run()
        finally:
            nbd.untrack(sock)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    nbd: NbdServer


class _TCP6Server(_TCPServer):
    address_family = socket.AF_INET6


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    nbd: NbdServer


class NbdServer:
    """Serve ``catalogue`` on ``host:port`` (port 0: a free one) or a Unix socket."""

    def __init__(
        self,
        catalogue: Catalogue,
        host: str = "127.0.0.1",
        port: int = 10809,
        socket_path: str | Path | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.tls = tls
        self.socket_path = None if socket_path is None else Path(socket_path)
        self._lock = threading.Lock()
        self._open: dict[socket.socket, threading.Thread] = {}
        self._closing = False
        self.listener: socketserver.BaseServer
        try:
            if self.socket_path is not None:
                _clear_stale_socket(self.socket_path)
                self.listener = _UnixServer(str(self.socket_path), _Handler)
            else:
                kind = _TCP6Server if ":" in host else _TCPServer
                self.listener = kind((host, port), _Handler)
        except OSError as e:
            where = self.socket_path if self.socket_path is not None else f"{host}:{port}"
            raise InvalidValue(f"cannot listen on {where}: {e.strerror or e}") from None
        self.listener.nbd = self

    @property
    def port(self) -> int | None:
        if self.socket_path is not None:
            return None
        return int(self.listener.server_address[1])  # type: ignore[index]

    @property
    def url(self) -> str:
        """Where a client finds the server (an export name is appended)."""
        if self.socket_path is not None:
            return f"nbd+unix:///?socket={self.socket_path}"
        host = str(self.listener.server_address[0])  # type: ignore[index]
        host = f"[{host}]" if ":" in host else host
        scheme = "nbds" if self.tls is not None else "nbd"
        return f"{scheme}://{host}:{self.port}/"

    def track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closing:
                return False
            self._open[sock] = threading.current_thread()
            return True

    def untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.pop(sock, None)

    def serve_forever(self) -> None:
        self.listener.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Make ``serve_forever`` return (call from another thread)."""
        self.listener.shutdown()

    def close(self) -> None:
        """Stop listening, drop open connections, wait for their threads, close exports."""
        with self._lock:
            self._closing = True
            dropping = list(self._open.items())
        for sock, _ in dropping:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.listener.server_close()
        for _, thread in dropping:
            thread.join(JOIN_SECONDS)
        self.catalogue.close()
        if self.socket_path is not None:
            with contextlib.suppress(OSError):
                self.socket_path.unlink()


def _clear_stale_socket(path: Path) -> None:
    """A socket file left by a server that died is removed; a live server's, or
    any other kind of file, is refused rather than replaced."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise InvalidValue(f"--socket {path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise InvalidValue(f"--socket {path}: another server is listening there")
