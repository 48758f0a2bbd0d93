"""The progress factory: how long operations report progress to a caller.

Terms: a *progress factory* is a callable ``(label, total) -> update``; a long
operation (capture, restore, verify, copy) calls it once per phase with a label
and the total units (bytes, chunks or packs), then calls ``update(n)`` as ``n``
more units are done. ``ckpt.progress.progress_bars`` makes one that draws
terminal bars; None means no reporting.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressUpdate = Callable[[int], None]
ProgressFactory = Callable[[str, int], ProgressUpdate]


def bar(progress: ProgressFactory | None, label: str, total: int) -> ProgressUpdate | None:
    """The update of a new phase, or None when nobody listens."""
    return None if progress is None else progress(label, total)
