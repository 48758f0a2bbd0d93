#!/usr/bin/env python3
"""Replication benchmark (issue 18): keep a second store up to date after a small change.

Terms:
    primary      the store (or repository) that takes the backups.
    replica      the second store that follows it: ``ckpt replicate``, ``restic copy``, or an
                 ``rsync`` of a borg repository (borg 1.x has no copy command).
    first copy   the first run into an empty replica: it sends everything.
    incremental  the run after one new backup of the disk with ``--change-pct`` % of its
                 blocks rewritten at seeded places (scattered 4 KiB writes).
    grew         what the new backup added to the primary. For ckpt the brief's measure:
                 ``ckpt stats``' ``stored_bytes`` after less before (compressed chunk bytes;
                 pack tables, index files and events not counted); for restic and borg the
                 repository directory's apparent size after less before.
    sent         what the incremental run moved to the replica. ckpt: the report's ``bytes``
                 (packs + index files, events not counted); restic: the destination
                 repository's growth; borg: rsync's "Total bytes sent".

The issue's target: ckpt's incremental run sends <= 1.1x the new stored bytes (``sent / grew``).

One disk image of ``--size-gib`` GiB of unique 4 KiB blocks, each ``--random-bytes`` seeded
random bytes and then text (1,024: compresses to ~0.27, about what real system disks give with
ckpt's grouped zstd, 0.37), and a second image with ``--change-pct`` % of the blocks rewritten.
Every tool then does, each command a process of its own (wall seconds, peak RSS from
``os.wait4``, other processes' CPU seconds while it ran):

    ckpt:   init, vm add, checkpoint create c0 (base image); replicate --to-store R (first
            copy); checkpoint create c1 (changed image); replicate (incremental); replicate
            (no-op: nothing new); then, unless --no-check, the replica's info (its position
            must be the primary's), verify --log, and restore c1 from the replica, compared
            byte for byte with the changed image.
    restic: init A; init B --copy-chunker-params; backup base to A; copy A -> B; backup the
            changed image to A; copy (incremental); copy (no-op); B must list 2 snapshots.
    borg:   init -e none A; create A::c0; rsync -a --delete A/ B/ (and, into another B, with
            --fsync: durable, as ckpt's and restic's copies are); create A::c1; rsync
            (incremental); rsync (no-op); each B must list 2 archives.

Usage:  python3 bench/bench_replicate.py [--size-gib 4] [--change-pct 1] [--work DIR]
            [--tools ckpt,restic,borg] [--ckpt CMD] [--json FILE] [--keep] [--no-check]
Stdlib only. MB = 10^6 bytes, MiB = 2^20, GiB = 2^30. Needs 2x the image size under --work
for the two images, plus the stores (~0.3x the image each at the default content).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, NoReturn, TextIO

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_content  # noqa: E402  (bench/ is not a package: reuse its helpers by path)

Result = dict[str, Any]
BLOCK = 4096
GIB = 1 << 30
MIB = 1 << 20
WRITE_BATCH = 256  # blocks per write(2): 1 MiB buffers keep the harness's own RSS small
TEXT = b"the quick brown fox jumps over the lazy dog; " * 100
SEED = 20261202
VM, DISK = "bench", "disk"
TARGET_RATIO = 1.1  # the issue: bytes sent <= 1.1x the new stored bytes
BUSY_CPU_S = 1.0  # other processes' CPU seconds during one command worth a note
log = bench_content.log


def die(msg: str, code: int = 2) -> NoReturn:
    bar = "!" * 78
    print(f"\n{bar}\nbench_replicate: FAILED: {msg}\n{bar}", file=sys.stderr, flush=True)
    sys.exit(code)


# ----------------------------------------------------------------------------- images
def block(seed: int, random_bytes: int) -> bytes:
    """A unique 4 KiB block: ``random_bytes`` seeded random bytes, then text."""
    head = hashlib.shake_128(seed.to_bytes(8, "little")).digest(random_bytes)
    return head + TEXT[seed % 64 : seed % 64 + BLOCK - random_bytes]


def write_base(path: str, blocks: int, random_bytes: int) -> None:
    with open(path, "wb", buffering=0) as f:
        for start in range(0, blocks, WRITE_BATCH):
            end = min(blocks, start + WRITE_BATCH)
            f.write(b"".join(block(i, random_bytes) for i in range(start, end)))


RUN_BLOCKS = 256  # --pattern clustered: rewritten in aligned 1 MiB runs


def write_changed(
    base: str, path: str, blocks: int, pct: float, random_bytes: int, clustered: bool = False
) -> int:
    """A copy of ``base`` with ``pct`` % of its blocks (at least one) rewritten at seeded
    places with content found nowhere else; returns how many blocks changed. Scattered:
    single blocks; ``clustered``: whole aligned runs of RUN_BLOCKS blocks."""
    shutil.copyfile(base, path)
    n = max(1, round(blocks * pct / 100))
    rng = random.Random(SEED)
    if clustered and blocks >= RUN_BLOCKS:
        runs = rng.sample(range(blocks // RUN_BLOCKS), max(1, n // RUN_BLOCKS))
        places = sorted(r * RUN_BLOCKS + k for r in runs for k in range(RUN_BLOCKS))
    else:
        places = sorted(rng.sample(range(blocks), n))
    with open(path, "r+b", buffering=0) as f:
        for k, i in enumerate(places):
            os.pwrite(f.fileno(), block(blocks + k, random_bytes), i * BLOCK)
    return len(places)


def files_equal(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MIB), fb.read(MIB)
            if x != y:
                return False
            if not x:
                return True


# ----------------------------------------------------------------------------- running
def run(
    cmd: list[str], logf: TextIO, env: dict[str, str] | None = None, cwd: str | None = None
) -> Result:
    """Run cmd: wall and CPU seconds, the child's peak RSS (``os.wait4``), other processes'
    CPU seconds meanwhile, and its stdout (``out``); dies on a non-zero exit."""
    logf.write(f"$ {shlex.join(cmd)}\n")
    logf.flush()
    with tempfile.TemporaryFile() as out:
        b0, t0 = bench_content.busy_cpu_s(), time.perf_counter()
        p = subprocess.Popen(
            cmd, stdout=out, stderr=logf, stdin=subprocess.DEVNULL, env=env, cwd=cwd
        )
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        b1 = bench_content.busy_cpu_s()
        p.returncode = rc = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    logf.write(text[-4000:] + f"\n[exit {rc}, {wall:.3f} s, maxrss {ru.ru_maxrss} KiB]\n")
    logf.flush()
    if rc != 0:
        with open(logf.name, errors="replace") as f:
            tail = f.read()[-3000:]
        die(f"command failed (exit {rc}): {shlex.join(cmd)}\n--- end of {logf.name} ---\n{tail}")
    cpu = ru.ru_utime + ru.ru_stime
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "maxrss_mib": round(ru.ru_maxrss / 1024, 1),
        "foreign_cpu_s": round(max(0.0, (b1 - b0) - cpu), 2),
        "out": text,
    }


def figures(r: Result) -> Result:
    """A run's figures without its stdout."""
    return {k: v for k, v in r.items() if k != "out"}


