#!/usr/bin/env python3
"""Content benchmark: ckpt against restic and borg on a realistic VM checkpoint series.

The data is ../shared/bench/gen_dataset.py's series (DATA/ckpt0 .. ckpt4, each a 1 GiB ext4
disk.img and a 512 MiB mem.bin).  For every tool: a fresh repository or store, the steps taken
in order (ingest MB/s of logical input, per step), the stored size afterwards, a restore of the
last step (MB/s, checked byte for byte against the input) and the peak RSS of every command.

restic and borg run through ../shared/bench/bench_anchors.py (configs restic,borg-lz4 by
default); its JSON-lines result file is parsed.  ckpt runs through its CLI:

    ckpt --store S init
    ckpt --store S vm add bench --disk disk
    ckpt --store S vm start bench
    ckpt --store S checkpoint create bench step{i} --type standard \\
         --disk disk=DATA/ckpt{i}/disk.img --memory DATA/ckpt{i}/mem.bin      (i = 0..4)
    ckpt --store S restore bench step4 --disk disk -o OUT/disk.img
    ckpt --store S restore bench step4 --memory -o OUT/mem.bin

MB = 10^6 bytes; MB/s are over the logical input (disk.img + mem.bin); stored MB is the
apparent size of the files under the store/repository directory.  Peak RSS is the child's
ru_maxrss (os.wait4, the figure /usr/bin/time prints as %M), the largest over all commands.

Usage:  python3 bench/bench_content.py [--data DIR] [--work DIR] [--tools ckpt,restic,borg]
                                       [--ckpt CMD] [--reps 1] [--json FILE]
Stdlib only; shells out to the tools.  Needs root (loop mount) only to generate the data.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, NoReturn, TextIO

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_BENCH = os.path.join(os.path.dirname(REPO), "shared", "bench")
GEN_DATASET = os.path.join(SHARED_BENCH, "gen_dataset.py")
BENCH_ANCHORS = os.path.join(SHARED_BENCH, "bench_anchors.py")
FILES = ("disk.img", "mem.bin")
STEPS = 5  # ckpt0 .. ckpt4
VM, DISK = "bench", "disk"
MIB = 1 << 20

# The issue's targets, against the anchors' default configurations.
RESTIC, BORG = "restic", "borg-lz4"
STEP0_VS_RESTIC = 1.5  # ingest of the base checkpoint
INCR_VS_RESTIC = 3.0  # ingest of every incremental checkpoint
STORED_VS_RESTIC = 0.5
RESTORE_VS_RESTIC = 2.0
PEAK_RSS_MIB = 300.0
DISTURBED_CPU_S = 1.0  # other processes' CPU seconds during one command worth a note

Result = dict[str, Any]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def die(msg: str, code: int = 2) -> NoReturn:
    bar = "!" * 78
    print(f"\n{bar}\nbench_content: FAILED: {msg}\n{bar}", file=sys.stderr, flush=True)
    sys.exit(code)


# ----------------------------------------------------------------------------- data
def step_dir(data: str, k: int) -> str:
    return os.path.join(data, f"ckpt{k}")


def have_data(data: str) -> bool:
    """True if DATA holds ckpt0..ckpt4 complete; dies on a half-written series."""
    if not all(
        os.path.isfile(os.path.join(step_dir(data, k), f)) for k in range(STEPS) for f in FILES
    ):
        return False
    sizes = {
        tuple(os.path.getsize(os.path.join(step_dir(data, k), f)) for f in FILES)
        for k in range(STEPS)
    }
    if len(sizes) != 1 or 0 in next(iter(sizes)):
        die(
            f"{data}: ckpt0..ckpt4 differ in size or are empty (an interrupted generation?); "
            "remove it or give another --data"
        )
    if not os.path.exists(os.path.join(data, "dataset.json")):
        log(f"warning: {data} has no dataset.json (gen_dataset.py writes it last)")
    return True


def python_with_numpy(explicit: str | None) -> str:
    cands = [explicit] if explicit else [sys.executable, "/tmp/benchenv/bin/python", "python3"]
    for py in cands:
        ok = py and shutil.which(py)
        if ok and subprocess.run([py, "-c", "import numpy"], capture_output=True).returncode == 0:
            return py
    die(
        f"gen_dataset.py needs numpy and none of {cands} has it; e.g. "
        "`python3 -m venv /tmp/benchenv && /tmp/benchenv/bin/pip install numpy`, "
        "then --gen-python /tmp/benchenv/bin/python"
    )


def ensure_data(data: str, gen_python: str | None) -> None:
    if have_data(data):
        log(f"reusing the dataset in {data}")
        return
    if not os.path.isfile(GEN_DATASET):
        die(f"no dataset in {data} and no generator at {GEN_DATASET}")
    for tool in ("mkfs.ext4", "debugfs", "e2fsck", "dumpe2fs"):
        if not (shutil.which(tool) or os.path.exists("/usr/sbin/" + tool)):
            die(f"{tool} missing: apt-get install -y e2fsprogs")
    if os.geteuid() != 0:
        log("warning: not root, so gen_dataset.py edits the images with debugfs (no loop mount)")
    os.makedirs(data, exist_ok=True)
    free = shutil.disk_usage(data).free
    if free < 8e9:
        log(f"warning: {free / 1e9:.1f} GB free under {data}; the dataset takes ~7.4 GB")
    py = python_with_numpy(gen_python)
    log(f"generating the dataset into {data} (~2.5 min, 2.7 GiB RAM, 6.9 GiB disk) with {py}")
    cmd = [py, GEN_DATASET, data, "--seed", "1", "--versions", str(STEPS - 1)]
    if subprocess.run(cmd).returncode != 0:
        die("gen_dataset.py failed: " + shlex.join(cmd))
    if not have_data(data):
        die(f"gen_dataset.py finished but {data} does not hold ckpt0..ckpt4")


# ----------------------------------------------------------------------------- helpers
def busy_cpu_s() -> float:
    """Machine-wide busy CPU seconds so far (as bench_anchors.py computes it)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def run_timed(cmd: list[str], logf: TextIO) -> Result:
    """Run cmd: wall seconds, CPU seconds and the child's own peak RSS (from os.wait4)."""
    logf.write(f"$ {shlex.join(cmd)}\n")
    logf.flush()
    b0, t0 = busy_cpu_s(), time.perf_counter()
    p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    b1 = busy_cpu_s()
    p.returncode = rc = os.waitstatus_to_exitcode(status)
    logf.write(f"[exit {rc}, {wall:.3f} s, maxrss {ru.ru_maxrss} KiB]\n")
    logf.flush()
    if rc != 0:
        with open(logf.name, errors="replace") as f:
            tail = f.read()[-3000:]
        die(f"command failed (exit {rc}): {shlex.join(cmd)}\n--- end of {logf.name} ---\n{tail}")
    cpu = ru.ru_utime + ru.ru_stime
    return {
        "wall_s": round(wall, 3),
        "user_s": round(ru.ru_utime, 3),
        "sys_s": round(ru.ru_stime, 3),
        "maxrss_mib": round(ru.ru_maxrss / 1024, 1),
        "foreign_cpu_s": round(max(0.0, (b1 - b0) - cpu), 2),
    }


