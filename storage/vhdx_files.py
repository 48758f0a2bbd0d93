"""Disk chains on files: a VHDX/AVHDX or VHD/AVHD file with its parents, read as one raw disk.

Terms: a *chain* is a layer file (``disk_layer.LayerFile``) and its parents, each child naming its
parent by a *locator* (relative path, absolute Windows path, volume path); a
parent is looked for only inside a *fence* folder (a locator is data from the
file and may not lead elsewhere). The chain's *segments* are the byte ranges
some file of it stores data for (the rest reads as zero): a capture reads
only those.

The format of each file is told by its bytes, not its name (``vhdxfile`` at 0,
or a VHD footer). Hyper-V never mixes them in one chain: a checkpoint of a VHD
disk makes an AVHD (VHD format), of a VHDX an AVHDX; a chain that does is
refused, naming both files, since no Hyper-V host would open it either.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path, PureWindowsPath
from typing import BinaryIO

from ckpt.domain.errors import VhdxChainMismatch, VhdxError, VhdxUnsupported

from .disk_layer import LayerFile
from .extents import merge
from .image_formats import VHD, VHDX, container_format
from .vhd import VhdReader
from .vhdx import BlockState, VhdxChain, VhdxReader


class ChainStream(io.RawIOBase):
    """A VHDX chain seen as a raw disk, for the capture code (which reads streams)."""

    def __init__(self, vhdx: VhdxChain) -> None:
        self.vhdx = vhdx
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.vhdx.virtual_size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.vhdx.read(self.pos, len(buffer))
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def open_layer_file(stream: BinaryIO, name: str) -> LayerFile:
    """A VHDX/AVHDX or VHD/AVHD reader for ``stream``, by its signature; anything
    else is refused (``VhdxUnsupported``), naming what it looks like."""
    size = stream.seek(0, os.SEEK_END)
    kind = container_format(stream, size)
    if kind == VHDX:
        return VhdxReader(stream, name)
    if kind == VHD:
        return VhdReader(stream, name)
    raise VhdxUnsupported(
        f"{name}: neither a VHDX nor a VHD file"
        + (f" ({kind})" if kind else " (no vhdxfile signature, no VHD footer)")
    )


def format_of(layer: LayerFile) -> str:
    return "VHD" if isinstance(layer, VhdReader) else "VHDX"


def open_vhdx_chain(
    path: Path, root: Path | None = None
) -> tuple[VhdxChain, list[BinaryIO], list[tuple[int, int]]]:
    """Open ``path`` and its parents (found by relative path, then by the absolute
    path's file name next to it); refuse a missing parent or a cycle, naming the file.
    Return the chain, the open files (the caller closes them) and its data segments."""
    files: list[BinaryIO] = []
    readers: list[LayerFile] = []
    seen: set[Path] = set()
    current = path
    try:
        while True:
            real = current.resolve()
            if real in seen:
                raise VhdxError(f"{current}: a cycle of parents (this file is its own ancestor)")
            seen.add(real)
            opened: BinaryIO = current.open("rb")
            files.append(opened)
            reader = open_layer_file(opened, str(current))
            if readers and format_of(readers[-1]) != format_of(reader):
                child = readers[-1]
                raise VhdxChainMismatch(
                    f"{child.name} ({format_of(child)}) names {reader.name} ({format_of(reader)}) "
                    "as its parent: Hyper-V never mixes the formats in one chain (a checkpoint "
                    "of a VHD makes an AVHD, of a VHDX an AVHDX); convert the whole chain"
                )
            readers.append(reader)
            if not reader.has_parent:
                break
            current = find_parent(current, reader.parent_locator or {}, root or path.parent)
    except OSError as e:
        for done in files:
            done.close()
        raise VhdxError(f"cannot read {current}: {e.strerror}") from None
    except BaseException:
        for done in files:
            done.close()
        raise
    vhdx = VhdxChain(readers)
    return vhdx, files, _segments(readers)


def find_parent(child: Path, locator: dict[str, str], root: Path | None = None) -> Path:
    """The parent file a child's locator names, inside ``root`` (default: the child's
    folder): a locator is data from the file, and may not lead the import elsewhere."""
    fence = (root or child.parent).resolve()
    tried = []
    for key in ("relative_path", "absolute_win32_path", "volume_path"):
        value = locator.get(key)
        if not value:
            continue
        win = PureWindowsPath(value)
        candidate = (
            child.parent.joinpath(*[p for p in win.parts if p not in (".",)])
            if key == "relative_path"
            else child.parent / win.name
        )
        if str(candidate) not in tried:  # the relative and absolute paths often agree
            tried.append(str(candidate))
        if not candidate.resolve().is_relative_to(fence):
            raise VhdxError(f"{child}: its {key} {value!r} points outside {fence}; refused")
        if candidate.is_file():
            return candidate
    raise VhdxError(
        f"{child}: its parent disk is missing (looked for {', '.join(tried) or 'no path given'})"
    )


def _segments(readers: Sequence[LayerFile]) -> list[tuple[int, int]]:
    """Byte ranges some file of the chain stores data for (the rest reads as zero)."""
    block_sets: set[tuple[int, int]] = set()
    for r in readers:
        for b in range(r.block_count):
            if r.block_state(b) in (BlockState.FULLY_PRESENT, BlockState.PARTIALLY_PRESENT):
                start = b * r.block_size
                block_sets.add((start, min(start + r.block_size, r.virtual_size)))
    return merge(block_sets)
