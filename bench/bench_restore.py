#!/usr/bin/env python3
"""Restore micro-benchmark: one image restored by ckpt, restic and borg, in one run.

The image (synthetic by default: 1 GiB of unique 4 KiB blocks, each 1 KiB of random bytes and
3 KiB of repeated text, so zstd-1 keeps ~30%; or ``--image FILE``) is captured once by each
tool, then restored ``--reps`` times; the table gives the median restore MB/s (of the image
size), the ratio to restic and the restore's peak RSS (the child's ru_maxrss).  Every restore
is compared with the image byte for byte.

    ckpt --store S init; ckpt --store S vm add bench --disk disk; ckpt --store S vm start bench
    ckpt --store S checkpoint create bench c0 --disk disk=IMAGE
    ckpt --store S restore bench c0 --disk disk -o OUT          (timed)
    restic -r R init; restic -r R backup IMAGE; restic -r R restore latest --target OUT  (timed)
    borg init -e none R; borg create R::c0 IMAGE; borg extract R::c0     (timed, in OUT)

Usage:  python3 bench/bench_restore.py [--size-mib 1024] [--image FILE] [--work DIR]
                                        [--tools ckpt,restic,borg] [--reps 3] [--ckpt CMD]
Stdlib only.  MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 4096
TEXT = b"the quick brown fox jumps over the lazy dog; " * 70


def make_image(path: str, size: int) -> None:
    """Unique, partly compressible 4 KiB blocks (deterministic: a counter seeds each block)."""
    import hashlib

    with open(path, "wb") as f:
        for i in range(size // BLOCK):
            seed = hashlib.sha256(i.to_bytes(8, "little")).digest()
            head = hashlib.shake_128(seed).digest(1024)
            f.write(head + TEXT[i % 64 : i % 64 + BLOCK - 1024])


def run(
    cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None
) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS MiB). Exit non-zero on failure."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert p.stdout is not None
    output = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if status != 0:
        sys.exit(f"failed ({status}): {shlex.join(cmd)}\n{output.decode(errors='replace')}")
    return wall, usage.ru_maxrss / 1024


def bench_ckpt(ckpt: list[str], image: str, work: str, reps: int) -> list[tuple[float, float]]:
    store, out = os.path.join(work, "ckpt-store"), os.path.join(work, "ckpt-out.img")
    shutil.rmtree(store, ignore_errors=True)
    s = [*ckpt, "--store", store]
    run([*s, "init"])
    run([*s, "vm", "add", "bench", "--disk", "disk"])
    run([*s, "vm", "start", "bench"])
    run([*s, "checkpoint", "create", "bench", "c0", "--disk", f"disk={image}"])
    rows = []
    for _ in range(reps):
        if os.path.exists(out):
            os.unlink(out)
        os.sync()
        rows.append(run([*s, "restore", "bench", "c0", "--disk", "disk", "-o", out]))
        if not filecmp.cmp(image, out, shallow=False):
            sys.exit("ckpt restored different bytes")
    os.unlink(out)
    shutil.rmtree(store)
    return rows


def bench_restic(image: str, work: str, reps: int) -> list[tuple[float, float]]:
    repo, out = os.path.join(work, "restic-repo"), os.path.join(work, "restic-out")
    shutil.rmtree(repo, ignore_errors=True)
    env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": os.path.join(work, "rc")}
    run(["restic", "-r", repo, "init"], env)
    run(["restic", "-r", repo, "backup", "-q", "--host", "vm01", image], env)
    rows = []
    for _ in range(reps):
        shutil.rmtree(out, ignore_errors=True)
        os.sync()
        rows.append(run(["restic", "-r", repo, "restore", "latest", "--target", out], env))
        if not filecmp.cmp(image, out + os.path.abspath(image), shallow=False):
            sys.exit("restic restored different bytes")
    shutil.rmtree(out)
    shutil.rmtree(repo)
    return rows


def bench_borg(image: str, work: str, reps: int) -> list[tuple[float, float]]:
    repo, out = os.path.join(work, "borg-repo"), os.path.join(work, "borg-out")
    shutil.rmtree(repo, ignore_errors=True)
    env = {**os.environ, "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}
    env["BORG_BASE_DIR"] = os.path.join(work, "borg-base")
    run(["borg", "init", "-e", "none", repo], env)
    run(["borg", "create", f"{repo}::c0", image], env)
    rows = []
    for _ in range(reps):
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        os.sync()
        rows.append(run(["borg", "extract", f"{repo}::c0"], env, cwd=out))
        if not filecmp.cmp(image, out + os.path.abspath(image), shallow=False):
            sys.exit("borg restored different bytes")
    shutil.rmtree(out)
    shutil.rmtree(repo)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--image", help="restore this file instead of a synthetic image")
    ap.add_argument("--work", default="/tmp/ckpt-bench-restore")
    ap.add_argument("--tools", default="ckpt,restic,borg")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ckpt", default=shlex.join([os.path.join(REPO, ".venv", "bin", "ckpt")]))
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    image = a.image or os.path.join(a.work, f"image-{a.size_mib}m.img")
    if not a.image and not os.path.exists(image):
        make_image(image, a.size_mib << 20)
    size = os.path.getsize(image)
    with open(image, "rb") as f:  # into the page cache, for every tool alike
        while f.read(8 << 20):
            pass
    results: dict[str, list[tuple[float, float]]] = {}
    for tool in a.tools.split(","):
        if tool == "ckpt":
            results[tool] = bench_ckpt(shlex.split(a.ckpt), image, a.work, a.reps)
        elif tool == "restic":
            results[tool] = bench_restic(image, a.work, a.reps)
        elif tool == "borg":
            results[tool] = bench_borg(image, a.work, a.reps)
        else:
            sys.exit(f"unknown tool {tool!r}")
        walls = ", ".join(f"{w:.2f}" for w, _ in results[tool])
        print(f"{tool}: restore walls {walls} s", file=sys.stderr)
    speed = {t: size / 1e6 / statistics.median(w for w, _ in r) for t, r in results.items()}
    print(
        f"restore of {size / 1e6:,.0f} MB ({'synthetic' if not a.image else image}), "
        f"median of {a.reps}; 2 cores, shared machine"
    )
    print("| tool | restore MB/s | /restic | peak RSS MiB |")
    print("|---|---|---|---|")
    for t, r in results.items():
        rel = f"{speed[t] / speed['restic']:.2f}x" if "restic" in speed else ""
        print(f"| {t} | {speed[t]:.0f} | {rel} | {max(m for _, m in r):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
