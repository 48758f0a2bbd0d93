"""Read-model speed: full rebuild, incremental update, and --at latency.

    python bench/bench_projections.py [--events 1000000] [--vms 1000] [--work DIR]

Generates a history of EVENTS events over VMS VMs (checkpoint create, rename,
apply, delete, power changes and disk captures with synthetic manifest ids)
plus one VM with 10,000 events, straight through the application (no
read-model work while generating), then measures:

- full rebuild of every read model, in events/s (target: >= 50,000);
- the cost of one incremental update after a command, median and p95 in ms
  (target: < 2 ms);
- ``tree --at`` and ``chain --at`` latency on the 10,000-event VM at random
  past positions, median and p95 in ms (target: < 50 ms).
The generated store is kept in WORK and reused by later runs.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ckpt import CheckpointType, DiskFormat, Store
from ckpt.domain import DiskCapture, Origin, VirtualMachine
from ckpt.domain.checkpoint_rules import MAX_CHECKPOINTS

SAVE_EVERY = 100  # events per save while generating: one SQLite transaction each


def _origin(rng: random.Random, clock: list[datetime]) -> Origin:
    clock[0] += timedelta(seconds=1)
    return Origin("bench", "host", clock[0], uuid.UUID(int=rng.getrandbits(128)))


def _grow(vm: VirtualMachine, rng: random.Random, clock: list[datetime], target: int) -> None:
    """Add random operations to ``vm`` until it has ``target`` events pending or saved."""
    while vm.version < target:
        live = list(vm.checkpoints)
        r = rng.random()
        o = _origin(rng, clock)
        if len(live) >= MAX_CHECKPOINTS:  # Hyper-V's limit: make room first
            vm.delete_checkpoint(o, rng.choice(live))
        elif r < 0.35 or not live:
            vm.create_checkpoint(o)
        elif r < 0.50:
            vm.rename_checkpoint(o, rng.choice(live), f"renamed {vm.version}")
        elif r < 0.60:
            vm.apply_checkpoint(o, rng.choice(live))
        elif r < 0.72:
            vm.delete_checkpoint(o, rng.choice(live), subtree=rng.random() < 0.1)
        elif r < 0.85:
            if vm.state.value == "running":
                vm.stop(o)
            else:
                vm.start(o)
        else:
            disk = vm.disks[0].name
            layer = vm.running[disk]
            fake = rng.randbytes(32)
            vm.sync(o, None, [DiskCapture(disk, layer, fake, len(vm.contents.get(layer, ())),
                                          1 << 30, 4096, 100, 1 << 30, 1 << 20)])  # fmt: skip


def generate(path: Path, events: int, vms: int) -> tuple[Store, str]:
    store = Store.init(path, actor="bench", host="host")
    app = store.app
    rng = random.Random(1)
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]
    per_vm = max(2, events // vms)
    began = time.perf_counter()
    names = [f"vm{i:04d}" for i in range(vms)] + ["big"]
    for name in names:
        goal = 10_000 if name == "big" else per_vm
        vm = VirtualMachine.register(
            _origin(rng, clock), name, [("D", DiskFormat.VHDX)], None, CheckpointType.STANDARD
        )
        while vm.version < goal:
            _grow(vm, rng, clock, min(goal, vm.version + SAVE_EVERY))
            app.save(vm)
        app.save(vm)
        done = app.last_position()
        if done and names.index(name) % 100 == 0:
            rate = done / (time.perf_counter() - began)
            print(f"[bench] generated {done:,} events ({rate:,.0f}/s)", flush=True)
    print(
        f"[bench] generated {app.last_position():,} events in {time.perf_counter() - began:.0f} s"
    )
    return store, "big"


def _ms(samples: list[float]) -> str:
    samples = sorted(samples)
    p95 = samples[int(len(samples) * 0.95) - 1] if len(samples) >= 20 else samples[-1]
    return f"median {statistics.median(samples) * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--work", default="/tmp/ckpt-bench-projections")
    args = ap.parse_args()
    path = Path(args.work) / f"store-{args.events}-{args.vms}"
    if (path / "ckpt-store.json").exists():
        store = Store.open(path, actor="bench", host="host")
        print(f"[bench] reusing {path} ({store.app.last_position():,} events)")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        store, _ = generate(path, args.events, args.vms)
    total, seconds = store.rebuild_read_models()
    print(f"full rebuild: {total:,} events in {seconds:.1f} s = {total / seconds:,.0f} events/s"
          f"  (target >= 50,000)")  # fmt: skip

    rng = random.Random(2)
    costs = []
    for _ in range(200):
        name = f"vm{rng.randrange(args.vms):04d}"
        vm = store.vm(name)
        o = store.unit_of_work.origin()
        if len(vm.checkpoints) < MAX_CHECKPOINTS:
            vm.create_checkpoint(o)
        else:  # at Hyper-V's limit: a rename is one command too
            vm.rename_checkpoint(o, next(iter(vm.checkpoints)), "renamed")
        store.app.save(vm)
        t = time.perf_counter()
        store.read_models.catch_up(known=vm)
        costs.append(time.perf_counter() - t)
    print(f"incremental update after one command: {_ms(costs)}  (target < 2 ms)")

    big = store.vm("big")
    rows = store.read_models.recorder.audit(vm_id=str(big.id))
    positions = [r[0] for r in rows]
    print(f"[bench] VM 'big' has {len(positions):,} events")
    tree_t, chain_t = [], []
    for _ in range(50):
        at = rng.choice(positions)
        t = time.perf_counter()
        store.tree("big", at=at)
        tree_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        store.chain("big", at=at)
        chain_t.append(time.perf_counter() - t)
    print(f"tree --at on a 10,000-event VM: {_ms(tree_t)}  (target < 50 ms)")
    print(f"chain --at on a 10,000-event VM: {_ms(chain_t)}  (target < 50 ms)")
    store.close()


if __name__ == "__main__":
    main()
