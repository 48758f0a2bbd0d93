"""Compressing a chunk into a frame and checking it on the way back.

Terms:
    level   the zstd compression level. 1 by default: on this machine zstd-1
            compresses 348 MB/s per core against 242 MB/s for zstd-3
            (bench/README.md), and compression is the slowest step of ingest.
    decode  frame -> bytes, *checked*: the frame must declare exactly the
            uncompressed length the index recorded (so a damaged header cannot
            make us allocate more than that), must decompress to that many
            bytes, and the bytes must hash to the chunk id.

zstd contexts are not thread-safe, so each thread gets its own compressor and
decompressor (a ``threading.local``); creating a pair costs ~16 us (measured),
as much as compressing a 4 KiB chunk, so it is done once per thread. Frames
carry their content size but no zstd checksum: the SHA-256 chunk id already
covers every byte, and the 4-byte XXH64 checksum would only add bytes and time.
"""

from __future__ import annotations

import hashlib
import operator
import struct
import threading
from collections.abc import Sequence

import zstandard

from ckpt.domain.errors import ChunkCorrupt
from ckpt.storage.keyring import Keyring

DEFAULT_LEVEL = 1

_DIGEST = operator.methodcaller("digest")

Chunk = bytes | memoryview
"""A chunk's checked bytes: ``bytes``, or a view into a decompressed batch."""


class ChunkCodec:
    """zstd at a fixed level, one context pair per thread."""

    def __init__(self, level: int = DEFAULT_LEVEL, keyring: Keyring | None = None) -> None:
        # zstd accepts -131072 (fastest) .. 22 (smallest); 0 means its default, 3.
        if not -(1 << 17) <= level <= zstandard.MAX_COMPRESSION_LEVEL:
            raise ValueError(f"zstd level {level} is outside -131072..22")
        self._level = level
        self._local = threading.local()
        # An encrypted store names chunks by a keyed hash and seals every frame
        # (storage/keyring.py); a plain one uses SHA-256 and bare zstd frames.
        self._keyring = keyring

    @property
    def keyed(self) -> bool:
        """True in an encrypted store: keyed ids, sealed frames."""
        return self._keyring is not None

    def identify(self, data: bytes) -> bytes:
        """The id of ``data`` in this store."""
        if self._keyring is not None:
            return self._keyring.chunk_id(data)
        return hashlib.sha256(data).digest()

    @property
    def level(self) -> int:
        return self._level

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "compressor", None)
        if c is None:
            c = zstandard.ZstdCompressor(
                level=self._level,
                write_content_size=True,
                write_checksum=False,
                write_dict_id=False,
            )
            self._local.compressor = c
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "decompressor", None)
        if d is None:
            d = zstandard.ZstdDecompressor()
            self._local.decompressor = d
        return d

    def compress(self, data: bytes, cid: bytes | None = None) -> bytes:
        """One zstd frame holding ``data`` (sealed, with ``cid``, in an encrypted store)."""
        frame: bytes = self._compressor().compress(data)
        if self._keyring is None:
            return frame
        return self._keyring.seal_chunk(frame, cid if cid is not None else self.identify(data))

    def decode_span(
        self,
        span: bytes,
        frames: Sequence[tuple[int, int]],
        cids: Sequence[bytes],
        lengths: Sequence[int],
        where: str,
    ) -> Sequence[Chunk]:
        """The checked bytes of several frames that lie in ``span`` at
        (offset, compressed length) each: as ``decode`` of each, in order.

        A plain store decompresses them all in one call of zstd's multi-frame
        API (``multi_decompress_to_buffer``: C code, GIL released, each frame
        into exactly its recorded length, so no damaged header can make it
        allocate more) and then hashes each result in a loop that does nothing
        else. Measured on 4 KiB chunks (synthetic, 1.5 KiB random each): 4.2 us
        per chunk one by one, 3.1 us this way, of which 2.2-2.8 us is SHA-256
        itself; on a real 1 GiB disk the decode path went from 2.2 to 1.7 s
        under cProfile, and the GIL-free part lets two threads share it
        (bench/README.md, "Restore speed"). If
        anything is wrong with the batch, the frames are decoded again one by
        one, so the error names the chunk and the reason exactly as ``decode``
        does. An encrypted store opens each frame first: one by one.
        """
        if self._keyring is not None or len(frames) < 2:
            return [
                self.decode(span[at : at + n], cid, length, where)
                for (at, n), cid, length in zip(frames, cids, lengths, strict=True)
            ]
        view = memoryview(span)
        segments = struct.pack(f"={2 * len(frames)}Q", *[x for f in frames for x in f])
        sizes = struct.pack(f"={len(lengths)}Q", *lengths)
        try:
            if frames[-1][0] + frames[-1][1] > len(span):
                raise ValueError("span too short")
            batch = zstandard.BufferWithSegments(view, segments)
            out = self._decompressor().multi_decompress_to_buffer(
                batch, decompressed_sizes=sizes, threads=1
            )
        except (zstandard.ZstdError, ValueError):
            out = None
        if out is not None:
            # BufferSegment is a buffer; its stub does not say so (zstandard 0.25).
            chunks = [memoryview(out[i]) for i in range(len(frames))]  # type: ignore[arg-type]
            # The loop in C (map) rather than a generator: 0.35 us less per chunk.
            digests = map(_DIGEST, map(hashlib.sha256, chunks))
            if all(map(operator.eq, digests, cids)):
                return chunks
        # Something is wrong: decode one by one for an exact error.
        return [
            self.decode(bytes(view[at : at + n]), cid, length, where)
            for (at, n), cid, length in zip(frames, cids, lengths, strict=True)
        ]

    def decode(self, frame: bytes, cid: bytes, length: int, where: str) -> bytes:
        """The chunk's bytes, or ``ChunkCorrupt`` naming the chunk and ``where``
        (the pack) if the frame is short, undecodable or hashes wrong."""

        def corrupt(reason: str) -> ChunkCorrupt:
            return ChunkCorrupt(f"chunk {cid.hex()} in {where}: {reason}")

        if self._keyring is not None:
            try:
                frame = self._keyring.open_chunk(frame, cid)
            except ValueError as e:
                raise corrupt(str(e)) from e
        try:
            declared = zstandard.frame_content_size(frame)
        except zstandard.ZstdError as e:
            raise corrupt(f"not a zstd frame ({e})") from e
        if declared != length:
            raise corrupt(f"frame declares {declared} bytes, the index records {length}")
        try:
            data: bytes = self._decompressor().decompress(frame, max_output_size=length)
        except zstandard.ZstdError as e:
            raise corrupt(f"does not decompress ({e})") from e
        if len(data) != length:
            raise corrupt(f"decompressed to {len(data)} bytes, expected {length}")
        if self.identify(data) != cid:
            raise corrupt("content does not hash to its id (SHA-256 mismatch)")
        return data