def dir_bytes(path: str) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of the files under path."""
    apparent = alloc = 0
    for dp, _dns, fns in os.walk(path):
        for fn in fns:
            st = os.lstat(os.path.join(dp, fn))
            apparent += st.st_size
            alloc += st.st_blocks * 512
    return apparent, alloc


def warm(paths: list[str]) -> None:
    """Read the inputs once: every tool starts from cached input, as the anchors do."""
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(16 * MIB):
                pass


def first_difference(a: str, b: str) -> int | None:
    """None if the two files are identical, else the offset of the first differing byte."""
    off = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(8 * MIB), fb.read(8 * MIB)
            if x != y:
                n = min(len(x), len(y))
                return off + next((i for i in range(n) if x[i] != y[i]), n)
            if not x:
                return None
            off += len(x)


def version_of(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (r.stdout or r.stderr).strip().splitlines()
    return lines[0] if r.returncode == 0 and lines else "?"


def median_wall(rows: list[Result], max_foreign: float | None) -> float:
    """Median wall seconds; rows with more than max_foreign seconds of other processes' CPU
    (a disturbed run) are left out when at least one clean row exists, as in
    bench_anchors.py --summary."""
    clean = [r for r in rows if max_foreign is None or r["foreign_cpu_s"] <= max_foreign]
    return statistics.median(r["wall_s"] for r in clean or rows)


def default_ckpt() -> str:
    """The `ckpt` console script next to this interpreter, else the repo's .venv, else PATH."""
    for p in (
        os.path.join(os.path.dirname(sys.executable), "ckpt"),
        os.path.join(REPO, ".venv", "bin", "ckpt"),
    ):
        if os.access(p, os.X_OK):
            return p
    return "ckpt"


