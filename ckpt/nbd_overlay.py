"""A writable copy-on-write export over a read-only one (``ckpt serve --overlay DIR``).

Terms: the *overlay* of an export is two files in DIR, named after the export
(each of VM, point and disk percent-encoded, joined by ``_``):
``<name>.overlay``, a sparse file as large as the export holding the blocks
written, and ``<name>.map``, the *allocation map*: a 16-byte header (``CKPTOVL1``,
the export's size, u64 big-endian) and one bit per 4 KiB block, set once that
block lives in the overlay. A write fills whole blocks (the rest of a partly
written block is copied from the export first), writes them to the overlay
file, then the map bits: the map never names a block whose data was not
written first. FLUSH (and FUA) fsyncs both files. Reads take each block from
the overlay where its bit is set, from the store otherwise; the store is never
written. Overlays outlive the server: started again on the same DIR, the
export shows the writes again.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from pathlib import Path
from urllib.parse import quote

from ckpt.domain import InvalidValue

from .nbd_exports import Export

BLOCK = 4096  # a disk block: the granularity qemu and the guest write in
MAGIC = b"CKPTOVL1"
HEADER = struct.Struct(">8sQ")


def overlay_stem(export_name: str) -> str:
    """``VM/POINT/DISK`` -> a file name stem no two exports share: each part
    percent-encoded (``_`` too, so the ``_`` joining them is unambiguous)."""
    return "_".join(quote(part, safe="").replace("_", "%5F") for part in export_name.split("/"))


class OverlayExport:
    def __init__(self, base: Export, directory: Path) -> None:
        self.base = base
        stem = overlay_stem(base.name)
        if len(stem) > 200:  # a file name is at most 255 bytes
            raise InvalidValue(f"export name {base.name!r} is too long for an overlay file name")
        self.data_path = directory / f"{stem}.overlay"
        self.map_path = directory / f"{stem}.map"
        self.blocks = (base.size + BLOCK - 1) // BLOCK
        self._lock = threading.Lock()
        self.bits = self._load_map()
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            self.data_fd = os.open(self.data_path, flags, 0o600)
            os.ftruncate(self.data_fd, base.size)
            self.map_fd = os.open(self.map_path, flags, 0o600)
            os.pwrite(self.map_fd, HEADER.pack(MAGIC, base.size) + bytes(self.bits), 0)
        except OSError as e:
            raise InvalidValue(f"cannot open the overlay of {base.name!r}: {e}") from None

    def _load_map(self) -> bytearray:
        length = (self.blocks + 7) // 8
        try:
            raw = self.map_path.read_bytes()
        except FileNotFoundError:
            return bytearray(length)
        except OSError as e:
            raise InvalidValue(f"cannot read the overlay map {self.map_path}: {e}") from None
        if len(raw) < HEADER.size or raw[:8] != MAGIC:
            raise InvalidValue(f"{self.map_path} is not an overlay map")
        _, size = HEADER.unpack(raw[: HEADER.size])
        if size != self.base.size:
            raise InvalidValue(
                f"{self.map_path} is the overlay of a {size}-byte export, "
                f"{self.base.name!r} has {self.base.size} bytes"
            )
        if len(raw) != HEADER.size + length:
            raise InvalidValue(f"{self.map_path} is truncated or damaged")
        return bytearray(raw[HEADER.size :])

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def description(self) -> str:
        return self.base.description + " (copy-on-write overlay)"

    @property
    def size(self) -> int:
        return self.base.size

    @property
    def writable(self) -> bool:
        return True

    def _has(self, block: int) -> bool:
        return bool(self.bits[block >> 3] & (1 << (block & 7)))

    def pread(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        if offset < 0:
            raise ValueError("negative offset")
        first, last = offset // BLOCK, (offset + length - 1) // BLOCK
        with self._lock:
            mine = [self._has(b) for b in range(first, last + 1)] if length else []
        if not any(mine):
            return self.base.pread(offset, length)
        out = bytearray()
        run_start = offset
        # Runs of blocks of one origin, read in one call each.
        i = 0
        while i < len(mine):
            j = i
            while j < len(mine) and mine[j] == mine[i]:
                j += 1
            end = min(offset + length, (first + j) * BLOCK)
            if mine[i]:
                out += os.pread(self.data_fd, end - run_start, run_start)
            else:
                out += self.base.pread(run_start, end - run_start)
            run_start, i = end, j
        return bytes(out)

    def extents(
        self, offset: int, length: int, limit: int | None = None
    ) -> list[tuple[int, int, bool]]:
        """The base's runs, with each zero run split where the overlay holds blocks
        (those are data now); a 4 GiB request spans 1 Mi blocks, so numpy scans them."""
        runs: list[tuple[int, int, bool]] = []
        for start, run, zero in self.base.extents(offset, length, limit):
            pieces = self._split(start, run) if zero else [(start, run, False)]
            for piece in pieces:
                last = runs[-1] if runs else None
                if last and last[2] == piece[2] and last[0] + last[1] == piece[0]:
                    runs[-1] = (last[0], last[1] + piece[1], last[2])
                else:
                    runs.append(piece)
        return runs if limit is None else runs[:limit]

    def _split(self, start: int, length: int) -> list[tuple[int, int, bool]]:
        import numpy as np  # here: importing it costs every ckpt command ~50 ms

        first, last = start // BLOCK, (start + length - 1) // BLOCK
        with self._lock:
            raw = bytes(self.bits[first >> 3 : (last >> 3) + 1])
        bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")
        mine = bits[first - ((first >> 3) << 3) :][: last - first + 1].astype(bool)
        if not mine.any():
            return [(start, length, True)]
        edges = np.flatnonzero(np.diff(mine.astype(np.int8))) + 1
        out = []
        for lo_i, hi_i in zip([0, *edges.tolist()], [*edges.tolist(), len(mine)], strict=True):
            lo = max(start, (first + lo_i) * BLOCK)
            hi = min(start + length, (first + hi_i) * BLOCK)
            out.append((lo, hi - lo, not bool(mine[lo_i])))
        return out

    def pwrite(self, offset: int, data: bytes) -> None:
        if not data:
            return
        end = offset + len(data)
        first, last = offset // BLOCK, (end - 1) // BLOCK
        with self._lock:
            # Only the first and last blocks can be partly written: their other
            # bytes are the export's current ones.
            lo, hi = first * BLOCK, min((last + 1) * BLOCK, self.size)
            head = self._block(first)[: offset - lo] if offset > lo else b""
            tail = self._block(last)[end - last * BLOCK :] if end < hi else b""
            os.pwrite(self.data_fd, head + data + tail, lo)
            for b in range(first, last + 1):
                self.bits[b >> 3] |= 1 << (b & 7)
            a, z = first >> 3, (last >> 3) + 1
            os.pwrite(self.map_fd, bytes(self.bits[a:z]), HEADER.size + a)

    def _block(self, block: int) -> bytes:
        """A block's current bytes (the caller holds the lock)."""
        start = block * BLOCK
        n = min(BLOCK, self.size - start)
        if self._has(block):
            return os.pread(self.data_fd, n, start)
        return self.base.pread(start, n)

    def flush(self) -> None:
        os.fsync(self.data_fd)
        os.fsync(self.map_fd)

    def close(self) -> None:
        for fd in (self.data_fd, self.map_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.base.close()
