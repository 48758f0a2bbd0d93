"""A primary store driven through the CLI, its replicas, and what the replication tests compare.

Terms:
    primary   the store ``ckpt replicate`` runs against: a store directory whose
              marker names its backends (embedded, or PostgreSQL and/or S3).
    target    where a replica lives: a store directory (``--to-store DIR``) or
              an events URL and a chunks URL; ``Target.to`` are the options of
              ``replicate``, ``Target.at`` the global options that open it.
    point     a checkpoint or backup point of VM ``web`` (one disk, ``D``);
              ``Primary.expected`` holds each live point's disk bytes.
    change    one 64 KiB stretch of the 512 KiB image rewritten with fresh
              random bytes: each point has chunks of its own (so a pack of its
              own) and shares the rest with the others.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli_support import CLI

from ckpt.cli import run
from ckpt.storage.chunks import ChunkBackend
from ckpt.storage.chunks.layout import INDEX, PACKS
from ckpt.store_config import StoreConfig, read_marker

SIZE = 512 << 10  # 8 stretches: a point costs ~0.1 s to capture, restore and compare
STRETCH = 64 << 10


class At(CLI):
    """The CLI against a store given by whole global options (``--store DIR``, or
    ``--events URL --chunks URL``, maybe ``--key-file FILE``)."""

    def __init__(self, where: Sequence[str | Path], actor: str = "tester") -> None:
        super().__init__(Path(), actor)
        self.where = [str(w) for w in where]

    def __call__(self, *args: str | Path) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = run([*self.where, "--actor", self.actor, *map(str, args)], out, err)
        return code, out.getvalue(), err.getvalue()


@dataclass
class Target:
    to: list[str]
    at: list[str]
    directory: Path | None = None
    events: str | None = field(default=None, repr=False)
    chunks: str | None = field(default=None, repr=False)

    @classmethod
    def store(cls, directory: Path) -> Target:
        return cls(["--to-store", str(directory)], ["--store", str(directory)], directory)

    @classmethod
    def urls(cls, events: str, chunks: str) -> Target:
        return cls(
            ["--to-events", events, "--to-chunks", chunks],
            ["--events", events, "--chunks", chunks],
            None,
            events,
            chunks,
        )

    def cli(self, *extra: str | Path) -> At:
        return At([*self.at, *extra])

    def backend(self) -> ChunkBackend:
        if self.directory is not None:
            return read_marker(self.directory).chunk_backend()
        return StoreConfig(None, self.events, self.chunks).chunk_backend()


def files(backend: ChunkBackend) -> set[str]:
    """The pack and index file names of a chunk storage."""
    return set(backend.list(PACKS)) | set(backend.list(INDEX))


def packs(backend: ChunkBackend) -> set[str]:
    return set(backend.list(PACKS))


@dataclass
class Primary:
    path: Path
    scratch: Path
    cli: At
    rng: random.Random = field(default_factory=lambda: random.Random(18))
    image: bytearray = field(default_factory=bytearray)
    expected: dict[str, bytes] = field(default_factory=dict)  # point name -> disk bytes
    id: str | None = None  # the store id, once asked

    def change(self, stretches: int = 1, at: int | None = None) -> Path:
        """Rewrite ``stretches`` random stretches, or stretch number ``at``."""
        for _ in range(stretches):
            n = self.rng.randrange(SIZE // STRETCH) if at is None else at
            self.image[n * STRETCH : (n + 1) * STRETCH] = self.rng.randbytes(STRETCH)
        source = self.scratch / "disk.img"
        source.write_bytes(self.image)
        return source

    def checkpoint(self, name: str, stretches: int = 1, at: int | None = None) -> None:
        source = self.change(stretches, at)
        self.cli.ok("checkpoint", "create", "web", name, "--disk", f"D={source}")
        self.expected[name] = bytes(self.image)

    def sync(self, name: str, at: int | None = None) -> None:
        source = self.change(at=at)
        self.cli.ok("sync", "web", "--name", name, "--disk", f"D={source}")
        self.expected[name] = bytes(self.image)

    def replicate(self, target: Target, *extra: str) -> Any:
        return self.cli.json("replicate", *target.to, *extra)

    def log(self) -> Any:
        return self.cli.json("log")

    def position(self) -> int:
        return int(self.log()[-1]["position"])

    def stored_bytes(self) -> int:
        return int(self.cli.json("stats")["total"]["stored_bytes"])

    def backend(self) -> ChunkBackend:
        return read_marker(self.path).chunk_backend()

    def store_id(self) -> str:
        if self.id is None:
            from ckpt import Store

            with Store.open(self.path) as store:
                self.id = store.unit_of_work.read_models.recorder.store_id()
        assert self.id is not None
        return self.id


def primary(
    path: Path,
    scratch: Path,
    events: str | None = None,
    chunks: str | None = None,
    init: Sequence[str] = (),
) -> Primary:
    """A new primary with VM ``web`` (standard checkpoints, disk ``D``); ``init``:
    more options of ``ckpt init`` (``--encrypt``), with the key file in ``path``'s
    sibling ``key``."""
    where: list[str | Path] = ["--store", path]
    if "--encrypt" in init:
        where += ["--key-file", path.parent / "key"]
    cli = At(where)
    urls = [*(["--events", events] if events else []), *(["--chunks", chunks] if chunks else [])]
    cli.ok("init", *urls, *init)
    cli.ok("vm", "add", "web", "--disk", "D", "--checkpoint-type", "standard")
    p = Primary(path, scratch, cli)
    p.image = bytearray(p.rng.randbytes(SIZE))
    return p


def restores(replica: At, expected: dict[str, bytes], out: Path) -> dict[str, bytes]:
    """Each point's disk as ``replica`` restores it."""
    got = {}
    for name in expected:
        file = out / f"{name}.raw"
        replica.ok("restore", "web", name, "--disk", "D", "-o", file)
        got[name] = file.read_bytes()
        file.unlink()
    return got


def assert_replica_of(p: Primary, replica: At, out: Path, restore: bool = True) -> Any:
    """The replica verifies clean (chunks and hash chain), holds the primary's log
    entry for entry (positions, links), restores every point byte for byte (unless
    not ``restore``: ~0.4 s a point on PostgreSQL + S3), and ``info`` says whose
    replica it is and how far. Returns its ``info --json``."""
    assert replica.json("verify")["ok"]
    chain = replica.json("verify", "--log")
    assert chain["ok"] and chain["problems"] == []
    log = p.log()
    assert replica.json("log") == log
    if restore:
        assert restores(replica, p.expected, out) == p.expected
    info = replica.json("info")
    position, link = log[-1]["position"], log[-1]["link"]
    assert info["replica"] == {
        "of": p.store_id(),
        "position": position,
        "link": link,
        "promoted_at": None,
    }
    if restore:
        text = replica.ok("info")
        assert f"replica of {p.store_id()} up to position {position}, link {link}" in text
    return info


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
