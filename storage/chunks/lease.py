"""Leases: how captures and gc keep out of each other's way, across processes and hosts.

Terms:
    lease     a small JSON object ``leases/<kind>-<32 hex>.json`` in the chunk
              backend (so every host that shares the chunks sees it, on every
              backend: local, S3, memory): kind, host, machine, pid, start,
              last renewal and time to live. It holds no secret and no chunk
              id, so it is plain text even in an encrypted store.
    write     the kind a capture holds from before its first pack is written
              until after its event is committed (or it fails).
    gc        the kind gc holds while it reads the log and deletes.
    renew     a background thread rewrites the lease every ``RENEW_EVERY``
              seconds; a lease not renewed for ``TTL + SKEW`` seconds (by the
              reader's clock) is expired: its process crashed or hangs.
    dead      expired, or on this machine (same boot and pid namespace) with a
              pid that no longer runs: a SIGKILLed capture does not hold gc off
              for minutes. Dead leases are ignored and gc deletes them.

The protocol (docs/decisions/0006-gc-leases.md): each side writes its own
lease, then lists the others. With a backend whose list sees every completed
put (local file systems; S3 since 2020; the memory backend), at least one of a
capture and a gc sees the other's lease. A gc that sees a live write lease
deletes no indexed pack and no pack younger than the oldest lease's start
minus ``SKEW``; a capture that sees a live gc lease waits until that gc has
finished before it loads the index and writes anything. gc leases written
after the capture's first list need no wait: that gc sees the capture.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ckpt.domain.errors import ChunkMissing, CkptError, StorageError

from .backend import ChunkBackend
from .layout import INDEX, PACKS, index_name, pack_id_of_pack

LEASES = "leases/"
WRITE = "write"
GC = "gc"
# A crashed writer on another host holds gc off for at most TTL + SKEW = 7 minutes;
# a live one renews 10 times per TTL, so a renewal may fail 9 times in a row (an S3
# hiccup) before anyone could take it for dead.
TTL = 300.0
RENEW_EVERY = 30.0
# Clocks of hosts sharing a store differ: NTP keeps them within ~10 ms, a host
# without NTP drifts ~1 s a day. 120 s also covers a VM resumed with a stale clock.
SKEW = 120.0
WAIT_POLL = 0.5  # seconds between looks at a gc lease a capture waits for


@dataclass(frozen=True)
class LeaseInfo:
    """A lease as read from the backend."""

    name: str
    kind: str
    host: str
    machine: str
    pid: int
    started: float
    renewed: float
    ttl: float

    def expired(self, now: float) -> bool:
        return now > self.renewed + self.ttl + SKEW

    def dead(self, now: float) -> bool:
        if self.expired(now):
            return True
        here = machine_id()
        return bool(here) and self.machine == here and not pid_running(self.pid)

    def describe(self) -> str:
        return f"{self.kind} lease of pid {self.pid} on {self.host} (since {_iso(self.started)})"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@functools.cache
def machine_id() -> str:
    """Processes with equal ids see each other's pids: the kernel's boot id and
    the pid namespace (two containers on one kernel share the boot id only).
    ``""`` where that cannot be told (not Linux): then only expiry ends a lease."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}"


def pid_running(pid: int) -> bool:
    """Whether ``pid`` runs on this machine; a zombie (killed, not yet reaped)
    does not. Read from ``/proc`` (never ``os.kill``, which on Windows would
    terminate the process); where there is no ``/proc``, assume it runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self/stat").exists()  # no such process, if /proc works
    except OSError:
        return True
    fields = stat.rsplit(")", 1)[-1].split()
    return not fields or fields[0] not in ("Z", "X")


def read_leases(backend: ChunkBackend) -> list[LeaseInfo]:
    """Every lease in the backend. A lease that cannot be parsed (put is atomic,
    so only outside damage makes one) counts as live and never expires: safe,
    and gc's report names it so a person can delete it."""
    leases = []
    for name in backend.list(LEASES):
        try:
            data = backend.get(name)
        except ChunkMissing:
            continue  # released between the list and the get
        leases.append(_decode(name, data))
    return leases


def _decode(name: str, data: bytes) -> LeaseInfo:
    kind = WRITE if name.startswith(f"{LEASES}{WRITE}-") else GC
    try:
        d = json.loads(data)
        return LeaseInfo(
            name,
            str(d["kind"]),
            str(d["host"]),
            str(d["machine"]),
            int(d["pid"]),
            float(d["started"]),
            float(d["renewed"]),
            float(d["ttl"]),
        )
    except (ValueError, KeyError, TypeError):
        return LeaseInfo(name, kind, "?", "", 0, 0.0, float("inf"), 0.0)


