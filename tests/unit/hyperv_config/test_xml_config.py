"""2012 R2 XML configuration files: a Windows-written layout reads right, what we
write reads back the same, and the bytes we write are the layout Windows writes.

Hostile input (fuzzing, XML attacks, limits) is in test_xml_config_hostile.py.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime
from uuid import UUID

import pytest
from hyperv_samples import WINDOWS_VM
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ckpt.domain.errors import ConfigurationError
from ckpt.storage.hyperv_config.model import (
    CheckpointKind,
    Configuration,
    ConfiguredDisk,
    FileKind,
)
from ckpt.storage.hyperv_config.xml_config import read_xml_config, write_xml_config

WINDOWS_DISK = "C:\\dev\\vagrant\\Win2k12R2\\.vagrant\\machines\\default\\hyperv\\disk.vhd"
# A VM configuration in the layout of one Windows Server 2012 R2 wrote
# (mwrock/packer-templates, hyper-v-output/Virtual Machines/vm.XML, see
# docs/hyperv_xml.md), cut down to the elements ckpt reads and some neighbours;
# the values are that file's. Windows writes it UTF-16LE with a BOM and CRLF.
WINDOWS_VM_ID = UUID("0aa394fa-7c4a-4070-ba32-773d43b28a68")
# base64 j3iz2977zwE= is 8f 78 b3 db de fb cf 01: FILETIME 130599848804317327
# (little-endian), 2014-11-09 05:34:40.4317327 UTC, three hours before the
# file's last_powered_on_time (130599954966442599, 08:31:36); microseconds kept.
WINDOWS_VM_CREATED = datetime(2014, 11, 9, 5, 34, 40, 431732, tzinfo=UTC)


def windows_bytes(text: str) -> bytes:
    return b"\xff\xfe" + text.replace("\n", "\r\n").encode("utf-16-le")


def read(data: bytes) -> Configuration:
    return read_xml_config(io.BytesIO(data), "t.xml")


def write(config: Configuration) -> bytes:
    out = io.BytesIO()
    write_xml_config(out, config)
    return out.getvalue()


def test_a_windows_written_vm_configuration_reads_with_its_name_id_time_version_and_disk() -> None:
    config = read(windows_bytes(WINDOWS_VM))
    assert config == Configuration(
        kind=FileKind.VM,
        format="xml",
        id=WINDOWS_VM_ID,
        name="2012R2",
        version="5.0",
        created_at=WINDOWS_VM_CREATED,
        disks=(
            ConfiguredDisk(
                "ide0/0",
                "C:\\dev\\vagrant\\Win2k12R2\\.vagrant\\machines\\default\\hyperv\\disk.vhd",
            ),
        ),
    )


def test_the_same_layout_in_utf8_reads_the_same() -> None:
    utf8 = WINDOWS_VM.replace('encoding="UTF-16"', 'encoding="UTF-8"').encode()
    assert read(utf8) == read(windows_bytes(WINDOWS_VM))
    assert read(b"\xef\xbb\xbf" + utf8) == read(utf8)
    # as the Windows file is stored in git: UTF-8 bytes, LF, still declaring UTF-16
    assert read(WINDOWS_VM.encode()) == read(utf8)


def test_a_checkpoint_copy_of_the_vm_configuration_reads_as_a_checkpoint_of_that_vm() -> None:
    # Inferred layout (docs/hyperv_xml.md): a checkpoint file is the VM's
    # configuration with the checkpoint's own global_id, and names its state files.
    text = (
        WINDOWS_VM.replace(
            '<global_id type="string">0AA394FA-7C4A-4070-BA32-773D43B28A68</global_id>',
            '<global_id type="string">{5B1A2C3D-0000-4000-8000-00000000ABCD}</global_id>',
        )
        .replace(
            '<name type="string">2012R2</name>', '<name type="string">2012R2 - (11/9/2014)</name>'
        )
        .replace(
            "</properties>",
            "</properties>\n  <savedstate>\n"
            '    <memlocation type="string">D:\\VM\\Snapshots\\5B1A\\5B1A.bin</memlocation>\n'
            '    <vsvlocation type="string">D:\\VM\\Snapshots\\5B1A\\5B1A.vsv</vsvlocation>\n'
            "  </savedstate>",
        )
    )
    config = read(windows_bytes(text))
    assert config.kind is FileKind.CHECKPOINT
    assert config.id == UUID("5b1a2c3d-0000-4000-8000-00000000abcd")
    assert config.vm_id == WINDOWS_VM_ID
    assert config.name == "2012R2 - (11/9/2014)"
    # configuration version 5.0 predates production checkpoints (6.2)
    assert config.checkpoint_kind is CheckpointKind.STANDARD
    assert config.state_files == (
        "D:\\VM\\Snapshots\\5B1A\\5B1A.vsv",
        "D:\\VM\\Snapshots\\5B1A\\5B1A.bin",
    )
    assert config.problems == ()


def test_a_value_of_the_right_type_that_cannot_be_used_is_a_problem_not_an_error() -> None:
    text = (
        WINDOWS_VM.replace("0AA394FA-7C4A-4070-BA32-773D43B28A68</global_id>", "vm-1</global_id>")
        .replace("j3iz2977zwE=", "AAAA")
        .replace(
            '<version type="integer">1280</version>\n  </properties>',
            '<version type="integer">0</version>\n  </properties>',
        )
    )
    config = read(windows_bytes(text))
    assert (config.id, config.created_at, config.version) == (None, None, None)
    assert config.name == "2012R2"
    assert [p.split(":")[0] for p in config.problems] == [
        "properties/global_id",
        "properties/version",
        "properties/creation_time",
    ]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            '<name type="string">2012R2',
            '<name type="integer">2012R2',
            r"properties/name has type 'integer'",
        ),
        ('<name type="string">2012R2', "<name>2012R2", r"properties/name has no type attribute"),
        (
            ">1280</version>\n  </properties>",
            ">5.0</version>\n  </properties>",
            r"properties/version is not an integer",
        ),
        ("j3iz2977zwE=", "j3iz2977z!E=", r"properties/creation_time is not base64"),
        (
            '<type type="string">VHD',
            '<type type="bool">VHD',
            r"controller0/drive0/type has type 'bool'",
        ),
        ("<configuration>", "<config>", r"root element is <config>"),
        ("</configuration>", "", r"not a well-formed XML document: .* at line \d+ column \d+"),
    ],
)
def test_a_damaged_file_is_a_configuration_error_naming_the_file_and_the_element(
    old: str, new: str, message: str
) -> None:
    text = WINDOWS_VM.replace(old, new, 1)
    if old == "<configuration>":
        text = text.replace("</configuration>", "</config>")
    assert text != WINDOWS_VM
    with pytest.raises(ConfigurationError, match=r"^t\.xml: .*" + message) as caught:
        read(windows_bytes(text))
    assert "\n" not in str(caught.value)


# -- round trip --------------------------------------------------------------

XML_CHAR = st.characters(blacklist_categories=("Cs",)).filter(
    lambda c: c in "\t\n\r" or (c >= " " and c not in "\ufffe\uffff")
)
IDE = [f"ide{c}/{d}" for c in range(2) for d in range(2)]
SCSI = [f"scsi{c}/{d}" for c in range(4) for d in range(64)]


def _location_order(disk: ConfiguredDisk) -> tuple[int, int, int]:
    bus, _, drive = disk.location.partition("/")
    return (bus.startswith("scsi"), int(bus.lstrip("idesc")), int(drive))


@st.composite
def configurations(draw: st.DrawFn) -> Configuration:
    checkpoint = draw(st.booleans())
    locations = draw(st.lists(st.sampled_from(IDE + SCSI), unique=True, max_size=12))
    disks = [
        ConfiguredDisk(loc, draw(st.text(XML_CHAR, min_size=1, max_size=40))) for loc in locations
    ]
    stem = draw(st.text(XML_CHAR, max_size=30))
    state = draw(st.sampled_from([(), (".vsv",), (".BIN",), (".vsv", ".bin")]))
    major, minor = draw(st.integers(1, 255)), draw(st.integers(0, 255))
    return Configuration(
        kind=FileKind.CHECKPOINT if checkpoint else FileKind.VM,
        format="xml",
        id=draw(st.uuids()),
        name=draw(st.text(XML_CHAR, min_size=1, max_size=100)),
        version=draw(st.sampled_from([None, "5.0", f"{major}.{minor}"])),
        vm_id=draw(st.none() | st.uuids()) if checkpoint else None,
        parent=draw(st.none() | st.uuids()),
        created_at=draw(
            st.none()
            | st.datetimes(datetime(1601, 1, 1), datetime(9999, 12, 31), timezones=st.just(UTC))
        ),
        checkpoint_kind=draw(st.sampled_from(CheckpointKind)) if checkpoint else None,
        disks=tuple(sorted(disks, key=_location_order)),
        state_files=tuple(stem + suffix for suffix in state),
    )


def _named(name: str) -> Configuration:
    return Configuration(kind=FileKind.VM, format="xml", id=WINDOWS_VM_ID, name=name)


@settings(max_examples=80, deadline=None)
@given(configurations())
@example(_named("<"))
@example(_named("&amp; & ]]> <![CDATA[x]]>"))
@example(_named("x" * 100))
@example(_named(" \tcarriage\rreturn\r\nand line\nfeed "))
@example(_named("Ünïcødé 名前 😀 \u200f\x85"))
def test_what_we_write_reads_back_the_same(config: Configuration) -> None:
    assert read(write(config)) == dataclasses.replace(config, writer="ckpt")


# -- the bytes we write ------------------------------------------------------


def test_we_write_utf16le_with_a_bom_crlf_and_the_windows_declaration() -> None:
    data = write(_named("2012R2"))
    assert data.startswith(b"\xff\xfe")
    text = data[2:].decode("utf-16-le")
    assert text.startswith(
        '<?xml version="1.0" encoding="UTF-16" standalone="yes"?>\r\n<configuration>\r\n'
    )
    assert "\n" not in text.replace("\r\n", "")


def test_another_xml_parser_finds_the_elements_where_windows_keeps_them() -> None:
    # ElementTree is a second reader: the paths and typed values of WINDOWS_VM.
    vm = dataclasses.replace(
        _named("a<b & ]]>"),
        version="5.0",
        created_at=WINDOWS_VM_CREATED,
        disks=(ConfiguredDisk("ide0/0", "C:\\x.vhd"), ConfiguredDisk("scsi0/1", "C:\\y.vhd")),
    )
    root = ElementTree.fromstring(write(vm))
    assert root.tag == "configuration"

    def typed(path: str) -> tuple[str | None, str | None]:
        node = root.find(path)
        assert node is not None, path
        return node.get("type"), node.text

    assert typed("properties/name") == ("string", "a<b & ]]>")
    assert typed("properties/global_id") == ("string", "0AA394FA-7C4A-4070-BA32-773D43B28A68")
    assert typed("settings/global/logical_id") == typed("properties/global_id")
    assert typed("properties/type_id") == ("string", "Virtual Machines")
    assert typed("properties/version") == ("integer", "1280")
    ide_drive = "_83f8638b-8dca-4152-9eda-2ca8b33039b4_/controller0/drive0"
    assert typed(f"{ide_drive}/pathname") == ("string", "C:\\x.vhd")
    assert typed(f"{ide_drive}/type") == ("string", "VHD")
    # the FILETIME of WINDOWS_VM to the microsecond (its last 7 ticks, 0.7 us, go)
    kind, text = typed("properties/creation_time")
    assert kind == "bytes" and text is not None and text.endswith("\n")
    assert int.from_bytes(base64.b64decode(text), "little") == 130599848804317320
    # the SCSI controller is found the way Windows files name it: through the manifest
    scsi = [
        v.findtext("instance") or ""
        for v in root.iterfind("manifest/*")
        if v.findtext("device") == "d422512d-2bf2-4752-809d-7b82b5fcb1b4"
    ]
    assert len(scsi) == 1
    assert typed(f"_{scsi[0].lower()}_/controller0/drive1/pathname") == ("string", "C:\\y.vhd")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "bell\x07"}, r"properties/name: character U\+0007"),
        ({"disks": (ConfiguredDisk("ide2/0", "C:\\a.vhd"),)}, r"'ide2/0'"),
        ({"disks": (ConfiguredDisk("scsi0/64", "C:\\a.vhd"),)}, r"'scsi0/64'"),
        (
            {"disks": (ConfiguredDisk("ide0/0", "a"), ConfiguredDisk("ide0/0", "b"))},
            "two disks at ide0/0",
        ),
        ({"state_files": ("C:\\a.vmrs",)}, r"one \.vsv and one \.bin"),
        ({"version": "5"}, r"'5' is not major\.minor"),
        ({"version": "256.0"}, r"'256\.0' is not major\.minor"),
        ({"created_at": datetime(2014, 1, 1)}, "no time zone"),
    ],
)
def test_we_refuse_to_write_what_the_format_cannot_hold(
    change: dict[str, object], message: str
) -> None:
    config = dataclasses.replace(_named("ok"), **change)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        write(config)


def test_the_same_configuration_always_writes_the_same_bytes() -> None:
    config = dataclasses.replace(_named("x"), disks=(ConfiguredDisk("scsi2/5", "C:\\a.vhd"),))
    assert write(config) == write(config)


@pytest.mark.parametrize("saved", [True, False, None])
def test_whether_a_checkpoint_saved_memory_round_trips(saved: bool | None) -> None:
    config = Configuration(
        FileKind.CHECKPOINT, "xml", UUID(int=5), "cp", "5.0", vm_id=UUID(int=6),
        checkpoint_kind=CheckpointKind.STANDARD, saved_memory=saved,
    )  # fmt: skip
    out = io.BytesIO()
    write_xml_config(out, config)
    assert read_xml_config(io.BytesIO(out.getvalue())).saved_memory is saved
