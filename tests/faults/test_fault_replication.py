"""Kill points inside ``ckpt replicate`` (issue 18), and a primary gc racing it.

A run sends the packs the replica lacks, then their index files, then the
events after the replica's position in batches, each batch committed with the
replica's progress (``ckpt_replica``: position, link). Killed anywhere, the
replica must verify clean, hold a prefix of the primary's log, restore every
point whose events arrived, and the next run must send only what is missing.

Four kinds of test:
    kill points  SIGKILL at a seeded delay (the harness's), rounds of captures
                 in between; on the embedded replica and on PostgreSQL + S3.
    cut walk     every write of a run in turn as its last (an exception raised
                 in this process at the write after it): the kill points land
                 where the time goes, these at every write; plain and sealed.
    race         ``gc --grace 0`` after a purge, started a seeded offset from a
                 replicate, one of them SIGKILLed now and then.
    gc inside    the race made certain: the primary's gc run inside the run at
                 a chosen moment (the first fetch of a pack, the listing of the
                 index files, the reading of the events to send).

Terms (besides the harness's):
    primary     ``h.store``, an embedded store: the one replicated.
    replica     the target: a directory (``--to-store``), or PostgreSQL + S3
                (``--to-events``/``--to-chunks``) in a schema and key prefix of
                its own.
    measure     a second replica of the same primary that is never killed: each
                round replicates into it first, uncut, to time a run of the size
                the round then kills (its typical duration).
    arrived     the pack and index names on the replica's chunk backend after a
                kill point, listed from the backend itself (not from anything
                ckpt reports).
    prefix      the replica's log (``log --json``: positions and hash links) is
                the primary's first entries, and ends at the position and link
                ``info --json`` reports for the replica.
    entry       a checkpoint or backup point the primary captured, with the
                primary's last position once its command returned: a replica at
                that position or later has it, one before it does not.
    complete    after an uncut run: the replica's log and its pack and index
                names equal the primary's.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

import ckpt
from ckpt.cli import run
from ckpt.domain import Origin
from ckpt.exit_codes import exit_code
from ckpt.storage.chunks import ChunkBackend, LocalChunkBackend
from ckpt.storage.chunks.layout import INDEX, PACKS
from ckpt.storage.keyring import parse_key_file
from ckpt.storage.replica_record import ReplicaRecord
from ckpt.store_config import StoreConfig

from ._driver import HOLD
from ._harness import (
    BLOCK,
    DRIVER,
    KILL_POINTS,
    KILLED,
    RESULTS,
    SEED,
    Harness,
    Image,
    MiB,
    Point,
    file_sha256,
)

# Kill points per round after the first run's (a round with two kills a resumed
# run, not a fresh one). A round on the embedded replica takes ~2.5 s on two
# shared cores (captures, a measuring run, the kill, the checks, the resume).
ROUNDS = (2, 1)
# On PostgreSQL + S3 each command on the replica opens its connections and S3
# client (~0.3 s), a capture copied takes ~0.5 s more: the first run's kill point
# (of a smaller store) and one round, ~12 s.
REMOTE_ROUNDS = (1,)
GC_ROUNDS = 2  # a race and its checks: ~4 s
REPLICA_EXIT = 43  # StoreIsReplica (ckpt/exit_codes.py)
PURGED_EXIT = 40  # PointPurged
KEY_FILE = "CKPT_KEY_FILE"


@dataclass
class Entry:
    point: Point
    position: int  # the primary's last position once the command that made it returned


@dataclass
class Replica:
    """A replicate target and what the test knows about it."""

    h: Harness
    to: tuple[str, ...]  # replicate's options naming it
    where: tuple[str, ...]  # the global options that open it
    config: StoreConfig
    label: str
    was_store: bool = False
    of: str | None = None  # the primary store id it reports, once seen
    history: list[int] = field(default_factory=list)  # its positions after each check

    # ------------------------------------------------------------ commands
    def cli(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = run(["--actor", "fault-check", *self.where, *args], out, err)
        return code, out.getvalue(), err.getvalue()

    def json(self, *args: str) -> Any:
        code, out, err = self.cli(*args, "--json")
        assert code == 0, f"{self.h.where} {self.label}: ckpt {' '.join(args)} exited {code}: {err}"
        return json.loads(out)

    def replicate(self) -> dict[str, Any]:
        """An uncut run, in this process."""
        report: dict[str, Any] = self.h.json("replicate", *self.to)
        return report

    def backend(self) -> ChunkBackend:
        return self.config.chunk_backend()

    def names(self) -> tuple[set[str], set[str]]:
        """(pack names, index names) on its chunk backend; none before it exists."""
        if self.config.directory is not None and not (self.config.directory / "chunks").is_dir():
            return set(), set()
        backend = self.backend()
        return set(backend.list(PACKS)), set(backend.list(INDEX))

    def open(self) -> ckpt.Store:
        if self.config.directory is not None:
            return ckpt.Store.open(self.config.directory, actor="fault-check", key=_key())
        return ckpt.Store.open(
            None,
            events=self.config.events,
            chunks=self.config.chunks,
            actor="fault-check",
            key=_key(),
        )


def _key() -> bytes | None:
    """The key the commands in this process use: ``$CKPT_KEY_FILE``, which a test
    of an encrypted primary (a sealed replica) sets."""
    file = os.environ.get(KEY_FILE)
    return parse_key_file(Path(file).read_bytes(), file) if file else None


def _replicas(h: Harness, tmp_path: Path, remote: bool) -> tuple[Replica, Replica]:
    """The replica killed and its measuring twin."""
    made: list[Replica] = []
    for label in ("replica", "measure"):
        if remote:
            from backends import postgres_url, s3_url

            events, chunks = postgres_url(), s3_url()
            made.append(
                Replica(h, ("--to-events", events, "--to-chunks", chunks),
                        ("--events", events, "--chunks", chunks),
                        StoreConfig(None, events, chunks), label)
            )  # fmt: skip
        else:
            where = tmp_path / label
            made.append(Replica(h, ("--to-store", str(where)), ("--store", str(where)),
                                StoreConfig(where), label))  # fmt: skip
    return made[0], made[1]


def _primary_names(h: Harness) -> tuple[set[str], set[str]]:
    backend = StoreConfig(h.store).chunk_backend()
    return set(backend.list(PACKS)), set(backend.list(INDEX))


def _log(run_json: Any) -> list[tuple[int, str]]:
    return [(e["position"], e["link"]) for e in run_json]


def _restore(r: Replica, entries: list[Entry], scratch: Path) -> dict[str, dict[str, str | int]]:
    """Every disk of each entry, restored from the replica: SHA-256 or exit code."""
    target = scratch / "replica-out.raw"
    got: dict[str, dict[str, str | int]] = {}
    with r.open() as store:
        for e in entries:
            one: dict[str, str | int] = {}
            for disk in e.point.disks:
                try:
                    with target.open("wb") as out:
                        store.restore_disk(e.point.vm, e.point.name, disk, out)
                    one[disk] = file_sha256(target)
                except ckpt.CkptError as err:
                    one[disk] = exit_code(err)
                target.unlink(missing_ok=True)
            got[e.point.name] = one
    return got


def check_replica(
    r: Replica,
    entries: list[Entry],
    scratch: Path,
    purges: dict[str, int] | None = None,
    first_run: bool = False,
    every: bool = False,
) -> int | None:
    """The replica after a kill point (or a race): a store that verifies clean, a
    prefix of the primary, writes refused, and the entries it has restore: those
    that arrived since the last check and one older (seeded), or ``every`` one
    (where packs are removed on it). Returns its position (None: a first run
    killed before the target became a store)."""
    h, where = r.h, f"{r.h.where} {r.label}"
    code, out, err = r.cli("info", "--json")
    if code != 0:
        assert first_run and not r.was_store, (
            f"{where} is no longer a store (info exited {code}): {err}"
        )
        return None
    r.was_store = True
    info = json.loads(out)
    replica = info.get("replica")
    assert replica, f"{where} info does not say it is a replica: {info}"
    if r.of is None:
        r.of = replica["of"]
    assert replica["of"] == r.of and replica["promoted_at"] is None, f"{where} info: {replica}"
    position = int(replica["position"])
    checked = r.history[-1] if r.history else 0
    assert position >= checked, f"{where} went back from position {checked} to {position}"
    r.history.append(position)

    report = r.json("verify")
    assert report["ok"] and not report["bad"], f"{where} verify: {report}"
    chain = r.json("verify", "--log")
    assert chain["ok"], f"{where} verify --log: {chain}"
    mine, primary = _log(r.json("log")), _log(h.json("log"))
    assert mine == primary[: len(mine)], f"{where} its log is not a prefix of the primary's"
    assert (mine[-1] if mine else (0, "")) == (position, replica["link"] or ""), (
        f"{where} its log ends at {mine[-1:]}, info says {position} {replica['link']}"
    )
    code, _, err = r.cli("vm", "add", "intruder", "--disk", "D")
    assert code == REPLICA_EXIT and "replica" in err, f"{where} vm add exited {code}: {err}"

    purges = purges or {}
    arrived = [e for e in entries if e.position <= position]
    if not every:
        older = [e for e in arrived if e.position <= checked]
        arrived = [e for e in arrived if e.position > checked]
        arrived += h.rng.sample(older, min(1, len(older)))
    got = _restore(r, arrived, scratch)
    for e in arrived:
        purge = purges.get(e.point.name)
        if purge is not None and purge <= position:  # its purge arrived: refused
            want = {d: PURGED_EXIT for d in e.point.disks}
        else:  # its bytes, even when the primary has purged them since
            want = dict(e.point.disks)
        assert got[e.point.name] == want, (
            f"{where} {e.point.name!r} (primary position {e.position}, purge {purge}) "
            f"restores {got[e.point.name]}, want {want}"
        )
    for vm in {e.point.vm for e in arrived}:
        tree = {t["name"] for t in r.json("tree", vm)}
        later = {e.point.name for e in entries if e.position > position and e.point.vm == vm}
        assert not tree & later, f"{where} has points from after its position: {tree & later}"
    return position


def check_complete(r: Replica, report: dict[str, Any]) -> None:
    """After an uncut run: the replica's log and chunk names are the primary's."""
    h, where = r.h, f"{r.h.where} {r.label} after an uncut run"
    primary = _log(h.json("log"))
    assert (report["position"], report["link"]) == primary[-1], f"{where}: {report}"
    assert _log(r.json("log")) == primary, f"{where}: its log differs from the primary's"
    assert r.names() == _primary_names(h), f"{where}: its packs or index files differ"


def _kill_round(
    h: Harness, r: Replica, m: Replica, kills: int, entries: list[Entry], scratch: Path
) -> None:
    """Time a run of this round's size on the measuring twin, kill ``kills`` runs
    on the replica, check it after each, then resume uncut and check that the
    resume sent exactly what had not arrived."""
    first = not r.was_store
    typical = h.timed("replicate", *m.to)
    for _ in range(kills):
        packs_before = len(r.names()[0])
        at = r.history[-1] if r.history else 0
        outcome = h.kill_point("replicate", *r.to, typical=typical)
        position = check_replica(r, entries, scratch, first_run=first)
        if position is None:
            h.result(outcome, "no store yet")
        elif position == int(h.json("info")["position"]):
            h.result(outcome, "complete")
        elif position > at:
            h.result(outcome, "some events")
        else:
            more = len(r.names()[0]) > packs_before
            h.result(outcome, "packs, no event" if more else "nothing sent")

    packs_there, index_there = r.names()
    packs, index = _primary_names(h)
    assert packs_there <= packs and index_there <= index, f"{h.where} names no primary has"
    before = r.history[-1] if r.history else 0
    events_after = [p for p, _ in _log(h.json("log")) if p > before]
    backend = StoreConfig(h.store).chunk_backend()
    sent = (packs - packs_there) | (index - index_there)
    report = r.replicate()
    h.where += " resumed"
    want = {
        "first_run": not r.was_store,
        "events": len(events_after),
        "packs": len(packs - packs_there),
        "skipped_packs": len(packs & packs_there),
        "index_files": len(index - index_there),
        "bytes": sum(backend.size(n) for n in sent),
        "removed_packs": 0,
    }
    assert {k: report[k] for k in want} == want, f"{h.where}: {report}, want {want}"
    r.was_store = True
    check_complete(r, report)
    verified = r.json("verify")
    assert verified["ok"] and not verified["bad"], f"{h.where} verify: {verified}"


@pytest.mark.parametrize("remote", [False, True], ids=["to sqlite+local", "to postgresql+s3"])
def test_replicate_killed_anywhere_leaves_a_prefix_that_resumes(
    tmp_path: Path, scratch: Path, remote: bool
) -> None:
    h = Harness(f"replicate{' to PostgreSQL + S3' if remote else ''}", tmp_path, scratch)
    r, m = _replicas(h, tmp_path, remote)
    h.init()
    h.ok("vm", "add", "rp", "--disk", "Boot", "--disk", "Data")
    boot = Image(scratch / "boot.raw", 8 * MiB, h.rng)
    data = Image(scratch / "data.raw", 2 * MiB, h.rng, fill=0.3)
    entries: list[Entry] = []

    def capture() -> None:
        boot.mutate(h.rng.randrange(32, 256), h.rng.randrange(1, 4) * MiB)
        data.mutate(h.rng.randrange(8, 64))
        name = f"c{len(entries)}"
        h.ok("checkpoint", "create", "rp", name,
             "--disk", f"Boot={boot.path}", "--disk", f"Data={data.path}")  # fmt: skip
        point = Point("rp", name, {"Boot": boot.sha, "Data": data.sha})
        entries.append(Entry(point, int(h.json("info")["position"])))

    for _ in range(2 if remote else 4):  # the first run: a pack or more each
        capture()
    _kill_round(h, r, m, 1, entries, scratch)
    for kills in REMOTE_ROUNDS if remote else ROUNDS:
        for _ in range(h.rng.randrange(1, 3) if remote else h.rng.randrange(2, 4)):
            capture()
        if h.rng.random() < 0.5:  # events with no pack: a rename
            h.ok("checkpoint", "rename", "rp", entries[-1].point.name, f"r{len(entries)}")
            entries[-1].point.name = f"r{len(entries)}"
            entries[-1].position = int(h.json("info")["position"])
        _kill_round(h, r, m, kills, entries, scratch)

    h.where = f"[{h.kind}: a run with nothing to send]"
    report = r.replicate()
    assert (report["events"], report["packs"], report["index_files"], report["bytes"]) == (
        0, 0, 0, 0,
    ), f"{h.where}: {report}"  # fmt: skip


# ------------------------------------------------------------------ gc racing a run
@dataclass
class Race:
    """A replicate and a gc started together; one of them maybe SIGKILLed."""

    killed: str  # "gc", "replicate" or "neither"
    codes: dict[str, int]
    errors: dict[str, str]


def _held(h: Harness, args: tuple[str, ...]) -> subprocess.Popen[bytes]:
    """The driver with its imports done, waiting for a line on stdin to run."""
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), "--store", str(h.store), "--actor", "fault", *args],
        cwd=h.work,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, HOLD: "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == b"go\n", f"{h.where} the driver did not start: {line!r}"
    return proc


def _race(h: Harness, r: Replica, typical: float) -> Race:
    """Start ``replicate`` and ``gc --grace 0`` a seeded offset apart (gc up to
    ``typical`` earlier, so that its deletes can fall in the copy of the packs,
    or up to ``typical / 2`` later); SIGKILL the seeded one of them (or neither)
    at a seeded moment after the first started; wait for both."""
    victim = h.delays.choice(("gc", "replicate", "neither"))
    offset = h.delays.uniform(-typical, typical / 2)  # replicate's start minus gc's
    kill_at = h.delays.uniform(0, typical)
    procs = {"replicate": _held(h, ("replicate", *r.to)), "gc": _held(h, ("gc", "--grace", "0"))}
    order = ["gc", "replicate"] if offset < 0 else ["replicate", "gc"]
    began = time.monotonic()
    for i, what in enumerate(order):
        time.sleep(max(0.0, i * abs(offset) - (time.monotonic() - began)))
        stdin = procs[what].stdin
        assert stdin is not None
        stdin.write(b"run\n")
        stdin.flush()
    if victim != "neither":
        time.sleep(max(0.0, kill_at - (time.monotonic() - began)))
        with contextlib.suppress(ProcessLookupError):
            procs[victim].send_signal(signal.SIGKILL)
    codes, errors = {}, {}
    for what, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        codes[what], errors[what] = proc.returncode, err.decode()
    h.kills += 1
    label = f"replicate racing gc ({victim} killed)"
    KILL_POINTS[label] += 1
    KILLED[label] += victim != "neither" and codes[victim] == -signal.SIGKILL
    h.where = (
        f"[CKPT_FAULT_SEED={SEED} {h.kind} race #{h.kills}: replicate started "
        f"{offset * 1000:+.0f} ms after gc, {victim} SIGKILL at {kill_at * 1000:.0f} ms; "
        f"exits {codes}]"
    )
    for what, code in codes.items():
        if code != -signal.SIGKILL:
            assert code == 0, f"{h.where} {what} failed on its own: {errors[what]}"
    RESULTS[label, ", ".join(f"{w} {'killed' if c < 0 else 'done'}" for w, c in codes.items())] += 1
    return Race(victim, codes, errors)


def _purges(h: Harness) -> dict[str, int]:
    """Point name -> the position of the purge in force that names it."""
    purged: dict[str, int] = {}
    for e in h.json("log"):
        if e["operation"] == "content-purged":
            purged.update({p["name"]: e["position"] for p in e["details"]["points"]})
        elif e["operation"] == "purge-withdrawn":
            gone = e["details"]["purge_position"]
            purged = {n: p for n, p in purged.items() if p != gone}
    return purged


class Purging:
    """A running VM with backup points, some of which a ``forget`` purges: the
    primary's gc then removes and repacks packs."""

    def __init__(self, h: Harness, scratch: Path) -> None:
        self.h = h
        h.init()
        h.ok("vm", "add", "gr", "--disk", "D")
        h.ok("vm", "start", "gr")
        self.disk = Image(scratch / "d.raw", 6 * MiB, h.rng)
        h.ok("checkpoint", "create", "gr", "base", "--disk", f"D={self.disk.path}")
        point = Point("gr", "base", {"D": self.disk.sha})
        self.entries = [Entry(point, int(h.json("info")["position"]))]

    def sync(self, garbage: float = 0.5) -> None:
        """A backup point; with probability ``garbage`` garbage in its pack first
        (a capture that died after its chunks were flushed): gc then repacks it,
        not only removes packs."""
        h, disk = self.h, self.disk
        new = disk.mutate(h.rng.randrange(64, 256), h.rng.randrange(0, 2) * MiB)
        if h.rng.random() < garbage:
            opened = ckpt.Store.open(h.store, key=_key())
            with opened as store, store.chunks.writer() as writer:
                for block in new:
                    writer.add(block)
                for _ in range(h.rng.randrange(64, 256)):
                    writer.add(h.rng.randbytes(BLOCK))
        name = f"b{len(self.entries)}"
        h.ok("sync", "gr", "--disk", f"D={disk.path}", "--name", name)
        point = Point("gr", name, {"D": disk.sha}, backup=True)
        self.entries.append(Entry(point, int(h.json("info")["position"])))


