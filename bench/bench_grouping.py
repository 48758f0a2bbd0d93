#!/usr/bin/env python3
"""Grouped compression of new chunks: stored bytes, speed and read amplification (issue 13, goal 7).

Today every new 4 KiB chunk is its own zstd frame (level 1).  This script models the store's
ingest on a dataset in bench_content.py's layout (DATA/ckpt0..ckpt4/disk.img, e.g. made by
bench/gen_real_dataset.py) and measures, with ``zstandard`` directly (no product code), what
compressing G consecutive NEW chunks together as one frame would give:

  * capture model: each step's disk.img is read in order (data extents only, as the product skips
    holes), cut into 4 KiB blocks; zero blocks are dropped; a block whose SHA-256 was seen before
    (any step) is a duplicate; the rest are the NEW chunks, in capture order.  Groups never span
    two steps (one capture = one writer session), so a step's last group may be short.
  * for each group size (KiB) and zstd level: stored = sum of the compressed group frames
    (ratio = stored / raw new bytes); the per-chunk entry (pack table + index file, 96 B today)
    is the same in every option and is not counted.
  * compress / decompress MB/s (of uncompressed bytes, one thread): median of --reps passes over a
    sample (the first --sample-mib MiB of new chunks of step 0).
  * restore amplification: the last step's disk restored in block order through a cache of
    --cache-groups decompressed groups: bytes decompressed / bytes restored (non-zero blocks);
    "restore MB/s" = decompress MB/s / amplification, the decompression bound of a restore.
  * random 4 KiB read (instant access through NBD/FUSE, later issue): it decompresses its whole
    group: bytes decompressed per read, and microseconds per read (median over sampled groups).
  * gc: once every checkpoint but the last is deleted, the share of bytes in groups holding both
    live and dead chunks (repack must keep dead bytes or recompress), and the dead share there.
  * "dict": a zstd dictionary (--dict-kib) trained on a sample of step 0's new chunks, each
    chunk its own frame with that dictionary (one dictionary per store).
  * restic (same run, same disk images, default compression): repository size after all steps.

Usage:  python3 bench/bench_grouping.py --data DIR [--steps 5] [--groups 4,16,64,256,1024]
                 [--levels 1,3] [--no-dict] [--no-restic] [--reps 3] [--work DIR] [--json F]
Needs zstandard (the project's venv).  The machine's load matters for the MB/s columns.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections import OrderedDict

import zstandard

BLOCK = 4096
ZERO = bytes(BLOCK)
MB = 1e6


def log(msg: str) -> None:
    print(f"[bench_grouping {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def data_extents(f) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """(start, end) of the file's data extents (the whole file where SEEK_DATA is missing)."""
    fd, size = f.fileno(), os.fstat(f.fileno()).st_size
    out, pos = [], 0
    try:
        while pos < size:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, pos, os.SEEK_HOLE)
            out.append((pos, end))
            pos = end
    except (AttributeError, OSError):
        return [(0, size)]
    return out