def size(path: str) -> int:
    return bench_content.dir_bytes(path)[0]


# ----------------------------------------------------------------------------- ckpt
# ``--history N``: N cheap events (checkpoints created, renamed and deleted, power changes; no
# content) over VMs of HISTORY_PER_VM events each, written straight through the application
# before the benchmark's VM is added, so a run's cost in the length of the log shows.
HISTORY_PER_VM = 1000
HISTORY = r"""
import random, sys, uuid
from datetime import UTC, datetime, timedelta
from ckpt import CheckpointType, DiskFormat, Store
from ckpt.domain import Origin, VirtualMachine
from ckpt.domain.checkpoint_rules import MAX_CHECKPOINTS

path, events, per_vm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng, clock = random.Random(1), [datetime(2026, 1, 1, tzinfo=UTC)]

def origin():
    clock[0] += timedelta(seconds=1)
    return Origin("bench", "host", clock[0], uuid.UUID(int=rng.getrandbits(128)))

with Store.open(path, actor="bench", host="host") as store:
    app, k = store.app, 0
    while app.last_position() < events:
        vm = VirtualMachine.register(origin(), f"history{k:05d}", [("D", DiskFormat.VHDX)], None,
                                     CheckpointType.STANDARD)
        k += 1
        goal = min(per_vm, events - app.last_position())
        while vm.version < goal:
            for _ in range(min(100, goal - vm.version)):
                live, r = list(vm.checkpoints), rng.random()
                if len(live) >= MAX_CHECKPOINTS:
                    vm.delete_checkpoint(origin(), rng.choice(live))
                elif r < 0.4 or not live:
                    vm.create_checkpoint(origin())
                elif r < 0.6:
                    vm.rename_checkpoint(origin(), rng.choice(live), f"renamed {vm.version}")
                elif r < 0.8:
                    vm.delete_checkpoint(origin(), rng.choice(live))
                elif vm.state.value == "running":
                    vm.stop(origin())
                else:
                    vm.start(origin())
            app.save(vm)
        app.save(vm)
"""


