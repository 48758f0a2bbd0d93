"""Write -> read: key trees and configurations come back as written, by our reader
and by dissect.hypervisor (an independent reader of the container)."""

from __future__ import annotations

import dataclasses
import io
import re
import struct
import zlib
from datetime import UTC, datetime
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt.storage.hyperv_config import CheckpointKind, Configuration, ConfiguredDisk, FileKind
from ckpt.storage.hyperv_config.vmcx import read_vmcx, write_vmcx
from ckpt.storage.hyperv_config.vmcx_file import Value, read_key_tree, write_key_tree

from ._support import dissect_leaves

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

keys = st.text(alphabet="abcdefgh_XYZ019-", min_size=1, max_size=12)
values: st.SearchStrategy[Value] = st.one_of(
    st.booleans(),
    st.integers(-(1 << 63), (1 << 64) - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.binary(max_size=40),
    # 2 KiB or more (in UTF-16): file objects; repeated so that Hypothesis draws little
    st.text(min_size=1, max_size=3).map(lambda s: s * (1100 // len(s) + 1)),
    st.binary(min_size=1, max_size=5).map(lambda b: b * (0x900 // len(b))),
)


@st.composite
def trees(draw: st.DrawFn, depth: int = 0) -> list[tuple[str, Value]]:
    """Leaves (path, value) in depth-first insertion order, as walk() yields them."""
    leaves: list[tuple[str, Value]] = []
    names = draw(st.lists(keys, min_size=1, max_size=4, unique=True))
    for name in names:
        if depth < 3 and draw(st.booleans()):
            leaves += [(f"{name}/{path}", value) for path, value in draw(trees(depth + 1))]
        else:
            leaves.append((name, draw(values)))
    return leaves


@FAST
@given(trees())
def test_a_key_tree_reads_back_as_written_by_both_readers(leaves: list[tuple[str, Value]]) -> None:
    # under one root node, as in every Windows file (dissect cannot read a root leaf)
    leaves = [(f"configuration/{path}", value) for path, value in leaves]
    out = io.BytesIO()
    write_key_tree(out, leaves)
    assert list(read_key_tree(io.BytesIO(out.getvalue())).walk()) == leaves
    assert dissect_leaves(out.getvalue()) == dict(leaves)


def test_a_lone_surrogate_survives_our_round_trip() -> None:
    # UTF-16 strings in the file need not be well formed; dissect would refuse this one.
    leaves: list[tuple[str, Value]] = [("configuration/odd", "a\ud800b")]
    out = io.BytesIO()
    write_key_tree(out, leaves)
    assert list(read_key_tree(io.BytesIO(out.getvalue())).walk()) == leaves


def test_many_keys_span_many_key_tables() -> None:
    leaves: list[tuple[str, Value]] = [
        (f"configuration/n{i:03d}/value", "x" * (i % 90)) for i in range(400)
    ]
    out = io.BytesIO()
    write_key_tree(out, leaves)
    data = out.getvalue()
    assert data.count(b"\x02\x00", 0x7000, len(data)) and len(data) > 0x7000 + 8 * 0x1000
    assert list(read_key_tree(io.BytesIO(data)).walk()) == leaves
    assert dissect_leaves(data) == dict(leaves)


@pytest.mark.parametrize(
    ("leaves", "problem"),
    [
        ([("a/b", 1), ("a", 2)], "given twice"),
        ([("a", 1), ("a/b", 2)], "is a value"),
        ([("a//b", 1)], "empty"),
        ([("k" * 255, 1)], "too long"),
        ([("a", 1 << 64)], "64 bits"),
    ],
)
def test_the_writer_refuses_a_tree_it_cannot_write(
    leaves: list[tuple[str, Value]], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        write_key_tree(io.BytesIO(), leaves)


def test_pending_replay_log_writes_are_applied_before_reading() -> None:
    old, new = io.BytesIO(), io.BytesIO()
    write_key_tree(old, [("configuration/properties/name", "Before")])
    write_key_tree(new, [("configuration/properties/name", "Latter")])
    image = bytearray(old.getvalue())
    table = new.getvalue()[0x7000:0x8000]  # the one key table, as the log would hold it
    log = 0x3000
    image[log + 0x1000 : log + 0x2000] = table
    entry = bytearray(struct.pack("<QIIIII", 0x7000, len(table), 0x1000, 0, 0, zlib.crc32(table)))
    entry[20:24] = zlib.crc32(bytes(entry)).to_bytes(4, "little")
    image[log + 34 : log + 62] = entry
    struct.pack_into("<I", image, log + 8, 1)  # num_entries
    struct.pack_into("<I", image, log + 4, 0)
    struct.pack_into("<I", image, log + 4, zlib.crc32(bytes(image[log : log + 34])))
    tree = read_key_tree(io.BytesIO(bytes(image)))
    assert tree.replayed == 1
    assert tree.get("configuration/properties/name") == "Latter"
    assert bytes(image[0x7000:0x8000]) != table  # the file itself was not written


guids = st.uuids().filter(lambda u: u.int != 0)
names = st.text(min_size=1, max_size=100)  # Hyper-V names: 1 to 100 characters
windows_paths = st.builds(
    lambda folder, stem, ext: f"C:\\{folder}\\{stem}{ext}",
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_characters="\\\0"), min_size=1, max_size=30
    ),
    st.text(min_size=1, max_size=60),
    st.sampled_from([".vhdx", ".avhdx", ".VHDX"]),
)
locations = st.one_of(
    st.builds("ide{}/{}".format, st.integers(0, 1), st.integers(0, 1)),
    st.builds("scsi{}/{}".format, st.integers(0, 3), st.integers(0, 63)),
)


@st.composite
def configurations(draw: st.DrawFn) -> Configuration:
    kind = draw(st.sampled_from(FileKind))
    checkpoint = kind is FileKind.CHECKPOINT
    where = draw(st.lists(locations, max_size=12, unique=True))
    disks = tuple(ConfiguredDisk(loc, draw(windows_paths)) for loc in where)
    state = draw(
        st.lists(
            st.builds(
                lambda g, e: f"C:\\VMs\\Snapshots\\{g}{e}",
                guids,
                st.sampled_from([".vmrs", ".VMRS", ".vsv", ".bin", ".vmgs"]),
            ),
            max_size=3,
            unique=True,
        )
    )
    created = draw(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)))
    return Configuration(
        kind=kind,
        format="vmcx",
        id=draw(guids),
        name=draw(names),
        version=draw(st.sampled_from(["6.2", "8.0", "9.0", "10.0", "12.0"])),
        vm_id=draw(guids) if checkpoint else None,
        parent=draw(st.one_of(st.none(), guids)),
        created_at=created.replace(tzinfo=UTC),
        checkpoint_kind=draw(st.sampled_from(CheckpointKind)) if checkpoint else None,
        disks=disks,
        state_files=tuple(state),
        writer="ckpt",
    )


def _canonical(config: Configuration) -> Configuration:
    """Disks in bus, controller, drive order and state files sorted: the order
    the reader finds them in, not the order they were given."""

    def place(disk: ConfiguredDisk) -> tuple[str, int, int]:
        bus, controller, drive = re.fullmatch(r"([a-z]+)(\d+)/(\d+)", disk.location).groups()  # type: ignore[union-attr]
        return bus, int(controller), int(drive)

    return dataclasses.replace(
        config,
        disks=tuple(sorted(config.disks, key=place)),
        state_files=tuple(sorted(config.state_files)),
    )


@FAST
@given(configurations())
def test_a_configuration_reads_back_as_written(config: Configuration) -> None:
    out = io.BytesIO()
    write_vmcx(out, config)
    back = read_vmcx(io.BytesIO(out.getvalue()), "c.vmcx")
    assert back.problems == ()
    assert _canonical(back) == _canonical(config)
    assert dissect_leaves(out.getvalue()) == dict(read_key_tree(io.BytesIO(out.getvalue())).walk())


def test_a_vm_configuration_uses_hyper_v_keys() -> None:
    vm = UUID("282874FC-59D6-4F30-BC04-5FDD909C82E0")
    config = Configuration(
        FileKind.VM, "vmcx", vm, "Other Location", "9.0", parent=UUID(int=7),
        disks=(ConfiguredDisk("ide0/0", "C:\\d.vhdx"), ConfiguredDisk("scsi1/3", "C:\\e.vhdx")),
    )  # fmt: skip
    out = io.BytesIO()
    write_vmcx(out, config)
    tree = read_key_tree(io.BytesIO(out.getvalue()))
    assert tree.get("configuration/properties/global_id") == "282874FC-59D6-4F30-BC04-5FDD909C82E0"
    assert tree.get("configuration/properties/version") == 0x900
    assert tree.get("configuration/properties/type_id") == "Virtual Machines"
    assert tree.get("configuration/settings/global/logical_id") == str(vm).upper()
    assert tree.get("configuration/properties/ckpt_writer") == "ckpt"
    ide = "configuration/_83f8638b-8dca-4152-9eda-2ca8b33039b4_/controller0/drive0"
    assert (tree.get(f"{ide}/type"), tree.get(f"{ide}/pathname")) == ("VHD", "C:\\d.vhdx")
    assert tree.get("configuration/manifest/size") == 3  # IDE, SCSI 0 (empty), SCSI 1
    back = read_vmcx(io.BytesIO(out.getvalue()))
    assert back.disks == config.disks and back.writer == "ckpt"


def test_an_unknown_disk_location_is_refused() -> None:
    config = Configuration(
        FileKind.VM, "vmcx", UUID(int=1), "v", disks=(ConfiguredDisk("sata0", "C:\\d.vhdx"),)
    )
    with pytest.raises(ValueError, match="sata0"):
        write_vmcx(io.BytesIO(), config)


@pytest.mark.parametrize("saved", [True, False, None])
def test_whether_a_checkpoint_saved_memory_round_trips(saved: bool | None) -> None:
    config = Configuration(
        FileKind.CHECKPOINT, "vmcx", UUID(int=5), "cp", "9.0", vm_id=UUID(int=6),
        checkpoint_kind=CheckpointKind.STANDARD, saved_memory=saved,
    )  # fmt: skip
    out = io.BytesIO()
    write_vmcx(out, config)
    assert read_vmcx(io.BytesIO(out.getvalue())).saved_memory is saved
