"""Damage VhdReader must notice, naming the file and the structure; the
footer's copy at 0, 511-byte footers, and what is_vhd recognises."""

from __future__ import annotations

import io
import struct
import uuid
from datetime import UTC, datetime

import pytest

from ckpt.domain.errors import VhdxCorrupt, VhdxUnsupported
from ckpt.storage.vhd import VhdReader, is_vhd, write_avhd, write_fixed_vhd, write_vhd
from ckpt.storage.vhd.geometry import chs

from ._support import (
    BAT_OFFSET,
    FOOTER_CHECKSUM,
    HEADER_CHECKSUM,
    HEADER_OFFSET,
    MiB,
    checksum,
    reseal,
    reseal_all,
    stream,
)

SIZE = 4 * MiB
RUNS = [(0, b"\x5a" * 3072), (MiB, b"\xa5" * MiB), (3 * MiB + 4096, b"\x77" * 8192)]


def _dynamic() -> bytearray:
    out = io.BytesIO()
    write_vhd(out, SIZE, RUNS)
    return bytearray(out.getvalue())


def _differencing() -> bytearray:
    out = io.BytesIO()
    write_avhd(
        out, SIZE, uuid.uuid4(), ".\\p.vhd", "C:\\p.vhd", RUNS,
        parent_timestamp=datetime(2020, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    return bytearray(out.getvalue())


def _fixed() -> bytearray:
    out = io.BytesIO()
    write_fixed_vhd(out, SIZE, RUNS)
    return bytearray(out.getvalue())


def _open(image: bytearray, name: str = "disk.vhd") -> VhdReader:
    return VhdReader(stream(image), name)


def _expected(size: int = SIZE) -> bytes:
    image = bytearray(size)
    for offset, data in RUNS:
        image[offset : offset + len(data)] = data
    return bytes(image)


def test_the_checksums_are_the_specifications_byte_sums() -> None:
    image = _dynamic()
    footer = image[-512:]
    assert struct.unpack_from(">I", footer, FOOTER_CHECKSUM)[0] == checksum(footer, FOOTER_CHECKSUM)
    header = image[HEADER_OFFSET : HEADER_OFFSET + 1024]
    assert struct.unpack_from(">I", header, HEADER_CHECKSUM)[0] == checksum(header, HEADER_CHECKSUM)
    assert image[:512] == footer  # the copy at 0 is the same footer


@pytest.mark.parametrize("make", [_dynamic, _fixed])
def test_a_footer_checksum_failure_names_the_footer(make: object) -> None:
    image = make()  # type: ignore[operator]
    image[-512 + 100] ^= 1  # a reserved byte: only the checksum can tell
    if make is _dynamic:
        image[100] ^= 1  # the copy too, or it would stand in
    with pytest.raises(VhdxCorrupt, match=r"^disk\.vhd: footer at the end: checksum 0x"):
        _open(image)


def test_a_header_checksum_failure_names_the_dynamic_header() -> None:
    image = _dynamic()
    image[HEADER_OFFSET + 900] ^= 0x10
    with pytest.raises(VhdxCorrupt, match=r"^disk\.vhd: dynamic header: checksum"):
        _open(image)


def test_a_damaged_end_footer_is_replaced_by_the_copy_at_0() -> None:
    image = _dynamic()
    image[-512 + 50] ^= 0xFF  # the current size, without resealing: a torn write
    reader = _open(image)
    assert reader.footer_from_copy
    assert reader.read(0, SIZE) == _expected()
    image[-512:] = bytes(512)  # gone altogether
    assert _open(image).read(0, SIZE) == _expected()


def test_a_sound_copy_that_disagrees_with_the_end_footer_is_refused() -> None:
    image = _dynamic()
    struct.pack_into(">Q", image, 48, SIZE - 512)  # the copy's current size
    reseal(image, 0, 512, FOOTER_CHECKSUM)
    with pytest.raises(VhdxCorrupt, match="footer copy at 0: its current size"):
        _open(image)


def test_a_damaged_copy_at_0_is_ignored_when_the_end_footer_is_sound() -> None:
    image = _dynamic()
    image[60] ^= 0xFF
    assert not _open(image).footer_from_copy
    assert _open(image).read(0, SIZE) == _expected()


def test_a_fixed_disk_has_no_copy_to_fall_back_on() -> None:
    image = _fixed()
    image[-512:-504] = b"XXXXXXXX"
    with pytest.raises(VhdxCorrupt, match="footer at the end: no conectix cookie"):
        _open(image)


@pytest.mark.parametrize("make", [_dynamic, _fixed])
def test_a_511_byte_footer_is_read(make: object) -> None:
    image = make()  # type: ignore[operator]
    assert image[-1] == 0  # the byte Virtual PC before 2004 did not write
    del image[-1]
    reader = _open(image)
    assert not reader.footer_from_copy
    assert reader.read(0, SIZE) == _expected()


def test_fields_are_checked_past_the_checksum() -> None:
    image = _dynamic()
    struct.pack_into(">I", image, len(image) - 512 + 60, 5)  # disk type 5 (deprecated)
    struct.pack_into(">I", image, 60, 5)
    reseal_all(image, dynamic=True)
    with pytest.raises(VhdxUnsupported, match="footer at the end: disk type 5"):
        _open(image)
    image = _dynamic()
    struct.pack_into(">I", image, HEADER_OFFSET + 32, 3000)  # block size
    reseal_all(image, dynamic=True)
    with pytest.raises(VhdxCorrupt, match="dynamic header: block size 3000"):
        _open(image)
    image = _dynamic()
    struct.pack_into(">I", image, HEADER_OFFSET + 28, 1)  # max table entries
    reseal_all(image, dynamic=True)
    with pytest.raises(VhdxCorrupt, match="max table entries 1 is fewer than the 2 blocks"):
        _open(image)
    image = _dynamic()
    struct.pack_into(">Q", image, HEADER_OFFSET + 16, len(image))  # table offset
    reseal_all(image, dynamic=True)
    with pytest.raises(VhdxCorrupt, match="dynamic header: table offset"):
        _open(image)


def test_a_bat_entry_outside_the_data_area_names_the_entry() -> None:
    image = _dynamic()
    struct.pack_into(">I", image, BAT_OFFSET + 4, len(image) // 512)  # block 1 past the end
    reader = _open(image)
    assert reader.read(0, 4096)[:3072] == b"\x5a" * 3072  # block 0 is still fine
    with pytest.raises(VhdxCorrupt, match=r"disk\.vhd: BAT entry 1: sector 0x"):
        reader.read(2 * MiB, 512)
    struct.pack_into(">I", image, BAT_OFFSET, 1)  # block 0 over the dynamic header
    with pytest.raises(VhdxCorrupt, match="BAT entry 0"):
        _open(image).block_state(0)


def test_a_fixed_file_shorter_than_its_disk_is_corrupt() -> None:
    image = _fixed()
    del image[MiB : 2 * MiB]
    with pytest.raises(VhdxCorrupt, match="fixed disk data: the footer's current size"):
        _open(image)


def test_locator_entries_are_checked() -> None:
    image = _differencing()
    entry = HEADER_OFFSET + 576  # entry 0: W2ku
    assert image[entry : entry + 4] == b"W2ku"
    struct.pack_into(">Q", image, entry + 16, len(image) - 4)  # data offset near the end
    reseal_all(image, dynamic=True)
    with pytest.raises(VhdxCorrupt, match=r"parent locator entry 0 \(b'W2ku'\): .* beyond the end"):
        _open(image)
    image = _differencing()
    struct.pack_into(">I", image, entry + 8, 3)  # odd UTF-16 length
    reseal_all(image, dynamic=True)
    with pytest.raises(VhdxCorrupt, match="odd length 3"):
        _open(image)
    image = _differencing()
    struct.pack_into(">I", image, entry + 8, 100_000)
    reseal_all(image, dynamic=True)
    with pytest.raises(VhdxCorrupt, match="data length 100000"):
        _open(image)


def test_a_locator_data_space_in_sectors_is_read_as_well_as_in_bytes() -> None:
    image = _differencing()
    entry = HEADER_OFFSET + 576
    assert struct.unpack_from(">I", image, entry + 4)[0] == 512  # ckpt writes bytes, as Windows
    struct.pack_into(">I", image, entry + 4, 1)  # the specification's unit: one sector
    reseal_all(image, dynamic=True)
    assert _open(image).parent_locator["absolute_win32_path"] == "C:\\p.vhd"  # type: ignore[index]


def test_is_vhd_looks_for_the_cookie_at_the_end_and_at_0() -> None:
    for image in (_dynamic(), _fixed(), _differencing()):
        assert is_vhd(stream(image), len(image))
        del image[-1]
        assert is_vhd(stream(image), len(image))  # 511-byte footer, or the copy at 0
    raw = bytearray(SIZE)
    assert not is_vhd(stream(raw), len(raw))
    assert not is_vhd(stream(b"conect"), 6)
    vhdx = bytearray(b"vhdxfile" + bytes(SIZE))
    assert not is_vhd(stream(vhdx), len(vhdx))


def test_chs_follows_the_specification() -> None:
    # Values worked by hand from the appendix's algorithm.
    assert chs(10 * MiB) == (301, 4, 17)  # 20480 sectors / 17 = 1204 -> 4 heads
    assert chs(127 * 1024 * MiB) == (65278, 16, 255)  # 266338304 sectors / 255 / 16
    assert chs(2000 * 1024 * MiB) == (65535, 16, 255)  # capped
    assert chs(512) == (0, 4, 17)


def test_sector_bitmaps_are_most_significant_bit_first_on_disk() -> None:
    # The reader and writer share the bitmap code, and qemu and dissect ignore
    # bitmaps: so the bytes are checked here against the specification.
    out = io.BytesIO()
    write_avhd(
        out, MiB, uuid.uuid4(), ".\\p.vhd", "C:\\p.vhd", [(0, b"a" * 512), (9 * 512, b"b" * 512)],
        parent_timestamp=datetime(2020, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    image = bytearray(out.getvalue())
    block = struct.unpack_from(">I", image, BAT_OFFSET)[0] * 512
    assert image[block : block + 3] == b"\x80\x40\x00"  # sectors 0 and 9
    assert image[block + 512 : block + 1024] == b"a" * 512  # data after a one-sector bitmap
    image[block] = 0x01  # sector 7 instead of sector 0
    own = _open(image).read_own(0, MiB)
    assert [(o, len(d)) for o, d in own] == [(7 * 512, 512), (9 * 512, 512)]


def test_a_dynamic_disk_reads_zero_where_its_bitmap_bit_is_clear() -> None:
    image = _dynamic()
    block = struct.unpack_from(">I", image, BAT_OFFSET)[0] * 512
    assert image[block] == 0xFF  # ckpt sets every bit of a stored dynamic block
    image[block] = 0x7F  # sector 0 "never written"
    reader = _open(image)
    assert reader.read(0, 1024) == bytes(512) + b"\x5a" * 512
    assert reader.block_state(0).name == "FULLY_PRESENT"


def test_the_reader_answers_what_vhdx_readers_are_asked() -> None:
    reader = _open(_fixed())
    assert reader.leave_block_allocated and reader.block_size == 2 * MiB
    assert reader.logical_sector_size == reader.physical_sector_size == 512
    assert reader.file_write_guid == reader.unique_id == reader.virtual_disk_id
    assert reader.parent_timestamp is None and reader.parent_linkages == ()
    dynamic = _open(_dynamic())
    assert not dynamic.leave_block_allocated and dynamic.block_count == 2
    with pytest.raises(IndexError):
        dynamic.block_state(2)
