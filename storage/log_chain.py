"""The hash chain over the event log: tamper evidence for the audit trail.

Terms: the *link* of the event at position ``n`` is

    link(n) = SHA-256( link(n-1) | u64 n | originator id (16 bytes) | u64 version
                       | u32 len(topic) | topic (UTF-8) | u32 len(state) | state )

(little-endian integers; ``link(0)`` is 32 zero bytes; ``state`` is the
event's stored bytes, compressed as they are in the database). Changing,
removing or reordering any stored event changes its link and every link after
it. An *anchor* is ``POSITION:HEX``, a link printed at some moment and kept
elsewhere (a ticket, a log server); ``verify --log --anchor`` proves the log
up to that position is the one that was anchored.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from uuid import UUID

GENESIS = bytes(32)
_HEAD = struct.Struct("<Q16sQ")
_LEN = struct.Struct("<I")


def link(
    previous: bytes, position: int, originator: UUID | str, version: int, topic: str, state: bytes
) -> bytes:
    h = hashlib.sha256(previous)
    ident = originator if isinstance(originator, UUID) else UUID(originator)
    h.update(_HEAD.pack(position, ident.bytes, version))
    t = topic.encode()
    h.update(_LEN.pack(len(t)))
    h.update(t)
    h.update(_LEN.pack(len(state)))
    h.update(state)
    return h.digest()


def format_anchor(position: int, value: bytes) -> str:
    return f"{position}:{value.hex()}"


def parse_anchor(text: str) -> tuple[int | None, bytes]:
    """``POSITION:HEX`` or ``HEX``; ValueError with the reason otherwise."""
    position_text, _, hex_text = text.strip().rpartition(":")
    value = bytes.fromhex(hex_text)
    if len(value) != 32:
        raise ValueError(f"an anchor's link is 64 hex digits, got {len(hex_text)}")
    return (int(position_text) if position_text else None), value


@dataclass
class ChainReport:
    events: int = 0
    last_position: int = 0
    last_link: bytes = GENESIS
    problems: list[str] = field(default_factory=list)
    anchor_found: bool | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and self.anchor_found is not False


def walk(
    rows: Iterable[tuple[int, UUID | str, int, str, bytes]],
    stored: dict[int, bytes],
    anchor: tuple[int | None, bytes] | None = None,
) -> ChainReport:
    """Recompute the chain over ``rows`` (position order) and compare with ``stored``.

    Reports the first position whose stored link disagrees (an event changed
    or reordered), positions that have a stored link but no event (removed),
    and whether the anchor's link is reached (at its position, if given).
    """
    report = ChainReport()
    previous = GENESIS
    first_bad: int | None = None
    seen: set[int] = set()
    for position, originator, version, topic, state in rows:
        previous = link(previous, position, originator, version, topic, state)
        seen.add(position)
        report.events += 1
        report.last_position, report.last_link = position, previous
        expected = stored.get(position)
        if expected is not None and expected != previous and first_bad is None:
            first_bad = position
        if anchor is not None and previous == anchor[1] and anchor[0] in (None, position):
            report.anchor_found = True
    removed = sorted(p for p in stored if p not in seen)
    if removed:
        report.problems.append(
            f"events removed from the log at position {removed[0]}"
            + (f" (and {len(removed) - 1} more)" if len(removed) > 1 else "")
        )
    if first_bad is not None:
        report.problems.append(
            f"the log was changed, or its events reordered, at position {first_bad}: "
            "its link no longer matches the one recorded"
        )
    if anchor is not None and report.anchor_found is None:
        report.anchor_found = False
        where = f"position {anchor[0]}" if anchor[0] is not None else "any position"
        report.problems.append(
            f"the anchor's link is not reached at {where}: the log before it was rewritten"
        )
    return report
