"""Damaged and refused files: which copy wins, which error, and what it says."""

from __future__ import annotations

import io
import struct
import uuid

import pytest

from ckpt.domain.errors import (
    StorageError,
    VhdxChainMismatch,
    VhdxCorrupt,
    VhdxError,
    VhdxUnsupported,
)
from ckpt.storage.vhdx import VhdxChain, VhdxReader, write_avhdx, write_vhdx

from ._support import (
    BAT_OFFSET,
    HEADER_OFFSETS,
    METADATA_OFFSET,
    REGION_OFFSETS,
    MiB,
    crc_of,
    patch_header,
    refresh_crc,
    stream,
)

PARENT = uuid.UUID("12345678-1234-5678-9abc-def012345678")
RUNS = [(0, b"\x11" * 4096), (MiB + 512, b"\x22" * 1024)]


def _base() -> bytearray:
    out = io.BytesIO()
    write_vhdx(out, 4 * MiB, RUNS, block_size=MiB)
    return bytearray(out.getvalue())


def _child() -> bytearray:
    out = io.BytesIO()
    write_avhdx(out, 4 * MiB, PARENT, ".\\p.vhdx", "C:\\p.vhdx", RUNS, block_size=MiB)
    return bytearray(out.getvalue())


def _open(image: bytearray, name: str = "disk.vhdx") -> VhdxReader:
    return VhdxReader(stream(image), name)


def test_errors_are_storage_errors() -> None:
    for cls in (VhdxCorrupt, VhdxUnsupported, VhdxChainMismatch):
        assert issubclass(cls, VhdxError) and issubclass(cls, StorageError)


def test_writer_layout_matches_the_documented_offsets() -> None:
    image = _base()
    assert image[:8] == b"vhdxfile" and image[8:16].decode("utf-16-le") == "ckpt"
    sequences = []
    for offset in HEADER_OFFSETS:
        sig, crc, seq = struct.unpack_from("<4sIQ", image, offset)
        assert crc == crc_of(image[offset : offset + 4096])
        log_guid = image[offset + 48 : offset + 64]
        log_version, version, log_len, log_off = struct.unpack_from("<HHIQ", image, offset + 64)
        assert sig == b"head" and log_guid == bytes(16)
        assert (log_version, version, log_len, log_off) == (0, 1, MiB, MiB)
        sequences.append(seq)
    assert sequences == [1, 2]
    for offset in REGION_OFFSETS:
        assert struct.unpack_from("<4s4xII", image, offset) == (b"regi", 2, 0)
        assert struct.unpack_from("<I", image, offset + 4)[0] == crc_of(
            image[offset : offset + (64 << 10)]
        )
        bat, meta = (struct.unpack_from("<16sQII", image, offset + 16 + 32 * i) for i in (0, 1))
        assert bat[0] == uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08").bytes_le
        assert bat[1:] == (BAT_OFFSET, MiB, 1) and meta[1:] == (METADATA_OFFSET, MiB, 1)
    assert image[METADATA_OFFSET : METADATA_OFFSET + 8] == b"metadata"
    # Block 0 fully present at 4 MiB; block 1 too; blocks 2 and 3 zero (state 2).
    bat = struct.unpack_from("<4Q", image, BAT_OFFSET)
    assert bat == (6 | 4 << 20, 6 | 5 << 20, 2, 2)


def test_damaged_current_header_falls_back_to_the_other_copy() -> None:
    image = _base()
    other = uuid.uuid4()
    patch_header(image, 1, 8, struct.pack("<Q", 9))  # header 1 becomes current
    patch_header(image, 1, 32, other.bytes_le)  # with its own DataWriteGuid
    assert _open(image).data_write_guid == other
    image[HEADER_OFFSETS[0] + 200] ^= 0xFF  # reserved byte: only the CRC notices
    assert _open(image).data_write_guid != other


def test_both_headers_damaged_names_file_and_both_headers() -> None:
    image = _base()
    image[HEADER_OFFSETS[0] + 100] ^= 1
    image[HEADER_OFFSETS[1]] = ord("x")
    with pytest.raises(VhdxCorrupt) as err:
        _open(image, "broken.vhdx")
    message = str(err.value)
    assert message.startswith("broken.vhdx: headers: both copies are damaged")
    assert "header 1 (at 64 KiB): checksum mismatch" in message
    assert "header 2 (at 128 KiB): signature is b'xead'" in message


def test_damaged_region_table_1_falls_back_to_table_2() -> None:
    image = _base()
    struct.pack_into("<Q", image, REGION_OFFSETS[0] + 16 + 16, 999 * MiB)  # BAT far away
    refresh_crc(image, REGION_OFFSETS[0], 64 << 10)
    with pytest.raises(VhdxCorrupt, match="region table 1: BAT region"):
        _open(image)
    image[REGION_OFFSETS[0] + 1000] ^= 1  # now table 1 is invalid: table 2 is used
    assert _open(image).read(0, 4096) == b"\x11" * 4096


