"""The fault suite reports its seed and how many kill points it ran, at the end of the run."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import _harness


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A directory for disk images and restored files: in /dev/shm when it exists.

    The images are rewritten and the restored files deleted after every kill
    point; on a disk mounted with ``discard`` each unlink of a 16 MiB file costs
    ~10 ms, which adds up to seconds. The store itself stays in ``tmp_path``.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="ckpt-faults-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def pytest_report_header() -> str:
    return f"ckpt fault injection: CKPT_FAULT_SEED={_harness.SEED}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _harness.KILL_POINTS:
        return
    terminalreporter.write_sep("-", "ckpt fault injection")
    terminalreporter.write_line(_harness.summary())
    terminalreporter.write_line(
        f"reproduce: CKPT_FAULT_SEED={_harness.SEED} .venv/bin/pytest tests/faults"
    )


@pytest.fixture(params=["sqlite+local", "postgresql+s3"])
def backends(request: pytest.FixtureRequest) -> tuple[str, str, tuple[str, ...]]:
    """(label, kind suffix, ``init`` options): the embedded store, and PostgreSQL + S3
    on the throwaway servers (skipped, saying why, without them)."""
    if request.param == "sqlite+local":
        return request.param, "", ()
    from backends import postgres_url, s3_url

    return request.param, " on PostgreSQL + S3", ("--events", postgres_url(), "--chunks", s3_url())
