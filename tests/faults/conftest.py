"""The fault suite reports its seed and how many kill points it ran, at the end of the run."""

from __future__ import annotations

import pytest

from . import _harness


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
