"""PostgreSQL + S3 beside SQLite + local, in one run: append, rebuild, capture, restore.

    python bench/bench_backends.py [--commands 600] [--events 50000] [--mib 256] [--work DIR]

Starts throwaway PostgreSQL and SeaweedFS servers (tests/servers.py; or uses
the ones CKPT_TEST_POSTGRES_URL / CKPT_TEST_S3_URL name), then, on each of
the two stores:

- append: COMMANDS checkpoint commands without content over 20 VMs, one at a
  time through the Store API (each one event, committed, then the read models
  caught up): what a writer sees, in commands/s.
- backend put: 16 pack-sized (16 MiB) objects put as the chunk writer puts
  them (S3: 8 at once): the backend's own ceiling for capture, in MB/s.
- copy: a log of EVENTS events (generated once on SQLite) copied into the
  store with ``Store.copy_to`` (inserts in batches of 1,000): events/s.
- rebuild: every read model folded again from that log: events/s.
- capture: a MIB MiB disk image (half random, a quarter text, a quarter
  zeros), then again with 10% of its 4 KiB blocks changed: MB/s of image.
- restore: the second checkpoint back to a file: MB/s.

Everything runs on this machine: PostgreSQL and SeaweedFS share its two cores
with ckpt, so the remote figures include the servers' own CPU, not a network.
Compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import servers  # noqa: E402  (tests/servers.py: the throwaway servers)

from ckpt import CheckpointType, DiskFormat, Store  # noqa: E402
from ckpt.domain.checkpoint_rules import MAX_CHECKPOINTS  # noqa: E402

BLOCK = 4096
APP_VMS = 20  # append spreads its commands over 20 VMs: 30 checkpoints each by default
PUTS = 16  # objects of 16 MiB (a pack) for the raw backend put rate


def _put_rate(store: Store) -> float:
    """The backend's own rate for pack-sized puts, as the writer issues them
    (``parallel_requests`` at once): the ceiling for capture."""
    from concurrent.futures import ThreadPoolExecutor

    from ckpt.storage.chunks.backend import parallel_requests

    backend = store.chunks.backend
    data = os.urandom(16 << 20)
    began = time.perf_counter()
    with ThreadPoolExecutor(parallel_requests(backend)) as pool:
        list(pool.map(lambda i: backend.put(f"bench/put-{i}", data), range(PUTS)))
    rate = PUTS * len(data) / 1e6 / (time.perf_counter() - began)
    for i in range(PUTS):
        backend.delete(f"bench/put-{i}")
    return rate


def _image(path: Path, mib: int, seed: int) -> None:
    rng = random.Random(seed)
    text = (b"ckpt benchmark line of repetitive log text %d\n" * 100)[:BLOCK]
    quarter = mib << 18  # bytes in a quarter of the image
    with path.open("wb") as f:
        f.write(rng.randbytes(2 * quarter))
        f.write(text * (quarter // BLOCK))
        f.write(bytes(quarter))


def _change(path: Path, fraction: float, seed: int) -> None:
    rng = random.Random(seed)
    blocks = path.stat().st_size // BLOCK
    with path.open("r+b") as f:
        for b in rng.sample(range(blocks), int(blocks * fraction)):
            f.seek(b * BLOCK)
            f.write(rng.randbytes(BLOCK))


def _log_source(work: Path, events: int) -> Path:
    """An embedded store holding about EVENTS events (kept for later runs)."""
    path = work / f"log-{events}"
    if (path / "ckpt-store.json").exists():
        return path
    with Store.init(path, actor="bench") as store:
        vms = [f"vm{i}" for i in range(20)]
        for vm in vms:
            store.register_vm(vm, checkpoint_type=CheckpointType.STANDARD)
        app = store.app
        loaded = {vm: store.vm(vm) for vm in vms}
        n = len(vms)
        while n < events:
            for vm in vms:
                v = loaded[vm]
                for _ in range(50):  # 50 events a save: generating is not what we measure
                    o = store.unit_of_work.origin()
                    if len(v.checkpoints) < MAX_CHECKPOINTS:
                        v.create_checkpoint(o, f"c{n}")
                    else:  # Hyper-V's limit reached: renames are events too
                        v.rename_checkpoint(o, next(iter(v.checkpoints)), f"c{n}")
                    n += 1
                app.save(v)
        store.rebuild_read_models()
    return path


def _measure(label: str, store_kwargs: dict[str, Any], args: argparse.Namespace,
             work: Path, source: Path) -> dict[str, float]:  # fmt: skip
    figures: dict[str, float] = {}
    # copy + rebuild
    with Store.open(source, actor="bench") as src:
        kwargs = dict(store_kwargs)
        directory = None if kwargs else work / f"{label}-copy"
        began = time.perf_counter()
        report = src.copy_to(kwargs.get("events"), kwargs.get("chunks"), directory)
        figures["copy events/s"] = report.events / (time.perf_counter() - began)
        events = report.events
    opened = (
        Store.open(directory, actor="bench")
        if directory
        else Store.open(None, events=kwargs["events"], chunks=kwargs["chunks"], actor="bench")
    )
    with opened as store:
        count, seconds = store.rebuild_read_models()
        assert count == events
        figures["rebuild events/s"] = count / seconds
    # append, capture, restore on a fresh store
    root = work / f"{label}-store"
    with Store.init(root, actor="bench", **store_kwargs) as store:
        apps = [f"app{i}" for i in range(APP_VMS)]
        for vm in apps:
            store.register_vm(vm, checkpoint_type=CheckpointType.STANDARD)
        began = time.perf_counter()
        for n in range(args.commands):
            store.create_checkpoint(apps[n % APP_VMS], f"c{n}")
        figures["append commands/s"] = args.commands / (time.perf_counter() - began)
        figures["backend put MB/s"] = _put_rate(store)
        store.register_vm("disk", [("D", DiskFormat.VHDX)], checkpoint_type=CheckpointType.STANDARD)
        image = work / "image.raw"
        _image(image, args.mib, seed=1)
        size = image.stat().st_size
        began = time.perf_counter()
        store.create_checkpoint("disk", "base", disks={"D": image})
        figures["capture base MB/s"] = size / 1e6 / (time.perf_counter() - began)
        _change(image, 0.10, seed=2)
        began = time.perf_counter()
        store.create_checkpoint("disk", "changed", disks={"D": image})
        figures["capture 10% changed MB/s"] = size / 1e6 / (time.perf_counter() - began)
        out = work / "restored.raw"
        began = time.perf_counter()
        with out.open("wb") as f:
            store.restore_disk("disk", "changed", "D", f)
        figures["restore MB/s"] = size / 1e6 / (time.perf_counter() - began)
        assert out.read_bytes() == image.read_bytes(), f"{label}: restore differs"
        out.unlink()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=600)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--mib", type=int, default=256)
    default_work = Path(tempfile.gettempdir()) / "ckpt-bench-backends"
    parser.add_argument("--work", type=Path, default=default_work)
    args = parser.parse_args()
    if args.commands > APP_VMS * MAX_CHECKPOINTS:
        limit = APP_VMS * MAX_CHECKPOINTS  # Hyper-V's 50 a VM, enforced
        parser.error(f"--commands is at most {limit}: {MAX_CHECKPOINTS} on each of {APP_VMS} VMs")
    args.work.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ckpt-bench-servers-"))
    os.chmod(root, 0o755)
    try:
        os.environ.update(servers.start(root))
        pg, s3 = os.environ[servers.PG_VAR], os.environ[servers.S3_VAR]
        if pg.startswith("unavailable") or s3.startswith("unavailable"):
            sys.exit(f"bench_backends: servers unavailable: {pg} / {s3}")
        source = _log_source(args.work, args.events)
        run = f"r{int(time.time())}"
        remote = {"events": f"{pg}?schema={run}", "chunks": s3.replace("?", f"/{run}?", 1)}
        results = {}
        for label, kwargs in (("sqlite+local", {}), ("postgresql+s3", remote)):
            scratch = Path(tempfile.mkdtemp(dir=args.work, prefix=f"{label}-"))
            results[label] = _measure(label, kwargs, args, scratch, source)
            print(f"{label}: done", file=sys.stderr)
    finally:
        servers.stop(root)
    local, far = results["sqlite+local"], results["postgresql+s3"]
    print(f"\n{'figure':<26}{'SQLite + local':>16}{'PostgreSQL + S3':>17}{'ratio':>8}")
    for key in local:
        print(f"{key:<26}{local[key]:>16,.0f}{far[key]:>17,.0f}{far[key] / local[key]:>8.2f}")
    print(f"\n(events: {args.events:,} in the copied log; {args.commands} append commands; "
          f"{args.mib} MiB image; servers on this machine's two cores)")  # fmt: skip


if __name__ == "__main__":
    main()