def git_head() -> str:
    r = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "?"


# ----------------------------------------------------------------------------- ckpt
def bench_ckpt(
    ckpt: list[str], data: str, work: str, reps: int, keep: bool, max_foreign: float | None
) -> Result:
    if not shutil.which(ckpt[0]):
        die(f"ckpt command not found: {ckpt[0]} (give --ckpt CMD)")
    base = os.path.join(work, "ckpt")
    os.makedirs(base, exist_ok=True)
    store, out = os.path.join(base, "store"), os.path.join(base, "restore")
    last = STEPS - 1
    src = step_dir(data, last)
    runs: list[Result] = []
    with open(os.path.join(base, "commands.log"), "w") as logf:
        for rep in range(reps):
            for p in (store, out):
                shutil.rmtree(p, ignore_errors=True)
            s = [*ckpt, "--store", store]
            run_timed([*s, "init"], logf)
            run_timed([*s, "vm", "add", VM, "--disk", DISK], logf)
            run_timed([*s, "vm", "start", VM], logf)
            steps: list[Result] = []
            for k in range(STEPS):
                disk, mem = (os.path.join(step_dir(data, k), f) for f in FILES)
                warm([disk, mem])
                logical = os.path.getsize(disk) + os.path.getsize(mem)
                r = run_timed(
                    [
                        *s,
                        "checkpoint",
                        "create",
                        VM,
                        f"step{k}",
                        "--type",
                        "standard",
                        "--disk",
                        f"{DISK}={disk}",
                        "--memory",
                        mem,
                    ],
                    logf,
                )
                apparent, alloc = dir_bytes(store)
                r.update(
                    step=k,
                    logical_bytes=logical,
                    store_apparent=apparent,
                    store_alloc=alloc,
                    MBps=round(logical / 1e6 / r["wall_s"], 1),
                )
                steps.append(r)
                log(
                    f"ckpt rep {rep} step{k}: {r['wall_s']:.2f} s, {r['MBps']:.0f} MB/s, "
                    f"maxrss {r['maxrss_mib']:.0f} MiB, store {apparent / 1e6:.0f} MB"
                )
            os.makedirs(out)
            os.sync()
            got = {f: os.path.join(out, f) for f in FILES}
            rd = run_timed(
                [*s, "restore", VM, f"step{last}", "--disk", DISK, "-o", got["disk.img"]], logf
            )
            rm = run_timed(
                [*s, "restore", VM, f"step{last}", "--memory", "-o", got["mem.bin"]], logf
            )
            logical = sum(os.path.getsize(os.path.join(src, f)) for f in FILES)
            diffs: dict[str, int | str | None] = {
                f: first_difference(os.path.join(src, f), got[f])
                if os.path.isfile(got[f])
                else "missing"
                for f in FILES
            }
            identical = all(v is None for v in diffs.values())
            wall = rd["wall_s"] + rm["wall_s"]
            restore = {
                "disk": rd,
                "memory": rm,
                "wall_s": round(wall, 3),
                "foreign_cpu_s": round(rd["foreign_cpu_s"] + rm["foreign_cpu_s"], 2),
                "logical_bytes": logical,
                "MBps": round(logical / 1e6 / wall, 1),
                "identical": identical,
                "first_difference": diffs,
            }
            log(
                f"ckpt rep {rep} restore: {wall:.2f} s, {restore['MBps']:.0f} MB/s, "
                f"identical={identical}"
            )
            if not identical:
                bar = "!" * 78
                print(
                    f"\n{bar}\nckpt RESTORE MISMATCH, first differing byte per file "
                    f"(None = identical): {diffs}\n{bar}",
                    file=sys.stderr,
                    flush=True,
                )
            apparent, alloc = dir_bytes(store)
            runs.append(
                {
                    "rep": rep,
                    "steps": steps,
                    "restore": restore,
                    "store_apparent": apparent,
                    "store_alloc": alloc,
                }
            )
            shutil.rmtree(out, ignore_errors=True)
            if not (keep and rep == reps - 1):
                shutil.rmtree(store, ignore_errors=True)
    med = statistics.median
    rss = [
        x["maxrss_mib"]
        for r in runs
        for x in (*r["steps"], r["restore"]["disk"], r["restore"]["memory"])
    ]
    return {
        "ingest_MBps": [
            runs[0]["steps"][k]["logical_bytes"]
            / 1e6
            / median_wall([r["steps"][k] for r in runs], max_foreign)
            for k in range(STEPS)
        ],
        "ingest_logical_bytes": runs[0]["steps"][0]["logical_bytes"],
        "stored_bytes": med(r["store_apparent"] for r in runs),
        "stored_alloc_bytes": med(r["store_alloc"] for r in runs),
        "restore_MBps": runs[0]["restore"]["logical_bytes"]
        / 1e6
        / median_wall([r["restore"] for r in runs], max_foreign),
        "peak_rss_mib": max(rss),
        "identical": all(r["restore"]["identical"] for r in runs),
        "version": version_of([*ckpt, "--version"]),
        "git_head": git_head(),
        "command": shlex.join(ckpt),
        "runs": runs,
    }


