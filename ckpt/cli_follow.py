"""``ckpt log --follow``: the audit trail, then every event as it is committed.

Like ``tail -f``: the entries already in the log (from ``--since``, default the
whole log) come first, then each new one as soon as a poll sees it
(``ckpt/follow.py``: within ~0.3 s), by this or any other process or host. Text
lines are ``log``'s with the event's hash link appended (16 hex digits, the
first 64 bits: enough to find it in ``log --json`` and ``verify --log``);
``--json`` prints one object per line (JSON Lines, ``log --json``'s keys), flushed
at once so a pipe's reader sees it. Ctrl-C or SIGTERM end it with exit 0.
"""

from __future__ import annotations

import argparse
import json
from typing import TextIO

from ckpt.domain import InvalidValue
from ckpt.projections import AuditEntry
from ckpt.projections import documents as docs

from . import queries, render
from .follow import INTERVAL
from .stop_signal import Stopped, sigterm_stops
from .store import Store

LINK_DIGITS = 16


def line(e: AuditEntry) -> str:
    link = "-" if e.link is None else e.link.hex()[:LINK_DIGITS]
    return f"{render.log_text([e])}  link {link}"


def follow_log(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    if a.at is not None or a.until is not None:
        raise InvalidValue("--follow shows the log as it grows: not with --at or --until")
    after = (
        0 if a.since is None else max(0, queries.first_position_since(s.unit_of_work, a.since) - 1)
    )
    interval = INTERVAL if a.interval is None else a.interval
    with sigterm_stops():
        try:
            for e in s.follow(after, a.vm, a.operation, a.by, interval):
                if a.json:
                    out.write(json.dumps(docs.log_json([e])[0], ensure_ascii=False) + "\n")
                else:
                    out.write(line(e) + "\n")  # log_text escaped what a terminal hides
                out.flush()
        except (Stopped, KeyboardInterrupt):
            return


def add_options(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--follow",
        action="store_true",
        help="after the log, print each event as it is committed (by any process) until stopped",
    )
    q.add_argument(
        "--interval",
        type=float,
        metavar="S",
        help=f"with --follow: seconds between looks at the log (default {INTERVAL:g})",
    )
