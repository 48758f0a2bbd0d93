"""Image formats: tell a container file (VHDX, VHD, qcow2) from a raw disk image.

A raw image has no header: its first byte is the disk's first byte. Capturing a
container as if it were raw stores its headers, tables and unallocated space as
disk content (a 12.8 KB VHDX of data took 37 MiB, issue 11), so a capture that
expects a raw image first looks for the signatures these formats put at fixed
places:

- VHDX: the file type identifier ``vhdxfile`` at offset 0 (MS-VHDX 2.2.1).
- VHD: the footer cookie ``conectix`` in the last 512 bytes (the footer), or at
  offset 0 (a dynamic or differencing VHD keeps a copy of its footer there);
  VHDs written before Virtual PC 2004 have a 511-byte footer.
- qcow2 (and qcow1): ``QFI\\xfb`` at offset 0.

A guest disk whose first sector happens to hold one of these byte strings is
read as that format too: ``--format raw`` (``raw=True``) captures it as it is.
"""

from __future__ import annotations

import os
from typing import BinaryIO

VHDX_SIGNATURE = b"vhdxfile"
VHD_COOKIE = b"conectix"
VHD_FOOTER = 512
FOOTERS = (VHD_FOOTER, 511)  # VHDs before Virtual PC 2004 have a 511-byte footer
QCOW_MAGIC = b"QFI\xfb"

VHDX = "a VHDX file"
VHD = "a VHD file"
QCOW2 = "a qcow2 image"


def _read_at(src: BinaryIO, offset: int, length: int) -> bytes:
    try:
        return os.pread(src.fileno(), length, offset)
    except (AttributeError, OSError, ValueError):
        src.seek(offset)
        return src.read(length) or b""


def container_format(src: BinaryIO, size: int) -> str | None:
    """What container ``src`` (``size`` bytes) is, as a phrase ("a VHDX file"),
    or None when it looks like a raw image. Reads at most 3 x 8 bytes."""
    kind = container_format_of_head(_read_at(src, 0, 8))
    if kind is not None:
        return kind
    for footer in FOOTERS:
        if size >= footer and _read_at(src, size - footer, 8) == VHD_COOKIE:
            return VHD
    return None


def container_format_of_tail(tail: bytes) -> str | None:
    """A VHD, from the last ``VHD_FOOTER`` bytes of a source (or all of a shorter one)."""
    for footer in FOOTERS:
        if len(tail) >= footer and tail[-footer:][:8] == VHD_COOKIE:
            return VHD
    return None


def container_format_of_head(head: bytes) -> str | None:
    """What container a source whose first 8 bytes are ``head`` is, judged by them
    alone (a pipe cannot be asked for its end, where a fixed VHD keeps its footer)."""
    if head == VHDX_SIGNATURE:
        return VHDX
    if head[:4] == QCOW_MAGIC:
        return QCOW2
    if head == VHD_COOKIE:
        return VHD
    return None