class Lease:
    """A lease this process holds: ``acquire``, then ``release`` (always)."""

    def __init__(
        self,
        backend: ChunkBackend,
        kind: str,
        clock: Callable[[], float] = time.time,
        ttl: float = TTL,
        renew_every: float = RENEW_EVERY,
    ) -> None:
        self._backend = backend
        self.kind = kind
        self.name = f"{LEASES}{kind}-{secrets.token_hex(16)}.json"
        self._clock = clock
        self._ttl = ttl
        self._renew_every = renew_every
        self._host = socket.gethostname()
        self._started = 0.0
        self._renewed = 0.0
        self._lost = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.packs: list[str] = []  # packs a writer flushed under this lease

    def __repr__(self) -> str:
        return f"Lease({self.name!r})"

    def _encode(self, now: float) -> bytes:
        return json.dumps(
            {
                "kind": self.kind,
                "host": self._host,
                "machine": machine_id(),
                "pid": os.getpid(),
                "started": self._started,
                "renewed": now,
                "ttl": self._ttl,
            },
            sort_keys=True,
        ).encode()

    def acquire(self) -> list[LeaseInfo]:
        """Write the lease, start renewing it; the other leases, listed after ours was durable."""
        self._started = now = self._clock()
        self._backend.put(self.name, self._encode(now))
        self._renewed = now
        self._thread = threading.Thread(
            target=self._renew_loop, name=f"ckpt-lease-{self.kind}", daemon=True
        )
        self._thread.start()
        return [x for x in read_leases(self._backend) if x.name != self.name]

    def _renew_loop(self) -> None:
        while not self._stop.wait(self._renew_every):
            with contextlib.suppress(CkptError):  # try again next time; check() judges
                self.renew()

    def renew(self) -> None:
        with self._lock:
            if self._lost or self._stop.is_set():
                return
            if not self._backend.exists(self.name):
                # A gc found it expired and deleted it: it may have deleted our
                # packs too. Never write it again; check() fails the capture.
                self._lost = True
                return
            now = self._clock()
            self._backend.put(self.name, self._encode(now))
            self._renewed = now

    def check(self) -> None:
        """Before a capture's event is committed: the lease is still ours (a gc
        respected it all along), and every pack flushed under it is there with
        its index file. ``ChunkMissing`` (nothing is recorded) if not."""
        self.renew()
        if self._lost:
            raise ChunkMissing(
                f"this capture's lease {self.name} was removed by a gc that took it for "
                "expired (the process stalled?): its chunks may be gone; nothing was "
                "recorded, run the capture again"
            )
        lapsed = self._clock() - self._renewed
        if lapsed > self._ttl:
            raise StorageError(
                f"this capture's lease {self.name} was not renewed for {lapsed:.0f} s "
                f"(over {self._ttl:.0f} s): a gc may have taken it for dead; nothing was "
                "recorded, run the capture again"
            )
        self._check_packs()

    def _check_packs(self) -> None:
        packs = list(self.packs)
        if not packs:
            return
        # One exists per pack, or two listings when that is fewer requests (a
        # listing page holds 1,000 names on S3).
        names = [n for p in packs for n in (p, _index_of(p))]
        if len(names) > 64:
            present = set(self._backend.list(PACKS)) | set(self._backend.list(INDEX))
            missing = [n for n in names if n not in present]
        else:
            missing = [n for n in names if not self._backend.exists(n)]
        if missing:
            raise ChunkMissing(
                f"{len(missing)} of the {len(names)} packs and index files this capture "
                f"wrote are gone from {self._backend!r} (first: {missing[0]}): "
                "nothing was recorded, run the capture again"
            )

    def release(self) -> None:
        """Stop renewing and delete the lease. Never raises: a lease left behind
        expires (or is found dead) and gc deletes it."""
        with self._lock:
            self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(CkptError):
            self._backend.delete(self.name)


def _index_of(pack: str) -> str:
    pack_id = pack_id_of_pack(pack)
    if pack_id is None:  # pragma: no cover - writers only name packs by pack_name
        raise ValueError(f"not a pack name: {pack!r}")
    return index_name(pack_id)


def wait_for(
    backend: ChunkBackend,
    leases: list[LeaseInfo],
    clock: Callable[[], float],
    poll: float = WAIT_POLL,
    on_wait: Callable[[list[LeaseInfo]], None] | None = None,
) -> None:
    """Block until none of ``leases`` is live: released, or dead. ``on_wait`` is
    told once, with the leases still live, when there is something to wait for
    (a gc killed on another host holds a capture for up to TTL + SKEW: 7 minutes,
    which must not look like a hang)."""
    waiting = {x.name for x in leases}
    told = on_wait is None
    while waiting:
        now = clock()
        live = [x for x in read_leases(backend) if not x.dead(now) and x.name in waiting]
        waiting = {x.name for x in live}
        if waiting:
            if not told and on_wait is not None:
                on_wait(live)
                told = True
            time.sleep(poll)


@contextlib.contextmanager
def held(lease: Lease) -> Iterator[list[LeaseInfo]]:
    """``acquire`` then, whatever happens (Ctrl-C included), ``release``."""
    try:
        yield lease.acquire()
    finally:
        lease.release()