# ----------------------------------------------------------------------------- anchors
def bench_anchors(configs: list[str], data: str, work: str, reps: int, keep: bool) -> str:
    """Run bench_anchors.py; the path of its JSON-lines result file."""
    if not os.path.isfile(BENCH_ANCHORS):
        die(f"bench_anchors.py not found at {BENCH_ANCHORS}")
    for c in configs:
        exe, pkg = ("restic", "restic") if c.startswith("restic") else ("borg", "borgbackup")
        if not shutil.which(exe):
            die(f"{exe} not installed: apt-get install -y {pkg}")
    if not os.access("/usr/bin/time", os.X_OK):
        die("bench_anchors.py times with /usr/bin/time: apt-get install -y time")
    extra = sorted(
        set(d for d in os.listdir(data) if d.startswith("ckpt"))
        - {f"ckpt{k}" for k in range(STEPS)}
    )
    if extra:
        die(f"bench_anchors.py backs up every ckpt* in {data}; unexpected: {extra}")
    awork = os.path.join(work, "anchors")
    os.makedirs(awork, exist_ok=True)
    results = os.path.join(awork, "results.jsonl")
    if os.path.exists(results):
        os.unlink(results)  # bench_anchors.py appends to it
    cmd = [
        sys.executable,
        BENCH_ANCHORS,
        data,
        awork,
        "--reps",
        str(reps),
        "--configs",
        ",".join(configs),
        "--out",
        results,
    ]
    if keep:
        cmd.append("--keep")
    log("running " + shlex.join(cmd))
    stdout_log = os.path.join(awork, "stdout.log")
    with open(stdout_log, "w") as out:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert p.stdout is not None
        for line in p.stdout:
            out.write(line)
            out.flush()
            try:
                r = json.loads(line)
                what = f"{r['op']}{r.get('step', '')}"
                log(
                    f"{r['config']} rep {r['rep']} {what}: {r['wall_s']:.2f} s, "
                    f"{r['MBps']:.0f} MB/s, maxrss {r['maxrss_mib']:.0f} MiB"
                )
            except (ValueError, KeyError, TypeError):
                sys.stderr.write(line)
        if p.wait() != 0:
            die(f"bench_anchors.py failed (exit {p.returncode}); see {stdout_log}")
    return results


