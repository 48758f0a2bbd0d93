#!/usr/bin/env python3
"""Instant-access benchmark (issue 15): a served or mounted disk against ``ckpt restore``,
and restic's mount against restic's restore, in one run.

The image (``--size-gib``, default 2; a quarter of its 4 KiB blocks zero, the rest unique and
partly compressible, as bench/bench_restore.py makes them) is captured once, then:

    restore   ckpt restore bench c0 --disk disk -o OUT                         (timed)
    nbd       ckpt serve bench c0 --port P; qemu-img convert -O raw nbd://.../bench/c0/disk OUT
    random    a minimal NBD client (this file) reads --reads random 4 KiB blocks one at a
              time: latency p50 and p99, cold (a server just started) and warm (the same
              offsets again)
    rss       the server's peak RSS (VmHWM) while 4 clients (nbdcopy ... null:) read the
              whole disk at once
    mount     ckpt mount MNT; cp MNT/bench/c0/disk.raw OUT                      (timed)
    restic    restic backup IMAGE; restic restore (timed); restic mount MNT2 and cp the
              image out of it (timed)  -- with --tools restic and restic on PATH

Every copy is compared with the image.  Ratios are throughput against the same tool's restore
(>= 0.8 is the issue's goal for nbd, >= 0.5 for mount).  MB = 10^6 bytes.

Usage:  python3 bench/bench_instant.py [--size-gib 2] [--work DIR] [--reads 500]
                                        [--tools ckpt,restic] [--ckpt CMD] [--json FILE]
Stdlib only; needs qemu-img and nbdcopy (Debian qemu-utils, libnbd-bin) and FUSE.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = 4096
TEXT = b"the quick brown fox jumps over the lazy dog; " * 70
MB = 10**6


def make_image(path: Path, size: int) -> None:
    """Unique, partly compressible 4 KiB blocks; every 4th block zero (a hole)."""
    zero = bytes(BLOCK)
    with open(path, "wb") as f:
        for i in range(size // BLOCK):
            if i % 4 == 3:
                f.write(zero)
                continue
            seed = hashlib.sha256(i.to_bytes(8, "little")).digest()
            head = hashlib.shake_128(seed).digest(1024)
            f.write(head + TEXT[i % 64 : i % 64 + BLOCK - 1024])


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def timed(cmd: list[str], **kw: object) -> float:
    began = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - began


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], limit: float = 60) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port} after {limit} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------- a minimal NBD client
NBDMAGIC, IHAVEOPT, REPLY_MAGIC = 0x4E42444D41474943, 0x49484156454F5054, 0x3E889045565A9
SIMPLE_REPLY = 0x67446698
OPT_GO, REP_ACK, REP_INFO = 7, 1, 3


def _recv(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            raise ConnectionError("the server closed the connection")
        data += part
    return bytes(data)


class NbdClient:
    """Fixed newstyle, NBD_OPT_GO, simple replies: just enough to time single reads."""

    def __init__(self, port: int, export: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        magic, opt, _flags = struct.unpack(">QQH", _recv(self.sock, 18))
        assert (magic, opt) == (NBDMAGIC, IHAVEOPT), "not an NBD newstyle server"
        self.sock.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
        name = export.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
        while True:
            _m, _o, rep, length = struct.unpack(">QIII", _recv(self.sock, 20))
            body = _recv(self.sock, length)
            if rep == REP_ACK:
                break
            if rep & 0x80000000:
                raise ConnectionError(f"NBD_OPT_GO refused: {rep:#x} {body!r}")
        self.handle = 0

    def read(self, offset: int, length: int) -> bytes:
        self.handle += 1
        self.sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, self.handle, offset, length))
        magic, error, handle = struct.unpack(">IIQ", _recv(self.sock, 16))
        assert magic == SIMPLE_REPLY and handle == self.handle and not error, (magic, error)
        return _recv(self.sock, length)

    def close(self) -> None:
        self.sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 0, 0, 0))  # DISC
        self.sock.close()


def latencies(port: int, export: str, offsets: list[int]) -> list[float]:
    client = NbdClient(port, export)
    out = []
    for off in offsets:
        began = time.perf_counter()
        client.read(off, BLOCK)
        out.append(time.perf_counter() - began)
    client.close()
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


# ------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ckpt-bench-instant"))
    ap.add_argument("--reads", type=int, default=500)
    ap.add_argument("--tools", default="ckpt,restic")
    ap.add_argument("--ckpt", default=str(Path(sys.executable).with_name("ckpt")))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    ckpt = shlex.split(a.ckpt)
    size = int(a.size_gib * (1 << 30)) // BLOCK * BLOCK
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    image, store, out = a.work / "disk.img", a.work / "store", a.work / "out.raw"
    print(f"image: {size / (1 << 30):.2f} GiB (a quarter zero blocks) in {a.work}", flush=True)
    make_image(image, size)
    want = file_sha(image)
    s = [*ckpt, "--store", str(store)]
    for args in (["init"], ["vm", "add", "bench", "--disk", "disk"],
                 ["checkpoint", "create", "bench", "c0", "--disk", f"disk={image}"]):  # fmt: skip
        subprocess.run([*s, *args], check=True, stdout=subprocess.DEVNULL)
    r: dict[str, object] = {"size": size}

    t = timed([*s, "restore", "bench", "c0", "--disk", "disk", "-o", str(out)])
    assert file_sha(out) == want, "ckpt restore differs from the image"
    r["restore_s"] = t
    out.unlink()

    port = free_port()
    server = subprocess.Popen([*s, "serve", "bench", "c0", "--port", str(port)],
                              stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(port, server)
        url = f"nbd://127.0.0.1:{port}/bench/c0/disk"
        r["nbd_s"] = timed(["qemu-img", "convert", "-O", "raw", url, str(out)])
        assert file_sha(out) == want, "qemu-img convert of the served disk differs"
        out.unlink()
        rng = random.Random(15)
        offsets = [rng.randrange(size // BLOCK) * BLOCK for _ in range(a.reads)]
    finally:
        stop(server)
    port = free_port()
    server = subprocess.Popen([*s, "serve", "bench", "c0", "--port", str(port)],
                              stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(port, server)
        cold = latencies(port, "bench/c0/disk", offsets)
        warm = latencies(port, "bench/c0/disk", offsets)
        r["random_ms"] = {
            "cold_p50": pct(cold, 50) * 1e3, "cold_p99": pct(cold, 99) * 1e3,
            "warm_p50": pct(warm, 50) * 1e3, "warm_p99": pct(warm, 99) * 1e3,
        }  # fmt: skip
        if shutil.which("nbdcopy"):
            url = f"nbd://127.0.0.1:{port}/bench/c0/disk"
            readers = [subprocess.Popen(["nbdcopy", url, "null:"]) for _ in range(4)]
            for p in readers:
                if p.wait() != 0:
                    raise SystemExit("nbdcopy failed")
            r["server_rss_mib"] = vm_hwm_kib(server.pid) / 1024
    finally:
        stop(server)

    mnt = a.work / "mnt"
    mnt.mkdir()
    mount = subprocess.Popen([*s, "mount", str(mnt)], stdout=subprocess.DEVNULL)
    try:
        served = mnt / "bench" / "c0" / "disk.raw"
        end = time.monotonic() + 60
        while not served.exists() and time.monotonic() < end and mount.poll() is None:
            time.sleep(0.2)
        r["mount_s"] = timed(["cp", str(served), str(out)])
        assert file_sha(out) == want, "cp from the mounted view differs"
        out.unlink()
    finally:
        stop(mount)

    if "restic" in a.tools.split(",") and shutil.which("restic"):
        env = dict(os.environ, RESTIC_PASSWORD="bench")
        repo, dst, mnt2 = a.work / "restic", a.work / "restic-out", a.work / "restic-mnt"
        subprocess.run(["restic", "-r", str(repo), "init"], env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        subprocess.run(["restic", "-r", str(repo), "backup", "-q", str(image)], env=env,
                       check=True)  # fmt: skip
        r["restic_restore_s"] = timed(
            ["restic", "-r", str(repo), "restore", "latest", "--target", str(dst)], env=env
        )
        mnt2.mkdir()
        m = subprocess.Popen(["restic", "-r", str(repo), "mount", str(mnt2)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            inside = mnt2 / "snapshots" / "latest" / str(image).lstrip("/")
            end = time.monotonic() + 60
            while not inside.exists() and time.monotonic() < end:
                time.sleep(0.2)
            r["restic_mount_s"] = timed(["cp", str(inside), str(out)])
            assert file_sha(out) == want, "cp from restic's mount differs"
            out.unlink()
        finally:
            stop(m)
            subprocess.run(["fusermount", "-u", str(mnt2)], stderr=subprocess.DEVNULL)

    def rate(key: str) -> str:
        v = r.get(key)
        return f"{size / float(v) / MB:8.0f} MB/s" if isinstance(v, float) else "       -"

    restore_s = float(r["restore_s"])  # type: ignore[arg-type]
    print(f"\n{'':24}{'throughput':>14}  ratio to its tool's restore")
    print(f"{'ckpt restore':24}{rate('restore_s'):>14}  1.00")
    for key, label in (("nbd_s", "ckpt serve + qemu-img"), ("mount_s", "ckpt mount + cp")):
        ratio = restore_s / float(r[key]) if key in r else 0.0  # type: ignore[arg-type]
        print(f"{label:24}{rate(key):>14}  {ratio:.2f}")
    if "restic_restore_s" in r:
        rr = float(r["restic_restore_s"])  # type: ignore[arg-type]
        print(f"{'restic restore':24}{rate('restic_restore_s'):>14}  1.00")
        ratio = rr / float(r["restic_mount_s"])  # type: ignore[arg-type]
        print(f"{'restic mount + cp':24}{rate('restic_mount_s'):>14}  {ratio:.2f}")
    ms = r["random_ms"]
    print(f"random 4 KiB reads ({a.reads}): {json.dumps(ms)}")
    if "server_rss_mib" in r:
        print(f"server peak RSS, 4 clients reading the whole disk: {r['server_rss_mib']:.0f} MiB")
    if a.json:
        a.json.write_text(json.dumps(r, indent=1) + "\n")


if __name__ == "__main__":
    main()
