"""The CLI run in-process, as the end-to-end and defect tests drive it.

``run`` is the same entry point as the ``ckpt`` console script, with its
output captured; no subprocess, so a test costs milliseconds.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from ckpt.cli import run


class CLI:
    """``ckpt --store STORE --actor ACTOR ...``; ``ok`` and ``json`` assert exit 0."""

    def __init__(self, store: Path, actor: str = "tester") -> None:
        self.store = store
        self.actor = actor

    def __call__(self, *args: str | Path) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = run(["--store", str(self.store), "--actor", self.actor, *map(str, args)], out, err)
        return code, out.getvalue(), err.getvalue()

    def ok(self, *args: str | Path) -> str:
        code, out, err = self(*args)
        assert code == 0, err
        return out

    def json(self, *args: str | Path) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def fails(self, code: int, *args: str | Path, report: bool = False) -> str:
        """The one-line error of a command that must exit with ``code``; with
        ``report`` the command may print a report (``verify``) before it."""
        got, out, err = self(*args)
        assert got == code, (got, out, err)
        assert err.startswith("ckpt: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
        assert report or out == "", out
        return err