def test_gc_racing_replicate_leaves_a_replica_that_completes(tmp_path: Path, scratch: Path) -> None:
    """A primary gc that repacks and removes packs (after a purge, and over
    garbage a killed capture left) while a replicate runs, either of them killed
    now and then: the replica stays clean, a point whose purge has not arrived
    still restores, and the next run makes it complete."""
    h = Harness("replicate racing gc", tmp_path, scratch)
    r, _ = _replicas(h, tmp_path, remote=False)
    p = Purging(h, scratch)
    for _ in range(3):
        p.sync()
    typical = h.timed("replicate", *r.to)  # the first run, uncut
    r.was_store = True
    check_complete(r, r.replicate())

    entries = p.entries
    for _ in range(GC_ROUNDS):
        for _ in range(h.rng.randrange(2, 4)):
            p.sync()
        h.ok("forget", "gr", "--keep-last", str(h.rng.randint(1, 2)))
        race = _race(h, r, typical)
        purges = _purges(h)
        check_replica(r, entries, scratch, purges, every=True)
        report = r.replicate()
        print(f"{h.where} the uncut run after it: {report}")  # shown with a failure
        h.where += " then an uncut run"
        if race.killed == "gc" and race.codes["gc"] < 0:  # the primary's gc, finished
            h.ok("gc", "--grace", "0")
            report = r.replicate()
        check_complete(r, report)
        check_replica(r, entries, scratch, purges, every=True)
        report = r.replicate()
        assert (report["events"], report["packs"], report["removed_packs"]) == (0, 0, 0), (
            f"{h.where} a second uncut run still had work: {report}"
        )


