"""Issue 11, small CLI defects: key files of raw bytes, a mistyped --operation,
float options out of range, stats of an empty store, hidden characters in text
output, --sample's range in the README, global options after the subcommand."""

from __future__ import annotations

import io
import json
import os
import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt.cli import run

ROOT = Path(__file__).resolve().parents[2]
INVALID = 14  # exit code of InvalidValue


def ckpt(*args: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run([str(a) for a in args], out, err)
    return code, out.getvalue(), err.getvalue()


def ok(*args: str | Path) -> str:
    code, out, err = ckpt(*args)
    assert code == 0, err
    return out


@pytest.fixture(autouse=True)
def _no_store_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CKPT_STORE", "CKPT_EVENTS", "CKPT_CHUNKS", "CKPT_KEY", "CKPT_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------- --key-file
def test_a_key_file_of_32_raw_bytes_is_the_key(tmp_path: Path) -> None:
    store, key = tmp_path / "s", tmp_path / "raw.key"
    key.write_bytes(bytes(range(0x80, 0xA0)))  # not UTF-8: UnicodeDecodeError before
    assert "encrypted" in ok("--store", store, "--key-file", key, "init", "--encrypt")
    ok("--store", store, "--key-file", key, "vm", "add", "v")
    assert ok("--store", store, "--key-file", key, "vm", "list").startswith("v ")
    code, _, err = ckpt("--store", store, "vm", "list")
    assert code == 28 and "encrypted" in err


def test_the_hex_text_form_still_works_and_means_the_same_key(tmp_path: Path) -> None:
    raw = os.urandom(32)
    (tmp_path / "raw.key").write_bytes(raw)
    (tmp_path / "hex.key").write_text(raw.hex() + "\n")
    ok("--store", tmp_path / "s", "--key-file", tmp_path / "raw.key", "init", "--encrypt")
    ok("--store", tmp_path / "s", "--key-file", tmp_path / "hex.key", "vm", "add", "v")


@pytest.mark.parametrize(
    "content", [b"\xff" * 31, b"\xff" * 33, b"zz" * 32, b"ab" * 17, b""], ids=repr
)
def test_any_other_key_file_says_what_a_key_file_holds(tmp_path: Path, content: bytes) -> None:
    key = tmp_path / "bad.key"
    key.write_bytes(content)
    code, _, err = ckpt("--store", tmp_path / "s", "--key-file", key, "init", "--encrypt")
    assert code == INVALID, err
    assert "64 hex digits" in err and "32 raw bytes" in err and "Traceback" not in err


# ------------------------------------------------------------ --operation
def test_a_mistyped_operation_is_refused_naming_the_operations(tmp_path: Path) -> None:
    ok("--store", tmp_path / "s", "init")
    code, out, err = ckpt("--store", tmp_path / "s", "log", "--operation", "checkpoint-delete")
    assert code == INVALID and out == ""
    assert "did you mean 'checkpoint-deleted'" in err
    assert "vm-registered" in err and "backup-point-recorded" in err
    assert ok("--store", tmp_path / "s", "log", "--operation", "checkpoint-deleted") == (
        "no entries\n"
    )


# ------------------------------------------------------- float options
@pytest.mark.parametrize(
    "args",
    [
        ["gc", "--grace", "-5"],
        ["gc", "--grace", "nan"],
        ["gc", "--grace", "inf"],
        ["gc", "--grace=-inf"],
        ["verify", "--sample", "nan"],
        ["verify", "--sample", "0"],
        ["verify", "--sample", "1.5"],
        ["verify", "--sample", "inf"],
    ],
    ids=" ".join,
)
def test_float_options_out_of_range_are_refused(tmp_path: Path, args: list[str]) -> None:
    ok("--store", tmp_path / "s", "init")
    code, out, err = ckpt("--store", tmp_path / "s", *args)
    assert code == INVALID, (out, err)
    assert f"{args[1].split('=')[0]} must be a finite number" in err


def test_float_options_in_range_are_taken(tmp_path: Path) -> None:
    ok("--store", tmp_path / "s", "init")
    assert "removed 0" in ok("--store", tmp_path / "s", "gc", "--grace", "0")
    assert "OK" in ok("--store", tmp_path / "s", "verify", "--sample", "0.5")


# ----------------------------------------------------------------- stats
def test_stats_of_an_empty_store_prints_no_none(tmp_path: Path) -> None:
    ok("--store", tmp_path / "s", "init")
    text = ok("--store", tmp_path / "s", "stats")
    assert "None" not in text
    assert "dedup -" in text and "compression -" in text


# ------------------------------------------------------ hidden characters
FAKE = "v\u2028└── fake [production, off]"
# Unicode categories no text output may hold: controls, format, separators, unassigned
HIDDEN = {"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"}


def test_a_line_separator_in_names_cannot_split_text_output(tmp_path: Path) -> None:
    s = tmp_path / "s"
    ok("--store", s, "init")
    ok("--store", s, "--actor", "me\nroot", "vm", "add", FAKE, "--disk", "d\u2028x\u202e")
    ok("--store", s, "checkpoint", "create", FAKE, "c\u2029\x85\x9b31m")
    outputs = [
        ok("--store", s, *args)
        for args in (
            ["tree", FAKE],
            ["vm", "list"],
            ["vm", "show", FAKE],
            ["checkpoint", "list", FAKE],
            ["log"],
            ["chain", FAKE],
            ["files", FAKE, "c\u2029\x85\x9b31m"],
        )
    ]
    tree = outputs[0].splitlines()
    assert tree[0] == "v\\u2028└── fake [production, off]"
    assert len(tree) == 3  # the VM, its checkpoint, Now
    assert "c\\u2029\\x85\\x9b31m" in tree[1]
    for text in outputs:
        # str.splitlines splits at U+2028, U+2029 and U+0085 too: one line per "\n"
        assert text.splitlines() == text.split("\n")[:-1], text
        assert all(unicodedata.category(c) not in HIDDEN for c in text.replace("\n", ""))
    assert "me\\x0aroot@" in outputs[4]
    assert "d\\u2028x\\u202e" in outputs[5]


def test_names_in_error_messages_cannot_split_the_line(tmp_path: Path) -> None:
    code, _, err = ckpt("--store", tmp_path / "no\u2028\x1b[2Jstore", "vm", "list")
    assert code == 20
    assert err.count("\n") == 1 and err.splitlines() == [err[:-1]]
    assert "no\\u2028\\x1b[2Jstore" in err


def test_json_output_keeps_names_as_they_are(tmp_path: Path) -> None:
    ok("--store", tmp_path / "s", "init")
    ok("--store", tmp_path / "s", "vm", "add", FAKE)
    assert json.loads(ok("--store", tmp_path / "s", "vm", "list", "--json"))[0]["name"] == FAKE


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_printable_leaves_nothing_hidden_and_keeps_what_is_shown(text: str) -> None:
    from ckpt.render import JOINERS, printable

    shown = printable(text)
    assert all(c in JOINERS or unicodedata.category(c) not in HIDDEN for c in shown)
    if text.isprintable():
        assert shown == text
    if "\\" not in text:  # the escapes read back to the text (a backslash is not escaped)
        back = re.sub(
            r"\\(?:x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8}))",
            lambda m: chr(int(m.group(1) or m.group(2) or m.group(3), 16)),
            shown,
        )
        assert back == text


# ---------------------------------------------------------------- README
def test_the_readme_gives_the_range_of_sample_and_grace() -> None:
    readme = (ROOT / "README.md").read_text()
    (verify,) = [
        line for line in readme.splitlines() if line.startswith("| `ckpt verify [--sample")
    ]
    assert "0 < P <= 1" in verify
    (gc,) = [line for line in readme.splitlines() if line.startswith("| `ckpt gc")]
    assert ">= 0" in gc


# ------------------------------------------------ global options anywhere
def test_global_options_go_before_or_after_the_subcommand(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert str(a) in ok("init", "--store", a)
    ok("--store", a, "vm", "add", "va")
    ok("vm", "add", "vb", "--store", a, "--actor", "after")
    assert ok("--store", a, "vm", "list").count("\n") == 2
    assert ok("vm", "list", "--store", a).count("\n") == 2
    assert re.search(r"after@.* vb ", ok("log", "--store", a))
    ok("--store", b, "init")
    # given in both places, the subcommand's value wins
    assert ok("--store", a, "vm", "list", "--store", b) == "no VMs\n"
    assert ok("--store", b, "vm", "--store", a, "list").count("\n") == 2


def test_init_takes_encrypt_key_file_and_store_together(tmp_path: Path) -> None:
    key, store = tmp_path / "k", tmp_path / "s"
    out = ok("init", "--encrypt", "--key-file", key, "--store", store)
    assert "encrypted" in out and key.stat().st_mode & 0o777 == 0o600
    ok("vm", "add", "v", "--key-file", key, "--store", store)
    code, _, err = ckpt("vm", "list", "--store", store)
    assert code == 28, err


def test_progress_labels_escape_hidden_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    from ckpt.progress import progress_bars

    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    with progress_bars(enabled=True) as bars:
        assert bars is not None
        bars("capture v\u2028\x1b[2J", 10)(10)
    assert "capture v\\u2028\\x1b[2J" in err.getvalue()
    assert "\u2028" not in err.getvalue() and "\x1b[2J" not in err.getvalue()
