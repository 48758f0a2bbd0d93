"""What gc keeps and verify checks: the references, less what only purged points needed.

Terms (``point_history`` defines point, chain, needs):
- a *gone* point is one whose purge is reclaimed (or about to be: the gc
  recording it, a dry run supposing it); every other point is *retained*, and
  so is *Now* of every VM.
- a gone point *drops* its own state (the last manifest of each disk's chain)
  and its state files; a retained point *needs* its chain's state at every
  layer boundary (``effective_refs`` of each prefix: the last v2 manifest and
  any v1 diffs after it), since export writes each ancestor as its own file.
- *dropped* manifests are those a VM's gone points drop that none of its
  retained points needs; its references to them leave the list gc keeps and
  verify checks. Another VM recording the same manifest keeps it (its own
  reference stays), and so does every chunk another kept manifest names.

Only the last manifest of a gone point's chain is dropped, never more: what it
cannot read (its bytes reclaimed) it does not guess about, and an older
manifest of the chain that no point's state is stays kept, as before retention.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING
from uuid import UUID

from ckpt.storage.chunks.store import ChunkStore
from ckpt.storage.disk_state import effective_refs
from ckpt.storage.references import Reference, iter_referenced

from .point_history import Chain, PointContent, VMHistory
from .unit_of_work import UnitOfWork

if TYPE_CHECKING:
    from ckpt.storage.chunks.id_set import IdSet

Gone = Callable[[VMHistory, PointContent], bool]
# Referenced ids held in memory before the id set spills a sorted run to a temporary
# file: 256 K x ~75 B (a 32-byte bytes object and its list slot) = ~19 MiB. A set of
# every referenced id held ~100 B per chunk: 800 MB for a 32 GiB disk of unique blocks.
ID_BUDGET = 1 << 18


def reclaimed(h: VMHistory, p: PointContent) -> bool:
    """Gone as the log says: purged under a purge gc has reclaimed (a removed
    VM takes no more events, so its purges count as reclaimed)."""
    mark = h.vm.purged.get(p.id)
    return mark is not None and (h.vm.removed or mark.version in h.vm.reclaimed)


def _needs(
    chains: Iterable[Chain], get: Callable[[bytes], bytes], memo: dict[bytes, bool | None]
) -> set[bytes]:
    out: set[bytes] = set()
    for chain in chains:
        flat: list[bytes] = []
        for layer in chain:
            if layer:
                flat.extend(layer)
                out.update(effective_refs(flat, get, memo))
    return out


def dropped(
    uow: UnitOfWork, histories: dict[UUID, VMHistory], gone: Gone
) -> dict[UUID, set[bytes]]:
    """Per VM, the manifests no retained point needs and some gone point dropped."""
    memo: dict[bytes, bool | None] = {}
    get = uow.chunks.get
    out: dict[UUID, set[bytes]] = {}
    for vid, h in histories.items():
        goners = [p for p in h.points if gone(h, p)]
        if not goners:
            continue
        drop: set[bytes] = set()
        for p in goners:
            drop.update(flat[-1] for flat in map(_flat, p.chains.values()) if flat)
            drop.update(p.files)
        keep = _needs(h.now.values(), get, memo)
        for p in h.points:
            if not gone(h, p):
                keep |= _needs(p.chains.values(), get, memo)
                keep.update(p.files)
        if drop - keep:
            out[vid] = drop - keep
    return out


def _flat(chain: Chain) -> list[bytes]:
    return [ref for layer in chain for ref in layer]


def kept_references(
    uow: UnitOfWork, histories: dict[UUID, VMHistory], gone: Gone = reclaimed
) -> list[Reference]:
    """Every recorded capture's reference, less those only gone points needed."""
    drop = dropped(uow, histories, gone)
    return [
        r for vid, h in histories.items() for r in h.refs if r.manifest not in drop.get(vid, ())
    ]


@contextlib.contextmanager
def referenced_ids(
    refs: Iterable[Reference],
    chunks: ChunkStore,
    broken: list[tuple[Reference, str]],
    lenient: bool = False,
) -> Iterator[IdSet]:
    """Every chunk ``refs`` name, in an ``IdSet`` (spilled past ``ID_BUDGET``):
    what verify checks, gc keeps and a dry run estimates against. Manifests that
    cannot be read go to ``broken`` (``iter_referenced``)."""
    from ckpt.storage.chunks.id_set import IdSet  # numpy: only when content is walked

    with IdSet(budget=ID_BUDGET) as needed:
        for batch in iter_referenced(refs, chunks, broken, lenient):
            needed.add_many(batch)
        yield needed
