"""Issue 11 item 2: gc and a running capture; gc's report of what it did.

A capture writes packs, then commits the event that names them; a gc that ran
between the two deleted the packs (nothing referenced them yet), and the capture
then recorded missing chunks with exit 0. Captures now hold a lease that gc
respects (storage/chunks/lease.py, docs/decisions/0006-gc-leases.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from backends import killed_before_index_files
from conftest import Backends

import ckpt.capture_ops as content_ops
from ckpt import CheckpointType, ChunkMissing, DiskFormat, Store
from ckpt.cli import run
from ckpt.storage.chunks import ChunkStore, MemoryChunkBackend
from ckpt.storage.keyring import generate_key, parse_key

MiB = 1 << 20
# Over one 16 MiB pack of incompressible bytes: at least one full pack is written
# (and put) while the capture is still reading.
BIG = 20 * MiB


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _restore(store: Store, vm: str, point: str, disk: str = "D") -> bytes:
    out = io.BytesIO()
    store.restore_disk(vm, point, disk, out)
    return out.getvalue()


def _init(path: Path, encrypted: bool, urls: dict[str, str] | None = None) -> dict[str, Any]:
    """A store with VM ``v`` (disk ``D``); the keyword arguments that open it."""
    kwargs: dict[str, Any] = {"actor": "tester"}
    if encrypted:
        kwargs["key"] = parse_key(generate_key(), "test")
    with Store.init(path, encrypt=encrypted, **(urls or {}), **kwargs) as s:
        s.register_vm("v", [("D", DiskFormat.VHDX)], checkpoint_type=CheckpointType.STANDARD)
    return kwargs


def _leases(path: Path) -> list[str]:
    root = path / "chunks" / "leases"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def _cli(store: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(["--store", str(store), "--actor", "tester", *args], out, err)
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------ (a) the reproduction
def _pause_after_capture(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[threading.Event, threading.Event]:
    """The capture stops after reading its disk: full packs written, none indexed."""
    paused, go_on = threading.Event(), threading.Event()
    real = content_ops.capture_disk

    def capture_then_wait(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        paused.set()
        assert go_on.wait(30)
        return result

    monkeypatch.setattr(content_ops, "capture_disk", capture_then_wait)
    return paused, go_on


def _pause_before_commit(store: Store) -> tuple[threading.Event, threading.Event]:
    """The capture stops just before its event is saved: packs written and indexed."""
    paused, go_on = threading.Event(), threading.Event()
    real = store.app.save

    def wait_then_save(*args: Any, **kwargs: Any) -> Any:
        paused.set()
        assert go_on.wait(30)
        return real(*args, **kwargs)

    store.app.save = wait_then_save  # type: ignore[method-assign]
    return paused, go_on


def _names(store: Store, prefix: str) -> list[str]:
    return list(store.chunks.backend.list(prefix))


def _race(
    path: Path,
    kwargs: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    pause: str,
    capture: Callable[[Store], object],
) -> dict[str, Any]:
    """Run ``capture`` in a thread, pause it, run ``gc --grace 0`` from another
    Store (another process, as far as the store can tell), let it go on; gc's details."""
    with Store.open(path, **kwargs) as capturer, Store.open(path, **kwargs) as collector:
        if pause == "while-writing":
            paused, go_on = _pause_after_capture(monkeypatch)
        else:
            paused, go_on = _pause_before_commit(capturer)
        errors: list[BaseException] = []

        def run_capture() -> None:
            try:
                capture(capturer)
            except BaseException as e:
                errors.append(e)

        worker = threading.Thread(target=run_capture)
        worker.start()
        try:
            assert paused.wait(60), "the capture never reached its pause"
            for _ in range(200):  # the writer puts full packs on a background thread
                if _names(collector, "packs/"):
                    break
                time.sleep(0.05)
            assert _names(collector, "packs/"), "no pack written yet"
            report = collector.gc(grace_seconds=0)
        finally:
            go_on.set()
            worker.join(60)
        assert not errors, errors
        return report.details


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("pause", ["while-writing", "before-commit"])
def test_gc_during_a_capture_deletes_none_of_its_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backends: Backends, pause: str, encrypted: bool
) -> None:
    """`checkpoint create v big &` then `gc --grace 0` while it runs: the capture's
    chunks stay, it commits, everything verifies and restores byte for byte."""
    path = tmp_path / "s"
    kwargs = _init(path, encrypted, backends())
    image = random.Random(1).randbytes(BIG)
    src = _write(tmp_path / "big.raw", image)
    details = _race(
        path,
        kwargs,
        monkeypatch,
        pause,
        lambda s: s.create_checkpoint("v", "big", disks={"D": src}),
    )
    with Store.open(path, **kwargs) as fresh:
        assert fresh.verify().ok
        assert _restore(fresh, "v", "big") == image
        assert details["kept_for_leases"] >= 1 and len(details["live_leases"]) == 1
        assert fresh.gc(grace_seconds=0).details["kept_for_leases"] == 0
        assert _restore(fresh, "v", "big") == image
        assert _names(fresh, "leases/") == []  # released after the commit