def test_both_region_tables_damaged() -> None:
    image = _base()
    image[REGION_OFFSETS[0] + 20] ^= 1
    image[REGION_OFFSETS[1] + 40000] ^= 1
    with pytest.raises(VhdxCorrupt, match=r"region tables: both copies are damaged.*checksum"):
        _open(image)


def test_non_empty_log_is_refused_not_replayed() -> None:
    image = _base()
    for number in (1, 2):
        patch_header(image, number, 48, uuid.uuid4().bytes_le)
    with pytest.raises(VhdxUnsupported, match=r"^disk.vhdx: log: the log is not empty"):
        _open(image)


def test_unknown_required_region_is_unsupported_optional_one_ignored() -> None:
    image = _base()
    for offset in REGION_OFFSETS:
        struct.pack_into("<I", image, offset + 8, 3)
        struct.pack_into("<16sQII", image, offset + 16 + 64, uuid.uuid4().bytes_le, 0, 0, 0)
        refresh_crc(image, offset, 64 << 10)
    _open(image)  # optional: ignored
    for offset in REGION_OFFSETS:
        struct.pack_into("<I", image, offset + 16 + 64 + 28, 1)
        refresh_crc(image, offset, 64 << 10)
    with pytest.raises(VhdxUnsupported, match="unknown required region"):
        _open(image)


def _item_offset(image: bytearray, index: int) -> int:
    """File offset of metadata item ``index`` (0 File Parameters, 1 size, 2 logical
    sector, 3 physical sector, 4 page 83, 5 parent locator) as the writer lays it out."""
    (relative,) = struct.unpack_from("<I", image, METADATA_OFFSET + 32 + 32 * index + 16)
    return METADATA_OFFSET + int(relative)


@pytest.mark.parametrize(
    ("index", "value", "error", "text"),
    [
        (0, struct.pack("<I", 3 * MiB), VhdxCorrupt, "File Parameters: block size 3145728"),
        (0, struct.pack("<I", 512 * MiB), VhdxCorrupt, "not a power of two from 1 MiB"),
        (1, struct.pack("<Q", 1000), VhdxCorrupt, "Virtual Disk Size: 1000"),
        (1, struct.pack("<Q", 200 << 30), VhdxCorrupt, "131072 entries, the disk needs 204849"),
        (2, struct.pack("<I", 1024), VhdxCorrupt, "Logical Sector Size: 1024"),
        (3, struct.pack("<I", 0), VhdxCorrupt, "Physical Sector Size: 0"),
    ],
)
def test_bad_metadata_values(index: int, value: bytes, error: type, text: str) -> None:
    image = _base()
    offset = _item_offset(image, index)
    image[offset : offset + len(value)] = value
    with pytest.raises(error, match=text):
        _open(image)


def test_bad_metadata_table() -> None:
    image = _base()
    image[METADATA_OFFSET] = ord("M")
    with pytest.raises(VhdxCorrupt, match="metadata table: signature"):
        _open(image)
    image = _base()
    struct.pack_into("<I", image, METADATA_OFFSET + 32 + 16, MiB - 4)  # File Parameters at the end
    with pytest.raises(VhdxCorrupt, match="item File Parameters: 8 bytes at 1048572"):
        _open(image)
    image = _base()
    image[METADATA_OFFSET + 32 + 32 : METADATA_OFFSET + 48 + 32] = uuid.uuid4().bytes_le
    with pytest.raises(VhdxUnsupported, match="unknown required item"):
        _open(image)  # the Virtual Disk Size entry now names an unknown item, flag IsRequired


def test_parent_locator_checks() -> None:
    image = _child()
    locator = _item_offset(image, 5)
    assert _open(image).parent_linkages == (PARENT,)
    key = image.find("parent_linkage".encode("utf-16-le"), locator)
    image[key : key + 2] = "P".encode("utf-16-le")
    with pytest.raises(VhdxCorrupt, match="Parent Locator: no parent_linkage"):
        _open(image)
    image = _child()
    struct.pack_into("<H", image, locator + 18, 200)  # 200 entries cannot fit
    with pytest.raises(VhdxCorrupt, match="200 entries do not fit"):
        _open(image)


def test_bat_entries_are_checked_when_used() -> None:
    image = _base()
    struct.pack_into("<Q", image, BAT_OFFSET + 16, 4)  # block 2: reserved state 4
    reader = _open(image)
    assert reader.read(0, 4096) == b"\x11" * 4096  # block 0 is fine
    with pytest.raises(VhdxCorrupt, match="BAT entry of payload block 2: reserved state 4"):
        reader.read(2 * MiB, 512)
    struct.pack_into("<Q", image, BAT_OFFSET + 16, 7 | 4 << 20)
    with pytest.raises(VhdxCorrupt, match="partially present in a file without a parent"):
        list(_open(image).iter_blocks())
    struct.pack_into("<Q", image, BAT_OFFSET + 16, 6)  # fully present at offset 0
    with pytest.raises(VhdxCorrupt, match="payload block 2: offset 0 lies in the header section"):
        _open(image).read(2 * MiB, 512)
    struct.pack_into("<Q", image, BAT_OFFSET + 16, 6 | 4000 << 20)
    with pytest.raises(VhdxCorrupt, match="payload block 2: 1048576 bytes at 4000 MiB lie beyond"):
        _open(image).read(0, 4 * MiB)


