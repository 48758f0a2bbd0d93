"""The ``ckpt`` command line.

The store is ``--store DIR`` (before or after the subcommand), else ``CKPT_STORE``, else
the backends ``--events URL --chunks URL`` (``CKPT_EVENTS``, ``CKPT_CHUNKS``),
else ``./ckpt-store``. Read commands take ``--json``. Errors print one line,
``ckpt: error: ...``, to stderr and exit with the code of their class
(``ckpt.exit_codes``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from ckpt.domain import CheckpointType, CkptError, DiskFormat, InvalidValue, VMState
from ckpt.domain.checkpoint_rules import production_fallback, requested_type
from ckpt.projections import disk_chains, tree_entries
from ckpt.projections import documents as docs
from ckpt.storage.locations import environ_secrets, scrub

from . import (
    cli_content,
    cli_diff,
    cli_follow,
    cli_replication,
    cli_report,
    cli_retention,
    cli_serve,
    render,
)
from .cli_content import content_args
from .exit_codes import exit_code
from .progress import progress_bars
from .store import Store
from .store_config import read_marker

DEFAULT_STORE = "ckpt-store"
AT_HELP = "as of a log position or an ISO 8601 time (default: now)"
Handler = Callable[[Store, argparse.Namespace, TextIO], None]


def _disk(spec: str) -> tuple[str, DiskFormat]:
    name, _, fmt = spec.partition(":")
    try:
        return name, DiskFormat(fmt.lower() or "vhdx")
    except ValueError:
        raise argparse.ArgumentTypeError(f"disk format must be vhdx or vhd, not {fmt!r}") from None


def _ctype(text: str) -> CheckpointType:
    try:
        return CheckpointType(
            text.lower().replace("_", "-").replace("productiononly", "production-only")
        )
    except ValueError:
        choices = ", ".join(t.value for t in CheckpointType)
        raise argparse.ArgumentTypeError(f"checkpoint type must be one of {choices}") from None


def _onoff(text: str) -> bool:
    if text.lower() in ("on", "true", "yes", "1"):
        return True
    if text.lower() in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError("expected on or off")


# ---------------------------------------------------------------- handlers
def _vm_add(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    vm = s.register_vm(
        a.name, a.disk or (), a.config_version, a.checkpoint_type, a.automatic_checkpoints
    )
    render.emit(out, a, docs.vm_json(vm), f"registered VM {render.vm_text(vm)}")


def _vm_set(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    settings = (a.checkpoint_type, a.automatic_checkpoints, a.config_version)
    if a.retention is None or any(x is not None for x in settings):
        vm = s.set_vm(a.name, *settings)
    if a.retention is not None:
        vm = s.set_retention(a.name, a.retention)
    text = f"VM {render.vm_text(vm)}"
    if a.retention is not None:
        text += f"; retention policy: {vm.retention or 'none'}"
    render.emit(out, a, docs.vm_json(vm), text)


def _vm_power(action: str) -> Handler:
    def handle(s: Store, a: argparse.Namespace, out: TextIO) -> None:
        before = s.vm(a.name)
        had = set(before.checkpoints)
        if action == "stop":
            vm = s.stop_vm(a.name, turn_off=a.turn_off)
        else:
            act = {
                "start": s.start_vm, "save": s.save_vm, "pause": s.pause_vm,
                "resume": s.resume_vm,
            }[action]  # fmt: skip
            vm = act(a.name)
        text = f"VM {vm.name!r} is {vm.state.value}"
        if action == "stop":
            how = "turned off" if a.turn_off else "shut down"
            if before.state is VMState.SAVED and not a.turn_off:
                how = "saved state discarded"
            text += f" ({how})"
        for cid in set(vm.checkpoints) - had:
            text += f"; automatic checkpoint {vm.checkpoints[cid].name!r} taken"
        for cid in had - set(vm.checkpoints):
            text += f"; automatic checkpoint {before.checkpoints[cid].name!r} removed"
        render.emit(out, a, docs.vm_json(vm), text)

    return handle


def _vm_remove(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    vm = s.remove_vm(a.name)
    removal = s.log(str(vm.id), operation="vm-removed")[-1].position
    render.emit(
        out,
        a,
        docs.vm_json(vm) | {"removed": True, "position": removal},
        f"removed VM {vm.name!r} ({vm.id}) at position {removal}; its history stays in "
        f"`ckpt log`, and --at {removal - 1} (or earlier) still shows and restores it",
    )


def _vm_list(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    vms = s.vms()
    render.emit(
        out,
        a,
        [docs.vm_json(v) for v in vms],
        "\n".join(render.vm_text(v) for v in vms) or "no VMs",
    )


def _vm_show(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    vm = s.vm(a.name, at=a.at)
    render.emit(out, a, docs.vm_json(vm), render.vm_text(vm))


def _cp_create(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    with progress_bars() as bars:
        cp = s.create_checkpoint(
            a.vm, a.name, a.type, not a.guest_cannot_quiesce, **content_args(a), progress=bars
        )
    vm = s.vm(a.vm)
    why = None
    if cp.type is CheckpointType.STANDARD and (
        requested_type(vm.name, vm.checkpoint_type, a.type) is not CheckpointType.STANDARD
    ):
        why = production_fallback(cp.config_version, cp.vm_state, not a.guest_cannot_quiesce)
    fell = f" (fell back to standard: {why})" if why else ""
    render.emit(
        out,
        a,
        docs.checkpoint_json(cp, vm.current) | {"fallback_reason": why},
        f"created {cp.type.value} checkpoint {cp.name!r} ({cp.id}) of VM {vm.name!r}{fell}",
    )


def _cp_apply(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    cp = s.apply_checkpoint(a.vm, a.checkpoint)
    vm = s.vm(a.vm)
    render.emit(
        out,
        a,
        docs.vm_json(vm),
        f"applied checkpoint {cp.name!r}; VM {vm.name!r} is {vm.state.value}",
    )


def _cp_revert(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    cp = s.revert(a.vm)
    vm = s.vm(a.vm)
    render.emit(
        out,
        a,
        docs.vm_json(vm),
        f"reverted to checkpoint {cp.name!r}; VM {vm.name!r} is {vm.state.value}",
    )


def _cp_rename(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    cp = s.rename_checkpoint(a.vm, a.checkpoint, a.new_name)
    vm = s.vm(a.vm)
    render.emit(
        out, a, docs.checkpoint_json(cp, vm.current), f"renamed checkpoint {cp.id} to {cp.name!r}"
    )


def _cp_delete(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    what = "checkpoint subtree" if a.subtree else "checkpoint"
    target = s.vm(a.vm).find_checkpoint(a.checkpoint)
    changes = s.delete_checkpoint(a.vm, target.id, a.subtree)
    text = f"deleted {what} {target.name!r}" + "".join(f"\n  {c}" for c in changes)
    render.emit(out, a, {"deleted": str(target.id), "layers": changes}, text)


def _cp_list(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    vm = s.vm(a.vm, at=a.at)
    cps = list(vm.checkpoints.values())
    lines = [
        f"{cp.id}  {cp.name}  [{cp.type.value}, {cp.vm_state.value}]"
        + ("  <- current" if cp.id == vm.current else "")
        for cp in cps
    ]
    render.emit(
        out,
        a,
        [docs.checkpoint_json(cp, vm.current) for cp in cps],
        "\n".join(lines) or "no checkpoints",
    )


def _export(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    every = getattr(a, "all_checkpoints", False)
    files = s.export(
        a.vm, a.checkpoint, a.output, at=a.at, flatten=a.flatten, force=a.force,
        all_checkpoints=every,
    )  # fmt: skip
    what = (
        "Now and every checkpoint"
        if every
        else f"checkpoint {a.checkpoint!r}"
        if a.checkpoint
        else "Now"
    )
    lines = [f"exported {what} of VM {a.vm!r} as a Hyper-V folder:"] + [f"  {f}" for f in files]
    render.emit(out, a, {"files": [str(f) for f in files]}, "\n".join(lines))


def _tree(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    vm = s.vm(a.vm, at=a.at)
    entries = tree_entries(vm)
    render.emit(out, a, docs.tree_json(entries), render.tree_text(vm, entries))


def _chain(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    vm = s.vm(a.vm, at=a.at)
    cid = None if a.checkpoint is None else vm.find_checkpoint(a.checkpoint).id
    chains = disk_chains(vm, cid)
    render.emit(out, a, docs.chain_json(vm, cid, chains), render.chain_text(chains))


def _files(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    files = s.files(a.vm, a.checkpoint, at=a.at)
    render.emit(out, a, docs.files_json(files), render.files_text(files))


def _log(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    if a.follow:
        cli_follow.follow_log(s, a, out)
        return
    if a.interval is not None:
        raise InvalidValue("--interval is for --follow")
    if a.at is not None and a.until is not None:
        raise InvalidValue("give --at or --until, not both (they mean the same)")
    entries = s.log(a.vm, a.operation, a.by, a.since, a.until if a.at is None else a.at)
    render.emit(out, a, docs.log_json(entries), render.log_text(entries) or "no entries")


def _info(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    data = s.info()
    lines = [
        f"{key}: {value}" for key, value in data.items() if value is not None and key != "replica"
    ]
    replica = data.get("replica")
    if replica:
        state = "was a replica" if replica["promoted_at"] else "replica"
        lines.append(
            f"{state} of {replica['of']} up to position {replica['position']}, link "
            f"{replica['link'] or '-'}"
            + (f"; promoted at {replica['promoted_at']}" if replica["promoted_at"] else "")
        )
    render.emit(out, a, data, "\n".join(lines))


def _rebuild(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    events, seconds = s.rebuild_read_models()
    rate = events / seconds if seconds else 0.0
    data = {"events": events, "seconds": round(seconds, 3), "events_per_second": round(rate)}
    render.emit(
        out,
        a,
        data,
        f"rebuilt the read models from {events} events in {seconds:.2f} s ({rate:,.0f} events/s)",
    )


# ------------------------------------------------------------------ parser
def _export_options(q: argparse.ArgumentParser, checkpoint_required: bool) -> None:
    q.add_argument("vm")
    if checkpoint_required:
        q.add_argument("checkpoint")
    else:
        q.add_argument("checkpoint", nargs="?", help="default: Now (the whole current chain)")
        q.add_argument(
            "--all-checkpoints",
            action="store_true",
            help="the whole VM (Export-VM): Now and every checkpoint, each with its "
            "configuration, so `ckpt import hyperv` rebuilds the tree",
        )
    q.add_argument("-o", "--output", required=True, metavar="DIR")
    q.add_argument(
        "--flatten", action="store_true", help="one standalone VHDX (VHD for a VHD disk) per disk"
    )
    q.add_argument(
        "--force",
        action="store_true",
        help="DIR/<VM> may hold an earlier export: delete its 'Virtual Hard Disks', "
        "'Snapshots' and 'Virtual Machines' folders first (default: refuse a non-empty DIR/<VM>)",
    )
    q.add_argument("--at", metavar="POSITION|TIME", help=AT_HELP)


def _import_disk(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    capture = s.import_disk(a.vm, a.disk, a.file, raw=a.format == "raw")
    data = {
        "disk": capture.disk,
        "layer": str(capture.layer),
        "virtual_size": capture.virtual_size,
        "changed_blocks": capture.changed_blocks,
        "new_bytes": capture.added_bytes,
    }
    render.emit(
        out,
        a,
        data,
        f"imported {a.file} as disk {a.disk!r} of VM {a.vm!r}: {capture.virtual_size} bytes, "
        f"{capture.changed_blocks} blocks recorded",
    )


def _import_hyperv(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    report = s.import_hyperv(Path(a.directory), a.name)
    data = {
        "vm": report.vm,
        "disks": report.disks,
        "checkpoints": report.checkpoints,
        "files": report.files,
        "current": report.current,
        "hyperv_id": report.hyperv_id,
        "configuration": report.configuration,
        "config_version": report.version,
        "notes": report.notes,
    }
    lines = [
        f"imported VM {report.vm!r} from {report.files} disk files: disks "
        f"{', '.join(report.disks)}; {len(report.checkpoints)} "
        + ("checkpoint" if len(report.checkpoints) == 1 else "checkpoints")
        + (f", current {report.current!r}" if report.current else ""),
        *(f"  {n}" for n in report.notes),
    ]
    render.emit(out, a, data, "\n".join(lines))


def _global_options(p: argparse.ArgumentParser, backends: bool = True, **default: Any) -> None:
    """The options of every command. Given to the top parser (default None) and,
    with ``default=SUPPRESS``, to every subcommand too, as restic takes them: an
    option after the subcommand sets the value only when given, and wins then."""
    g = p.add_argument_group("global options (before or after the command)")
    g.add_argument(
        "--store",
        metavar="DIR",
        help="store directory (default: $CKPT_STORE or ./ckpt-store)",
        **default,
    )
    if backends:  # init has its own --events/--chunks: where a new store keeps them
        g.add_argument(
            "--events",
            metavar="URL",
            help="the event store of a store without a directory: "
            "postgresql://USER:PASS@HOST:PORT/DB[?schema=S] or sqlite:///PATH "
            "(default: $CKPT_EVENTS)",
            **default,
        )
        g.add_argument(
            "--chunks",
            metavar="URL",
            help="the chunk storage of a store without a directory: s3://BUCKET/PREFIX?endpoint="
            "URL&region=R (credentials: the AWS environment variables) or file:///PATH "
            "(default: $CKPT_CHUNKS)",
            **default,
        )
    g.add_argument(
        "--actor",
        help="who is acting, for the audit log (default: $CKPT_ACTOR or the user name)",
        **default,
    )
    g.add_argument(
        "--key-file",
        metavar="FILE",
        help="the key of an encrypted store: 64 hex digits or 32 raw bytes "
        "(default: $CKPT_KEY_FILE, or $CKPT_KEY: 64 hex digits)",
        **default,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ckpt", description="Event-sourced checkpoint store for VMs.")
    _global_options(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(
        parent: Any, name: str, handler: Handler | None, help: str, json_out: bool = False
    ) -> argparse.ArgumentParser:
        q: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        _global_options(q, backends=name != "init", default=argparse.SUPPRESS)
        if handler is not None:
            q.set_defaults(handler=handler)
        if json_out:
            q.add_argument("--json", action="store_true", help="print JSON for scripts")
        return q

    q = cmd(sub, "init", None, "create an empty store (or attach to one at --events/--chunks)")
    q.set_defaults(init=True)
    q.add_argument(
        "--events",
        dest="init_events",
        metavar="URL",
        help="keep the events there (postgresql://... or sqlite:///PATH), not in DIR; "
        "written into DIR's ckpt-store.json (mode 0600)",
    )
    q.add_argument(
        "--chunks",
        dest="init_chunks",
        metavar="URL",
        help="keep the chunks there (s3://BUCKET/PREFIX?endpoint=...&region=... or "
        "file:///PATH), not in DIR",
    )
    q.add_argument(
        "--encrypt",
        action="store_true",
        help="encrypt events, chunks and read models (AES-256-GCM) under the store key; "
        "with --key-file naming a file that does not exist, a new key is written there",
    )

    vm = cmd(sub, "vm", None, "register and manage VMs").add_subparsers(
        dest="vm_command", required=True, metavar="ACTION"
    )
    q = cmd(vm, "add", _vm_add, "register a VM", json_out=True)
    q.add_argument("name")
    q.add_argument(
        "--config-version",
        help="configuration version (5.0 = 2012 R2 files; 6.2+ = VMCX/VMRS; default 10.0)",
    )
    q.add_argument(
        "--checkpoint-type",
        type=_ctype,
        help="standard, production (default; standard on 5.0, which has no production "
        "checkpoints), production-only (6.2+) or disabled",
    )
    q.add_argument(
        "--disk",
        action="append",
        type=_disk,
        metavar="NAME[:FORMAT]",
        help="a virtual disk (format vhdx or vhd); repeat for more; "
        "default: one disk named after the VM",
    )
    q.add_argument(
        "--automatic-checkpoints",
        action="store_true",
        help="take a checkpoint when the VM starts with none, remove it at clean shutdown",
    )
    q = cmd(vm, "set", _vm_set, "change a VM's settings", json_out=True)
    q.add_argument("name")
    q.add_argument("--checkpoint-type", type=_ctype)
    q.add_argument("--automatic-checkpoints", type=_onoff, metavar="on|off")
    q.add_argument("--config-version", help="upgrade the configuration version (VM off)")
    q.add_argument(
        "--retention",
        metavar="POLICY",
        help='store a keep-policy, e.g. "last=3,daily=7,weekly=4,monthly=12" '
        "(ckpt forget --apply-policies runs it; none removes it)",
    )
    for action, text in (
        ("start", "start a VM (Start-VM; off or saved)"),
        (
            "stop",
            "shut a running VM down cleanly (removes the automatic checkpoint), or discard "
            "a saved VM's state (Stop-VM)",
        ),
        ("save", "save a running or paused VM's state (Save-VM)"),
        ("pause", "pause a running VM (Suspend-VM)"),
        ("resume", "resume a paused VM (Resume-VM)"),
    ):
        q = cmd(vm, action, _vm_power(action), text, json_out=True)
        q.add_argument("name")
        if action == "stop":
            q.add_argument(
                "--turn-off",
                action="store_true",
                help="turn it off hard, like pulling the plug (Stop-VM -TurnOff): any state; "
                "the automatic checkpoint stays",
            )
    q = cmd(
        vm,
        "remove",
        _vm_remove,
        "remove a VM (Remove-VM; it must be off): its history stays in the log and --at",
        json_out=True,
    )
    q.add_argument("name")
    cmd(vm, "list", _vm_list, "list VMs", json_out=True)
    q = cmd(vm, "show", _vm_show, "show one VM", json_out=True)
    q.add_argument("name")
    q.add_argument("--at", metavar="POSITION|TIME", help=AT_HELP)

    cp = cmd(sub, "checkpoint", None, "create, apply, rename, delete checkpoints").add_subparsers(
        dest="cp_command", required=True, metavar="ACTION"
    )
    q = cmd(cp, "create", _cp_create, "take a checkpoint (Checkpoint-VM)", json_out=True)
    q.add_argument("vm")
    q.add_argument("name", nargs="?", help="default: '<VM> - (<date time>)'")
    q.add_argument(
        "--type",
        type=_ctype,
        help="this checkpoint's type, within the VM's setting (Checkpoint-VM has none): "
        "standard, production or production-only; refused on a disabled VM, and "
        "standard refused on a production-only one (production there never falls back)",
    )
    q.add_argument(
        "--guest-cannot-quiesce",
        action="store_true",
        help="the guest cannot do a production checkpoint (VSS/fsfreeze failed)",
    )
    cli_content.capture_options(q)
    cli_content.state_options(q)
    q = cmd(cp, "apply", _cp_apply, "apply a checkpoint (Restore-VMSnapshot)", json_out=True)
    q.add_argument("vm")
    q.add_argument("checkpoint", help="name or id")
    cmd(cp, "revert", _cp_revert, "apply the current checkpoint", json_out=True).add_argument("vm")
    q = cmd(cp, "rename", _cp_rename, "rename a checkpoint", json_out=True)
    q.add_argument("vm")
    q.add_argument("checkpoint")
    q.add_argument("new_name")
    q = cmd(
        cp,
        "delete",
        _cp_delete,
        "delete a checkpoint, merging its disk as Hyper-V does",
        json_out=True,
    )
    q.add_argument("vm")
    q.add_argument("checkpoint")
    q.add_argument("--subtree", action="store_true", help="also delete every checkpoint below it")
    q = cmd(cp, "list", _cp_list, "list a VM's checkpoints", json_out=True)
    q.add_argument("vm")
    q.add_argument("--at", metavar="POSITION|TIME", help=AT_HELP)
    q = cmd(
        cp,
        "export",
        _export,
        "export a checkpoint as a Hyper-V folder (Export-VMSnapshot); same as `ckpt export`",
        json_out=True,
    )
    _export_options(q, checkpoint_required=True)

    q = cmd(sub, "export", _export, "export a checkpoint or Now as a Hyper-V folder", json_out=True)
    _export_options(q, checkpoint_required=False)
    imp = cmd(sub, "import", None, "import Hyper-V files").add_subparsers(
        dest="import_command", required=True, metavar="WHAT"
    )
    q = cmd(
        imp,
        "disk",
        _import_disk,
        "a VHDX/AVHDX (read with its parents) or a raw image becomes a disk's running content",
        json_out=True,
    )
    q.add_argument("vm")
    q.add_argument("disk")
    q.add_argument("file")
    cli_content.raw_format_option(q)
    q = cmd(
        imp,
        "hyperv",
        _import_hyperv,
        "a Hyper-V VM folder: its disks' VHDX/AVHDX trees become a VM with checkpoints",
        json_out=True,
    )
    q.add_argument("directory")
    q.add_argument("--name", help="the VM's name (default: the folder's name)")
    q = cmd(sub, "tree", _tree, "draw a VM's checkpoint tree", json_out=True)
    q.add_argument("vm")
    q.add_argument("--at", metavar="POSITION|TIME", help=AT_HELP)
    q = cmd(sub, "chain", _chain, "list each disk's files from base to leaf", json_out=True)
    q.add_argument("vm")
    q.add_argument("--checkpoint", help="the chain a checkpoint points to (default: Now)")
    q.add_argument("--at", metavar="POSITION|TIME", help=AT_HELP)
    q = cmd(sub, "files", _files, "list a checkpoint's state files", json_out=True)
    q.add_argument("vm")
    q.add_argument("checkpoint")
    q.add_argument("--at", metavar="POSITION|TIME", help=AT_HELP)
    q = cmd(sub, "log", _log, "the audit trail", json_out=True)
    q.add_argument("vm", nargs="?")
    q.add_argument("--operation", help="only this operation (e.g. checkpoint-deleted)")
    q.add_argument("--by", "--actor-is", metavar="ACTOR", help="only entries by this actor")
    q.add_argument("--since", metavar="POSITION|TIME", help="from this position or time on")
    q.add_argument("--until", metavar="POSITION|TIME", help="up to this position or time")
    q.add_argument("--at", metavar="POSITION|TIME", help="the log as it stood then (= --until)")
    cli_follow.add_options(q)
    cmd(
        sub,
        "info",
        _info,
        "where the store keeps its events and chunks (passwords masked), format, encryption",
        json_out=True,
    )
    rebuild = cmd(sub, "projections", None, "the read models").add_subparsers(
        dest="projections_command", required=True, metavar="ACTION"
    )
    cmd(
        rebuild,
        "rebuild",
        _rebuild,
        "empty the read models and fold the whole log again",
        json_out=True,
    )
    cli_content.register(sub, cmd)
    cli_serve.register(sub, cmd)
    cli_retention.register(sub, cmd)
    cli_replication.register(sub, cmd)
    cli_diff.register(sub, cmd)
    cli_report.register(sub, cmd)
    return p


def _key(args: argparse.Namespace, create: bool) -> bytes | None:
    """The store key from --key-file, $CKPT_KEY_FILE or $CKPT_KEY; with ``create``,
    a key file named but missing is created with a new random key (mode 0600)."""
    from ckpt.storage.keyring import generate_key, parse_key, parse_key_file

    file = args.key_file or os.environ.get("CKPT_KEY_FILE")
    if file:
        path = Path(file)
        if create and not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(generate_key() + "\n")
        try:
            return parse_key_file(path.read_bytes(), f"key file {file!r}")
        except OSError as e:
            raise InvalidValue(f"cannot read the key file {file!r}: {e.strerror}") from None
    text = os.environ.get("CKPT_KEY")
    return parse_key(text, "$CKPT_KEY") if text else None


def _secrets(
    args: argparse.Namespace, events: str | None, chunks: str | None, path: Path | None
) -> list[str]:
    urls = [events, chunks, getattr(args, "to_events", None), getattr(args, "to_chunks", None)]
    return environ_secrets([*urls, *_marker_urls(path)])


def _marker_urls(path: Path | None) -> list[str]:
    """The backend URLs a store directory's marker names (their passwords are secrets)."""
    try:
        config = read_marker(path) if path is not None else None
    except CkptError:
        return []
    return [u for u in (config.events, config.chunks) if u] if config else []


