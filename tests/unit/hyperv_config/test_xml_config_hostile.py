"""Hostile 2012 R2 XML configuration files: whatever the bytes, reading ends in a
Configuration or a ConfigurationError, within a time limit and bounded memory;
entity tricks and oversized or over-deep documents are refused outright."""

from __future__ import annotations

import dataclasses
import io
import signal
import time
import tracemalloc
from contextlib import suppress
from functools import cache
from uuid import UUID

import pytest
from hostile_support import deadline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt.domain.errors import ConfigurationError
from ckpt.storage.hyperv_config.model import (
    CheckpointKind,
    Configuration,
    ConfiguredDisk,
    FileKind,
)
from ckpt.storage.hyperv_config.xml_config import read_xml_config, write_xml_config
from ckpt.storage.hyperv_config.xml_tree import MAX_DEPTH, MAX_ELEMENTS, MAX_FILE_SIZE

TIME_LIMIT = 2.0  # seconds; a valid file reads in well under 1 ms


@cache
def _valid(encoding: str) -> bytes:
    config = Configuration(
        kind=FileKind.CHECKPOINT,
        format="xml",
        id=UUID(int=1),
        name="fuzz <&>",
        version="5.0",
        vm_id=UUID(int=2),
        parent=UUID(int=3),
        checkpoint_kind=CheckpointKind.STANDARD,
        disks=(ConfiguredDisk("ide0/1", "C:\\a.avhd"), ConfiguredDisk("scsi1/2", "C:\\b.vhd")),
        state_files=("C:\\s.vsv", "C:\\s.bin"),
    )
    out = io.BytesIO()
    write_xml_config(out, config)
    if encoding == "utf-16":
        return out.getvalue()
    text = out.getvalue().decode("utf-16").replace('encoding="UTF-16"', 'encoding="UTF-8"')
    return text.encode()


def read(data: bytes) -> Configuration:
    return read_xml_config(io.BytesIO(data), "hostile.xml")


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    encoding = draw(st.sampled_from(["utf-8", "utf-16"]))
    data = bytearray(_valid(encoding))
    if draw(st.booleans()):  # the declared encoding: whatever codec Python has by that name
        declared = draw(st.sampled_from(["rot13", "zlib", "utf-32", "undefined", "cp037", "bogus"]))
        codec = "utf-16-le" if encoding == "utf-16" else "ascii"
        old = f'encoding="{encoding.upper()}"'.encode(codec)
        data = data.replace(old, f'encoding="{declared}"'.encode(codec))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        chunk = draw(
            st.sampled_from(
                [b"<", b">", b"&", b"/", b'"', b"\x00", b"]]>", b"<!DOCTYPE x>", b"<a>"]
            )
            | st.binary(min_size=1, max_size=8)
        )
        if action == "set":
            data[pos : pos + len(chunk)] = chunk
        elif action == "insert":
            data[pos:pos] = chunk
        elif action == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        else:
            del data[pos:]
    return bytes(data)


# Typed leaves at the paths the reader looks at, with any declared type and text.
PATHS = [
    "properties/name",
    "properties/global_id",
    "properties/type_id",
    "properties/version",
    "properties/creation_time",
    "properties/ckpt_parent",
    "properties/ckpt_checkpoint_type",
    "settings/global/logical_id",
    "savedstate/vsvlocation",
    "manifest/vdev001/device",
    "manifest/vdev001/instance",
    "_83f8638b-8dca-4152-9eda-2ca8b33039b4_/controller0/drive0/type",
    "_83f8638b-8dca-4152-9eda-2ca8b33039b4_/controller0/drive0/pathname",
    "_d422512d-2bf2-4752-809d-7b82b5fcb1b4_/controller7/drive99/pathname",
]
TEXTS = st.sampled_from(
    [
        *("", "VHD", "5.0", "1280", "-1", "99999999999999999999", "//////////8=", "AAAA", "{}"),
        *(str(UUID(int=7)), "d422512d-2bf2-4752-809d-7b82b5fcb1b4", "Snapshots", "standard"),
    ]
) | st.text(max_size=20)


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    parts = []
    for path in draw(st.lists(st.sampled_from(PATHS), max_size=10)):
        *parents, leaf = path.split("/")
        type_ = draw(st.sampled_from(["string", "integer", "bytes", "bool", "", None]))
        attr = "" if type_ is None else f' type="{type_}"'
        text = draw(TEXTS).replace("&", "&amp;").replace("<", "&lt;")
        open_ = "".join(f"<{p}>" for p in parents)
        close = "".join(f"</{p}>" for p in reversed(parents))
        parts.append(f"{open_}<{leaf}{attr}>{text}</{leaf}>{close}")
    return f"<configuration>{''.join(parts)}</configuration>".encode(errors="surrogatepass")


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM for the time limit")
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated() | documents() | st.binary(max_size=200))
def test_any_bytes_give_a_configuration_or_a_configuration_error(data: bytes) -> None:
    tracemalloc.start()
    try:
        with deadline(TIME_LIMIT), suppress(ConfigurationError):
            config = read(data)
            assert all("\n" not in problem for problem in config.problems)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * len(data) + (1 << 20), f"peak {peak} bytes for a {len(data)}-byte file"


