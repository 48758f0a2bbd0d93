"""The power-loss suite reports its seed and how many crash states it checked."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import _scenario


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The directory the power-loss model records (``scratch`` stays outside it)."""
    path = tmp_path / "root"
    path.mkdir()
    return path


_OS_CALLS = {n: getattr(os, n) for n in ("fsync", "fdatasync", "unlink", "remove", "rmdir",
                                          "replace", "rename")}  # fmt: skip


@pytest.fixture(autouse=True)
def _unpatched_os() -> Iterator[None]:
    """A test that fails while recording must not leave ``os`` patched for the next."""
    yield
    for name, fn in _OS_CALLS.items():
        setattr(os, name, fn)


def pytest_report_header() -> str:
    return f"ckpt power loss: CKPT_POWER_SEED={_scenario.SEED}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _scenario.CHECKED:
        return
    real = {k: n for k, n in _scenario.CHECKED.items() if not k.startswith("planted")}
    kinds = "; ".join(
        f"{k} {n} ({_scenario.TORN[k]} torn, {_scenario.REORDERED[k]} reordered)"
        for k, n in sorted(real.items())
    )
    planted = "; ".join(
        f"{k[len('planted bug: ') :]}: caught after {n} crash states"
        for k, n in sorted(_scenario.CHECKED.items())
        if k.startswith("planted")
    )
    terminalreporter.write_sep("-", "ckpt power loss")
    terminalreporter.write_line(
        f"CKPT_POWER_SEED={_scenario.SEED}: {sum(real.values())} crash states checked; {kinds}"
    )
    if planted:
        terminalreporter.write_line(f"planted missing syncs (must be caught): {planted}")
    terminalreporter.write_line(
        f"reproduce: CKPT_POWER_SEED={_scenario.SEED} .venv/bin/pytest tests/powerloss"
    )
