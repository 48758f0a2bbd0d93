"""zstd compressor for stored events (eventsourcing's ``Compressor`` port).

zstd contexts are not thread-safe, so each thread gets its own pair. Level 3
is zstd's default; events are ~300 bytes, where levels above 3 gain under 2%.
Decompression is bounded: a frame must declare its size and may not exceed
``MAX_EVENT_BYTES``, so a corrupt or hostile row cannot make us allocate more.
"""

from __future__ import annotations

import threading

import zstandard
from eventsourcing.persistence import Compressor

from ckpt.domain.errors import StoreCorrupt

from .transcoder import MAX_EVENT_BYTES

LEVEL = 3


class ZstdCompressor(Compressor):
    def __init__(self, level: int = LEVEL) -> None:
        self._level = level
        self._local = threading.local()

    def _contexts(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = (zstandard.ZstdCompressor(level=self._level), zstandard.ZstdDecompressor())
            self._local.ctx = ctx
        return ctx

    def compress(self, data: bytes) -> bytes:
        return self._contexts()[0].compress(data)

    def decompress(self, data: bytes) -> bytes:
        try:
            size = zstandard.frame_content_size(data)
        except zstandard.ZstdError as e:
            raise StoreCorrupt(f"stored event is not a zstd frame: {e}") from e
        if size < 0 or size > MAX_EVENT_BYTES:
            raise StoreCorrupt(
                f"stored event declares {size} bytes uncompressed (limit {MAX_EVENT_BYTES})"
            )
        try:
            return self._contexts()[1].decompress(data, max_output_size=size)
        except zstandard.ZstdError as e:
            raise StoreCorrupt(f"stored event does not decompress: {e}") from e
