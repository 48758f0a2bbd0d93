"""An event this release does not know (a newer ckpt wrote it) is a clear error,
exit 23, on every command that reads the VM: never a traceback (a release before
retention met ``ckpt.domain.purges:ContentPurged`` that way)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cli_support import CLI

from ckpt import Store


def test_an_unknown_event_topic_is_store_corrupt_naming_a_newer_ckpt(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with Store.init(store) as s:
        s.register_vm("web")
        s.create_checkpoint("web", "a")
    with sqlite3.connect(store / "events.sqlite") as db:
        changed = db.execute(
            "UPDATE stored_events SET topic = 'ckpt.domain.future:Thing' "
            "WHERE topic LIKE '%CheckpointCreated'"
        ).rowcount
    assert changed == 1
    cli = CLI(store)
    for command in (["tree", "web"], ["log", "web"], ["verify"], ["gc", "--dry-run"]):
        err = cli.fails(23, *command)
        assert "holds an event this ckpt does not know" in err, command
        assert "ckpt.domain.future:Thing" in err and "newer ckpt" in err