@pytest.mark.parametrize("command", ["sync", "import-disk"])
def test_gc_during_a_sync_or_an_import_deletes_none_of_its_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    path = tmp_path / "s"
    kwargs = _init(path, encrypted=False)
    image = random.Random(2).randbytes(BIG)
    src = _write(tmp_path / "big.raw", image)

    def capture(s: Store) -> object:
        if command == "sync":
            return s.sync("v", {"D": src}, name="p")
        return s.import_disk("v", "D", src)

    _race(path, kwargs, monkeypatch, "while-writing", capture)
    with Store.open(path, **kwargs) as fresh:
        if command == "import-disk":
            fresh.create_checkpoint("v", "p")  # freezes the imported content
        assert fresh.verify().ok
        assert _restore(fresh, "v", "p") == image
        assert _names(fresh, "leases/") == []


def test_gc_during_an_import_hyperv_deletes_none_of_its_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`import hyperv` builds its VM in memory and saves it at the end: it holds a
    write lease from its first pack to that save, like any capture."""
    from ckpt.hyperv_import import import_folder

    image = random.Random(3).randbytes(BIG)
    src = _write(tmp_path / "big.raw", image)
    with Store.init(tmp_path / "src", actor="t") as origin:
        origin.register_vm("VM", [("D", DiskFormat.VHDX)])
        origin.create_checkpoint("VM", "a", disks={"D": src})
        origin.export("VM", "a", tmp_path / "hv")
    path = tmp_path / "s"
    kwargs = _init(path, encrypted=False)
    folder = tmp_path / "hv" / "VM"
    _race(
        path,
        kwargs,
        monkeypatch,
        "before-commit",
        lambda s: import_folder(s.unit_of_work, folder, "Copy"),
    )
    with Store.open(path, **kwargs) as fresh:
        assert fresh.verify().ok
        fresh.create_checkpoint("Copy", "p")  # freezes the imported content
        assert _restore(fresh, "Copy", "p") == image
        assert _names(fresh, "leases/") == []


# ---------------------------------------- (b) done when: a gc loop and captures
GC_LOOP = r"""
import io, sys, pathlib
from ckpt.cli import run
store, stop = sys.argv[1], pathlib.Path(sys.argv[2])
runs = 0
while not stop.exists():
    err = io.StringIO()
    code = run(["--store", store, "--actor", "gc", "gc", "--grace", "0"], io.StringIO(), err)
    if code not in (0, 22):  # 22: another gc holds a lease (there is none here)
        sys.exit(f"gc exit {code}: {err.getvalue()}")
    runs += 1
