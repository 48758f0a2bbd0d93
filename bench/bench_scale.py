#!/usr/bin/env python3
"""Scale benchmark: what every ckpt command costs as the disk grows (issue 13, goals 1 and 2).

For each size in --sizes (GiB, fractions allowed) it writes a disk image of unique,
compressible 4 KiB blocks (block i = u64 i, u64 salt, then zeros: every block differs, each
compresses to a few dozen bytes, so the store stays small and the cost is per block, as with
a real disk of unique data), takes it into a fresh store (or a copy of a prefilled one, see
--store-prefill) and runs the ckpt CLI, one process per command:

    create       checkpoint create VM c1 --disk D=IMG                   (first capture)
    incr-full    one 4 KiB block rewritten, checkpoint create VM c2 --disk D=IMG  (full scan)
    incr-cbt     another block rewritten, checkpoint create VM c3 --disk D=IMG
                 --changed-blocks D=EXTENTS naming that one block; the image is dropped from
                 the page cache first, so `image_read` (fincore) is what the command read of it
    restore      restore VM c3 --disk D -o OUT.raw    (compared byte for byte with the image)
    restore-1-layer, restore-N-layers   (--deep N, default 50) after N-3 more one-block
                 --changed-blocks checkpoints: restore c1 (1 layer) and cN (N layers, compared)
    restore-vhdx restore VM c3 --disk D -o OUT.vhdx
    export       export VM c3 -o DIR
    verify, stats, gc --grace 0, tree VM, chain VM, files VM c3, log VM

For each command: wall seconds, CPU seconds, peak RSS (the child's ru_maxrss from os.wait4,
as /usr/bin/time -f %M reports it) and what it read (/proc/PID/io `rchar`: every byte read
through read(2), store and Python's own files included; `read_bytes`: bytes fetched from
the block device), read from the exited child before it is reaped.  `startup` is
`ckpt --help`: the floor every command pays.

restic and borg (../shared/bench/bench_anchors.py's configurations `restic` and `borg-lz4`,
driven through its `timed`) back up the same image (the image hard-linked into a staging
directory), back it up again after the one-block change, and restore it.

Then it prints, per command, peak RSS and wall time against disk size, and the slopes of a
least-squares line through them (MiB of RSS and seconds per GiB of disk).  MiB = 2^20 bytes,
GiB = 2^30 bytes, MB = 10^6 bytes.

Usage:  python3 bench/bench_scale.py [--sizes 1,4,16,32] [--work /tmp/ckpt-scale-work]
            [--tools ckpt,restic,borg] [--store-prefill GIB] [--json FILE] [--keep]
Stdlib only; needs util-linux `fincore` for `image_read` (else it is left out).
"""

from __future__ import annotations

import argparse
import array
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn, TextIO

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_content  # noqa: E402  (bench/ is not a package: reuse its helpers by path)

sys.path.insert(0, bench_content.SHARED_BENCH)
try:
    import bench_anchors  # type: ignore[import-not-found]
except ImportError:  # the anchors live outside the repository; ckpt runs without them
    bench_anchors = None

Result = dict[str, Any]
BLOCK = 4096
GIB = 1 << 30
MIB = 1 << 20
BLOCKS_PER_GIB = GIB // BLOCK
WRITE_BATCH = 256  # blocks per write(2): 1 MiB buffers
# The harness keeps its own peak RSS far below any ckpt command's (~40 MiB for `--help`):
# a child started by vfork (subprocess's default) inherits the parent's peak RSS as its own
# ru_maxrss floor, so 64 MiB buffers here made every command report >= 85 MiB.
READ_BATCH = 1 << 20
VM, DISK = "scale", "D"
SALT = 0x5CA1E  # the measured disk's blocks
PREFILL_SALT = 0xF111  # the prefill VM's blocks: unique against the measured disk
PREFILL_CHECKPOINTS = 4  # the prefill disk is checkpointed this often: logical = 4x unique
ANCHORS = ("restic", "borg-lz4")
BUSY_CPU_S = 1.0  # other processes' CPU seconds during one command worth a note
# Commands in the order they run; the tables list them in this order.
CKPT_COMMANDS = (
    "startup",
    "create",
    "incr-full",
    "incr-cbt",
    "restore",
    "restore-vhdx",
    "export",
    "verify",
    "stats",
    "gc",
    "tree",
    "chain",
    "files",
    "log",
)
log = bench_content.log


