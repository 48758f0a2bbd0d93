"""CLI commands that move content: capture options, sync, restore, verify, gc, stats."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ckpt.domain import FileRole, InvalidValue, NotFound, StoreCorrupt, StoreIOError
from ckpt.storage.capture import parse_extents
from ckpt.storage.chunks import VerifyReport
from ckpt.storage.chunks.verify import AffectedCapture, BadChunk
from ckpt.storage.log_chain import format_anchor
from ckpt.storage.sources import StreamSource

from . import api_args, mount, output, render, upgrade_ops
from .maintenance import RepairReport
from .progress import progress_bars
from .store import Store

Handler = Callable[[Store, argparse.Namespace, TextIO], None]


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise InvalidValue(f"{option} expects NAME=FILE, got {value!r}")
        if name in out:
            raise InvalidValue(f"{option} {name} is given twice")
        out[name] = path
    return out


def capture_options(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--disk",
        action="append",
        metavar="DISK=IMAGE",
        help="raw image of a disk as the VM sees it now (a file, a block device, a FIFO, "
        "or - for standard input); repeat per disk",
    )
    q.add_argument(
        "--changed-blocks",
        action="append",
        metavar="DISK=FILE",
        help="only read these extents ('OFFSET LENGTH' per line) of that disk",
    )
    raw_format_option(q)


def raw_format_option(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--format",
        choices=("raw",),
        help="read every image as raw bytes, even one that looks like a VHDX, VHD or qcow2 file "
        "(refused by default)",
    )


def state_options(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--memory",
        metavar="IMAGE",
        help="the memory image (running or saved VM, standard checkpoint); - for standard input",
    )
    q.add_argument(
        "--config", metavar="FILE", help="the VMCX (2016+) or XML (5.0) configuration file"
    )
    q.add_argument("--runtime-state", metavar="FILE", help="the VMRS file (2016+)")
    q.add_argument("--device-state", metavar="FILE", help="the VSV file (5.0)")


def content_args(a: argparse.Namespace) -> dict[str, Any]:
    _one_dash(a)
    disks = _pairs(a.disk, "--disk")
    changed: dict[str, list[tuple[int, int]]] = {}
    for disk, path in _pairs(a.changed_blocks, "--changed-blocks").items():
        try:
            text = Path(path).read_text()
        except FileNotFoundError as e:
            raise NotFound(f"cannot read changed blocks {path!r}: {e.strerror}") from None
        except OSError as e:
            raise InvalidValue(f"cannot read changed blocks {path!r}: {e.strerror}") from None
        changed[disk] = parse_extents(text, path)
    files = {
        role: path
        for role, path in (
            (FileRole.MEMORY, getattr(a, "memory", None)),
            (FileRole.CONFIG, getattr(a, "config", None)),
            (FileRole.RUNTIME_STATE, getattr(a, "runtime_state", None)),
            (FileRole.DEVICE_STATE, getattr(a, "device_state", None)),
        )
        if path
    }
    raw = getattr(a, "format", None) == "raw"
    return {
        "disks": {d: _stdin_for_dash(p) for d, p in disks.items()},
        "files": {r: _stdin_for_dash(p) for r, p in files.items()},
        "changed_blocks": changed,
        "raw": raw,
    }


def _stdin_for_dash(path: str) -> str | StreamSource:
    """``-`` names standard input: a pipe read once in order, or a file redirected
    with ``<`` read like a file."""
    if path != "-":
        return path
    return StreamSource(sys.stdin.buffer, name="standard input (-)")


def _one_dash(a: argparse.Namespace) -> None:
    """Standard input can be read once: it can feed one source of a command."""
    given = [f"--disk {v}" for v in a.disk or [] if v.partition("=")[2] == "-"]
    for option in ("memory", "config", "runtime_state", "device_state"):
        if getattr(a, option, None) == "-":
            given.append(f"--{option.replace('_', '-')} -")
    if len(given) > 1:
        raise InvalidValue(
            f"standard input (-) is given for {' and '.join(given)}: it can be read once, "
            "so it feeds one source at most; give the others as files or FIFOs"
        )


def _sync(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    args = content_args(a)
    if not args["disks"]:
        raise InvalidValue("ckpt sync needs at least one --disk DISK=IMAGE")
    with progress_bars() as bars:
        point = s.sync(a.vm, args["disks"], a.name, args["changed_blocks"], bars, args["raw"])
    data = {
        "id": str(point.id),
        "name": point.name,
        "created_at": point.created_at.isoformat(),
        "version": point.version,
    }
    render.emit(out, a, data, f"recorded backup point {point.name!r} ({point.id}) of VM {a.vm!r}")


def _format_of(output: str) -> str:
    suffix = output.lower().rpartition(".")[2]
    return suffix if suffix in ("vhdx", "vhd") else "raw"


def _restore(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    chosen = [x for x in (a.disk, a.memory, a.state_files) if x]
    if len(chosen) != 1:
        raise InvalidValue("restore needs exactly one of --disk DISK, --memory, --state-files")
    fmt = a.format or _format_of(a.output)
    if fmt in ("vhdx", "vhd") and not a.disk:
        raise InvalidValue(f"--format {fmt} is for a disk (--disk DISK)")
    if fmt in ("vhdx", "vhd") and a.output == "-":
        raise InvalidValue(
            f"a {fmt.upper()} cannot be streamed to stdout (it is written out of order)"
        )
    if a.state_files:
        files = s.restore_state_files(a.vm, a.checkpoint, a.output, at=a.at)
        render.emit(
            out, a, {"files": [str(f) for f in files]}, "\n".join(f"wrote {f}" for f in files)
        )
        return
    # Devices, pipes and hard-linked files are written in place; any other file
    # beside its final name, renamed only when every chunk was read and verified
    # (ckpt/output.py; decision record 0007).
    target = output.resolve(a.output)
    if fmt in ("vhdx", "vhd") and not target.seekable:
        raise InvalidValue(
            f"a {fmt.upper()} is written out of order: {a.output!r} is a pipe or character "
            "device; give a file or a block device, or --format raw"
        )
    with output.writing(target) as stream, progress_bars() as bars:
        if a.disk and fmt == "vhdx":
            size = s.restore_disk_vhdx(a.vm, a.checkpoint, a.disk, stream, at=a.at)
        elif a.disk and fmt == "vhd":
            size = s.restore_disk_vhd(a.vm, a.checkpoint, a.disk, stream, at=a.at)
        elif a.disk:
            size = s.restore_disk(a.vm, a.checkpoint, a.disk, stream, bars, at=a.at)
        else:
            size = s.restore_memory(a.vm, a.checkpoint, stream, bars, at=a.at)
    if a.output != "-":
        what = f"disk {a.disk}" if a.disk else "memory"
        render.emit(
            out,
            a,
            {"bytes": size, "output": a.output},
            f"restored {what} of {a.checkpoint!r}: {size} bytes to {a.output}",
        )


def _mount(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    def ready() -> None:
        out.write(f"mounting the store read-only at {a.directory} (Ctrl-C to unmount)\n")
        out.flush()

    mount.mount(s.unit_of_work, a.directory, at=a.at, vm=a.vm, ready=ready)
    out.write(f"unmounted {a.directory}\n")


def _repair_text(repaired: RepairReport) -> str:
    lines = [
        f"repair: rebuilt {repaired['index_files_rebuilt']} index files from their packs, "
        f"removed {repaired['stale_index_files_removed']} stale ones"
    ]
    if "read_models_rebuilt_from_events" in repaired:
        lines.append(
            f"repair: read models rebuilt from {repaired['read_models_rebuilt_from_events']} events"
        )
    else:
        lines.append(f"repair: read models NOT rebuilt: {repaired.get('read_models_error')}")
    lines += [f"  damaged pack {p}: {why}" for p, why in repaired["damaged_packs"].items()]
    return "\n".join(lines)


def _verify_log(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    report = s.verify_log(a.anchor)
    anchor = format_anchor(report.last_position, report.last_link)
    data = {
        "ok": report.ok,
        "events": report.events,
        "problems": report.problems,
        "anchor": anchor,
        "anchor_found": report.anchor_found,
    }
    lines = [
        f"walked the hash chain over {report.events} events: " + ("OK" if report.ok else "BROKEN")
    ]
    lines += [f"  {p}" for p in report.problems]
    if a.anchor is not None and report.anchor_found:
        lines.append(f"  the anchor {a.anchor} is reached: the log up to it is unchanged")
    lines.append(f"anchor (keep it elsewhere; check later with --anchor): {anchor}")
    render.emit(out, a, data, "\n".join(lines))
    if not report.ok:
        raise StoreCorrupt(f"the event log fails its hash chain: {report.problems[0]}")


def _verify(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    if a.log:
        _verify_log(s, a, out)
        return
    if a.anchor is not None:
        raise InvalidValue("--anchor goes with --log")
    api_args.number("--sample", a.sample, 0, 1, low_open=True)  # nan and inf too
    repaired = s.repair() if a.repair else None
    if repaired is not None and not getattr(a, "json", False):
        out.write(render.printable_lines(_repair_text(repaired)) + "\n")
    with progress_bars() as bars:
        report = s.verify(a.sample, bars)
    data = {
        "ok": report.ok,
        "referenced": report.referenced,
        "checked": report.checked,
        "bad": report.bad,
        "unreadable": report.unreadable,
        "stale_index": report.stale_index,
        "repair": repaired,
    }
    lines = [
        f"verified {report.checked} of {report.referenced} referenced chunks: "
        + ("OK" if report.ok else f"{len(report.bad)} BAD")
    ]
    io_errors = set(report.unreadable.values())
    lines += _unreadable_lines(report)
    lines += [
        f"  index file {name} names a pack that is gone: a capture could reference its "
        "chunks, which no longer exist; ckpt verify --repair removes it"
        for name in report.stale_index
    ]
    for bad in report.bad:
        if bad["reason"] in io_errors:
            continue  # listed once per pack above
        lines.append(f"  chunk {bad['chunk'][:16]}: {bad['reason']}")
        lines += _affects_lines(bad["affects"])
    render.emit(out, a, data, "\n".join(lines))
    if report.ok:
        return
    damaged = [b for b in report.bad if b["reason"] not in io_errors]
    if not damaged and report.stale_index and not report.unreadable:
        raise StoreCorrupt(
            f"verify found {len(report.stale_index)} index files naming packs that are gone "
            "(listed above); ckpt verify --repair removes them"
        )
    if not damaged:
        raise StoreIOError(
            f"verify could not read {len(report.unreadable)} of the store's files "
            "(I/O errors, listed above); every other pack was checked"
        )
    raise StoreCorrupt(f"verify found {len(report.bad)} damaged chunks (listed above)")


def _affects_lines(affects: list[AffectedCapture]) -> list[str]:
    lines = []
    for x in affects:
        users = ", ".join(x["checkpoints"]) or "no live checkpoint (history only)"
        lines.append(f"    VM {x['vm']}: {x['what']} (event {x['position']}); needed by {users}")
    return lines


def _unreadable_lines(report: VerifyReport[list[BadChunk]]) -> list[str]:
    """One finding per object the medium failed to read, with the captures its
    chunks are needed by (each once), not one line per chunk of a 16 MiB pack."""
    lines = []
    for name, reason in report.unreadable.items():
        chunks = [b for b in report.bad if b["reason"] == reason]
        lines.append(f"  unreadable {name}: {reason}; {len(chunks)} referenced chunks in it")
        seen: dict[tuple[str, int, str], AffectedCapture] = {}
        for bad in chunks:
            for x in bad["affects"]:
                seen.setdefault((x["vm"], x["position"], x["what"]), x)
        lines += _affects_lines(list(seen.values()))
    return lines


def _gc(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    api_args.number("--grace", a.grace, 0)  # -5, nan and inf were taken (issue 11)
    with progress_bars() as bars:
        report = s.gc(a.grace, bars, dry_run=a.dry_run)
    d = report.details
    data = {
        "referenced": report.referenced,
        "removed_chunks": report.removed_chunks,
        "freed_bytes": report.freed_bytes,
        **d,
        "dry_run": report.dry_run,
        "reclaimed_purges": report.reclaimed_purges,
    }
    would = "would remove" if report.dry_run else "removed"
    lines = [
        f"gc: kept {report.referenced} referenced chunks, {would} {report.removed_chunks}, "
        f"{'would free about' if report.dry_run else 'freed'} {report.freed_bytes} bytes",
        f"  packs: {d['deleted_packs']} deleted ({d['orphan_packs']} orphans without an "
        f"index file, {d['orphan_bytes']} bytes), {d['repacked_packs']} repacked into "
        f"{d['new_packs']}; {d['index_files_removed']} index files removed",
    ]
    if d["young_packs"]:
        lines.append(f"  kept {d['young_packs']} packs younger than the grace period")
    if d["kept_for_leases"] or d["live_leases"]:
        lines.append(
            f"  kept {d['kept_for_leases']} packs for {len(d['live_leases'])} running captures:"
        )
        lines += [f"    {x}" for x in d["live_leases"]]
    if d["dead_leases_removed"]:
        lines.append(f"  removed {d['dead_leases_removed']} leases of ended processes")
    lines += [f"  problem: {p}" for p in d["problems"]]
    if report.reclaimed_purges:
        verb = "would reclaim" if report.dry_run else "reclaimed"
        where = ", ".join(map(str, report.reclaimed_purges))
        which = "purges at positions" if len(report.reclaimed_purges) > 1 else "purge at position"
        lines.append(f"  {verb} the {which} {where} (no undo after)")
    if report.dry_run:
        lines.append("  dry run: nothing was recorded or deleted")
    render.emit(out, a, data, "\n".join(lines))


def _upgrade(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    with progress_bars() as bars:
        report = s.upgrade(bars)
    data = upgrade_ops.details(report)
    lines = [
        f"upgrade: chunk format {report.format_before} -> {report.format}; converted "
        f"{report.converted_packs} version-1 packs ({report.bytes_before:,} B) into "
        f"{report.new_packs} version-2 packs ({report.bytes_after:,} B)",
    ]
    if report.resumed:
        lines.append(f"  {report.resumed} of them had been converted by an interrupted run")
    if report.kept_for_leases:
        lines.append(f"  left {report.kept_for_leases} packs of running captures for next time")
    if report.remaining:
        lines.append(f"  {report.remaining} version-1 packs remain: run ckpt upgrade again")
    lines += [f"  problem: {p}" for p in report.problems]
    render.emit(out, a, data, "\n".join(lines))
    if any("not converted" in p for p in report.problems):
        raise StoreCorrupt(
            f"upgrade left {report.remaining} version-1 packs (problems above); run ckpt verify"
        )


def _stats(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    st = s.stats(a.vm, at=a.at)
    lines = [
        f"{name}: logical {row['logical_bytes']:,} B, new {row['new_bytes']:,} B, "
        f"captures {row['captures']}"
        for name, row in st["vms"].items()
    ]
    t = st["total"]
    if "stored_bytes" not in t:
        lines.append(f"total at position {t['position']}: logical {t['logical_bytes']:,} B")
        render.emit(out, a, st, "\n".join(lines))
        return
    lines.append(
        f"total: logical {t['logical_bytes']:,} B, unique {t['unique_bytes']:,} B, "
        f"stored {t['stored_bytes']:,} B in {t['chunks']:,} chunks; "
        f"dedup {_ratio(t['dedup_ratio'])}, compression {_ratio(t['compression_ratio'])}"
    )
    render.emit(out, a, st, "\n".join(lines))


def _ratio(value: float | None) -> str:
    """A ratio as "x2.5"; "-" where there is nothing to divide (an empty store)."""
    return "-" if value is None else f"x{value}"


def register(sub: Any, cmd: Callable[..., argparse.ArgumentParser]) -> None:
    q = cmd(
        sub, "sync", _sync, "record the running disks' content as a backup point", json_out=True
    )
    q.add_argument("vm")
    q.add_argument("--name", help="default: '<VM> - backup point (<time>)'")
    capture_options(q)
    q = cmd(
        sub,
        "restore",
        _restore,
        "write a checkpoint's (or backup point's) disk, memory or state files",
        json_out=True,
    )
    q.add_argument("vm")
    q.add_argument("checkpoint", help="checkpoint or backup point, by name or id")
    q.add_argument("--disk", metavar="DISK", help="restore this disk (raw, sparse where zero)")
    q.add_argument("--memory", action="store_true", help="restore the memory image")
    q.add_argument(
        "--state-files",
        action="store_true",
        help="write the state files under their Hyper-V names into -o DIR",
    )
    q.add_argument("-o", "--output", required=True, metavar="FILE|DIR|-")
    q.add_argument(
        "--format",
        choices=("raw", "vhdx", "vhd"),
        help="disk output format (default: vhdx when FILE ends in .vhdx, vhd when it ends in "
        ".vhd, else raw)",
    )
    q.add_argument(
        "--at",
        metavar="POSITION|TIME",
        help="look the checkpoint up as of then (reaches deleted ones)",
    )
    q = cmd(
        sub,
        "mount",
        _mount,
        "show every point's disks, memory and state files as read-only files under DIR (FUSE)",
    )
    q.add_argument("directory", metavar="DIR", help="an empty directory")
    q.add_argument("--vm", metavar="VM", help="only this VM")
    q.add_argument(
        "--at", metavar="POSITION|TIME", help="the store as of then (reaches deleted points)"
    )
    q = cmd(
        sub,
        "verify",
        _verify,
        "check every referenced chunk: present, decompresses, hashes to its id",
        json_out=True,
    )
    q.add_argument(
        "--sample",
        type=float,
        default=1.0,
        metavar="P",
        help="check a random fraction P of the chunks, 0 < P <= 1 (default 1: all)",
    )
    q.add_argument("--log", action="store_true", help="walk the event log's hash chain instead")
    q.add_argument(
        "--repair",
        action="store_true",
        help="first rebuild the chunk index from the packs and the read models from the log",
    )
    q.add_argument(
        "--anchor", metavar="POSITION:HASH", help="with --log: check this earlier anchor"
    )
    q = cmd(
        sub,
        "gc",
        _gc,
        "remove chunks no event references (older than the grace period)",
        json_out=True,
    )
    q.add_argument(
        "--grace",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="keep unreferenced chunks younger than this, >= 0 (default 3600)",
    )
    q.add_argument(
        "--dry-run",
        action="store_true",
        help="tell what gc would free (bytes, packs, purges reclaimed); record and delete nothing",
    )
    cmd(
        sub,
        "upgrade",
        _upgrade,
        "convert the chunk storage to the current format (grouped packs); resumable",
        json_out=True,
    )
    q = cmd(sub, "stats", _stats, "logical and stored bytes, dedup and compression", json_out=True)
    q.add_argument("vm", nargs="?")
    q.add_argument("--at", metavar="POSITION|TIME", help="per-VM figures as of then")
    q = cmd(
        sub,
        "copy",
        _copy,
        "copy the whole store (events in order, each chunk once) to other backends",
        json_out=True,
    )
    q.add_argument(
        "--to-events",
        metavar="URL",
        help="postgresql://USER:PASS@HOST:PORT/DB[?schema=S] or sqlite:///PATH "
        "(default with --to-store: DIR/events.sqlite)",
    )
    q.add_argument(
        "--to-chunks",
        metavar="URL",
        help="s3://BUCKET/PREFIX?endpoint=URL&region=R or file:///PATH "
        "(default with --to-store: DIR/chunks)",
    )
    q.add_argument(
        "--to-store",
        metavar="DIR",
        help="also write a store directory whose marker names the target backends",
    )


def _copy(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    if not (a.to_store or (a.to_events and a.to_chunks)):
        raise InvalidValue("ckpt copy needs --to-events URL and --to-chunks URL, or --to-store DIR")
    with progress_bars() as bars:
        report = s.copy_to(a.to_events, a.to_chunks, a.to_store, bars)
    render.emit(
        out,
        a,
        report.as_dict(),
        f"copied {report.events} events, {report.snapshots} snapshots and {report.packs} packs "
        f"({report.bytes:,} bytes) to {report.target} in {report.seconds:.1f} s; "
        f"hash chain ends in {report.link[:16]}... as in the source",
    )
