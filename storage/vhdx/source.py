"""Bounded reads from the stream behind a VHDX reader.

Every read names the structure it is for and is checked against the stream's
real size first, so a hostile offset or length becomes a ``VhdxCorrupt`` that
names the file and the structure, never a short read, a huge allocation or a
bare ``struct.error``.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from ckpt.domain.errors import VhdxCorrupt, VhdxUnsupported

from .layout import describe_offset


class Source:
    """A seekable binary stream, its size, and the name used in error messages."""

    def __init__(self, stream: BinaryIO, name: str) -> None:
        self.stream = stream
        self.name = name
        self.size = stream.seek(0, os.SEEK_END)

    def corrupt(self, what: str, problem: str) -> VhdxCorrupt:
        return VhdxCorrupt(f"{self.name}: {what}: {problem}")

    def unsupported(self, what: str, problem: str) -> VhdxUnsupported:
        return VhdxUnsupported(f"{self.name}: {what}: {problem}")

    def check_span(self, offset: int, length: int, what: str) -> None:
        """Raises ``VhdxCorrupt`` unless [offset, offset + length) lies inside the file."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise self.corrupt(
                what,
                f"{length} bytes at {describe_offset(offset)} lie beyond the end of the file "
                f"({self.size} bytes)",
            )

    def read(self, offset: int, length: int, what: str) -> bytes:
        """Exactly ``length`` bytes at ``offset``, or ``VhdxCorrupt``."""
        self.check_span(offset, length, what)
        self.stream.seek(offset)
        data = self.stream.read(length)
        if len(data) != length:  # the stream shrank under us
            raise self.corrupt(what, f"short read: {len(data)} of {length} bytes")
        return data
