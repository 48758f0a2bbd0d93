#!/usr/bin/env python3
"""Retention benchmark: forget + reclaim in ckpt, restic and borg, on the same backups, in one run.

One disk image (``--size-mib``, unique partly compressible 4 KiB blocks as in bench_restore.py)
is backed up ``--days`` times, one backup a day at noon UTC, each after rewriting
``--change-pct`` % of its blocks at seeded random places. Then each tool applies the same policy
(``--keep-daily 4``: one backup a day, so both conventions keep the 4 newest) and reclaims:

    ckpt:   sync per day (Python API with a fixed clock: not timed); ckpt forget --dry-run
            (timed, its frees_bytes kept), ckpt forget (timed), ckpt gc --grace 0 (timed)
    restic: backup --time per day; restic forget POLICY (timed); restic prune (timed)
    borg:   create --timestamp per day; borg prune POLICY (timed); borg compact (timed)

Printed per tool: seconds for forget and for reclaim, the ratio to restic, stored bytes before
and after (the repository directory's size), and for ckpt the dry run's announced bytes against
what gc freed. The newest backup is restored by each tool afterwards and compared byte for byte.

Usage:  python3 bench/bench_retention.py [--size-mib 1024] [--days 10] [--change-pct 5]
                                          [--work DIR] [--tools ckpt,restic,borg]
Stdlib only (and ckpt for its captures). MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = os.path.join(REPO, ".venv", "bin", "ckpt")
PYTHON = os.path.join(REPO, ".venv", "bin", "python")
BLOCK = 4096
TEXT = b"the quick brown fox jumps over the lazy dog; " * 70
START = datetime(2026, 11, 1, 12, tzinfo=UTC)
POLICY = ["--keep-daily", "4"]  # the same 4 kept under PBS's and restic's conventions


def block(seed: int) -> bytes:
    import hashlib

    head = hashlib.shake_128(seed.to_bytes(8, "little")).digest(1024)
    return head + TEXT[seed % 64 : seed % 64 + BLOCK - 1024]


def make_days(work: str, size: int, days: int, pct: float) -> list[str]:
    """``days`` images (kept: ~days x size on disk): the first of unique blocks, each next
    one a copy of the one before with ``pct`` % of its blocks rewritten at seeded places."""
    blocks = size // BLOCK
    rng = random.Random(20261201)
    paths = []
    with open(os.path.join(work, "day0.img"), "wb") as f:
        for i in range(blocks):
            f.write(block(i))
    paths.append(os.path.join(work, "day0.img"))
    seed = blocks
    for d in range(1, days):
        path = os.path.join(work, f"day{d}.img")
        shutil.copyfile(paths[-1], path)
        with open(path, "r+b") as f:
            for i in rng.sample(range(blocks), int(blocks * pct / 100)):
                f.seek(i * BLOCK)
                f.write(block(seed))
                seed += 1
        paths.append(path)
    return paths


def du(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


def timed(
    cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None
) -> tuple[float, str]:
    """Run ``cmd``; its seconds and stdout. Its peak RSS (``wait4``'s rusage of
    this one child, MiB) goes to ``PEAKS`` under the command's first two words."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{' '.join(cmd)} failed: {err.read().decode().strip()}")
        key = " ".join(os.path.basename(w) for w in cmd[:1]) + " " + _verb(cmd)
        PEAKS[key] = usage.ru_maxrss / 1024
        return seconds, out.read().decode()


PEAKS: dict[str, float] = {}


def _verb(cmd: list[str]) -> str:
    words = [w for w in cmd[1:] if not w.startswith("-") and "/" not in w]
    dry = " --dry-run" if "--dry-run" in cmd else ""
    return (words[0] if words else "") + dry


CAPTURE = """
import sys, datetime
from ckpt import Store
store, day, image = sys.argv[1], int(sys.argv[2]), sys.argv[3]
at = datetime.datetime(2026, 11, 1, 12, tzinfo=datetime.UTC) + datetime.timedelta(days=day)
with Store.open(store, clock=lambda: at) as s:
    s.sync("vm01", {"disk": image}, name=f"day{day}")
"""


def bench_ckpt(work: str, images: list[str], days: int) -> dict[str, object]:
    store = os.path.join(work, "ckpt-store")
    shutil.rmtree(store, ignore_errors=True)
    subprocess.run([CKPT, "--store", store, "init"], check=True, capture_output=True)
    subprocess.run([CKPT, "--store", store, "vm", "add", "vm01", "--disk", "disk"], check=True,
                   capture_output=True)  # fmt: skip
    for day, image in enumerate(images):
        subprocess.run([PYTHON, "-c", CAPTURE, store, str(day), image], check=True)
    before = du(store)
    dry_s, out = timed([CKPT, "--store", store, "forget", *POLICY, "--dry-run", "--json"])
    announced = json.loads(out)["frees_bytes"]
    forget_s, out = timed([CKPT, "--store", store, "forget", *POLICY, "--json"])
    purged = sum(v["purged"] for v in json.loads(out)["vms"])
    gc_s, out = timed([CKPT, "--store", store, "gc", "--grace", "0", "--json"])
    freed = json.loads(out)["freed_bytes"]
    after = du(store)
    restored = os.path.join(work, "ckpt-out.img")
    subprocess.run([CKPT, "--store", store, "restore", "vm01", f"day{days - 1}", "--disk", "disk",
                    "-o", restored], check=True, capture_output=True)  # fmt: skip
    same = filecmp.cmp(restored, images[-1], shallow=False)
    os.unlink(restored)
    return {"tool": "ckpt", "dry_run_s": dry_s, "forget_s": forget_s, "reclaim_s": gc_s,
            "before": before, "after": after, "forgotten": purged, "announced": announced,
            "freed": freed, "restores": same}  # fmt: skip