def add_history(ckpt: list[str], primary: str, events: int, logf: TextIO) -> Result:
    """``events`` events of no content in the primary (see HISTORY), with its Python."""
    python = os.path.join(os.path.dirname(shutil.which(ckpt[0]) or ckpt[0]), "python")
    if not os.access(python, os.X_OK):
        python = sys.executable
    cmd = [python, "-c", HISTORY, primary, str(events), str(HISTORY_PER_VM)]
    # Not from the repository's root, where `import ckpt` would find the source tree (the
    # package is installed with a different layout).
    return figures(run(cmd, logf, cwd=os.path.dirname(primary)))


def bench_ckpt(
    ckpt: list[str],
    work: str,
    base: str,
    changed: str,
    logf: TextIO,
    check: bool,
    encrypted: bool = False,
    history: int = 0,
) -> Result:
    """With ``encrypted``, the primary is an encrypted store (``init --encrypt``): it is
    replicated sealed (the replica is written without the key)."""
    primary, replica = os.path.join(work, "ckpt-primary"), os.path.join(work, "ckpt-replica")
    key = ["--key-file", os.path.join(work, "store.key")] if encrypted else []
    p, r = [*ckpt, "--store", primary, *key], [*ckpt, "--store", replica]

    def stored() -> int:
        return int(json.loads(run([*p, "stats", "--json"], logf)["out"])["total"]["stored_bytes"])

    def replicate() -> Result:
        res = run([*p, "replicate", "--to-store", replica, "--json"], logf)
        res["report"] = json.loads(res.pop("out"))
        res["replica_bytes"] = size(replica)
        return res

    startup = run([*ckpt, "--help"], logf)  # the floor every command pays: Python's start
    run([*p, "init", *(["--encrypt"] if encrypted else [])], logf)
    made = add_history(ckpt, primary, history, logf) if history else None
    if made:
        log(f"ckpt: {history:,} events of history written in {made['wall_s']:.1f} s")
    run([*p, "vm", "add", VM, "--disk", DISK, "--checkpoint-type", "standard"], logf)
    bench_content.warm([base])
    c0 = run([*p, "checkpoint", "create", VM, "c0", "--disk", f"{DISK}={base}"], logf)
    log(f"ckpt: base checkpoint {c0['wall_s']:.1f} s")
    stored0, primary0 = stored(), size(primary)
    first = replicate()
    log(f"ckpt: first replicate {first['wall_s']:.1f} s, {first['report']['bytes'] / 1e6:,.1f} MB")
    bench_content.warm([changed])
    c1 = run([*p, "checkpoint", "create", VM, "c1", "--disk", f"{DISK}={changed}"], logf)
    stored1, primary1 = stored(), size(primary)
    incr = replicate()
    log(f"ckpt: incremental replicate {incr['wall_s']:.2f} s, {incr['report']['bytes']:,} B")
    noop = replicate()
    res: Result = {
        "startup": figures(startup),
        "history": history,
        "capture_base": figures(c0),
        "capture_changed": figures(c1),
        "first": first,
        "incremental": incr,
        "noop": noop,
        "grew": stored1 - stored0,
        "primary_dir_grew": primary1 - primary0,
        "replica_dir_grew": incr["replica_bytes"] - first["replica_bytes"],
        "sent": incr["report"]["bytes"],
        "first_sent": first["report"]["bytes"],
    }
    if check:
        res["check"] = check_ckpt(p, r, key, work, changed, logf)
        res["resume"] = resume_ckpt(p, key, ckpt, work, first, logf)
    return res


RESUME_AT = 0.5  # of the first copy's bytes: the kill lands in the middle of the packs
POLL_S = 0.01


def sent_so_far(replica: str, hidden: bool = False) -> int:
    """Bytes under the replica's packs/ and index/: every file (bytes sent), or with
    ``hidden`` only the temporary ones (``.name.<random>.tmp``: puts cut short)."""
    total = 0
    for d in ("packs", "index"):
        for dp, _dns, fns in os.walk(os.path.join(replica, "chunks", d)):
            total += sum(
                os.lstat(os.path.join(dp, fn)).st_size
                for fn in fns
                if not hidden or fn.startswith(".")
            )
    return total


