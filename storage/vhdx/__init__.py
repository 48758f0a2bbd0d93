"""ckpt.storage.vhdx: the VHDX / AVHDX file format, on streams.

Reads base (dynamic or fixed) VHDX and differencing AVHDX files as Windows
writes them, checking every structure (CRC-32C of headers and region tables,
bounds of every offset, metadata values, BAT states) and refusing a file with
a non-empty log; writes new dynamic VHDX and differencing AVHDX files in one
streaming pass. docs/vhdx.md specifies what is read and written byte by byte.

Modules, from the bottom up:
    layout          offsets, sizes, GUIDs
    geometry        blocks, chunks, BAT indexes
    checksum        CRC-32C with the checksum field zeroed
    source          bounded, named reads from the stream
    header          file identifier, the two headers, the log check
    region_table    the two region tables
    parent_locator  the parent locator item
    metadata        the metadata table and items
    bat             BAT entries and block states
    bitmap          sector bitmaps <-> runs of sectors
    reader          VhdxReader, OwnBlock
    chain           VhdxChain: reading leaf-first chains
    (ckpt.storage.run_blocks: cutting input runs into blocks, shared with VHD)
    writer          write_vhdx, write_avhdx
"""

from .bat import BlockState
from .chain import VhdxChain
from .reader import OwnBlock, VhdxReader
from .writer import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_DIFFERENCING_BLOCK_SIZE,
    WrittenVhdx,
    write_avhdx,
    write_vhdx,
)

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_DIFFERENCING_BLOCK_SIZE",
    "BlockState",
    "OwnBlock",
    "VhdxChain",
    "VhdxReader",
    "WrittenVhdx",
    "write_avhdx",
    "write_vhdx",
]
