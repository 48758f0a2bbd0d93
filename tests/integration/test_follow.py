"""``ckpt log --follow`` and ``Store.follow``: events committed by other processes show
within a second, in order, each with its hash link, filtered as ``log`` filters.

Terms: the *follower* is a ``ckpt log --follow --json`` process; a *writer* is
another process committing events. The *delay* of an event is the wall-clock
time its line was read from the follower minus the event's own time (taken by
the writer before it commits): an upper bound on commit-to-display.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pytest
from cli_support import CLI
from conftest import Backends

from ckpt import AuditEntry, InvalidValue, Store, UnknownVM

WITHIN = 1.0  # seconds: the bound for a new event to show


def _ckpt(store: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ckpt", "--store", str(store), "--actor", "w", *args]


class Follower:
    """A ``ckpt log --follow`` process and the lines it printed, each with the time it was read."""

    def __init__(self, store: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            _ckpt(store, "log", "--follow", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=store.parent,  # not the repository: there `ckpt` is the bare source folder
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put((time.time(), line))

    def next(self, timeout: float = 20.0) -> tuple[float, str]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            raise AssertionError(f"no line in {timeout} s; stderr: {self.stderr()}") from None

    def stop(self, how: int = signal.SIGINT) -> int:
        self.process.send_signal(how)
        return self.process.wait(timeout=20)

    def stderr(self) -> str:
        assert self.process.stderr is not None
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        return self.process.stderr.read()


@pytest.fixture
def follower() -> Iterator[list[Follower]]:
    started: list[Follower] = []
    yield started
    for f in started:
        if f.process.poll() is None:
            f.process.kill()
            f.process.wait()


def test_an_event_another_process_commits_shows_within_a_second(
    tmp_path: Path, backends: Backends, follower: list[Follower]
) -> None:
    store = tmp_path / "s"
    Store.init(store, **backends()).close()
    CLI(store).ok("vm", "add", "web")
    f = Follower(store, "--json")
    follower.append(f)
    _, first = f.next()  # the log so far comes first: the follower is running
    assert json.loads(first)["operation"] == "vm-registered"
    delays = []
    for name in ("c1", "c2", "c3"):
        subprocess.run(
            _ckpt(store, "checkpoint", "create", "web", name),
            check=True,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
        )
        seen, line = f.next()
        entry = json.loads(line)
        assert (entry["operation"], entry["checkpoint"]) == ("checkpoint-created", name)
        delays.append(seen - datetime.fromisoformat(entry["time"]).timestamp())
    print(f"follow delays (event time to line read): {[round(d, 3) for d in delays]} s")
    assert max(delays) < WITHIN
    assert f.stop() == 0  # Ctrl-C ends a follower cleanly
    assert "Traceback" not in f.stderr()


def test_lines_carry_position_and_the_hash_link_that_log_json_and_verify_know(
    tmp_path: Path, follower: list[Follower]
) -> None:
    store = tmp_path / "s"
    cli = CLI(store)
    cli.ok("init")
    cli.ok("vm", "add", "web")
    cli.ok("vm", "add", "db")
    cli.ok("checkpoint", "create", "web", "a")
    f = Follower(store, "--since", "2")
    follower.append(f)
    lines = [f.next()[1] for _ in range(2)]
    logged = {e["position"]: e for e in cli.json("log")}
    for line, position in zip(lines, (2, 3), strict=True):
        assert line.split()[0] == str(position)
        assert line.rstrip().endswith(f"link {logged[position]['link'][:16]}")
    assert "vm-registered" in lines[0] and "'a'" in lines[1]
    assert f.stop(signal.SIGTERM) == 0  # a service manager's stop: exit 0 too
    assert f.lines.empty()


def _follow(store: Store, **kwargs: Any) -> list[AuditEntry]:
    return list(store.follow(interval=0.01, idle=0.3, **kwargs))


def test_store_follow_hands_out_each_entry_once_in_order_then_the_new_ones(tmp_path: Path) -> None:
    with Store.init(tmp_path / "s", actor="alice") as store:
        store.register_vm("web")
        store.create_checkpoint("web", "a")
        whole = _follow(store, after=0)
        assert [e.position for e in whole] == [1, 2]
        assert all(e.link is not None and len(e.link) == 32 for e in whole)
        assert _follow(store) == []  # after=None: only what comes from now on
        seen = store.follow(after=2, interval=0.01, idle=5)
        with Store.open(tmp_path / "s", actor="bob") as other:  # another writer
            other.create_checkpoint("web", "b")
            other.register_vm("db")
        got = [next(seen), next(seen)]
        assert [(e.position, e.actor, e.operation) for e in got] == [
            (3, "bob", "checkpoint-created"),
            (4, "bob", "vm-registered"),
        ]
        assert [e.link for e in got] == [e.link for e in store.log(since=3)]


def test_a_replica_is_followed_as_replication_brings_the_events(tmp_path: Path) -> None:
    """A replica takes no writes, so its follower cannot fold the read models:
    ``replicate`` does, and the follower hands out what they hold, never a gap."""
    with Store.init(tmp_path / "p", actor="alice") as primary:
        primary.register_vm("web")
        primary.replicate(to_dir=tmp_path / "r")
        with Store.open(tmp_path / "r") as replica:
            seen = replica.follow(after=0, interval=0.01, idle=5)
            assert next(seen).operation == "vm-registered"
            primary.create_checkpoint("web", "a")
            primary.rename_checkpoint("web", "a", "b")
            primary.replicate(to_dir=tmp_path / "r")
            got = [next(seen), next(seen)]
        assert [(e.position, e.operation) for e in got] == [
            (2, "checkpoint-created"),
            (3, "checkpoint-renamed"),
        ]
        assert [e.link for e in got] == [e.link for e in primary.log(since=2)]


def test_store_follow_filters_as_log_does(tmp_path: Path) -> None:
    with Store.init(tmp_path / "s", actor="alice") as store:
        store.register_vm("web")
        store.register_vm("db")
        store.create_checkpoint("web", "a")
        store.create_checkpoint("db", "b")
        with Store.open(tmp_path / "s", actor="bob") as other:
            other.rename_checkpoint("web", "a", "a2")
        for kwargs in (
            {"vm": "web"},
            {"operation": "checkpoint-created"},
            {"actor": "bob"},
            {"vm": "db", "operation": "checkpoint-created"},
        ):
            expected = [e.position for e in store.log(**kwargs)]
            assert [e.position for e in _follow(store, after=0, **kwargs)] == expected, kwargs
            assert expected  # each filter keeps something, and not everything
            assert len(expected) < 5


def test_store_follow_refuses_bad_arguments_at_once(tmp_path: Path) -> None:
    with Store.init(tmp_path / "s") as store:
        store.register_vm("web")
        for bad in (
            {"after": -1},
            {"after": "3"},
            {"after": True},
            {"interval": 0},
            {"interval": float("nan")},
            {"idle": -1},
            {"interval": 10**9},
            {"operation": "vm-added"},
        ):
            with pytest.raises(InvalidValue):
                next(iter(store.follow(**bad)))  # type: ignore[arg-type]
        with pytest.raises(UnknownVM):
            next(iter(store.follow(vm="nope")))


def test_cli_refuses_follow_with_a_fixed_end(tmp_path: Path) -> None:
    cli = CLI(tmp_path / "s")
    cli.ok("init")
    assert "--at or --until" in cli.fails(14, "log", "--follow", "--until", "1")
    assert "--at or --until" in cli.fails(14, "log", "--follow", "--at", "1")
    assert "for --follow" in cli.fails(14, "log", "--interval", "1")
    assert "interval" in cli.fails(14, "log", "--follow", "--interval", "0")