def test_a_mutated_file_can_still_read_with_problems_rather_than_fail() -> None:
    # The fuzzer reaches the field checks: a bad GUID is a problem, not an error.
    data = _valid("utf-8").replace(str(UUID(int=1)).upper().encode(), b"not-a-guid")
    config = read(data)
    assert config.id is None
    assert config.problems == ("properties/global_id: 'not-a-guid' is not a GUID",)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE configuration [
 <!ENTITY a "aaaaaaaaaa">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
 <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
 <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
 <!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">
 <!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;">
 <!ENTITY h "&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;">
 <!ENTITY i "&h;&h;&h;&h;&h;&h;&h;&h;&h;&h;">
]>
<configuration><properties><name type="string">&i;</name></properties></configuration>"""


@pytest.mark.parametrize(
    "document",
    [
        BILLION_LAUGHS,
        b'<?xml version="1.0"?><!DOCTYPE configuration [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<configuration><properties><name type="string">&x;</name></properties></configuration>',
        b'<!DOCTYPE configuration SYSTEM "http://127.0.0.1:1/evil.dtd"><configuration/>',
        b'<!DOCTYPE configuration [<!ENTITY % p SYSTEM "http://127.0.0.1:1/p.dtd"> %p;]>'
        b"<configuration/>",
        b"<!DOCTYPE configuration><configuration/>",
        BILLION_LAUGHS.decode().encode("utf-16"),
    ],
    ids=[
        "billion-laughs",
        "external-entity",
        "external-dtd",
        "parameter-entity",
        "doctype",
        "utf16",
    ],
)
def test_entity_tricks_are_refused_before_any_entity_is_declared(document: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(ConfigurationError, match=r"^hostile\.xml: refused: a <!DOCTYPE>"):
        read(document)
    assert time.perf_counter() - started < 0.5


def test_an_undeclared_entity_is_not_well_formed() -> None:
    with pytest.raises(ConfigurationError, match="undefined entity"):
        read(b'<configuration><properties><name type="string">&x;</name></properties>')


def test_nesting_deeper_than_the_limit_is_refused_without_recursion() -> None:
    depth = 100_000
    with pytest.raises(ConfigurationError, match=f"nested deeper than {MAX_DEPTH}"):
        read(b"<configuration>" + b"<a>" * depth + b"</a>" * depth + b"</configuration>")


def test_more_elements_than_the_limit_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=f"more than {MAX_ELEMENTS} elements"):
        read(b"<configuration>" + b"<a/>" * MAX_ELEMENTS + b"</configuration>")


def test_a_file_over_the_size_limit_is_refused_after_reading_one_byte_more() -> None:
    stream = io.BytesIO(b" " * (MAX_FILE_SIZE + 4096))
    with pytest.raises(ConfigurationError, match=f"larger than {MAX_FILE_SIZE} bytes"):
        read_xml_config(stream, "big.xml")
    assert stream.tell() == MAX_FILE_SIZE + 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"  \r\n", "empty file"),
        (b"\x00\x01\x02garbage", "not a well-formed XML document"),
        (b"<configuration>", "not a well-formed XML document: no element found"),
        (b"<vm/>", r"root element is <vm>, not <configuration>"),
    ],
)
def test_what_is_not_a_configuration_document_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        read(data)


@pytest.mark.parametrize(
    "encoding", ["x-unknown", "rot13", "zlib", "utf-32", "utf-7", "cp037", "undefined", "punycode"]
)
def test_a_utf16_file_declaring_an_encoding_we_cannot_decode_is_a_configuration_error(
    encoding: str,
) -> None:
    text = f'<?xml version="1.0" encoding="{encoding}"?><configuration/>'
    with pytest.raises(ConfigurationError, match=r"^hostile\.xml: not a"):
        read(b"\xff\xfe" + text.encode("utf-16-le"))


def test_a_file_without_a_utf16_bom_is_utf8_whatever_it_declares() -> None:
    # e.g. a Windows file a text tool re-encoded, keeping encoding="UTF-16"
    for declared in ("UTF-16", "rot13", "ISO-8859-1"):
        document = (
            f'<?xml version="1.0" encoding="{declared}"?><configuration><properties>'
            '<name type="string">Ünïcødé</name></properties></configuration>'
        ).encode()
        assert read(document).name == "Ünïcødé"


def test_a_repeated_element_is_read_once_and_reported() -> None:
    data = _valid("utf-8").replace(
        b'<name type="string">fuzz',
        b'<name type="string">first</name><name type="string">fuzz',
    )
    config = read(data)
    assert config.name == "first"
    assert config.problems == ("properties/name: repeated 2 times, the first is read",)
    assert dataclasses.replace(config, name="fuzz <&>", problems=()) == read(_valid("utf-8"))


def test_a_manifest_of_many_controllers_reads_in_linear_time() -> None:
    # 30,000 SCSI controllers (Hyper-V has at most 4) with no sections: every
    # lookup must be a dict hit, or this takes minutes instead of milliseconds.
    vdevs = "".join(
        f'<vdev{i}><device type="string">d422512d-2bf2-4752-809d-7b82b5fcb1b4</device>'
        f'<instance type="string">{UUID(int=i)}</instance></vdev{i}>'
        for i in range(30_000)
    )
    data = f"<configuration><manifest>{vdevs}</manifest></configuration>".encode()
    started = time.perf_counter()
    with deadline(10 * TIME_LIMIT):
        config = read(data)
    assert len([p for p in config.problems if p.startswith("manifest names device")]) == 30_000
    assert time.perf_counter() - started < 5 * TIME_LIMIT


def test_a_long_tag_is_not_copied_into_each_child() -> None:
    # 1 MB tag, 5,000 children: storing each child's full path would cost 5 GB.
    tag = "t" * 1_000_000
    data = f"<configuration><{tag}>{'<a/>' * 5_000}</{tag}></configuration>".encode()
    tracemalloc.start()
    try:
        config = read(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert config.id is None
    assert peak < 16 * len(data), f"peak {peak} bytes for a {len(data)}-byte file"
