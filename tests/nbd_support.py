"""A bytes-backed export source and an in-process NBD server, for the NBD tests.

``BytesSource`` implements the ``DiskReader`` interface (``size``, ``pread``,
``extents``, ``close``) over bytes: a 4 KiB block of zeros is a hole, as a
block the store has no chunk for. ``serving`` runs ``NbdServer`` in a thread on
a free port (or a Unix socket) and closes it afterwards.
"""

from __future__ import annotations

import random
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ckpt.nbd_exports import Catalogue, Entry, Export, ReadOnlyExport
from ckpt.nbd_overlay import OverlayExport
from ckpt.nbd_server import NbdServer

BLOCK = 4096


class BytesSource:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.closed = False
        self.reads = 0

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def block_size(self) -> int:
        return BLOCK

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0:
            raise ValueError("negative offset")
        self.reads += 1
        return self.data[offset : offset + length]

    def extents(
        self, offset: int, length: int, limit: int | None = None
    ) -> list[tuple[int, int, bool]]:
        end = min(offset + length, self.size)
        runs: list[tuple[int, int, bool]] = []
        pos = offset
        while pos < end:
            stop = min((pos // BLOCK + 1) * BLOCK, end)
            zero = not any(self.data[(pos // BLOCK) * BLOCK : (pos // BLOCK + 1) * BLOCK])
            if runs and runs[-1][2] == zero:
                runs[-1] = (runs[-1][0], runs[-1][1] + stop - pos, zero)
            elif limit is not None and len(runs) == limit:
                break
            else:
                runs.append((pos, stop - pos, zero))
            pos = stop
        return runs

    def close(self) -> None:
        self.closed = True


def disk_bytes(size: int = 4 * 1024 * 1024, seed: int = 7) -> bytes:
    """A disk image with data blocks and zero holes (every third 64 KiB is a hole;
    the last block is partial: sizes need not be multiples of 4 KiB)."""
    rng = random.Random(seed)
    out = bytearray(size)
    for start in range(0, size, 65536):
        if (start // 65536) % 3 != 1:
            n = min(65536, size - start)
            out[start : start + n] = rng.randbytes(n)
    return bytes(out)


def make_certificates(directory: Path) -> None:
    """qemu's tls-creds-x509 layout in ``directory``: a CA (ca-cert.pem), a server
    certificate for 127.0.0.1 (server-cert.pem, server-key.pem) and a client one
    (client-cert.pem, client-key.pem), as ``certtool`` would make them."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        (directory / f"{stem}-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if stem != "ca":
            (directory / f"{stem}-key.pem").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )

    def builder(subject: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name("ckpt test CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("ckpt test CA", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    write("ca", ca_key, ca)
    for stem, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            builder(f"ckpt test {stem}", key)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        write(stem, key, cert)


def catalogue(
    disks: dict[str, bytes], overlay: Path | None = None, default: str | None = None
) -> Catalogue:
    def opener(name: str, data: bytes) -> Entry:
        def open_() -> Export:
            export: Export = ReadOnlyExport(name, f"fake {name}", BytesSource(data))
            return export if overlay is None else OverlayExport(export, overlay)

        return Entry(name, f"fake {name}", open_)

    return Catalogue([opener(n, d) for n, d in disks.items()], default)


@contextmanager
def serving(
    cat: Catalogue, socket_path: Path | None = None, tls: ssl.SSLContext | None = None
) -> Iterator[NbdServer]:
    server = NbdServer(cat, "127.0.0.1", 0, socket_path, tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()
        server.close()
