"""Rules of a disk's layer tree: which layers a delete or an apply removes or merges.

Terms: a layer is *pinned* when a live checkpoint points to it or the VM writes
to it (the running layer). Hyper-V's delete rule, by the number of dependants of
the deleted checkpoint's layer (child layers, the running layer among them):

- 0 dependants: the layer file is deleted;
- 1 dependant: the dependant is merged into it (child -> parent, as Merge-VHD
  does): the child file is deleted and everything that pointed to the child
  points to the parent file from then on;
- 2+ dependants: the layer is kept as the shared parent of several branches.

``collapse`` applies that rule until nothing changes, to every unpinned layer,
so a kept layer whose branches later shrink to one is merged then (Hyper-V does
that lazily; we do it at the operation that makes it possible). The base disk
is never deleted. The result is a list of facts (``LayerMerge``/``LayerRemoval``)
that an event records; ``apply_changes`` replays them without re-deciding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from uuid import UUID

from .values import Layer, LayerMerge, LayerRemoval

LayerChange = LayerMerge | LayerRemoval


def _depth(layers: Mapping[UUID, Layer], layer: Layer) -> int:
    depth = 0
    while layer.parent is not None:
        layer = layers[layer.parent]
        depth += 1
    return depth


def _children(layers: Mapping[UUID, Layer]) -> dict[UUID, list[UUID]]:
    children: dict[UUID, list[UUID]] = {lid: [] for lid in layers}
    for layer in layers.values():
        if layer.parent is not None:
            children[layer.parent].append(layer.id)
    return children


def collapse(layers: Mapping[UUID, Layer], pinned: Iterable[UUID]) -> tuple[LayerChange, ...]:
    """Remove or merge every unpinned layer that has fewer than two dependants.

    Deepest layers go first, so a chain of unpinned layers above a pinned one
    merges bottom-up, each step child -> parent, as Hyper-V merges a subtree.
    """
    work = dict(layers)
    pins = set(pinned)
    changes: list[LayerChange] = []
    while True:
        children = _children(work)
        candidates = sorted(
            (
                lid
                for lid, layer in work.items()
                if lid not in pins
                and (
                    len(children[lid]) == 1
                    or (len(children[lid]) == 0 and layer.parent is not None)
                )
            ),
            key=lambda lid: (-_depth(work, work[lid]), str(lid)),
        )
        if not candidates:
            return tuple(changes)
        target = work[candidates[0]]
        kids = children[target.id]
        if not kids:
            changes.append(LayerRemoval(target.disk, target.id, target.file))
            del work[target.id]
            continue
        source = work[kids[0]]
        changes.append(LayerMerge(target.disk, source.id, source.file, target.id, target.file))
        for lid in children[source.id]:
            work[lid] = Layer(lid, work[lid].disk, work[lid].file, target.id)
        del work[source.id]
        if source.id in pins:
            pins.add(target.id)


def apply_changes(
    layers: Mapping[UUID, Layer], changes: Iterable[LayerChange]
) -> tuple[dict[UUID, Layer], dict[UUID, UUID]]:
    """Replay recorded changes; return the new layers and where merged ids went."""
    work = dict(layers)
    redirect: dict[UUID, UUID] = {}
    for change in changes:
        if isinstance(change, LayerRemoval):
            del work[change.layer]
            continue
        for lid, layer in list(work.items()):
            if layer.parent == change.source:
                work[lid] = Layer(lid, layer.disk, layer.file, change.target)
        del work[change.source]
        redirect[change.source] = change.target
    return work, redirect


def resolve(redirect: Mapping[UUID, UUID], layer: UUID) -> UUID:
    """Follow merges: a layer merged into one that was merged again, and so on."""
    while layer in redirect:
        layer = redirect[layer]
    return layer


def chain(layers: Mapping[UUID, Layer], leaf: UUID) -> list[Layer]:
    """The files from the base disk down to ``leaf``."""
    out = [layers[leaf]]
    while out[-1].parent is not None:
        out.append(layers[out[-1].parent])
    out.reverse()
    return out
