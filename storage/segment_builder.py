"""Building a v2 manifest while a capture reads: one segment at a time.

Terms:
- *full* build (a full scan, a pipe, a file): the blocks read are the whole
  state; a block not read (a hole) reads as zeros.
- *patch* build (changed extents, CBT): the parent's state with the blocks
  read laid over it; a segment no extent touches keeps the parent's segment id
  unread, so a capture costs O(changed segments), not O(disk).
- The builder is fed ``(pos, buf, ids)`` buffers in ascending order (the
  capture's regions are sorted and merged). For each block it first compares
  the id with the parent's block at the same offset (dedup against the chain,
  no index lookup); only a block that differs goes to the session's ``sink``
  (which checks the global index). Memory: the top list (32 bytes per
  segment) plus the current segment's and the parent's entries.
"""

from __future__ import annotations

from collections.abc import Callable

from .capture import Sink
from .disk_state import State
from .manifest import ZERO_ID
from .segments import SPAN, encode_segment, segment_count, store_root


class SegmentBuilder:
    """Turns a capture's buffers into stored segments and, at ``finish``, a root."""

    def __init__(
        self,
        parent: State | None,
        kind: int,
        block_size: int,
        size: int,
        sink: Sink,
        identify: Callable[[bytes], bytes],
        patch: bool = False,
        store: Sink | None = None,
    ) -> None:
        self.parent = parent
        self.kind = kind
        self.block_size = block_size
        self.size = size
        self.sink = sink
        self.store_chunk = sink if store is None else store  # segments: not content
        self.identify = identify
        self.patch = patch
        self.set_size(size)
        self.top = bytearray()  # the segment ids written so far, 32 bytes each
        self.changed_blocks = 0
        self.read_bytes = 0
        self.added_bytes = 0
        self._k = -1  # the segment being built
        self._new: dict[int, bytes] = {}
        self._old: dict[int, bytes] = {}
        self._zero = bytes(block_size)

    def set_size(self, size: int) -> None:
        """The size, once a one-shot source has delivered it (a full build only
        needs it at ``finish``)."""
        self.size = size
        self.blocks = -(-size // self.block_size)
        self.segments = segment_count(size, self.block_size)

    def _parent_id(self, k: int) -> bytes | None:
        p = self.parent
        if p is None or k >= p.segment_count:
            return ZERO_ID
        return p.segment_id(k)

    def _parent_entries(self, k: int) -> dict[int, bytes]:
        p = self.parent
        if p is None or k >= p.segment_count:
            return {}
        return p.entries(k, ahead=not self.patch)

    def _limit(self, k: int) -> int:
        """Blocks of segment ``k`` within the new size."""
        return min(SPAN, self.blocks - k * SPAN)

    def _open(self, k: int) -> None:
        self._k = k
        self._old = self._parent_entries(k)
        limit = self._limit(k)
        if self.patch:
            self._new = {o: c for o, c in self._old.items() if o < limit}
        else:
            self._new = {}

    def _close(self) -> None:
        """Store the open segment, count what it changed against the parent's."""
        k, new, old = self._k, self._new, self._old
        sid = ZERO_ID
        if new:
            data = encode_segment(new)
            sid = self.identify(data)
            self.store_chunk(sid, data)  # a manifest chunk: not counted as added content
        if sid != self._parent_id(k):
            self.changed_blocks += sum(1 for o, c in new.items() if old.get(o) != c) + sum(
                1 for o in old if o not in new
            )
        self.top += sid
        self._k, self._new, self._old = -1, {}, {}

    def _skip_to(self, k: int) -> None:
        """Close segments before ``k``: the open one, then those nothing was read in."""
        if self._k >= 0 and self._k < k:
            self._close()
        while len(self.top) // 32 < k:
            j = len(self.top) // 32
            pid = self._parent_id(j)
            whole = (j + 1) * SPAN <= self.blocks
            if self.patch and pid is not None and whole:
                self.top += pid  # untouched: the parent's segment, unread
                continue
            if not self.patch and pid == ZERO_ID:
                self.top += ZERO_ID  # a hole where the parent held nothing
                continue
            self._open(j)
            self._close()

    def feed(self, pos: int, buf: bytes, ids: list[bytes | None]) -> None:
        """The blocks of ``buf`` (read at ``pos``; None: a zero block)."""
        self.read_bytes += len(buf)
        bs = self.block_size
        first = pos // bs
        k = 0
        while k < len(ids):
            index = first + k
            seg, offset = divmod(index, SPAN)
            if seg != self._k:
                self._skip_to(seg)
                self._open(seg)
            n = min(len(ids) - k, SPAN - offset)
            new, old, sink = self._new, self._old, self.sink
            for j in range(k, k + n):
                cid = ids[j]
                o = offset + j - k
                if cid is None:
                    new.pop(o, None)
                    continue
                new[o] = cid
                if old.get(o) != cid:
                    block = buf[j * bs : (j + 1) * bs]
                    if len(block) < bs:
                        block += self._zero[len(block) :]
                    self.added_bytes += sink(cid, block)
            k += n

    def finish(self) -> None:
        """Close every segment up to the size (call before the session finishes)."""
        self._skip_to(self.segments)

    def store(self, add: Callable[[bytes], bytes | None]) -> bytes:
        """Store the top list and root (after the session finished); the root's id."""
        return store_root(self.kind, self.block_size, self.size, bytes(self.top), add)
