"""``ckpt report [VM...] -o FILE [--at POSITION|TIME]``: the HTML report (ckpt/report/).

The page is written where ``restore -o`` writes (ckpt/output.py, decision 0007):
a regular file (a symlink's target) is rendered into a partial file beside it and
renamed over it at the end, so a reader never sees half a page and an error (an
unknown VM, no such directory, no space) leaves the old file as it was; a FIFO,
``/dev/fd/N`` or a device is written in place.
``-o -`` writes the page to standard output (and nothing else).
``--json`` keys: ``output`` (the file), ``vms`` (names, in page order),
``events`` (rows of the audit table = timeline marks), ``bytes`` (the file's size).
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TextIO

from ckpt.domain import InvalidValue

from . import output, render
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
    # As `restore -o`: a regular file (through a symlink, its target) is written
    # beside it and renamed over it at the end; a FIFO or device is written in
    # place (renaming over /dev/null replaced the device node with the page).
    if Path(a.output).is_dir():
        raise InvalidValue(f"report: cannot write {a.output!r}: it is a directory")
    target = output.resolve(a.output)
    folder = Path(target.path).parent
    if target.kind is output.Kind.FILE and not folder.is_dir():
        raise InvalidValue(f"report: cannot write {a.output!r}: no directory {str(folder)!r}")
    with output.writing(target) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
        try:
            summary = s.report(text, vms, a.at)
            text.flush()
        finally:
            text.detach()  # the stream is output.writing's to close
    summary = replace(summary, output=a.output)
    lines = (
        f"wrote {a.output}: {summary.events} events of {len(summary.vms)} VMs "
        f"({', '.join(summary.vms) or 'none'}), {summary.bytes:,} bytes"
    )
    render.emit(out, a, asdict(summary), lines)
