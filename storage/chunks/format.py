"""The chunk storage's format marker: which pack versions a store gets.

Terms:
    FORMAT   the backend object ``FORMAT``, JSON ``{"packs": 2}``, never
             encrypted (a reader needs it before any key is checked). ``init``
             writes it for a new store; ``ckpt upgrade`` writes it for an old
             one before its first version-2 pack.
    format   1: no ``FORMAT`` object (every store made before decision 0012):
             writers keep writing version-1 packs, so hosts still on the older
             release read everything. 2: writers write version-2 packs (group
             frames). Readers of this release read both pack versions in any
             store. A format above ``CURRENT`` is refused, naming both versions:
             a newer release may write packs this one cannot read.
"""

from __future__ import annotations

import json

from ckpt.domain.errors import ChunkMissing, StoreCorrupt

from .backend import ChunkBackend

NAME = "FORMAT"
LEGACY = 1
CURRENT = 2


def read_format(backend: ChunkBackend) -> int:
    """The store's format (1 when there is no marker); ``StoreCorrupt`` if the
    marker is damaged or names a format newer than this release knows."""
    try:
        raw = backend.get(NAME)
    except ChunkMissing:
        return LEGACY
    try:
        value = json.loads(raw)["packs"]
    except (ValueError, KeyError, TypeError) as e:
        raise StoreCorrupt(f"{NAME} of {backend!r} is damaged ({raw[:60]!r}): {e}") from e
    if not isinstance(value, int) or isinstance(value, bool) or value < LEGACY:
        raise StoreCorrupt(f"{NAME} of {backend!r} names pack format {value!r}")
    if value > CURRENT:
        raise StoreCorrupt(
            f"the chunk storage {backend!r} has pack format {value}; this ckpt reads and "
            f"writes formats {LEGACY} to {CURRENT}: use a newer ckpt"
        )
    return value


def write_format(backend: ChunkBackend, value: int = CURRENT) -> None:
    """Record the store's format (an atomic, durable ``put``)."""
    backend.put(NAME, json.dumps({"packs": value}).encode() + b"\n")