def resume_ckpt(
    p: list[str], key: list[str], ckpt: list[str], work: str, first: Result, logf: TextIO
) -> Result:
    """A first copy into a second replica, killed (SIGKILL) once ``RESUME_AT`` of the first
    copy's bytes are in its chunk directory, then run again: the replica verifies, reaches
    the primary's position, and the second run sends only what the killed one did not leave.
    ``stranded``: bytes of temporary files the killed run left (puts cut short; nothing
    removes them); ``resent``: bytes of complete files sent twice, what the killed run left
    in complete files plus what the second run sent, less what the finished first replica
    holds (0 when the second run sends only what is missing).
    """
    replica = os.path.join(work, "ckpt-replica-2")
    cmd = [*p, "replicate", "--to-store", replica, "--json"]
    logf.write(f"$ {shlex.join(cmd)}  (killed at {RESUME_AT:.0%} of the bytes)\n")
    logf.flush()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=logf)
    while proc.poll() is None and sent_so_far(replica) < first["report"]["bytes"] * RESUME_AT:
        time.sleep(POLL_S)
    proc.kill()
    killed_after = time.perf_counter() - t0
    finished = proc.wait() == 0
    left, stranded = sent_so_far(replica), sent_so_far(replica, hidden=True)
    again = run(cmd, logf)
    rep = json.loads(again.pop("out"))
    verify = run([*ckpt, "--store", replica, *key, "verify", "--log"], logf)
    whole = json.loads(run([*p, "info", "--json"], logf)["out"])["position"]
    if rep["position"] != whole:
        die(f"the resumed replica is at position {rep['position']}, not {whole}", 1)
    resent = left - stranded + rep["bytes"] - sent_so_far(os.path.join(work, "ckpt-replica"))
    log(
        f"ckpt: a first copy killed after {killed_after:.1f} s left {left:,} B; the next run "
        f"sent {rep['bytes']:,} B in {again['wall_s']:.1f} s; sent twice: {resent:,} B"
    )
    return {"killed_after_s": round(killed_after, 2), "finished_before_kill": finished,
            "left_bytes": left, "again": again, "report": rep, "resent": resent,
            "stranded": stranded,
            "verify_log": figures(verify)}  # fmt: skip


def check_ckpt(
    p: list[str], r: list[str], key: list[str], work: str, changed: str, logf: TextIO
) -> Result:
    """The replica is at the primary's position, its hash chain verifies, and c1 restored
    from it is the changed image (every reading command on an encrypted replica needs the
    key: it was only written without it)."""
    mine = json.loads(run([*p, "info", "--json"], logf)["out"])
    r = [*r, *key]
    theirs = json.loads(run([*r, "info", "--json"], logf)["out"])
    if (theirs.get("replica") or {}).get("position") != mine["position"]:
        die(f"the replica is not at the primary's position {mine['position']}: {theirs}", 1)
    verify = run([*r, "verify", "--log"], logf)
    out = os.path.join(work, "restored.img")
    restore = run([*r, "restore", VM, "c1", "--disk", DISK, "-o", out], logf)
    same = files_equal(out, changed)
    os.unlink(out)
    if not same:
        die("c1 restored from the replica differs from the changed image", 1)
    log(f"ckpt: replica checked (verify --log {verify['wall_s']:.1f} s, restore identical)")
    return {"position": mine["position"], "verify_log": figures(verify),
            "restore": figures(restore), "identical": same}  # fmt: skip


# ----------------------------------------------------------------------------- anchors
def stage(work: str, image: str) -> str:
    """A directory holding the image as disk.img (a hard link), the VM's folder as a backup
    tool would see it; the same path for both backups, as for a real VM."""
    src = os.path.join(work, "stage")
    os.makedirs(src, exist_ok=True)
    link = os.path.join(src, "disk.img")
    if os.path.lexists(link):
        os.unlink(link)
    os.link(image, link)
    return src