def bench_restic(work: str, days: int, images: list[str]) -> dict[str, object]:
    repo = os.path.join(work, "restic-repo")
    shutil.rmtree(repo, ignore_errors=True)
    env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": os.path.join(work, "rc")}
    subprocess.run(["restic", "-r", repo, "init"], env=env, check=True, capture_output=True)
    for day, image in enumerate(images):
        target = os.path.join(work, "restic-src")
        os.makedirs(target, exist_ok=True)
        link = os.path.join(target, "disk.img")
        if os.path.lexists(link):
            os.unlink(link)
        os.link(image, link)
        when = (START + timedelta(days=day)).strftime("%Y-%m-%d %H:%M:%S")
        subprocess.run(["restic", "-r", repo, "backup", "-q", "--host", "vm01", "--time", when,
                        target], env=env, check=True, capture_output=True)  # fmt: skip
    before = du(repo)
    forget_s, _ = timed(["restic", "-r", repo, "forget", *POLICY], env)
    prune_s, _ = timed(["restic", "-r", repo, "prune"], env)
    after = du(repo)
    out = os.path.join(work, "restic-out")
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(["restic", "-r", repo, "restore", "latest", "--target", out], env=env,
                   check=True, capture_output=True)  # fmt: skip
    same = filecmp.cmp(os.path.join(out + target, "disk.img"), images[-1], shallow=False)
    shutil.rmtree(out)
    return {"tool": "restic", "forget_s": forget_s, "reclaim_s": prune_s, "before": before,
            "after": after, "freed": before - after, "restores": same}  # fmt: skip


def bench_borg(work: str, days: int, images: list[str]) -> dict[str, object]:
    repo = os.path.join(work, "borg-repo")
    shutil.rmtree(repo, ignore_errors=True)
    env = {**os.environ, "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
           "BORG_BASE_DIR": os.path.join(work, "borg-base")}  # fmt: skip
    subprocess.run(["borg", "init", "-e", "none", repo], env=env, check=True, capture_output=True)
    src = os.path.join(work, "borg-src")
    os.makedirs(src, exist_ok=True)
    for day, image in enumerate(images):
        link = os.path.join(src, "disk.img")
        if os.path.lexists(link):
            os.unlink(link)
        os.link(image, link)
        when = (START + timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%S")
        subprocess.run(["borg", "create", "--timestamp", when, f"{repo}::day{day}", "disk.img"],
                       env=env, cwd=src, check=True, capture_output=True)  # fmt: skip
    before = du(repo)
    prune_s, _ = timed(["borg", "prune", *POLICY, repo], env)
    compact_s, _ = timed(["borg", "compact", repo], env)
    after = du(repo)
    out = os.path.join(work, "borg-out")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    subprocess.run(["borg", "extract", f"{repo}::day{days - 1}"], env=env, cwd=out, check=True,
                   capture_output=True)  # fmt: skip
    same = filecmp.cmp(os.path.join(out, "disk.img"), images[-1], shallow=False)
    shutil.rmtree(out)
    return {"tool": "borg", "forget_s": prune_s, "reclaim_s": compact_s, "before": before,
            "after": after, "freed": before - after, "restores": same}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--change-pct", type=float, default=5.0)
    ap.add_argument("--work", default="/tmp/ckpt-bench-retention")
    ap.add_argument("--tools", default="ckpt,restic,borg")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    images = make_days(a.work, a.size_mib << 20, a.days, a.change_pct)
    rows = []
    tools = a.tools.split(",")
    for tool in tools:
        if tool != "ckpt" and shutil.which(tool) is None:
            print(f"{tool}: not installed, skipped")
            continue
        fn = {"ckpt": bench_ckpt, "restic": lambda w, i, d: bench_restic(w, d, i),
              "borg": lambda w, i, d: bench_borg(w, d, i)}[tool]  # fmt: skip
        rows.append(fn(a.work, images, a.days))
        print(json.dumps(rows[-1]), flush=True)
    base = next((r for r in rows if r["tool"] == "restic"), None)
    print(f"\n{a.days} daily backups of {a.size_mib} MiB, {a.change_pct}% rewritten a day; "
          f"policy {' '.join(POLICY)}")  # fmt: skip
    print(f"{'tool':<7} {'forget s':>9} {'reclaim s':>10} {'total x restic':>15} "
          f"{'before MB':>10} {'after MB':>9} {'freed MB':>9} {'restores':>9}")  # fmt: skip
    for r in rows:
        total = float(r["forget_s"]) + float(r["reclaim_s"])  # type: ignore[arg-type]
        ratio = ""
        if base is not None:
            ratio = f"{total / (float(base['forget_s']) + float(base['reclaim_s'])):.2f}"  # type: ignore[arg-type]
        print(
            f"{r['tool']:<7} {r['forget_s']:>9.2f} {r['reclaim_s']:>10.2f} {ratio:>15} "
            f"{int(r['before']) / 1e6:>10.1f} {int(r['after']) / 1e6:>9.1f} "  # type: ignore[call-overload]
            f"{int(r['freed']) / 1e6:>9.1f} {r['restores']!s:>9}"
        )  # type: ignore[call-overload]
    for r in rows:
        if r["tool"] == "ckpt":
            print(
                f"ckpt forget --dry-run took {r['dry_run_s']:.2f} s and announced "
                f"{int(r['announced']):,} bytes; gc freed {int(r['freed']):,} "  # type: ignore[call-overload]
                f"({100 * (int(r['announced']) / max(int(r['freed']), 1) - 1):+.1f}%)"
            )  # type: ignore[call-overload]
    print("peak RSS (MiB):", ", ".join(f"{k} {v:.0f}" for k, v in PEAKS.items()))
    return 0 if all(r["restores"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