def die(msg: str, code: int = 2) -> NoReturn:
    bar = "!" * 78
    print(f"\n{bar}\nbench_scale: FAILED: {msg}\n{bar}", file=sys.stderr, flush=True)
    sys.exit(code)


# ----------------------------------------------------------------------------- images
def block_bytes(index: int, salt: int) -> bytes:
    """The content of block `index` of a disk with `salt`."""
    head = array.array("Q", [index, salt]).tobytes()
    return head + bytes(BLOCK - len(head))


def write_image(path: str, blocks: int, salt: int) -> float:
    """Write a disk image of `blocks` unique blocks; returns the seconds it took."""
    t0 = time.perf_counter()
    buf = bytearray(WRITE_BATCH * BLOCK)
    words = memoryview(buf).cast("Q")
    step = BLOCK // 8
    with open(path, "wb", buffering=0) as f:
        for start in range(0, blocks, WRITE_BATCH):
            n = min(WRITE_BATCH, blocks - start)
            # Only the first 16 bytes of each block change from batch to batch; the rest of
            # the buffer stays zero.
            words[0 : n * step : step] = array.array("Q", range(start, start + n))
            words[1 : n * step : step] = array.array("Q", [salt]) * n
            f.write(memoryview(buf)[: n * BLOCK])
    return time.perf_counter() - t0


def rewrite_block(path: str, index: int, salt: int) -> None:
    """Give block `index` new content (unique against every other block)."""
    with open(path, "r+b", buffering=0) as f:
        os.pwrite(f.fileno(), block_bytes(index, salt ^ 0xC4A96E), index * BLOCK)


