"""A replica is read-only until promoted, receives an encrypted primary sealed, and
``replicate`` refuses targets that are no replica, whatever they are instead.

Terms (tests/replication_support.py): *primary*, *target*, *point*. A
*write* is a command that records an event or changes the store's database or
chunk storage (``verify --repair`` rewrites index files, ``upgrade`` packs,
``projections rebuild`` the read-model tables, as on read-only media); the dry
runs of ``gc`` and ``forget`` and ``export`` (which records the export only
where the store can take it, as on read-only media) are reads.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from replication_support import At, Primary, Target, assert_replica_of, files, primary, restores

from ckpt import Store, StoreIsReplica

IS_REPLICA = 43  # ckpt.StoreIsReplica
MISMATCH = 35  # ckpt.StoreMismatch
WRONG_KEY = 28  # ckpt.WrongKey: an encrypted store opened without its key
SECRET_VM = "payroll-Zq7x"  # a name no ciphertext holds by chance


def _raw_holds(directory: Path, needle: bytes) -> bool:
    """Whether any file under ``directory`` holds ``needle`` as stored (the
    SQLite file, its WAL, packs, index files)."""
    return any(needle in f.read_bytes() for f in directory.rglob("*") if f.is_file())


def _replicated(
    tmp_path: Path, scratch: Path, init: tuple[str, ...] = ()
) -> tuple[Primary, Target]:
    p = primary(tmp_path / "primary", scratch, init=init)
    p.cli.ok("vm", "add", SECRET_VM)
    p.checkpoint("c1")
    p.sync("b1")
    target = Target.store(tmp_path / "replica")
    p.replicate(target)
    return p, target


def test_a_replica_refuses_every_write_and_answers_every_read_until_promoted(
    tmp_path: Path, scratch: Path
) -> None:
    p, target = _replicated(tmp_path, scratch)
    replica = target.cli()
    # The control of the sealed test below: unencrypted, both are there as stored.
    assert _raw_holds(tmp_path / "replica", bytes(p.image[4096:4160]))
    assert _raw_holds(tmp_path / "replica", SECRET_VM.encode())
    log, chunk_files, position = p.log(), files(target.backend()), p.position()
    image = p.change()
    hyperv = scratch / "hyperv"
    hyperv.mkdir()
    writes: dict[str, tuple[str | Path, ...]] = {  # what the refusal names -> the command
        "checkpoint create": ("checkpoint", "create", "web", "x", "--disk", f"D={image}"),
        "checkpoint apply": ("checkpoint", "apply", "web", "c1"),
        "checkpoint revert": ("checkpoint", "revert", "web"),
        "checkpoint rename": ("checkpoint", "rename", "web", "c1", "y"),
        "checkpoint delete": ("checkpoint", "delete", "web", "c1"),
        "sync": ("sync", "web", "--disk", f"D={image}"),
        "vm add": ("vm", "add", "db"),
        "vm set": ("vm", "set", "web", "--checkpoint-type", "production"),
        "vm set --retention": ("vm", "set", "web", "--retention", "last=3"),
        "vm start": ("vm", "start", "web"),
        "vm remove": ("vm", "remove", SECRET_VM),
        "import disk": ("import", "disk", "web", "D", image),
        "import hyperv": ("import", "hyperv", hyperv),
        "gc": ("gc", "--grace", "0"),
        "forget": ("forget", "web", "--keep-last", "1"),
        "verify --repair": ("verify", "--repair"),
        "upgrade": ("upgrade",),
        "projections rebuild": ("projections", "rebuild"),
    }
    said = f"the store at {tmp_path / 'replica'} is a replica of {p.store_id()} up to position "
    for command, args in writes.items():
        err = replica.fails(IS_REPLICA, *args)
        assert f"{said}{position}: {command} needs to write" in err, (args, err)
        assert "`ckpt replica promote` makes it a primary" in err
    with Store.open(tmp_path / "replica") as store, pytest.raises(StoreIsReplica):
        store.register_vm("api")

    out = scratch / "out"
    reads: list[tuple[str | Path, ...]] = [
        ("tree", "web"), ("chain", "web"), ("files", "web", "c1"), ("vm", "list"),
        ("vm", "show", "web"), ("checkpoint", "list", "web"), ("stats",), ("info",),
        ("export", "web", "c1", "-o", out), ("forget", "web", "--keep-last", "1", "--dry-run"),
        ("gc", "--dry-run"),
    ]  # fmt: skip
    for args in reads:
        replica.ok(*args)
    assert any(out.rglob("*.avhdx")) or any(out.rglob("*.vhdx"))
    assert replica.json("log") == log and files(target.backend()) == chunk_files
    assert_replica_of(p, replica, scratch)  # verify, verify --log, log, restore, info

    promoted = replica.json("replica", "promote")
    assert promoted["replica_of"] == p.store_id() and promoted["store_id"] != p.store_id()
    assert (promoted["position"], promoted["link"]) == (position, log[-1]["link"])
    assert promoted["promoted_at"]
    assert replica.json("info")["replica"] == {
        "of": p.store_id(),
        "position": position,
        "link": log[-1]["link"],
        "promoted_at": promoted["promoted_at"],
    }
    assert replica.json("replica", "promote") == promoted  # again: the first time stays
    replica.ok("checkpoint", "create", "web", "after failover", "--disk", f"D={image}")
    replica.ok("vm", "add", "db")
    # The old primary carries on; it may not write into the new one.
    p.checkpoint("c2")
    own = replica.json("log")
    assert own[-1]["position"] > position
    p.cli.fails(MISMATCH, "replicate", *target.to)
    assert replica.json("log") == own and replica.json("verify", "--log")["ok"]


def test_an_encrypted_primary_replicates_sealed_and_restores_only_with_its_key(
    tmp_path: Path, scratch: Path
) -> None:
    p, target = _replicated(tmp_path, scratch, init=("--encrypt",))
    where = tmp_path / "replica"
    assert not _raw_holds(where, bytes(p.image[4096:4160]))
    assert not _raw_holds(where, SECRET_VM.encode())
    # Received without the key: no read model was built (they need the plaintext).
    with sqlite3.connect(where / "events.sqlite") as db:
        assert db.execute("SELECT count(*) FROM ckpt_vms").fetchone() == (0,)
    db.close()
    keyless, keyed = target.cli(), target.cli("--key-file", tmp_path / "key")
    err = keyless.fails(WRONG_KEY, "restore", "web", "c1", "--disk", "D", "-o", scratch / "x")
    assert not (scratch / "x").exists(), err
    assert restores(keyed, p.expected, scratch) == p.expected
    assert keyed.json("verify")["ok"]

    # The next run, keyless on the replica's side again, sends only the new point.
    p.checkpoint("c2")
    second = p.replicate(target)
    assert (second["events"], second["packs"], second["first_run"]) == (2, 1, False)
    assert not _raw_holds(where, bytes(p.image[4096:4160]))
    assert restores(keyed, p.expected, scratch) == p.expected
    assert keyed.json("log") == p.log()


def _untouched(path: Path) -> dict[str, bytes]:
    return {str(f): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def test_replicate_refuses_the_primary_itself_a_file_and_a_foreign_directory(
    tmp_path: Path, scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = primary(tmp_path / "primary", scratch)
    p.checkpoint("c1")
    before = _untouched(p.path)
    err = p.cli.fails(MISMATCH, "replicate", "--to-store", p.path)
    assert str(p.path) in err
    assert _untouched(p.path) == before
    # The same store named by its files' URLs: a new (empty) store became a replica
    # of itself that way, refusing every write.
    new = At(["--store", tmp_path / "new"])
    new.ok("init")
    for events, chunks in (("new/events.sqlite", "new/chunks"), ("x.sqlite", "new/chunks")):
        err = new.fails(
            MISMATCH, "replicate", "--to-events", f"sqlite://{tmp_path / events}",
            "--to-chunks", f"file://{tmp_path / chunks}",
        )  # fmt: skip
        assert "this store itself" in err, err
    new.ok("vm", "add", "web")
    assert new.json("info")["replica"] is None and not (tmp_path / "x.sqlite").exists()
    file = tmp_path / "a file"
    file.write_bytes(b"not a store")
    foreign = tmp_path / "documents"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for where in (file, foreign):
        err = p.cli.fails(MISMATCH, "replicate", "--to-store", where)
        assert str(where) in err
    # The rest of a killed copy (events and packs, no marker) holds data: refused too.
    rest = tmp_path / "rest"
    shutil.copytree(p.path, rest)
    (rest / "ckpt-store.json").unlink()
    kept = _untouched(rest)
    code, _, err = p.cli("replicate", "--to-store", rest)
    assert code in (MISMATCH, 21) and str(rest) in err and _untouched(rest) == kept, err
    assert file.read_bytes() == b"not a store"
    assert [f.name for f in foreign.iterdir()] == ["notes.txt"]
    # An interval time.sleep cannot take (OverflowError past ~9.2e9 s) is a usage error.
    code, _, err = p.cli(
        "replicate", "--to-store", tmp_path / "r", "--follow", "--interval", "1e300"
    )
    usage = capsys.readouterr().err  # argparse writes to sys.stderr itself
    assert code == 2 and err == "" and "argument --interval: expected seconds" in usage, usage
    assert not (tmp_path / "r").exists()
    err = p.cli.fails(14, "replicate", "--to-events", f"sqlite://{tmp_path / 'r.sqlite'}")
    assert "--to-chunks" in err and not (tmp_path / "r.sqlite").exists()
    assert _untouched(p.path) == before


class _CtrlC:
    """A progress factory that raises KeyboardInterrupt (what SIGINT raises)
    at its ``after``-th update: the run stops between two units of work."""

    def __init__(self, after: int) -> None:
        self.left = after

    def __call__(self, label: str, total: int) -> object:
        def update(n: int) -> None:
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt

        return update


def test_a_run_interrupted_anywhere_leaves_a_clean_prefix_and_the_next_run_completes_it(
    tmp_path: Path, scratch: Path
) -> None:
    p = primary(tmp_path / "primary", scratch)
    p.checkpoint("c1")
    target = Target.store(tmp_path / "replica")
    p.replicate(target)
    replica = target.cli()
    for n in range(2, 5):
        p.checkpoint(f"c{n}")  # three packs and six events to send
    log, pending = p.log(), files(p.backend())
    runs = 0
    while True:  # interrupted at the 1st, 2nd, ... unit of work until a run completes
        runs += 1
        missing = {f for f in pending - files(target.backend()) if f.endswith(".pack")}
        have = len(replica.json("log"))
        with Store.open(p.path) as store:
            try:
                report = store.replicate(to_dir=tmp_path / "replica", progress=_CtrlC(runs))
            except KeyboardInterrupt:
                got = replica.json("log")
                assert got == log[: len(got)]
                assert files(target.backend()) <= pending
                assert replica.json("verify")["ok"] and replica.json("verify", "--log")["ok"]
                continue
        break
    assert runs >= 3  # at least a pack and the events were units of their own
    assert report.packs == len(missing) and report.events == len(log) - have
    assert_replica_of(p, replica, scratch)


def _interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("kill_point", "half_written_marker"),
    [
        ("ckpt.replication._initialise", False),
        ("ckpt.store_config.StoreConfig.write_marker", False),
        ("ckpt.store_config.StoreConfig.write_marker", True),
    ],
    ids=["after-the-event-log-was-created", "before-the-marker", "while-writing-the-marker"],
)
def test_a_first_run_interrupted_before_the_replica_was_marked_is_taken_up_by_the_next(
    tmp_path: Path,
    scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
    kill_point: str,
    half_written_marker: bool,
) -> None:
    """A first run creates the replica's event log, then records the replica (id,
    progress, format), then writes the marker; Ctrl-C in between left a directory
    every later run refused ("the rest of a store"): the next run starts it again.
    A SIGKILL while the marker is written leaves its temporary file (the marker is
    written to ``.ckpt-store.json.tmp``, then renamed): the fault suite's kill
    point #1 found the next run refusing it as "other files"."""
    p = primary(tmp_path / "primary", scratch)
    p.checkpoint("c1")
    target = Target.store(tmp_path / "replica")
    with monkeypatch.context() as m:
        m.setattr(kill_point, _interrupt)
        with Store.open(p.path) as store, pytest.raises(KeyboardInterrupt):
            store.replicate(to_dir=tmp_path / "replica")
    assert (tmp_path / "replica" / "events.sqlite").exists()
    assert not (tmp_path / "replica" / "ckpt-store.json").exists()
    if half_written_marker:  # what the kill leaves: the rename never happened
        (tmp_path / "replica" / ".ckpt-store.json.tmp").write_bytes(b'{"format": ')
    report = p.replicate(target)
    assert report["first_run"] is True and report["events"] == p.position()
    assert_replica_of(p, target.cli(), scratch)
