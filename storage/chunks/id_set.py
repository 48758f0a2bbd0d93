"""A set of chunk ids too large for memory: sorted runs spilled to a temporary directory.

Terms:
    buffer   ids added and not yet spilled, up to ``budget`` of them (32 B each
             as bytes in a list, ~100 B with the list's objects).
    run      a spilled buffer: its ids sorted and deduplicated, as a file of
             (n, 4) u64 keys (run_file.py's key order), read back with ``pread``
             in pieces, never whole.

gc's ``keep`` (every chunk the recorded captures reference) and verify's id
list are this set: at 4 KiB chunks a store of 100 M chunks references up to
3.2 GB of ids, which a ``set[bytes]`` holds in ~10 GB.

``contains_many`` answers a batch by a search in each run: a fence (every
512th id's first word, in memory: 16 B per 1,000 ids) names the 16 KiB page of
the run that can hold an id, one ``pread`` per page. ``batches`` streams the
ids in order for a merge-join (what gc does). Runs are merged into one when
there are more than ``MAX_RUNS`` of them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

from .ids import ID_SIZE
from .index_cache import cut_keys
from .run_file import U64, ids_to_keys, keys_to_ids, sort_order

# Ids held before a spill: 1 M x ~100 B = ~100 MiB at most in the buffer.
DEFAULT_BUDGET = 1 << 20
MAX_RUNS = 8
_PIECE = 1 << 18  # ids read back per piece when merging or iterating: 8 MiB
FENCE = 512  # ids per fence entry: a 16 KiB page of the run


class _SpilledRun:
    """One sorted, deduplicated run of ids in a file; its fence in memory."""

    def __init__(self, path: Path, keys: U64) -> None:
        self.path = path
        self.n = len(keys)
        with open(path, "wb") as f:
            f.write(np.ascontiguousarray(keys).tobytes())
        self.fence: U64 = np.ascontiguousarray(keys[::FENCE, 0])
        self._fd = os.open(path, os.O_RDONLY)

    def close(self) -> None:
        os.close(self._fd)

    def read(self, lo: int, hi: int) -> U64:
        data = os.pread(self._fd, 32 * (hi - lo), 32 * lo)
        return np.frombuffer(data, np.uint64).reshape(-1, 4)

    def span(self, k0: U64) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """For each first word, the positions [start, end) that can hold it."""
        start = np.maximum(np.searchsorted(self.fence, k0, "left").astype(np.int64) - 1, 0)
        end = np.searchsorted(self.fence, k0, "right").astype(np.int64) * FENCE
        return start * FENCE, np.minimum(end, self.n)

    def pieces(self) -> Iterator[U64]:
        for lo in range(0, self.n, _PIECE):
            yield self.read(lo, min(self.n, lo + _PIECE))


def _dedupe_sorted(keys: U64) -> U64:
    if len(keys) < 2:
        return keys
    keep = np.ones(len(keys), bool)
    keep[1:] = np.any(keys[1:] != keys[:-1], axis=1)
    return keys[keep]


class IdSet:
    """A set of 32-byte chunk ids that spills to sorted files; a context manager.

    ``add_many`` then ``contains_many`` (any order, any batch size);
    iteration yields the ids in byte order; ``close`` removes the files."""

    def __init__(
        self, ids: Iterable[bytes] = (), budget: int = DEFAULT_BUDGET, directory: Path | None = None
    ) -> None:
        self._budget = max(1, budget)
        self._dir = Path(tempfile.mkdtemp(prefix="ckpt-idset-", dir=directory))
        self._buffer: list[bytes] = []
        self._runs: list[_SpilledRun] = []
        self._serial = 0
        self._closed = False
        self.add_many(ids)

    def __enter__(self) -> IdSet:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for r in self._runs:
            r.close()
        self._runs, self._buffer = [], []
        shutil.rmtree(self._dir, ignore_errors=True)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this IdSet is closed")

    # ------------------------------------------------------------ adding
    def add(self, cid: bytes) -> None:
        self.add_many((cid,))

    def add_many(self, ids: Iterable[bytes]) -> None:
        self._check_open()
        for cid in ids:
            if len(cid) != ID_SIZE:
                raise ValueError(f"chunk id must be {ID_SIZE} bytes, got {len(cid)}")
            self._buffer.append(bytes(cid))
            if len(self._buffer) >= self._budget:
                self._spill()

    def _spill(self) -> None:
        if not self._buffer:
            return
        keys = ids_to_keys(self._buffer)
        self._buffer = []
        keys = _dedupe_sorted(keys[sort_order(keys)])
        self._runs.append(self._new_run(keys))
        if len(self._runs) > MAX_RUNS:
            self._merge_all()

    def _new_run(self, keys: U64) -> _SpilledRun:
        self._serial += 1
        return _SpilledRun(self._dir / f"{self._serial:06d}.ids", keys)

    def _merge_all(self) -> None:
        """Merge every run into one, in pieces bounded like the spills."""
        runs, self._runs = self._runs, []
        self._serial += 1
        path = self._dir / f"{self._serial:06d}.ids"
        fences: list[U64] = []
        n = 0
        last: U64 | None = None
        with open(path, "wb") as out:
            for keys in _merged(runs, self._budget):
                if last is not None and len(keys) and np.array_equal(keys[0], last):
                    keys = keys[1:]
                if not len(keys):
                    continue
                out.write(np.ascontiguousarray(keys).tobytes())
                fences.append(np.ascontiguousarray(keys[(-n) % FENCE :: FENCE, 0]))
                n += len(keys)
                last = keys[-1].copy()
        for r in runs:
            r.close()
            r.path.unlink(missing_ok=True)
        merged = _SpilledRun.__new__(_SpilledRun)
        merged.path, merged.n = path, n
        merged.fence = np.concatenate(fences) if fences else np.zeros(0, np.uint64)
        merged._fd = os.open(path, os.O_RDONLY)
        self._runs = [merged]

    # ------------------------------------------------------------ asking
    def contains_many(self, ids: Sequence[bytes]) -> list[bool]:
        """``cid in self`` for each of ``ids``, in their order."""
        self._check_open()
        if not ids:
            return []
        out = [False] * len(ids)
        good = [i for i, c in enumerate(ids) if len(c) == ID_SIZE]
        if self._buffer:
            buffered = set(self._buffer)
            for i in good:
                if ids[i] in buffered:
                    out[i] = True
        todo = [i for i in good if not out[i]]
        if not todo or not self._runs:
            return out
        keys = ids_to_keys([ids[i] for i in todo])
        found = np.zeros(len(todo), bool)
        for run in self._runs:
            todo_j = np.flatnonzero(~found)
            start, end = run.span(keys[todo_j, 0])
            order = np.lexsort((end, start))
            pages: dict[tuple[int, int], list[int]] = {}
            for j in order.tolist():
                pages.setdefault((int(start[j]), int(end[j])), []).append(int(todo_j[j]))
            for (lo, hi), members in pages.items():
                if hi <= lo:
                    continue
                rows = run.read(lo, hi)
                q = keys[members]
                at = np.searchsorted(rows[:, 0], q[:, 0], "left")
                for m, a in zip(members, at.tolist(), strict=True):
                    while a < len(rows) and rows[a, 0] == keys[m, 0]:
                        if np.array_equal(rows[a], keys[m]):
                            found[m] = True
                            break
                        a += 1
        for j in np.flatnonzero(found).tolist():
            out[todo[j]] = True
        return out

    def __contains__(self, cid: object) -> bool:
        return isinstance(cid, bytes) and self.contains_many([cid])[0]

    def __len__(self) -> int:
        self._check_open()
        self._spill()
        if len(self._runs) > 1:
            self._merge_all()
        return self._runs[0].n if self._runs else 0

    def batches(self) -> Iterator[U64]:
        """Every id once, in byte order, as sorted (m, 4) u64 key batches."""
        self._check_open()
        self._spill()
        if len(self._runs) > 1:
            self._merge_all()
        if self._runs:
            yield from self._runs[0].pieces()

    def __iter__(self) -> Iterator[bytes]:
        for keys in self.batches():
            yield from keys_to_ids(keys)


def _merged(runs: Sequence[_SpilledRun], budget: int) -> Iterator[U64]:
    """The union of sorted ``runs`` in order, deduplicated within each piece,
    in pieces cut at first-word boundaries of the largest run."""
    bounds = cut_keys([r.fence for r in runs], budget, FENCE)
    cuts = [[0, *(_lower_bound(r, b) for b in bounds), r.n] for r in runs]
    for j in range(len(bounds) + 1):
        pieces = [
            r.read(c[j], c[j + 1]) for r, c in zip(runs, cuts, strict=True) if c[j + 1] > c[j]
        ]
        if not pieces:
            continue
        keys = np.concatenate(pieces)
        yield _dedupe_sorted(keys[sort_order(keys)])


def _lower_bound(run: _SpilledRun, k0: int) -> int:
    """The first position of ``run`` whose first word is >= ``k0`` (one page read)."""
    start, end = run.span(np.array([k0], np.uint64))
    lo, hi = int(start[0]), int(end[0])
    rows = run.read(lo, hi) if hi > lo else np.zeros((0, 4), np.uint64)
    return lo + int(np.searchsorted(rows[:, 0], np.uint64(k0), "left"))