class Capture:
    """The new chunks of every step, spilled in capture order, and the last step's block map."""

    def __init__(self, data: str, steps: int, work: str) -> None:
        self.spill = os.path.join(work, "new_chunks.bin")
        self.step_first: list[int] = []  # index of each step's first new chunk
        self.last_map = array("q")  # last step: new-chunk index of each non-zero block, in order
        self.step_stats: list[dict] = []
        seen: dict[bytes, int] = {}
        n = 0
        with open(self.spill, "wb") as spill:
            for k in range(steps):
                self.step_first.append(n)
                last = k == steps - 1
                blocks = dups = 0
                t0 = time.perf_counter()
                with open(os.path.join(data, f"ckpt{k}", "disk.img"), "rb") as f:
                    for start, end in data_extents(f):
                        f.seek(start)
                        pos = start
                        while pos < end:
                            buf = f.read(min(end - pos, 16 << 20))
                            if not buf:
                                break
                            mv = memoryview(buf)
                            for o in range(0, len(buf) - BLOCK + 1, BLOCK):
                                b = mv[o : o + BLOCK]
                                if b == ZERO:
                                    continue
                                blocks += 1
                                h = hashlib.sha256(b).digest()
                                i = seen.get(h)
                                if i is None:
                                    i = seen[h] = n
                                    n += 1
                                    spill.write(b)
                                else:
                                    dups += 1
                                if last:
                                    self.last_map.append(i)
                            pos += len(buf)
                self.step_stats.append(
                    {
                        "step": k,
                        "nonzero_blocks": blocks,
                        "new_chunks": n - self.step_first[-1],
                        "dup_blocks": dups,
                        "scan_s": round(time.perf_counter() - t0, 1),
                    }
                )
                log(f"scanned ckpt{k}: {self.step_stats[-1]}")
        self.n = n
        self.step_first.append(n)

    def groups(self, chunks_per_group: int):  # type: ignore[no-untyped-def]
        """Yield (first chunk index, bytes) of each group, in capture order."""
        with open(self.spill, "rb") as f:
            for k in range(len(self.step_first) - 1):
                i, end = self.step_first[k], self.step_first[k + 1]
                f.seek(i * BLOCK)
                while i < end:
                    m = min(chunks_per_group, end - i)
                    yield i, f.read(m * BLOCK)
                    i += m

    def group_index(self, chunks_per_group: int) -> array:
        """Group number of every new chunk."""
        g = array("q")
        gid = 0
        for k in range(len(self.step_first) - 1):
            first, end = self.step_first[k], self.step_first[k + 1]
            for i in range(first, end):
                g.append(gid + (i - first) // chunks_per_group)
            gid += -(-(end - first) // chunks_per_group)
        return g

    def sample(self, nbytes: int) -> bytes:
        n = min(nbytes // BLOCK, self.step_first[1]) * BLOCK
        with open(self.spill, "rb") as f:
            return f.read(n)


def restore_and_gc(cap: Capture, per: int, cache_groups: int) -> tuple[float, float, float]:
    """Restore amplification of the last step, and what gc meets once only it is kept.

    Returns (bytes decompressed / bytes restored, restoring the last step in block order with
    an LRU of CACHE_GROUPS groups; share of all groups' bytes in groups holding both live and
    dead chunks when every checkpoint but the last is deleted; share of dead bytes in those).
    """
    if not cap.last_map:
        return 0.0, 0.0, 0.0
    gidx = cap.group_index(per)
    ngroups = gidx[-1] + 1 if gidx else 0
    sizes = [0] * ngroups
    for g in gidx:  # raw size of each group (short last groups)
        sizes[g] += BLOCK
    lru: OrderedDict[int, None] = OrderedDict()
    decompressed = 0
    for i in cap.last_map:
        g = gidx[i]
        if g in lru:
            lru.move_to_end(g)
            continue
        decompressed += sizes[g]
        lru[g] = None
        if len(lru) > cache_groups:
            lru.popitem(last=False)
    live = [0] * ngroups
    for i in set(cap.last_map):
        live[gidx[i]] += BLOCK
    mixed = [g for g in range(ngroups) if 0 < live[g] < sizes[g]]
    mixed_bytes = sum(sizes[g] for g in mixed)
    dead_in_mixed = sum(sizes[g] - live[g] for g in mixed)
    return (
        decompressed / (len(cap.last_map) * BLOCK),
        mixed_bytes / (cap.n * BLOCK),
        dead_in_mixed / mixed_bytes if mixed_bytes else 0.0,
    )


def frames_of(sample: bytes, per: int, cctx: zstandard.ZstdCompressor) -> list[bytes]:
    step = per * BLOCK
    return [cctx.compress(sample[o : o + step]) for o in range(0, len(sample), step)]


def time_it(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def measure(
    cap: Capture,
    name: str,
    per: int,
    level: int,
    dict_data: zstandard.ZstdCompressionDict | None,
    sample: bytes,
    reps: int,
    cache_groups: int,
) -> dict:
    kw = {"write_content_size": True, "write_checksum": False, "write_dict_id": False}
    cctx = zstandard.ZstdCompressor(level=level, dict_data=dict_data, **kw)
    dctx = zstandard.ZstdDecompressor(dict_data=dict_data)
    t0 = time.perf_counter()
    stored = raw = groups = 0
    for _, buf in cap.groups(per):
        stored += len(cctx.compress(buf))
        raw += len(buf)
        groups += 1
    full_s = time.perf_counter() - t0
    frames = frames_of(sample, per, cctx)
    c_s = time_it(lambda: frames_of(sample, per, cctx), reps)

    def dec() -> None:
        for fr in frames:
            dctx.decompress(fr)

    d_s = time_it(dec, reps)
    # one random 4 KiB read = one group decompressed: median over up to 200 groups
    pick = frames[:: max(1, len(frames) // 200)][:200]
    per_read = []
    for fr in pick:
        t1 = time.perf_counter()
        dctx.decompress(fr)
        per_read.append(time.perf_counter() - t1)
    amp, mixed, dead = restore_and_gc(cap, per, cache_groups)
    row = {
        "option": name,
        "group_KiB": per * BLOCK // 1024,
        "level": level,
        "groups": groups,
        "raw_MB": raw / MB,
        "stored_MB": stored / MB,
        "ratio": stored / raw if raw else 0.0,
        "compress_MBps": len(sample) / MB / c_s if c_s else 0.0,
        "decompress_MBps": len(sample) / MB / d_s if d_s else 0.0,
        "full_pass_s": full_s,
        "restore_amp": amp,
        "gc_mixed_share": mixed,
        "gc_dead_in_mixed": dead,
        "random_read_KiB": raw / groups / 1024 if groups else 0.0,
        "random_read_us": statistics.median(per_read) * 1e6 if per_read else 0.0,
    }
    log(
        f"{name}: ratio {row['ratio']:.3f}, {row['compress_MBps']:.0f}/"
        f"{row['decompress_MBps']:.0f} MB/s, full pass {full_s:.1f} s"
    )
    return row


def dir_bytes(path: str) -> int:
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(d, f))
    return total


def run_restic(data: str, steps: int, work: str) -> dict | None:
    if shutil.which("restic") is None:
        log("restic not found: no restic column")
        return None
    repo = os.path.join(work, "restic-repo")
    env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_CACHE_DIR=os.path.join(work, "rc"))
    subprocess.run(["restic", "-r", repo, "init", "-q"], env=env, check=True)
    walls = []
    for k in range(steps):
        t0 = time.perf_counter()
        subprocess.run(
            ["restic", "-r", repo, "backup", "-q", "--host", "vm01", "disk.img"],
            env=env,
            check=True,
            cwd=os.path.join(data, f"ckpt{k}"),
        )
        walls.append(time.perf_counter() - t0)
        log(f"restic backup ckpt{k}: {walls[-1]:.1f} s")
    version = subprocess.run(["restic", "version"], capture_output=True, text=True).stdout
    return {
        "stored_MB": dir_bytes(repo) / MB,
        "backup_s": walls,
        "version": version.strip(),
    }


def print_table(rows: list[dict], restic: dict | None, cap: Capture) -> None:
    r_mb = restic["stored_MB"] if restic else None
    head = [
        "option",
        "group",
        "lvl",
        "stored MB",
        "ratio",
        "x restic",
        "comp MB/s",
        "decomp MB/s",
        "restore amp",
        "restore MB/s",
        "rand read KiB",
        "rand read us",
        "gc mixed",
        "dead in mixed",
    ]
    lines = [head]
    for r in rows:
        lines.append(
            [
                r["option"],
                f"{r['group_KiB']} KiB",
                str(r["level"]),
                f"{r['stored_MB']:.0f}",
                f"{r['ratio']:.3f}",
                f"{r['stored_MB'] / r_mb:.2f}" if r_mb else "-",
                f"{r['compress_MBps']:.0f}",
                f"{r['decompress_MBps']:.0f}",
                f"{r['restore_amp']:.2f}",
                f"{r['decompress_MBps'] / r['restore_amp']:.0f}" if r["restore_amp"] else "-",
                f"{r['random_read_KiB']:.0f}",
                f"{r['random_read_us']:.0f}",
                f"{r['gc_mixed_share']:.1%}",
                f"{r['gc_dead_in_mixed']:.1%}",
            ]
        )
    if restic:
        lines.append(
            ["restic", "(CDC)", "auto", f"{r_mb:.0f}", "", "1.00", "", "", "", "", "", "", "", ""]
        )
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    for j, cells in enumerate(lines):
        print(
            " | ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
        if j == 0:
            print("-+-".join("-" * w for w in widths))
    raw = cap.n * BLOCK / MB
    print(
        f"\nnew chunks: {cap.n} ({raw:.0f} MB raw, after zero-skip and dedup at 4 KiB over all "
        f"steps); restored step: {len(cap.last_map)} non-zero blocks.  stored = compressed "
        "frames only (the 96 B/chunk entries are the same in every option).  MB/s: one thread, "
        "median of the reps, over the sample; restore MB/s = decomp MB/s / restore amp (the "
        "decompression cost of restoring the last step, one thread).  rand read: one 4 KiB "
        "read decompresses its whole group (median us per read).  gc mixed: share of the "
        "stored groups' raw bytes in groups holding live and dead chunks once every "
        "checkpoint but the last is deleted (gc must keep their dead bytes or recompress "
        "them); dead in mixed: the dead share of those."
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--groups", default="4,16,64,256,1024", help="group sizes in KiB")
    ap.add_argument("--levels", default="1,3")
    ap.add_argument("--no-dict", action="store_true")
    ap.add_argument("--dict-kib", type=int, default=112)
    ap.add_argument("--no-restic", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sample-mib", type=int, default=128)
    ap.add_argument("--cache-groups", type=int, default=4)
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="bench-grouping-")
    os.makedirs(work, exist_ok=True)
    try:
        restic = None if a.no_restic else run_restic(a.data, a.steps, work)
        cap = Capture(a.data, a.steps, work)
        sample = cap.sample(a.sample_mib << 20)
        rows = []
        levels = [int(x) for x in a.levels.split(",")]
        for kib in (int(x) for x in a.groups.split(",")):
            for level in levels:
                name = "today" if (kib, level) == (4, 1) else "grouped"
                rows.append(
                    measure(
                        cap, name, kib * 1024 // BLOCK, level, None, sample, a.reps, a.cache_groups
                    )
                )
        if not a.no_dict:
            n = min(cap.step_first[1], 20000)
            with open(cap.spill, "rb") as f:
                samples = [f.read(BLOCK) for _ in range(n)]
            t0 = time.perf_counter()
            d = zstandard.train_dictionary(a.dict_kib * 1024, samples, level=3)
            log(f"dictionary {len(d.as_bytes())} B trained in {time.perf_counter() - t0:.1f} s")
            for level in levels:
                row = measure(cap, "dict", 1, level, d, sample, a.reps, a.cache_groups)
                rows.append(row)
        print_table(rows, restic, cap)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(
                    {"rows": rows, "restic": restic, "steps": cap.step_stats, "new_chunks": cap.n},
                    f,
                    indent=1,
                )
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
