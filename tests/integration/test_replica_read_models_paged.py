"""A first replicate builds the replica's read models a page at a time.

Found by bench/bench_replicate.py --history: the first run into an empty replica folded the
whole replicated log with one catch-up, which decodes every event after its position at
once: its peak RSS grew with the log (59 MiB with no history, 351 MiB at 100,000 events,
905 MiB at 300,000). Here the page is cut to 20 events and the log holds ~120: no catch-up
may hold more than a page, and the replica's read models must equal the primary's.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ckpt import CheckpointType, DiskFormat, Store, read_model_updates
from ckpt.domain import Origin, VirtualMachine

PAGE = 20


def _history(store: Store, vms: int, per_vm: int) -> None:
    """Events of no content straight through the application (as bench_replicate does)."""
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]

    def origin() -> Origin:
        clock[0] += timedelta(seconds=1)
        return Origin("test", "host", clock[0], uuid.uuid4())

    for k in range(vms):
        vm = VirtualMachine.register(
            origin(), f"vm{k}", [("D", DiskFormat.VHDX)], None, CheckpointType.STANDARD
        )
        while vm.version < per_vm:
            vm.create_checkpoint(origin())
        store.app.save(vm)


def test_a_first_replicate_folds_the_replicas_read_models_a_page_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(read_model_updates, "PAGE", PAGE)
    Store.init(tmp_path / "p").close()
    with Store.open(tmp_path / "p") as primary:
        _history(primary, vms=3, per_vm=40)
        primary.catch_up()
        events = primary.app.last_position()
        mine = [(e.position, e.operation, e.vm) for e in primary.log()]
        trees = {v: primary.tree(v) for v in ("vm0", "vm1", "vm2")}
        held: list[int] = []
        rows_after = read_model_updates.ReadModels._rows_after

        def spy(self: Any, c: Any, start: int) -> Any:
            rows = rows_after(self, c, start)
            held.append(len(rows))
            return rows

        monkeypatch.setattr(read_model_updates.ReadModels, "_rows_after", spy)
        report = primary.replicate(to_dir=tmp_path / "r")
    assert report.position == events > 5 * PAGE
    assert max(held, default=0) <= PAGE
    with Store.open(tmp_path / "r") as replica:
        assert [(e.position, e.operation, e.vm) for e in replica.log()] == mine
        assert {v: replica.tree(v) for v in trees} == trees
