"""Files written by Windows (../shared/fixtures/hyperv): the facts ckpt reads.

The expected values were read from the files independently of ckpt: by hand
from a hex dump (header sequence numbers 0x19 at 0x0 and 0x18 at 0x1000, the
object table at 0x2000 with eight key tables, ``properties/version`` 0x900)
and with dissect.hypervisor's HyperVFile (names, ids, paths, the FILETIME
bytes ``a7 6e 45 66 9e 97 d7 01`` of ``creation_time``).
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from uuid import UUID

import pytest

from ckpt.domain.errors import ConfigurationError
from ckpt.storage.hyperv_config import CheckpointKind, ConfiguredDisk, FileKind
from ckpt.storage.hyperv_config.vmcx import read_vmcx, read_vmrs_summary
from ckpt.storage.hyperv_config.vmcx_file import read_key_tree

from ._support import dissect_leaves, fixture_bytes, reseal

VM_ID = UUID("282874FC-59D6-4F30-BC04-5FDD909C82E0")
DISK = r"C:\Users\Public\Documents\Hyper-V\Virtual Hard Disks\Other Location.vhdx"
GUEST_STATE = r"C:\Hyper-V\EasyToFind\Virtual Machines\282874FC-59D6-4F30-BC04-5FDD909C82E0.vmgs"


def test_test_vmcx_is_the_vm_other_location_at_version_9() -> None:
    config = read_vmcx(io.BytesIO(fixture_bytes("test.vmcx")), "test.vmcx")
    assert config.kind is FileKind.VM and config.format == "vmcx"
    assert config.name == "Other Location"
    assert config.id == VM_ID
    assert config.version == "9.0"
    assert config.created_at == datetime(2021, 8, 22, 21, 41, 0, 717226, tzinfo=UTC)
    assert config.disks == (ConfiguredDisk("ide0/0", DISK),)  # the ISO drive is not a disk
    assert config.state_files == (GUEST_STATE,)
    assert (config.parent, config.vm_id, config.checkpoint_kind) == (None, None, None)
    assert config.writer is None
    assert config.problems == ()


def test_test_vmcx_key_tree() -> None:
    tree = read_key_tree(io.BytesIO(fixture_bytes("test.vmcx")), "test.vmcx")
    assert tree.sequence == 0x19  # header 1 (0x19) beats header 2 (0x18)
    assert tree.replayed == 0
    assert len(tree.leaves) == 303
    assert tree.get("configuration/properties/version") == 0x900
    assert tree.get("configuration/properties/type_id") == "Virtual Machines"
    assert tree.get("configuration/global_settings/snapshots/user_type") == 3  # production
    assert tree.get("configuration/manifest/size") == 37
    assert tree.get("configuration/properties/creation_time") == bytes.fromhex("a76e45669e97d701")
    assert tree.children("configuration/_83f8638b-8dca-4152-9eda-2ca8b33039b4_") == [
        "controller0",
        "controller1",
        "VDEVVersion",
    ]
    assert tree.get("configuration/properties") is None  # a node, not a value
    paths = [path for path, _ in tree.walk()]
    assert paths[:2] == [
        "configuration/_197f74e3-b84b-46de-8ae6-82f1cd181cdc_/VDEVVersion",
        "configuration/_2497f4de-e9fa-4204-80e4-4b75c46419c0_/VDEVVersion",
    ]
    assert len(paths) == len(set(paths)) == 303


def test_dissect_reads_test_vmcx_to_the_same_values() -> None:
    data = fixture_bytes("test.vmcx")
    assert dissect_leaves(data) == dict(read_key_tree(io.BytesIO(data)).walk())


def test_test_vmrs_is_a_key_tree_without_memory() -> None:
    data = fixture_bytes("test.VMRS")
    tree = read_key_tree(io.BytesIO(data), "test.VMRS")
    assert tree.get("configuration/properties/version") == 0x900
    assert len(tree.leaves) == 90
    # three sibling nodes share the key "devicetype"; dissect keeps the last only
    metrics = tree.children("configuration/global_settings/metrics")
    assert metrics == ["devicetype", "devicetype[1]", "devicetype[2]"]
    guid = "configuration/global_settings/metrics/devicetype[2]/guid"
    assert dissect_leaves(data)[guid.replace("[2]", "")] == tree.get(guid)
    summary = read_vmrs_summary(io.BytesIO(data), "test.VMRS")
    assert summary == {"version": "9.0", "holds_memory": False, "saved_state": False, "keys": 90}


def test_a_damaged_first_header_falls_back_to_the_second() -> None:
    image = bytearray(fixture_bytes("test.vmcx"))
    image[8] ^= 0xFF  # header 1's sequence number, CRC now wrong
    tree = read_key_tree(io.BytesIO(bytes(image)))
    assert tree.sequence == 0x18 and tree.get("configuration/properties/name") == "Other Location"


def test_the_valid_header_with_the_higher_sequence_wins() -> None:
    image = bytearray(fixture_bytes("test.vmcx"))
    image[0x1008:0x100A] = (0x1A).to_bytes(2, "little")  # header 2 now newer...
    image[0x101A:0x1022] = (0x100000).to_bytes(8, "little")  # ...with a log past the end
    reseal(image)
    with pytest.raises(ConfigurationError, match=r"x\.vmcx: replay log header at offset 0x100000"):
        read_key_tree(io.BytesIO(bytes(image)), "x.vmcx")


def test_no_valid_header_is_an_error_naming_both() -> None:
    image = bytearray(fixture_bytes("test.vmcx"))
    image[0] = image[0x1000] = 0
    with pytest.raises(ConfigurationError, match=r"t\.vmcx: file header at 0x0: .*at 0x1000"):
        read_key_tree(io.BytesIO(bytes(image)), "t.vmcx")


def test_a_flipped_key_entry_byte_fails_its_checksum() -> None:
    image = bytearray(fixture_bytes("test.vmcx"))
    image[0x3030] ^= 1  # inside the key "configuration" of the first entry
    with pytest.raises(ConfigurationError, match=r"key entry at 0x300a .*CRC-32 mismatch"):
        read_key_tree(io.BytesIO(bytes(image)), "t.vmcx")


def test_checkpoint_kind_is_inferred_from_the_checkpoint_setting() -> None:
    # test.vmcx with type_id "Snapshots" reads as a checkpoint of a VM set to
    # production (user_type 3): production, with the fallback doubt said.
    from ckpt.storage.hyperv_config.vmcx_file import write_key_tree

    tree = read_key_tree(io.BytesIO(fixture_bytes("test.vmcx")))
    values = dict(tree.walk())
    values["configuration/properties/type_id"] = "Snapshots"
    out = io.BytesIO()
    write_key_tree(out, values.items())
    config = read_vmcx(io.BytesIO(out.getvalue()))
    assert config.kind is FileKind.CHECKPOINT
    assert config.vm_id == VM_ID  # settings/global/logical_id
    assert config.checkpoint_kind is CheckpointKind.PRODUCTION
    assert any("fallen back" in problem for problem in config.problems)
