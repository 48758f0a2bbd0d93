"""SIGTERM as an exception, for the commands that run until stopped (``--follow``).

Ctrl-C raises ``KeyboardInterrupt``; ``kill`` (SIGTERM, what a service manager
sends) would end the process without unwinding, mid-write. Inside
``sigterm_stops`` it raises ``Stopped`` in the main thread instead, so both end a
follower the same way: cleanly, with exit 0.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Stopped(Exception):
    """SIGTERM arrived while a follower ran."""


@contextmanager
def sigterm_stops() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread (an embedder's worker)
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        raise Stopped

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
