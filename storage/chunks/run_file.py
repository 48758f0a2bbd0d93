"""One sorted run of the chunk-index cache: immutable, searched through a memory map.

Terms:
    key       a chunk id as four u64 (its bytes 0-7, 8-15, 16-23, 24-31 read
              big-endian), so the integer order of the tuple is the byte order of
              the id. Column 0 is the *key column* searched first.
    slot      six u32 per entry, the shared contract of decisions 0011 and 0012:
              (pack number, frame offset, frame compressed length, frame
              uncompressed length, slice offset, chunk length). A version-1 pack's
              entry is ``(n, off, clen, ulen, 0, ulen)``.
    run       entries sorted by (key, pack number): the same id may appear under
              several packs (two writers stored it, or gc moved it); the copy
              with the smallest pack number comes first.
    fence     every 512th value of the key column (the first key of each 4 KiB
              page of it), stored at the end of the file and read into memory
              at open: 16 KiB per 1 M entries. It turns a probe into one key
              page.

Layout (little-endian)::

    0      8   magic "CKPTRUN1"
    8      4   u32 version = 1
    12     4   u32 slot width = 6
    16     8   u64 n, the entry count
    24     8   reserved = 0
    4096   8n  key column (u64), page-aligned: key page i is entries [512i, 512i + 512)
    ...   48n  tails: the other three key words (u64 x 3), then the slot (u32 x 6):
               a hit reads its tail with one ``pread``
    ...    8f  fence, f = ceil(n / 512)
    ...    4   u32 crc32 of every byte before it

A run is written once (temp file, fsync, rename) and never changed; the crc32
is checked by ``check`` (``verify``), not at open: 5.6 GB at 100 M entries.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ckpt.domain.errors import IndexCorrupt

MAGIC = b"CKPTRUN1"
VERSION = 1
SLOT_WIDTH = 6
HEAD = struct.Struct("<8sIIQQ")
DATA_START = 4096
PAGE_KEYS = 512  # 4 KiB of u64 keys
_CRC = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_TAIL = struct.Struct(f"<3Q{SLOT_WIDTH}I")
ENTRY_BYTES = 8 + 24 + 4 * SLOT_WIDTH  # 56

U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]
I64 = npt.NDArray[np.int64]


def ids_to_keys(ids: Sequence[bytes]) -> U64:
    """(len(ids), 4) u64 keys of 32-byte ids."""
    if not ids:
        return np.zeros((0, 4), np.uint64)
    raw = np.frombuffer(b"".join(ids), dtype=">u8").reshape(-1, 4)
    return raw.astype(np.uint64)


def keys_to_ids(keys: U64) -> list[bytes]:
    raw = keys.astype(">u8").tobytes()
    return [raw[i : i + 32] for i in range(0, len(raw), 32)]


def sort_order(keys: U64, packs: U32 | None = None) -> I64:
    """The permutation sorting ``keys`` (then ``packs``) ascending.

    One ``argsort`` of the first word (~25 ms for 256 K rows), then a
    ``lexsort`` of only the rows whose first word ties with a neighbour
    (copies of one id, or a 2^-64 fluke): a ``lexsort`` of all five columns
    cost 10x more and was 2/3 of a cache build."""
    order = np.argsort(keys[:, 0]).astype(np.int64)
    if len(order) < 2:
        return order
    k0 = keys[order, 0]
    tie = np.flatnonzero(k0[1:] == k0[:-1])
    if len(tie):
        at = np.unique(np.concatenate([tie, tie + 1]))
        rows = order[at]
        columns: tuple[npt.NDArray[np.generic], ...] = (
            keys[rows, 3], keys[rows, 2], keys[rows, 1], keys[rows, 0],
        )  # fmt: skip
        if packs is not None:
            columns = (packs[rows], *columns)
        order[at] = rows[np.lexsort(columns)]
    return order


TAIL = 24 + 4 * SLOT_WIDTH  # 48: the rest of the id, the slot


def layout(n: int) -> tuple[int, int, int, int]:
    """Offsets of the tails, the fence, the crc, and the file size."""
    tails = DATA_START + 8 * n
    fence = tails + TAIL * n
    crc = fence + 8 * (-(-n // PAGE_KEYS))
    return tails, fence, crc, crc + _CRC.size


class RunWriter:
    """Write one run of ``n`` entries column by column, in order, in pieces:
    a merge streams its output through here without holding it."""

    def __init__(self, path: Path, n: int) -> None:
        self.path = path
        self.n = n
        self._done = 0
        self._tmp = path.with_name(f".{path.name}.tmp")
        self._fd = os.open(self._tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._offsets = layout(n)
        os.ftruncate(self._fd, self._offsets[2])
        os.pwrite(self._fd, HEAD.pack(MAGIC, VERSION, SLOT_WIDTH, n, 0), 0)
        self._fence: list[U64] = []

    def write(self, keys: U64, slots: U32) -> None:
        m = len(keys)
        if self._done + m > self.n:
            raise ValueError(f"run {self.path.name}: more than {self.n} entries written")
        tails_at = self._offsets[0]
        i = self._done
        os.pwrite(self._fd, np.ascontiguousarray(keys[:, 0]).tobytes(), DATA_START + 8 * i)
        tails = np.empty((m, TAIL // 8), np.uint64)
        tails[:, :3] = keys[:, 1:]
        tails[:, 3:] = np.ascontiguousarray(slots, np.uint32).view(np.uint64)
        os.pwrite(self._fd, tails.tobytes(), tails_at + TAIL * i)
        first = (-i) % PAGE_KEYS  # the first index of this piece that starts a key page
        self._fence.append(np.ascontiguousarray(keys[first::PAGE_KEYS, 0]))
        self._done += m

    def finish(self) -> None:
        """Fence, checksum, fsync, rename: the run exists whole or not at all."""
        if self._done != self.n:
            raise ValueError(f"run {self.path.name}: {self._done} of {self.n} entries written")
        _, fence_at, crc_at, _ = self._offsets
        fence = np.concatenate(self._fence) if self._fence else np.zeros(0, np.uint64)
        os.pwrite(self._fd, fence.tobytes(), fence_at)
        crc = 0
        for start in range(0, crc_at, 8 << 20):
            crc = zlib.crc32(os.pread(self._fd, min(8 << 20, crc_at - start), start), crc)
        os.pwrite(self._fd, _CRC.pack(crc), crc_at)
        os.fsync(self._fd)
        os.close(self._fd)
        os.replace(self._tmp, self.path)

    def abandon(self) -> None:
        os.close(self._fd)
        self._tmp.unlink(missing_ok=True)


def write_run(path: Path, keys: U64, slots: U32) -> None:
    """One run from sorted ``keys`` and their ``slots``, in one piece."""
    w = RunWriter(path, len(keys))
    try:
        w.write(keys, slots)
        w.finish()
    except BaseException:
        w.abandon()
        raise


class Run:
    """An open run: its columns mapped read-only, its fence in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        damaged = f"chunk-index cache run {path} is damaged"
        with open(path, "rb") as f:
            head = f.read(HEAD.size)
            if len(head) < HEAD.size:
                raise IndexCorrupt(f"{damaged}: too short")
            magic, version, width, n, _ = HEAD.unpack(head)
            if magic != MAGIC or version != VERSION or width != SLOT_WIDTH:
                raise IndexCorrupt(f"{damaged}: magic, version or layout unknown")
            size = os.fstat(f.fileno()).st_size
            tails_at, fence_at, crc_at, end = layout(n)
            if size != end or n == 0:
                raise IndexCorrupt(f"{damaged}: {size} bytes does not fit {n} entries")
            self.n: int = n
            self._fd = os.dup(f.fileno())
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.fence = np.frombuffer(os.pread(self._fd, crc_at - fence_at, fence_at), np.uint64)
        self.keys = np.frombuffer(self._map, np.uint64, n, DATA_START)
        tails = np.frombuffer(self._map, np.uint64, TAIL // 8 * n, tails_at).reshape(n, -1)
        self.rest = tails[:, :3]
        self.slots = tails[:, 3:].view(np.uint32)
        # memoryviews for the one-id path: bisect over them runs in C (~1 us a probe)
        self._fence_list = self.fence.tolist()
        self._kmv = memoryview(self._map)[DATA_START : DATA_START + 8 * n].cast("Q")
        self._tmv = memoryview(self._map)[tails_at:fence_at].cast("Q")
        self._smv = memoryview(self._map)[tails_at:fence_at].cast("I")
        self._tails_at = tails_at

    def __del__(self) -> None:
        with contextlib.suppress(AttributeError, OSError):
            os.close(self._fd)

    # ------------------------------------------------------------- lookups
    def lower_bounds(self, k0: U64) -> I64:
        """For each of the sorted ``k0``, the first position whose key is >= it."""
        n = self.n
        page = np.searchsorted(self.fence, k0, "left").astype(np.int64) - 1
        pos = np.where(page >= 0, page * PAGE_KEYS, -1)  # keys[pos] < k0 where pos >= 0
        keys = self.keys
        step = PAGE_KEYS // 2
        while step:
            c = pos + step
            cc = np.minimum(c, n - 1)
            ok = (c < n) & (keys[cc] < k0)
            pos = np.where(ok, c, pos)
            step //= 2
        return pos + 1

    def probe(self, q: U64, live: npt.NDArray[np.bool_]) -> I64:
        """Per query key (sorted rows of ``q``), the position of its first copy
        whose pack is live, or -1."""
        found = np.full(len(q), -1, np.int64)
        if not len(q):
            return found
        at = self.lower_bounds(q[:, 0])
        todo = np.flatnonzero(at < self.n)
        while len(todo):
            pos = at[todo]
            same = self.keys[pos] == q[todo, 0]
            todo, pos = todo[same], pos[same]
            if not len(todo):
                break
            rest = self.rest[pos]
            full = np.all(rest == q[todo, 1:], axis=1)
            hit = full & live[self.slots[pos, 0]]
            found[todo[hit]] = pos[hit]
            # a key match that is another id, or a copy in a gone pack: look further
            todo = todo[~hit]
            at[todo] += 1
            todo = todo[at[todo] < self.n]
        return found

    def find_one(self, k: tuple[int, int, int, int], live: bytearray) -> int:
        """``probe`` of one key through the map, without numpy's per-call cost:
        -1 or a position."""
        k0 = k[0]
        page = bisect.bisect_left(self._fence_list, k0) - 1
        lo = 0 if page < 0 else page * PAGE_KEYS + 1
        hi = min(self.n, (page + 1) * PAGE_KEYS + 1)
        kmv, tmv, smv, n = self._kmv, self._tmv, self._smv, self.n
        i = bisect.bisect_left(kmv, k0, lo, hi)
        while i < n and kmv[i] == k0:
            if (
                tmv[6 * i] == k[1]
                and tmv[6 * i + 1] == k[2]
                and tmv[6 * i + 2] == k[3]
                and live[smv[12 * i + 6]]
            ):
                return i
            i += 1
        return -1

    def slot(self, i: int) -> tuple[int, int, int, int, int, int]:
        s = self._smv[12 * i + 6 : 12 * i + 12]
        return (s[0], s[1], s[2], s[3], s[4], s[5])

    # ---------------------------------------- lookups with pread (large runs)
    # A fault on the map maps the whole large folio around it: 260-350 KiB per
    # probe measured (kernel 6.18), ~320 MiB of ``ru_maxrss`` for one batch of
    # 256 at 10 M entries. Reading the key page (4 KiB + one key) with ``pread``
    # instead keeps the process's memory at the batch.

    def _key_at(self, i: int) -> int:
        (key,) = _U64.unpack(os.pread(self._fd, 8, DATA_START + 8 * i))
        return int(key)

    def _match(self, i: int, k: Sequence[int], live: bytearray) -> tuple[int, ...] | None:
        """The slot at ``i`` if its id is ``k`` and its pack live, else None."""
        tail = _TAIL.unpack(os.pread(self._fd, TAIL, self._tails_at + TAIL * i))
        if tail[:3] != (k[1], k[2], k[3]) or not live[tail[3]]:
            return None
        return tail[3:]

    def _walk(
        self, i: int, k: Sequence[int], live: bytearray, page: memoryview, start: int
    ) -> tuple[int, tuple[int, ...] | None]:
        """From position ``i`` (key >= k0), the first live copy of ``k``."""
        while i < self.n:
            key = page[i - start] if i - start < len(page) else self._key_at(i)
            if key != k[0]:
                break
            slot = self._match(i, k, live)
            if slot is not None:
                return i, slot
            i += 1
        return -1, None

    def _page(self, page: int) -> tuple[int, memoryview]:
        """Key page ``page`` (clamped at 0) and the key after it, read."""
        start = max(page, 0) * PAGE_KEYS
        count = min(PAGE_KEYS + 1, self.n - start)
        return start, memoryview(os.pread(self._fd, 8 * count, DATA_START + 8 * start)).cast("Q")

    def read_one(
        self, k: tuple[int, int, int, int], live: bytearray
    ) -> tuple[int, tuple[int, ...] | None]:
        """``find_one`` with ``pread``: (position, slot) or (-1, None)."""
        start, keys = self._page(bisect.bisect_left(self._fence_list, k[0]) - 1)
        i = start + bisect.bisect_left(keys, k[0])
        return self._walk(i, k, live, keys, start)

    def read_probe(self, q: U64, live: bytearray) -> tuple[I64, U32]:
        """``probe`` with ``pread``: positions (or -1) and the slots found."""
        m = len(q)
        found = np.full(m, -1, np.int64)
        slots = np.zeros((m, SLOT_WIDTH), np.uint32)
        if not m:
            return found, slots
        n, width = self.n, PAGE_KEYS + 1
        page = np.searchsorted(self.fence, q[:, 0], "left").astype(np.int64) - 1
        start = np.maximum(page, 0) * PAGE_KEYS
        pages, row = np.unique(start, return_inverse=True)
        fd, pread, pad = self._fd, os.pread, b"\xff" * (8 * width)
        raw = [pread(fd, 8 * min(width, n - p), DATA_START + 8 * p) for p in pages.tolist()]
        # short pages (the last one) padded with the largest key, never below a probe
        joined = b"".join(r if len(r) == 8 * width else r + pad[len(r) :] for r in raw)
        buf = np.frombuffer(joined, np.uint64).reshape(len(pages), width)
        q0 = q[:, 0]
        pos = np.full(m, -1, np.int64)
        step = PAGE_KEYS
        while step:
            c = pos + step
            ok = (c < width) & (buf[row, np.minimum(c, width - 1)] < q0)
            pos = np.where(ok, c, pos)
            step //= 2
        rel = pos + 1
        at = start + rel
        cand = np.flatnonzero((rel < width) & (at < n))
        cand = cand[buf[row[cand], rel[cand]] == q0[cand]]
        if not len(cand):
            return found, slots
        # The common hit, vectorised: the first row with the key holds the id and
        # its pack is live. One pread of its 48-byte tail each; the checks in numpy
        # (a Python walk per hit cost ~10 us of a restore's lookup).
        first = at[cand]
        tail_at = self._tails_at
        tail_bytes = b"".join([pread(fd, TAIL, tail_at + TAIL * i) for i in first.tolist()])
        tails = np.frombuffer(tail_bytes, np.uint64).reshape(len(cand), TAIL // 8)
        got = np.ascontiguousarray(tails[:, 3:]).view(np.uint32)
        alive = np.frombuffer(bytes(live), np.uint8)
        number = got[:, 0].astype(np.int64)
        ok = (tails[:, :3] == q[cand, 1:4]).all(axis=1) & (number < len(alive))
        ok[ok] = alive[number[ok]] != 0
        found[cand[ok]] = first[ok]
        slots[cand[ok]] = got[ok]
        keys = q.tolist()
        for j in cand[~ok].tolist():  # another id with the same first word, or a gone copy
            i, slot = self._walk(int(at[j]), keys[j], live, memoryview(buf[row[j]]), int(start[j]))
            if slot is not None:
                found[j] = i
                slots[j] = slot
        return found, slots

    # ------------------------------------------------- lookups, either way
    def lookup_one(
        self, k: tuple[int, int, int, int], live: bytearray, mapped: bool
    ) -> tuple[int, ...] | None:
        """The slot of the first live copy of ``k``, through the map or with ``pread``."""
        if mapped:
            i = self.find_one(k, live)
            return None if i < 0 else self.slot(i)
        return self.read_one(k, live)[1]

    def lookup(
        self, q: U64, live: npt.NDArray[np.bool_], live_bytes: bytearray, mapped: bool
    ) -> tuple[I64, U32]:
        """Positions (or -1) and slots of the sorted rows of ``q``, either way."""
        if not mapped:
            return self.read_probe(q, live_bytes)
        pos = self.probe(q, live)
        hit = pos >= 0
        slots = np.zeros((len(q), SLOT_WIDTH), np.uint32)
        slots[hit] = self.slots[pos[hit]]
        return pos, slots

    # ------------------------------------------------------- streamed reads
    def read(self, lo: int, hi: int) -> tuple[U64, U32]:
        """Entries [lo, hi) as (keys (m, 4), slots (m, 6)), read with ``pread``
        (not the map: a merge would otherwise count every page it passed)."""
        m = hi - lo
        keys = np.empty((m, 4), np.uint64)
        keys[:, 0] = np.frombuffer(os.pread(self._fd, 8 * m, DATA_START + 8 * lo), np.uint64)
        tails = np.frombuffer(
            os.pread(self._fd, TAIL * m, self._tails_at + TAIL * lo), np.uint64
        ).reshape(m, TAIL // 8)
        keys[:, 1:] = tails[:, :3]
        return keys, np.ascontiguousarray(tails[:, 3:]).view(np.uint32)

    def lower_bound_one(self, k0: int) -> int:
        """The first position whose key is >= ``k0``, reading one key page."""
        page = bisect.bisect_left(self._fence_list, k0) - 1
        if page < 0:
            return 0
        start = page * PAGE_KEYS
        count = min(PAGE_KEYS, self.n - start)
        keys = np.frombuffer(os.pread(self._fd, 8 * count, DATA_START + 8 * start), np.uint64)
        return start + int(np.searchsorted(keys, np.uint64(k0), "left"))

    def check(self) -> None:
        """Read the whole file and compare its crc32; ``IndexCorrupt`` if it differs."""
        _, _, crc_at, _ = layout(self.n)
        crc = 0
        for start in range(0, crc_at, 8 << 20):
            crc = zlib.crc32(os.pread(self._fd, min(8 << 20, crc_at - start), start), crc)
        (want,) = _CRC.unpack(os.pread(self._fd, _CRC.size, crc_at))
        if crc != want:
            raise IndexCorrupt(f"chunk-index cache run {self.path} is damaged: checksum mismatch")
