"""Setting a store up: create (``init``), attach, open; connect its backends.

Terms: a store's *config* (``store_config``) says where its event log and chunks
live; *connecting* builds the event application and read models on it (a
``UnitOfWork``). *Attaching* is ``init`` with URLs that already hold a store:
how a second host joins. *Pairing*: the event log and the chunk storage must
be the same store's (checked by store id), else gc would delete every chunk
the wrong log does not reference. The *key check* tells a wrong key from the
right one before anything is decrypted.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import random
import shutil
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

from eventsourcing.persistence import InterfaceError, OperationalError, PersistenceError

from ckpt.domain import (
    InvalidValue,
    StoreCorrupt,
    StoreExists,
    StoreFull,
    StoreIOError,
    StoreMismatch,
    StoreNotFound,
    StoreUnavailable,
    WrongKey,
)
from ckpt.storage.chunks import ChunkBackend
from ckpt.storage.event_store import EVENTS_FILE
from ckpt.storage.keyring import Keyring
from ckpt.storage.no_space import event_store_full

from . import read_only
from .app import CheckpointApplication
from .read_model_updates import ReadModels
from .store_config import (
    CHUNKS_DIR,
    MARKER,
    StoreConfig,
    first_line,
    read_marker,
    read_remote_meta,
    write_remote_meta,
)
from .unit_of_work import Clock, UnitOfWork, utc_now

DDL_RETRIES = 5


def default_actor() -> str:
    return os.environ.get("CKPT_ACTOR") or getpass.getuser()


def check_key(encryption: dict[str, Any] | None, key: bytes | None, where: str) -> None:
    if encryption is None:
        return
    if key is None:
        raise WrongKey(f"the store at {where} is encrypted: give its key (--key-file or CKPT_KEY)")
    if Keyring(key).key_check != encryption.get("key_check"):
        raise WrongKey(f"that is not the key of the encrypted store at {where}")


def check_empty_directory(directory: Path) -> None:
    """``init`` makes a new store only in a directory without one, or a part of one
    (a killed ``copy --to-store`` leaves events and chunks without the marker)."""
    if (directory / MARKER).exists():
        raise StoreExists(f"a ckpt store already exists at {directory}")
    if directory.exists() and not directory.is_dir():
        raise StoreExists(f"{directory} exists and is not a directory")
    leftovers = [n for n in (EVENTS_FILE, CHUNKS_DIR) if (directory / n).exists()]
    if leftovers:
        raise StoreExists(
            f"{directory} holds {' and '.join(leftovers)} but no {MARKER}: the rest of a "
            "store (a killed copy?); empty the directory or use another"
        )


def _application(env: dict[str, str]) -> tuple[CheckpointApplication, ReadModels]:
    """The application and its read models. PostgreSQL: tables missing (a
    first open) are created, and processes creating them at once fail in
    several ways ("tuple concurrently updated", a duplicate pg_type row, the
    tracking table's migration record: 7 of 40 concurrent inits); the loser
    tries again and then finds them."""
    creating = env.get("CREATE_TABLE") == "yes"
    for attempt in range(DDL_RETRIES):
        try:
            app = CheckpointApplication(env=env)
            return app, ReadModels(app)
        except (OperationalError, InterfaceError):
            raise
        except PersistenceError:
            if not creating or attempt == DDL_RETRIES - 1:
                raise
            time.sleep(random.uniform(0.05, 0.3))
    raise AssertionError("unreachable")


def connect(
    config: StoreConfig,
    actor: str | None = None,
    host: str | None = None,
    clock: Clock = utc_now,
    key: bytes | None = None,
    create: bool = False,
) -> UnitOfWork:
    """A unit of work on the store ``config`` names; ``create``: the event store
    may be created (``init``, ``copy``)."""
    where = config.describe()
    env = config.events_environment(create)
    if key is not None:
        env |= {
            "CIPHER_TOPIC": "eventsourcing.cryptography:AESCipher",
            "CIPHER_KEY": Keyring(key).events_key,
        }
    why = None if create else read_only.reason(config)
    events_file = config.sqlite_file()
    cleanup: list[Callable[[], object]] = []
    try:
        if why is not None and events_file is not None:
            app, read_models, events_file = _open_read_only(env, events_file, cleanup)
        else:
            app, read_models = _application(env)
        uow = UnitOfWork(
            app, read_models, config, actor or default_actor(), host or socket.gethostname(),
            clock, key, events_file=events_file,
        )  # fmt: skip
    except (OperationalError, InterfaceError, PersistenceError, sqlite3.Error) as e:
        _run(cleanup)
        # no room to open or create the log (its -shm file, its tables) is not damage
        full = event_store_full(e, where, config.sqlite_file())
        if full is not None:
            raise full from e
        if "disk I/O error" in str(e):  # SQLITE_IOERR: the medium, not the server or the bytes
            raise StoreIOError(
                f"I/O error: cannot read the event log of {where}: {first_line(e)}: "
                "the store's disk or file system failed"
            ) from e
        if isinstance(e, (OperationalError, InterfaceError)):
            raise StoreUnavailable(
                f"cannot reach the event store of {where}: {first_line(e)}"
            ) from e
        raise StoreCorrupt(f"cannot open the event log of {where}: {first_line(e)}") from e
    except BaseException:
        _run(cleanup)
        raise
    uow.on_close += cleanup
    if why is not None:
        uow.read_only = why
        root = read_only.chunk_root(config)
        if root is not None:
            uow.chunk_cache, temporary = read_only.cache_dir(config, root)
            if temporary:
                cache = uow.chunk_cache
                uow.on_close.append(lambda: shutil.rmtree(cache, ignore_errors=True))
    return uow


def _run(cleanup: list[Callable[[], object]]) -> None:
    for done in cleanup:
        done()


def _open_read_only(
    env: dict[str, str], events_file: Path, cleanup: list[Callable[[], object]]
) -> tuple[CheckpointApplication, ReadModels, Path]:
    """The event log of a store on read-only media, opened without writing
    (ckpt/read_only.py): ``immutable`` when the file holds every transaction
    and the read models are up to date, else a private copy. Returns the
    application, its read models and the file they read."""
    env = env | {"CREATE_TABLE": "no"}  # the tables exist: CREATE would want to write
    if not read_only.wal_has_data(events_file):
        app, read_models = _application(
            env | {"SQLITE_DBNAME": read_only.immutable_uri(events_file)}
        )
        recorder = read_models.recorder
        if app.last_position() <= recorder.position() and recorder.consistent():
            return app, read_models, events_file
        app.close()  # the read models lag the log: catch up in a copy
    copy, directory = read_only.private_copy(events_file)
    cleanup.append(directory.cleanup)
    # writable, so the tables are created as on any open (a store of an older layout)
    app, read_models = _application(env | {"SQLITE_DBNAME": str(copy), "CREATE_TABLE": "yes"})
    return app, read_models, copy


def check_pairing(uow: UnitOfWork, meta: dict[str, Any]) -> None:
    """The event log and the chunk storage must be the same store's: a log of
    another store (or an empty one) beside these chunks would let ``gc``
    delete every chunk it does not reference."""
    wanted = meta.get("store_id")
    if wanted is None:  # a store of before store ids
        return
    found = uow.read_models.recorder.store_id()
    if found != wanted:
        what = "holds no store" if found is None else f"belongs to store {found}"
        raise StoreMismatch(
            f"the chunk storage of {uow.where} belongs to store {wanted}, but its event "
            f"store {what}: check the --events URL (its schema) against the --chunks URL"
        )


def init(
    directory: Path | None,
    encrypt: bool,
    events: str | None,
    chunks: str | None,
    actor: str | None = None,
    host: str | None = None,
    clock: Clock = utc_now,
    key: bytes | None = None,
) -> tuple[UnitOfWork, bool]:
    """Create a store, or attach to the one the URLs hold: (unit of work, attached)."""
    if encrypt and key is None:
        raise InvalidValue("an encrypted store needs a key (--key-file FILE or CKPT_KEY)")
    if not encrypt and key is not None:
        raise InvalidValue("a key was given for a store created without --encrypt")
    if directory is not None:
        check_empty_directory(directory)
        read_only.check_can_create(directory, "create a store")
    config = StoreConfig(directory, events, chunks)
    backend = config.chunk_backend(create=True) if config.remote else None
    existing = None if backend is None else read_remote_meta(backend, config.describe())
    if existing is not None:
        encryption = existing.get("encryption")
        if encryption is None and encrypt:
            raise InvalidValue(
                f"the store at {config.describe()} is not encrypted: attach without --encrypt"
            )
        check_key(encryption, key, config.describe())
        config.encryption = encryption
        config.store_id = existing.get("store_id")
    made = directory is not None and not directory.exists()
    try:
        return _create(config, existing, backend, actor, host, clock, key)
    except StoreFull:
        if directory is not None and not config.remote:
            _remove_partial_store(directory, made)  # so `init` can simply be run again
        raise


def _create(
    config: StoreConfig,
    existing: dict[str, Any] | None,
    backend: ChunkBackend | None,
    actor: str | None,
    host: str | None,
    clock: Clock,
    key: bytes | None,
) -> tuple[UnitOfWork, bool]:
    directory = config.directory
    if directory is not None:
        read_only.make_directory(directory, "create a store")
    uow = connect(config, actor, host, clock, key, create=True)
    try:
        if existing is not None:
            check_pairing(uow, existing)
        else:
            if uow.keyring is not None:
                config.encryption = {"cipher": "AES-256-GCM", "key_check": uow.keyring.key_check}
            if uow.app.last_position():
                raise StoreExists(
                    f"the event store of {config.describe()} already holds events: "
                    "not a store this ckpt can create or attach to"
                )
            config.store_id = uow.read_models.recorder.set_store_id(str(uuid4()))
            uow.chunks.set_format()  # a new store gets grouped (v2) packs (decision 0012)
            if backend is not None:
                write_remote_meta(backend, config)  # durable before the marker names it
        if directory is not None:
            config.write_marker()
    except BaseException:
        uow.close()
        raise
    return uow, existing is not None


def _remove_partial_store(directory: Path, made: bool) -> None:
    """What an ``init`` that found no room created in ``directory`` (which held
    no store: ``check_empty_directory``): left there, the next ``init`` would
    take it for the rest of a killed copy and refuse."""
    for name in (EVENTS_FILE, f"{EVENTS_FILE}-wal", f"{EVENTS_FILE}-shm", f".{MARKER}.tmp"):
        with contextlib.suppress(OSError):
            (directory / name).unlink()
    shutil.rmtree(directory / CHUNKS_DIR, ignore_errors=True)
    if made:
        with contextlib.suppress(OSError):
            directory.rmdir()  # only if empty


def open_store(
    path: Path | None,
    events: str | None,
    chunks: str | None,
    actor: str | None = None,
    host: str | None = None,
    clock: Clock = utc_now,
    key: bytes | None = None,
) -> UnitOfWork:
    """Open the store in directory ``path``, or the one at the ``events`` and
    ``chunks`` URLs (then ``path`` is None)."""
    if path is not None:
        if events or chunks:
            raise InvalidValue(
                "give --store DIR or --events/--chunks, not both "
                "(a store directory names its own backends)"
            )
        config = read_marker(Path(path))
    else:
        config = StoreConfig(None, events, chunks)
    meta: dict[str, Any] | None = None
    if config.remote:
        # The chunk storage's meta is the store's own word on encryption and
        # identity (a directory's marker is a copy that may have gone stale).
        meta = read_remote_meta(config.chunk_backend(), config.describe())
        if meta is None:
            raise StoreNotFound(
                f"no ckpt store at {config.describe()} (its chunk storage holds no "
                "ckpt-store.json; create one with: ckpt ... init --events URL --chunks URL)"
            )
        config.encryption = meta.get("encryption")
    if config.encryption is None and key is not None:
        key = None  # a plain store: a key in the environment is not for it
    check_key(config.encryption, key, config.describe())
    uow = connect(config, actor, host, clock, key)
    try:
        if meta is not None:
            check_pairing(uow, meta)
        _ = uow.chunks.format  # refuse a chunk format newer than this release, now
    except BaseException:
        uow.close()
        raise
    return uow
