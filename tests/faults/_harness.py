"""The fault-injection harness: start a ckpt command, SIGKILL it at a seeded moment,
reopen the store and check what must survive.

Terms:
    seed        ``CKPT_FAULT_SEED`` (default ``DEFAULT_SEED``). Every random choice
                (image bytes, targets) comes from ``random.Random`` seeded with
                ``"<seed>/<test kind>"``, the kill delays from a stream of their
                own (``.../delays``), so each test replays the same scenario for
                the same seed. What the OS scheduler does within a delay is not
                under our control: the same seed kills at the same moment after
                ``go``, not necessarily at the same instruction, and where a kill
                point ends differently the later choices (not the delays) differ.
    typical     a command kind's duration, measured once per test by running one
                command of that kind to completion (``ckpt.cli.run`` in the driver,
                from ``go`` to its return).
    kill point  start the command (``_driver.py``), wait a seeded delay in
                ``[0, typical]`` after its ``go`` line, SIGKILL it (unless it has
                already exited: then it must have exited 0). A *late* kill point
                draws from ``[late * typical, typical]`` instead: for a command
                whose commit comes at the very end (forget: ~85% of its time
                is opening the store and reading the log), where few uniform
                delays land.
    ledger      every checkpoint or backup point whose command returned success,
                or whose killed command is found to have completed: name -> the
                SHA-256 of each disk image (and memory image) it captured. Every
                entry must restore byte for byte after every kill point.
    check       after each kill point, every command in a fresh Store (``ckpt.cli.run``,
                the code path of the ``ckpt`` executable without its start-up):
                ``verify --json`` exits 0 and reports ok; ``log --json``, ``vm list
                --json``, ``tree VM --json`` and ``stats --json`` succeed and print
                the same before and after ``projections rebuild``, and so do the
                read-model tables themselves; every ledger entry restores (through
                one Store: see ``restore``). ``final_check`` repeats verify, log,
                tree and a sample of restores with the ``ckpt`` executable.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ckpt
from ckpt.cli import run
from ckpt.exit_codes import exit_code

from ._driver import RAN

DEFAULT_SEED = 20261126
SEED = int(os.environ.get("CKPT_FAULT_SEED", str(DEFAULT_SEED)))
DRIVER = Path(__file__).with_name("_driver.py")
CKPT = Path(sys.executable).with_name("ckpt")
BLOCK = 4096
MiB = 1 << 20

# Per command kind, for the summary conftest.py prints at the end of the run.
KILL_POINTS: Counter[str] = Counter()  # kill points run
KILLED: Counter[str] = Counter()  # ... of which the command was still running at SIGKILL
RESULTS: Counter[tuple[str, str]] = Counter()  # (kind, what a killed command left behind)


def sha256(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


class Image:
    """A raw disk (or memory) image in memory and on disk: random blocks and zero blocks."""

    def __init__(self, path: Path, size: int, rng: random.Random, fill: float = 0.5) -> None:
        self.path = path
        self.rng = rng
        self.data = bytearray(size)
        for offset in range(0, size, BLOCK):
            if rng.random() < fill:
                self.data[offset : offset + BLOCK] = rng.randbytes(BLOCK)
        self.sha = ""
        self.write()

    @property
    def blocks(self) -> int:
        return len(self.data) // BLOCK

    def mutate(self, scattered: int, run_bytes: int = 0) -> list[bytes]:
        """Change ``scattered`` random blocks (a quarter of them to zeros) and one
        contiguous run of ``run_bytes`` new random bytes; write the file; return
        the new non-zero blocks."""
        new: list[bytes] = []
        for _ in range(scattered):
            offset = self.rng.randrange(self.blocks) * BLOCK
            block = bytes(BLOCK) if self.rng.random() < 0.25 else self.rng.randbytes(BLOCK)
            self.data[offset : offset + BLOCK] = block
            if any(block):
                new.append(block)
        run_blocks = min(run_bytes // BLOCK, self.blocks)
        if run_blocks:
            start = self.rng.randrange(self.blocks - run_blocks + 1) * BLOCK
            for offset in range(start, start + run_blocks * BLOCK, BLOCK):
                block = self.rng.randbytes(BLOCK)
                self.data[offset : offset + BLOCK] = block
                new.append(block)
        self.write()
        return new

    def write(self) -> None:
        self.path.write_bytes(self.data)
        self.sha = sha256(self.data)


@dataclass
class Point:
    """A ledger entry: a checkpoint or backup point and the bytes it must restore."""

    vm: str
    name: str
    disks: dict[str, str]  # disk -> SHA-256 of the image captured
    memory: str | None = None  # SHA-256 of the memory image, if one was captured
    backup: bool = False


@dataclass
class Outcome:
    """How a kill point went."""

    index: int
    label: str  # the command kind it counts under
    args: tuple[str, ...]
    delay: float
    killed: bool  # still running when SIGKILL was sent
    code: int  # the exit status (-9 when killed)
    stdout: str
    stderr: str

    def describe(self, kind: str) -> str:
        how = "SIGKILLed" if self.killed else f"exited {self.code} before the kill"
        return (
            f"[CKPT_FAULT_SEED={SEED} {kind} kill point #{self.index} ({self.label}): "
            f"ckpt {' '.join(self.args)}; delay {self.delay * 1000:.1f} ms; {how}]"
        )


@dataclass
class Harness:
    """One store in ``tmp_path/store``, its ledger and the kill points run on it."""

    kind: str
    work: Path
    scratch: Path  # restored files and images (tmpfs when there is one: see conftest.py)
    # ``init`` options naming other backends (--events URL --chunks URL); none: embedded
    backends: tuple[str, ...] = ()
    ledger: dict[str, Point] = field(default_factory=dict)
    kills: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{SEED}/{self.kind}")
        # The delays have a stream of their own: the same seed gives the same delays
        # even where a kill point's outcome changes the choices made after it.
        self.delays = random.Random(f"{SEED}/{self.kind}/delays")
        self.store = self.work / "store"
        self.where = f"[CKPT_FAULT_SEED={SEED} {self.kind} set-up]"

    # ------------------------------------------------------------ commands
    def cli(self, *args: str) -> tuple[int, str, str]:
        """One ckpt command in this process (a fresh Store, as a new process opens it)."""
        out, err = io.StringIO(), io.StringIO()
        code = run(["--store", str(self.store), "--actor", "fault-check", *args], out, err)
        return code, out.getvalue(), err.getvalue()

    def init(self) -> None:
        self.ok("init", *self.backends)

    def ok(self, *args: str) -> str:
        code, out, err = self.cli(*args)
        assert code == 0, f"{self.where} ckpt {' '.join(args)} exited {code}: {err}"
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def _start(self, args: tuple[str, ...]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, str(DRIVER), "--store", str(self.store), "--actor", "fault", *args],
            cwd=self.work,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line != b"go\n":
            _, err = proc.communicate(timeout=60)
            raise AssertionError(f"{self.where} the driver did not start: {line!r} {err!r}")
        return proc

    def result(self, outcome: Outcome, what: str) -> None:
        """Count what a killed command left behind (``done``: its effect is there)."""
        if outcome.killed:
            RESULTS[outcome.label, what] += 1

    def timed(self, *args: str) -> float:
        """Run a command to completion in a subprocess; how long the command ran
        (as the driver measured it: from ``go`` to the end of ``ckpt.cli.run``)."""
        proc = self._start(args)
        _, err = proc.communicate(timeout=120)
        text = err.decode()
        assert proc.returncode == 0, (
            f"{self.where} ckpt {' '.join(args)} exited {proc.returncode}: {text}"
        )
        ran = [line for line in text.splitlines() if line.startswith(RAN)]
        assert ran, f"{self.where} the driver did not report its time: {text}"
        return float(ran[-1].removeprefix(RAN))

    def kill_point(
        self, *args: str, typical: float, label: str | None = None, late: float = 0.0
    ) -> Outcome:
        """Start the command, SIGKILL it after a seeded delay in [late * typical,
        typical]; ``label`` is the command kind it counts under (default: the
        test's kind)."""
        label = label or self.kind
        self.kills += 1
        delay = self.delays.uniform(late * typical, typical)
        proc = self._start(args)
        time.sleep(delay)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        killed = proc.returncode == -signal.SIGKILL
        KILL_POINTS[label] += 1
        KILLED[label] += killed
        outcome = Outcome(
            self.kills, label, args, delay, killed, proc.returncode, out.decode(), err.decode()
        )
        self.where = outcome.describe(self.kind)
        print(f"{self.where} typical {typical * 1000:.1f} ms")  # shown with a failure
        if not killed:
            assert proc.returncode == 0, f"{self.where} failed on its own: {outcome.stderr}"
        return outcome

    # --------------------------------------------------------------- reads
    def tree(self, vm: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.json("tree", vm)
        return entries

    def names(self, vm: str) -> set[str]:
        return {e["name"] for e in self.tree(vm)}

    def vm_state(self, vm: str) -> str:
        state: str = self.json("vm", "show", vm)["state"]
        return state

    def restore(self, *points: Point) -> list[dict[str, str | int]]:
        """Restore every disk (and the memory) of each point: what -> SHA-256, or
        the exit code ``ckpt restore`` would give for the error.

        One Store, opened after the kill point, serves all of them: what ``ckpt
        restore`` runs (``Store.restore_disk``/``restore_memory``) without opening
        the store and loading the chunk index again per file, which cost more than
        the restores. ``final_check`` restores a sample with the executable.
        """
        results: list[dict[str, str | int]] = []
        target = self.scratch / "out.raw"
        with ckpt.Store.open(self.store, actor="fault-check") as store:
            for point in points:
                got: dict[str, str | int] = {}
                what: list[tuple[str, str | None]] = [(f"disk {d}", d) for d in point.disks]
                if point.memory is not None:
                    what.append(("memory", None))
                for label, disk in what:
                    try:
                        with target.open("wb") as out:
                            if disk is None:
                                store.restore_memory(point.vm, point.name, out)
                            else:
                                store.restore_disk(point.vm, point.name, disk, out)
                        got[label] = file_sha256(target)
                    except ckpt.CkptError as e:
                        got[label] = exit_code(e)
                    target.unlink(missing_ok=True)
                results.append(got)
        return results

    def expected(self, point: Point) -> dict[str, str | int]:
        want: dict[str, str | int] = {f"disk {d}": sha for d, sha in point.disks.items()}
        if point.memory is not None:
            want["memory"] = point.memory
        return want

    def assert_restore(self, *points: Point) -> None:
        for point, got in zip(points, self.restore(*points), strict=True):
            assert got == self.expected(point), (
                f"{self.where} {'backup point' if point.backup else 'checkpoint'} "
                f"{point.name!r} of VM {point.vm!r} does not restore its captured bytes: "
                f"got {got}, want {self.expected(point)}"
            )

    def read_models(self) -> dict[str, Any]:
        """What the read models answer, through the CLI and as raw table rows."""
        vms = self.json("vm", "list")
        seen: dict[str, Any] = {
            "log": self.json("log"),
            "vms": vms,
            "stats": self.json("stats")["vms"],
        }
        for vm in vms:
            seen[f"tree {vm['name']}"] = self.json("tree", vm["name"])
        seen["tables"] = read_model_tables(self.store)
        return seen

    # --------------------------------------------------------------- check
    def check(self) -> None:
        """The store as a new process finds it after the kill point."""
        code, out, err = self.cli("verify", "--json")
        assert code == 0, f"{self.where} ckpt verify exited {code}: {err}{out}"
        report = json.loads(out)
        assert report["ok"] and not report["bad"], f"{self.where} verify: {report}"
        before = self.read_models()
        positions = [e["position"] for e in before["log"]]
        assert positions == sorted(set(positions)), f"{self.where} log positions {positions}"
        self.ok("projections", "rebuild")
        after = self.read_models()
        for key in before:
            assert before[key] == after[key], (
                f"{self.where} read model {key!r} differs from a rebuild of the log"
            )
        self.assert_restore(*self.ledger.values())

    def final_check(self, sample: int = 3) -> None:
        """At the end of a test: the real ``ckpt`` executable agrees (verify, log,
        tree and a seeded sample of restores)."""
        self.where = f"[CKPT_FAULT_SEED={SEED} {self.kind} final check]"

        def ckpt(*args: str) -> str:
            done = subprocess.run(
                [str(CKPT), "--store", str(self.store), *args],
                cwd=self.work,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, (
                f"{self.where} ckpt {' '.join(args)} exited {done.returncode}: {done.stderr}"
            )
            return done.stdout

        assert json.loads(ckpt("verify", "--json"))["ok"], self.where
        json.loads(ckpt("log", "--json"))
        for vm in {p.vm for p in self.ledger.values()}:
            json.loads(ckpt("tree", vm, "--json"))
        points = sorted(self.ledger)
        for name in self.rng.sample(points, min(sample, len(points))):
            point = self.ledger[name]
            for disk, sha in point.disks.items():
                target = self.scratch / f"final-{disk}.raw"
                ckpt("restore", point.vm, point.name, "--disk", disk, "-o", str(target))
                assert file_sha256(target) == sha, f"{self.where} {point.name} disk {disk}"
                target.unlink()


def read_model_tables(store: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the documented read-model tables, sorted (any event store)."""
    with ckpt.Store.open(store) as opened:
        tables = opened.read_models.recorder.dump()
    return {f"ckpt_{table}": sorted(rows, key=repr) for table, rows in tables.items()}


def summary() -> str:
    total, killed = sum(KILL_POINTS.values()), sum(KILLED.values())
    kinds = "; ".join(
        f"{k} {n} ("
        + ", ".join(
            [f"{KILLED[k]} killed"]
            + [f"{c} {w}" for (j, w), c in sorted(RESULTS.items()) if j == k]
        )
        + ")"
        for k, n in sorted(KILL_POINTS.items())
    )
    return (
        f"CKPT_FAULT_SEED={SEED}: {total} kill points, {killed} of them SIGKILLed mid-command, "
        f"{total - killed} had exited 0 first; {kinds}"
    )
