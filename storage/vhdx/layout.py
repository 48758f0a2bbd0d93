"""Where each VHDX structure sits and the GUIDs that name regions and items.

Terms (MS-VHDX; all integers little-endian, GUIDs in Microsoft byte order,
i.e. ``uuid.UUID.bytes_le``):
    header section  the file's first MiB: file identifier at 0, header 1 at
                    64 KiB, header 2 at 128 KiB, region table 1 at 192 KiB and
                    its copy, region table 2, at 256 KiB.
    region          a 1 MiB aligned span of the file named by a GUID in the
                    region table; ckpt knows the BAT and the metadata region.
    metadata item   a small value (block size, disk size, ...) inside the
                    metadata region, named by a GUID in the metadata table.
    payload block   ``block_size`` bytes of the virtual disk, stored at a
                    1 MiB aligned file offset.
    sector bitmap   1 MiB holding one bit per logical sector of a *chunk*
                    (2^23 sectors); used by differencing files only.
"""

from __future__ import annotations

from typing import Final
from uuid import UUID

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB
TiB: Final = 1024 * GiB

# Every region and block offset is a multiple of this (MS-VHDX 2.2).
ALIGNMENT: Final = MiB

FILE_IDENTIFIER_SIGNATURE: Final = b"vhdxfile"
CREATOR_OFFSET: Final = 8
CREATOR_SIZE: Final = 512  # UTF-16LE, 256 characters, zero padded

HEADER_OFFSETS: Final = (64 * KiB, 128 * KiB)
HEADER_SIZE: Final = 4 * KiB
HEADER_SIGNATURE: Final = b"head"
HEADER_VERSION: Final = 1
LOG_VERSION: Final = 0

REGION_TABLE_OFFSETS: Final = (192 * KiB, 256 * KiB)
REGION_TABLE_SIZE: Final = 64 * KiB
REGION_TABLE_SIGNATURE: Final = b"regi"
# (64 KiB - 16-byte table header) / 32-byte entries = 2047.
REGION_TABLE_MAX_ENTRIES: Final = 2047

METADATA_TABLE_SIZE: Final = 64 * KiB
METADATA_SIGNATURE: Final = b"metadata"
METADATA_MAX_ENTRIES: Final = 2047  # (64 KiB - 32-byte header) / 32-byte entries
METADATA_ITEM_MAX_SIZE: Final = MiB

# The first region may start after the header section, at 1 MiB.
HEADER_SECTION_SIZE: Final = MiB

MIN_BLOCK_SIZE: Final = MiB
MAX_BLOCK_SIZE: Final = 256 * MiB
SECTOR_SIZES: Final = (512, 4096)
MAX_VIRTUAL_SIZE: Final = 64 * TiB
SECTOR_BITMAP_BLOCK_SIZE: Final = MiB
SECTORS_PER_BITMAP_BLOCK: Final = 1 << 23  # 1 MiB * 8 bits

BAT_REGION: Final = UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION: Final = UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")

FILE_PARAMETERS: Final = UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE: Final = UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE_83_DATA: Final = UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE: Final = UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE: Final = UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR: Final = UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
VHDX_PARENT_LOCATOR_TYPE: Final = UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")

ZERO_GUID: Final = UUID(int=0)


def describe_offset(offset: int) -> str:
    """A byte offset as people read it in a hex dump: "192 KiB", "3 MiB", "0x1234"."""
    if offset and offset % MiB == 0:
        return f"{offset // MiB} MiB"
    if offset and offset % KiB == 0:
        return f"{offset // KiB} KiB"
    return f"byte {offset:#x}"