def test_a_first_run_killed_before_its_marker_is_resumed(
    tmp_path: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seeded kill point #1 found it: a first run into a directory killed after
    the replica's event log was created and before its marker was written (~0.4 s
    of a 0.5 s first run on two shared cores) left a directory every later run
    refused ("holds events.sqlite but no ckpt-store.json"). The next run must make
    it the replica instead: it holds no event and no pack."""
    h = Harness("replicate killed before its marker", tmp_path, scratch)
    r, _ = _replicas(h, tmp_path, remote=False)
    h.init()
    h.ok("vm", "add", "m", "--disk", "D")
    disk = Image(scratch / "d.raw", 1 * MiB, h.rng)
    h.ok("checkpoint", "create", "m", "c", "--disk", f"D={disk.path}")

    def killed(self: StoreConfig) -> None:
        raise KeyboardInterrupt  # the kill, where the marker would be written

    with monkeypatch.context() as patched:
        patched.setattr(StoreConfig, "write_marker", killed)
        code = run(["--store", str(h.store), "replicate", *r.to], io.StringIO(), io.StringIO())
        assert code != 0, "the run was not cut"
    assert not (tmp_path / "replica" / "ckpt-store.json").exists()
    assert (tmp_path / "replica" / "events.sqlite").exists()
    report = r.replicate()
    assert report["first_run"] and report["packs"] >= 1, report
    check_complete(r, report)
    entry = Entry(Point("m", "c", {"D": disk.sha}), int(h.json("info")["position"]))
    assert check_replica(r, [entry], scratch, every=True) == entry.position


@pytest.mark.parametrize(
    ("purge", "moment"),
    [
        ("before the run", "its first fetch of a pack"),
        ("after its cut", "its first fetch of a pack"),
        ("none", "its listing of index files"),
    ],
)
def test_packs_a_gc_moves_during_the_copy_are_fetched_where_they_went(
    tmp_path: Path, scratch: Path, purge: str, moment: str
) -> None:
    """The race made certain: a gc of the primary runs inside the run (in its
    first fetch of a pack, after it read its cut and listed the packs; or when it
    lists the index files, after it copied the packs), removing and repacking
    packs the replica lacked: garbage a killed capture left, and the chunks of a
    purge recorded before the run or after its cut (a ``forget`` at the same
    moment). The replica must verify clean and every point it has restore (one
    purged after its position: with its bytes); the next run completes it."""
    h = Harness(f"replicate while gc moves packs (purge {purge}, in {moment})", tmp_path, scratch)
    r, _ = _replicas(h, tmp_path, remote=False)
    p = Purging(h, scratch)
    p.sync()
    r.replicate()
    r.was_store = True
    for _ in range(4):
        p.sync(garbage=1.0)
    forget = ["--store", str(h.store), "forget", "gr", "--keep-last", "1"]
    gc = ["--store", str(h.store), "gc", "--grace", "0"]
    if purge == "before the run":
        h.ok(*forget[2:])
    lacked = _primary_names(h)[0] - r.names()[0]
    moved: list[set[str]] = []
    with ckpt.Store.open(h.store, actor="fault-check") as store:
        backend = store.chunks.backend

        def gc_now() -> None:
            listed = set(real_list(PACKS))
            if purge == "after its cut":
                assert run(forget, io.StringIO(), io.StringIO()) == 0, "forget failed"
            assert run(gc, io.StringIO(), io.StringIO()) == 0, "the primary's gc failed"
            moved.append(listed - set(real_list(PACKS)))

        real_get, real_list = backend.get, backend.list

        def get(name: str) -> bytes:
            if not moved and moment == "its first fetch of a pack" and name.startswith(PACKS):
                gc_now()
            return real_get(name)

        def list_(prefix: str) -> Iterator[str]:
            if not moved and moment == "its listing of index files" and prefix == INDEX:
                gc_now()
            return real_list(prefix)

        backend.get = get  # type: ignore[method-assign]
        backend.list = list_  # type: ignore[method-assign]
        report = store.replicate(to_dir=r.config.directory).as_dict()
    assert moved and moved[0] & lacked, f"the gc moved no pack the run lacked: {moved}"
    h.where = f"[{h.kind}: the run during which gc moved {len(moved[0])} packs: {report}]"
    purges = _purges(h)
    assert check_replica(r, p.entries, scratch, purges, every=True) == report["position"]
    report = r.replicate()
    check_complete(r, report)
    assert check_replica(r, p.entries, scratch, purges, every=True) == report["position"]


def test_a_pack_copied_in_this_run_is_not_removed_when_gc_repacks_it(
    tmp_path: Path, scratch: Path
) -> None:
    """A pack written after the run listed the primary's packs the first time
    (``before``, for the removal rule) and before it read its cut, copied by the
    run, then repacked by a gc while the run reads the events to send (after its
    last listing of packs): it must stay on the replica, whose events reference
    its chunks (the run did not copy the pack they moved to)."""
    h = Harness("replicate: a pack of this run repacked", tmp_path, scratch)
    r, _ = _replicas(h, tmp_path, remote=False)
    p = Purging(h, scratch)
    p.sync()
    r.replicate()
    r.was_store = True
    p.sync(garbage=1.0)  # a pack the replica lacks, so that the run removes nothing else
    done: list[str] = []
    with ckpt.Store.open(h.store, actor="fault-check") as store:
        backend, app = store.chunks.backend, store.unit_of_work.app
        real_list, real_rows = backend.list, app.read_rows

        def list_(prefix: str) -> Iterator[str]:
            names = list(real_list(prefix))
            if prefix == PACKS and not done:  # the first listing: ``before``
                done.append("synced")
                p.sync(garbage=1.0)  # its pack holds garbage: gc repacks it
            return iter(names)

        def read_rows(start: int = 1, stop: int | None = None) -> Iterator[Any]:
            if start > 1 and done == ["synced"]:  # the events to send (not the prefix check)
                done.append("gc")
                gc = ["--store", str(h.store), "gc", "--grace", "0"]
                assert run(gc, io.StringIO(), io.StringIO()) == 0, "the primary's gc failed"
            return real_rows(start, stop)

        backend.list = list_  # type: ignore[method-assign]
        app.read_rows = read_rows  # type: ignore[method-assign]
        report = store.replicate(to_dir=r.config.directory).as_dict()
    assert done == ["synced", "gc"], f"the run did not read as this test expects: {done}"
    h.where = f"[{h.kind}: {report}]"
    assert report["position"] == p.entries[-1].position, "the sync was not before the cut"
    assert check_replica(r, p.entries, scratch, every=True) == report["position"]
    check_complete(r, r.replicate())


class Cut(BaseException):
    """The kill, raised in this process at a write of the run (no handler in ckpt
    catches a BaseException that is not KeyboardInterrupt or SystemExit)."""


BULK_EVENTS = 1100  # renames: more than one batch of events (BATCH: 1,000 a transaction)


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_replicate_cut_at_each_write_in_turn_leaves_a_prefix_that_resumes(
    tmp_path: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch, sealed: bool
) -> None:
    """Every write of a run, in turn, as its last: the seeded kill points land
    where the time goes (opening the stores, the copy), these at each write
    point. One run holds every kind: pack puts, index puts, two batches of
    events with their progress, removals of packs the primary's gc removed.
    Run i is cut at its second write (after one more write than run i - 1 made,
    so the runs walk through the writes in order); after each cut the replica is
    checked; the last run is uncut and the replica complete. Sealed: the primary
    is encrypted, the runs reach the replica without the key (it stores the
    ciphertext), the checks open it with the key."""
    options: tuple[str, ...] = ()
    if sealed:
        monkeypatch.setenv(KEY_FILE, str(tmp_path / "key"))  # init writes a new key there
        options = ("--encrypt",)
    h = Harness(
        f"replicate cut at each write{' (sealed)' if sealed else ''}", tmp_path, scratch, options
    )
    r, _ = _replicas(h, tmp_path, remote=False)
    p = Purging(h, scratch)
    for _ in range(2):
        p.sync(garbage=1.0)
    r.replicate()
    r.was_store = True
    h.ok("forget", "gr", "--keep-last", "1")
    h.ok("gc", "--grace", "0")  # the run removes the packs gc removed or repacked
    p.sync()
    h.ok("vm", "add", "bulk")
    h.ok("checkpoint", "create", "bulk", "renamed")
    with ckpt.Store.open(h.store, actor="bulk", key=_key()) as store:  # as test_fault_maintenance
        vm = store.vm("bulk")
        (cp,) = vm.checkpoints.values()
        for i in range(BULK_EVENTS):
            origin = Origin("bulk", "fault-test", datetime.now(UTC), uuid4())
            vm.rename_checkpoint(origin, cp.id, f"renamed-{i}")
        store.app.save(vm)

    writes: list[str] = []
    root = str(r.config.directory)

    def cut_at_second(what: str) -> None:
        writes.append(what)
        if len(writes) == 2:
            raise Cut

    put, delete = LocalChunkBackend.put, LocalChunkBackend.delete
    progress = ReplicaRecord.set_replica_progress

    def put_(self: LocalChunkBackend, name: str, data: bytes) -> None:
        if str(self.root).startswith(root):
            cut_at_second(f"put {name.split('/')[0]}")
        put(self, name, data)

    def delete_(self: LocalChunkBackend, name: str) -> None:
        if str(self.root).startswith(root):
            cut_at_second(f"delete {name.split('/')[0]}")
        delete(self, name)

    def progress_(self: ReplicaRecord, c: Any, primary_id: str, position: int, link: bytes) -> None:
        cut_at_second(f"events to {position}")  # in the batch's transaction: cut, rolled back
        progress(self, c, primary_id, position, link)

    cuts: list[str] = []
    purges = _purges(h)
    for _ in range(40):  # ~20 writes: the bound only stops a run that never ends
        writes.clear()
        with monkeypatch.context() as patched:
            patched.setattr(LocalChunkBackend, "put", put_)
            patched.setattr(LocalChunkBackend, "delete", delete_)
            patched.setattr(ReplicaRecord, "set_replica_progress", progress_)
            with ckpt.Store.open(h.store, actor="fault-check", key=_key()) as store:
                try:
                    store.replicate(to_dir=r.config.directory)
                except Cut:
                    pass
                else:
                    break
        cuts.append(writes[0])
        h.where = (
            f"[{h.kind}: run {len(cuts)} cut after its write {writes[0]!r}, before {writes[1]!r}]"
        )
        check_replica(r, p.entries, scratch, purges, every=len(cuts) % 4 == 0)
    kinds = {
        c.split(" ")[0] + (" " + c.split(" ")[1] if c.startswith(("put", "delete")) else "")
        for c in cuts
    }
    assert kinds >= {"put packs", "put index", "events", "delete packs", "delete index"}, cuts
    assert sum(c.startswith("events") for c in cuts) >= 2, cuts
    h.where = f"[{h.kind}: the uncut run after {len(cuts)} cut ones]"
    print(f"{h.where} cut after: {cuts}")  # shown with a failure
    check_complete(r, r.replicate())
    assert check_replica(r, p.entries, scratch, purges, every=True) is not None
    if sealed:  # the primary's ciphertext as it is; reading it needs the key
        name = sorted(_primary_names(h)[0])[-1]
        assert r.backend().get(name) == StoreConfig(h.store).chunk_backend().get(name)
        monkeypatch.delenv(KEY_FILE)
        code, _, err = r.cli("restore", "gr", "base", "--disk", "D", "-o", str(scratch / "x"))
        assert code != 0 and "key" in err, f"{h.where} restore without the key: {code} {err}"
