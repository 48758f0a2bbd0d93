"""``ckpt report``: the store's history as one self-contained HTML page.

Modules: ``data`` gathers what the page shows from the read models,
``timeline`` lays out each VM's checkpoint tree over time, ``storage_chart``
the bytes per capture, ``render`` fills the Jinja2 template, and
``verify_status`` keeps and reads when ``verify`` last ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from ..unit_of_work import UnitOfWork


@dataclass(frozen=True)
class ReportSummary:
    """What ``Store.report`` wrote: ``output`` (the file, "-" for a stream the
    caller gave), the ``vms`` shown (by name, in page order), the ``events`` in
    the audit table (= timeline marks) and the page's size in UTF-8 ``bytes``."""

    output: str
    vms: list[str]
    events: int
    bytes: int


def write_report(
    uow: UnitOfWork,
    out: TextIO,
    vms: Sequence[str] | None = None,
    at: str | int | None = None,
    output: str = "-",
) -> ReportSummary:
    """Render the page for ``vms`` (None: every VM with history) as of ``at`` and
    write it to ``out`` piece by piece. Bad input (an unknown VM, a bad ``at``)
    raises before the first write; a later error can leave part of a page in
    ``out`` (``ckpt report`` writes to a temporary file and removes it then)."""
    from .data import gather
    from .render import render

    data = gather(uow, vms, at)
    size = 0
    for piece in render(data):
        out.write(piece)
        size += len(piece.encode())
    return ReportSummary(
        output=output,
        vms=[h.name for h in data.histories],
        events=sum(len(h.events) for h in data.histories),
        bytes=size,
    )
