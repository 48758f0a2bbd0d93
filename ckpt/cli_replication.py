"""``ckpt replicate`` and ``ckpt replica promote``: the CLI of replication (ckpt/replication.py).

``--follow`` runs again every ``--interval`` seconds until Ctrl-C or SIGTERM,
which end it with exit 0 between runs (a run interrupted in the middle leaves a
replica that is a prefix of the primary; the next run completes it). With
``--json`` each run prints one JSON object on a line of its own.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any, TextIO

from ckpt.domain import InvalidValue

from . import render
from .progress import progress_bars
from .replication import ReplicateReport
from .stop_signal import Stopped, sigterm_stops
from .store import Store

DEFAULT_INTERVAL = 10.0
# The longest --interval: a week. time.sleep refuses ~9.2e9 s and more (OverflowError,
# EINVAL), which came out as a traceback after the first run; a follower that waits
# longer than a week is better a scheduled `ckpt replicate`.
MAX_INTERVAL = 7 * 24 * 3600.0


def _text(r: ReplicateReport) -> str:
    what = "made a replica:" if r.first_run else "replicated"
    return (
        f"{what} {r.events} events and {r.packs} packs ({r.bytes:,} bytes; {r.skipped_packs} "
        f"packs already there, {r.removed_packs} removed) to {r.target} in {r.seconds:.1f} s; "
        f"it is at position {r.position}, link {r.link[:16] or '-'}..."
    )


def _replicate(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    if not (a.to_store or (a.to_events and a.to_chunks)):
        raise InvalidValue(
            "ckpt replicate needs --to-store DIR, or --to-events URL and --to-chunks URL"
        )
    if a.interval is not None and not a.follow:
        raise InvalidValue("--interval is for --follow")
    interval = DEFAULT_INTERVAL if a.interval is None else a.interval
    if interval < 0:
        raise InvalidValue(f"--interval {interval}: seconds, 0 or more")

    def once() -> None:
        with progress_bars() as bars:
            report = s.replicate(a.to_events, a.to_chunks, a.to_store, bars)
        if a.json and a.follow:
            out.write(json.dumps(report.as_dict()) + "\n")
            out.flush()
        else:
            render.emit(out, a, report.as_dict(), _text(report))

    if not a.follow:
        once()
        return
    with sigterm_stops():
        try:
            while True:
                once()
                time.sleep(interval)
                s.catch_up()  # what other writers appended meanwhile
        except (Stopped, KeyboardInterrupt):
            return  # between runs, or a run interrupted: the replica stays a prefix


def _promote(s: Store, a: argparse.Namespace, out: TextIO) -> None:
    data = s.promote_replica()
    render.emit(
        out,
        a,
        data,
        f"promoted: this store ({data['store_id']}) was a replica of {data['replica_of']} up to "
        f"position {data['position']}; it is a primary now (since {data['promoted_at']})",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds (e.g. 10 or 0.5), not {text!r}"
        ) from None
    if not 0 <= value <= MAX_INTERVAL:  # also NaN and infinity
        raise argparse.ArgumentTypeError(
            f"expected seconds from 0 to {MAX_INTERVAL:g} (a week), not {text!r}"
        )
    return value


def register(sub: Any, cmd: Callable[..., argparse.ArgumentParser]) -> None:
    q = cmd(
        sub,
        "replicate",
        _replicate,
        "keep a replica of this store up to date: only the packs it lacks and the events "
        "after its position; checked by the hash chain",
        json_out=True,
    )
    q.add_argument("--to-store", metavar="DIR", help="the replica's directory (embedded store)")
    q.add_argument(
        "--to-events",
        metavar="URL",
        help="the replica's event store: postgresql://... or sqlite:///PATH",
    )
    q.add_argument(
        "--to-chunks", metavar="URL", help="the replica's chunk storage: s3://... or file:///PATH"
    )
    q.add_argument(
        "--follow", action="store_true", help="run again every --interval seconds until stopped"
    )
    q.add_argument(
        "--interval",
        type=_seconds,
        metavar="S",
        help=f"seconds between runs with --follow (default {DEFAULT_INTERVAL:g})",
    )
    rep = cmd(sub, "replica", None, "manage this store as a replica").add_subparsers(
        dest="replica_command", required=True, metavar="ACTION"
    )
    cmd(
        rep,
        "promote",
        _promote,
        "make this replica a primary (failover): it takes writes, and no more replication",
        json_out=True,
    )