def bench_restic(work: str, base: str, changed: str, logf: TextIO) -> Result:
    w = os.path.join(work, "restic")
    a, b = os.path.join(w, "primary"), os.path.join(w, "replica")
    env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_FROM_PASSWORD": "bench",
           "RESTIC_CACHE_DIR": os.path.join(w, "cache")}  # fmt: skip
    run(["restic", "-r", a, "init"], logf, env)
    # Without the source's chunker parameters a later backup straight into B would not
    # deduplicate against the copied data (restic copy --help).
    run(["restic", "-r", b, "init", "--from-repo", a, "--copy-chunker-params"], logf, env)
    copy = ["restic", "-r", b, "copy", "--from-repo", a]
    bench_content.warm([base])
    b0 = run(["restic", "-r", a, "backup", "-q", "--host", VM, stage(w, base)], logf, env)
    a0, r0 = size(a), size(b)
    first = run(copy, logf, env)
    a1, r1 = size(a), size(b)
    bench_content.warm([changed])
    b1 = run(["restic", "-r", a, "backup", "-q", "--host", VM, stage(w, changed)], logf, env)
    a2 = size(a)
    incr = run(copy, logf, env)
    r2 = size(b)
    noop = run(copy, logf, env)
    snaps = json.loads(run(["restic", "-r", b, "snapshots", "--json"], logf, env)["out"])
    if len(snaps) != 2:
        die(f"restic: the replica lists {len(snaps)} snapshots, not 2", 1)
    log(f"restic: first copy {first['wall_s']:.1f} s, incremental {incr['wall_s']:.2f} s")
    return {"capture_base": figures(b0), "capture_changed": figures(b1), "first": figures(first),
            "incremental": figures(incr), "noop": figures(noop), "grew": a2 - a1,
            "sent": r2 - r1, "first_sent": r1 - r0, "primary_base": a0}  # fmt: skip


RSYNC_SENT = re.compile(r"Total bytes sent: ([\d,]+)")


def bench_borg(work: str, base: str, changed: str, logf: TextIO) -> dict[str, Result]:
    """Two replicas of one borg repository: plain ``rsync -a`` (``borg``), and with
    ``--fsync`` (``borg-fsync``), durable as ckpt's and restic's copies are."""
    w = os.path.join(work, "borg")
    a = os.path.join(w, "primary")
    env = {**os.environ, "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
           "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
           "BORG_BASE_DIR": os.path.join(w, "base")}  # fmt: skip
    # rsync copies changed files whole between local paths (--whole-file is its default
    # there): borg 1.x writes new segment files and rewrites its index and hints.
    syncs = {
        "borg": ["rsync", "-a", "--delete", "--stats", a + "/", os.path.join(w, "replica/")],
        "borg-fsync": ["rsync", "-a", "--fsync", "--delete", "--stats", a + "/",
                       os.path.join(w, "replica-fsync/")],
    }  # fmt: skip
    os.makedirs(w)
    run(["borg", "init", "-e", "none", a], logf, env)
    bench_content.warm([base])
    c0 = run(["borg", "create", f"{a}::c0", "disk.img"], logf, env, cwd=stage(w, base))
    first = {k: run(cmd, logf) for k, cmd in syncs.items()}
    a1 = size(a)
    bench_content.warm([changed])
    c1 = run(["borg", "create", f"{a}::c1", "disk.img"], logf, env, cwd=stage(w, changed))
    a2 = size(a)
    incr = {k: run(cmd, logf) for k, cmd in syncs.items()}
    noop = {k: run(cmd, logf) for k, cmd in syncs.items()}
    for cmd in syncs.values():
        listed = json.loads(run(["borg", "list", "--json", cmd[-1]], logf, env)["out"])
        if len(listed["archives"]) != 2:
            die(f"borg: {cmd[-1]} lists {len(listed['archives'])} archives, not 2", 1)

    def sent(r: Result) -> int:
        m = RSYNC_SENT.search(r["out"])
        if m is None:
            die(f"rsync printed no 'Total bytes sent': {r['out'][-500:]}")
        return int(m.group(1).replace(",", ""))

    for k in syncs:
        log(f"{k}: first rsync {first[k]['wall_s']:.1f} s, incremental {incr[k]['wall_s']:.2f} s")
    return {
        k: {
            "capture_base": figures(c0),
            "capture_changed": figures(c1),
            "first": figures(first[k]),
            "incremental": figures(incr[k]),
            "noop": figures(noop[k]),
            "grew": a2 - a1,
            "sent": sent(incr[k]),
            "first_sent": sent(first[k]),
        }
        for k in syncs
    }