def parse_anchor_results(
    path: str, configs: list[str] | None = None, max_foreign: float | None = None
) -> dict[str, Result]:
    """Medians per configuration from bench_anchors.py's JSON lines (as its --summary does)."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    med = statistics.median
    res = {}
    for cfg in configs or list(dict.fromkeys(r["config"] for r in rows)):
        rs = [r for r in rows if r["config"] == cfg]
        rst = [r for r in rs if r["op"] == "restore"]
        backups = [[r for r in rs if r["op"] == "backup" and r["step"] == k] for k in range(STEPS)]
        if not rst or not all(backups):
            die(f"{path} lacks results for {cfg} (all 5 steps and the restore are needed)")
        res[cfg] = {
            "ingest_MBps": [
                b[0]["logical_bytes"] / 1e6 / median_wall(b, max_foreign) for b in backups
            ],
            "ingest_logical_bytes": backups[0][0]["logical_bytes"],
            "stored_bytes": med(r["repo_apparent"] for r in backups[-1]),
            "stored_alloc_bytes": med(r["repo_alloc"] for r in backups[-1]),
            "restore_MBps": rst[0]["logical_bytes"] / 1e6 / median_wall(rst, max_foreign),
            "peak_rss_mib": max(r["maxrss_mib"] for r in rs),
            "identical": all(r["verified"] for r in rst),
            "version": rst[-1].get("version", "?"),
            "reps": len(rst),
            "rows": rs,
        }
    return res


# ----------------------------------------------------------------------------- report
def fmt(x: float | None, nd: int = 0) -> str:
    return "n/a" if x is None else f"{x:,.{nd}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def print_table(results: dict[str, Result]) -> None:
    head = [
        "tool",
        *(f"step{k} MB/s" for k in range(STEPS)),
        "stored MB",
        "restore MB/s",
        "peak RSS MiB",
        "restore identical",
    ]
    rows = []
    for name, r in results.items():
        label = name if name == "ckpt" else f"{name} {' '.join(r['version'].split()[1:2])}"
        rows.append(
            [
                label,
                *(fmt(v) for v in r["ingest_MBps"]),
                fmt(r["stored_bytes"] / 1e6),
                fmt(r["restore_MBps"]),
                fmt(r["peak_rss_mib"]),
                "yes" if r["identical"] else "NO",
            ]
        )
    ck = results.get("ckpt")
    for ref in (RESTIC, BORG):
        a = results.get(ref)
        if ck is None or a is None:
            continue
        vals = [
            *(ratio(c, x) for c, x in zip(ck["ingest_MBps"], a["ingest_MBps"], strict=True)),
            ratio(ck["stored_bytes"], a["stored_bytes"]),
            ratio(ck["restore_MBps"], a["restore_MBps"]),
            ratio(ck["peak_rss_mib"], a["peak_rss_mib"]),
        ]
        rows.append([f"ckpt/{ref}", *(fmt(v, 2) + "x" for v in vals), ""])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    print()
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for cells in rows:
        print(line(cells))
    logical = next(iter(results.values()))["ingest_logical_bytes"] / 1e6
    print(
        f"\nMB = 10^6 bytes; MB/s of logical input (disk.img + mem.bin, {logical:,.1f} MB a "
        "step); stored MB = apparent size of the store/repository after the last step."
    )

    for name, res in results.items():
        timed = timed_rows(res)
        bad = [x["foreign_cpu_s"] for x in timed if x["foreign_cpu_s"] > DISTURBED_CPU_S]
        if bad:
            print(
                f"note: {len(bad)} of {len(timed)} timed {name} commands ran while other "
                f"processes used > {DISTURBED_CPU_S:g} CPU s (up to {max(bad):.1f} s): "
                "a busy machine; see --reps and --max-foreign-cpu"
            )


def timed_rows(r: Result) -> list[Result]:
    """Every timed ingest and restore command of one tool's result."""
    if "runs" in r:
        return [x for run in r["runs"] for x in (*run["steps"], run["restore"])]
    return list(r["rows"])


