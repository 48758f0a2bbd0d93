"""Progress bars on stderr for long work (capture, restore, verify), only on a terminal.

tqdm draws them (rate, ETA, resizing): a well-kept library doing what a
hand-written bar would do worse. Scripts and CI, where stderr is not a
terminal, get no bars and no noise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

from .render import printable

Update = Callable[[int], None]


@contextmanager
def progress_bars(enabled: bool | None = None) -> Iterator[Callable[[str, int], Update] | None]:
    """A factory ``(label, total) -> update`` for the operation, or None when off."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield None
        return
    bars: list[tqdm[Any]] = []

    def factory(label: str, total: int) -> Update:
        bar: tqdm[Any] = tqdm(
            total=total, desc=printable(label), unit="B", unit_scale=True, unit_divisor=1024,
            file=sys.stderr, leave=False,
        )  # fmt: skip
        bars.append(bar)

        def update(n: int) -> None:
            bar.update(n)

        return update

    try:
        yield factory
    finally:
        for bar in bars:
            bar.close()