# ----------------------------------------------------------------------------- report
LABELS = {
    "ckpt": "ckpt replicate",
    "restic": "restic copy",
    "borg": "borg + rsync",
    "borg-fsync": "borg + rsync --fsync",
}


def report(results: dict[str, Result], gib: float, blocks: int, changed: int, pattern: str) -> bool:
    """Print the table and the target; True if ckpt's ratio is within it (or ckpt not run)."""
    print(
        f"\n{gib:.3g} GiB disk ({blocks:,} blocks of 4 KiB), then {changed:,} blocks rewritten, "
        f"{pattern} ({changed * BLOCK / 1e6:,.1f} MB logical); MB = 10^6 bytes\n"
    )
    head = ["tool", "first s", "first MB", "first RSS MiB", "grew MB", "incr s", "incr CPU s",
            "sent MB", "sent/grew", "incr RSS MiB", "no-op s"]  # fmt: skip
    rows = []
    for tool, r in results.items():
        rows.append([
            LABELS[tool],
            f"{r['first']['wall_s']:.2f}",
            f"{r['first_sent'] / 1e6:,.1f}",
            f"{r['first']['maxrss_mib']:.0f}",
            f"{r['grew'] / 1e6:,.2f}",
            f"{r['incremental']['wall_s']:.2f}",
            f"{r['incremental']['cpu_s']:.2f}",
            f"{r['sent'] / 1e6:,.2f}",
            f"{r['sent'] / r['grew']:.3f}" if r["grew"] else "n/a",
            f"{r['incremental']['maxrss_mib']:.0f}",
            f"{r['noop']['wall_s']:.2f}",
        ])  # fmt: skip
    widths = [max(len(h), *(len(x[i]) for x in rows)) for i, h in enumerate(head)]
    for cells in [head, ["-" * w for w in widths], *rows]:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |")
    ok = True
    if "ckpt" in results:
        c = results["ckpt"]
        for tool, r in results.items():
            if tool == "ckpt":
                continue
            print(
                f"ckpt/{tool}: first copy {c['first']['wall_s'] / r['first']['wall_s']:.2f}x "
                "the time, incremental "
                f"{c['incremental']['wall_s'] / r['incremental']['wall_s']:.2f}x the time and "
                f"{c['sent'] / max(r['sent'], 1):.3f}x the bytes"
            )
        if c["history"]:
            print(f"ckpt: the primary's log holds {c['history']:,} events of history besides")
        ratio = c["sent"] / max(c["grew"], 1)
        ok = ratio <= TARGET_RATIO
        print(
            f"ckpt: incremental replicate sent {c['sent']:,} B for {c['grew']:,} B of new stored "
            f"bytes (ckpt stats): {ratio:.3f}x, target <= {TARGET_RATIO}x: "
            + ("PASS" if ok else "FAIL")
        )
        rep = c["incremental"]["report"]
        print(
            f"ckpt: that run: {rep['events']} events, {rep['packs']} packs, "
            f"{rep['index_files']} index files, {rep['skipped_packs']} packs skipped, "
            f"{rep['seconds']:.2f} s in the command ({c['incremental']['wall_s']:.2f} s in all; "
            f"`ckpt --help` takes {c['startup']['wall_s']:.2f} s); the replica's directory grew "
            f"{c['replica_dir_grew']:,} B (events included), the primary's "
            f"{c['primary_dir_grew']:,} B"
        )
        if "resume" in c:
            z, zr = c["resume"], c["resume"]["report"]
            print(
                f"ckpt: a first copy killed (SIGKILL) after {z['killed_after_s']:.2f} s had left "
                f"{z['left_bytes'] / 1e6:,.1f} MB; the next run sent {zr['bytes'] / 1e6:,.1f} MB "
                f"({zr['skipped_packs']} packs skipped) in {z['again']['wall_s']:.2f} s; "
                f"complete files sent twice: {z['resent']:,} B; temporary files left by the "
                f"kill: {z['stranded']:,} B; the replica verifies (verify --log)"
            )
    busy = [
        (tool, step, r[step]["foreign_cpu_s"])
        for tool, r in results.items()
        for step in ("first", "incremental", "noop")
        if r[step]["foreign_cpu_s"] > BUSY_CPU_S
    ]
    for tool, step, s in busy:
        print(f"note: {tool} {step} ran while other processes used {s:.1f} CPU s (noisy)")
    return ok


