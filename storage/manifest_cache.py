"""Decoded manifests by id, and the manifests of a disk's chain.

Terms: a *chain* is a disk's layers from the base disk down to a *leaf*
(``domain.layers.chain``); each layer holds zero or more manifest ids, oldest
first (``VirtualMachine.contents``). The *chain's manifests* are those ids in
that order: restoring folds them, capturing diffs against their overlay,
verify names the checkpoints that need one.
"""

from __future__ import annotations

from uuid import UUID

from ckpt.domain import VirtualMachine
from ckpt.domain.layers import chain

from . import manifest
from .chunks.store import ChunkStore
from .manifest import BlockMap


def chain_manifest_ids(vm: VirtualMachine, leaf: UUID) -> list[bytes]:
    """Every manifest id of the chain from the base disk down to ``leaf``, oldest first."""
    return [ref for layer in chain(vm.layers, leaf) for ref in vm.contents.get(layer.id, ())]


class ManifestCache:
    """Decoded v1 manifests by id (tests and tools; captures and restores read a
    chain's state segment by segment, ``disk_state.py``). It also hands a
    capture its chunk store (``chunks``)."""

    def __init__(self, chunks: ChunkStore, limit: int = 64) -> None:
        self.chunks = chunks
        self.limit = limit
        self.cache: dict[bytes, BlockMap] = {}

    def _keep(self, ref: bytes, bm: BlockMap) -> None:
        if len(self.cache) >= self.limit:
            self.cache.pop(next(iter(self.cache)))
        self.cache[ref] = bm

    def load(self, ref: bytes) -> BlockMap:
        bm = self.cache.get(ref)
        if bm is None:
            bm = manifest.load(ref, self.chunks.get)
            self._keep(ref, bm)
        return bm

    def load_many(self, refs: list[bytes]) -> list[BlockMap]:
        """``load`` of each; the manifests not cached are fetched with one
        ``get_many`` first (on S3, a chain of 24 manifests cost 24 round trips,
        90 of a capture's 110 ms)."""
        missing = [r for r in dict.fromkeys(refs) if r not in self.cache]
        if len(missing) < 2:
            return [self.load(r) for r in refs]
        fetched = dict(zip(missing, self.chunks.get_many(missing), strict=True))
        loaded = {
            r: manifest.load(r, lambda cid: fetched.get(cid) or self.chunks.get(cid))
            for r in missing
        }
        for r, bm in loaded.items():
            self._keep(r, bm)
        return [loaded[r] if r in loaded else self.load(r) for r in refs]

    def chain(self, vm: VirtualMachine, leaf: UUID) -> list[BlockMap]:
        """The decoded manifests of the chain down to ``leaf``, oldest first."""
        return self.load_many(chain_manifest_ids(vm, leaf))
