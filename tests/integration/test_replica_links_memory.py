"""Sending a first replicate's events takes memory that does not grow with the primary's log.

It checked each batch of events against the links the primary recorded, loaded as one map of
every link after the replica's position (~330 bytes an event: ~330 MiB for a first copy of
1 M events). Here the pages the log is read in are cut small, so whatever grows with the log
shows: the peak of Python allocations (tracemalloc) while the events of 6,000 are sent may
exceed that for 2,000 by less than a quarter of what the map of the 4,000 more would take.
(The replica's read models are built after that, by ``rebuild``: ~270 bytes an event of its
own, measured here, left to the read models.)
"""

from __future__ import annotations

import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ckpt import CheckpointType, DiskFormat, Store, app, replication
from ckpt.domain import Origin, VirtualMachine

LINK_BYTES = 330  # a position (int) and a 32-byte link in a dict, measured: ~330 bytes


def _store_with(path: Path, events: int) -> None:
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]

    def origin() -> Origin:
        clock[0] += timedelta(seconds=1)
        return Origin("test", "host", clock[0], uuid.uuid4())

    Store.init(path).close()
    with Store.open(path) as store:
        k = 0
        while store.app.last_position() < events:
            vm = VirtualMachine.register(
                origin(), f"vm{k}", [("D", DiskFormat.VHDX)], None, CheckpointType.STANDARD
            )
            k += 1
            while vm.version < 1000 and store.app.last_position() + vm.version < events:
                for name in list(vm.checkpoints)[:1] if len(vm.checkpoints) >= 40 else []:
                    vm.delete_checkpoint(origin(), name)
                vm.create_checkpoint(origin())
            store.app.save(vm)
        store.catch_up()


def _peak_while_sending_events(tmp_path: Path, events: int) -> int:
    _store_with(tmp_path / f"p{events}", events)
    peak = []
    send = replication._send_events

    def measured(*args: Any, **kwargs: Any) -> Any:
        tracemalloc.reset_peak()
        sent = send(*args, **kwargs)
        peak.append(tracemalloc.get_traced_memory()[1])
        return sent

    with Store.open(tmp_path / f"p{events}") as primary, pytest.MonkeyPatch.context() as m:
        m.setattr(replication, "_send_events", measured)
        tracemalloc.start()
        try:
            report = primary.replicate(to_dir=tmp_path / f"r{events}")
        finally:
            tracemalloc.stop()
    assert report.events == events and len(peak) == 1
    return peak[0]


def test_sending_a_first_replicates_events_takes_memory_independent_of_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "PAGE", 50)
    small = _peak_while_sending_events(tmp_path, 2000)
    large = _peak_while_sending_events(tmp_path, 6000)
    assert large - small < 4000 * LINK_BYTES / 4, (small, large)
