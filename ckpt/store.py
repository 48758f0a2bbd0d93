"""The application service: a ckpt store directory and the operations on it.

``Store`` is what embedders use (``ckpt.Store.open(path)``) and what the CLI
calls. It resolves VMs and checkpoints by name or id, stamps every command
with an ``Origin`` (actor, host, time, nonce), saves atomically, and retries a
command whose VM another writer changed first (the domain rules are
re-checked on the fresh state, so a retry can never apply a stale decision).

A store directory holds ``ckpt-store.json`` (format marker) and
``events.sqlite`` (the event log).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import random
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TypeVar, cast
from uuid import UUID, uuid4

from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    MapperDeserialisationError,
    OperationalError,
    PersistenceError,
)

from ckpt.domain import (
    AlreadyExists,
    BackupPoint,
    CaptureOutdated,
    Checkpoint,
    CheckpointType,
    CkptError,
    DiskCapture,
    DiskFormat,
    FileRole,
    InvalidValue,
    Origin,
    StateFile,
    StoreBusy,
    StoreClosed,
    StoreConflict,
    StoreCorrupt,
    StoreExists,
    StoreMismatch,
    StoreNotFound,
    StoreUnavailable,
    UnknownVM,
    VirtualMachine,
    WrongKey,
    vm_id,
)
from ckpt.domain.naming import Candidate, find_named, parse_id
from ckpt.projections import (
    OPERATIONS,
    AuditEntry,
    ChainEntry,
    TreeEntry,
    describe_changes,
    disk_chains,
    tree_entries,
)
from ckpt.storage.event_store import EVENTS_FILE
from ckpt.storage.keyring import Keyring
from ckpt.storage.locations import display
from ckpt.storage.log_chain import ChainReport, parse_anchor, walk

from . import api_args as check
from . import content_ops
from .app import CheckpointApplication
from .content_ops import ProgressFactory
from .copy import CopyReport, copy_store
from .read_models import ReadModels
from .store_config import (
    CHUNKS_DIR,
    FORMAT,
    MARKER,
    StoreConfig,
    first_line,
    read_marker,
    read_remote_meta,
    write_remote_meta,
)

DDL_RETRIES = 5
# A command whose VM another writer changed first is run again on fresh state. With
# two writers on one VM on PostgreSQL + S3, a 230 ms capture lost to quick renames
# and applies three times in a row in 29 of 287 commands with three immediate tries
# (tests/integration/test_concurrent_writers.py); five tries, jittered and growing
# pauses between them, give the other writer's burst time to pass.
RETRIES = 5
BACKOFF_S = 0.02  # pause before try n (from 1): uniform(0, BACKOFF_S * 2**n) seconds

T = TypeVar("T")


def _parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 time; one without an offset is UTC, as the log records times."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidValue(
            f"{option} {text!r} is neither a log position nor an ISO 8601 time"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _unknown_operation(operation: str) -> str:
    """Naming the operations: a typo used to print nothing with exit 0 (issue 11)."""
    import difflib

    known = list(OPERATIONS.values())
    close = difflib.get_close_matches(operation, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"no operation {operation!r}{hint}; the operations are: {', '.join(known)}"


def _check_key(encryption: dict[str, Any] | None, key: bytes | None, where: str) -> None:
    if encryption is None:
        return
    if key is None:
        raise WrongKey(f"the store at {where} is encrypted: give its key (--key-file or CKPT_KEY)")
    if Keyring(key).key_check != encryption.get("key_check"):
        raise WrongKey(f"that is not the key of the encrypted store at {where}")


def _check_empty_directory(directory: Path) -> None:
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


OPTIONS = ("actor", "host", "clock", "key")  # the keyword options of init and open


def _check_options(method: str, options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InvalidValue(
            f"Store.{method}: unknown option {unknown[0]!r} (options: {', '.join(OPTIONS)})"
        )
    check.optional_text(f"Store.{method}: actor", options.get("actor"))
    check.optional_text(f"Store.{method}: host", options.get("host"))
    clock = options.get("clock")
    if clock is not None and not callable(clock):
        check.fail(f"Store.{method}: clock", "a callable returning a datetime", clock)
    check.key(f"Store.{method}: key", options.get("key"))


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


def default_actor() -> str:
    return os.environ.get("CKPT_ACTOR") or getpass.getuser()


class Store:
    def __init__(
        self,
        path: Path | None,
        actor: str | None = None,
        host: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        key: bytes | None = None,
        events: str | None = None,
        chunks: str | None = None,
        config: StoreConfig | None = None,
        create: bool = False,
    ) -> None:
        """Use ``init`` or ``open``. ``key``: the store key of an encrypted store;
        ``events``/``chunks``: backend URLs (storage/locations.py), else ``path``'s;
        ``create``: the event store may be created (``init``, ``copy``)."""
        if config is None:
            check.optional_path("Store: path", path)
            check.optional_text("Store: events", events)
            check.optional_text("Store: chunks", chunks)
        _check_options("Store", {"actor": actor, "host": host, "clock": clock, "key": key})
        self.config = config or StoreConfig(path, events, chunks)
        self.path = path
        self.where = self.config.describe()
        self.attached = False  # init found the store already there (a second host)
        self.actor = actor or default_actor()
        self.host = host or socket.gethostname()
        self._clock = clock
        self._chunks: Any = None
        self.keyring = None if key is None else Keyring(key)
        self._key = key  # for ``copy``: the target is sealed under the same key
        env = self.config.events_environment(create)
        if self.keyring is not None:
            env |= {
                "CIPHER_TOPIC": "eventsourcing.cryptography:AESCipher",
                "CIPHER_KEY": self.keyring.events_key,
            }
        try:
            self.app, self.read_models = self._connect(env)
            self.read_models.recorder.keyring = self.keyring
        except (OperationalError, InterfaceError) as e:
            raise StoreUnavailable(
                f"cannot reach the event store of {self.where}: {first_line(e)}"
            ) from e
        except (PersistenceError, sqlite3.Error) as e:
            raise StoreCorrupt(f"cannot open the event log of {self.where}: {first_line(e)}") from e

    @staticmethod
    def _connect(env: dict[str, str]) -> tuple[CheckpointApplication, ReadModels]:
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

    # ------------------------------------------------------------- lifecycle
    @classmethod
    def init(
        cls,
        path: str | Path | None,
        encrypt: bool = False,
        events: str | None = None,
        chunks: str | None = None,
        **kwargs: Any,
    ) -> Store:
        """Create a store; with ``encrypt`` (and ``key=``), everything in it is encrypted.

        With ``events``/``chunks`` URLs that already hold a ckpt store, attach to
        it instead (``store.attached`` is then true): how a second host joins.
        Its encryption is the store's: ``encrypt`` and the key must fit it.
        """
        _check_options("init", kwargs)
        directory = check.optional_path("Store.init: path", path)
        check.flag("Store.init: encrypt", encrypt)
        check.optional_text("Store.init: events", events)
        check.optional_text("Store.init: chunks", chunks)
        key = kwargs.get("key")
        if encrypt and key is None:
            raise InvalidValue("an encrypted store needs a key (--key-file FILE or CKPT_KEY)")
        if not encrypt and key is not None:
            raise InvalidValue("a key was given for a store created without --encrypt")
        if directory is not None:
            _check_empty_directory(directory)
        config = StoreConfig(directory, events, chunks)
        backend = config.chunk_backend(create=True) if config.remote else None
        existing = None if backend is None else read_remote_meta(backend, config.describe())
        if existing is not None:
            encryption = existing.get("encryption")
            if encryption is None and encrypt:
                raise InvalidValue(
                    f"the store at {config.describe()} is not encrypted: attach without --encrypt"
                )
            _check_key(encryption, key, config.describe())
            config.encryption = encryption
            config.store_id = existing.get("store_id")
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        store = cls(directory, config=config, create=True, **kwargs)
        try:
            if existing is not None:
                store.attached = True
                store._check_pairing(existing)
            else:
                if store.keyring is not None:
                    config.encryption = {
                        "cipher": "AES-256-GCM",
                        "key_check": store.keyring.key_check,
                    }
                if store.app.last_position():
                    raise StoreExists(
                        f"the event store of {config.describe()} already holds events: "
                        "not a store this ckpt can create or attach to"
                    )
                config.store_id = store.read_models.recorder.set_store_id(str(uuid4()))
                if backend is not None:
                    write_remote_meta(backend, config)  # durable before the marker names it
            if directory is not None:
                config.write_marker()
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open(
        cls,
        path: str | Path | None,
        events: str | None = None,
        chunks: str | None = None,
        **kwargs: Any,
    ) -> Store:
        """Open the store in directory ``path``, or the one at the ``events`` and
        ``chunks`` URLs (then ``path`` is None)."""
        _check_options("open", kwargs)
        path = check.optional_path("Store.open: path", path)
        check.optional_text("Store.open: events", events)
        check.optional_text("Store.open: chunks", chunks)
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
        key = kwargs.get("key")
        if config.encryption is None and key is not None:
            kwargs["key"] = None  # a plain store: a key in the environment is not for it
        _check_key(config.encryption, key, config.describe())
        store = cls(config.directory, config=config, **kwargs)
        if meta is not None:
            try:
                store._check_pairing(meta)
            except BaseException:
                store.close()
                raise
        return store

    def _check_pairing(self, meta: dict[str, Any]) -> None:
        """The event log and the chunk storage must be the same store's: a log of
        another store (or an empty one) beside these chunks would let ``gc``
        delete every chunk it does not reference."""
        wanted = meta.get("store_id")
        if wanted is None:  # a store of before store ids
            return
        found = self.read_models.recorder.store_id()
        if found != wanted:
            what = "holds no store" if found is None else f"belongs to store {found}"
            raise StoreMismatch(
                f"the chunk storage of {self.where} belongs to store {wanted}, but its event "
                f"store {what}: check the --events URL (its schema) against the --chunks URL"
            )

    def close(self) -> None:
        """Release the store; closing twice is harmless, any other use after it
        raises ``StoreClosed``."""
        if isinstance(self.app, _Closed):
            return
        if self._chunks is not None:
            self._chunks.close()
        self.app.close()
        closed = _Closed(self.where)
        self.app = cast(CheckpointApplication, closed)
        self.read_models = cast(ReadModels, closed)
        self._chunks = closed

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- helpers
    def _origin(self) -> Origin:
        return Origin(self.actor, self.host, self._clock(), uuid4())

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except IntegrityError as e:
            raise StoreConflict(f"another writer changed the store first: {e}") from e
        except sqlite3.OperationalError as e:
            raise StoreBusy(f"the event log of {self.where} is busy: {e}") from e
        except (OperationalError, InterfaceError) as e:
            if "lock timeout" in str(e) or "canceling statement" in str(e):
                raise StoreBusy(f"the event log of {self.where} is busy: {first_line(e)}") from e
            raise StoreUnavailable(
                f"the event store of {self.where} failed: {first_line(e)}"
            ) from e
        except (PersistenceError, MapperDeserialisationError) as e:
            raise StoreCorrupt(f"the event log of {self.where} failed: {e}") from e

    def _command(self, name: str, act: Callable[[VirtualMachine, Origin], T]) -> T:
        """Run ``act`` on a fresh copy of the VM and save; retry on a write conflict."""
        for attempt in range(RETRIES):
            vm = self.vm(name)
            try:
                result = act(vm, self._origin())
                with self._translated():
                    self.app.save(vm)
                self._after_save(vm)
                return result
            except StoreBusy:
                raise  # it has waited out the lock timeout already: no more waiting
            except (StoreConflict, CaptureOutdated):
                if attempt == RETRIES - 1:
                    raise
                time.sleep(random.uniform(0, BACKOFF_S * 2 ** (attempt + 1)))
        raise AssertionError("unreachable")

    # -------------------------------------------------------------- commands
    def register_vm(
        self,
        name: str,
        disks: Sequence[tuple[str, DiskFormat]] = (),
        config_version: str | None = None,
        checkpoint_type: CheckpointType = CheckpointType.PRODUCTION,
        automatic_checkpoints: bool = False,
    ) -> VirtualMachine:
        vm = self.new_vm(name, disks, config_version, checkpoint_type, automatic_checkpoints)
        return self.save_new_vm(vm)

    def new_vm(
        self,
        name: str,
        disks: Sequence[tuple[str, DiskFormat]] = (),
        config_version: str | None = None,
        checkpoint_type: CheckpointType = CheckpointType.PRODUCTION,
        automatic_checkpoints: bool = False,
    ) -> VirtualMachine:
        """A VM registered in memory, not saved yet (``save_new_vm``): ``import hyperv``
        builds a whole VM this way and records it in one transaction, or not at all.
        Refuses a name a live VM has; a removed VM's name gets the next generation."""
        m = "register_vm"
        name = check.text(f"{m}: name", name)
        disks = check.disk_specs(f"{m}: disks", disks)
        config_version = check.optional_text(f"{m}: config_version", config_version)
        checkpoint_type = check.choice(f"{m}: checkpoint_type", checkpoint_type, CheckpointType)
        automatic_checkpoints = check.flag(f"{m}: automatic_checkpoints", automatic_checkpoints)
        with self._translated():
            generation, live = self._generations(name)
        if live is not None:
            raise AlreadyExists(f"a VM named {live.name!r} already exists")
        return VirtualMachine.register(
            self._origin(), name, disks, config_version, checkpoint_type, automatic_checkpoints,
            generation,
        )  # fmt: skip

    def _generations(self, name: str) -> tuple[int, VirtualMachine | None]:
        """The first generation of ``name`` never registered, and the live VM of
        that name if there is one (then it is the generation before)."""
        generation = 0
        while True:
            try:
                found = self.app.get_vm(vm_id(name, generation))
            except UnknownVM:
                return generation, None
            if not found.removed:
                return generation, found
            generation += 1

    def save_new_vm(self, vm: VirtualMachine) -> VirtualMachine:
        """Save a VM made by ``new_vm`` with all its pending events, atomically."""
        if not isinstance(vm, VirtualMachine):
            check.fail("save_new_vm: vm", "a VirtualMachine made by new_vm", vm)
        try:
            with self._translated():
                self.app.save(vm)
        except StoreBusy:
            raise
        except StoreConflict:
            raise AlreadyExists(
                f"a VM named {self._existing_name(vm.id) or vm.name!r} already exists"
            ) from None
        self._after_save(vm)
        return vm

    def _after_save(self, vm: VirtualMachine) -> None:
        """Bring the read models up to date; the command has already succeeded.

        A failure here must not turn a saved command into an error (a retry
        would repeat it): the next catch-up, at any read, folds what is missing.
        """
        with contextlib.suppress(CkptError, PersistenceError, sqlite3.Error), self._translated():
            self.read_models.catch_up(known=vm)

    def _existing_name(self, vid: UUID) -> str | None:
        try:
            return self.app.get_vm(vid).name
        except UnknownVM:
            return None

    def remove_vm(self, name: str) -> VirtualMachine:
        """Remove-VM (``ckpt vm remove``): the VM leaves ``vm list`` and every command;
        its events stay in the log, ``--at`` before the removal still shows it and
        restores its content (gc keeps every recorded capture's chunks), and its
        name is free for a new VM (with a new id)."""
        check.text("remove_vm: name", name)

        def act(vm: VirtualMachine, origin: Origin) -> VirtualMachine:
            vm.remove(origin)
            return vm

        return self._command(name, act)

    def set_vm(
        self,
        name: str,
        checkpoint_type: CheckpointType | None = None,
        automatic_checkpoints: bool | None = None,
        config_version: str | None = None,
    ) -> VirtualMachine:
        m = "set_vm"
        check.text(f"{m}: name", name)
        checkpoint_type = check.optional_choice(
            f"{m}: checkpoint_type", checkpoint_type, CheckpointType
        )
        check.optional_flag(f"{m}: automatic_checkpoints", automatic_checkpoints)
        check.optional_text(f"{m}: config_version", config_version)

        def act(vm: VirtualMachine, origin: Origin) -> VirtualMachine:
            vm.change_settings(origin, checkpoint_type, automatic_checkpoints, config_version)
            return vm

        return self._command(name, act)

    def _power(self, name: str, change: Callable[[VirtualMachine, Origin], None]) -> VirtualMachine:
        check.text(f"{change.__name__}_vm: name", name)

        def act(vm: VirtualMachine, origin: Origin) -> VirtualMachine:
            change(vm, origin)
            return vm

        return self._command(name, act)

    def start_vm(self, name: str) -> VirtualMachine:
        """Start; takes an automatic checkpoint first when the VM's setting asks for one."""
        return self._power(name, VirtualMachine.start)

    def stop_vm(self, name: str) -> VirtualMachine:
        """Turn off; a clean shutdown removes the automatic checkpoint."""
        return self._power(name, VirtualMachine.stop)

    def save_vm(self, name: str) -> VirtualMachine:
        return self._power(name, VirtualMachine.save)

    def create_checkpoint(
        self,
        vm: str,
        name: str | None = None,
        checkpoint_type: CheckpointType | None = None,
        guest_can_quiesce: bool = True,
        *,
        disks: Mapping[str, str | Path] | None = None,
        files: Mapping[FileRole, str | Path] | None = None,
        changed_blocks: Mapping[str, Sequence[tuple[int, int]]] | None = None,
        progress: ProgressFactory | None = None,
        raw: bool = False,
    ) -> Checkpoint:
        """Checkpoint-VM; with ``disks``/``files``, capture their content first.

        ``disks`` maps a disk name to a raw image of it as the VM sees it now;
        ``files`` maps a role (config, runtime-state, device-state, memory) to
        the file; ``changed_blocks`` limits reading a disk to (offset, length)
        extents changed since its last capture. An image that looks like a
        VHDX, VHD or qcow2 file is refused unless ``raw`` (``--format raw``).
        """
        m = "create_checkpoint"
        check.text(f"{m}: vm", vm)
        check.optional_text(f"{m}: name", name)
        checkpoint_type = check.optional_choice(
            f"{m}: checkpoint_type", checkpoint_type, CheckpointType
        )
        check.flag(f"{m}: guest_can_quiesce", guest_can_quiesce)
        disks = None if disks is None else check.sources(f"{m}: disks", disks)
        files = None if files is None else check.roles(f"{m}: files", files)
        if changed_blocks is not None:
            changed_blocks = check.extents(f"{m}: changed_blocks", changed_blocks)
        check.progress(f"{m}: progress", progress)
        check.flag(f"{m}: raw", raw)
        if not disks and not files:
            return self._command(
                vm, lambda v, o: v.create_checkpoint(o, name, checkpoint_type, guest_can_quiesce)
            )
        return content_ops.create_checkpoint(
            self, vm, name, checkpoint_type, guest_can_quiesce,
            disks or {}, files or {}, changed_blocks or {}, progress, raw,
        )  # fmt: skip

    def sync(
        self,
        vm: str,
        disks: Mapping[str, str | Path],
        name: str | None = None,
        changed_blocks: Mapping[str, Sequence[tuple[int, int]]] | None = None,
        progress: ProgressFactory | None = None,
        raw: bool = False,
    ) -> BackupPoint:
        """Record the running disks' content as a backup point (not a checkpoint);
        ``raw`` as for ``create_checkpoint``."""
        check.text("sync: vm", vm)
        disks = check.sources("sync: disks", disks)
        check.optional_text("sync: name", name)
        if changed_blocks is not None:
            changed_blocks = check.extents("sync: changed_blocks", changed_blocks)
        check.progress("sync: progress", progress)
        check.flag("sync: raw", raw)
        return content_ops.sync(self, vm, name, disks, changed_blocks or {}, progress, raw)

    def restore_disk(
        self,
        vm: str,
        point: str,
        disk: str,
        out: BinaryIO,
        progress: ProgressFactory | None = None,
        at: str | int | None = None,
    ) -> int:
        """Write a disk as it was at a checkpoint or backup point (raw, sparse where zero).

        With ``at`` (a log position or ISO time) the checkpoint is looked up as
        of then, so one deleted since can still be restored."""
        self._check_point("restore_disk", vm, point, at)
        check.text("restore_disk: disk", disk)
        check.output("restore_disk: out", out)
        check.progress("restore_disk: progress", progress)
        return content_ops.restore_disk(self, vm, point, disk, out, progress, at)

    def restore_disk_vhdx(
        self, vm: str, point: str, disk: str, out: BinaryIO, at: str | int | None = None
    ) -> int:
        """The disk as one standalone dynamic VHDX (out must be a seekable file)."""
        self._check_point("restore_disk_vhdx", vm, point, at)
        check.text("restore_disk_vhdx: disk", disk)
        check.output("restore_disk_vhdx: out", out, seekable=True)
        return content_ops.restore_disk_vhdx(self, vm, point, disk, out, at)

    def restore_memory(
        self,
        vm: str,
        point: str,
        out: BinaryIO,
        progress: ProgressFactory | None = None,
        at: str | int | None = None,
    ) -> int:
        self._check_point("restore_memory", vm, point, at)
        check.output("restore_memory: out", out)
        check.progress("restore_memory: progress", progress)
        return content_ops.restore_memory(self, vm, point, out, progress, at)

    def restore_state_files(
        self, vm: str, point: str, directory: str | Path, at: str | int | None = None
    ) -> list[Path]:
        self._check_point("restore_state_files", vm, point, at)
        target = check.path("restore_state_files: directory", directory)
        return content_ops.restore_state_files(self, vm, point, target, at)

    @staticmethod
    def _check_point(method: str, vm: object, point: object, at: object) -> None:
        check.text(f"{method}: vm", vm)
        check.text(f"{method}: point", point)
        check.at(f"{method}: at", at)

    def verify(
        self, sample: float = 1.0, progress: ProgressFactory | None = None
    ) -> content_ops.VerifyReport:
        sample = check.number("verify: sample", sample, 0, 1, low_open=True)
        check.progress("verify: progress", progress)
        return content_ops.verify(self, sample, progress)

    def repair(self) -> dict[str, Any]:
        """Rebuild the chunk index from the packs and the read models from the log."""
        return content_ops.repair(self)

    def gc(
        self, grace_seconds: float = 3600.0, progress: ProgressFactory | None = None
    ) -> content_ops.GcReport:
        grace_seconds = check.number("gc: grace_seconds", grace_seconds, 0)
        check.progress("gc: progress", progress)
        return content_ops.gc(self, grace_seconds, progress)

    def info(self) -> dict[str, Any]:
        """Where the store is and what it holds; safe to print (passwords masked)."""
        config = self.config
        events = config.events or str(config.sqlite_file())
        chunks = config.chunks or str(config.directory / CHUNKS_DIR if config.directory else "")
        return {
            "store": None if config.directory is None else str(config.directory),
            "events_backend": config.events_kind,
            "events": display(events),
            "chunks_backend": config.chunks_kind,
            "chunks": display(chunks),
            "format": FORMAT,
            "encrypted": self.keyring is not None,
            "position": self.app.last_position(),
            "vms": len(self.read_models.recorder.vms()) if self._caught_up() else None,
        }

    def _caught_up(self) -> bool:
        with contextlib.suppress(CkptError, PersistenceError, sqlite3.Error), self._translated():
            self.read_models.catch_up()
            return True
        return False

    def copy_to(
        self,
        events: str | None,
        chunks: str | None,
        directory: str | Path | None = None,
        progress: ProgressFactory | None = None,
    ) -> CopyReport:
        """Copy the whole store to other backends (ckpt/copy.py)."""
        check.optional_text("copy_to: events", events)
        check.optional_text("copy_to: chunks", chunks)
        target = check.optional_path("copy_to: directory", directory)
        check.progress("copy_to: progress", progress)
        return copy_store(self, events, chunks, target, progress)

    def stats(self, vm: str | None = None, at: str | int | None = None) -> dict[str, Any]:
        check.optional_text("stats: vm", vm)
        check.at("stats: at", at)
        return content_ops.stats(self, vm, at)

    @property
    def chunks(self) -> Any:
        """The chunk store (``<store>/chunks`` or the chunks URL), opened on first use."""
        if isinstance(self._chunks, _Closed):
            self._chunks.fail()
        if self._chunks is None:
            from ckpt.storage.chunks import ChunkStore

            self._chunks = ChunkStore(self.config.chunk_backend(), keyring=self.keyring)
        return self._chunks

    def apply_checkpoint(self, vm: str, checkpoint: str | UUID) -> Checkpoint:
        check.text("apply_checkpoint: vm", vm)
        check.ref("apply_checkpoint: checkpoint", checkpoint)

        def act(v: VirtualMachine, o: Origin) -> Checkpoint:
            cp = v.find_checkpoint(checkpoint)
            v.apply_checkpoint(o, cp.id)
            return cp

        return self._command(vm, act)

    def revert(self, vm: str) -> Checkpoint:
        check.text("revert: vm", vm)

        def act(v: VirtualMachine, o: Origin) -> Checkpoint:
            v.revert(o)
            assert v.current is not None
            return v.checkpoints[v.current]

        return self._command(vm, act)

    def rename_checkpoint(self, vm: str, checkpoint: str | UUID, new_name: str) -> Checkpoint:
        check.text("rename_checkpoint: vm", vm)
        check.ref("rename_checkpoint: checkpoint", checkpoint)
        check.text("rename_checkpoint: new_name", new_name)

        def act(v: VirtualMachine, o: Origin) -> Checkpoint:
            cp = v.find_checkpoint(checkpoint)
            v.rename_checkpoint(o, cp.id, new_name)
            return v.checkpoints[cp.id]

        return self._command(vm, act)

    def delete_checkpoint(
        self, vm: str, checkpoint: str | UUID, subtree: bool = False
    ) -> list[str]:
        """Delete; return what happened to the layer files, one line each."""
        check.text("delete_checkpoint: vm", vm)
        check.ref("delete_checkpoint: checkpoint", checkpoint)
        check.flag("delete_checkpoint: subtree", subtree)

        def act(v: VirtualMachine, o: Origin) -> list[str]:
            cp = v.find_checkpoint(checkpoint)
            v.delete_checkpoint(o, cp.id, subtree)
            event = v.pending_events[-1]
            assert isinstance(event, VirtualMachine.CheckpointDeleted)
            return describe_changes(event.changes)

        return self._command(vm, act)

    def export(
        self,
        vm: str,
        checkpoint: str | None,
        directory: str | Path,
        at: str | int | None = None,
        flatten: bool = False,
        force: bool = False,
    ) -> list[Path]:
        """Export-VMSnapshot: a Hyper-V folder (VHDX + AVHDX chain, or one flattened
        VHDX, and the captured state files) for a checkpoint, or Now; recorded.

        ``directory/<VM>`` must be missing or empty; ``force`` first deletes the
        ``Virtual Hard Disks`` and ``Snapshots`` folders an earlier export wrote there."""
        from . import interop

        check.text("export: vm", vm)
        check.optional_text("export: checkpoint", checkpoint)
        target = check.path("export: directory", directory)
        check.at("export: at", at)
        check.flag("export: flatten", flatten)
        check.flag("export: force", force)
        return interop.export(self, vm, checkpoint, target, at, flatten, force)

    def record_export(self, vm: str, checkpoint_id: str | None, destination: str) -> None:
        check.text("record_export: vm", vm)
        check.text("record_export: destination", destination)
        cid = check.optional_text("record_export: checkpoint_id", checkpoint_id)
        try:
            checked = None if cid is None else UUID(cid.strip().strip("{}"))
        except ValueError:
            check.fail("record_export: checkpoint_id", "a checkpoint id (a UUID) or None", cid)

        def act(v: VirtualMachine, o: Origin) -> None:
            v.export_checkpoint(o, checked, destination)

        self._command(vm, act)

    def import_disk(self, vm: str, disk: str, path: str | Path, raw: bool = False) -> DiskCapture:
        """A VHDX/AVHDX chain or a raw image becomes the disk's running content;
        ``raw``: read any file (a .vhdx too) as a raw image, unchecked."""
        check.text("import_disk: vm", vm)
        check.text("import_disk: disk", disk)
        check.flag("import_disk: raw", raw)
        return content_ops.import_disk(self, vm, disk, check.path("import_disk: path", path), raw)

    # --------------------------------------------------------------- queries
    def position(self, at: str | int | None) -> int | None:
        """A log position from ``--at``: a position number, or an ISO 8601 time
        (the last position at or before it). None stays None (= now)."""
        check.at("position: at", at)
        if at is None:
            return None
        text = str(at).strip()
        last = self.app.last_position()
        if text.isdigit():
            position = int(text)
            if position > last:
                raise InvalidValue(f"position {position} is beyond the end of the log ({last})")
            return position
        when = _parse_time(text, "--at")
        self.catch_up()
        return self.read_models.recorder.position_at(when.timestamp())

    def catch_up(self) -> int:
        """Fold events other writers appended into the read models."""
        with self._translated():
            return self.read_models.catch_up()

    def rebuild_read_models(self) -> tuple[int, float]:
        """Empty the read models and fold the whole log again: (events, seconds)."""
        with self._translated():
            return self.read_models.rebuild()

    def vm(
        self, name: str | UUID, version: int | None = None, at: str | int | None = None
    ) -> VirtualMachine:
        """A VM by name (case-insensitive) or id: now, as of an event version of
        its own (1 to the latest), or as of a log position or time (``at``).

        A name that is another VM's id (an old log may hold one) matches two
        VMs: ``AmbiguousName``, never the id's VM silently. A removed VM is
        found only as of a moment before its removal."""
        check.ref("vm: name", name)
        check.version("vm: version", version)
        check.at("vm: at", at)
        position = self.position(at)
        if position is not None:
            self.catch_up()
        found: list[VirtualMachine] = []
        tried: list[UUID] = []
        removed: VirtualMachine | None = None
        with self._translated():
            as_id = name if isinstance(name, UUID) else parse_id(name)
            if as_id is not None:
                tried.append(as_id)
                v = self._vm_as_of(as_id, version, position)
                if v is not None and v.removed:
                    removed = v
                elif v is not None:
                    found.append(v)
            if not isinstance(name, UUID):
                generation = 0
                while True:
                    vid = vm_id(name, generation)
                    tried.append(vid)
                    v = self._vm_as_of(vid, version, position)
                    if v is None:
                        break
                    if not v.removed:
                        if all(f.id != v.id for f in found):
                            found.append(v)
                        break
                    removed, generation = v, generation + 1
        if not found and version is not None and position is None:
            self._check_version(tried, version)  # the VM may exist, without that version
        scope = [Candidate("VM", v.id, v.name) for v in found]
        pick = find_named(name, scope, f"the store at {self.where}", fold_case=True)
        if pick is None:
            when = "" if position is None else f" at position {position}"
            gone = (
                ""
                if removed is None
                else f" (VM {removed.name!r}, id {removed.id}, was removed: `ckpt log` keeps its "
                "history and --at before its removal shows it)"
            )
            raise UnknownVM(f"no VM named {name!r}{when} in the store at {self.where}{gone}")
        vm = next(v for v in found if v.id == pick.id)
        if version is not None and position is None and vm.version != version:
            self._check_version([vm.id], version)  # beyond the latest: not the latest silently
        return vm

    def _check_version(self, ids: Sequence[UUID], version: int) -> None:
        """Refuse an event version a VM of ``ids`` does not have, saying its range."""
        with self._translated():
            for candidate in ids:
                with contextlib.suppress(UnknownVM):
                    latest = self.app.get_vm(candidate)
                    raise InvalidValue(
                        f"VM {latest.name!r} has no version {version}: its versions run "
                        f"from 1 to {latest.version}"
                    )

    def _vm_as_of(
        self, vid: UUID, version: int | None, position: int | None
    ) -> VirtualMachine | None:
        """The VM with id ``vid`` at ``version`` or as of ``position``; None if it did not exist."""
        if position is not None:
            version = self.read_models.recorder.version_at(str(vid), position)
            if version is None:
                return None
        try:
            return self.app.get_vm(vid, version)
        except UnknownVM:
            return None

    def vms(self) -> list[VirtualMachine]:
        self.catch_up()
        with self._translated():
            return [self.app.get_vm(UUID(doc["id"])) for doc in self.read_models.recorder.vms()]

    def tree(self, vm: str, at: str | int | None = None) -> list[TreeEntry]:
        check.text("tree: vm", vm)
        return tree_entries(self.vm(vm, at=at))

    def checkpoints(self, vm: str, at: str | int | None = None) -> list[Checkpoint]:
        check.text("checkpoints: vm", vm)
        return list(self.vm(vm, at=at).checkpoints.values())

    def chain(
        self, vm: str, checkpoint: str | None = None, at: str | int | None = None
    ) -> dict[str, list[ChainEntry]]:
        check.text("chain: vm", vm)
        check.optional_text("chain: checkpoint", checkpoint)
        v = self.vm(vm, at=at)
        return disk_chains(v, None if checkpoint is None else v.find_checkpoint(checkpoint).id)

    def files(self, vm: str, checkpoint: str, at: str | int | None = None) -> tuple[StateFile, ...]:
        check.text("files: vm", vm)
        check.text("files: checkpoint", checkpoint)
        return self.vm(vm, at=at).find_checkpoint(checkpoint).state_files

    def log(
        self,
        vm: str | None = None,
        operation: str | None = None,
        actor: str | None = None,
        since: str | int | None = None,
        until: str | int | None = None,
    ) -> list[AuditEntry]:
        """The audit trail from the read model; ``since``/``until`` are positions
        or ISO times, inclusive (a time means the last position at or before it)."""
        check.optional_text("log: vm", vm)
        check.optional_text("log: actor", actor)
        check.at("log: since", since)
        check.at("log: until", until)
        if check.optional_text("log: operation", operation) not in (None, *OPERATIONS.values()):
            raise InvalidValue(_unknown_operation(str(operation)))
        only = None if vm is None else self._log_vm_id(vm)
        self.catch_up()
        low = None if since is None else self._since(since)
        rows = self.read_models.recorder.audit(only, operation, actor, low, self.position(until))
        links = self.read_models.recorder.links(rows[0][0] if rows else 0)
        return [
            AuditEntry(
                position=r[0],
                time=datetime.fromtimestamp(r[1], UTC),
                actor=r[5],
                host=r[6],
                vm=r[4],
                vm_id=UUID(r[2]),
                operation=r[7],
                checkpoint=r[8],
                details=json.loads(r[9]),
                link=links.get(r[0]),
            )
            for r in rows
        ]

    def _log_vm_id(self, ref: str) -> str:
        """The id whose history ``log VM`` shows: the live VM of that name or id, else
        the last removed one (its history stays in the log)."""
        try:
            return str(self.vm(ref).id)
        except UnknownVM:
            with self._translated():
                generation, _ = self._generations(ref)
                if generation:
                    return str(vm_id(ref, generation - 1))
                with contextlib.suppress(ValueError, UnknownVM):
                    return str(self.app.get_vm(UUID(ref.strip().strip("{}"))).id)
            raise

    def verify_log(self, anchor: str | None = None) -> ChainReport:
        """Walk the hash chain over every stored event: name the first position where
        the log was changed, removed or reordered; check an anchor if given."""
        parsed = None
        if check.optional_text("verify_log: anchor", anchor) is not None:
            assert anchor is not None
            try:
                parsed = parse_anchor(anchor)
            except ValueError as e:
                raise InvalidValue(f"--anchor {anchor!r}: {e}") from None
        # Link any new events first; a log too damaged to decode is still walked.
        with contextlib.suppress(CkptError):
            self.catch_up()
        with self._translated():
            rows = (
                (n.id, n.originator_id, n.originator_version, n.topic, n.state)
                for n in self.app.read_rows(1)
            )
            return walk(rows, self.read_models.recorder.links(), parsed)

    def _since(self, since: str | int) -> int:
        """A position, or for a time the first position at or after it."""
        text = str(since).strip()
        if text.isdigit():
            return int(text)
        return self.read_models.recorder.first_position_from(
            _parse_time(text, "--since").timestamp()
        )
