"""The unit of work: one store's event application, read models and chunk store.

Terms: a *command* loads a VM fresh, lets the domain decide (``act``), saves the
new events atomically and folds them into the read models. The unit of work
stamps each try with an *origin* (actor, host, clock, a nonce), translates the
event store's errors into ckpt's (``translated``), and runs a command again on
fresh state when another writer changed the VM first (``retry``): the domain
rules are re-checked then, so a retry never applies a stale decision.

Use cases (``commands``, ``queries``, ``capture_ops``, ``restore_ops``,
``maintenance``, ``copy``, ``interop``, ``hyperv_import``) are functions that
take a ``UnitOfWork``; ``Store`` is the façade over them. ``setup`` builds a
unit of work from a store's configuration; ``throwaway`` builds one on a
memory chunk backend and a temporary event log, for fast tests.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast
from uuid import uuid4

from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    MapperDeserialisationError,
    OperationalError,
    PersistenceError,
)
from eventsourcing.utils import TopicError

from ckpt.domain import (
    CaptureOutdated,
    CkptError,
    Origin,
    StoreBusy,
    StoreClosed,
    StoreConflict,
    StoreCorrupt,
    StoreIOError,
    StoreIsReplica,
    StoreReadOnly,
    StoreUnavailable,
    VirtualMachine,
)
from ckpt.storage.chunks import ChunkStore, MemoryChunkBackend
from ckpt.storage.event_store import sqlite_environment
from ckpt.storage.keyring import Keyring
from ckpt.storage.no_space import event_store_full
from ckpt.storage.replica_record import ReplicaState

from .app import CheckpointApplication
from .read_model_updates import ReadModels
from .store_config import StoreConfig, first_line

# A command whose VM another writer changed first is run again on fresh state. With
# two writers on one VM on PostgreSQL + S3, a 230 ms capture lost to quick renames
# and applies three times in a row in 29 of 287 commands with three immediate tries
# (tests/integration/test_concurrent_writers.py); five tries, jittered and growing
# pauses between them, give the other writer's burst time to pass.
RETRIES = 5
BACKOFF_S = 0.02  # pause before try n (from 1): uniform(0, BACKOFF_S * 2**n) seconds

T = TypeVar("T")
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class _Closed:
    """Stands in for the event store, read models and chunk store after ``close``:
    any use raises ``StoreClosed`` (the closed connection pool's own error,
    ConnectionPoolClosedError, said nothing), whatever method got there."""

    def __init__(self, where: str) -> None:
        self._where = where

    def __getattr__(self, name: str) -> Any:
        self.fail()

    def fail(self) -> NoReturn:
        raise StoreClosed(
            f"the store at {self._where} is closed (close() was called): open it again"
        )


class UnitOfWork:
    """The event application, the read models and the chunk store of one store."""

    def __init__(
        self,
        app: CheckpointApplication,
        read_models: ReadModels,
        config: StoreConfig,
        actor: str,
        host: str,
        clock: Clock = utc_now,
        key: bytes | None = None,
        chunks: ChunkStore | None = None,
        events_file: Path | None = None,
    ) -> None:
        """``chunks``: the chunk store, if already open (else opened on first use
        from ``config``); ``key``: the store key of an encrypted store;
        ``events_file``: the SQLite event log's file (None: PostgreSQL or memory)."""
        self.app = app
        self.read_models = read_models
        self.config = config
        self.where = config.describe()
        self.actor = actor
        self.host = host
        self.clock = clock
        self.key = key  # for ``copy``: the target is sealed under the same key
        self.keyring = None if key is None else Keyring(key)
        self.read_models.recorder.keyring = self.keyring
        self._chunks: ChunkStore | None = chunks
        self.events_file = events_file
        self._closed: _Closed | None = None
        self.on_close: list[Callable[[], object]] = []  # run after the backends are closed
        # Set by ``setup.connect`` for a store on read-only media (ckpt/read_only.py):
        # why it cannot be written ("on a read-only file system"), and where the
        # chunk-index cache lives instead of the chunk directory's ``.cache``.
        self.read_only: str | None = None
        self.chunk_cache: Path | None = None

    @property
    def chunks(self) -> ChunkStore:
        """The chunk store (``<store>/chunks`` or the chunks URL), opened on first use."""
        if self._closed is not None:
            self._closed.fail()
        if self._chunks is None:
            self._chunks = ChunkStore(
                self.config.chunk_backend(), keyring=self.keyring, cache_dir=self.chunk_cache
            )
        return self._chunks

    def check_open(self) -> None:
        """``StoreClosed`` after ``close``."""
        if self._closed is not None:
            self._closed.fail()

    def writable(self, command: str) -> None:
        """Refuse ``command`` (``"checkpoint create"``) with ``StoreReadOnly``, before
        any work, when the store is on read-only media."""
        self.check_open()
        if self.read_only is not None:
            raise StoreReadOnly(
                f"the store at {self.where} is {self.read_only}: {command} needs to write"
            )
        replica = self.replica()
        if replica is not None and replica.follows:
            raise StoreIsReplica(
                f"the store at {self.where} is a replica of {replica.primary_id} up to position "
                f"{replica.position}: {command} needs to write; it takes events only from its "
                "primary (`ckpt replicate`) until `ckpt replica promote` makes it a primary"
            )

    def replica(self) -> ReplicaState | None:
        """How far this store follows its primary, if it is (or was) a replica."""
        with self.translated():
            return self.read_models.recorder.replica()

    def close(self) -> None:
        """Release the backends; closing twice is harmless, any other use after it
        raises ``StoreClosed``."""
        if self._closed is not None:
            return
        if self._chunks is not None:
            self._chunks.close()
        self.app.close()
        for done in self.on_close:
            done()
        self._closed = _Closed(self.where)
        self.app = cast(CheckpointApplication, self._closed)
        self.read_models = cast(ReadModels, self._closed)

    # ------------------------------------------------------------ the command
    def origin(self) -> Origin:
        return Origin(self.actor, self.host, self.clock(), uuid4())

    @contextmanager
    def translated(self) -> Iterator[None]:
        """The event store's errors as ckpt's (domain/errors.py). No room for a
        write (SQLITE_FULL, PostgreSQL's disk_full) is ``StoreFull`` whichever
        wrapper it arrives in: it was StoreBusy (a read model's sqlite3 error) or
        StoreUnavailable (eventsourcing's OperationalError) before."""
        try:
            try:
                yield
            except (PersistenceError, sqlite3.Error) as e:
                full = event_store_full(e, self.where, self.events_file)
                if full is not None:
                    raise full from e
                raise
        except IntegrityError as e:
            raise StoreConflict(f"another writer changed the store first: {e}") from e
        except (sqlite3.OperationalError, OperationalError, InterfaceError) as e:
            # SQLite's words for its medium (sqlite3 result codes SQLITE_IOERR,
            # SQLITE_READONLY), whichever layer wrapped them.
            text = str(e)
            if "disk I/O error" in text:
                raise StoreIOError(
                    f"I/O error: the event log of {self.where} could not be read or "
                    f"written: {first_line(e)}: the store's disk or file system failed"
                ) from e
            if "readonly database" in text:
                raise StoreReadOnly(
                    f"the event log of {self.where} cannot be written: {first_line(e)}"
                ) from e
            if isinstance(e, sqlite3.OperationalError):
                raise StoreBusy(f"the event log of {self.where} is busy: {e}") from e
            if "lock timeout" in str(e) or "canceling statement" in str(e):
                raise StoreBusy(f"the event log of {self.where} is busy: {first_line(e)}") from e
            raise StoreUnavailable(
                f"the event store of {self.where} failed: {first_line(e)}"
            ) from e
        except (PersistenceError, MapperDeserialisationError) as e:
            raise StoreCorrupt(f"the event log of {self.where} failed: {e}") from e
        except TopicError as e:
            # An event class this release does not have: a newer ckpt wrote it (a
            # release before retention met ``ckpt.domain.purges:...`` this way).
            raise StoreCorrupt(
                f"the event log of {self.where} holds an event this ckpt does not know "
                f"({first_line(e)}); was it written by a newer ckpt? Upgrade ckpt to read it"
            ) from e

    def retry(
        self, load: Callable[[], VirtualMachine], act: Callable[[VirtualMachine, Origin], T]
    ) -> T:
        """Run ``act`` on a fresh copy of the VM (``load``) and save; retry on a write
        conflict, or when ``act`` finds its capture outdated, up to ``RETRIES`` times."""
        for attempt in range(RETRIES):
            vm = load()
            try:
                result = act(vm, self.origin())
                self.save(vm)
                return result
            except StoreBusy:
                raise  # it has waited out the lock timeout already: no more waiting
            except (StoreConflict, CaptureOutdated):
                if attempt == RETRIES - 1:
                    raise
                time.sleep(random.uniform(0, BACKOFF_S * 2 ** (attempt + 1)))
        raise AssertionError("unreachable")

    def save(self, vm: VirtualMachine) -> None:
        """Save the VM's pending events atomically, then fold them into the read models."""
        self.writable("this command")  # the façade refused it already; a use case called directly
        with self.translated():
            self.app.save(vm)
        self.after_save(vm)

    def after_save(self, vm: VirtualMachine) -> None:
        """Bring the read models up to date; the command has already succeeded.

        A failure here must not turn a saved command into an error (a retry
        would repeat it): the next catch-up, at any read, folds what is missing.
        """
        with contextlib.suppress(CkptError, PersistenceError, sqlite3.Error), self.translated():
            self.read_models.catch_up(known=vm)

    def catch_up(self) -> int:
        """Fold events other writers appended into the read models."""
        with self.translated():
            return self.read_models.catch_up()

    def caught_up(self) -> bool:
        """``catch_up``, telling whether it worked instead of raising."""
        with contextlib.suppress(CkptError, PersistenceError, sqlite3.Error), self.translated():
            self.read_models.catch_up()
            return True
        return False