print(runs)
"""


def test_gc_grace_0_in_a_loop_while_captures_run_loses_nothing_committed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    _init(path, encrypted=False)
    rng = random.Random(11)
    stop = tmp_path / "stop"
    loop = subprocess.Popen(
        [sys.executable, "-c", GC_LOOP, str(path), str(stop)],
        cwd=tmp_path,  # not the repo root, where `ckpt` is the bare source folder
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    expected: dict[str, str] = {}
    try:
        with Store.open(path, actor="tester") as store:
            image = bytearray(rng.randbytes(6 * MiB))
            src = tmp_path / "d.raw"
            time.sleep(0.5)  # let the loop start (importing ckpt takes ~0.3 s)
            for n in range(8):
                # Rewrite some of the image, sometimes all of it: new chunks each time.
                for _ in range(rng.randrange(1, 40)):
                    at = rng.randrange(0, len(image) - 65536)
                    image[at : at + 65536] = rng.randbytes(65536)
                if n % 3 == 2:
                    image[: 4 * MiB] = rng.randbytes(4 * MiB)
                _write(src, bytes(image))
                name = f"c{n}"
                if n == 5:
                    store.sync("v", {"D": src}, name=name)  # a backup point
                else:
                    store.create_checkpoint("v", name, disks={"D": src})
                expected[name] = hashlib.sha256(image).hexdigest()
                if n == 3:
                    store.delete_checkpoint("v", "c1")  # garbage for the loop to find
                    del expected["c1"]
    finally:
        stop.touch()
        out, err = loop.communicate(timeout=120)
    assert loop.returncode == 0, err.decode()
    assert int(out) >= 2, "the gc loop did not run during the captures"
    with Store.open(path, actor="tester") as store:
        assert store.verify().ok
        for name, sha in expected.items():
            assert hashlib.sha256(_restore(store, "v", name)).hexdigest() == sha, name
    assert _leases(path) == []


# ------------------------------------------------------ (c) leases that ended
def _lease(path: Path, kind: str, *, age: float, machine: str, pid: int) -> str:
    now = time.time()
    name = f"{kind}-{os.urandom(16).hex()}.json"
    body = {
        "kind": kind,
        "host": "elsewhere",
        "machine": machine,
        "pid": pid,
        "started": now - age,
        "renewed": now - age,
        "ttl": 300.0,
    }
    root = path / "chunks" / "leases"
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(json.dumps(body))
    return name


def _garbage(store: Store) -> None:
    """Chunks flushed but never named by an event (a capture that failed after
    its flush): unreferenced packs, which gc deletes unless a lease holds it off."""
    with store.chunks.writer() as w:
        for _ in range(4):
            w.add(os.urandom(MiB))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"], cwd="/")
    proc.wait()
    return proc.pid


def test_an_expired_lease_does_not_block_gc_and_gc_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _init(path, encrypted=False)
    with Store.open(path, actor="tester") as store:
        _garbage(store)
        # 10 minutes without renewal (TTL 300 s + 120 s skew margin): its host died.
        _lease(path, "write", age=600, machine="another-host", pid=1)
        # A process of this machine that has ended: dead at once, whatever its age.
        from ckpt.storage.chunks.lease import machine_id

        if machine_id():
            _lease(path, "write", age=1, machine=machine_id(), pid=_dead_pid())
        report = store.gc(grace_seconds=0)
        assert report.details["kept_for_leases"] == 0
        assert report.details["live_leases"] == []
        assert report.details["dead_leases_removed"] == (2 if machine_id() else 1)
        assert report.removed_chunks > 0 and report.freed_bytes > 0
        assert _leases(path) == []


def test_a_live_lease_of_another_host_keeps_unreferenced_packs(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _init(path, encrypted=False)
    with Store.open(path, actor="tester") as store:
        _garbage(store)
        name = _lease(path, "write", age=60, machine="another-host", pid=1)
        report = store.gc(grace_seconds=0)
        assert report.removed_chunks == 0 and report.details["kept_for_leases"] >= 1
        assert report.details["live_leases"] and "elsewhere" in report.details["live_leases"][0]
        code, out, _ = _cli(path, "gc", "--grace", "0")
        assert code == 0 and "running captures" in out and "elsewhere" in out
        (path / "chunks" / "leases" / name).unlink()  # that capture ended
        assert store.gc(grace_seconds=0).removed_chunks > 0


def test_a_capture_waits_for_a_gc_that_was_running_when_it_started(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _init(path, encrypted=False)
    src = _write(tmp_path / "d.raw", os.urandom(MiB))
    name = _lease(path, "gc", age=1, machine="another-host", pid=1)
    phases: list[str] = []

    def progress(label: str, total: int) -> Callable[[int], None]:
        phases.append(label)
        return lambda n: None

    with Store.open(path, actor="tester") as store:
        worker = threading.Thread(
            target=lambda: store.create_checkpoint("v", "c", disks={"D": src}, progress=progress)
        )
        worker.start()
        worker.join(1.5)
        assert worker.is_alive(), "the capture did not wait for the running gc"
        # what it waits for is told (a terminal shows it as a phase), not a silent hang
        assert len(phases) == 1, phases
        assert phases[0].startswith("waiting for gc lease of pid 1 on elsewhere (since 20")
        assert not list((path / "chunks" / "packs").rglob("*.pack"))
        (path / "chunks" / "leases" / name).unlink()  # that gc finished
        worker.join(30)
        assert not worker.is_alive()
        assert _restore(store, "v", "c") == src.read_bytes()


def test_a_second_gc_is_refused_while_one_runs(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _init(path, encrypted=False)
    _lease(path, "gc", age=1, machine="another-host", pid=1)
    code, _, err = _cli(path, "gc", "--grace", "0")
    assert code == 22 and "another gc is running" in err and "elsewhere" in err


# ------------------------------------ leases end with the command, whatever happens
@pytest.mark.parametrize("how", ["success", "failure", "ctrl-c"])
def test_the_lease_is_released_on_success_failure_and_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    path = tmp_path / "s"
    _init(path, encrypted=False)
    src = _write(tmp_path / "d.raw", os.urandom(MiB))
    with Store.open(path, actor="tester") as store:
        if how == "success":
            store.create_checkpoint("v", "c", disks={"D": src})
        elif how == "failure":
            with pytest.raises(Exception, match="no-such"):
                store.create_checkpoint("v", "c", disks={"D": tmp_path / "no-such.raw"})
        else:
            real = content_ops.capture_disk

            def capture_then_ctrl_c(*args: Any, **kwargs: Any) -> Any:
                real(*args, **kwargs)  # packs written
                raise KeyboardInterrupt

            monkeypatch.setattr(content_ops, "capture_disk", capture_then_ctrl_c)
            with pytest.raises(KeyboardInterrupt):
                store.create_checkpoint("v", "c", disks={"D": src})
        assert _leases(path) == []
        names = [cp.name for cp in store.vm("v").checkpoints.values()]
        assert names == (["c"] if how == "success" else [])


# ------------------------------------------ belt and braces: packs checked at commit
def test_a_capture_whose_packs_vanished_fails_and_records_nothing(tmp_path: Path) -> None:
    """A gc that does not respect leases (an older ckpt, a person with rm) deleted
    the capture's packs before it committed: it fails, nothing is recorded."""
    path = tmp_path / "s"
    _init(path, encrypted=False)
    src = _write(tmp_path / "d.raw", os.urandom(2 * MiB))
    from ckpt.storage.chunks.lease import Lease  # new in this fix: imported here

    with Store.open(path, actor="tester") as store:
        real_check: Callable[..., None] | None = Lease.check

        def vanish_then_check(self: Lease) -> None:
            for pack in self.packs:
                (path / "chunks" / pack).unlink()
            assert real_check is not None
            real_check(self)

        Lease.check = vanish_then_check  # type: ignore[method-assign]
        try:
            with pytest.raises(ChunkMissing, match="nothing was recorded"):
                store.create_checkpoint("v", "c", disks={"D": src})
        finally:
            Lease.check = real_check  # type: ignore[method-assign]
        assert list(store.vm("v").checkpoints) == []
        assert _leases(path) == []


