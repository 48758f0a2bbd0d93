"""Measure the chunking choices on the benchmark data: hash, block size, zstd level, pack size.

    python bench/measure_choices.py [--data /tmp/ckpt-bench-data]

For each block size (4, 16, 64 KiB) it hashes every block of the 5-step series
(disk.img + mem.bin per step), counts the unique non-zero blocks, and
compresses them (zstd level 1 and 3) to give the bytes a store would hold; it
also times SHA-256 against BLAKE2b over the same bytes and the size of the
block maps (40 bytes per recorded block). Prints a table; figures go to
docs/decisions/0002-chunking.md. Stdlib + zstandard only.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import zstandard

MiB = 1 << 20


def blocks(path: Path, size: int):  # type: ignore[no-untyped-def]
    with path.open("rb") as f:
        while True:
            buf = f.read(64 * MiB)
            if not buf:
                return
            for k in range(0, len(buf), size):
                yield buf[k : k + size]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/ckpt-bench-data")
    ap.add_argument("--sizes", default="4096,16384,65536")
    args = ap.parse_args()
    data = Path(args.data)
    steps = [data / f"ckpt{i}" for i in range(5)]
    c1 = zstandard.ZstdCompressor(level=1)
    c3 = zstandard.ZstdCompressor(level=3)
    print(
        "block  | unique MB | stored MB zstd-1 | stored MB zstd-3 | map MB (5 steps) | zstd-1 MB/s | zstd-3 MB/s"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        zero = bytes(size)
        seen: set[bytes] = set()
        unique = stored1 = stored3 = recorded = 0
        t1 = t3 = 0.0
        previous: dict[tuple[str, int], bytes] = {}
        for step in steps:
            for name in ("disk.img", "mem.bin"):
                for index, block in enumerate(blocks(step / name, size)):
                    if block == zero:
                        cid = b""
                    else:
                        cid = hashlib.sha256(block).digest()
                    if previous.get((name, index), b"") != cid:
                        recorded += 1
                        previous[(name, index)] = cid
                    if not cid or cid in seen:
                        continue
                    seen.add(cid)
                    unique += len(block)
                    t = time.perf_counter()
                    stored1 += len(c1.compress(block))
                    t1 += time.perf_counter() - t
                    t = time.perf_counter()
                    stored3 += len(c3.compress(block))
                    t3 += time.perf_counter() - t
        print(
            f"{size // 1024:>4} KiB | {unique / 1e6:9.0f} | {stored1 / 1e6:16.0f} | {stored3 / 1e6:16.0f} |"
            f" {recorded * 40 / 1e6:16.1f} | {unique / t1 / 1e6:11.0f} | {unique / t3 / 1e6:11.0f}"
        )
    sample = (steps[0] / "disk.img").read_bytes()[: 512 * MiB]
    for name, fn in (
        ("sha256", hashlib.sha256),
        ("blake2b-256", lambda b: hashlib.blake2b(b, digest_size=32)),
    ):
        for size in (4096, 65536):
            t = time.perf_counter()
            for k in range(0, len(sample), size):
                fn(sample[k : k + size]).digest()
            print(
                f"hash {name:12} {size // 1024:>3} KiB blocks: {len(sample) / (time.perf_counter() - t) / 1e6:6.0f} MB/s"
            )


if __name__ == "__main__":
    main()
