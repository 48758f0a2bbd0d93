"""Metadata scales with data written, not with virtual size: a 2 TiB sparse disk, 1 GiB written.

    python bench/bench_sparse.py [--work /tmp/ckpt-sparse] [--written-mib 1024]

Writes a 2 TiB sparse image with WRITTEN MiB of data in 64 MiB runs spread
over the disk (half random, half text-like), checkpoints it, rewrites 64 MiB,
checkpoints again, restores the last checkpoint (sparse) and compares the
written regions. Prints capture and restore times and the metadata a store
keeps per GiB stored: manifest bytes (block maps) and event-log bytes.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import time
from pathlib import Path

from ckpt import CheckpointType, DiskFormat, Store
from ckpt.storage import references

TiB, GiB, MiB = 1 << 40, 1 << 30, 1 << 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/ckpt-sparse")
    ap.add_argument("--written-mib", type=int, default=1024)
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rng = random.Random(1)
    image = work / "disk.img"
    runs = args.written_mib // 64
    offsets = sorted(rng.randrange(0, 2 * TiB // (64 * MiB)) * 64 * MiB for _ in range(runs))
    phrase = b"the quick brown fox jumps over the lazy dog; "
    text = (phrase * (MiB // len(phrase) + 1))[:MiB]
    with image.open("wb") as f:
        f.truncate(2 * TiB)
        for k, offset in enumerate(offsets):
            f.seek(offset)
            f.write(rng.randbytes(64 * MiB) if k % 2 else text * 64)
    store = Store.init(work / "store", actor="bench")
    store.register_vm("big", [("D", DiskFormat.VHDX)], checkpoint_type=CheckpointType.STANDARD)
    t = time.perf_counter()
    store.create_checkpoint("big", "first", disks={"D": image})
    first = time.perf_counter() - t
    with image.open("r+b") as f:
        f.seek(offsets[0])
        f.write(rng.randbytes(64 * MiB))
    t = time.perf_counter()
    store.create_checkpoint("big", "second", disks={"D": image})
    second = time.perf_counter() - t
    out = work / "restored.img"
    t = time.perf_counter()
    with out.open("wb") as o:
        store.restore_disk("big", "second", "D", o)
    restore = time.perf_counter() - t
    with image.open("rb") as a, out.open("rb") as b:
        for offset in offsets:
            a.seek(offset)
            b.seek(offset)
            assert a.read(64 * MiB) == b.read(64 * MiB), f"mismatch at {offset}"
    vm = store.vm("big")
    refs = [ref for refs in vm.contents.values() for ref in refs]
    # v2 manifests: each root and top-list piece, and each distinct segment once
    manifest_bytes, seen = 0, set()
    for r in refs:
        batches, _ = references.manifest_ids(r, store.chunks, seen)
        for n, batch in enumerate(batches):
            manifest_bytes += sum(
                len(store.chunks.get(c)) for c in (batch if n == 0 else batch[:1])
            )
    db = sqlite3.connect(work / "store" / "events.sqlite")
    event_bytes = db.execute("SELECT SUM(LENGTH(state)) FROM stored_events").fetchone()[0]
    stats = store.stats()["total"]
    stored_gib = stats["stored_bytes"] / GiB
    print(f"virtual size 2 TiB, written {args.written_mib} MiB in {runs} runs of 64 MiB")
    print(
        f"capture 1: {first:.2f} s ({args.written_mib * MiB / first / 1e6:.0f} MB/s of written data)"
    )
    print(f"capture 2 (64 MiB rewritten): {second:.2f} s")
    print(
        f"restore (sparse): {restore:.2f} s; allocated {out.stat().st_blocks * 512 / MiB:.0f} MiB"
    )
    print(f"stored {stats['stored_bytes'] / MiB:.0f} MiB in {stats['chunks']} chunks")
    meta = (manifest_bytes + event_bytes) / MiB
    print(
        f"metadata: manifests {manifest_bytes / MiB:.1f} MiB, events {event_bytes / 1024:.1f} KiB"
        f" = {meta / stored_gib:.1f} MiB per GiB stored,"
        f" {meta / (args.written_mib / 1024):.1f} MiB per GiB written"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
