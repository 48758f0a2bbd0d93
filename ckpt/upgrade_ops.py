"""The upgrade use case: convert a store's chunk storage to the current format.

Terms: *upgrade* converts every version-1 pack (one zstd frame per 4 KiB
chunk) into version-2 packs (64 KiB group frames, decision 0012) and records
format 2 in ``chunks/FORMAT``; storage/chunks/upgrade.py does the work. It
runs under the gc lease, so it never runs beside a gc, and captures wait for
it as they wait for a gc (it stops early, resumably, when one starts waiting).
It is resumable after a kill at any point: run it again.
"""

from __future__ import annotations

from typing import TypedDict

from ckpt.storage.chunks.upgrade import UpgradeReport

from .progress_factory import ProgressFactory, ProgressUpdate, bar
from .unit_of_work import UnitOfWork


class UpgradeDetails(TypedDict):
    """``ckpt upgrade --json``: ``UpgradeReport`` as a dict."""

    format_before: int
    format: int
    converted_packs: int
    resumed: int
    remaining: int
    new_packs: int
    bytes_before: int
    bytes_after: int
    kept_for_leases: int
    problems: list[str]


def upgrade(uow: UnitOfWork, progress: ProgressFactory | None = None) -> UpgradeReport:
    """Convert the chunk storage's v1 packs to v2; see the module docstring."""
    chunks = uow.chunks
    with chunks.gc_lease() as leases:

        def start(packs: int, size: int) -> ProgressUpdate | None:
            return bar(progress, f"upgrade {packs} packs", size)

        return chunks.upgrade(leases, start)


def details(report: UpgradeReport) -> UpgradeDetails:
    return UpgradeDetails(
        format_before=report.format_before,
        format=report.format,
        converted_packs=report.converted_packs,
        resumed=report.resumed,
        remaining=report.remaining,
        new_packs=report.new_packs,
        bytes_before=report.bytes_before,
        bytes_after=report.bytes_after,
        kept_for_leases=report.kept_for_leases,
        problems=list(report.problems),
    )