# ------------------------------------------------ (d) gc reports orphan packs
def test_gc_reports_the_orphan_packs_it_deleted(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _init(path, encrypted=False)
    with Store.open(path, actor="tester") as store:

        def write() -> None:
            with store.chunks.writer() as w:  # a capture killed before its index files
                for _ in range(BIG // MiB):
                    w.add(os.urandom(MiB))

        killed_before_index_files(store.chunks.backend, write)
    orphans = list((path / "chunks" / "packs").rglob("*.pack"))
    assert orphans and not list((path / "chunks" / "index").rglob("*.idx"))
    size = sum(p.stat().st_size for p in orphans)
    code, out, err = _cli(path, "gc", "--grace", "0", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["freed_bytes"] == size and data["removed_chunks"] >= 16
    assert data["orphan_packs"] == len(orphans) and data["orphan_bytes"] == size
    assert data["referenced"] == 0
    code, out, _ = _cli(path, "gc", "--grace", "0")
    assert code == 0 and out.startswith("gc: kept 0 referenced chunks, removed 0, freed 0 bytes")


# ------------------------------------------- the chunk store's rules under a lease
def _orphan(store: ChunkStore) -> None:
    """One full pack written, never indexed: a writer killed before its index file."""

    def write() -> None:
        with store.writer() as w:
            for _ in range(3):
                w.add(os.urandom(3000))

    killed_before_index_files(store.backend, write)


def test_under_a_live_lease_only_orphans_older_than_its_start_go() -> None:
    backend = MemoryChunkBackend()
    now = [1_000_000.0]
    store = ChunkStore(backend, pack_size=8192, clock=lambda: now[0])
    with store.writer() as w:  # indexed, unreferenced: a capture may reuse these
        w.add(os.urandom(3000))
    _orphan(store)  # from a writer that died long ago
    now[0] += 3600
    with store.write_lease():
        _orphan(store)  # the live capture's own pack, not yet indexed
        with store.gc_lease() as leases:
            report = store.delete_unreferenced(set(), 0, now[0], leases)
    assert report.orphan_packs == 1 and report.kept_for_leases == 2
    assert report.index_files_removed == 0 and len(list(backend.list("packs/"))) == 2
    with store.gc_lease() as leases:  # the lease is gone: everything unreferenced goes
        report = store.delete_unreferenced(set(), 0, now[0], leases)
    assert report.kept_for_leases == 0 and list(backend.list("")) == []


def test_gc_stops_early_when_a_capture_starts_waiting_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ckpt.storage.chunks.store as chunk_store
    from ckpt.storage.chunks.lease import Lease, held

    monkeypatch.setattr(chunk_store, "GC_YIELD_CHECK_S", 0.0)
    backend = MemoryChunkBackend()
    store = ChunkStore(backend, pack_size=8192)
    with store.writer() as w:
        for _ in range(9):  # three packs
            w.add(os.urandom(3000))
    with store.gc_lease() as leases:
        waiting = Lease(backend, "write")  # a capture that saw our gc lease
        with held(waiting):
            report = store.delete_unreferenced(set(), 0, time.time() + 1, leases)
    assert report.deleted_packs == [] and len(list(backend.list("packs/"))) == 3
    assert any("stopped early" in p for p in report.problems)
