"""Checking that chunks read back: present, decompressing, hashing right.

Terms:
    sample  the fraction of the selected chunks to check, drawn with a
            ``random.Random(seed)`` so a run can be repeated. 1.0 checks all.
    bad     a chunk that failed, with the reason as its error message (it
            names the chunk and the pack).

Chunks are grouped by pack and each pack is read with one ranged ``get`` that
spans its selected frames (at most one pack, 16 MiB by default), not one get
per chunk: on an object store a get costs ~10-50 ms of latency, so a pack of
4,000 chunks costs one round trip instead of 4,000.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypedDict, TypeVar

from ckpt.domain.errors import ChunkCorrupt, ChunkMissing

from .backend import ChunkBackend
from .codec import ChunkCodec
from .ids import ChunkId
from .index import ChunkIndex, Location


class AffectedCapture(TypedDict):
    """A capture that needs a bad chunk: the VM, what was captured, where the log
    records it, and the live checkpoints (and Now) whose bytes need it."""

    vm: str
    what: str
    position: int
    checkpoints: list[str]


class BadChunk(TypedDict):
    """One bad chunk of ``Store.verify``: its id (hex), why, and what it affects."""

    chunk: str
    reason: str
    affects: list[AffectedCapture]


Bad = TypeVar("Bad", dict[ChunkId, str], list[BadChunk])


@dataclass
class VerifyReport(Generic[Bad]):
    """``checked`` chunks were read; ``bad`` names each failed one with the reason.

    Of the chunk store (``ChunkStore.verify``): ``bad`` maps a chunk id to the
    reason. Of a ckpt store (``Store.verify``): ``referenced`` chunks are needed
    by the recorded captures and ``bad`` lists each failed one with the
    captures and checkpoints it affects, as ``ckpt verify --json`` prints it.
    """

    checked: int
    bad: Bad
    referenced: int = 0

    @property
    def ok(self) -> bool:
        return not self.bad


def verify_chunks(
    backend: ChunkBackend,
    index: ChunkIndex,
    codec: ChunkCodec,
    ids: Iterable[bytes] | None = None,
    sample: float = 1.0,
    seed: int | None = None,
    refresh: bool = True,
) -> VerifyReport[dict[ChunkId, str]]:
    """Check ``ids`` (default: every indexed chunk), or a ``sample`` of them."""
    if not 0.0 <= sample <= 1.0:
        raise ValueError(f"sample must be within 0..1, got {sample}")
    if refresh:
        index.refresh()
    selected = list(index.ids()) if ids is None else [ChunkId(bytes(c)) for c in ids]
    if sample < 1.0:
        rng = random.Random(seed)
        selected = [c for c in selected if rng.random() < sample]
    bad: dict[ChunkId, str] = {}
    by_pack: dict[str, list[tuple[ChunkId, Location]]] = defaultdict(list)
    for cid in selected:
        loc = index.location(cid)
        if loc is None:
            bad[cid] = f"chunk {cid.hex()} is not in the index"
        else:
            by_pack[loc.pack].append((cid, loc))
    for pack, chunks in by_pack.items():
        start = min(loc.offset for _, loc in chunks)
        end = max(loc.offset + loc.compressed_length for _, loc in chunks)
        try:
            span = backend.get(pack, start, end - start)
        except ChunkMissing as e:
            for cid, _ in chunks:
                bad[cid] = f"chunk {cid.hex()}: {e}"
            continue
        if _decode_all(codec, span, start, pack, chunks):
            continue
        for cid, loc in chunks:
            frame = span[loc.offset - start : loc.offset - start + loc.compressed_length]
            if len(frame) != loc.compressed_length:
                bad[cid] = (
                    f"chunk {cid.hex()} in {pack}: pack truncated, {len(frame)} of "
                    f"{loc.compressed_length} bytes at offset {loc.offset}"
                )
                continue
            try:
                codec.decode(
                    frame, cid, loc.uncompressed_length, pack, loc.slice_offset, loc.chunk_length
                )
            except ChunkCorrupt as e:
                bad[cid] = str(e)
    return VerifyReport(len(selected), bad)


def _decode_all(
    codec: ChunkCodec, span: bytes, start: int, pack: str, chunks: list[tuple[ChunkId, Location]]
) -> bool:
    """True if every chunk decodes, each group frame decompressed once (16
    chunks of a 64 KiB group would otherwise decompress it 16 times); on any
    fault the caller checks them one by one to name each bad chunk."""
    try:
        codec.decode_span(
            span,
            [(loc.offset - start, loc.compressed_length) for _, loc in chunks],
            [cid for cid, _ in chunks],
            [loc.uncompressed_length for _, loc in chunks],
            pack,
            [(loc.slice_offset, loc.chunk_length) for _, loc in chunks],
        )
    except ChunkCorrupt:
        return False
    return True
