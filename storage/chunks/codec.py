"""Compressing a chunk into a frame and checking it on the way back.

Terms:
    level   the zstd compression level. 1 by default: on this machine zstd-1
            compresses 348 MB/s per core against 242 MB/s for zstd-3
            (bench/README.md), and compression is the slowest step of ingest.
    decode  frame -> bytes, *checked*: the frame must declare exactly the
            uncompressed length the index recorded (so a damaged header cannot
            make us allocate more than that), must decompress to that many
            bytes, and the chunk's bytes (the whole frame, or its slice of a
            group frame) must hash to the chunk id.
    group   several chunks compressed together as one frame (``compress_group``,
            pack v2, decision 0012), at ``GROUP_LEVEL``: zstd-3 over 64 KiB
            groups compressed faster (488 MB/s) than zstd-1 over 4 KiB frames
            (324) and stored 11% less on real packages.
    seal    in an encrypted store every frame is sealed (AES-GCM). A frame of
            one chunk uses the chunk id as associated data, as before; a group
            frame of several uses ``GROUP_AAD``, because a reader that wants
            one chunk of it does not know the others' ids. Integrity does not
            rest on the associated data: every chunk's keyed hash is checked.

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
GROUP_LEVEL = 3
GROUP_AAD = b"ckpt group frame v2"

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
        # zstd-3 at the default level: as fast as zstd-1 on 64 KiB groups (0012).
        self._group_level = GROUP_LEVEL if level == DEFAULT_LEVEL else level
        self._local = threading.local()
        # An encrypted store names chunks by a keyed hash and seals every frame
        # (storage/keyring.py); a plain one uses SHA-256 and bare zstd frames.
        self._keyring = keyring

    @property
    def keyed(self) -> bool:
        """True in an encrypted store: keyed ids, sealed frames."""
        return self._keyring is not None

    def identify(self, data: Chunk) -> bytes:
        """The id of ``data`` in this store."""
        if self._keyring is not None:
            return self._keyring.chunk_id(data)
        return hashlib.sha256(data).digest()

    @property
    def level(self) -> int:
        return self._level

    def _compressor(self, level: int) -> zstandard.ZstdCompressor:
        """This thread's compressor for ``level`` (a compressor is not thread-safe)."""
        name = f"compressor_{level}"
        c = getattr(self._local, name, None)
        if c is None:
            c = zstandard.ZstdCompressor(
                level=level,
                write_content_size=True,
                write_checksum=False,
                write_dict_id=False,
            )
            setattr(self._local, name, c)
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "decompressor", None)
        if d is None:
            d = zstandard.ZstdDecompressor()
            self._local.decompressor = d
        return d

    def compress(self, data: bytes, cid: bytes | None = None) -> bytes:
        """One zstd frame holding ``data`` (sealed, with ``cid``, in an encrypted store)."""
        frame: bytes = self._compressor(self._level).compress(data)
        if self._keyring is None:
            return frame
        return self._keyring.seal_chunk(frame, cid if cid is not None else self.identify(data))

    def compress_group(self, chunks: Sequence[bytes], cids: Sequence[bytes]) -> bytes:
        """One zstd frame holding ``chunks`` back to back (a group of one is
        exactly ``compress``'s frame)."""
        if len(chunks) == 1:
            return self.compress(chunks[0], cids[0])
        frame: bytes = self._compressor(self._group_level).compress(b"".join(chunks))
        if self._keyring is None:
            return frame
        return self._keyring.seal_chunk(frame, GROUP_AAD)

    def decode_span(
        self,
        span: bytes,
        frames: Sequence[tuple[int, int]],
        cids: Sequence[bytes],
        lengths: Sequence[int],
        where: str,
        slices: Sequence[tuple[int, int]] | None = None,
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

        ``slices``: each chunk's (offset, length) in its decompressed frame
        (group frames, pack v2); several chunks may name the same frame, which
        is then decompressed once. Default: each chunk is its whole frame.
        """
        if slices is None:
            slices = [(0, n) for n in lengths]
        # Frames named by several chunks (one group frame) are decompressed once.
        unique: dict[int, int] = {}
        u_frames: list[tuple[int, int]] = []
        u_lengths: list[int] = []
        which: list[int] = []
        for f, n in zip(frames, lengths, strict=True):
            k = unique.get(f[0])
            if k is None:
                k = unique[f[0]] = len(u_frames)
                u_frames.append(f)
                u_lengths.append(n)
            which.append(k)
        view = memoryview(span)
        if self._keyring is None and len(u_frames) >= 2:
            segments = struct.pack(f"={2 * len(u_frames)}Q", *[x for f in u_frames for x in f])
            sizes = struct.pack(f"={len(u_lengths)}Q", *u_lengths)
            try:
                if max(at + n for at, n in u_frames) > len(span):
                    raise ValueError("span too short")
                batch = zstandard.BufferWithSegments(view, segments)
                out = self._decompressor().multi_decompress_to_buffer(
                    batch, decompressed_sizes=sizes, threads=1
                )
            except (zstandard.ZstdError, ValueError):
                out = None
            if out is not None:
                # BufferSegment is a buffer; its stub does not say so (zstandard 0.25).
                buffers = [memoryview(out[i]) for i in range(len(u_frames))]  # type: ignore[arg-type]
                chunks = [buffers[k][at : at + n] for k, (at, n) in zip(which, slices, strict=True)]
                # The loop in C (map) rather than a generator: 0.35 us less per chunk.
                digests = map(_DIGEST, map(hashlib.sha256, chunks))
                if all(map(operator.eq, digests, cids)):
                    return chunks
        elif len(u_frames) < len(frames):
            # A few frames, shared: decompress each once, then slice and check.
            opened: list[bytes | None] = [None] * len(u_frames)
            result: list[Chunk] = []
            for k, (at, n), cid, length, (so, cl) in zip(
                which, frames, cids, lengths, slices, strict=True
            ):
                data = opened[k]
                if data is None:
                    data = opened[k] = self._frame(
                        bytes(view[at : at + n]), cid, length, where, so, cl
                    )
                result.append(self._slice(data, cid, where, so, cl))
            return result
        # One frame per chunk, or something is wrong: one by one (an exact error).
        return [
            self.decode(bytes(view[at : at + n]), cid, length, where, so, cl)
            for (at, n), cid, length, (so, cl) in zip(frames, cids, lengths, slices, strict=True)
        ]

    def decode(
        self,
        frame: bytes,
        cid: bytes,
        length: int,
        where: str,
        slice_offset: int = 0,
        chunk_length: int = -1,
    ) -> bytes:
        """The chunk's bytes, or ``ChunkCorrupt`` naming the chunk and ``where``
        (the pack) if the frame is short, undecodable or hashes wrong.
        ``length`` is the frame's uncompressed length; the chunk is
        ``[slice_offset, slice_offset + chunk_length)`` of it (default: all)."""
        data = self._frame(frame, cid, length, where, slice_offset, chunk_length)
        return bytes(self._slice(data, cid, where, slice_offset, chunk_length))

    def _frame(
        self, frame: bytes, cid: bytes, length: int, where: str, slice_offset: int, chunk: int
    ) -> bytes:
        """A frame opened (encrypted store) and decompressed into exactly ``length`` bytes."""

        def corrupt(reason: str) -> ChunkCorrupt:
            return ChunkCorrupt(f"chunk {cid.hex()} in {where}: {reason}")

        if self._keyring is not None:
            whole = chunk < 0 or (slice_offset == 0 and chunk == length)
            try:
                frame = self._keyring.open_chunk(frame, cid if whole else GROUP_AAD)
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
        return data

    def _slice(self, data: bytes, cid: bytes, where: str, slice_offset: int, chunk: int) -> Chunk:
        """The chunk's slice of a decompressed frame, checked against its id."""
        if chunk < 0:
            piece: Chunk = data
        else:
            if slice_offset + chunk > len(data):
                raise ChunkCorrupt(
                    f"chunk {cid.hex()} in {where}: its slice [{slice_offset}, "
                    f"{slice_offset + chunk}) lies beyond its {len(data)}-byte frame"
                )
            piece = (
                data
                if (slice_offset, chunk) == (0, len(data))
                else (memoryview(data)[slice_offset : slice_offset + chunk])
            )
        if self.identify(piece) != cid:
            raise ChunkCorrupt(
                f"chunk {cid.hex()} in {where}: content does not hash to its id (SHA-256 mismatch)"
            )
        return piece