def drop_from_cache(path: str) -> None:
    """Evict the file from the page cache, so what a command reads of it shows in fincore."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_bytes(path: str) -> int | None:
    """Bytes of the file in the page cache (util-linux fincore), None without fincore."""
    if not shutil.which("fincore"):
        return None
    r = subprocess.run(
        ["fincore", "--bytes", "--raw", "--noheadings", "--output", "RES", path],
        capture_output=True,
        text=True,
    )
    return int(r.stdout.split()[0]) if r.returncode == 0 and r.stdout.strip() else None


# ----------------------------------------------------------------------------- running
def proc_io(pid: int) -> dict[str, int]:
    try:
        with open(f"/proc/{pid}/io") as f:
            return {k: int(v) for k, v in (line.split(":") for line in f)}
    except OSError:  # not readable (another user's process, no task accounting)
        return {}


def run_measured(cmd: list[str], logf: TextIO) -> Result:
    """Run cmd: wall, CPU, peak RSS and the bytes it read; dies on a non-zero exit."""
    logf.write(f"$ {shlex.join(cmd)}\n")
    logf.flush()
    b0, t0 = bench_content.busy_cpu_s(), time.perf_counter()
    p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    # Wait without reaping: an exited child's /proc/PID/io stays readable until it is reaped.
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
    wall = time.perf_counter() - t0
    io = proc_io(p.pid)
    _, status, ru = os.wait4(p.pid, 0)
    b1 = bench_content.busy_cpu_s()
    p.returncode = rc = os.waitstatus_to_exitcode(status)
    logf.write(f"[exit {rc}, {wall:.3f} s, maxrss {ru.ru_maxrss} KiB, io {io}]\n")
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
        "rchar": io.get("rchar"),
        "read_bytes": io.get("read_bytes"),
        "foreign_cpu_s": round(max(0.0, (b1 - b0) - cpu), 2),
    }


def files_equal(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(READ_BATCH), fb.read(READ_BATCH)
            if x != y:
                return False
            if not x:
                return True


def warm(path: str) -> None:
    """Read the image once, so every tool starts from a cached image (as bench_content does)."""
    with open(path, "rb", buffering=0) as f:
        while f.read(READ_BATCH):
            pass


def own_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- ckpt
def prefill_store(ckpt: list[str], store: str, gib: float, work: str, logf: TextIO) -> Result:
    """A store holding `gib` GiB logical of another VM: a disk of gib/4 GiB of unique blocks,
    checkpointed once in full and three times more with one changed block named (cheap:
    dedup-friendly, the chunk index holds gib/4 GiB of 4 KiB chunks)."""
    s = [*ckpt, "--store", store]
    run_measured([*s, "init"], logf)
    run_measured(
        [*s, "vm", "add", "prefill", "--disk", DISK, "--checkpoint-type", "standard"], logf
    )
    img = os.path.join(work, "prefill.img")
    blocks = max(1, round(gib * BLOCKS_PER_GIB / PREFILL_CHECKPOINTS))
    write_image(img, blocks, PREFILL_SALT)
    extents = os.path.join(work, "prefill.extents")
    t0 = time.perf_counter()
    for k in range(PREFILL_CHECKPOINTS):
        cmd = [*s, "checkpoint", "create", "prefill", f"p{k}", "--disk", f"{DISK}={img}"]
        if k:
            index = k * blocks // PREFILL_CHECKPOINTS
            rewrite_block(img, index, PREFILL_SALT + k)
            with open(extents, "w") as f:
                f.write(f"{index * BLOCK} {BLOCK}\n")
            cmd += ["--changed-blocks", f"{DISK}={extents}"]
        r = run_measured(cmd, logf)
        log(f"prefill p{k}: {r['wall_s']:.1f} s, maxrss {r['maxrss_mib']:.0f} MiB")
    os.unlink(img)
    return {
        "logical_bytes": blocks * BLOCK * PREFILL_CHECKPOINTS,
        "unique_blocks": blocks + PREFILL_CHECKPOINTS - 1,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def bench_ckpt_size(
    ckpt: list[str],
    work: str,
    img: str,
    blocks: int,
    template: str | None,
    logf: TextIO,
    deep: int = 50,
) -> dict[str, Result]:
    """Every command once on a disk of `blocks` blocks; figures per command."""
    store = os.path.join(work, "store")
    s = [*ckpt, "--store", store]
    if template:
        shutil.copytree(template, store)
    else:
        run_measured([*s, "init"], logf)
    run_measured([*s, "vm", "add", VM, "--disk", DISK, "--checkpoint-type", "standard"], logf)
    out: dict[str, Result] = {}

    def step(name: str, cmd: list[str], after: Callable[[Result], None] | None = None) -> None:
        r = run_measured(cmd, logf)
        if after:
            after(r)
        out[name] = r
        extra = f", image read {r['image_read'] / MIB:.2f} MiB" if "image_read" in r else ""
        log(f"  {name}: {r['wall_s']:.2f} s, maxrss {r['maxrss_mib']:.0f} MiB{extra}")

    step("startup", [*ckpt, "--help"])
    warm(img)
    step("create", [*s, "checkpoint", "create", VM, "c1", "--disk", f"{DISK}={img}"])
    rewrite_block(img, blocks // 2, SALT)
    warm(img)
    step("incr-full", [*s, "checkpoint", "create", VM, "c2", "--disk", f"{DISK}={img}"])
    changed = blocks // 3
    rewrite_block(img, changed, SALT + 1)
    extents = os.path.join(work, "changed.extents")
    with open(extents, "w") as f:
        f.write(f"{changed * BLOCK} {BLOCK}\n")
    drop_from_cache(img)
    before = cached_bytes(img)

    def image_read(r: Result) -> None:
        after = cached_bytes(img)
        if before is not None and after is not None:
            r["image_read"] = after - before

    step(
        "incr-cbt",
        [
            *s,
            *("checkpoint", "create", VM, "c3", "--disk", f"{DISK}={img}"),
            *("--changed-blocks", f"{DISK}={extents}"),
        ],
        image_read,
    )
    raw, vhdx, exported = (os.path.join(work, n) for n in ("out.raw", "out.vhdx", "export"))

    def check_raw(r: Result) -> None:
        r["identical"] = files_equal(img, raw)
        if not r["identical"]:
            die(f"ckpt restore of {blocks} blocks differs from the image (--keep keeps both)", 1)
        os.unlink(raw)

    step("restore", [*s, "restore", VM, "c3", "--disk", DISK, "-o", raw], check_raw)
    step(
        "restore-vhdx",
        [*s, "restore", VM, "c3", "--disk", DISK, "-o", vhdx],
        lambda r: os.unlink(vhdx),
    )
    step(
        "export",
        [*s, "export", VM, "c3", "-o", exported],
        lambda r: shutil.rmtree(exported),
    )
    step("verify", [*s, "verify"])
    step("stats", [*s, "stats"])
    step("gc", [*s, "gc", "--grace", "0"])
    step("tree", [*s, "tree", VM])
    step("chain", [*s, "chain", VM])
    step("files", [*s, "files", VM, "c3"])
    step("log", [*s, "log", VM])
    if deep > 3:
        # A deep chain: one block changed per checkpoint (--changed-blocks) up to `deep`
        # layers; restoring the last must cost what restoring a 1-layer disk (c1) costs.
        for n in range(4, deep + 1):
            index = (blocks // 5 + 7 * n) % blocks
            rewrite_block(img, index, SALT + n)
            with open(extents, "w") as f:
                f.write(f"{index * BLOCK} {BLOCK}\n")
            run_measured(
                [*s, "checkpoint", "create", VM, f"c{n}", "--disk", f"{DISK}={img}",
                 "--changed-blocks", f"{DISK}={extents}"],
                logf,
            )  # fmt: skip
        step(
            "restore-1-layer",
            [*s, "restore", VM, "c1", "--disk", DISK, "-o", raw],
            lambda r: os.unlink(raw),
        )
        step(f"restore-{deep}-layers", [*s, "restore", VM, f"c{deep}", "--disk", DISK, "-o", raw],
             check_raw)  # fmt: skip
    apparent, _ = bench_content.dir_bytes(store)
    out["store"] = {"apparent_bytes": apparent}
    shutil.rmtree(store)
    return out


# ----------------------------------------------------------------------------- anchors
def bench_anchor_size(config: str, work: str, img: str, blocks: int, logf: TextIO) -> Result:
    """restic or borg on the same image: a backup, one after a one-block change, a restore."""
    assert bench_anchors is not None
    init, backup, restore = bench_anchors.CONFIGS[config]
    awork = os.path.join(work, config)
    env = dict(
        os.environ,
        WORK=awork,
        RESTIC_PASSWORD="bench",
        BORG_PASSPHRASE="bench",
        RESTIC_CACHE_DIR=os.path.join(awork, "cache"),
        BORG_BASE_DIR=os.path.join(awork, "borgbase"),
        XDG_CACHE_HOME=os.path.join(awork, "cache"),
        HOME=awork,
        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
    )
    repo, src, dst = (os.path.join(awork, n) for n in ("repo", "stage", "restore"))
    os.makedirs(src)
    staged = os.path.join(src, "disk.img")
    os.link(img, staged)
    subprocess.run(bench_anchors.fill(init, repo=repo), env=env, check=True, capture_output=True)
    res: Result = {}
    warm(img)
    res["backup"] = bench_anchors.timed(
        bench_anchors.fill(backup, repo=repo, src=src, k=0), env, log=logf
    )
    rewrite_block(img, blocks // 2, SALT)
    warm(img)
    res["backup-incr"] = bench_anchors.timed(
        bench_anchors.fill(backup, repo=repo, src=src, k=1), env, log=logf
    )
    os.makedirs(dst)
    res["restore"] = bench_anchors.timed(
        bench_anchors.fill(restore, repo=repo, dst=dst, k=1),
        env,
        cwd=dst if config.startswith("borg") else None,
        log=logf,
    )
    got = [os.path.join(dp, f) for dp, _, fs in os.walk(dst) for f in fs]
    ok = len(got) == 1 and files_equal(img, got[0])
    res["restore"]["identical"] = ok
    if not ok:
        die(f"{config} restore of {blocks} blocks differs from the image: {got}", 1)
    for name, r in res.items():
        log(f"  {config} {name}: {r['wall_s']:.2f} s, maxrss {r['maxrss_mib']:.0f} MiB")
    res["repo"] = {"apparent_bytes": bench_content.dir_bytes(repo)[0]}
    shutil.rmtree(awork)
    return res


# ----------------------------------------------------------------------------- report
def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys against xs; None below two distinct sizes."""
    if len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def table(
    title: str, sizes: list[float], rows: dict[str, list[float]], unit: str, nd: int
) -> list[str]:
    head = [
        title,
        *(f"{g:.3g} GiB" for g in sizes),
        f"slope {unit}/GiB",
        "last/first",
    ]
    body = []
    for name, ys in rows.items():
        sl = slope(sizes, ys)
        body.append(
            [
                name,
                *(f"{y:,.{nd}f}" for y in ys),
                "n/a" if sl is None else f"{sl:,.{max(nd, 1) + 1}f}",
                f"{ys[-1] / ys[0]:.2f}x" if ys[0] else "n/a",
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    return [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)]


def report(sizes: list[float], runs: list[Result]) -> Result:
    """Print the RSS and time tables; returns the slopes."""
    rows: dict[str, dict[str, list[float]]] = {"maxrss_mib": {}, "wall_s": {}}
    tools = [t for t in ("ckpt", *ANCHORS) if all(t in r for r in runs)]
    for tool in tools:
        for cmd in runs[0][tool]:
            if cmd in ("store", "repo"):
                continue
            label = cmd if tool == "ckpt" else f"{tool.split('-')[0]} {cmd}"
            for key in rows:
                rows[key][label] = [float(r[tool][cmd][key]) for r in runs]
    print()
    print("\n".join(table("peak RSS MiB", sizes, rows["maxrss_mib"], "MiB", 0)))
    print()
    print("\n".join(table("wall s", sizes, rows["wall_s"], "s", 2)))
    print()
    if "ckpt" in tools:
        for r, g in zip(runs, sizes, strict=True):
            c = r["ckpt"]
            rate = r["image_bytes"] / 1e6 / c["incr-full"]["wall_s"]
            # What Python, its packages and the store cost every command, beside the image.
            read = c["incr-full"]["rchar"] and c["incr-full"]["rchar"] - c["startup"]["rchar"]
            cbt = c["incr-cbt"].get("image_read")
            print(
                f"{g:.3g} GiB: full-scan incremental {rate:,.0f} MB/s of image"
                + (
                    f", read {read / r['image_bytes']:.2f}x the image (rchar beyond startup's)"
                    if read
                    else ""
                )
                + (
                    ""
                    if cbt is None
                    else f"; one-block --changed-blocks read {cbt / MIB:.2f} MiB of the image"
                )
                + f"; store {c['store']['apparent_bytes'] / 1e6:,.1f} MB"
            )
    timed = [x for r in runs for x in r.get("ckpt", {}).values() if "foreign_cpu_s" in x]
    busy = [x["foreign_cpu_s"] for x in timed if x["foreign_cpu_s"] > BUSY_CPU_S]
    if busy:
        print(
            f"note: {len(busy)} of {len(timed)} ckpt commands ran while other processes used "
            f"> {BUSY_CPU_S:g} CPU s (up to {max(busy):.1f} s): a busy machine, noisy wall times"
        )
    print(
        "\npeak RSS: the child's ru_maxrss; slope: least-squares line over the sizes; "
        "last/first: the largest size's figure over the smallest's."
    )
    return {key: {name: slope(sizes, ys) for name, ys in by.items()} for key, by in rows.items()}


# ----------------------------------------------------------------------------- main
def parse_sizes(text: str) -> list[float]:
    try:
        sizes = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes: not numbers: {text!r}") from None
    if not sizes or any(g <= 0 for g in sizes):
        raise argparse.ArgumentTypeError(f"--sizes: give positive GiB figures, not {text!r}")
    return sizes


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes",
        type=parse_sizes,
        default="1,4,16,32",
        help="disk sizes in GiB (default: %(default)s)",
    )
    ap.add_argument("--blocks", type=int, help=argparse.SUPPRESS)  # one size of N blocks (tests)
    ap.add_argument(
        "--work",
        default="/tmp/ckpt-scale-work",
        help="scratch directory, removed at the end (default: %(default)s)",
    )
    ap.add_argument(
        "--tools", default="ckpt,restic,borg", help="any of ckpt,restic,borg (default: %(default)s)"
    )
    ap.add_argument(
        "--ckpt",
        default=bench_content.default_ckpt(),
        help="the ckpt command, may hold arguments (default: %(default)s)",
    )
    ap.add_argument(
        "--store-prefill",
        type=float,
        default=0.0,
        metavar="GIB",
        help="measure in a store already holding GIB GiB logical of another VM "
        f"(GIB/{PREFILL_CHECKPOINTS} unique, checkpointed {PREFILL_CHECKPOINTS} times)",
    )
    ap.add_argument(
        "--deep",
        type=int,
        default=50,
        metavar="N",
        help="grow the chain to N checkpoints (one block changed each, --changed-blocks) and "
        "restore the last against c1, a 1-layer disk (default: %(default)s, at most 50: "
        "Hyper-V's checkpoints per VM, which ckpt enforces; 0 skips)",
    )
    ap.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    a = ap.parse_args()
    sizes: list[float] = a.sizes
    if isinstance(sizes, str):  # argparse leaves a default string unparsed
        sizes = parse_sizes(sizes)
    block_counts = [a.blocks] if a.blocks else [max(1, round(g * BLOCKS_PER_GIB)) for g in sizes]
    sizes = [n / BLOCKS_PER_GIB for n in block_counts]
    if a.deep > 50:
        ap.error("--deep is at most 50: ckpt refuses a 51st checkpoint of a VM, as Hyper-V does")
    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    if unknown := set(tools) - {"ckpt", "restic", "borg"}:
        ap.error(f"unknown tools: {','.join(sorted(unknown))}")
    anchors = [c for c in ANCHORS if c.split("-")[0] in tools]
    if anchors and bench_anchors is None:
        die(f"bench_anchors.py not found in {bench_content.SHARED_BENCH}; give --tools ckpt")
    for c in anchors:
        if not shutil.which(c.split("-")[0]):
            die(f"{c.split('-')[0]} is not installed (or leave it out of --tools)")
    ckpt = shlex.split(a.ckpt)
    if "ckpt" in tools and not shutil.which(ckpt[0]):
        die(f"ckpt command not found: {ckpt[0]} (give --ckpt CMD)")
    work = os.path.abspath(a.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    need = max(block_counts) * BLOCK * 3 + a.store_prefill * GIB / PREFILL_CHECKPOINTS
    if (free := shutil.disk_usage(work).free) < need:
        log(f"warning: {free / GIB:.1f} GiB free under {work}, about {need / GIB:.1f} GiB needed")
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    runs: list[Result] = []
    prefill: Result | None = None
    try:
        with open(os.path.join(work, "commands.log"), "w") as logf:
            template = None
            if a.store_prefill > 0 and "ckpt" in tools:
                template = os.path.join(work, "prefilled-store")
                log(f"prefilling a store with {a.store_prefill:g} GiB logical")
                prefill = prefill_store(ckpt, template, a.store_prefill, work, logf)
            for g, blocks in zip(sizes, block_counts, strict=True):
                sdir = os.path.join(work, f"size-{blocks}")
                os.makedirs(sdir)
                img = os.path.join(sdir, "disk.img")
                secs = write_image(img, blocks, SALT)
                log(f"{g:.3g} GiB ({blocks} blocks): image written in {secs:.1f} s")
                run: Result = {"gib": g, "blocks": blocks, "image_bytes": blocks * BLOCK}
                if "ckpt" in tools:
                    run["ckpt"] = bench_ckpt_size(ckpt, sdir, img, blocks, template, logf, a.deep)
                for c in anchors:
                    write_image(img, blocks, SALT)  # the same bytes the first capture saw
                    run[c] = bench_anchor_size(c, sdir, img, blocks, logf)
                shutil.rmtree(sdir)
                runs.append(run)
        slopes = report(sizes, runs)
        if (own := own_peak_rss_mib()) > 32:
            log(f"warning: the harness itself peaked at {own:.0f} MiB, a floor under every RSS")
        if a.json:
            doc = {
                "started": started,
                "work": work,
                "sizes_gib": sizes,
                "store_prefill": prefill,
                "machine": {
                    "nproc": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "ckpt": {
                    "command": shlex.join(ckpt),
                    "git_head": bench_content.git_head(),
                },
                "runs": runs,
                "slopes_per_gib": slopes,
                "harness_peak_rss_mib": round(own_peak_rss_mib(), 1),
            }
            with open(a.json, "w") as f:
                json.dump(doc, f, indent=1)
            log(f"figures written to {a.json}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
