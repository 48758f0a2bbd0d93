"""ckpt.storage.vhd: the VHD / AVHD file format (Virtual Hard Disk Image
Format Specification), on streams.

Reads fixed, dynamic and differencing (AVHD) files, checking every structure
(footer and its copy at 0 with their checksums, the dynamic header and its
checksum, the BAT's bounds, each BAT entry, parent locators); writes new
fixed, dynamic and differencing files. docs/vhd.md specifies what is read and
written byte by byte. Errors are the VHDX codec's: ``VhdxCorrupt``,
``VhdxUnsupported`` (and ``VhdxChainMismatch`` from ``VhdxChain``).

Modules, from the bottom up:
    layout          sizes, cookies, disk types, platform codes, time stamps
    checksum        the one's complement byte sum of footer and header
    geometry        CHS, blocks and sector bitmap sizes
    footer          the footer, its copy at 0, the 511-byte variant
    dynamic_header  the dynamic disk header and its locator entries
    parent_locator  the locator's paths and linkage, VHDX style
    bat             BAT entries
    bitmap          sector bitmaps (most significant bit first) <-> runs
    reader          VhdReader, is_vhd
    (ckpt.storage.run_blocks: cutting input runs into blocks, shared with VHDX)
    writer          write_vhd, write_avhd, write_fixed_vhd
"""

from .layout import DEFAULT_BLOCK_SIZE, MAX_VIRTUAL_SIZE
from .reader import VhdReader, is_vhd
from .writer import WrittenVhd, write_avhd, write_fixed_vhd, write_vhd

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "MAX_VIRTUAL_SIZE",
    "VhdReader",
    "WrittenVhd",
    "is_vhd",
    "write_avhd",
    "write_fixed_vhd",
    "write_vhd",
]
