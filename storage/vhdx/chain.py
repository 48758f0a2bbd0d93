"""Reading a differencing chain: a leaf AVHDX, its parents, down to a base.

Terms:
    chain   readers ordered **leaf first**: ``layers[0]`` is the newest
            differencing file (what the VM writes to), ``layers[-1]`` the base
            VHDX. Hyper-V walks a chain in the same direction.
    link    a child names its parent by the parent's DataWriteGuid in its
            parent locator (``parent_linkage``, or ``parent_linkage2``).

A byte of the virtual disk comes from the first layer that defines it (see
``VhdxReader.read_own``); the base defines every byte, so a read always ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ckpt.domain.errors import VhdxChainMismatch

if TYPE_CHECKING:  # disk_layer imports this package (BlockState)
    from ckpt.storage.disk_layer import LayerFile


class VhdxChain:
    """Checked, read-only view of a chain of readers (VHDX or VHD layer files), leaf first."""

    def __init__(self, layers: Sequence[LayerFile], *, check_linkage: bool = True) -> None:
        if not layers:
            raise VhdxChainMismatch("a VHDX chain needs at least a base file")
        self.layers = tuple(layers)
        base = self.layers[-1]
        if base.has_parent:
            raise VhdxChainMismatch(
                f"{base.name}: the last file of a chain must be a base disk, it has a parent"
            )
        for child, parent in zip(self.layers, self.layers[1:], strict=False):
            if not child.has_parent:
                raise VhdxChainMismatch(
                    f"{child.name}: a base disk, but {parent.name} is listed as its parent"
                )
            if (child.virtual_size, child.logical_sector_size) != (
                parent.virtual_size,
                parent.logical_sector_size,
            ):
                raise VhdxChainMismatch(
                    f"{child.name} ({child.virtual_size} bytes, {child.logical_sector_size}-byte"
                    f" sectors) does not match its parent {parent.name} ({parent.virtual_size}"
                    f" bytes, {parent.logical_sector_size}-byte sectors)"
                )
            if check_linkage and parent.data_write_guid not in child.parent_linkages:
                linkages = ", ".join(str(g) for g in child.parent_linkages) or "none"
                raise VhdxChainMismatch(
                    f"{child.name} expects a parent with DataWriteGuid {linkages}, "
                    f"{parent.name} has {parent.data_write_guid}"
                )

    @property
    def virtual_size(self) -> int:
        return self.layers[-1].virtual_size

    def read(self, offset: int, length: int) -> bytes:
        """The disk's bytes as the leaf shows them, clipped to the disk's end."""
        if offset < 0 or length < 0:
            raise ValueError(f"negative offset {offset} or length {length}")
        end = min(offset + length, self.virtual_size)
        if end <= offset:
            return b""
        out = bytearray(end - offset)
        holes = [(offset, end)]  # still undefined ranges, sorted
        for layer in self.layers:
            remaining: list[tuple[int, int]] = []
            for lo, hi in holes:
                cursor = lo
                for run_offset, data in layer.read_own(lo, hi - lo):
                    out[run_offset - offset : run_offset - offset + len(data)] = data
                    if run_offset > cursor:
                        remaining.append((cursor, run_offset))
                    cursor = run_offset + len(data)
                if cursor < hi:
                    remaining.append((cursor, hi))
            holes = remaining
            if not holes:
                break
        return bytes(out)
