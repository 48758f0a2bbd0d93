"""Storage over time: logical vs new bytes per capture, cumulative, as SVG lines.

Terms:
    logical  a capture's size as handed over: a disk's virtual size, a state
             file's size. What a full copy of every point would take.
    new      the content blocks of the capture the store did not hold yet,
             before compression (``added_bytes``, storage/content_session.py):
             what deduplication left to store. Compression is store-wide only
             (``ckpt stats``), so the chart does not claim bytes on disk.
The chart plots both sums after each capture, in log order (x: the capture's
ordinal; the tooltip gives its position), on one linear scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ckpt.storage.read_model_tables import CaptureRow

WIDTH = 720
HEIGHT = 200
PAD_LEFT = 80  # room for the byte labels
PAD = 16


@dataclass(frozen=True)
class Point:
    x: float
    y_logical: float
    y_new: float
    position: int
    what: str
    logical: int  # cumulative
    new: int  # cumulative


@dataclass(frozen=True)
class StorageChart:
    points: list[Point]
    logical: int  # the totals at the end
    new: int
    width: int = WIDTH
    height: int = HEIGHT
    left: int = PAD_LEFT
    top: int = PAD

    @property
    def logical_line(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y_logical:.1f}" for p in self.points)

    @property
    def new_line(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y_new:.1f}" for p in self.points)

    @property
    def bottom(self) -> int:
        return self.height - PAD

    @property
    def dedup_ratio(self) -> float | None:
        return round(self.logical / self.new, 2) if self.new else None


def human(n: float) -> str:
    """Bytes in binary units, three significant figures: 1536 -> "1.50 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n} TiB"  # pragma: no cover - the loop returns


def chart(captures: Sequence[CaptureRow]) -> StorageChart:
    """The cumulative lines over ``captures`` (log order)."""
    total_logical = sum(c.size for c in captures)
    scale = (HEIGHT - 2 * PAD) / total_logical if total_logical else 0.0
    span = WIDTH - PAD_LEFT - PAD
    step = span / max(len(captures) - 1, 1)
    logical = new = 0
    points = []
    for n, c in enumerate(captures):
        logical += c.size
        new += c.new_bytes
        points.append(
            Point(
                x=PAD_LEFT + n * step,
                y_logical=HEIGHT - PAD - logical * scale,
                y_new=HEIGHT - PAD - new * scale,
                position=c.position,
                what=f"{c.kind} {c.label}",
                logical=logical,
                new=new,
            )
        )
    return StorageChart(points, logical, new)
