"""The façade: a ckpt store and the operations on it, for embedders and the CLI.

``Store`` is what embedders use (``ckpt.Store.open(path)``) and what the CLI
calls. It checks every argument (``api_args``: a wrong type is ``InvalidValue``
naming the method and argument, never a traceback from deep inside) and hands
the work to a use case, which runs on the store's ``UnitOfWork``
(``unit_of_work.py``): ``setup`` (init, open), ``commands``, ``queries``,
``capture_ops``, ``restore_ops``, ``maintenance``, ``copy``,
``hyperv_export`` and ``hyperv_import``. docs/design.md maps the modules.

A store directory holds ``ckpt-store.json`` (format marker) and
``events.sqlite`` (the event log).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO
from uuid import UUID

from ckpt.domain import (
    BackupPoint,
    Checkpoint,
    CheckpointType,
    DiskCapture,
    DiskFormat,
    FileRole,
    InvalidValue,
    Origin,
    StateFile,
    VirtualMachine,
)
from ckpt.domain.retention import Policy
from ckpt.projections import OPERATIONS, AuditEntry, ChainEntry, TreeEntry
from ckpt.storage.chunks import ChunkStore, GcReport, UpgradeReport, VerifyReport
from ckpt.storage.chunks.verify import BadChunk
from ckpt.storage.disk_reader import DiskReader
from ckpt.storage.keyring import Keyring
from ckpt.storage.log_chain import ChainReport
from ckpt.storage.sources import StreamSource

from . import api_args as check
from . import (
    capture_ops,
    commands,
    diff_ops,
    hyperv_export,
    hyperv_import,
    maintenance,
    queries,
    replication,
    restore_ops,
    retention_ops,
    setup,
    upgrade_ops,
)
from . import follow as follow_log
from .app import CheckpointApplication
from .copy import CopyReport, copy_store
from .damage import naming_affected
from .diff_ops import PointDiff
from .hyperv_import import ImportReport
from .maintenance import RepairReport, StoreInfo, StoreStats
from .progress_factory import ProgressFactory
from .read_model_updates import ReadModels
from .replication import ReplicateReport
from .report import ReportSummary, verify_status, write_report
from .retention_ops import ForgetPlan
from .store_config import StoreConfig
from .unit_of_work import UnitOfWork, utc_now

# a capture source: a path, a readable binary stream, or a stream with its size
Source = str | Path | BinaryIO | StreamSource
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


def _check_point(method: str, vm: object, point: object, at: object) -> None:
    check.text(f"{method}: vm", vm)
    check.text(f"{method}: point", point)
    check.at(f"{method}: at", at)


class Store:
    def __init__(
        self,
        path: Path | None,
        actor: str | None = None,
        host: str | None = None,
        clock: Callable[[], datetime] = utc_now,
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
        config = config or StoreConfig(path, events, chunks)
        self._adopt(setup.connect(config, actor, host, clock, key, create), path)

    def _adopt(self, uow: UnitOfWork, path: Path | None, attached: bool = False) -> None:
        self.unit_of_work = uow
        self.path = path
        self.attached = attached  # init found the store already there (a second host)
        self.config: StoreConfig = uow.config
        self.where: str = uow.where
        self.actor: str = uow.actor
        self.host: str = uow.host
        self.keyring: Keyring | None = uow.keyring
        self._share()

    def _share(self) -> None:
        """The event application and read models, as the unit of work holds them
        (after ``close``: stand-ins that raise ``StoreClosed``)."""
        self.app: CheckpointApplication = self.unit_of_work.app
        self.read_models: ReadModels = self.unit_of_work.read_models

    @classmethod
    def _over(cls, uow: UnitOfWork, path: Path | None, attached: bool = False) -> Store:
        store = cls.__new__(cls)
        store._adopt(uow, path, attached)
        return store

    # ------------------------------------------------ what the unit of work holds
    @property
    def read_only(self) -> str | None:
        """Why the store cannot be written ("on a read-only file system"), or None:
        read commands work, write commands raise ``StoreReadOnly`` before any work."""
        self.unit_of_work.check_open()
        return self.unit_of_work.read_only

    @property
    def chunks(self) -> ChunkStore:
        """The chunk store (``<store>/chunks`` or the chunks URL), opened on first use."""
        return self.unit_of_work.chunks

    def _origin(self) -> Origin:
        return self.unit_of_work.origin()

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
        uow, attached = setup.init(directory, encrypt, events, chunks, **kwargs)
        return cls._over(uow, directory, attached)

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
        directory = check.optional_path("Store.open: path", path)
        check.optional_text("Store.open: events", events)
        check.optional_text("Store.open: chunks", chunks)
        uow = setup.open_store(directory, events, chunks, **kwargs)
        return cls._over(uow, uow.config.directory)

    def close(self) -> None:
        """Release the store; closing twice is harmless, any other use after it
        raises ``StoreClosed``."""
        self.unit_of_work.close()
        self._share()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- commands
    def register_vm(
        self,
        name: str,
        disks: Sequence[tuple[str, DiskFormat]] = (),
        config_version: str | None = None,
        checkpoint_type: CheckpointType | None = None,
        automatic_checkpoints: bool = False,
    ) -> VirtualMachine:
        """New-VM: ``config_version`` defaults to 10.0; ``checkpoint_type`` to production,
        or standard on 5.0, which has no production checkpoints (production-only is
        refused there: NotAllowed)."""
        vm = self.new_vm(name, disks, config_version, checkpoint_type, automatic_checkpoints)
        return self.save_new_vm(vm)

    def new_vm(
        self,
        name: str,
        disks: Sequence[tuple[str, DiskFormat]] = (),
        config_version: str | None = None,
        checkpoint_type: CheckpointType | None = None,
        automatic_checkpoints: bool = False,
    ) -> VirtualMachine:
        """A VM registered in memory, not saved yet (``save_new_vm``): ``import hyperv``
        builds a whole VM this way and records it in one transaction, or not at all.
        Refuses a name a live VM has; a removed VM's name gets the next generation."""
        self.unit_of_work.writable("vm add")
        m = "register_vm"
        name = check.text(f"{m}: name", name)
        disks = check.disk_specs(f"{m}: disks", disks)
        config_version = check.optional_text(f"{m}: config_version", config_version)
        checkpoint_type = check.optional_choice(
            f"{m}: checkpoint_type", checkpoint_type, CheckpointType
        )
        automatic_checkpoints = check.flag(f"{m}: automatic_checkpoints", automatic_checkpoints)
        return commands.new_vm(
            self.unit_of_work, name, disks, config_version, checkpoint_type, automatic_checkpoints
        )

    def save_new_vm(self, vm: VirtualMachine) -> VirtualMachine:
        """Save a VM made by ``new_vm`` with all its pending events, atomically."""
        self.unit_of_work.writable("vm add")
        if not isinstance(vm, VirtualMachine):
            check.fail("save_new_vm: vm", "a VirtualMachine made by new_vm", vm)
        return commands.save_new_vm(self.unit_of_work, vm)

    def remove_vm(self, name: str) -> VirtualMachine:
        """Remove-VM (``ckpt vm remove``): the VM leaves ``vm list`` and every command;
        its events stay in the log, ``--at`` before the removal still shows it and
        restores its content (gc keeps every recorded capture's chunks), and its
        name is free for a new VM (with a new id)."""
        self.unit_of_work.writable("vm remove")
        check.text("remove_vm: name", name)
        return commands.run(self.unit_of_work, name, commands.on_vm(VirtualMachine.remove))

    def set_vm(
        self,
        name: str,
        checkpoint_type: CheckpointType | None = None,
        automatic_checkpoints: bool | None = None,
        config_version: str | None = None,
    ) -> VirtualMachine:
        self.unit_of_work.writable("vm set")
        m = "set_vm"
        check.text(f"{m}: name", name)
        checkpoint_type = check.optional_choice(
            f"{m}: checkpoint_type", checkpoint_type, CheckpointType
        )
        check.optional_flag(f"{m}: automatic_checkpoints", automatic_checkpoints)
        check.optional_text(f"{m}: config_version", config_version)
        return commands.set_vm(
            self.unit_of_work, name, checkpoint_type, automatic_checkpoints, config_version
        )

    def _power(self, name: str, change: Callable[[VirtualMachine, Origin], None]) -> VirtualMachine:
        self.unit_of_work.writable(f"vm {change.__name__}")
        check.text(f"{change.__name__}_vm: name", name)
        return commands.run(self.unit_of_work, name, commands.on_vm(change))

    def start_vm(self, name: str) -> VirtualMachine:
        """Start-VM (off or saved); takes an automatic checkpoint first when the VM's
        setting asks for one. A paused VM is resumed, not started (``resume_vm``)."""
        return self._power(name, VirtualMachine.start)

    def stop_vm(self, name: str, turn_off: bool = False) -> VirtualMachine:
        """Stop-VM: Shut Down (clean) a running VM, which removes the automatic
        checkpoint, or discard a saved VM's state; ``turn_off`` (Stop-VM -TurnOff)
        turns off a running, paused or saved VM hard and keeps the automatic checkpoint.
        A paused VM cannot shut down cleanly: resume it, or turn it off."""
        self.unit_of_work.writable("vm stop")
        check.text("stop_vm: name", name)
        turn_off = check.flag("stop_vm: turn_off", turn_off)
        return commands.stop_vm(self.unit_of_work, name, turn_off)

    def save_vm(self, name: str) -> VirtualMachine:
        """Save-VM: a running or paused VM's memory is saved and the VM stops."""
        return self._power(name, VirtualMachine.save)

    def pause_vm(self, name: str) -> VirtualMachine:
        """Suspend-VM: a running VM pauses (its guest stops running, memory kept)."""
        return self._power(name, VirtualMachine.pause)

    def resume_vm(self, name: str) -> VirtualMachine:
        """Resume-VM: a paused VM runs again."""
        return self._power(name, VirtualMachine.resume)

    def create_checkpoint(
        self,
        vm: str,
        name: str | None = None,
        checkpoint_type: CheckpointType | None = None,
        guest_can_quiesce: bool = True,
        *,
        disks: Mapping[str, Source] | None = None,
        files: Mapping[FileRole, Source] | None = None,
        changed_blocks: Mapping[str, Sequence[tuple[int, int]]] | None = None,
        progress: ProgressFactory | None = None,
        raw: bool = False,
    ) -> Checkpoint:
        """Checkpoint-VM; with ``disks``/``files``, capture their content first.

        ``disks`` maps a disk name to a raw image of it as the VM sees it now;
        ``files`` maps a role (config, runtime-state, device-state, memory) to
        the file; each is a path (a file, a block device, a FIFO), a readable
        binary stream or a ``StreamSource`` (a stream with its size): a pipe or
        stream that cannot seek is read once, in order. ``changed_blocks``
        limits reading a disk to (offset, length) extents changed since its
        last capture (refused for a pipe). An image that looks like a
        VHDX, VHD or qcow2 file is refused unless ``raw`` (``--format raw``).
        """
        self.unit_of_work.writable("checkpoint create")
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
        uow = self.unit_of_work
        if not disks and not files:
            return commands.create_checkpoint(uow, vm, name, checkpoint_type, guest_can_quiesce)
        return capture_ops.create_checkpoint(
            uow, vm, name, checkpoint_type, guest_can_quiesce,
            disks or {}, files or {}, changed_blocks or {}, progress, raw,
        )  # fmt: skip

    def sync(
        self,
        vm: str,
        disks: Mapping[str, Source],
        name: str | None = None,
        changed_blocks: Mapping[str, Sequence[tuple[int, int]]] | None = None,
        progress: ProgressFactory | None = None,
        raw: bool = False,
    ) -> BackupPoint:
        """Record the running disks' content as a backup point (not a checkpoint);
        ``raw`` as for ``create_checkpoint``."""
        self.unit_of_work.writable("sync")
        check.text("sync: vm", vm)
        disks = check.sources("sync: disks", disks)
        check.optional_text("sync: name", name)
        if changed_blocks is not None:
            changed_blocks = check.extents("sync: changed_blocks", changed_blocks)
        check.progress("sync: progress", progress)
        check.flag("sync: raw", raw)
        return capture_ops.sync(
            self.unit_of_work, vm, name, disks, changed_blocks or {}, progress, raw
        )

    def apply_checkpoint(self, vm: str, checkpoint: str | UUID) -> Checkpoint:
        self.unit_of_work.writable("checkpoint apply")
        check.text("apply_checkpoint: vm", vm)
        check.ref("apply_checkpoint: checkpoint", checkpoint)
        return commands.apply_checkpoint(self.unit_of_work, vm, checkpoint)

    def revert(self, vm: str) -> Checkpoint:
        self.unit_of_work.writable("checkpoint revert")
        check.text("revert: vm", vm)
        return commands.revert(self.unit_of_work, vm)

    def rename_checkpoint(self, vm: str, checkpoint: str | UUID, new_name: str) -> Checkpoint:
        self.unit_of_work.writable("checkpoint rename")
        check.text("rename_checkpoint: vm", vm)
        check.ref("rename_checkpoint: checkpoint", checkpoint)
        check.text("rename_checkpoint: new_name", new_name)
        return commands.rename_checkpoint(self.unit_of_work, vm, checkpoint, new_name)

    def delete_checkpoint(
        self, vm: str, checkpoint: str | UUID, subtree: bool = False
    ) -> list[str]:
        """Delete; return what happened to the layer files, one line each."""
        self.unit_of_work.writable("checkpoint delete")
        check.text("delete_checkpoint: vm", vm)
        check.ref("delete_checkpoint: checkpoint", checkpoint)
        check.flag("delete_checkpoint: subtree", subtree)
        return commands.delete_checkpoint(self.unit_of_work, vm, checkpoint, subtree)

    def record_export(self, vm: str, checkpoint_id: str | None, destination: str) -> None:
        self.unit_of_work.writable("recording an export")
        check.text("record_export: vm", vm)
        check.text("record_export: destination", destination)
        cid = check.optional_text("record_export: checkpoint_id", checkpoint_id)
        try:
            checked = None if cid is None else UUID(cid.strip().strip("{}"))
        except ValueError:
            check.fail("record_export: checkpoint_id", "a checkpoint id (a UUID) or None", cid)
        commands.record_export(self.unit_of_work, vm, checked, destination)

    # ----------------------------------------------------------- Hyper-V files
    def export(
        self,
        vm: str,
        checkpoint: str | None,
        directory: str | Path,
        at: str | int | None = None,
        flatten: bool = False,
        force: bool = False,
        all_checkpoints: bool = False,
    ) -> list[Path]:
        """Export-VMSnapshot: a Hyper-V folder (VHDX + AVHDX chain, or VHD + AVHD for a
        VHD disk, or one flattened file per disk; ``Virtual Machines/<id>`` with the
        configuration; the captured state files) for a checkpoint, or Now; recorded.
        ``all_checkpoints`` (Export-VM): Now and every checkpoint, each with its
        configuration in ``Snapshots/``, so ``import_hyperv`` rebuilds the tree.

        ``directory/<VM>`` must be missing or empty; ``force`` first deletes the
        ``Virtual Hard Disks``, ``Snapshots`` and ``Virtual Machines`` folders an
        earlier export wrote there."""
        check.text("export: vm", vm)
        check.optional_text("export: checkpoint", checkpoint)
        target = check.path("export: directory", directory)
        check.at("export: at", at)
        check.flag("export: flatten", flatten)
        check.flag("export: force", force)
        check.flag("export: all_checkpoints", all_checkpoints)
        uow = self.unit_of_work
        with naming_affected(uow):
            return hyperv_export.export(
                uow, vm, checkpoint, target, at, flatten, force, all_checkpoints
            )

    def import_disk(self, vm: str, disk: str, path: str | Path, raw: bool = False) -> DiskCapture:
        """A VHDX/AVHDX chain or a raw image becomes the disk's running content;
        ``raw``: read any file (a .vhdx too) as a raw image, unchecked."""
        self.unit_of_work.writable("import disk")
        check.text("import_disk: vm", vm)
        check.text("import_disk: disk", disk)
        check.flag("import_disk: raw", raw)
        source = check.path("import_disk: path", path)
        return capture_ops.import_disk(self.unit_of_work, vm, disk, source, raw)

    def import_hyperv(self, directory: str | Path, name: str | None = None) -> ImportReport:
        """A Hyper-V VM folder (``ckpt import hyperv``): its VHDX/AVHDX or VHD/AVHD
        trees and its configuration files (VMCX, or 2012 R2 XML) become a VM with the
        checkpoints, names, ids, times and current checkpoint Hyper-V Manager shows;
        where a configuration is missing or damaged the disk files decide, and
        ``ImportReport.notes`` says so per checkpoint. Nothing is recorded on error."""
        check.optional_text("import_hyperv: name", name)
        source = check.path("import_hyperv: directory", directory)
        return hyperv_import.import_folder(self.unit_of_work, source, name)

    # --------------------------------------------------------------- restore
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
        _check_point("restore_disk", vm, point, at)
        check.text("restore_disk: disk", disk)
        check.output("restore_disk: out", out)
        check.progress("restore_disk: progress", progress)
        with naming_affected(self.unit_of_work):
            return restore_ops.restore_disk(self.unit_of_work, vm, point, disk, out, progress, at)

    def open_disk(self, vm: str, point: str, disk: str, at: str | int | None = None) -> DiskReader:
        """A read-only, seekable, thread-safe file over a disk at a checkpoint,
        backup point or ``"Now"``, reading only the chunks asked for (see
        ``DiskReader``). ``at`` as in ``restore_disk``. It reads through this
        store: close it before the store."""
        _check_point("open_disk", vm, point, at)
        check.text("open_disk: disk", disk)
        with naming_affected(self.unit_of_work):
            return restore_ops.open_disk(self.unit_of_work, vm, point, disk, at)

    def diff(
        self, vm: str, a: str, b: str, disk: str | None = None, at: str | int | None = None
    ) -> PointDiff:
        """What point ``b`` holds that point ``a`` does not (checkpoints, backup
        points, ``"Now"``; ``at`` as in ``restore_disk``; a deleted checkpoint
        also by its id): per disk the changed extents and zeroed ones, per state
        file changed or not. Read from manifests only, never chunk data."""
        _check_point("diff", vm, a, at)
        check.text("diff: b", b)
        check.optional_text("diff: disk", disk)
        with naming_affected(self.unit_of_work):
            return diff_ops.diff(self.unit_of_work, vm, a, b, disk, at)

    def open_memory(self, vm: str, point: str, at: str | int | None = None) -> DiskReader:
        """As ``open_disk``, over the memory image captured at a point
        (``block_size``: the memory manifest's)."""
        _check_point("open_memory", vm, point, at)
        with naming_affected(self.unit_of_work):
            return restore_ops.open_memory(self.unit_of_work, vm, point, at)

    def restore_disk_vhdx(
        self, vm: str, point: str, disk: str, out: BinaryIO, at: str | int | None = None
    ) -> int:
        """The disk as one standalone dynamic VHDX (out must be a seekable file)."""
        _check_point("restore_disk_vhdx", vm, point, at)
        check.text("restore_disk_vhdx: disk", disk)
        check.output("restore_disk_vhdx: out", out, seekable=True)
        with naming_affected(self.unit_of_work):
            return restore_ops.restore_disk_vhdx(self.unit_of_work, vm, point, disk, out, at)

    def restore_disk_vhd(
        self, vm: str, point: str, disk: str, out: BinaryIO, at: str | int | None = None
    ) -> int:
        """The disk as one standalone dynamic VHD (out must be a seekable file; VHD
        holds at most 2040 GiB: a larger disk is refused, ``VhdxUnsupported``)."""
        _check_point("restore_disk_vhd", vm, point, at)
        check.text("restore_disk_vhd: disk", disk)
        check.output("restore_disk_vhd: out", out, seekable=True)
        with naming_affected(self.unit_of_work):
            return restore_ops.restore_disk_vhd(self.unit_of_work, vm, point, disk, out, at)

    def restore_memory(
        self,
        vm: str,
        point: str,
        out: BinaryIO,
        progress: ProgressFactory | None = None,
        at: str | int | None = None,
    ) -> int:
        _check_point("restore_memory", vm, point, at)
        check.output("restore_memory: out", out)
        check.progress("restore_memory: progress", progress)
        with naming_affected(self.unit_of_work):
            return restore_ops.restore_memory(self.unit_of_work, vm, point, out, progress, at)

    def restore_state_files(
        self, vm: str, point: str, directory: str | Path, at: str | int | None = None
    ) -> list[Path]:
        _check_point("restore_state_files", vm, point, at)
        target = check.path("restore_state_files: directory", directory)
        with naming_affected(self.unit_of_work):
            return restore_ops.restore_state_files(self.unit_of_work, vm, point, target, at)

    # ----------------------------------------------------------- maintenance
    def verify(
        self, sample: float = 1.0, progress: ProgressFactory | None = None
    ) -> VerifyReport[list[BadChunk]]:
        sample = check.number("verify: sample", sample, 0, 1, low_open=True)
        check.progress("verify: progress", progress)
        report = maintenance.verify(self.unit_of_work, sample, progress)
        verify_status.note_chunks(self.unit_of_work, report)  # for `ckpt report`
        return report

    def repair(self) -> RepairReport:
        """Rebuild the chunk index from the packs and the read models from the log."""
        self.unit_of_work.writable("verify --repair")
        return maintenance.repair(self.unit_of_work)

    def gc(
        self,
        grace_seconds: float = 3600.0,
        progress: ProgressFactory | None = None,
        dry_run: bool = False,
    ) -> GcReport:
        """Delete what no retained point needs (packs older than ``grace_seconds``);
        purges in force are recorded as reclaimed first (no undo after).
        ``dry_run``: nothing recorded or deleted; the report's figures are estimates."""
        check.flag("gc: dry_run", dry_run)
        if not dry_run:
            self.unit_of_work.writable("gc")
        grace_seconds = check.number("gc: grace_seconds", grace_seconds, 0)
        check.progress("gc: progress", progress)
        return maintenance.gc(self.unit_of_work, grace_seconds, progress, dry_run)

    # ------------------------------------------------------------- retention
    def forget(
        self,
        policy: Policy | str | None = None,
        vms: Sequence[str] = (),
        *,
        apply_policies: bool = False,
        checkpoints: bool = False,
        dry_run: bool = False,
        timezone: str | None = None,
    ) -> ForgetPlan:
        """Purge the content of the points ``policy`` does not keep (backup points and
        checkpoints deleted from the tree; live checkpoints too with ``checkpoints``),
        per VM (``vms``, default every VM), one ``content-purged`` event per VM.
        ``policy``: a ``Policy`` or its text ("daily=7,weekly=4"); ``apply_policies``:
        each VM's stored policy instead. ``timezone``: periods' zone (default UTC)."""
        m = "forget"
        if isinstance(policy, str):
            policy = Policy.parse(policy)
        elif policy is not None and not isinstance(policy, Policy):
            check.fail(f"{m}: policy", "a ckpt.Policy, its text or None", policy)
        if isinstance(vms, str) or not all(isinstance(v, str) for v in vms):
            check.fail(f"{m}: vms", "a sequence of VM names", vms)
        for name, value in (("apply_policies", apply_policies), ("checkpoints", checkpoints),
                            ("dry_run", dry_run)):  # fmt: skip
            check.flag(f"{m}: {name}", value)
        check.optional_text(f"{m}: timezone", timezone)
        return retention_ops.forget(
            self.unit_of_work, list(vms), policy, apply_policies, checkpoints, dry_run,
            retention_ops.timezone(timezone),
        )  # fmt: skip

    def undo_forget(self, position: int) -> list[UUID]:
        """Withdraw the purge recorded at log ``position`` (``content-purged``): the ids
        of the points whose content is back. ``PointPurged`` once gc reclaimed it."""
        if isinstance(position, bool) or not isinstance(position, int) or position < 1:
            check.fail("undo_forget: position", "a log position (an integer >= 1)", position)
        return retention_ops.undo(self.unit_of_work, position)[1]

    def set_retention(self, vm: str, policy: Policy | str) -> VirtualMachine:
        """Store ``policy`` as the VM's own (``forget(apply_policies=True)`` runs it);
        "none" removes it."""
        self.unit_of_work.writable("vm set --retention")
        check.text("set_retention: vm", vm)
        if not isinstance(policy, (Policy, str)):
            check.fail("set_retention: policy", "a ckpt.Policy or its text", policy)
        return retention_ops.set_retention(self.unit_of_work, vm, str(policy))

    def upgrade(self, progress: ProgressFactory | None = None) -> UpgradeReport:
        """Convert the chunk storage to the current format (version-2 packs of
        grouped frames, decision 0012): resumable, crash-safe as gc is; run it
        again after a kill. A store already converted reports 0 packs."""
        self.unit_of_work.writable("upgrade")
        check.progress("upgrade: progress", progress)
        return upgrade_ops.upgrade(self.unit_of_work, progress)

    def info(self) -> StoreInfo:
        """Where the store is and what it holds; safe to print (passwords masked)."""
        return maintenance.info(self.unit_of_work)

    def stats(self, vm: str | None = None, at: str | int | None = None) -> StoreStats:
        check.optional_text("stats: vm", vm)
        check.at("stats: at", at)
        return maintenance.stats(self.unit_of_work, vm, at)

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
        with naming_affected(self.unit_of_work):
            return copy_store(self.unit_of_work, events, chunks, target, progress)

    def replicate(
        self,
        to_events: str | None = None,
        to_chunks: str | None = None,
        to_dir: str | Path | None = None,
        progress: ProgressFactory | None = None,
    ) -> ReplicateReport:
        """Bring a replica of this store up to date (ckpt/replication.py): the first
        run into an empty target makes it one; later runs send only the packs it
        lacks and the events after its position, checked by the hash chain
        (``ReplicaDiverged`` when its log is not a prefix of this one)."""
        check.optional_text("replicate: to_events", to_events)
        check.optional_text("replicate: to_chunks", to_chunks)
        target = check.optional_path("replicate: to_dir", to_dir)
        check.progress("replicate: progress", progress)
        if target is None and not (to_events and to_chunks):
            raise InvalidValue("replicate: give to_dir, or to_events and to_chunks")
        with naming_affected(self.unit_of_work):
            return replication.replicate(self.unit_of_work, to_events, to_chunks, target, progress)

    def promote_replica(self) -> dict[str, Any]:
        """``ckpt replica promote``: this replica becomes a primary (failover)."""
        return replication.promote(self.unit_of_work)

    def catch_up(self) -> int:
        """Fold events other writers appended into the read models."""
        return self.unit_of_work.catch_up()

    def rebuild_read_models(self) -> tuple[int, float]:
        """Empty the read models and fold the whole log again: (events, seconds)."""
        self.unit_of_work.writable("projections rebuild")
        with self.unit_of_work.translated():
            return self.read_models.rebuild()

    # --------------------------------------------------------------- queries
    def position(self, at: str | int | None) -> int | None:
        """A log position from ``--at``: a position number, or an ISO 8601 time
        (the last position at or before it). None stays None (= now)."""
        check.at("position: at", at)
        return queries.position(self.unit_of_work, at)

    def vm(
        self, name: str | UUID, version: int | None = None, at: str | int | None = None
    ) -> VirtualMachine:
        """A VM by name (case-insensitive) or id: now, as of an event version of
        its own (1 to the latest), or as of a log position or time (``at``)."""
        check.ref("vm: name", name)
        check.version("vm: version", version)
        check.at("vm: at", at)
        return queries.vm(self.unit_of_work, name, version, at)

    def vms(self) -> list[VirtualMachine]:
        return queries.vms(self.unit_of_work)

    def tree(self, vm: str, at: str | int | None = None) -> list[TreeEntry]:
        check.text("tree: vm", vm)
        check.at("vm: at", at)  # checked as `vm` checks it
        return queries.tree(self.unit_of_work, vm, at)

    def checkpoints(self, vm: str, at: str | int | None = None) -> list[Checkpoint]:
        check.text("checkpoints: vm", vm)
        check.at("vm: at", at)
        return queries.checkpoints(self.unit_of_work, vm, at)

    def chain(
        self, vm: str, checkpoint: str | None = None, at: str | int | None = None
    ) -> dict[str, list[ChainEntry]]:
        check.text("chain: vm", vm)
        check.optional_text("chain: checkpoint", checkpoint)
        check.at("vm: at", at)
        return queries.chain(self.unit_of_work, vm, checkpoint, at)

    def files(self, vm: str, checkpoint: str, at: str | int | None = None) -> tuple[StateFile, ...]:
        check.text("files: vm", vm)
        check.text("files: checkpoint", checkpoint)
        check.at("vm: at", at)
        return queries.files(self.unit_of_work, vm, checkpoint, at)

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
            raise InvalidValue(queries.unknown_operation(str(operation)))
        return queries.log(self.unit_of_work, vm, operation, actor, since, until)

    def follow(
        self,
        after: int | None = None,
        vm: str | None = None,
        operation: str | None = None,
        actor: str | None = None,
        interval: float = follow_log.INTERVAL,
        idle: float | None = None,
    ) -> Iterator[AuditEntry]:
        """Audit entries after log position ``after`` (None: only events committed
        from now on; 0: the whole log first), as this or any other process commits
        them, each with its hash-chain link; filtered as ``log``. Polls every
        ``interval`` seconds (a new event shows within about one interval); ends
        when nothing new came for ``idle`` seconds (None: never; break out of the
        loop to stop)."""
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
            raise InvalidValue(f"follow: after must be a log position (an int), not {after!r}")
        if after is not None and after < 0:
            raise InvalidValue(f"follow: after must be 0 or more, not {after}")
        check.optional_text("follow: vm", vm)
        check.optional_text("follow: actor", actor)
        check.optional_text("follow: operation", operation)
        for name, value in (("interval", interval), ("idle", idle)):
            if value is None and name == "idle":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidValue(f"follow: {name} must be seconds, not {value!r}")
            if not 0 < value <= follow_log.MAX_WAIT:  # also NaN
                raise InvalidValue(
                    f"follow: {name} must be more than 0 and at most {follow_log.MAX_WAIT:g} s"
                )
        self.unit_of_work.check_open()
        return follow_log.follow(self.unit_of_work, vm, operation, actor, after, interval, idle)

    def report(
        self, out: TextIO, vms: Sequence[str] | None = None, at: str | int | None = None
    ) -> ReportSummary:
        """Write the HTML report (``ckpt report``) of ``vms`` (names; None: every VM
        with history, removed ones too) as of ``at`` to the text stream ``out``."""
        if not callable(getattr(out, "write", None)) or isinstance(
            out, io.BufferedIOBase | io.RawIOBase
        ):
            check.fail("report: out", "a text stream open for writing, e.g. open(path, 'w')", out)
        if vms is not None and (isinstance(vms, str) or not all(isinstance(v, str) for v in vms)):
            check.fail("report: vms", "a sequence of VM names or None", vms)
        check.at("report: at", at)
        return write_report(self.unit_of_work, out, vms, at)

    def verify_log(self, anchor: str | None = None) -> ChainReport:
        """Walk the hash chain over every stored event: name the first position where
        the log was changed, removed or reordered; check an anchor if given."""
        check.optional_text("verify_log: anchor", anchor)
        report = queries.verify_log(self.unit_of_work, anchor)
        verify_status.note_log(self.unit_of_work, report)  # for `ckpt report`
        return report
