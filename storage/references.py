"""References: the chunks that the recorded captures need, through their manifests.

Terms: a *reference* is one capture the event log records (a disk layer's
manifest or a state file's), with the position and VM that recorded it. The
*referenced chunks* are every chunk those manifests name, manifest chunks
included: what ``verify`` checks and what ``gc`` keeps.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ckpt.domain import CkptError

from . import manifest
from .chunks.store import ChunkStore


@dataclass(frozen=True)
class Reference:
    """One capture recorded in the log: which VM, which disk layer or file, at what position."""

    position: int
    vm: str
    what: str  # "disk Boot (layer ...)" or "config file Snapshots/X.vmcx"
    manifest: bytes


def referenced_chunks(
    refs: Iterable[Reference], chunks: ChunkStore, lenient: bool = False
) -> tuple[dict[bytes, list[Reference]], list[tuple[Reference, str]]]:
    """Every chunk the references need (manifest chunks included) -> who needs it.

    Manifests that cannot be read are returned apart, with the reason. A
    manifest that reads but breaks a rule (restore refuses it) still names its
    chunks, which are kept as needed (conservative); it is returned apart too,
    unless ``lenient`` (gc: its chunks are known, so gc need not stop for it).
    """
    needed: dict[bytes, list[Reference]] = {}
    broken: list[tuple[Reference, str]] = []
    for ref in refs:
        try:
            found = manifest.referenced(ref.manifest, chunks.get)
        except CkptError as e:
            broken.append((ref, str(e)))
            needed.setdefault(ref.manifest, []).append(ref)
            continue
        if found.problem is not None and not lenient:
            broken.append((ref, found.problem))
        for cid in found.own:
            needed.setdefault(cid, []).append(ref)
        for cid in found.blocks:
            lst = needed.get(cid)
            if lst is None:
                needed[cid] = [ref]
            elif lst[-1] is not ref:
                lst.append(ref)
    return needed, broken