# ----------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-gib", type=float, default=4.0, help="disk size (default: 4)")
    ap.add_argument("--blocks", type=int, help=argparse.SUPPRESS)  # a disk of N blocks (tests)
    ap.add_argument("--change-pct", type=float, default=1.0, help="%% of blocks rewritten")
    ap.add_argument(
        "--pattern",
        choices=("scattered", "clustered"),
        default="scattered",
        help=f"the change: single blocks, or aligned runs of {RUN_BLOCKS} blocks (1 MiB)",
    )
    ap.add_argument(
        "--random-bytes",
        type=int,
        default=1024,
        help="random bytes at the head of each 4 KiB block, the rest text (default: 1024)",
    )
    ap.add_argument("--work", default="/tmp/ckpt-bench-replicate", help="scratch, removed after")
    ap.add_argument("--tools", default="ckpt,restic,borg", help="any of ckpt,restic,borg")
    ap.add_argument("--ckpt", default=bench_content.default_ckpt(), help="the ckpt command")
    ap.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--no-check", action="store_true", help="skip checking ckpt's replica")
    ap.add_argument(
        "--encrypted", action="store_true", help="ckpt's primary encrypted (replicated sealed)"
    )
    ap.add_argument(
        "--history",
        type=int,
        default=0,
        metavar="N",
        help="write N events of no content into ckpt's primary first (the log's length)",
    )
    ap.add_argument("--check-target", action="store_true", help="exit 3 if the target fails")
    a = ap.parse_args()
    blocks = a.blocks or max(1, round(a.size_gib * GIB / BLOCK))
    if not 16 <= a.random_bytes <= BLOCK - 64:
        ap.error(f"--random-bytes must be in [16, {BLOCK - 64}]")
    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    if unknown := set(tools) - {"ckpt", "restic", "borg"}:
        ap.error(f"unknown tools: {','.join(sorted(unknown))}")
    needs = {"restic": ["restic"], "borg": ["borg", "rsync"]}
    for tool in list(tools):
        missing = [x for x in needs.get(tool, []) if not shutil.which(x)]
        if missing:
            log(f"{tool}: skipped, {' and '.join(missing)} not installed")
            tools.remove(tool)
    ckpt = shlex.split(a.ckpt)
    if "ckpt" in tools and not shutil.which(ckpt[0]):
        die(f"ckpt command not found: {ckpt[0]} (give --ckpt CMD)")
    work = os.path.abspath(a.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    if (free := shutil.disk_usage(work).free) < 3 * blocks * BLOCK:
        need = 3 * blocks * BLOCK / GIB
        log(f"warning: {free / GIB:.1f} GiB free under {work}, ~{need:.1f} GiB needed")
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    results: dict[str, Result] = {}
    try:
        base, changed = os.path.join(work, "base.img"), os.path.join(work, "changed.img")
        t0 = time.perf_counter()
        write_base(base, blocks, a.random_bytes)
        n = write_changed(
            base, changed, blocks, a.change_pct, a.random_bytes, a.pattern == "clustered"
        )
        log(
            f"images: {blocks:,} blocks, {n:,} changed, written in {time.perf_counter() - t0:.1f} s"
        )
        with open(os.path.join(work, "commands.log"), "w") as logf:
            for tool in tools:
                if tool == "ckpt":
                    results[tool] = bench_ckpt(
                        ckpt, work, base, changed, logf, not a.no_check, a.encrypted, a.history
                    )
                elif tool == "restic":
                    results[tool] = bench_restic(work, base, changed, logf)
                else:
                    results.update(bench_borg(work, base, changed, logf))
        ok = report(results, blocks * BLOCK / GIB, blocks, n, a.pattern)
        if a.json:
            doc = {
                "started": started,
                "blocks": blocks,
                "image_bytes": blocks * BLOCK,
                "changed_blocks": n,
                "random_bytes": a.random_bytes,
                "pattern": a.pattern,
                "encrypted": a.encrypted,
                "history": a.history,
                "target_ratio": TARGET_RATIO,
                "machine": {
                    "nproc": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "versions": {
                    "ckpt": bench_content.git_head(),
                    **{
                        t: bench_content.version_of(
                            [t, "version" if t == "restic" else "--version"]
                        )
                        for t in tools
                        if t != "ckpt"
                    },
                },
                "tools": results,
            }
            with open(a.json, "w") as f:
                json.dump(doc, f, indent=1)
            log(f"figures written to {a.json}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 3 if a.check_target and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
