"""Read-model rows: what a fold of events hands to the read-model tables.

Terms: a *batch* is everything a catch-up derived from a run of events (audit
rows, capture rows, each touched VM's documents, state-file rows, hash-chain
links, removed VMs); ``projections.fold`` builds it, the read-model tables
(``storage.read_model_tables``) write it in one transaction. Plain values, so
both sides depend on the domain and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class VMDocuments:
    """One VM's present documents: summary, tree (display order), chain of Now."""

    vm: dict[str, Any]
    checkpoints: list[dict[str, Any]]
    chain: dict[str, Any]


@dataclass
class Batch:
    audit: list[tuple[Any, ...]] = field(default_factory=list)
    captures: list[tuple[Any, ...]] = field(default_factory=list)
    vms: dict[str, VMDocuments] = field(default_factory=dict)
    # (vm id, checkpoint id, JSON) to add, or (vm id, checkpoint id, None) to remove; in order
    state_files: list[tuple[str, str, str | None]] = field(default_factory=list)
    links: list[tuple[int, bytes]] = field(default_factory=list)
    # ids of VMs removed (``vm remove``): their ``vms`` and ``state_files`` rows go
    removed: list[str] = field(default_factory=list)