def ref(res: Result | None, key: str, k: int | None = None, scale: float = 1.0) -> float | None:
    """A reference figure of an anchor's result, None if that anchor was not run."""
    if res is None:
        return None
    v = res[key] if k is None else res[key][k]
    return float(v) * scale


def targets(results: dict[str, Result]) -> list[Result]:
    ck, rs, bg = results.get("ckpt"), results.get(RESTIC), results.get(BORG)
    out: list[Result] = []
    if ck is None:
        print("\ntargets: n/a (ckpt not run)")
        return out

    def check(
        name: str, value: float, ref: float | None, op: str, factor: float, unit: str
    ) -> None:
        if ref is None:
            out.append({"target": name, "status": "n/a", "text": f"{name}: reference not run"})
            return
        bound = ref * factor
        ok = {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[
            op
        ]
        out.append(
            {
                "target": name,
                "status": "PASS" if ok else "FAIL",
                "value": value,
                "reference": ref,
                "bound": bound,
                "text": f"{name}: {fmt(value, 1)} {op} {fmt(bound, 1)} {unit}",
            }
        )

    ing = ck["ingest_MBps"]
    check(
        f"ingest step0 >= {STEP0_VS_RESTIC}x restic",
        ing[0],
        ref(rs, "ingest_MBps", 0),
        ">=",
        STEP0_VS_RESTIC,
        "MB/s",
    )
    for k in range(1, STEPS):
        check(
            f"ingest step{k} >= {INCR_VS_RESTIC:g}x restic",
            ing[k],
            ref(rs, "ingest_MBps", k),
            ">=",
            INCR_VS_RESTIC,
            "MB/s",
        )
    for k in range(STEPS):
        check(f"ingest step{k} > borg", ing[k], ref(bg, "ingest_MBps", k), ">", 1.0, "MB/s")
    check(
        f"stored <= {STORED_VS_RESTIC}x restic",
        ck["stored_bytes"] / 1e6,
        ref(rs, "stored_bytes", scale=1e-6),
        "<=",
        STORED_VS_RESTIC,
        "MB",
    )
    check(
        f"restore >= {RESTORE_VS_RESTIC:g}x restic",
        ck["restore_MBps"],
        ref(rs, "restore_MBps"),
        ">=",
        RESTORE_VS_RESTIC,
        "MB/s",
    )
    check(f"peak RSS < {PEAK_RSS_MIB:g} MiB", ck["peak_rss_mib"], PEAK_RSS_MIB, "<", 1.0, "MiB")
    out.append(
        {
            "target": "restore byte-identical",
            "status": "PASS" if ck["identical"] else "FAIL",
            "text": f"restore byte-identical: {'yes' if ck['identical'] else 'NO'}",
        }
    )
    print(f"\ntargets (ckpt against {RESTIC} and {BORG}):")
    for t in out:
        print(f"  {t['status']:<4}  {t['text']}")
    met = sum(t["status"] == "PASS" for t in out)
    print(f"targets met: {met} of {len(out)}")
    return out


# ----------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data",
        default="/tmp/ckpt-bench-data",
        help="the dataset: reused if it holds ckpt0..ckpt4, else generated there "
        "(default: %(default)s)",
    )
    ap.add_argument(
        "--work",
        default="/tmp/ckpt-bench-work",
        help="scratch for stores, repositories, restores, logs (default: %(default)s)",
    )
    ap.add_argument("--tools", default="ckpt,restic,borg", help="any of ckpt,restic,borg")
    ap.add_argument(
        "--ckpt",
        default=default_ckpt(),
        help="the ckpt command, may hold arguments (default: the ckpt next to this python, "
        "else <repo>/.venv/bin/ckpt, else ckpt on PATH: %(default)s)",
    )
    ap.add_argument(
        "--configs",
        default="restic,borg-lz4",
        help="bench_anchors.py configurations, filtered by --tools: restic, "
        "restic-max, borg-lz4, borg-zstd3, borg-lz4-enc (default: %(default)s)",
    )
    ap.add_argument("--reps", type=int, default=1, help="repetitions; medians are reported")
    ap.add_argument("--json", metavar="FILE", help="write all figures to FILE")
    ap.add_argument(
        "--max-foreign-cpu",
        type=float,
        metavar="S",
        help="leave out of the medians a command during which other processes used more than "
        "S CPU seconds (kept if no repetition is clean); default: keep all",
    )
    ap.add_argument(
        "--anchor-results",
        metavar="JSONL",
        help="reuse a results.jsonl of an earlier bench_anchors.py run "
        "instead of running restic and borg again",
    )
    ap.add_argument("--gen-python", help="a python with numpy for gen_dataset.py")
    ap.add_argument("--keep", action="store_true", help="keep the last store and repositories")
    ap.add_argument("--check", action="store_true", help="exit 3 if a target fails")
    a = ap.parse_args()

    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    if unknown := set(tools) - {"ckpt", "restic", "borg"}:
        ap.error(f"unknown tools: {','.join(sorted(unknown))}")
    configs = [c for c in a.configs.split(",") if c.split("-")[0] in tools]
    data, work = os.path.abspath(a.data), os.path.abspath(a.work)
    ensure_data(data, a.gen_python)
    os.makedirs(work, exist_ok=True)
    if (free := shutil.disk_usage(work).free) < 6e9:
        log(f"warning: only {free / 1e9:.1f} GB free under {work}")

    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    results: dict[str, Result] = {}
    if "ckpt" in tools:
        results["ckpt"] = bench_ckpt(
            shlex.split(a.ckpt), data, work, a.reps, a.keep, a.max_foreign_cpu
        )
    if configs:
        path = a.anchor_results or bench_anchors(configs, data, work, a.reps, a.keep)
        results.update(parse_anchor_results(path, configs, a.max_foreign_cpu))

    print_table(results)
    tg = targets(results)
    if a.json:
        ds = os.path.join(data, "dataset.json")
        dataset = None
        if os.path.exists(ds):
            with open(ds) as f:
                dataset = json.load(f)
        doc = {
            "started": started,
            "data": data,
            "work": work,
            "steps": STEPS,
            "reps": a.reps,
            "machine": {
                "nproc": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "dataset": dataset,
            "results": results,
            "targets": tg,
        }
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
        log(f"figures written to {a.json}")
    if "ckpt" in results and not results["ckpt"]["identical"]:
        diffs = [r["restore"]["first_difference"] for r in results["ckpt"]["runs"]]
        die(f"ckpt's restore of step{STEPS - 1} differs from its input: {diffs}", 1)
    if bad := [n for n, r in results.items() if n != "ckpt" and not r["identical"]]:
        die(f"restore not verified for {bad}", 1)
    if a.check and any(t["status"] == "FAIL" for t in tg):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
