"""Hostile input: flipped, overwritten and truncated bytes of test.vmcx and of
files we wrote, and random bytes.

Whatever the bytes, reading must end in a result or a ``ConfigurationError``,
within 1 s, without allocating much more than the file's own size. Half the
mutations re-seal every CRC-32 (``_support.reseal``), so that they get past the
checksums to the field checks behind them.
"""

from __future__ import annotations

import io
import signal
import struct
import tracemalloc
from contextlib import suppress
from datetime import UTC, datetime
from functools import cache
from uuid import UUID

import pytest
from hostile_support import deadline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt.domain.errors import ConfigurationError
from ckpt.storage.hyperv_config import CheckpointKind, Configuration, ConfiguredDisk, FileKind
from ckpt.storage.hyperv_config.vmcx import read_vmcx, read_vmrs_summary, write_vmcx
from ckpt.storage.hyperv_config.vmcx_file import read_key_tree

from ._support import FIXTURES, reseal

TIME_LIMIT = 1.0  # seconds; test.vmcx reads in ~3 ms
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INTERESTING = [0, 1, 2, 9, 0x7F, 0x80, 0xFF, 0xFFFF, 0x1000, 0xFFFFFFFF, 1 << 31, 1 << 63]


@cache
def _valid(kind: str) -> bytes:
    if kind == "windows":
        path = FIXTURES / "test.vmcx"
        if not path.exists():
            pytest.skip(f"Windows fixture {path} is not there")
        return path.read_bytes()
    config = Configuration(
        FileKind.CHECKPOINT, "vmcx", UUID(int=3), "Before update", "9.0", vm_id=UUID(int=4),
        parent=UUID(int=5), created_at=datetime(2026, 12, 1, tzinfo=UTC),
        checkpoint_kind=CheckpointKind.STANDARD,
        disks=(ConfiguredDisk("scsi0/1", "C:\\VMs\\a.avhdx"),),
        state_files=("C:\\VMs\\Snapshots\\x.vmrs", "C:\\VMs\\Snapshots\\y.vmgs" + "z" * 1100),
    )  # fmt: skip
    out = io.BytesIO()
    write_vmcx(out, config)  # the long .vmgs path is a file object
    return out.getvalue()


# Where the structures are, in both files: file headers, object table, replay
# log header, and the first bytes of the first key tables.
TARGETS = {
    "windows": [(0, 46), (0x1000, 46), (0x2000, 8 + 9 * 18), (0xA000, 34), (0x3000, 0x400)],
    "ours": [(0, 46), (0x1000, 46), (0x2000, 8 + 3 * 18), (0x3000, 34), (0x7000, 0x400)],
}


@st.composite
def mutation(draw: st.DrawFn) -> tuple[str, list[tuple[int, bytes]], int | None, bool]:
    kind = draw(st.sampled_from(sorted(TARGETS)))
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        start, length = draw(st.sampled_from(TARGETS[kind]))
        pos = start + draw(st.integers(0, length - 1))
        width = draw(st.sampled_from([1, 2, 4, 8]))
        value = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, 2**64 - 1)))
        edits.append((pos, (value % (1 << 8 * width)).to_bytes(width, "little")))
    truncate = draw(st.one_of(st.none(), st.integers(0, len(_valid(kind)))))
    return kind, edits, truncate, draw(st.booleans())


def _read_bounded(data: bytes) -> None:
    tracemalloc.start()
    try:
        with deadline(TIME_LIMIT), suppress(ConfigurationError):
            read_vmcx(io.BytesIO(data), "fuzz.vmcx")
            read_vmrs_summary(io.BytesIO(data), "fuzz.vmrs")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # A key tree of an 80 KiB file is ~0.5 MiB of Python objects; a reader that
    # allocated by a fuzzed length would ask for far more.
    assert peak < 4 << 20, f"peak {peak} bytes for a {len(data)}-byte file"


needs_alarm = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM")


@needs_alarm
@FUZZ
@given(mutation())
def test_a_mutated_file_fails_only_with_configuration_error(
    case: tuple[str, list[tuple[int, bytes]], int | None, bool],
) -> None:
    kind, edits, truncate, sealed = case
    image = bytearray(_valid(kind))
    for pos, value in edits:
        image[pos : pos + len(value)] = value
    if sealed:
        reseal(image)
    if truncate is not None:
        del image[truncate:]
    _read_bounded(bytes(image))


@needs_alarm
@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=0x3000), st.booleans())
def test_random_bytes_fail_only_with_configuration_error(noise: bytes, headed: bool) -> None:
    image = bytearray(noise)
    if headed:  # a valid-looking start, so the noise reaches the object table
        image[0:0] = _valid("ours")[:0x2000]
        reseal(image)
    _read_bounded(bytes(image))


@pytest.mark.parametrize("kind", ["windows", "ours"])
def test_every_single_byte_flip_of_a_structure_is_caught(kind: str) -> None:
    # Without re-sealing, every flip inside a checksummed structure must be an
    # error (the CRC-32), never a silently different tree.
    valid = _valid(kind)
    for start, length in TARGETS[kind]:
        for pos in range(start, start + min(length, 200)):
            image = bytearray(valid)
            image[pos] ^= 0x10
            try:
                tree = read_key_tree(io.BytesIO(bytes(image)))
            except ConfigurationError:
                continue
            # a flip in an older header copy or unused slack may be harmless,
            # but then the tree must be exactly the valid one
            assert list(tree.walk()) == list(read_key_tree(io.BytesIO(valid)).walk()), hex(pos)


def test_resealed_mutations_reach_the_field_checks() -> None:
    # A re-sealed key table claiming index 0 fails on the index, not the CRC.
    image = bytearray(_valid("ours"))
    struct.pack_into("<H", image, 0x7002, 0)
    reseal(image)
    with pytest.raises(ConfigurationError, match=r"key table at 0x7000: table index 0"):
        read_key_tree(io.BytesIO(bytes(image)), "x")


def test_a_parent_cycle_is_an_error() -> None:
    # Entry 1 ("configuration", a root node) made the child of entry 2 (its own child).
    image = bytearray(_valid("ours"))
    first = 0x7000 + 10
    second = first + struct.unpack_from("<I", image, first + 2)[0]
    struct.pack_into("<HI", image, first + 6, 1, second - 0x7000)
    reseal(image)
    with pytest.raises(ConfigurationError, match="parent cycle"):
        read_key_tree(io.BytesIO(bytes(image)), "x")


def test_deadline_catches_a_loop() -> None:
    with pytest.raises(TimeoutError), deadline(0.05):
        while True:
            pass