# The commands that write to the store: on read-only media they are refused
# before any work (StoreReadOnly, exit 38); every other command only reads.
WRITES = {
    "vm add", "vm set", "vm start", "vm stop", "vm save", "vm pause", "vm resume", "vm remove",
    "checkpoint create", "checkpoint apply", "checkpoint revert", "checkpoint rename",
    "checkpoint delete", "sync", "gc", "upgrade", "import disk", "import hyperv",
    "projections rebuild", "forget",
}  # fmt: skip
ACTIONS = ("vm_command", "cp_command", "import_command", "projections_command")


def _command(args: argparse.Namespace) -> str:
    """The command as typed: "checkpoint create", "verify --repair"."""
    words = [args.command, *(getattr(args, a) for a in ACTIONS if getattr(args, a, None))]
    if args.command == "verify" and getattr(args, "repair", False):
        words.append("--repair")
    if getattr(args, "dry_run", False):  # gc and forget: a dry run only reads
        words.append("--dry-run")
    return " ".join(words)


def _writes(args: argparse.Namespace) -> bool:
    return _command(args) in WRITES or _command(args) == "verify --repair"


def run(argv: Sequence[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:
        return int(e.code or 0)
    events = getattr(args, "init_events", None) or args.events or os.environ.get("CKPT_EVENTS")
    chunks = getattr(args, "init_chunks", None) or args.chunks or os.environ.get("CKPT_CHUNKS")
    # --events/--chunks on the command line win over $CKPT_STORE (not over --store).
    given = args.events or args.chunks
    directory = args.store or (None if given else os.environ.get("CKPT_STORE"))
    if directory is None and not (events or chunks):
        directory = DEFAULT_STORE
    path = None if directory is None else Path(directory)
    try:
        if getattr(args, "init", False):
            key = _key(args, create=args.encrypt)
            with Store.init(
                path, encrypt=args.encrypt, events=events, chunks=chunks,
                actor=args.actor, key=key,
            ) as store:  # fmt: skip
                where = render.printable(store.where)
                if store.attached:
                    out.write(f"attached to the ckpt store at {where}\n")
                else:
                    what = "an encrypted" if args.encrypt else "an empty"
                    out.write(f"initialised {what} ckpt store at {where}\n")
            return 0
        # With a directory only the command line's URLs count (Store.open refuses
        # them with --store); $CKPT_EVENTS/$CKPT_CHUNKS then do not apply.
        with Store.open(
            path, events=args.events if path else events, chunks=args.chunks if path else chunks,
            actor=args.actor, key=_key(args, create=False),
        ) as store:  # fmt: skip
            if store.read_only is not None and _writes(args):
                store.unit_of_work.writable(_command(args))
            args.handler(store, args, out)
        return 0
    except CkptError as e:
        # A server's error text may quote what it was given: never a password or key.
        message = scrub(str(e), _secrets(args, events, chunks, path))
        # One line, whatever a name in it holds (a newline, U+2028, a terminal escape).
        err.write(f"ckpt: error: {render.printable(message)}\n")
        return exit_code(e)
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        # Ctrl-C: the partial output is already removed and an interrupted capture
        # recorded nothing (its packs are unreferenced until gc); 130 = 128 + SIGINT,
        # what a shell reports for a command killed by Ctrl-C.
        err.write("ckpt: interrupted\n")
        return 130
    except Exception:  # a bug: its traceback, scrubbed like every other message
        import traceback

        err.write(scrub(traceback.format_exc(), _secrets(args, events, chunks, path)))
        return 1


def main() -> None:
    sys.exit(run(sys.argv[1:]))


__all__ = ["build_parser", "main", "run"]
