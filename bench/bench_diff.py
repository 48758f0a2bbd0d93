#!/usr/bin/env python3
"""Diff benchmark (issue 19): what changed between two backups of a disk, and an incremental
driven by it.

Terms:
    base, changed  one disk image of ``--size-gib`` GiB of unique 4 KiB blocks, and a copy with
                   ``--change-pct`` % of its blocks rewritten (bench_replicate.py's images:
                   scattered single blocks, or aligned 1 MiB runs with ``--pattern clustered``).
    diff           the command that tells what changed between the two backups: ``ckpt diff VM
                   c0 c1`` (byte extents, from manifests, no chunk data read), ``restic diff``
                   (which files changed: the tree objects), ``borg diff`` (per file, the bytes
                   added and removed: it compares the two archives' chunk lists).
    CBT capture    ckpt only: a second VM holding the same base takes the changed image with
                   ``--changed-blocks`` fed from ``ckpt diff --format changed-blocks``, reading
                   only those extents, against the same image taken by a full scan.

ckpt's diff must name exactly the rewritten bytes: its ``changed_bytes`` equals the rewritten
blocks x 4 KiB (each rewritten block differs from the base), or the run fails. Unless
``--no-check``, the CBT capture's content is restored and compared with the changed image.

Usage:  python3 bench/bench_diff.py [--size-gib 4] [--change-pct 1] [--pattern scattered]
            [--work DIR] [--tools ckpt,restic,borg] [--ckpt CMD] [--json FILE] [--keep]
            [--no-check]
Stdlib only. MB = 10^6 bytes, GiB = 2^30. Needs 2x the image size under --work, plus the stores.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from typing import Any, TextIO

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_content  # noqa: E402  (bench/ is not a package: reuse its helpers by path)
import bench_replicate as images  # noqa: E402

Result = dict[str, Any]
BLOCK, GIB = images.BLOCK, images.GIB
VM, COPY, DISK = "bench", "bench-cbt", "disk"
log, die, run, figures = images.log, images.die, images.run, images.figures


def bench_ckpt(
    ckpt: list[str], work: str, base: str, changed: str, rewritten: int, logf: TextIO, check: bool
) -> Result:
    store = os.path.join(work, "ckpt")
    s = [*ckpt, "--store", store]
    run([*s, "init"], logf)
    for vm in (VM, COPY):
        run([*s, "vm", "add", vm, "--disk", DISK, "--checkpoint-type", "standard"], logf)
    bench_content.warm([base])
    run([*s, "checkpoint", "create", VM, "c0", "--disk", f"{DISK}={base}"], logf)
    run([*s, "checkpoint", "create", COPY, "c0", "--disk", f"{DISK}={base}"], logf)
    bench_content.warm([changed])
    full = run([*s, "checkpoint", "create", VM, "c1", "--disk", f"{DISK}={changed}"], logf)
    diff = run([*s, "diff", VM, "c0", "c1", "--json"], logf)
    doc = json.loads(diff.pop("out"))
    (disk,) = doc["disks"]
    if disk["changed_bytes"] != rewritten * BLOCK:
        die(
            f"ckpt diff names {disk['changed_bytes']:,} changed bytes; "
            f"{rewritten:,} blocks = {rewritten * BLOCK:,} bytes were rewritten",
            1,
        )
    blocks = run([*s, "diff", VM, "c0", "c1", "--format", "changed-blocks"], logf)
    extents = os.path.join(work, "changed-blocks.txt")
    with open(extents, "w") as f:
        f.write(blocks.pop("out"))
    bench_content.warm([changed])
    cbt = run(
        [*s, "checkpoint", "create", COPY, "c1", "--disk", f"{DISK}={changed}",
         "--changed-blocks", f"{DISK}={extents}"],
        logf,
    )  # fmt: skip
    log(
        f"ckpt: diff {diff['wall_s']:.2f} s ({len(disk['extents']):,} extents); full-scan "
        f"capture {full['wall_s']:.1f} s, --changed-blocks capture {cbt['wall_s']:.2f} s"
    )
    res: Result = {
        "diff": figures(diff),
        "changed_blocks": figures(blocks),
        "extents": len(disk["extents"]),
        "changed_bytes": disk["changed_bytes"],
        "full_capture": figures(full),
        "cbt_capture": figures(cbt),
    }
    if check:
        out = os.path.join(work, "restored.raw")
        run([*s, "restore", COPY, "c1", "--disk", DISK, "-o", out], logf)
        if not images.files_equal(out, changed):
            die("ckpt: the --changed-blocks capture does not restore the changed image", 1)
        again = json.loads(run([*s, "diff", VM, "c1", "c1", "--json"], logf)["out"])
        if again["disks"][0]["extents"]:
            die("ckpt: a point diffed with itself shows changes", 1)
        os.unlink(out)
        res["checked"] = True
    return res


def bench_restic(work: str, base: str, changed: str, logf: TextIO) -> Result:
    repo = os.path.join(work, "restic")
    env = {**os.environ, "RESTIC_PASSWORD": "bench",
           "RESTIC_CACHE_DIR": os.path.join(work, "restic-cache")}  # fmt: skip
    r = ["restic", "-r", repo]
    run([*r, "init"], logf, env)
    for image in (base, changed):
        bench_content.warm([image])
        run([*r, "backup", "-q", "--host", VM, images.stage(work, image)], logf, env)
    snaps = json.loads(run([*r, "snapshots", "--json"], logf, env)["out"])
    ids = [x["short_id"] for x in sorted(snaps, key=lambda x: x["time"])]
    diff = run([*r, "diff", ids[0], ids[1]], logf, env)
    if "disk.img" not in diff["out"]:
        die(f"restic diff did not name disk.img: {diff['out'][-500:]}", 1)
    return {"diff": figures(diff), "tells": "file modified"}


def bench_borg(work: str, base: str, changed: str, logf: TextIO) -> Result:
    repo = os.path.join(work, "borg")
    env = {**os.environ, "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
           "BORG_BASE_DIR": os.path.join(work, "borg-base")}  # fmt: skip
    run(["borg", "init", "-e", "none", repo], logf, env)
    for name, image in (("c0", base), ("c1", changed)):
        bench_content.warm([image])
        run(["borg", "create", f"{repo}::{name}", "disk.img"], logf, env,
            cwd=images.stage(work, image))  # fmt: skip
    diff = run(["borg", "diff", f"{repo}::c0", "c1"], logf, env)
    if "disk.img" not in diff["out"]:
        die(f"borg diff did not name disk.img: {diff['out'][-500:]}", 1)
    return {"diff": figures(diff), "tells": diff["out"].strip().splitlines()[0][:60]}


def report(results: dict[str, Result], gib: float, rewritten: int, pattern: str) -> None:
    print(
        f"\n{gib:.3g} GiB disk, {rewritten:,} blocks of 4 KiB rewritten, {pattern} "
        f"({rewritten * BLOCK / 1e6:,.1f} MB); MB = 10^6 bytes\n"
    )
    head = ["tool", "diff s", "diff CPU s", "diff RSS MiB", "what it tells"]
    rows = []
    for tool, r in results.items():
        tells = (
            f"{r['extents']:,} byte extents, {r['changed_bytes']:,} B"
            if tool == "ckpt"
            else r["tells"]
        )
        d = r["diff"]
        rows.append([tool, f"{d['wall_s']:.2f}", f"{d['cpu_s']:.2f}",
                     f"{d['maxrss_mib']:.0f}", tells])  # fmt: skip
    widths = [max(len(h), *(len(x[i]) for x in rows)) for i, h in enumerate(head)]
    for cells in [head, ["-" * w for w in widths], *rows]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |")
    c = results.get("ckpt")
    if c is None:
        return
    for tool, r in results.items():
        if tool != "ckpt":
            print(f"ckpt/{tool}: diff {c['diff']['wall_s'] / r['diff']['wall_s']:.2f}x the time")
    full, cbt = c["full_capture"], c["cbt_capture"]
    print(
        f"ckpt: the changed image captured by a full scan {full['wall_s']:.2f} s "
        f"({full['maxrss_mib']:.0f} MiB), with --changed-blocks from `ckpt diff` "
        f"{cbt['wall_s']:.2f} s ({cbt['maxrss_mib']:.0f} MiB): "
        f"{full['wall_s'] / max(cbt['wall_s'], 1e-3):.1f}x faster"
        + ("; its content restores byte-identical" if c.get("checked") else "")
    )
    for tool, r in results.items():
        if r["diff"]["foreign_cpu_s"] > images.BUSY_CPU_S:
            print(f"note: {tool}'s diff ran while other processes used "
                  f"{r['diff']['foreign_cpu_s']:.1f} CPU s (noisy)")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-gib", type=float, default=4.0, help="disk size (default: 4)")
    ap.add_argument("--blocks", type=int, help=argparse.SUPPRESS)  # a disk of N blocks (tests)
    ap.add_argument("--change-pct", type=float, default=1.0, help="%% of blocks rewritten")
    ap.add_argument("--pattern", choices=("scattered", "clustered"), default="scattered")
    ap.add_argument("--random-bytes", type=int, default=1024,
                    help="random bytes at the head of each 4 KiB block, the rest text")  # fmt: skip
    ap.add_argument("--work", default="/tmp/ckpt-bench-diff", help="scratch, removed after")
    ap.add_argument("--tools", default="ckpt,restic,borg", help="any of ckpt,restic,borg")
    ap.add_argument("--ckpt", default=bench_content.default_ckpt(), help="the ckpt command")
    ap.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--no-check", action="store_true", help="skip restoring the CBT capture")
    a = ap.parse_args()
    blocks = a.blocks or max(1, round(a.size_gib * GIB / BLOCK))
    tools = [t for t in a.tools.split(",") if t]
    for t in tools:
        if t not in ("ckpt", "restic", "borg"):
            die(f"unknown tool {t!r}")
        if t != "ckpt" and shutil.which(t) is None:
            die(f"{t} is not installed (apt-get install restic borgbackup)")
    if os.path.exists(a.work):
        shutil.rmtree(a.work)
    os.makedirs(a.work)
    base, changed = os.path.join(a.work, "base.img"), os.path.join(a.work, "changed.img")
    log(f"writing a {blocks * BLOCK / GIB:.3g} GiB image and its changed copy under {a.work}")
    images.write_base(base, blocks, a.random_bytes)
    rewritten = images.write_changed(
        base, changed, blocks, a.change_pct, a.random_bytes, a.pattern == "clustered"
    )
    results: dict[str, Result] = {}
    with open(os.path.join(a.work, "commands.log"), "w") as logf:
        for t in tools:
            w = os.path.join(a.work, t)
            os.makedirs(w)
            if t == "ckpt":
                cmd = shlex.split(a.ckpt)
                results[t] = bench_ckpt(cmd, w, base, changed, rewritten, logf, not a.no_check)
            elif t == "restic":
                results[t] = bench_restic(w, base, changed, logf)
            else:
                results[t] = bench_borg(w, base, changed, logf)
    report(results, blocks * BLOCK / GIB, rewritten, a.pattern)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"blocks": blocks, "rewritten": rewritten, "pattern": a.pattern,
                       "results": results}, f, indent=2)  # fmt: skip
    if not a.keep:
        shutil.rmtree(a.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
