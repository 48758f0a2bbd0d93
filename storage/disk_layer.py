"""One file of a virtual disk chain, whatever its format: what chains and captures ask of it.

A *layer file* is a base disk (VHDX, VHD: fixed or dynamic) or a differencing
one (AVHDX, AVHD) whose sectors it does not define come from its parent. The
VHDX reader (``storage/vhdx``) and the VHD reader (``storage/vhd``) both offer
this shape, so a chain, a capture's segment list and ``import hyperv`` treat
both generations alike.
"""

from __future__ import annotations

from typing import Protocol
from uuid import UUID

from .vhdx.bat import BlockState


class LayerFile(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def virtual_size(self) -> int: ...
    @property
    def logical_sector_size(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    @property
    def block_count(self) -> int: ...
    @property
    def has_parent(self) -> bool: ...
    @property
    def parent_locator(self) -> dict[str, str] | None: ...
    @property
    def parent_linkages(self) -> tuple[UUID, ...]: ...
    @property
    def data_write_guid(self) -> UUID: ...
    def block_state(self, block: int) -> BlockState: ...
    def read_own(self, offset: int, length: int) -> list[tuple[int, bytes]]: ...
