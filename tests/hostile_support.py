"""What the hostile-input tests of the file formats share (VHD, VHDX, VMCX, XML).

Terms: a *deadline* bounds how long a reader may work on one damaged input (a
loop over a corrupt table must end, not hang the suite); a *null sink* is a
writable, seekable stream that keeps only its size, so a writer's own memory
can be measured without the output's bytes in the way.
"""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """``TimeoutError`` in the main thread when the block runs over ``seconds``."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"reader still busy after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class NullSink(io.RawIOBase):
    """A writable, seekable stream that keeps only its size and how much was written."""

    def __init__(self) -> None:
        self.pos = 0
        self.size = 0
        self.written = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def write(self, data: bytes) -> int:  # type: ignore[override]
        n = len(memoryview(data))
        self.pos += n
        self.written += n
        self.size = max(self.size, self.pos)
        return n

    def truncate(self, size: int | None = None) -> int:
        self.size = self.pos if size is None else size
        return self.size
