"""References: the chunks that the recorded captures need, through their manifests.

Terms: a *reference* is one capture the event log records (a disk layer's
manifest or a state file's), with the position and VM that recorded it. The
*referenced chunks* are every chunk those manifests name, manifest chunks
included (root, pieces, segments): what ``verify`` checks and what ``gc`` keeps.

They are streamed in batches, one segment's ids at a time, and each distinct
segment is visited once across all manifests (consecutive captures of a disk
share most segments: a ``seen`` set of segment ids, 2,048 per 32 GiB disk).
Which capture needs a chunk is asked only for the few chunks found bad
(``who_needs``, a second pass), never kept per chunk.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

from ckpt.domain import CkptError

from . import manifest, segments
from .chunks.store import ChunkStore
from .manifest import ZERO_ID

GROUP = 16  # segments fetched in one get_many (one round trip on S3, not sixteen)


@dataclass(frozen=True)
class Reference:
    """One capture recorded in the log: which VM, which disk layer or file, at what position."""

    position: int
    vm: str
    what: str  # "disk Boot (layer ...)" or "config file Snapshots/X.vmcx"
    manifest: bytes


def _v2_ids(ref: bytes, data: bytes, chunks: ChunkStore, seen: set[bytes]) -> Iterator[list[bytes]]:
    """A v2 manifest's own chunks, then its segments' ids a segment at a time
    (segments in ``seen`` skipped: their ids were given already)."""
    root = segments.decode_root(data, f"manifest {ref.hex()[:16]}")
    own = [ref]
    todo: list[bytes] = []
    for number, pid in enumerate(root.pieces):
        if pid == ZERO_ID:
            continue
        own.append(pid)
        count = segments.piece_length(root, number)
        for sid in segments.decode_piece(chunks.get(pid), count, f"piece {pid.hex()[:16]}"):
            if sid != ZERO_ID and sid not in seen:
                seen.add(sid)
                todo.append(sid)
    yield own
    for start in range(0, len(todo), GROUP):
        group = todo[start : start + GROUP]
        for sid, raw in zip(group, chunks.get_many(group), strict=True):
            yield [sid, *segments.segment_ids(bytes(raw), f"segment {sid.hex()[:16]}")]


def manifest_ids(
    ref: bytes, chunks: ChunkStore, seen: set[bytes] | None = None
) -> tuple[Iterator[list[bytes]], str | None]:
    """The chunks one manifest names, in batches, and the reason restore would
    refuse it if its columns read but break a rule (a v1 map; gc keeps its
    chunks all the same). Raises what reading it raises (``StoreCorrupt``,
    ``ChunkMissing``): what it names is then unknown."""
    data = chunks.get(ref)
    if segments.is_v2(data):
        return _v2_ids(ref, data, chunks, set() if seen is None else seen), None
    found = manifest.referenced(ref, lambda cid: data if cid == ref else chunks.get(cid))
    return iter([found.own, found.blocks]), found.problem


def iter_referenced(
    refs: Iterable[Reference],
    chunks: ChunkStore,
    broken: list[tuple[Reference, str]],
    lenient: bool = False,
) -> Iterator[list[bytes]]:
    """Every chunk the references need, in batches (an id may come more than once).

    Manifests that cannot be read are appended to ``broken`` with the reason
    (their root id is still given). A manifest that reads but breaks a rule
    still names its chunks; it goes to ``broken`` too unless ``lenient`` (gc:
    its chunks are known, so gc need not stop for it).
    """
    seen: set[bytes] = set()
    for ref in refs:
        try:
            batches, problem = manifest_ids(ref.manifest, chunks, seen)
            if problem is not None and not lenient:
                broken.append((ref, problem))
            yield from batches
        except CkptError as e:
            broken.append((ref, str(e)))
            yield [ref.manifest]


def referenced_chunks(
    refs: Iterable[Reference], chunks: ChunkStore, lenient: bool = False
) -> tuple[set[bytes], list[tuple[Reference, str]]]:
    """``iter_referenced`` collected into one set (an on-disk id set may replace it)."""
    broken: list[tuple[Reference, str]] = []
    needed: set[bytes] = set()
    for batch in iter_referenced(refs, chunks, broken, lenient):
        needed.update(batch)
    return needed, broken


def who_needs(
    refs: Iterable[Reference], chunks: ChunkStore, ids: Collection[bytes]
) -> dict[bytes, list[Reference]]:
    """The references that need each of ``ids`` (a few bad chunks): a second
    pass over the manifests, run only when verify found bad chunks."""
    wanted = set(ids)
    out: dict[bytes, list[Reference]] = {}
    for ref in refs:
        hits: set[bytes] = set()
        try:
            batches, _ = manifest_ids(ref.manifest, chunks)
            for batch in batches:
                hits.update(cid for cid in batch if cid in wanted)
        except CkptError:
            if ref.manifest in wanted:
                hits.add(ref.manifest)
        for cid in hits:
            out.setdefault(cid, []).append(ref)
    return out