def throwaway(
    actor: str = "test",
    host: str = "test-host",
    clock: Clock = utc_now,
    key: bytes | None = None,
) -> UnitOfWork:
    """A unit of work for tests and trials: chunks in a memory backend, the event
    log in a SQLite file of a private temporary directory, removed on ``close``.

    Not SQLite ``:memory:``: eventsourcing serialises an in-memory database's
    readers and writers, and a read-model catch-up reads VMs inside its write
    transaction, so every command waited out the 5 s pool timeout (a file in
    WAL mode lets them overlap: ~2 ms a command). Every use case runs on it as
    on a store directory."""
    directory = tempfile.TemporaryDirectory(prefix="ckpt-uow-")
    env = sqlite_environment(Path(directory.name))
    keyring = None if key is None else Keyring(key)
    if keyring is not None:
        env |= {
            "CIPHER_TOPIC": "eventsourcing.cryptography:AESCipher",
            "CIPHER_KEY": keyring.events_key,
        }
    app = CheckpointApplication(env=env)
    config = StoreConfig(Path(directory.name))
    chunks = ChunkStore(MemoryChunkBackend(), keyring=keyring)
    chunks.set_format()
    events_file = config.sqlite_file()
    uow = UnitOfWork(app, ReadModels(app), config, actor, host, clock, key, chunks, events_file)
    uow.on_close.append(directory.cleanup)
    return uow
