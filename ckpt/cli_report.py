"""``ckpt report [VM...] -o FILE [--at POSITION|TIME]``: the HTML report (ckpt/report/).

The page is written as it is rendered to a temporary file in the target's
directory, then renamed over ``FILE``: a reader never sees half a page, and an
error (an unknown VM, no such directory, no space) leaves nothing behind.
``-o -`` writes the page to standard output (and nothing else).
``--json`` keys: ``output`` (the file), ``vms`` (names, in page order),
``events`` (rows of the audit table = timeline marks), ``bytes`` (the file's size).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from ckpt.domain import InvalidValue, OutputFailed

from . import render
from .report import ReportSummary
from .store import Store

AT_HELP = "the report as the log stood then: a position, or an ISO 8601 time"


def register(sub: Any, cmd: Callable[..., argparse.ArgumentParser]) -> None:
    q = cmd(
        sub,
        "report",
        _report,
        "write one self-contained HTML page: timelines, audit table, verification, storage",
        json_out=True,
    )
    q.add_argument("vm", nargs="*", help="the VMs (default: every VM with history)")
    q.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="the HTML file ('-': stdout)"
    )
    q.add_argument("--at", metavar="POSITION|TIME", help=AT_HELP)


def _report(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    vms = a.vm or None
    if a.output == "-":
        if getattr(a, "json", False):
            raise InvalidValue("report: --json prints a summary; it needs -o FILE, not -o -")
        s.report(out, vms, a.at)
        return
    target = Path(a.output)
    folder = target.parent
    if not folder.is_dir():
        raise InvalidValue(f"report: cannot write {a.output!r}: no directory {str(folder)!r}")
    if target.is_dir():
        raise InvalidValue(f"report: cannot write {a.output!r}: it is a directory")
    summary = _write_atomically(target, lambda f: s.report(f, vms, a.at))
    text = (
        f"wrote {target}: {summary.events} events of {len(summary.vms)} VMs "
        f"({', '.join(summary.vms) or 'none'}), {summary.bytes:,} bytes"
    )
    render.emit(out, a, asdict(summary), text)


def _write_atomically(target: Path, write: Callable[[TextIO], ReportSummary]) -> ReportSummary:
    """``write`` into a temporary file beside ``target``, then rename it over
    ``target``; on any error the temporary file goes and the error stands."""
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise OutputFailed(
            f"report: cannot write in {str(target.parent)!r}: {e.strerror}"
        ) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            summary = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)  # mkstemp makes 0600; a report is for reading
        os.replace(temp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(e, OSError):
            raise OutputFailed(f"report: cannot write {str(target)!r}: {e.strerror or e}") from None
        raise
    return ReportSummary(str(target), summary.vms, summary.events, summary.bytes)