def test_partially_present_block_needs_its_sector_bitmap() -> None:
    image = _child()
    ratio = (1 << 23) * 512 // MiB
    struct.pack_into("<Q", image, BAT_OFFSET + 8 * ratio, 0)  # chunk 0 bitmap: not present
    with pytest.raises(
        VhdxCorrupt, match="sector bitmap 0: state 0, but payload block 0 is partially"
    ):
        _open(image, "c.avhdx").read_own(0, 4 * MiB)


def test_truncated_file() -> None:
    image = _base()
    with pytest.raises(VhdxCorrupt, match="less than the 1 MiB header section"):
        _open(image[: 512 * 1024])
    with pytest.raises(VhdxCorrupt, match="region table 1: BAT region"):
        _open(image[: 3 * MiB + 100])
    reader = _open(image[: 5 * MiB - 1])
    with pytest.raises(VhdxCorrupt, match="payload block 1"):
        reader.read(MiB, 512)


def test_differencing_file_is_read_through_a_chain() -> None:
    with pytest.raises(VhdxUnsupported, match="read it through VhdxChain"):
        _open(_child()).read(0, 512)


def test_chain_checks_linkage_order_and_sizes() -> None:
    base = _open(_base(), "base.vhdx")
    child = _open(_child(), "child.avhdx")
    with pytest.raises(VhdxChainMismatch, match=r"child.avhdx expects a parent with DataWrite"):
        VhdxChain([child, base])
    assert VhdxChain([child, base], check_linkage=False).read(MiB, 512) == b"\0" * 512
    with pytest.raises(VhdxChainMismatch, match="must be a base disk"):
        VhdxChain([base, child])
    with pytest.raises(VhdxChainMismatch, match="is listed as its parent"):
        VhdxChain([base, base])
    other = io.BytesIO()
    write_vhdx(other, 8 * MiB, [], data_write_guid=PARENT)
    with pytest.raises(VhdxChainMismatch, match="does not match its parent"):
        VhdxChain([child, VhdxReader(other, "big.vhdx")])


def test_writer_refuses_what_vhdx_cannot_express() -> None:
    out = io.BytesIO()
    with pytest.raises(VhdxUnsupported, match="block size 3145728"):
        write_vhdx(out, 4 * MiB, [], block_size=3 * MiB)
    with pytest.raises(VhdxUnsupported, match="block size 524288"):
        write_vhdx(out, 4 * MiB, [], block_size=MiB // 2)
    with pytest.raises(VhdxUnsupported, match="logical sector size 1024"):
        write_vhdx(out, 4 * MiB, [], logical_sector_size=1024)
    with pytest.raises(VhdxUnsupported, match="virtual size 1000"):
        write_vhdx(out, 1000, [])
    with pytest.raises(VhdxUnsupported, match="relative_path"):
        write_avhdx(out, 4 * MiB, PARENT, "", "C:\\p", [])


@pytest.mark.parametrize(
    ("runs", "text"),
    [
        ([(100, b"x" * 512)], "not aligned"),
        ([(0, b"x" * 100)], "not aligned"),
        ([(4096, b"x" * 512), (0, b"x" * 512)], "overlaps or precedes"),
        ([(0, b"x" * 1024), (512, b"x" * 512)], "overlaps or precedes"),
        ([(4 * MiB - 512, b"x" * 1024)], "ends beyond the disk"),
    ],
)
def test_writer_refuses_bad_runs(runs: list[tuple[int, bytes]], text: str) -> None:
    with pytest.raises(ValueError, match=text):
        write_vhdx(io.BytesIO(), 4 * MiB, runs, block_size=MiB)


@pytest.mark.parametrize("state", [0, 1, 2, 3])
def test_every_absent_state_reads_as_zero_or_parent(state: int) -> None:
    # Block 1 holds data in both files; re-marking it shows what each state means.
    base, child = _base(), _child()
    for image in (base, child):
        struct.pack_into("<Q", image, BAT_OFFSET + 8, state)
    assert _open(base).read(MiB, MiB) == bytes(MiB)  # a base file: always zero
    own = _open(child).read_own(MiB, MiB)
    if state == 0:  # not present: the parent decides
        assert own == []
    else:  # undefined, zero, unmapped: zeros that hide the parent
        assert own == [(MiB, bytes(MiB))]
    parent = io.BytesIO()
    write_vhdx(parent, 4 * MiB, [(MiB, b"\x99" * MiB)], block_size=MiB, data_write_guid=PARENT)
    chain = VhdxChain([_open(child), VhdxReader(parent)])
    assert chain.read(MiB, MiB) == (b"\x99" * MiB if state == 0 else bytes(MiB))
