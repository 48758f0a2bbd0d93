"""``ckpt serve``: a checkpoint's disks (or every point's) as NBD exports.

Terms: a *point* is a live checkpoint, a backup point or ``Now`` (the running
state) of a VM, as of ``--at`` when given. Its exports are named
``VM/POINT/DISK``, and ``VM/POINT/memory`` where the point holds the memory
image; POINT is the point's name, or its id where the name is not unique in the
VM or holds a ``/``. ``ckpt serve VM POINT`` offers one point (with one disk,
the empty export name "" is that disk too); ``ckpt serve --all`` offers every
point of every VM, opening an export only when a client asks for it.

NBD has no authentication: any process that reaches the port reads every
disk. So the server binds 127.0.0.1 (or a Unix socket, guarded by file modes),
and any other address is refused unless TLS certificates are given
(``NBD_OPT_STARTTLS``; with a CA, clients need a certificate it signed).
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from ckpt.domain import FileRole, InvalidValue, NotFound, VirtualMachine

from . import render
from .nbd_exports import Catalogue, Entry, Export, ReadOnlyExport
from .restore_ops import point_of
from .store import Store

if TYPE_CHECKING:
    import ssl

DEFAULT_PORT = 10809  # IANA's NBD port
NOW = "Now"


@dataclass(frozen=True)
class Point:
    vm: str
    vm_label: str  # the VM of the export names: its name, or its id if the name holds a /
    ref: str  # what open_disk takes: the point's id, or "Now"
    label: str  # the POINT of the export names
    disks: tuple[str, ...]
    memory: bool


def _label(name: str, ref: str, names: Counter[str]) -> str:
    unique = names[name.casefold()] == 1 and "/" not in name and name.casefold() != "now"
    return name if unique and name else ref


def points(s: Store, vm: VirtualMachine) -> list[Point]:
    """Every live checkpoint and backup point of ``vm`` (a VM as of some moment), and Now."""
    names = Counter(
        n.casefold()
        for n in [c.name for c in vm.checkpoints.values()]
        + [b.name for b in vm.backup_points.values()]
    )
    found = []
    vm_label = str(vm.id) if "/" in vm.name else vm.name
    purged = s.unit_of_work.app.get_vm(vm.id).purged  # as the log is now, whatever vm's moment
    for cp in vm.checkpoints.values():
        if cp.id in purged:
            continue
        memory = any(f.role is FileRole.MEMORY for f in vm.captured_files.get(cp.id, ()))
        label = _label(cp.name, str(cp.id), names)
        disks = tuple(disk for disk, _ in cp.layers)
        found.append(Point(vm.name, vm_label, str(cp.id), label, disks, memory))
    for bp in vm.backup_points.values():
        if bp.id in purged:
            continue
        past = s.vm(vm.id, version=bp.version)
        label = _label(bp.name, str(bp.id), names)
        found.append(Point(vm.name, vm_label, str(bp.id), label, tuple(past.running), False))
    found.append(Point(vm.name, vm_label, NOW, NOW, tuple(vm.running), False))
    return found


def one_point(s: Store, vm: str, ref: str, at: str | int | None) -> Point:
    v = s.vm(vm, at=at)
    if ref.casefold() == NOW.casefold():
        want = NOW
    else:
        found = v.find_point(ref)
        point_of(s.unit_of_work, v, found)  # a purged point: PointPurged, not "no point"
        want = str(found.id)
    for point in points(s, v):
        if point.ref == want:
            return point
    raise NotFound(f"VM {v.name!r} has no point {ref!r}")  # unreachable: find_point found it


def _entries(
    s: Store, point: Point, disks: tuple[str, ...], memory: bool, at: str | int | None,
    overlay: Path | None,
) -> list[Entry]:  # fmt: skip
    def opener(name: str, disk: str | None) -> Callable[[], Export]:
        def open_() -> Export:
            if disk is None:
                reader = s.open_memory(point.vm, point.ref, at=at)
                what = f"memory of VM {point.vm} at {point.label}"
            else:
                reader = s.open_disk(point.vm, point.ref, disk, at=at)
                what = f"disk {disk} of VM {point.vm} at {point.label}"
            export: Export = ReadOnlyExport(name, what, reader)
            if overlay is None:
                return export
            from .nbd_overlay import OverlayExport

            return OverlayExport(export, overlay)

        return open_

    base = f"{point.vm_label}/{point.label}"
    made = [Entry(f"{base}/{d}", f"disk {d} of {base}", opener(f"{base}/{d}", d)) for d in disks]
    if memory:
        # A disk may be named "memory": the image then takes the name it has on restore.
        name = f"{base}/memory.bin" if "memory" in disks else f"{base}/memory"
        made.append(Entry(name, f"memory of {base}", opener(name, None)))
    return made


def catalogue(s: Store, a: argparse.Namespace, overlay: Path | None) -> Catalogue:
    if a.all:
        if a.vm or a.checkpoint or a.disk:
            raise InvalidValue("ckpt serve --all takes no VM, checkpoint or --disk")
        entries = []
        for live in s.vms():
            vm = s.vm(live.id, at=a.at) if a.at is not None else live
            for point in points(s, vm):
                entries += _entries(s, point, point.disks, point.memory, a.at, overlay)
        return Catalogue(entries)
    if not (a.vm and a.checkpoint):
        raise InvalidValue("ckpt serve needs VM and CHECKPOINT (or --all)")
    point = one_point(s, a.vm, a.checkpoint, a.at)
    if a.disk is not None and a.disk not in point.disks:
        raise NotFound(
            f"VM {point.vm!r} has no disk {a.disk!r} at {point.label} "
            f"(disks: {', '.join(point.disks) or 'none'})"
        )
    disks = point.disks if a.disk is None else (a.disk,)
    entries = _entries(s, point, disks, point.memory and a.disk is None, a.at, overlay)
    default = entries[0].name if len(disks) == 1 else None
    return Catalogue(entries, default)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as e:
        raise InvalidValue(f"--bind {host}: cannot resolve it ({e})") from None
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def tls_context(a: argparse.Namespace) -> ssl.SSLContext | None:
    """The server's TLS context from --tls-cert/--tls-key/--tls-ca, or --tls-dir in
    qemu's tls-creds-x509 layout (server-cert.pem, server-key.pem, ca-cert.pem)."""
    cert, key, ca = a.tls_cert, a.tls_key, a.tls_ca
    if a.tls_dir:
        if cert or key or ca:
            raise InvalidValue("give --tls-dir or --tls-cert/--tls-key/--tls-ca, not both")
        d = Path(a.tls_dir)
        cert, key = str(d / "server-cert.pem"), str(d / "server-key.pem")
        ca = str(d / "ca-cert.pem") if (d / "ca-cert.pem").exists() else None
    if bool(cert) != bool(key):
        raise InvalidValue("--tls-cert and --tls-key go together")
    if not cert:
        if ca:
            raise InvalidValue("--tls-ca needs --tls-cert and --tls-key")
        return None
    import ssl  # here: ~15 ms that no other command needs

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
        if ca:
            context.load_verify_locations(ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        reason = getattr(e, "strerror", None) or getattr(e, "reason", None) or e
        raise InvalidValue(f"cannot load the TLS certificate {cert!r}: {reason}") from None
    return context


class Terminated(Exception):
    """SIGTERM: stop serving and exit 0."""


@contextmanager
def _sigterm() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise Terminated

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    if not 0 <= a.port <= 65535:
        raise InvalidValue(f"--port {a.port}: a TCP port is 0 to 65535")
    tls = tls_context(a)
    if a.socket is None and tls is None and not _loopback(a.bind):
        raise InvalidValue(
            f"NBD has no authentication: --bind {a.bind} needs --tls-cert/--tls-key "
            "(or use 127.0.0.1 or --socket)"
        )
    overlay = None if a.overlay is None else Path(a.overlay)
    if overlay is not None:
        try:
            overlay.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InvalidValue(f"--overlay {overlay}: {e.strerror}") from None
    from .nbd_server import NbdServer

    exports = catalogue(s, a, overlay)
    try:
        if not a.all:  # open now: a point without content fails here, in one line
            for entry in exports.listing():
                exports.acquire(entry.name)  # held until the catalogue closes
        server = NbdServer(exports, a.bind, a.port, a.socket, tls)
    except BaseException:
        exports.close()
        raise
    names = [e.name for e in exports.listing()]
    data: dict[str, Any] = {
        "url": server.url,
        "port": server.port,
        "socket": a.socket,
        "tls": tls is not None,
        "overlay": None if overlay is None else str(overlay),
        "exports": names,
    }
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    mode = "read-write (copy-on-write overlay)" if overlay is not None else "read-only"
    count = f"{len(names)} export" + ("" if len(names) == 1 else "s")
    text = f"serving {count} {mode} on {server.url}: {shown or 'none'}"
    try:
        with _sigterm():
            render.emit(out, a, data, text)
            out.flush()
            server.serve_forever()
    except Terminated:
        pass
    finally:
        server.close()


def register(sub: Any, cmd: Callable[..., argparse.ArgumentParser]) -> None:
    q = cmd(
        sub,
        "serve",
        serve,
        "serve a checkpoint's disks (or every point's, --all) over NBD, read-only",
        json_out=True,
    )
    q.add_argument("vm", nargs="?")
    q.add_argument("checkpoint", nargs="?", help="checkpoint or backup point (name or id), or Now")
    q.add_argument("--disk", metavar="DISK", help="only this disk (default: every disk)")
    q.add_argument(
        "--all",
        action="store_true",
        help="every checkpoint and backup point (and Now) of every VM, as VM/POINT/DISK",
    )
    q.add_argument("--at", metavar="POSITION|TIME", help="the store as of then (reaches deleted)")
    q.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default 10809)")
    q.add_argument(
        "--bind", default="127.0.0.1", metavar="ADDR", help="address (default 127.0.0.1)"
    )
    q.add_argument("--socket", metavar="PATH", help="listen on a Unix socket instead")
    q.add_argument(
        "--overlay",
        metavar="DIR",
        help="make exports writable: writes go to copy-on-write files in DIR, never the store",
    )
    q.add_argument("--tls-cert", metavar="FILE", help="server certificate (PEM)")
    q.add_argument("--tls-key", metavar="FILE", help="server private key (PEM)")
    q.add_argument("--tls-ca", metavar="FILE", help="clients must present a certificate it signed")
    q.add_argument(
        "--tls-dir",
        metavar="DIR",
        help="ca-cert.pem, server-cert.pem, server-key.pem as qemu's tls-creds-x509 reads them",
    )
