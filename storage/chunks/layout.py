"""Where the chunk store keeps its objects in a backend.

Terms:
    pack id     16 random bytes (``secrets.token_bytes``) naming one pack. 128
                random bits make a clash between two writers, even across
                billions of packs, less likely than a disk error (~2**-64 at
                2**32 packs), so writers never coordinate names.
    pack name   ``packs/<first 2 hex digits>/<32 hex digits>.pack``. The
                256-way fan-out keeps a directory under ~1,000 files up to
                ~250,000 packs (4 TB at 16 MiB each).
    index name  ``index/<32 hex digits>.idx``, the index file of that pack.
    FORMAT      ``FORMAT``: the store's format, JSON ``{"packs": 2}`` (format.py).
"""

from __future__ import annotations

import re
import secrets
from typing import NamedTuple

from ckpt.domain.errors import PackCorrupt

from .backend import ChunkBackend
from .pack import HEADER, TRAILER, PackEntry, parse_header, parse_table, parse_trailer

PACKS = "packs/"
INDEX = "index/"
_PACK_NAME = re.compile(r"packs/([0-9a-f]{2})/([0-9a-f]{32})\.pack")
_INDEX_NAME = re.compile(r"index/([0-9a-f]{32})\.idx")


def new_pack_id() -> bytes:
    return secrets.token_bytes(16)


def pack_name(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"{PACKS}{h[:2]}/{h}.pack"


def index_name(pack_id: bytes) -> str:
    return f"{INDEX}{pack_id.hex()}.idx"


def pack_id_of_pack(name: str) -> bytes | None:
    """The pack id in a pack name, or None for a name that is not a pack."""
    m = _PACK_NAME.fullmatch(name)
    if m is None or not m.group(2).startswith(m.group(1)):
        return None
    return bytes.fromhex(m.group(2))


def pack_id_of_index(name: str) -> bytes | None:
    """The pack id in an index file name, or None for another name."""
    m = _INDEX_NAME.fullmatch(name)
    return None if m is None else bytes.fromhex(m.group(1))


class PackMeta(NamedTuple):
    """What a pack says about itself."""

    size: int
    created: float
    entries: list[PackEntry]
    version: int = 1


def read_pack_meta(backend: ChunkBackend, name: str) -> PackMeta:
    """Read a pack's header, trailer and table with three ranged gets (~a few
    hundred KB for a 16 MiB pack), never its frames. ``PackCorrupt`` if damaged."""
    size = backend.size(name)
    parse_header(backend.get(name, 0, HEADER.size), name)
    if size < HEADER.size + TRAILER.size:
        raise PackCorrupt(f"{name}: {size} bytes is too short for a pack (truncated?)")
    tail = backend.get(name, size - TRAILER.size, TRAILER.size)
    trailer = parse_trailer(tail, size, name)
    table = backend.get(name, trailer.table_offset, trailer.tables_size)
    return PackMeta(size, trailer.created, parse_table(table, tail, name), trailer.version)
